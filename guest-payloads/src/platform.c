/* SPDX-License-Identifier: MIT */
/*
 * platform.c - see platform.h.
 */
#include "platform.h"

#include "snplab_abi.h"

/* Emulated platform only: the VMM turns this OUT into a Doorbell event. */
__attribute__((noinline)) static void emu_doorbell(void)
{
	__asm__ volatile("outl %%eax, %w0" : : "Nd"((uint16_t)SNPLAB_DOORBELL_PORT), "a"(0) : "memory");
}

/* Emulated platform only: the range doorbell, OUT the argument, IN the result. */
__attribute__((noinline)) static uint32_t emu_pvalidate_range(uint32_t arg)
{
	uint32_t r;

	__asm__ volatile("outl %%eax, %w1" : : "a"(arg), "Nd"((uint16_t)SNPLAB_PVALIDATE_RANGE_PORT) : "memory");
	__asm__ volatile("inl %w1, %%eax" : "=a"(r) : "Nd"((uint16_t)SNPLAB_PVALIDATE_RANGE_PORT) : "memory");
	return r;
}

void vmgexit(uint32_t platform)
{
	if (platform == SNPLAB_PLATFORM_SNP)
		__asm__ volatile("rep; vmmcall" ::: "memory");
	else
		emu_doorbell();
}

/* SNP: one PVALIDATE instruction (4K); returns rc | CF << 8. */
__attribute__((noinline)) static uint32_t pvalidate_4k(uint64_t gpa, int validate)
{
	uint32_t rc;
	uint8_t cf;

	/* PVALIDATE: RAX = VA (identity map), ECX = 0 (4K), EDX = validate */
	__asm__ volatile(".byte 0xf2, 0x0f, 0x01, 0xff\n\tsetc %1"
			 : "=a"(rc), "=qm"(cf)
			 : "a"(gpa), "c"(0), "d"(validate ? 1 : 0)
			 : "memory", "cc");
	return (rc & 0xff) | (cf ? PVALIDATE_CF : 0);
}

uint64_t pvalidate_run_4k(uint32_t platform, uint64_t gpa, uint64_t npages, int validate)
{
	if (platform == SNPLAB_PLATFORM_SNP) {
		for (; npages; npages--, gpa += 0x1000) {
			uint32_t rc = pvalidate_4k(gpa, validate);

			if (rc & 0xff)
				return (gpa & ~0xfffULL) | rc;
		}
		return 0;
	}
	gpa &= ~0xfffULL;
	/* Emulated: the same pages, a range doorbell per chunk (never across 4 GiB:
	 * the doorbell carries GPA[31:12]; a page above 4 GiB fails with FAIL_INPUT). */
	while (npages) {
		uint64_t n = npages < SNPLAB_PVAL_RANGE_MAX_PAGES ? npages : SNPLAB_PVAL_RANGE_MAX_PAGES;
		uint32_t r;

		if (gpa >> 32)
			return gpa | PVALIDATE_FAIL_INPUT;
		if (n > ((1ULL << 32) - gpa) >> 12)
			n = ((1ULL << 32) - gpa) >> 12;
		r = emu_pvalidate_range((uint32_t)gpa | (uint32_t)(n - 1) << SNPLAB_PVAL_RANGE_COUNT_SHIFT |
					(validate ? SNPLAB_PVAL_RANGE_VALIDATE : 0));
		if (r & 0xff)
			return (gpa + ((uint64_t)(r >> SNPLAB_PVAL_RANGE_INDEX_SHIFT) << 12)) | (r & 0x1ff);
		gpa += n << 12;
		npages -= n;
	}
	return 0;
}

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

/* Emulated platform only: OUT the argument, IN the result. */
__attribute__((noinline)) static uint32_t emu_pvalidate(uint32_t arg)
{
	uint32_t r;

	__asm__ volatile("outl %%eax, %w1" : : "a"(arg), "Nd"((uint16_t)SNPLAB_PVALIDATE_PORT) : "memory");
	__asm__ volatile("inl %w1, %%eax" : "=a"(r) : "Nd"((uint16_t)SNPLAB_PVALIDATE_PORT) : "memory");
	return r;
}

void vmgexit(uint32_t platform)
{
	if (platform == SNPLAB_PLATFORM_SNP)
		__asm__ volatile("rep; vmmcall" ::: "memory");
	else
		emu_doorbell();
}

uint32_t pvalidate_4k(uint32_t platform, uint64_t gpa, int validate)
{
	uint32_t rc;
	uint8_t cf;

	if (platform == SNPLAB_PLATFORM_SNP) {
		/* PVALIDATE: RAX = VA (identity map), ECX = 0 (4K), EDX = validate */
		__asm__ volatile(".byte 0xf2, 0x0f, 0x01, 0xff\n\tsetc %1"
				 : "=a"(rc), "=qm"(cf)
				 : "a"(gpa), "c"(0), "d"(validate ? 1 : 0)
				 : "memory", "cc");
		return (rc & 0xff) | (cf ? PVALIDATE_CF : 0);
	}
	if (gpa >> 32)
		return PVALIDATE_FAIL_INPUT;	/* the doorbell carries GPA[31:12] */
	return emu_pvalidate((uint32_t)(gpa & ~0xfffULL) |
			     (validate ? SNPLAB_PVAL_VALIDATE : 0)) & 0x1ff;
}

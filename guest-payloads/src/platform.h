/* SPDX-License-Identifier: MIT */
/*
 * platform.h - the few privileged operations, CPL0 only (kernel.c: the
 * CPL3 part reaches them through kernel calls, kcall.h), chosen at run time
 * from params.platform (docs/contract.md section 2):
 *
 *   vmgexit()    SNP: REP VMMCALL        emulated: OUT to SNPLAB_DOORBELL_PORT
 *   pvalidate_run_4k()
 *                SNP: PVALIDATE per page  emulated: OUT/IN on SNPLAB_PVALIDATE_RANGE_PORT
 *                                         per SNPLAB_PVAL_RANGE_MAX_PAGES pages
 *
 * Port I/O exists only in the emu_* functions of platform.c, which run only
 * on the emulated platform (tests check this in the disassembly).  The only
 * MSRs touched are the GHCB MSR and SEV_STATUS.
 */
#ifndef SNPLAB_PLATFORM_H
#define SNPLAB_PLATFORM_H

#include <stdint.h>

#define MSR_AMD64_SEV_ES_GHCB 0xc0010130u	/* Linux msr-index.h */
#define MSR_AMD64_SEV 0xc0010131u

/* PVALIDATE result codes (Linux asm/sev.h) */
#define PVALIDATE_FAIL_INPUT 1
#define PVALIDATE_FAIL_SIZEMISMATCH 6
#define PVALIDATE_CF (1u << 8)		/* CF set: no RMP update (same state) */

static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;

	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr) : "memory");
	return (uint64_t)hi << 32 | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

__attribute__((noreturn)) static inline void halt_forever(void)
{
	for (;;)
		__asm__ volatile("cli; hlt" ::: "memory");
}

void vmgexit(uint32_t platform);

/* Validate (1) or rescind (0) npages 4 KiB pages from gpa in order, stopping
 * at the first page whose rc is not 0: returns 0, or that page's
 * GPA | rc | CF << 8.  On SNP one PVALIDATE instruction per page; on the
 * emulated platform one range doorbell stands for them (snplab_abi.h). */
uint64_t pvalidate_run_4k(uint32_t platform, uint64_t gpa, uint64_t npages, int validate);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * kcall.h - the kernel call: how the payload's CPL3 part asks its CPL0 part
 * for the few privileged operations (docs/contract.md section 1).
 *
 * Gate: INT3 through IDT vector 3, a DPL3 interrupt gate.  INT3 rather than
 * INT n: on the nested KVM (kvm_pvm) of the emulated-platform CI box, INT n
 * (opcode CD) from CPL3 raises #UD, while INT3 (CC) is delivered through the
 * guest's IDT as on real hardware.  CPL3 only: there, CPL0 code runs in
 * KVM's instruction emulator, which cannot execute a software interrupt in
 * long mode (the run ends in a KVM emulation-failure internal error), so CPL0
 * code (the exception handler) calls snplab_kcall directly.
 *
 * ABI: RAX = op, RDI/RSI = arguments; result in RAX.  RCX, RDX, RSI, RDI,
 * R8-R11 and the flags are clobbered (the kernel side is a plain C call, kept
 * short: on the CI box every CPL0 instruction goes through KVM's emulator).
 */
#ifndef SNPLAB_KCALL_H
#define SNPLAB_KCALL_H

#include <stdint.h>

enum snplab_kcall_op {
	KCALL_SEV_STATUS = 1,	/* -> SEV_STATUS MSR */
	KCALL_MSR_PROTOCOL = 2,	/* a0 -> GHCB MSR, VMGEXIT -> the GHCB MSR's new value */
	KCALL_VMGEXIT = 3,	/* a1 != 0: a0 -> GHCB MSR first; then VMGEXIT -> 0 */
	KCALL_RESCIND = 4,	/* PVALIDATE-rescind a1 pages from GPA a0 -> 0, or the first
				 * failure: GPA | rc | CF << 8 (rc != 0; platform.h) */
	KCALL_TERMINATE = 5,	/* a0 -> GHCB MSR, VMGEXIT, halt: never returns */
};

#define KCALL_BAD_OP (~0ULL)	/* result of an unknown op */
#define MSR_AMD64_SEV_SNP_ENABLED (1ULL << 2)	/* SEV_STATUS bit, Linux msr-index.h */

#ifndef SNPLAB_HOST
static inline uint64_t kcall(uint64_t op, uint64_t a0, uint64_t a1)
{
	__asm__ volatile("int3"
			 : "+a"(op), "+D"(a0), "+S"(a1)
			 :
			 : "rcx", "rdx", "r8", "r9", "r10", "r11", "memory", "cc");
	return op;
}
#endif

#endif

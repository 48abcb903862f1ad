/* SPDX-License-Identifier: MIT */
/*
 * start.S - entry, the CPL0/CPL3 switches and the exception stubs.
 *
 * The VMM starts every vCPU in long mode at CPL0 at _start with RSP = its
 * stack top, RDI = vCPU index, RSI = GPA of snplab_params (docs/contract.md).
 * The kernel part (kernel.c) sets up this vCPU's GDT, TSS and IDT and leaves
 * for CPL3 through enter_user; from then on CPL0 is entered only through
 * the kernel-call gate (kcall_entry, kcall.h) and the exception stubs.
 */
#define USER_DS (0x18 | 3)
#define USER_CS (0x20 | 3)
#define USER_RFLAGS 0x2		/* IF = 0, IOPL = 0 */

	.section .text.start, "ax"
	.code64
	.globl _start
_start:
	cli
	cld
	mov	%rsp, %rdx		/* third argument: this vCPU's stack top */
	and	$-16, %rsp
	xor	%ebp, %ebp
	call	snplab_main		/* (vcpu, params_gpa, stack_top), never returns */
1:	hlt
	jmp	1b

	.text
/*
 * enter_user(arg0 RDI, arg1 RSI, user_rsp RDX, user_rip RCX): IRETQ to CPL3
 * with the user segments; RDI and RSI reach the user function unchanged.
 * user_rsp must be 16-byte aligned: the user entry (user_start) calls C.
 */
	.globl	enter_user
enter_user:
	mov	$USER_DS, %eax
	mov	%eax, %ds
	mov	%eax, %es
	pushq	$USER_DS		/* SS */
	pushq	%rdx			/* RSP */
	pushq	$USER_RFLAGS
	pushq	$USER_CS
	pushq	%rcx			/* RIP */
	iretq

/* CPL3 entry: snplab_user_main(vcpu, params_gpa) never returns. */
	.globl	user_start
user_start:
	xor	%ebp, %ebp
	call	snplab_user_main
	ud2

/*
 * Kernel call (kcall.h): INT3, vector 3, DPL3 gate.  RAX = op, RDI/RSI =
 * arguments -> snplab_kcall(a0, a1, op); result in RAX.  The caller treats
 * every caller-saved register as clobbered, so nothing is saved here.
 * The CPU pushed 5 quadwords after aligning RSP to 16: RSP = 8 mod 16.
 */
	.globl	kcall_entry
kcall_entry:
	mov	%rax, %rdx
	sub	$8, %rsp
	call	snplab_kcall
	add	$8, %rsp
	iretq

/* Exception stubs: push (error code or 0) and the vector, then C. */
	.macro	EXC_NOERR vec
exc_stub_\vec:
	pushq	$0
	pushq	$\vec
	jmp	exc_common
	.endm

	.macro	EXC_ERR vec
exc_stub_\vec:
	pushq	$\vec
	jmp	exc_common
	.endm

exc_common:
	cld
	mov	%rsp, %rdi		/* struct exc_frame * */
	and	$-16, %rsp
	call	snplab_exception	/* never returns */
2:	hlt
	jmp	2b

	/* vectors with an error code: 8 10 11 12 13 14 17 21 29 30 */
	EXC_NOERR 0
	EXC_NOERR 1
	EXC_NOERR 2
	EXC_NOERR 3
	EXC_NOERR 4
	EXC_NOERR 5
	EXC_NOERR 6
	EXC_NOERR 7
	EXC_ERR 8
	EXC_NOERR 9
	EXC_ERR 10
	EXC_ERR 11
	EXC_ERR 12
	EXC_ERR 13
	EXC_ERR 14
	EXC_NOERR 15
	EXC_NOERR 16
	EXC_ERR 17
	EXC_NOERR 18
	EXC_NOERR 19
	EXC_NOERR 20
	EXC_ERR 21
	EXC_NOERR 22
	EXC_NOERR 23
	EXC_NOERR 24
	EXC_NOERR 25
	EXC_NOERR 26
	EXC_NOERR 27
	EXC_NOERR 28
	EXC_ERR 29
	EXC_ERR 30
	EXC_NOERR 31

	.section .rodata
	.balign	8
	.globl	snplab_exc_stubs
snplab_exc_stubs:
	.irp	v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	exc_stub_\v
	.endr

	.section .note.GNU-stack, "", @progbits

/* SPDX-License-Identifier: MIT */
/*
 * start.S - 64-bit entry and exception stubs.
 *
 * The VMM starts every vCPU in long mode at _start with RSP = its stack
 * top, RDI = vCPU index, RSI = GPA of snplab_params (docs/contract.md).
 */
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

	.text
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

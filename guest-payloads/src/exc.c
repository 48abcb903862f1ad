/* SPDX-License-Identifier: MIT */
/*
 * exc.c - IDT: vectors 0..31 record the exception in the results slot (once
 * the results area is shared) and terminate with SNPLAB_TERM_EXCEPTION;
 * vector 3 is the kernel-call gate instead (DPL3, kcall.h).  One IDT per
 * vCPU.  An exception at CPL3 switches to the vCPU's kernel stack
 * (TSS.RSP0), one at CPL0 stays on it; either way the frame lies in the
 * vCPU's 16 KiB stack, which identifies the vCPU.  No IST.
 */
#include "ghcb.h"
#include "kcall.h"
#include "payload.h"
#include "platform.h"

#define NR_EXC_VECTORS 32
#define KERNEL_CS 0x08		/* kernel.c's GDT and the VMM's (docs/contract.md) */
#define GATE_INTERRUPT 0x8e	/* P, DPL0, 64-bit interrupt gate */
#define GATE_INTERRUPT_DPL3 0xee	/* the same, reachable from CPL3 */
#define KCALL_VECTOR 3		/* INT3 (kcall.h) */

struct exc_frame {		/* pushed by start.S + the CPU */
	uint64_t vector;
	uint64_t error_code;
	uint64_t rip;
	uint64_t cs;
	uint64_t rflags;
	uint64_t rsp;
	uint64_t ss;
};

struct idt_gate {
	uint16_t off0;
	uint16_t sel;
	uint8_t ist;
	uint8_t type;
	uint16_t off1;
	uint32_t off2;
	uint32_t zero;
};

struct __attribute__((packed)) idt_ptr {
	uint16_t limit;
	uint64_t base;
};

extern const uint64_t snplab_exc_stubs[NR_EXC_VECTORS];
extern const char kcall_entry[];

static struct idt_gate g_idt[SNPLAB_MAX_VCPUS][NR_EXC_VECTORS] __attribute__((aligned(16)));

void exc_install(uint32_t cpu)
{
	struct idt_gate *idt = g_idt[cpu];
	struct idt_ptr ptr;
	unsigned int v;

	for (v = 0; v < NR_EXC_VECTORS; v++) {
		uint64_t a = v == KCALL_VECTOR ? (uintptr_t)kcall_entry : snplab_exc_stubs[v];

		idt[v].off0 = (uint16_t)a;
		idt[v].sel = KERNEL_CS;
		idt[v].ist = 0;
		idt[v].type = v == KCALL_VECTOR ? GATE_INTERRUPT_DPL3 : GATE_INTERRUPT;
		idt[v].off1 = (uint16_t)(a >> 16);
		idt[v].off2 = (uint32_t)(a >> 32);
		idt[v].zero = 0;
	}
	ptr.limit = sizeof(g_idt[cpu]) - 1;
	ptr.base = (uint64_t)(uintptr_t)idt;
	__asm__ volatile("lidt %0" : : "m"(ptr) : "memory");
}

/* The vCPU whose stack holds addr: the lowest stack top above it. */
static int cpu_of_stack(uint64_t addr)
{
	int best = -1;
	unsigned int i;

	for (i = 0; i < SNPLAB_MAX_VCPUS; i++)
		if (g_stack_top[i] && g_stack_top[i] >= addr &&
		    (best < 0 || g_stack_top[i] < g_stack_top[best]))
			best = (int)i;
	return best;
}

__attribute__((noreturn)) void snplab_exception(struct exc_frame *f);

void snplab_exception(struct exc_frame *f)
{
	int cpu = cpu_of_stack((uint64_t)(uintptr_t)f);
	struct vcpu_ctx *vc;
	uint64_t cr2;

	if (cpu < 0)
		halt_forever();
	vc = &g_vcpu[cpu];
	if (vc->in_exception || !g_platform_known)
		halt_forever();
	vc->in_exception = 1;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	if (vc->res) {
		vc->res->exc_vector = (uint32_t)f->vector;
		vc->res->exc_error_code = f->error_code;
		vc->res->exc_rip = f->rip;
		vc->res->exc_cr2 = cr2;
		vc->res->exc_valid = 1;
	}
	vcpu_finish(vc);
	/* Directly, not through the gate: INT3 is for CPL3 (kcall.h). */
	snplab_kcall(ghcb_msr_term_req(SNPLAB_TERM_SET, SNPLAB_TERM_EXCEPTION), 0, KCALL_TERMINATE);
	halt_forever();
}

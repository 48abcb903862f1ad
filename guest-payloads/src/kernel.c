/* SPDX-License-Identifier: MIT */
/*
 * kernel.c - the payload's CPL0 part: per-vCPU GDT, TSS and IDT, the drop
 * to CPL3, and the kernel calls (kcall.h).  Everything else (params checks,
 * GHCB protocol, message building, AES-GCM, certificate parsing, copying)
 * runs at CPL3 in main.c and below.  On the emulated-platform CI box CPL0
 * code runs through KVM's instruction emulator (~1 us per instruction) and
 * CPL3 code natively, so this file stays small.
 *
 * Stacks: the VMM gives each vCPU 16 KiB (docs/contract.md section 1).  The
 * top KSTACK_SIZE bytes are the kernel stack (boot, TSS.RSP0 for kernel
 * calls and exceptions), the rest below it the user stack.
 */
#include "kcall.h"
#include "payload.h"
#include "platform.h"

#define KSTACK_SIZE 0x1000

/* GDT (selectors also in start.S): the kernel's two match the VMM's. */
enum { GDT_NULL, GDT_KERNEL_CS, GDT_KERNEL_DS, GDT_USER_DS, GDT_USER_CS, GDT_TSS, GDT_TSS_HI,
       GDT_ENTRIES };
#define SEL(i) ((i) * 8)
#define DESC_KERNEL_CS 0x00af9b000000ffffULL	/* P, DPL0, code exec/read/accessed, L, G */
#define DESC_KERNEL_DS 0x00cf93000000ffffULL	/* P, DPL0, data read/write/accessed, D/B, G */
#define DESC_USER_DS 0x00cff3000000ffffULL	/* the same with DPL3 */
#define DESC_USER_CS 0x00affb000000ffffULL
#define DESC_TSS_AVAIL 0x89ULL			/* P, DPL0, 64-bit TSS (available) */

struct tss64 {			/* Intel SDM vol. 3 figure 8-11 */
	uint32_t reserved0;
	uint64_t rsp[3];
	uint64_t reserved1;
	uint64_t ist[7];
	uint64_t reserved2;
	uint16_t reserved3;
	uint16_t iomap_base;
} __attribute__((packed));

struct __attribute__((packed)) desc_ptr {
	uint16_t limit;
	uint64_t base;
};

static uint64_t g_gdt[SNPLAB_MAX_VCPUS][GDT_ENTRIES] __attribute__((aligned(16)));
static struct tss64 g_tss[SNPLAB_MAX_VCPUS] __attribute__((aligned(16)));
uint32_t g_platform;		/* enum snplab_platform, valid once g_platform_known */
uint8_t g_platform_known;

extern const char user_start[];
__attribute__((noreturn)) void enter_user(uint64_t arg0, uint64_t arg1, uint64_t rsp, uint64_t rip);

/* This vCPU's GDT with its TSS (RSP0 = kernel stack top); load both. */
static void cpu_install(uint32_t cpu, uint64_t kstack_top)
{
	struct tss64 *t = &g_tss[cpu];
	uint64_t *gdt = g_gdt[cpu], base = (uintptr_t)t, limit = sizeof(*t) - 1;
	struct desc_ptr ptr = { .limit = sizeof(g_gdt[cpu]) - 1, .base = (uintptr_t)gdt };

	t->rsp[0] = kstack_top;
	t->iomap_base = sizeof(*t);	/* no I/O bitmap: every port faults at CPL3 */
	gdt[GDT_NULL] = 0;
	gdt[GDT_KERNEL_CS] = DESC_KERNEL_CS;
	gdt[GDT_KERNEL_DS] = DESC_KERNEL_DS;
	gdt[GDT_USER_DS] = DESC_USER_DS;
	gdt[GDT_USER_CS] = DESC_USER_CS;
	gdt[GDT_TSS] = (limit & 0xffff) | (base & 0xffffff) << 16 | DESC_TSS_AVAIL << 40 |
		       ((limit >> 16) & 0xf) << 48 | ((base >> 24) & 0xff) << 56;
	gdt[GDT_TSS_HI] = base >> 32;
	__asm__ volatile("lgdt %0\n\t"
			 "mov %k1, %%ds\n\t"
			 "mov %k1, %%es\n\t"
			 "mov %k1, %%ss\n\t"
			 "mov %k2, %%fs\n\t"
			 "mov %k2, %%gs\n\t"
			 "pushq %3\n\t"
			 "leaq 1f(%%rip), %%rax\n\t"
			 "pushq %%rax\n\t"
			 "lretq\n"
			 "1:\tltr %w4"
			 :
			 : "m"(ptr), "r"(SEL(GDT_KERNEL_DS)), "r"(0), "i"(SEL(GDT_KERNEL_CS)),
			   "r"(SEL(GDT_TSS))
			 : "rax", "memory");
}

__attribute__((noreturn)) void snplab_main(uint64_t cpu, uint64_t params_gpa, uint64_t stack_top);

void snplab_main(uint64_t cpu, uint64_t params_gpa, uint64_t stack_top)
{
	uint32_t platform = snplab_params.platform;

	if (cpu >= SNPLAB_MAX_VCPUS)
		halt_forever();
	g_stack_top[cpu] = stack_top;
	exc_install((uint32_t)cpu);
	cpu_install((uint32_t)cpu, stack_top);
	if (platform != SNPLAB_PLATFORM_EMULATED && platform != SNPLAB_PLATFORM_SNP)
		halt_forever();		/* cannot even tell how to terminate */
	g_platform = platform;
	g_platform_known = 1;
	enter_user(cpu, params_gpa, stack_top - KSTACK_SIZE, (uintptr_t)user_start);
}

uint64_t snplab_kcall(uint64_t a0, uint64_t a1, uint64_t op)
{
	switch (op) {
	case KCALL_SEV_STATUS:
		return rdmsr(MSR_AMD64_SEV);
	case KCALL_MSR_PROTOCOL:
	case KCALL_TERMINATE:
		wrmsr(MSR_AMD64_SEV_ES_GHCB, a0);
		vmgexit(g_platform);
		if (op == KCALL_TERMINATE)
			halt_forever();
		return rdmsr(MSR_AMD64_SEV_ES_GHCB);
	case KCALL_VMGEXIT:
		if (a1)
			wrmsr(MSR_AMD64_SEV_ES_GHCB, a0);
		vmgexit(g_platform);
		return 0;
	case KCALL_RESCIND:
		return pvalidate_run_4k(g_platform, a0, a1, 0);
	}
	return KCALL_BAD_OP;
}

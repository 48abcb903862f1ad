/* SPDX-License-Identifier: MIT */
/*
 * testguest.c - a tiny payload for the VMM's own tests (not the real snplab payload).
 *
 * Entered in 64-bit mode with RDI = vCPU index, RSI = GPA of snplab_params, RSP = stack top.
 * The host picks a behaviour by writing `test_mode` before launch; every vCPU records what it
 * saw in `test_results` (found by symbol, decoded via DWARF by the host) and then acts.
 */
#include <stdint.h>
#include "snplab_abi.h"

enum test_mode {
	TEST_HALT = 0,		/* record and hlt */
	TEST_SPIN = 1,		/* spin forever in spin_forever() */
	TEST_FAULT = 2,		/* ud2 in do_fault() with no IDT: triple fault */
	TEST_IO = 3,		/* outb 0x80, inb 0x81, rep outsb 0x82 */
	TEST_MSR = 4,		/* wrmsr/rdmsr of the GHCB MSR and rdmsr of SEV_STATUS */
	TEST_DOORBELL = 5,	/* outl to the doorbell port, outl+inl on the pvalidate port */
	TEST_MMIO = 6,		/* write to a GPA with no memslot */
	TEST_SPIN_VCPU1 = 7,	/* vCPU 1 spins, the others halt */
	TEST_FAULT_VCPU1 = 8,	/* vCPU 1 faults, the others spin */
};

#define TEST_RESULTS_MAGIC 0x54455354u	/* "TEST" */

struct test_vcpu_record {
	uint64_t rdi;
	uint64_t rsi;
	uint64_t rsp;
	uint32_t params_magic;
	uint32_t params_nvcpus;
	uint64_t ghcb_gpa;
	uint64_t io_in;
	uint64_t msr_read;
	uint64_t sev_status;
	uint64_t pval_result;
	uint32_t done;
	int32_t delta;
};

struct test_results {
	uint32_t magic;
	uint32_t mode;
	uint32_t arrived;
	uint32_t pad;
	struct test_vcpu_record vcpu[SNPLAB_MAX_VCPUS];
	uint8_t tag[8];
	char text[16];
};

struct snplab_params snplab_params __attribute__((section(".data")));
struct test_results test_results __attribute__((section(".data")));
volatile uint32_t test_mode __attribute__((section(".data"))) = TEST_HALT;
uint8_t big_bss[3 * 4096];	/* pure .bss pages: launched as ZERO */

static const char hello[] = "hello, vmm";

void _start(void);
__asm__(".section .text.start, \"ax\"\n"
	".global _start\n"
	"_start:\n"
	"	call guest_main\n"
	"1:	hlt\n"
	"	jmp 1b\n"
	".previous\n");

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint64_t rdmsr(uint32_t msr)
{
	uint32_t lo, hi;
	__asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
	return ((uint64_t)hi << 32) | lo;
}
static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

__attribute__((noinline, noreturn)) void spin_forever(void)
{
	for (;;)
		__asm__ volatile("pause");
}

__attribute__((noinline, noreturn)) void do_fault(void)
{
	__asm__ volatile("ud2");
	for (;;)
		;
}

__attribute__((noinline)) void guest_main(uint64_t idx, uint64_t params_gpa)
{
	struct snplab_params *p = (struct snplab_params *)params_gpa;
	struct test_vcpu_record *r = &test_results.vcpu[idx & 3];
	uint64_t rsp;
	uint32_t mode = test_mode;

	__asm__ volatile("mov %%rsp, %0" : "=r"(rsp));
	r->rdi = idx;
	r->rsi = params_gpa;
	r->rsp = rsp;
	r->params_magic = p->magic;
	r->params_nvcpus = p->nvcpus;
	r->ghcb_gpa = p->vcpu[idx & 3].ghcb_gpa;
	r->delta = -1;
	__atomic_fetch_add(&test_results.arrived, 1, __ATOMIC_SEQ_CST);
	if (idx == 0) {
		test_results.magic = TEST_RESULTS_MAGIC;
		test_results.mode = mode;
		for (int i = 0; i < 8; i++)
			test_results.tag[i] = (uint8_t)(0xA0 + i);
		for (int i = 0; hello[i]; i++)
			test_results.text[i] = hello[i];
	}

	switch (mode) {
	case TEST_SPIN:
		spin_forever();
	case TEST_FAULT:
		do_fault();
	case TEST_IO:
		outb(0x80, (uint8_t)(0x40 + idx));
		r->io_in = inb(0x81);
		__asm__ volatile("rep outsb" :: "S"(hello), "c"(4), "d"(0x82) : "memory");
		break;
	case TEST_MSR:
		wrmsr(0xC0010130, 0x1234000 | 0x12);
		r->msr_read = rdmsr(0xC0010130);
		r->sev_status = rdmsr(0xC0010131);
		break;
	case TEST_DOORBELL:
		outl(SNPLAB_DOORBELL_PORT, 0xD00D0000u | (uint32_t)idx);
		outl(SNPLAB_PVALIDATE_PORT, 0x00400000u | SNPLAB_PVAL_VALIDATE);
		r->pval_result = inl(SNPLAB_PVALIDATE_PORT);
		break;
	case TEST_MMIO:
		*(volatile uint64_t *)0x20000000ull = 0x55;	/* 512 MiB: mapped, no memslot */
		break;
	case TEST_SPIN_VCPU1:
		if (idx == 1)
			spin_forever();
		break;
	case TEST_FAULT_VCPU1:
		if (idx == 1)
			do_fault();
		spin_forever();
	default:
		break;
	}
	r->done = 1;
}

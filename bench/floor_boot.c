/* SPDX-License-Identifier: MIT */
/*
 * floor_boot.c - the C floor of bench/boot.py: the same long-mode guest
 * booted to HLT with nothing but raw KVM ioctls, so that the VMM's boot time
 * can be read against what the kernel itself costs.
 *
 *   floor_boot IMAGE
 *
 * IMAGE (written by bench/boot.py from what the VMM would load): a header
 * { u64 ram_size, u64 npages, u64 sregs_size, u64 regs_size }, the raw
 * struct kvm_sregs and struct kvm_regs the VMM gives vCPU 0, then npages
 * records { u64 gpa, u8 page[4096] }.  Everything that can be precomputed
 * (the image, KVM_GET_SUPPORTED_CPUID, the kvm_run mmap size) is, once.
 *
 * Then it boots on request: for every line read from stdin it runs one boot
 * (open /dev/kvm, KVM_CREATE_VM, mmap + KVM_SET_USER_MEMORY_REGION, copy the
 * image, KVM_CREATE_VCPU, mmap kvm_run, KVM_SET_CPUID2, KVM_SET_SREGS,
 * KVM_SET_REGS, KVM_RUN until HLT, close everything) and prints its time in
 * nanoseconds, so the caller can interleave C and VMM boots.  Exit 2 with one
 * line on stderr on any failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define MAX_CPUID 256

struct page_rec {
	uint64_t gpa;
	uint8_t data[PAGE];
};

static struct kvm_sregs g_sregs;
static struct kvm_regs g_regs;
static struct page_rec *g_pages;
static uint64_t g_npages, g_ram;
static int g_run_size;
static struct {
	struct kvm_cpuid2 h;
	struct kvm_cpuid_entry2 e[MAX_CPUID];
} g_cpuid;

static void die(const char *what)
{
	fprintf(stderr, "floor_boot: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void load_image(const char *path)
{
	uint64_t hdr[4];
	FILE *f = fopen(path, "rb");

	if (!f)
		die(path);
	if (fread(hdr, sizeof(hdr), 1, f) != 1)
		die("image header");
	if (hdr[2] != sizeof(g_sregs) || hdr[3] != sizeof(g_regs)) {
		fprintf(stderr, "floor_boot: image has sregs/regs of %llu/%llu bytes, want %zu/%zu\n",
			(unsigned long long)hdr[2], (unsigned long long)hdr[3], sizeof(g_sregs),
			sizeof(g_regs));
		exit(2);
	}
	g_ram = hdr[0];
	g_npages = hdr[1];
	if (fread(&g_sregs, sizeof(g_sregs), 1, f) != 1 || fread(&g_regs, sizeof(g_regs), 1, f) != 1)
		die("image registers");
	g_pages = calloc(g_npages ? g_npages : 1, sizeof(*g_pages));
	if (!g_pages)
		die("calloc");
	if (g_npages && fread(g_pages, sizeof(*g_pages), g_npages, f) != g_npages)
		die("image pages");
	for (uint64_t i = 0; i < g_npages; i++)
		if (g_pages[i].gpa % PAGE || g_pages[i].gpa + PAGE > g_ram) {
			fprintf(stderr, "floor_boot: page %llu outside RAM\n", (unsigned long long)i);
			exit(2);
		}
	fclose(f);
}

static void prepare(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);

	if (kvm < 0)
		die("/dev/kvm");
	g_cpuid.h.nent = MAX_CPUID;
	if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &g_cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID");
	g_run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (g_run_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE");
	close(kvm);
}

static void boot(void)
{
	int kvm, vm, vcpu;
	uint8_t *mem;
	struct kvm_run *run;
	struct kvm_userspace_memory_region region = { 0 };

	kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm");
	vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	mem = mmap(NULL, g_ram, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap guest RAM");
	region.memory_size = g_ram;
	region.userspace_addr = (uintptr_t)mem;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	for (uint64_t i = 0; i < g_npages; i++)
		memcpy(mem + g_pages[i].gpa, g_pages[i].data, PAGE);
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU");
	run = mmap(NULL, g_run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run");
	if (ioctl(vcpu, KVM_SET_CPUID2, &g_cpuid) < 0)
		die("KVM_SET_CPUID2");
	if (ioctl(vcpu, KVM_SET_SREGS, &g_sregs) < 0)
		die("KVM_SET_SREGS");
	if (ioctl(vcpu, KVM_SET_REGS, &g_regs) < 0)
		die("KVM_SET_REGS");
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0 && errno != EINTR)
			die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_HLT)
			break;
		fprintf(stderr, "floor_boot: unexpected exit reason %u\n", run->exit_reason);
		exit(2);
	}
	munmap(run, g_run_size);
	close(vcpu);
	close(vm);
	munmap(mem, g_ram);
	close(kvm);
}

int main(int argc, char **argv)
{
	char line[64];

	if (argc != 2) {
		fprintf(stderr, "usage: floor_boot IMAGE\n");
		return 2;
	}
	load_image(argv[1]);
	prepare();
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		struct timespec a, b;

		clock_gettime(CLOCK_MONOTONIC, &a);
		boot();
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%lld\n", (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
	}
	return 0;
}

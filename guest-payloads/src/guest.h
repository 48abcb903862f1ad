/* SPDX-License-Identifier: MIT */
/*
 * guest.h - per-vCPU state and the small interface between the portable
 * parts of the payload (steps.c, msg.c, certs.c, aes_gcm.c: also compiled
 * for the host by the unit tests) and the guest-only parts (ghcb.c,
 * platform.h, main.c), which the host harness replaces with a fake.
 */
#ifndef SNPLAB_GUEST_H
#define SNPLAB_GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "snplab_abi.h"
#include "aes_gcm.h"

#define PAGE_SIZE 4096ULL
#define PAGE_MASK (~(PAGE_SIZE - 1))

/* GHCB spec / Linux arch/x86/include/uapi/asm/svm.h */
#define SVM_VMGEXIT_PSC 0x80000010ULL
#define SVM_VMGEXIT_GUEST_REQUEST 0x80000011ULL
#define SVM_VMGEXIT_EXT_GUEST_REQUEST 0x80000012ULL
#define SVM_VMGEXIT_TERM_REQUEST 0x8000FFFEULL

/* Linux arch/x86/include/asm/sev.h: struct snp_guest_msg_hdr */
#define MSG_HDR_SIZE 0x60
#define MSG_MAX_PAYLOAD 4000	/* one page minus the header */
#define MSG_REQ_MAX_PAYLOAD 128	/* largest request we build (TSC_INFO_REQ) */

/* Secrets page: VMPCKn at 0x20 + 32n (Linux struct snp_secrets_page) */
#define SECRETS_VMPCK_OFF(n) (0x20 + 32 * (n))

#define SNPLAB_NR_VMPCK 4

struct vcpu_ctx {
	uint32_t idx;
	const struct snplab_vcpu_params *vp;
	const uint8_t *secrets;			/* secrets page (private) */
	struct snplab_vcpu_results *res;	/* NULL until the results area is shared */
	uint64_t ghcb_gpa;
	uint16_t ghcb_version;
	uint8_t msr_holds_ghcb;			/* GHCB MSR already holds ghcb_gpa */
	uint8_t in_exception;
	uint8_t term_ghcb;			/* terminate through the GHCB page (scripted) */
	uint32_t cert_store_used;		/* private copy of res->cert_store_used */
	uint32_t last_store_off;		/* the last complete copy in cert_store */
	uint32_t last_store_len;		/* ... and its length (0 = none) */
	uint64_t hv_features;
	uint8_t key_ready[SNPLAB_NR_VMPCK];
	struct gcm_key keys[SNPLAB_NR_VMPCK];
	uint32_t log_len;
	char log[SNPLAB_LOG_SIZE];
	/* private (encrypted-memory) double buffers, as Linux does */
	uint8_t req_msg[MSG_HDR_SIZE + MSG_REQ_MAX_PAYLOAD] __attribute__((aligned(16)));
	uint8_t resp_msg[PAGE_SIZE] __attribute__((aligned(16)));
	uint8_t plain[PAGE_SIZE] __attribute__((aligned(16)));
};

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

/* Identity map: a GPA is the guest's virtual address (the C-bit lives in
 * the page tables, not in the address).  The host harness maps GPAs into
 * its own fake memory. */
#ifdef SNPLAB_HOST
void *gpa_ptr(uint64_t gpa);
#else
static inline void *gpa_ptr(uint64_t gpa)
{
	return (void *)(uintptr_t)gpa;
}
#endif

/* What one guest-request VMGEXIT returned. */
struct gr_exit {
	uint64_t info1;		/* SW_EXITINFO1 */
	uint64_t info2;		/* SW_EXITINFO2 */
	uint64_t rbx;		/* GHCB RBX after the exit */
};

#define GR_RAX_VALID (1u << 0)
#define GR_RBX_VALID (1u << 1)

/* One SNP (extended) guest request through the vCPU's GHCB (ghcb.c; the
 * host harness provides a fake). */
void hv_guest_request(struct vcpu_ctx *vc, uint64_t exit_code, uint64_t req_gpa,
		      uint64_t resp_gpa, uint64_t rax, uint64_t rbx, uint32_t valid,
		      struct gr_exit *out);

/* Byte helpers usable on shared (host-writable) memory: every byte is read
 * exactly once, so hostile concurrent writes cannot break bounds checks. */
static inline uint32_t rd_le32(const volatile uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd_le64(const uint8_t *p)
{
	uint64_t v;

	__builtin_memcpy(&v, p, 8);
	return v;
}

static inline void wr_le64(uint8_t *p, uint64_t v)
{
	__builtin_memcpy(p, &v, 8);
}

#endif

/* SPDX-License-Identifier: MIT */
/*
 * ghcb.h - GHCB MSR protocol, GHCB page calls and page-state changes
 * (GHCB spec, AMD pub. 56421; offsets as in Linux struct ghcb).
 */
#ifndef SNPLAB_GHCB_H
#define SNPLAB_GHCB_H

#include <stdint.h>

#include "guest.h"

/* Negotiate the protocol (SEV_INFO) and read HV features (MSR protocol).
 * Returns 0 or an enum snplab_setup_stage; *detail gets the bad value. */
uint32_t ghcb_negotiate(struct vcpu_ctx *vc, uint64_t *detail);

/* Rescind, share (MSR-protocol PSC) and register this vCPU's GHCB page. */
uint32_t ghcb_establish(struct vcpu_ctx *vc, uint64_t *detail);

/* Make npages pages at gpa shared: PVALIDATE-rescind each page, then
 * page-state change NAE(s) through the GHCB. */
uint32_t ghcb_make_shared(struct vcpu_ctx *vc, uint64_t gpa, uint64_t npages, uint64_t *detail);

#define GHCB_MSR_TERM_REQ 0x100ULL	/* Linux sev-common.h */

/* The GHCB MSR value of a termination request. */
static inline uint64_t ghcb_msr_term_req(uint32_t set, uint32_t code)
{
	return GHCB_MSR_TERM_REQ | (uint64_t)(set & 0xf) << 12 | (uint64_t)(code & 0xff) << 16;
}

/* GHCB page (NAE 0x8000FFFE) termination request: SW_EXITINFO1[3:0] = reason
 * set, [11:4] = reason code (GHCB spec 56421, "Termination Request").  KVM
 * exits with SEV_TERM and never resumes the vCPU; returns only if it does.
 * CPL3 only. */
void ghcb_terminate_nae(struct vcpu_ctx *vc, uint32_t set, uint32_t code);

/* GHCB MSR-protocol termination request through a kernel call (CPL3 only);
 * never returns. */
__attribute__((noreturn)) void ghcb_terminate(uint32_t set, uint32_t code);

#endif

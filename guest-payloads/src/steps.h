/* SPDX-License-Identifier: MIT */
/*
 * steps.h - the step interpreter: runs one vCPU's script of (extended)
 * guest requests and records the raw facts in its results slot.
 */
#ifndef SNPLAB_STEPS_H
#define SNPLAB_STEPS_H

#include <stdint.h>

#include "guest.h"

/* Run vc->vp's steps, writing vc->res.  Returns the termination code to
 * use: SNPLAB_TERM_DONE, or the code of an SNPLAB_OP_TERMINATE step. */
uint32_t run_steps(struct vcpu_ctx *vc);

/* The seqno the next request on VMPCKn will use (last consumed + 1). */
uint64_t steps_seqno_next(unsigned int vmpck);

/* Forget all sequence numbers (host harness: between runs). */
void steps_reset(void);

#endif

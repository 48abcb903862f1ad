/* SPDX-License-Identifier: MIT */
/*
 * payload.h - state shared by the guest-only files (main.c, kernel.c, exc.c).
 */
#ifndef SNPLAB_PAYLOAD_H
#define SNPLAB_PAYLOAD_H

#include <stdint.h>

#include "guest.h"

extern struct snplab_params snplab_params;
extern struct vcpu_ctx g_vcpu[SNPLAB_MAX_VCPUS];
extern uint64_t g_stack_top[SNPLAB_MAX_VCPUS];
extern uint32_t g_platform;	/* kernel.c: enum snplab_platform ... */
extern uint8_t g_platform_known;	/* ... valid once this is set (at boot) */

/* Write the final results of this vCPU (plain memory writes: any CPL). */
void vcpu_finish(struct vcpu_ctx *vc);

/* vcpu_finish, then the termination request through a kernel call: CPL3 only
 * (the kernel terminates with snplab_kcall directly, see kcall.h). */
__attribute__((noreturn)) void vcpu_terminate(struct vcpu_ctx *vc, uint32_t code);

/* kernel.c: the kernel-call dispatcher, also called directly at CPL0. */
uint64_t snplab_kcall(uint64_t a0, uint64_t a1, uint64_t op);

void exc_install(uint32_t cpu);

#endif

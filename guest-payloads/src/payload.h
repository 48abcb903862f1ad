/* SPDX-License-Identifier: MIT */
/*
 * payload.h - state shared by main.c and exc.c (guest only).
 */
#ifndef SNPLAB_PAYLOAD_H
#define SNPLAB_PAYLOAD_H

#include <stdint.h>

#include "guest.h"

extern struct vcpu_ctx g_vcpu[SNPLAB_MAX_VCPUS];
extern uint64_t g_stack_top[SNPLAB_MAX_VCPUS];

/* Write the final results of this vCPU and send the termination request. */
__attribute__((noreturn)) void vcpu_terminate(struct vcpu_ctx *vc, uint32_t code);

void exc_install(uint32_t cpu);

#endif

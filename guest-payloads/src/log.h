/* SPDX-License-Identifier: MIT */
/*
 * log.h - a tiny per-vCPU text log, kept in private memory and copied into
 * the results slot (results.vcpu[v].log) when the vCPU terminates.
 */
#ifndef SNPLAB_LOG_H
#define SNPLAB_LOG_H

#include <stdint.h>

#include "guest.h"

void log_str(struct vcpu_ctx *vc, const char *s);
void log_hex(struct vcpu_ctx *vc, const char *name, uint64_t v);	/* "name=0x... " */
void log_flush(struct vcpu_ctx *vc);

#endif

/* SPDX-License-Identifier: MIT */
/*
 * log.c - see log.h.
 */
#include "log.h"

static void log_ch(struct vcpu_ctx *vc, char c)
{
	if (vc->log_len < SNPLAB_LOG_SIZE)
		vc->log[vc->log_len++] = c;
}

void log_str(struct vcpu_ctx *vc, const char *s)
{
	while (*s)
		log_ch(vc, *s++);
}

void log_hex(struct vcpu_ctx *vc, const char *name, uint64_t v)
{
	int shift = 60;

	log_str(vc, name);
	log_str(vc, "=0x");
	while (shift > 0 && !((v >> shift) & 0xf))
		shift -= 4;
	for (; shift >= 0; shift -= 4)
		log_ch(vc, "0123456789abcdef"[(v >> shift) & 0xf]);
	log_ch(vc, ' ');
}

void log_flush(struct vcpu_ctx *vc)
{
	if (!vc->res)
		return;
	memcpy(vc->res->log, vc->log, vc->log_len);
	vc->res->log_len = vc->log_len;
}

/* SPDX-License-Identifier: MIT */
/*
 * harness.h - host-side test harness for the portable payload code: a fake
 * guest memory laid out as in docs/contract.md and a fake hypervisor + PSP
 * answering the step interpreter's guest requests.  Test-only; it models
 * just enough of KVM and the PSP to drive the guest's policies.
 */
#ifndef SNPLAB_HARNESS_H
#define SNPLAB_HARNESS_H

#include <stdint.h>

#include "snplab_abi.h"

#define FAKE_MEM_SIZE (16ULL << 20)
#define FAKE_SECRETS_GPA 0x5000ULL
#define FAKE_PRIVATE_GPA(v) (0x380000ULL + (v) * 0x1000ULL)
#define FAKE_SHARED_GPA 0x400000ULL
#define FAKE_SHARED_SIZE 0x600000ULL
#define FAKE_SLICE_GPA(v) (0x400000ULL + (v) * 0x100000ULL)
#define FAKE_RESULTS_GPA 0x800000ULL
#define FAKE_CERTS_MAX_PAGES 128

extern uint8_t *fake_mem;

/* VMPCKn in the fake secrets page: byte i = 0x40 * n + i. */
void fake_vmpck(unsigned int n, uint8_t key[32]);

/* need_pages: size of the certificate blob in pages (>= 1).
 * answers: comma-separated answers to certificate exits, in order, then
 *   "auto": auto | busy | eio | enospc:N | garbage | hugeoff
 * resp: comma-separated tampering of firmware responses, in order, then
 *   "ok": ok | badseqno | badtag | badhdr | bigsize */
void fake_hv_reset(uint64_t need_pages, const char *answers, const char *resp);
const uint8_t *fake_blob(uint32_t *len);

#endif

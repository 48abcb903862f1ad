/* SPDX-License-Identifier: MIT */
/*
 * fake_hv.c - test-only stand-in for KVM + PSP behind hv_guest_request()
 * (see harness.h).  Prints one line per request seen at a VMGEXIT ("msg",
 * the message log), per certificate exit ("certexit") and per firmware
 * call ("fw"), so the tests see what the "host" saw.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest.h"
#include "harness.h"
#include "msg.h"

#define MAX_TOKENS 32

static char g_answers[MAX_TOKENS][32], g_resp[MAX_TOKENS][32];
static int g_nanswers, g_next_answer, g_nresp, g_next_resp;
static uint64_t g_need, g_expected[4];
static uint8_t g_blob[FAKE_CERTS_MAX_PAGES * 4096];
static uint32_t g_blob_len;

/* RFC 4122 byte order (reference/errata.md, cert table) */
static const uint8_t guid_vcek[16] = { 0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64,
				       0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd };
static const uint8_t guid_ask[16] = { 0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4,
				      0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82 };
static const uint8_t guid_ark[16] = { 0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52,
				      0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae };

static int split(const char *s, char out[MAX_TOKENS][32])
{
	int n = 0;

	while (s && *s && n < MAX_TOKENS) {
		const char *e = strchr(s, ',');
		size_t len = e ? (size_t)(e - s) : strlen(s);

		if (len > 31)
			len = 31;
		memcpy(out[n], s, len);
		out[n][len] = 0;
		n++;
		s = e ? e + 1 : NULL;
	}
	return n;
}

static void put_entry(uint8_t *e, const uint8_t guid[16], uint32_t off, uint32_t len)
{
	memcpy(e, guid, 16);
	memcpy(e + 16, &off, 4);
	memcpy(e + 20, &len, 4);
}

void fake_vmpck(unsigned int n, uint8_t key[32])
{
	unsigned int i;

	for (i = 0; i < 32; i++)
		key[i] = (uint8_t)(0x40 * n + i);
}

void fake_hv_reset(uint64_t need_pages, const char *answers, const char *resp)
{
	uint32_t i, data, l1, l2, l3;

	g_nanswers = split(answers, g_answers);
	g_nresp = split(resp, g_resp);
	g_next_answer = g_next_resp = 0;
	for (i = 0; i < 4; i++) {
		g_expected[i] = 1;
		fake_vmpck(i, fake_mem + FAKE_SECRETS_GPA + 0x20 + 32 * i);
	}
	if (need_pages < 1)
		need_pages = 1;
	if (need_pages > FAKE_CERTS_MAX_PAGES)
		need_pages = FAKE_CERTS_MAX_PAGES;
	g_need = need_pages;
	/* three entries + terminator, then data; needs exactly need_pages pages */
	g_blob_len = (uint32_t)(need_pages * 4096 - 123);
	memset(g_blob, 0, sizeof(g_blob));
	data = g_blob_len - 4 * 24;
	l1 = data / 3;
	l2 = data / 3;
	l3 = data - l1 - l2;
	put_entry(g_blob, guid_vcek, 96, l1);
	put_entry(g_blob + 24, guid_ask, 96 + l1, l2);
	put_entry(g_blob + 48, guid_ark, 96 + l1 + l2, l3);
	for (i = 96; i < g_blob_len; i++)
		g_blob[i] = (uint8_t)(i * 7 + 3);
}

const uint8_t *fake_blob(uint32_t *len)
{
	*len = g_blob_len;
	return g_blob;
}

/* The host's view of shared memory; NULL for private (or absent) GPAs. */
static uint8_t *host_view(uint64_t gpa, uint64_t len)
{
	if (gpa < FAKE_SHARED_GPA || len > FAKE_SHARED_SIZE ||
	    gpa - FAKE_SHARED_GPA > FAKE_SHARED_SIZE - len)
		return NULL;
	return fake_mem + gpa;
}

static void print_hex(const char *name, const uint8_t *p, size_t n)
{
	size_t i;

	printf(" %s=", name);
	for (i = 0; i < n; i++)
		printf("%02x", p[i]);
	if (!n)
		printf("-");
}

static const char *next_token(char list[MAX_TOKENS][32], int n, int *next, const char *dflt)
{
	return *next < n ? list[(*next)++] : dflt;
}

/* The PSP: SNP_GUEST_REQUEST on the (bounced) request page. */
static uint64_t fake_fw(uint64_t exit_code, uint64_t req_gpa, uint64_t resp_gpa)
{
	uint8_t req[4096], resp[4096], pt[4096], key[32], iv[12] = { 0 };
	const uint8_t *v = host_view(req_gpa, 4096);
	struct gcm_key k;
	uint64_t seqno;
	uint16_t len;
	uint8_t vmpck, type;
	const char *mode;
	uint8_t *out;

	if (v)
		memcpy(req, v, sizeof(req));
	else
		memset(req, 0, sizeof(req));	/* private page: the host sees ciphertext */
	seqno = rd_le64(req + MSG_OFF_SEQNO);
	vmpck = req[MSG_OFF_VMPCK];
	type = req[MSG_OFF_TYPE];
	len = (uint16_t)(req[MSG_OFF_MSG_SZ] | req[MSG_OFF_MSG_SZ + 1] << 8);
	printf("fw exit=0x%llx vmpck=%u seqno=0x%llx type=%u", (unsigned long long)exit_code, vmpck,
	       (unsigned long long)seqno, type);
	if (vmpck > 3 || len > MSG_MAX_PAYLOAD || req[MSG_OFF_ALGO] != 1 ||
	    seqno != g_expected[vmpck]) {
		printf(" status=0x16\n");
		return 0x16;	/* INVALID_PARAM */
	}
	fake_vmpck(vmpck, key);
	gcm_init(&k, key);
	wr_le64(iv, seqno);
	if (gcm_open(&k, iv, req + MSG_AAD_OFF, MSG_AAD_LEN, req + MSG_HDR_SIZE, pt, len, req)) {
		printf(" status=0x16\n");
		return 0x16;
	}
	g_expected[vmpck] += 2;
	memset(resp, 0, sizeof(resp));
	if (type == SNP_MSG_REPORT_REQ) {
		uint8_t *p = resp + MSG_HDR_SIZE, *r = p + REPORT_RSP_OFF_REPORT;
		uint32_t size = 0x4a0;

		memcpy(p + REPORT_RSP_OFF_SIZE, &size, 4);
		r[0] = 5;				/* VERSION */
		memcpy(r + 0x30, pt + 0x40, 4);		/* VMPL */
		memcpy(r + 0x50, pt, 64);		/* REPORT_DATA */
		memset(r + 0x90, 0x4d, 48);		/* MEASUREMENT */
		len = 0x4c0;
	} else {
		len = 64;
	}
	msg_seal(resp, &k, seqno + 1, (uint8_t)(type + 1), req[MSG_OFF_VERSION], vmpck, len);
	mode = next_token(g_resp, g_nresp, &g_next_resp, "ok");
	if (!strcmp(mode, "badseqno"))
		resp[MSG_OFF_SEQNO] += 2;
	else if (!strcmp(mode, "badtag"))
		resp[MSG_HDR_SIZE + 7] ^= 1;
	else if (!strcmp(mode, "badhdr"))
		resp[MSG_OFF_HDR_VERSION] = 2;
	else if (!strcmp(mode, "bigsize"))
		resp[MSG_OFF_MSG_SZ] = 0xff, resp[MSG_OFF_MSG_SZ + 1] = 0xff;
	printf(" status=0x0 tamper=%s\n", mode);
	out = host_view(resp_gpa, 4096);
	if (out)
		memcpy(out, resp, sizeof(resp));
	return 0;
}

void hv_guest_request(struct vcpu_ctx *vc, uint64_t exit_code, uint64_t req_gpa,
		      uint64_t resp_gpa, uint64_t rax, uint64_t rbx, uint32_t valid,
		      struct gr_exit *out)
{
	const uint8_t *req = host_view(req_gpa & PAGE_MASK, 4096);

	(void)vc;
	out->info1 = 0;
	out->info2 = 0;
	out->rbx = rbx;
	if (req) {	/* the message log: every request KVM sees at a VMGEXIT */
		const uint8_t *m = req + (req_gpa & 0xfff);
		uint16_t len = (uint16_t)(m[MSG_OFF_MSG_SZ] | m[MSG_OFF_MSG_SZ + 1] << 8);

		if ((req_gpa & 0xfff) + MSG_HDR_SIZE + (uint64_t)len > 4096)
			len = 0;
		printf("msg exit=0x%llx vmpck=%u seqno=0x%llx type=%u", (unsigned long long)exit_code,
		       m[MSG_OFF_VMPCK], (unsigned long long)rd_le64(m + MSG_OFF_SEQNO), m[MSG_OFF_TYPE]);
		print_hex("tag", m, 16);
		print_hex("ct", m + MSG_HDR_SIZE, len);
		printf("\n");
	}
	if ((req_gpa | resp_gpa) & 0xfff || req_gpa == resp_gpa) {
		out->info1 = 2;
		out->info2 = 5;		/* GHCB_ERR_INVALID_INPUT (newest KVM) */
		return;
	}
	if (exit_code == SVM_VMGEXIT_EXT_GUEST_REQUEST && req && req[MSG_OFF_TYPE] == SNP_MSG_REPORT_REQ) {
		const char *a;

		if (!(valid & GR_RAX_VALID) || !(valid & GR_RBX_VALID) || (rax & 0xfff)) {
			out->info1 = 2;
			out->info2 = 5;
			return;
		}
		a = next_token(g_answers, g_nanswers, &g_next_answer, "auto");
		printf("certexit gpa=0x%llx npages=0x%llx answer=%s\n", (unsigned long long)rax,
		       (unsigned long long)rbx, a);
		if (!strcmp(a, "busy")) {
			out->info2 = 2ULL << 32;
			return;
		}
		if (!strcmp(a, "eio")) {
			out->info2 = 0xffffffffULL << 32;
			return;
		}
		if (!strncmp(a, "enospc:", 7)) {
			out->info2 = 1ULL << 32;
			out->rbx = strtoull(a + 7, NULL, 0);
			return;
		}
		if (!strcmp(a, "garbage") || !strcmp(a, "hugeoff")) {
			uint64_t n = rbx < 8 ? rbx : 8;
			uint8_t *buf;

			while (n && !(buf = host_view(rax, n * 4096)))
				n--;
			if (n && !strcmp(a, "garbage")) {
				memset(buf, 0xa5, n * 4096);
			} else if (n) {
				memset(buf, 0, 48);
				put_entry(buf, guid_vcek, 0xfffffff0u, 0xffffffffu);
			}
		} else if (rbx < g_need) {		/* auto */
			out->info2 = 1ULL << 32;
			out->rbx = g_need;
			return;
		} else {
			uint8_t *buf = host_view(rax, g_blob_len);

			if (buf)
				memcpy(buf, g_blob, g_blob_len);
		}
	}
	out->info2 = fake_fw(exit_code, req_gpa, resp_gpa);
}

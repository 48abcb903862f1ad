/* SPDX-License-Identifier: MIT */
/*
 * harness.c - line-oriented driver for the payload's portable C code on the
 * host (built with ASan/UBSan by `make host`).  One command per line on
 * stdin, answers on stdout; hex strings, "-" = empty.
 *
 *   gcm_seal KEY IV AAD PT            -> CT TAG
 *   gcm_open KEY IV AAD CT TAG        -> OK PT | FAIL [output-modified]
 *   msg_seal KEY SEQNO TYPE VERSION VMPCK REPORT_DATA VMPL -> MSG
 *   msg_open KEY SEQNO TYPE VERSION VMPCK RESP   -> DEC LEN PT
 *   certs LIMIT BUF                   -> LEN NENTRIES TRUNCATED  (buffer of exactly LIMIT bytes)
 *   readable BUF_GPA NPAGES AREA_GPA AREA_PAGES -> N
 *   run need=N answers=A resp=R vcpus=V   then   step k=v ...   lines, then   go
 *       -> certexit/fw/vcpu/step/att/store lines, then "end"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs.h"
#include "guest.h"
#include "harness.h"
#include "msg.h"
#include "steps.h"

uint8_t *fake_mem;

void *gpa_ptr(uint64_t gpa)
{
	if (gpa >= FAKE_MEM_SIZE) {
		fprintf(stderr, "harness: guest code touched GPA 0x%llx outside memory\n",
			(unsigned long long)gpa);
		abort();
	}
	return fake_mem + gpa;
}

static uint8_t *unhex(const char *s, size_t *len)
{
	size_t n, i;
	uint8_t *p;

	if (!s || !strcmp(s, "-"))
		s = "";
	n = strlen(s) / 2;
	p = malloc(n ? n : 1);
	for (i = 0; i < n; i++) {
		unsigned int b;

		if (sscanf(s + 2 * i, "%2x", &b) != 1) {
			fprintf(stderr, "harness: bad hex\n");
			exit(2);
		}
		p[i] = (uint8_t)b;
	}
	*len = n;
	return p;
}

static void put_hex(const uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		printf("%02x", p[i]);
	if (!n)
		printf("-");
}

static uint64_t num(const char *s)
{
	return s ? strtoull(s, NULL, 0) : 0;
}

#define MAX_ARGS 16

static int tokenize(char *line, char *argv[MAX_ARGS])
{
	int n = 0;
	char *t = strtok(line, " \t\r\n");

	while (t && n < MAX_ARGS) {
		argv[n++] = t;
		t = strtok(NULL, " \t\r\n");
	}
	return n;
}

static void cmd_gcm_seal(char **a)
{
	size_t kl, il, al, pl;
	uint8_t *key = unhex(a[1], &kl), *iv = unhex(a[2], &il), *aad = unhex(a[3], &al),
		*pt = unhex(a[4], &pl), tag[16];
	uint8_t *ct = malloc(pl ? pl : 1);
	struct gcm_key k;

	gcm_init(&k, key);
	gcm_seal(&k, iv, aad, al, pt, ct, pl, tag);
	put_hex(ct, pl);
	printf(" ");
	put_hex(tag, 16);
	printf("\n");
	free(key), free(iv), free(aad), free(pt), free(ct);
}

static void cmd_gcm_open(char **a)
{
	size_t kl, il, al, cl, tl;
	uint8_t *key = unhex(a[1], &kl), *iv = unhex(a[2], &il), *aad = unhex(a[3], &al),
		*ct = unhex(a[4], &cl), *tag = unhex(a[5], &tl);
	uint8_t *pt = malloc(cl ? cl : 1);
	struct gcm_key k;

	memset(pt, 0xaa, cl);
	gcm_init(&k, key);
	if (gcm_open(&k, iv, aad, al, ct, pt, cl, tag)) {
		size_t i, touched = 0;

		for (i = 0; i < cl; i++)
			touched |= pt[i] != 0xaa;
		printf("FAIL%s\n", touched ? " output-modified" : "");
	} else {
		printf("OK ");
		put_hex(pt, cl);
		printf("\n");
	}
	free(key), free(iv), free(aad), free(ct), free(tag), free(pt);
}

static void cmd_msg_seal(char **a)
{
	size_t kl, rl;
	uint8_t *key = unhex(a[1], &kl), *rd = unhex(a[6], &rl), msg[MSG_HDR_SIZE + MSG_REQ_MAX_PAYLOAD];
	uint8_t rd64[64] = { 0 };
	struct gcm_key k;
	uint16_t len;

	memcpy(rd64, rd, rl < 64 ? rl : 64);
	gcm_init(&k, key);
	len = msg_build_payload(msg + MSG_HDR_SIZE, (uint8_t)num(a[3]), rd64, (uint32_t)num(a[7]));
	msg_seal(msg, &k, num(a[2]), (uint8_t)num(a[3]), (uint8_t)num(a[4]), (uint8_t)num(a[5]), len);
	put_hex(msg, MSG_HDR_SIZE + len);
	printf("\n");
	free(key), free(rd);
}

static void cmd_msg_open(char **a)
{
	size_t kl, rl;
	uint8_t *key = unhex(a[1], &kl), *r = unhex(a[6], &rl);
	uint8_t *page = calloc(1, PAGE_SIZE), *pt = malloc(PAGE_SIZE);
	struct msg_expect e = { .seqno = num(a[2]), .type = (uint8_t)num(a[3]),
				.version = (uint8_t)num(a[4]), .vmpck = (uint8_t)num(a[5]) };
	struct gcm_key k;
	uint16_t len = 0;
	uint32_t dec;

	memcpy(page, r, rl < PAGE_SIZE ? rl : PAGE_SIZE);
	gcm_init(&k, key);
	dec = msg_check_header(page, &e, &len);
	if (dec == SNPLAB_DEC_OK)
		dec = msg_open(page, &k, len, pt);
	printf("%u %u ", dec, len);
	put_hex(pt, dec == SNPLAB_DEC_OK ? len : 0);
	printf("\n");
	free(key), free(r), free(page), free(pt);
}

static void cmd_certs(char **a)
{
	size_t bl, limit = (size_t)num(a[1]);
	uint8_t *b = unhex(a[2], &bl), *buf = malloc(limit ? limit : 1);
	struct certs_extent ext;

	memset(buf, 0, limit);
	memcpy(buf, b, bl < limit ? bl : limit);
	certs_table_extent(buf, limit, &ext);
	printf("%llu %u %u\n", (unsigned long long)ext.len, ext.nentries, ext.truncated);
	free(b), free(buf);
}

static void cmd_readable(char **a)
{
	printf("%llu\n", (unsigned long long)certs_readable_len(num(a[1]), num(a[2]), num(a[3]),
								 num(a[4])));
}

static const char *kv(int argc, char **argv, const char *key)
{
	size_t n = strlen(key);
	int i;

	for (i = 1; i < argc; i++)
		if (!strncmp(argv[i], key, n) && argv[i][n] == '=')
			return argv[i] + n + 1;
	return NULL;
}

static struct snplab_params g_params;
static struct vcpu_ctx g_ctx[SNPLAB_MAX_VCPUS];

static void add_step(int argc, char **argv)
{
	uint32_t v = (uint32_t)num(kv(argc, argv, "vcpu"));
	struct snplab_vcpu_params *vp;
	struct snplab_step *st;
	const char *rd;

	if (v >= SNPLAB_MAX_VCPUS || g_params.vcpu[v].nsteps >= SNPLAB_MAX_STEPS) {
		fprintf(stderr, "harness: too many steps\n");
		exit(2);
	}
	vp = &g_params.vcpu[v];
	st = &vp->steps[vp->nsteps++];
	st->op = (uint32_t)num(kv(argc, argv, "op"));
	st->policy = (uint32_t)num(kv(argc, argv, "policy"));
	st->msg_type = kv(argc, argv, "type") ? (uint8_t)num(kv(argc, argv, "type")) : 5;
	st->msg_version = kv(argc, argv, "ver") ? (uint8_t)num(kv(argc, argv, "ver")) : 1;
	st->vmpck = (uint8_t)num(kv(argc, argv, "vmpck"));
	st->pages = (uint8_t)num(kv(argc, argv, "pages"));
	st->vmpl = (uint32_t)num(kv(argc, argv, "vmpl"));
	st->flags = (uint32_t)num(kv(argc, argv, "flags"));
	st->max_busy_retries = kv(argc, argv, "busy") ? (uint32_t)num(kv(argc, argv, "busy")) : 4;
	st->certs_npages = num(kv(argc, argv, "npages"));
	st->certs_gpa_offset = num(kv(argc, argv, "offset"));
	st->certs_gpa = num(kv(argc, argv, "gpa"));
	st->seqno = num(kv(argc, argv, "seqno"));
	rd = kv(argc, argv, "rd");
	if (rd) {
		size_t n;
		uint8_t *b = unhex(rd, &n);

		memcpy(st->report_data, b, n < 64 ? n : 64);
		free(b);
	}
}

static void print_results(uint32_t v, uint32_t code)
{
	struct snplab_vcpu_results *r = &((struct snplab_results *)gpa_ptr(FAKE_RESULTS_GPA))->vcpu[v];
	uint32_t i, j;

	printf("vcpu %u code=%u nsteps=%u store_used=%u seqno_next=0x%llx,0x%llx,0x%llx,0x%llx\n", v,
	       code, r->nsteps, r->cert_store_used, (unsigned long long)steps_seqno_next(0),
	       (unsigned long long)steps_seqno_next(1), (unsigned long long)steps_seqno_next(2),
	       (unsigned long long)steps_seqno_next(3));
	for (i = 0; i < r->nsteps && i < SNPLAB_MAX_STEPS; i++) {
		struct snplab_step_result *s = &r->steps[i];

		printf("step %u %u outcome=%u nattempts=%u decrypt=%u resp_seqno=0x%llx resp_type=%u "
		       "resp_version=%u resp_msg_sz=%u rsp_status=%u report_size=%u certs_gpa=0x%llx "
		       "certs_npages=0x%llx certs_len=%u store_off=%u trunc=%u",
		       v, i, s->outcome, s->nattempts, s->decrypt, (unsigned long long)s->resp_seqno,
		       s->resp_msg_type, s->resp_msg_version, s->resp_msg_sz, s->rsp_status,
		       s->rsp_report_size, (unsigned long long)s->certs_gpa,
		       (unsigned long long)s->certs_npages, s->certs_len, s->certs_store_off,
		       s->certs_truncated);
		printf(" report_data=");
		put_hex(s->report + 0x50, 64);
		printf(" report_vmpl=%u\n", s->report[0x30]);
		for (j = 0; j < s->nattempts && j < SNPLAB_MAX_ATTEMPTS; j++) {
			struct snplab_attempt *a = &s->attempts[j];

			printf("att %u %u %u exit=0x%llx seqno=0x%llx resent=%u vmpck=%u info1=0x%llx "
			       "info2=0x%llx rax=0x%llx rbx_in=0x%llx rbx_out=0x%llx req=0x%llx resp=0x%llx tag=",
			       v, i, j, (unsigned long long)a->exit_code, (unsigned long long)a->seqno,
			       a->resent, a->vmpck, (unsigned long long)a->sw_exitinfo1,
			       (unsigned long long)a->sw_exitinfo2, (unsigned long long)a->rax_in,
			       (unsigned long long)a->rbx_in, (unsigned long long)a->rbx_out,
			       (unsigned long long)a->req_gpa, (unsigned long long)a->resp_gpa);
			put_hex(a->tag, 16);
			printf(" head=");
			put_hex(a->certs_head, 32);
			printf("\n");
		}
	}
	printf("store %u ", v);
	put_hex(r->cert_store, r->cert_store_used <= SNPLAB_CERT_STORE_SIZE ? r->cert_store_used : 0);
	printf("\n");
}

static void cmd_run(int argc, char **argv)
{
	char line[8192], *sa[MAX_ARGS];
	uint32_t v, nvcpus = kv(argc, argv, "vcpus") ? (uint32_t)num(kv(argc, argv, "vcpus")) : 1;
	uint32_t blob_len;

	if (!nvcpus || nvcpus > SNPLAB_MAX_VCPUS)
		nvcpus = 1;
	memset(fake_mem, 0, FAKE_MEM_SIZE);
	memset(&g_params, 0, sizeof(g_params));
	memset(g_ctx, 0, sizeof(g_ctx));
	steps_reset();
	fake_hv_reset(num(kv(argc, argv, "need")), kv(argc, argv, "answers"), kv(argc, argv, "resp"));
	fake_blob(&blob_len);
	printf("blob len=%u\n", blob_len);
	while (fgets(line, sizeof(line), stdin)) {
		int n = tokenize(line, sa);

		if (!n)
			continue;
		if (!strcmp(sa[0], "go"))
			break;
		if (!strcmp(sa[0], "step"))
			add_step(n, sa);
	}
	for (v = 0; v < nvcpus; v++) {
		struct snplab_vcpu_params *vp = &g_params.vcpu[v];
		struct vcpu_ctx *vc = &g_ctx[v];
		uint32_t code;

		vp->ghcb_gpa = FAKE_SLICE_GPA(v);
		vp->req_gpa = FAKE_SLICE_GPA(v) + 0x1000;
		vp->resp_gpa = FAKE_SLICE_GPA(v) + 0x2000;
		vp->certs_gpa = FAKE_SLICE_GPA(v) + 0x10000;
		vp->certs_max_pages = FAKE_CERTS_MAX_PAGES;
		vp->private_gpa = FAKE_PRIVATE_GPA(v);
		vc->idx = v;
		vc->vp = vp;
		vc->secrets = gpa_ptr(FAKE_SECRETS_GPA);
		vc->ghcb_gpa = vp->ghcb_gpa;
		vc->res = &((struct snplab_results *)gpa_ptr(FAKE_RESULTS_GPA))->vcpu[v];
		code = run_steps(vc);
		print_results(v, code);
	}
	printf("end\n");
}

int main(void)
{
	static char line[1 << 20];
	char *argv[MAX_ARGS];

	fake_mem = calloc(1, FAKE_MEM_SIZE);
	if (!fake_mem)
		return 1;
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	while (fgets(line, sizeof(line), stdin)) {
		int argc = tokenize(line, argv);

		if (!argc)
			continue;
		if (!strcmp(argv[0], "gcm_seal") && argc == 5)
			cmd_gcm_seal(argv);
		else if (!strcmp(argv[0], "gcm_open") && argc == 6)
			cmd_gcm_open(argv);
		else if (!strcmp(argv[0], "msg_seal") && argc == 8)
			cmd_msg_seal(argv);
		else if (!strcmp(argv[0], "msg_open") && argc == 7)
			cmd_msg_open(argv);
		else if (!strcmp(argv[0], "certs") && argc == 3)
			cmd_certs(argv);
		else if (!strcmp(argv[0], "readable") && argc == 5)
			cmd_readable(argv);
		else if (!strcmp(argv[0], "run"))
			cmd_run(argc, argv);
		else {
			printf("ERR unknown command %s/%d\n", argv[0], argc);
		}
		fflush(stdout);
	}
	free(fake_mem);
	return 0;
}

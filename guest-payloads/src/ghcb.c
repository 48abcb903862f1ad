/* SPDX-License-Identifier: MIT */
/*
 * ghcb.c - GHCB MSR protocol, GHCB page calls, page-state changes and the
 * (extended) guest request exit.  Guest only (see guest.h), CPL3: the MSR
 * writes, VMGEXIT and PVALIDATE are kernel calls (kcall.h).
 *
 * Every access to the GHCB page goes through a volatile pointer: the page
 * is shared with the host, which writes it during VMGEXIT.
 */
#include "ghcb.h"

#include "kcall.h"

/* GHCB MSR protocol (Linux arch/x86/include/asm/sev-common.h) */
#define GHCB_MSR_INFO_MASK 0xfffULL
#define GHCB_MSR_SEV_INFO_REQ 0x002ULL
#define GHCB_MSR_SEV_INFO_RESP 0x001ULL
#define GHCB_MSR_REG_GPA_REQ 0x012ULL
#define GHCB_MSR_REG_GPA_RESP 0x013ULL
#define GHCB_MSR_PSC_REQ 0x014ULL
#define GHCB_MSR_PSC_RESP 0x015ULL
#define GHCB_MSR_HV_FT_REQ 0x080ULL
#define GHCB_MSR_HV_FT_RESP 0x081ULL
#define GHCB_HV_FT_SNP (1ULL << 0)
#define SNP_PAGE_STATE_SHARED 2ULL
#define GHCB_PROTOCOL_MIN 1
#define GHCB_PROTOCOL_MAX 2
#define GHCB_PROTOCOL_SNP 2

/* GHCB page (Linux struct ghcb / ghcb_save_area) */
#define GHCB_OFF_RAX 0x1f8
#define GHCB_OFF_RBX 0x318
#define GHCB_OFF_EXIT_CODE 0x390
#define GHCB_OFF_EXIT_INFO1 0x398
#define GHCB_OFF_EXIT_INFO2 0x3a0
#define GHCB_OFF_SCRATCH 0x3a8
#define GHCB_OFF_VALID_BITMAP 0x3f0
#define GHCB_VALID_BITMAP_LEN 16
#define GHCB_OFF_SHARED_BUF 0x800
#define GHCB_OFF_PROTOCOL_VERSION 0xffa
#define GHCB_OFF_USAGE 0xffc

/* Page-state change descriptor (Linux struct snp_psc_desc) */
#define VMGEXIT_PSC_MAX_ENTRY 253
#define PSC_OFF_CUR 0
#define PSC_OFF_END 2
#define PSC_OFF_RESERVED 4
#define PSC_OFF_ENTRIES 8

static inline volatile uint8_t *ghcb_page(const struct vcpu_ctx *vc)
{
	return gpa_ptr(vc->ghcb_gpa);
}

static inline void g_wr64(volatile uint8_t *g, unsigned int off, uint64_t v)
{
	*(volatile uint64_t *)(g + off) = v;
}

static inline uint64_t g_rd64(volatile uint8_t *g, unsigned int off)
{
	return *(volatile uint64_t *)(g + off);
}

static inline uint16_t g_rd16(volatile uint8_t *g, unsigned int off)
{
	return *(volatile uint16_t *)(g + off);
}

/* Write a save-area field and mark it valid (bit = offset / 8). */
static void g_set(volatile uint8_t *g, unsigned int off, uint64_t v)
{
	unsigned int bit = off / 8;

	g_wr64(g, off, v);
	g[GHCB_OFF_VALID_BITMAP + bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static uint64_t msr_call(struct vcpu_ctx *vc, uint64_t req)
{
	vc->msr_holds_ghcb = 0;
	return kcall(KCALL_MSR_PROTOCOL, req, 0);
}

/* Start a GHCB page call: clear the valid bitmap, set exit code/info. */
static volatile uint8_t *ghcb_begin(struct vcpu_ctx *vc, uint64_t exit_code, uint64_t info1,
				    uint64_t info2)
{
	volatile uint8_t *g = ghcb_page(vc);
	unsigned int i;

	for (i = 0; i < GHCB_VALID_BITMAP_LEN; i++)
		g[GHCB_OFF_VALID_BITMAP + i] = 0;
	g_set(g, GHCB_OFF_EXIT_CODE, exit_code);
	g_set(g, GHCB_OFF_EXIT_INFO1, info1);
	g_set(g, GHCB_OFF_EXIT_INFO2, info2);
	return g;
}

static void ghcb_exit(struct vcpu_ctx *vc, volatile uint8_t *g)
{
	*(volatile uint16_t *)(g + GHCB_OFF_PROTOCOL_VERSION) = vc->ghcb_version;
	*(volatile uint32_t *)(g + GHCB_OFF_USAGE) = 0;
	kcall(KCALL_VMGEXIT, vc->ghcb_gpa, !vc->msr_holds_ghcb);
	vc->msr_holds_ghcb = 1;
}

uint32_t ghcb_negotiate(struct vcpu_ctx *vc, uint64_t *detail)
{
	uint64_t r = msr_call(vc, GHCB_MSR_SEV_INFO_REQ);
	uint64_t max = r >> 48, min = (r >> 32) & 0xffff;

	*detail = r;
	if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_SEV_INFO_RESP || min > GHCB_PROTOCOL_MAX ||
	    max < GHCB_PROTOCOL_SNP)
		return SNPLAB_SETUP_SEV_INFO;
	vc->ghcb_version = GHCB_PROTOCOL_SNP;	/* min(max, GHCB_PROTOCOL_MAX) */

	r = msr_call(vc, GHCB_MSR_HV_FT_REQ);
	*detail = r;
	if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_HV_FT_RESP)
		return SNPLAB_SETUP_HV_FEATURES;
	vc->hv_features = r >> 12;
	if (!(vc->hv_features & GHCB_HV_FT_SNP))
		return SNPLAB_SETUP_HV_FEATURES;
	*detail = 0;
	return SNPLAB_SETUP_OK;
}

/* PVALIDATE-rescind npages pages from gpa: one kernel call, the kernel loops
 * (rc 0 with CF set = already not validated: fine). */
static uint32_t rescind(uint64_t gpa, uint64_t npages, uint64_t *detail)
{
	uint64_t r = kcall(KCALL_RESCIND, gpa, npages);

	if (r) {
		*detail = r;	/* GPA | rc | CF << 8 of the page that failed */
		return 1;
	}
	return 0;
}

uint32_t ghcb_establish(struct vcpu_ctx *vc, uint64_t *detail)
{
	uint64_t gfn = vc->ghcb_gpa >> 12, r;
	volatile uint8_t *g;
	unsigned int i;

	if (rescind(vc->ghcb_gpa, 1, detail))
		return SNPLAB_SETUP_GHCB_PVALIDATE;
	r = msr_call(vc, GHCB_MSR_PSC_REQ | (gfn & ((1ULL << 40) - 1)) << 12 |
			 SNP_PAGE_STATE_SHARED << 52);
	*detail = r;
	if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_PSC_RESP || (r >> 32))
		return SNPLAB_SETUP_GHCB_PSC;
	r = msr_call(vc, GHCB_MSR_REG_GPA_REQ | gfn << 12);
	*detail = r;
	if ((r & GHCB_MSR_INFO_MASK) != GHCB_MSR_REG_GPA_RESP || (r >> 12) != gfn)
		return SNPLAB_SETUP_GHCB_REGISTER;
	g = ghcb_page(vc);
	for (i = 0; i < PAGE_SIZE; i += 8)
		g_wr64(g, i, 0);
	*detail = 0;
	return SNPLAB_SETUP_OK;
}

/* One PSC descriptor of n <= 253 4K entries, driven to completion. */
static uint32_t psc_shared_chunk(struct vcpu_ctx *vc, uint64_t gpa, uint32_t n, uint64_t *detail)
{
	volatile uint8_t *g = ghcb_page(vc), *d = g + GHCB_OFF_SHARED_BUF;
	uint16_t end0 = (uint16_t)(n - 1), cur_prev = 0, cur, end;
	uint32_t i, calls = 0;

	*(volatile uint16_t *)(d + PSC_OFF_CUR) = 0;
	*(volatile uint16_t *)(d + PSC_OFF_END) = end0;
	*(volatile uint32_t *)(d + PSC_OFF_RESERVED) = 0;
	for (i = 0; i < n; i++)
		g_wr64(d, PSC_OFF_ENTRIES + 8 * i,
		       ((gpa >> 12) + i) << 12 | SNP_PAGE_STATE_SHARED << 52);
	for (;;) {
		volatile uint8_t *gg;

		cur = g_rd16(d, PSC_OFF_CUR);
		end = g_rd16(d, PSC_OFF_END);
		if (cur > end)
			break;
		if (++calls > n + 4) {		/* no progress: give up, never spin */
			*detail = 0xfffULL << 52 | cur;
			return SNPLAB_SETUP_PSC;
		}
		gg = ghcb_begin(vc, SVM_VMGEXIT_PSC, 0, 0);
		g_set(gg, GHCB_OFF_SCRATCH, vc->ghcb_gpa + GHCB_OFF_SHARED_BUF);
		ghcb_exit(vc, gg);
		if ((uint32_t)g_rd64(g, GHCB_OFF_EXIT_INFO1) || g_rd64(g, GHCB_OFF_EXIT_INFO2)) {
			*detail = g_rd64(g, GHCB_OFF_EXIT_INFO2);
			return SNPLAB_SETUP_PSC;
		}
		cur = g_rd16(d, PSC_OFF_CUR);
		end = g_rd16(d, PSC_OFF_END);
		if (*(volatile uint32_t *)(d + PSC_OFF_RESERVED) || end != end0 || cur < cur_prev) {
			*detail = 0xffeULL << 52 | (uint64_t)end << 16 | cur;
			return SNPLAB_SETUP_PSC;
		}
		cur_prev = cur;
	}
	return SNPLAB_SETUP_OK;
}

uint32_t ghcb_make_shared(struct vcpu_ctx *vc, uint64_t gpa, uint64_t npages, uint64_t *detail)
{
	if (rescind(gpa, npages, detail))
		return SNPLAB_SETUP_PVALIDATE;
	while (npages) {
		uint32_t n = npages < VMGEXIT_PSC_MAX_ENTRY ? (uint32_t)npages : VMGEXIT_PSC_MAX_ENTRY;
		uint32_t stage = psc_shared_chunk(vc, gpa, n, detail);

		if (stage)
			return stage;
		gpa += (uint64_t)n * PAGE_SIZE;
		npages -= n;
	}
	*detail = 0;
	return SNPLAB_SETUP_OK;
}

void hv_guest_request(struct vcpu_ctx *vc, uint64_t exit_code, uint64_t req_gpa,
		      uint64_t resp_gpa, uint64_t rax, uint64_t rbx, uint32_t valid,
		      struct gr_exit *out)
{
	volatile uint8_t *g = ghcb_begin(vc, exit_code, req_gpa, resp_gpa);

	/* the values always go in; the valid bits say whether they count */
	g_wr64(g, GHCB_OFF_RAX, rax);
	g_wr64(g, GHCB_OFF_RBX, rbx);
	if (valid & GR_RAX_VALID)
		g_set(g, GHCB_OFF_RAX, rax);
	if (valid & GR_RBX_VALID)
		g_set(g, GHCB_OFF_RBX, rbx);
	ghcb_exit(vc, g);
	out->info1 = g_rd64(g, GHCB_OFF_EXIT_INFO1);
	out->info2 = g_rd64(g, GHCB_OFF_EXIT_INFO2);
	out->rbx = g_rd64(g, GHCB_OFF_RBX);
}

void ghcb_terminate_nae(struct vcpu_ctx *vc, uint32_t set, uint32_t code)
{
	volatile uint8_t *g = ghcb_begin(vc, SVM_VMGEXIT_TERM_REQUEST,
					 (uint64_t)(set & 0xf) | (uint64_t)(code & 0xff) << 4, 0);

	ghcb_exit(vc, g);
}

void ghcb_terminate(uint32_t set, uint32_t code)
{
	for (;;)	/* the kernel halts after the exit: never returns */
		kcall(KCALL_TERMINATE, ghcb_msr_term_req(set, code), 0);
}

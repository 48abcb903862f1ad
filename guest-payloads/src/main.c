/* SPDX-License-Identifier: MIT */
/*
 * main.c - per-vCPU main at CPL3 (kernel.c drops there after boot): check
 * params, set up the GHCB, make the shared window shared, run the step
 * script, terminate.  Privileged operations are kernel calls (kcall.h).
 *
 * Setup order (docs/contract.md section 1): SEV_STATUS, SEV_INFO, HV
 * features, GHCB page (PVALIDATE rescind, MSR-protocol PSC, register), then
 * page-state change NAEs for the results area (vCPU 0) and for this vCPU's
 * request/response pages and certificate area.  Other vCPUs wait for
 * vCPU 0 before writing results.
 */
#include "ghcb.h"
#include "kcall.h"
#include "log.h"
#include "payload.h"
#include "steps.h"

/* Written by the VMM before launch (so it is measured): keep in .data. */
struct snplab_params snplab_params __attribute__((section(".data.snplab_params"), used, aligned(64)));

struct vcpu_ctx g_vcpu[SNPLAB_MAX_VCPUS];
uint64_t g_stack_top[SNPLAB_MAX_VCPUS];

enum { RESULTS_PENDING = 0, RESULTS_READY = 1, RESULTS_FAILED = 2 };
static volatile uint32_t g_results_state;

#define RESULTS_WAIT_SPINS (1u << 26)
#define MAX_AREA_PAGES 1024

static uint64_t pages_of(uint64_t bytes)
{
	return (bytes + PAGE_SIZE - 1) / PAGE_SIZE;
}

static int aligned(uint64_t gpa)
{
	return !(gpa & (PAGE_SIZE - 1));
}

static int in_window(const struct snplab_params *p, uint64_t gpa, uint64_t len)
{
	return gpa >= p->shared_gpa && len <= p->shared_size &&
	       gpa - p->shared_gpa <= p->shared_size - len;
}

static int params_valid(const struct snplab_params *p, uint32_t cpu)
{
	const struct snplab_vcpu_params *vp = &p->vcpu[cpu];

	if (!p->nvcpus || p->nvcpus > SNPLAB_MAX_VCPUS || cpu >= p->nvcpus)
		return 0;
	if (!aligned(p->shared_gpa) || !aligned(p->shared_size) || !aligned(p->secrets_gpa) ||
	    p->shared_size > (1ULL << 30) || p->shared_gpa > (1ULL << 40))
		return 0;
	if (!aligned(p->results_gpa) || p->results_size < sizeof(struct snplab_results) ||
	    !in_window(p, p->results_gpa, sizeof(struct snplab_results)))
		return 0;
	if (!aligned(vp->ghcb_gpa) || !aligned(vp->req_gpa) || !aligned(vp->resp_gpa) ||
	    !aligned(vp->certs_gpa) || !aligned(vp->private_gpa) ||
	    vp->certs_max_pages > MAX_AREA_PAGES || vp->nsteps > SNPLAB_MAX_STEPS)
		return 0;
	return in_window(p, vp->ghcb_gpa, PAGE_SIZE) && in_window(p, vp->req_gpa, PAGE_SIZE) &&
	       in_window(p, vp->resp_gpa, PAGE_SIZE) &&
	       in_window(p, vp->certs_gpa, vp->certs_max_pages * PAGE_SIZE) &&
	       !in_window(p, vp->private_gpa, 1);
}

void vcpu_finish(struct vcpu_ctx *vc)
{
	struct snplab_vcpu_results *res = vc->res;
	unsigned int i;

	if (res) {
		for (i = 0; i < SNPLAB_NR_VMPCK; i++)
			res->seqno_next[i] = steps_seqno_next(i);
		log_flush(vc);
	}
}

void vcpu_terminate(struct vcpu_ctx *vc, uint32_t code)
{
	vcpu_finish(vc);
	if (vc->term_ghcb)
		ghcb_terminate_nae(vc, SNPLAB_TERM_SET, code);	/* KVM does not resume us */
	ghcb_terminate(SNPLAB_TERM_SET, code);
}

static void share_results(struct vcpu_ctx *vc, uint32_t *stage, uint64_t *detail)
{
	const struct snplab_params *p = &snplab_params;
	struct snplab_results *r = gpa_ptr(p->results_gpa);

	if (!*stage)
		*stage = ghcb_make_shared(vc, p->results_gpa, pages_of(sizeof(*r)), detail);
	if (*stage) {
		g_results_state = RESULTS_FAILED;
		vcpu_terminate(vc, SNPLAB_TERM_SETUP_FAILED);
	}
	r->magic = SNPLAB_RESULTS_MAGIC;
	r->abi_version = SNPLAB_ABI_VERSION;
	r->nvcpus = p->nvcpus;
	__asm__ volatile("" ::: "memory");
	g_results_state = RESULTS_READY;
}

static void wait_results(struct vcpu_ctx *vc)
{
	uint32_t spins = RESULTS_WAIT_SPINS;

	while (g_results_state == RESULTS_PENDING && --spins)
		__asm__ volatile("pause" ::: "memory");
	if (g_results_state != RESULTS_READY)
		vcpu_terminate(vc, SNPLAB_TERM_SETUP_FAILED);
}

__attribute__((noreturn)) void snplab_user_main(uint64_t cpu, uint64_t params_gpa);

void snplab_user_main(uint64_t cpu, uint64_t params_gpa)
{
	const struct snplab_params *p = &snplab_params;
	const struct snplab_vcpu_params *vp;
	struct vcpu_ctx *vc = &g_vcpu[cpu];	/* cpu < SNPLAB_MAX_VCPUS: kernel.c */
	uint64_t detail = 0, sev;
	uint32_t stage = SNPLAB_SETUP_OK, code;

	vc->idx = (uint32_t)cpu;
	if (p->magic != SNPLAB_PARAMS_MAGIC || p->abi_version != SNPLAB_ABI_VERSION ||
	    !params_valid(p, (uint32_t)cpu))
		vcpu_terminate(vc, SNPLAB_TERM_BAD_PARAMS);
	if (params_gpa != (uintptr_t)p)
		log_hex(vc, "rsi_not_params", params_gpa);
	vp = &p->vcpu[cpu];
	vc->vp = vp;
	vc->secrets = gpa_ptr(p->secrets_gpa);
	vc->ghcb_gpa = vp->ghcb_gpa;

	sev = kcall(KCALL_SEV_STATUS, 0, 0);
	log_hex(vc, "sev_status", sev);
	if (!(sev & MSR_AMD64_SEV_SNP_ENABLED)) {
		stage = SNPLAB_SETUP_SEV_STATUS;
		detail = sev;
	}
	if (!stage)
		stage = ghcb_negotiate(vc, &detail);
	if (!stage)
		stage = ghcb_establish(vc, &detail);
	if (stage)
		log_hex(vc, "setup_failed", stage);

	if (cpu == 0)
		share_results(vc, &stage, &detail);
	else
		wait_results(vc);
	vc->res = &((struct snplab_results *)gpa_ptr(p->results_gpa))->vcpu[cpu];
	vc->res->started = 1;
	vc->res->ghcb_version = vc->ghcb_version;
	vc->res->hv_features = vc->hv_features;

	if (!stage)
		stage = ghcb_make_shared(vc, vp->req_gpa, 1, &detail);
	if (!stage)
		stage = ghcb_make_shared(vc, vp->resp_gpa, 1, &detail);
	if (!stage)
		stage = ghcb_make_shared(vc, vp->certs_gpa, vp->certs_max_pages, &detail);
	if (stage) {
		vc->res->setup_error = stage;
		vc->res->setup_detail = detail;
		vcpu_terminate(vc, SNPLAB_TERM_SETUP_FAILED);
	}

	code = run_steps(vc);
	vc->res->finished = 1;
	vcpu_terminate(vc, code);
}

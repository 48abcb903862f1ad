/* SPDX-License-Identifier: MIT */
/*
 * steps.c - the step interpreter (see steps.h and enum snplab_policy).
 *
 * Sequence numbers: g_seqno_last[n] is the last seqno the PSP consumed for
 * VMPCKn (0 = none).  A request uses last + 1; an exchange counts as
 * consumed only when the exit returned SW_EXITINFO1[31:0] = 0 and
 * SW_EXITINFO2 = 0 (the firmware ran and answered), and then
 * last = seqno + 1 (the response carried seqno + 1).  The PSP keeps one
 * counter per VMPCK for the whole guest, so the counters are global and a
 * request step holds its VMPCK's lock from the first attempt to the last
 * retry (as Linux's snp_cmd_mutex does): vCPUs on different VMPCKs run
 * concurrently, vCPUs sharing one take turns.
 *
 * Nothing read back from shared memory (results, request/response pages,
 * certificate area) steers control flow or indexing: counters are private.
 */
#include "steps.h"

#include "certs.h"
#include "msg.h"

/* Linux include/uapi/linux/sev-guest.h: SNP_GUEST_VMM_ERR_* in EXITINFO2[63:32] */
#define SNP_GUEST_VMM_ERR_INVALID_LEN 1
#define SNP_GUEST_VMM_ERR_BUSY 2

#define REPORT_SIZE 0x4a0
#define CERTS_HEAD_LEN 32

static uint64_t g_seqno_last[SNPLAB_NR_VMPCK];
static uint32_t g_vmpck_lock[SNPLAB_NR_VMPCK];

static void vmpck_lock(unsigned int n)
{
	while (__atomic_exchange_n(&g_vmpck_lock[n], 1, __ATOMIC_ACQUIRE))
		while (__atomic_load_n(&g_vmpck_lock[n], __ATOMIC_RELAXED))
			__asm__ volatile("pause" ::: "memory");
}

static void vmpck_unlock(unsigned int n)
{
	__atomic_store_n(&g_vmpck_lock[n], 0, __ATOMIC_RELEASE);
}

uint64_t steps_seqno_next(unsigned int vmpck)
{
	return vmpck < SNPLAB_NR_VMPCK ? __atomic_load_n(&g_seqno_last[vmpck], __ATOMIC_RELAXED) + 1 : 0;
}

void steps_reset(void)
{
	unsigned int i;

	for (i = 0; i < SNPLAB_NR_VMPCK; i++)
		g_seqno_last[i] = 0;
}

struct step_plan {
	uint64_t req_gpa;
	uint64_t resp_gpa;
	uint64_t certs_gpa;
	uint8_t certs_ours;	/* certs_gpa lies inside this vCPU's certificate area */
};

/* The request being (re)sent. */
struct step_run {
	uint64_t exit_code;
	uint64_t npages;	/* RBX in (extended requests) */
	uint64_t seqno;
	uint16_t msg_len;	/* header + payload */
	uint8_t resent;
	uint32_t nattempts;	/* private counter; results are write-only */
	uint64_t rbx_out;
};

static uint32_t classify(const struct gr_exit *x)
{
	uint32_t vmm = (uint32_t)(x->info2 >> 32), fw = (uint32_t)x->info2;

	if ((uint32_t)x->info1)
		return SNPLAB_OUT_GHCB_ERROR;
	if (!x->info2)
		return SNPLAB_OUT_OK;
	if (vmm == SNP_GUEST_VMM_ERR_INVALID_LEN && !fw)
		return SNPLAB_OUT_INVALID_LEN;
	if (vmm == SNP_GUEST_VMM_ERR_BUSY && !fw)
		return SNPLAB_OUT_BUSY;
	if (vmm)
		return SNPLAB_OUT_VMM_ERROR;
	return SNPLAB_OUT_FW_ERROR;
}

static const struct gcm_key *vmpck_key(struct vcpu_ctx *vc, unsigned int n)
{
	if (!vc->key_ready[n]) {
		gcm_init(&vc->keys[n], vc->secrets + SECRETS_VMPCK_OFF(n));
		vc->key_ready[n] = 1;
	}
	return &vc->keys[n];
}

static uint32_t plan_step(const struct vcpu_ctx *vc, const struct snplab_step *st,
			  struct step_plan *pl)
{
	const struct snplab_vcpu_params *vp = vc->vp;
	uint64_t certs_base = vp->certs_gpa;

	pl->req_gpa = vp->req_gpa;
	pl->resp_gpa = vp->resp_gpa;
	switch (st->pages) {
	case SNPLAB_PAGES_NORMAL:
		break;
	case SNPLAB_PAGES_SAME:
		pl->resp_gpa = pl->req_gpa;
		break;
	case SNPLAB_PAGES_PRIVATE_REQ:
		pl->req_gpa = vp->private_gpa;
		break;
	case SNPLAB_PAGES_PRIVATE_CERTS:
		certs_base = vp->private_gpa;
		break;
	case SNPLAB_PAGES_MISALIGNED_REQ:
		pl->req_gpa += 8;
		break;
	default:
		return SNPLAB_OUT_BAD_PARAMS;
	}
	if (st->flags & SNPLAB_STEP_CERTS_GPA_ABS)
		pl->certs_gpa = st->certs_gpa;
	else
		pl->certs_gpa = certs_base + st->certs_gpa_offset;
	pl->certs_ours = !(st->flags & SNPLAB_STEP_CERTS_GPA_ABS) &&
			 st->pages != SNPLAB_PAGES_PRIVATE_CERTS &&
			 certs_readable_len(pl->certs_gpa, 1, vp->certs_gpa, vp->certs_max_pages) != 0;
	if (st->vmpck >= SNPLAB_NR_VMPCK || st->op > SNPLAB_OP_REQ ||
	    st->policy > SNPLAB_POLICY_NAIVE)
		return SNPLAB_OUT_BAD_PARAMS;
	return SNPLAB_OUT_NOT_RUN;
}

/* Does a buffer of npages pages at the step's certificate GPA fit? */
static int certs_fit(const struct vcpu_ctx *vc, const struct step_plan *pl, uint64_t npages)
{
	const struct snplab_vcpu_params *vp = vc->vp;

	if (npages > vp->certs_max_pages)
		return 0;
	if (!pl->certs_ours)
		return 1;
	return certs_readable_len(pl->certs_gpa, npages, vp->certs_gpa, vp->certs_max_pages) ==
	       npages * PAGE_SIZE;
}

/* Build and encrypt a fresh request for seqno into vc->req_msg. */
static void seal_request(struct vcpu_ctx *vc, const struct snplab_step *st,
			 const uint8_t report_data[64], struct step_run *run)
{
	uint16_t len = msg_build_payload(vc->req_msg + MSG_HDR_SIZE, st->msg_type, report_data,
					 st->vmpl);

	msg_seal(vc->req_msg, vmpck_key(vc, st->vmpck), run->seqno, st->msg_type,
		 st->msg_version, st->vmpck, len);
	run->msg_len = (uint16_t)(MSG_HDR_SIZE + len);
}

static uint32_t certs_head_len(const struct vcpu_ctx *vc, const struct step_plan *pl)
{
	uint64_t n;

	if (!pl->certs_ours)
		return 0;
	n = certs_readable_len(pl->certs_gpa, 1, vc->vp->certs_gpa, vc->vp->certs_max_pages);
	return n < CERTS_HEAD_LEN ? (uint32_t)n : CERTS_HEAD_LEN;
}

/* Copy the response to private memory, check and decrypt it. */
static uint32_t take_response(struct vcpu_ctx *vc, const struct snplab_step *st,
			      const struct step_plan *pl, uint64_t seqno,
			      struct snplab_step_result *sr)
{
	const uint8_t *page = gpa_ptr(pl->resp_gpa);
	struct msg_expect want = {
		.seqno = seqno, .type = st->msg_type, .version = st->msg_version, .vmpck = st->vmpck,
	};
	const uint8_t *h = vc->resp_msg;
	uint16_t len;
	uint32_t dec, n;

	__builtin_memcpy(vc->resp_msg, page, MSG_HDR_SIZE);
	sr->resp_seqno = rd_le64(h + MSG_OFF_SEQNO);
	sr->resp_msg_type = h[MSG_OFF_TYPE];
	sr->resp_msg_version = h[MSG_OFF_VERSION];
	sr->resp_algo = h[MSG_OFF_ALGO];
	sr->resp_hdr_version = h[MSG_OFF_HDR_VERSION];
	sr->resp_hdr_sz = (uint16_t)(h[MSG_OFF_HDR_SZ] | h[MSG_OFF_HDR_SZ + 1] << 8);
	sr->resp_msg_sz = (uint16_t)(h[MSG_OFF_MSG_SZ] | h[MSG_OFF_MSG_SZ + 1] << 8);
	sr->resp_msg_vmpck = h[MSG_OFF_VMPCK];
	sr->rsp_status = 0;
	sr->rsp_report_size = 0;
	memset(sr->report, 0, sizeof(sr->report));

	dec = msg_check_header(vc->resp_msg, &want, &len);
	if (dec == SNPLAB_DEC_OK) {
		memcpy(vc->resp_msg + MSG_HDR_SIZE, page + MSG_HDR_SIZE, len);
		dec = msg_open(vc->resp_msg, vmpck_key(vc, st->vmpck), len, vc->plain);
	}
	sr->decrypt = dec;
	if (dec != SNPLAB_DEC_OK)
		return SNPLAB_OUT_DECRYPT_FAIL;
	if (st->msg_type == SNP_MSG_REPORT_REQ) {
		if (len >= 8) {
			sr->rsp_status = rd_le32(vc->plain + REPORT_RSP_OFF_STATUS);
			sr->rsp_report_size = rd_le32(vc->plain + REPORT_RSP_OFF_SIZE);
		}
		n = len > REPORT_RSP_OFF_REPORT ? len - REPORT_RSP_OFF_REPORT : 0;
		if (n > REPORT_SIZE)
			n = REPORT_SIZE;
		memcpy(sr->report, vc->plain + REPORT_RSP_OFF_REPORT, n);
	} else {	/* other message types: the raw payload */
		if (len >= 4)
			sr->rsp_status = rd_le32(vc->plain);
		n = len < REPORT_SIZE ? len : REPORT_SIZE;
		memcpy(sr->report, vc->plain, n);
	}
	return SNPLAB_OUT_OK;
}

static int same_bytes(const uint8_t *a, const uint8_t *b, uint64_t n)
{
	uint64_t i, x, y;

	for (i = 0; i + 8 <= n; i += 8) {
		__builtin_memcpy(&x, a + i, 8);
		__builtin_memcpy(&y, b + i, 8);
		if (x != y)
			return 0;
	}
	for (; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

/* After a successful extended request: keep the bytes the host wrote.  A
 * blob identical to the previous complete copy is not stored twice (scripts
 * repeat the same chain); certs_store_off then points at that copy. */
static void keep_certs(struct vcpu_ctx *vc, const struct step_plan *pl, uint64_t npages,
		       struct snplab_step_result *sr)
{
	const struct snplab_vcpu_params *vp = vc->vp;
	uint8_t *store = vc->res->cert_store;
	const uint8_t *buf;
	struct certs_extent ext;
	uint64_t limit;
	uint32_t used = vc->cert_store_used, room, n;

	if (!pl->certs_ours)
		return;		/* not ours to read: the guest never touches it */
	buf = gpa_ptr(pl->certs_gpa);
	limit = certs_readable_len(pl->certs_gpa, npages, vp->certs_gpa, vp->certs_max_pages);
	certs_table_extent(buf, limit, &ext);
	if (ext.len && ext.len == vc->last_store_len &&
	    same_bytes(store + vc->last_store_off, buf, ext.len)) {
		sr->certs_len = vc->last_store_len;
		sr->certs_store_off = vc->last_store_off;
		sr->certs_truncated = ext.truncated;
		return;
	}
	room = SNPLAB_CERT_STORE_SIZE - used;
	n = ext.len < room ? (uint32_t)ext.len : room;
	memcpy(store + used, buf, n);
	sr->certs_len = n;
	sr->certs_store_off = used;
	sr->certs_truncated = ext.truncated || n < ext.len;
	if (n && n == ext.len) {
		vc->last_store_off = used;
		vc->last_store_len = n;
	}
	vc->cert_store_used = used + n;
	vc->res->cert_store_used = vc->cert_store_used;
}

/* One VMGEXIT: stage the request, exit, record the attempt. */
static uint32_t do_attempt(struct vcpu_ctx *vc, const struct snplab_step *st,
			   const struct step_plan *pl, struct step_run *run,
			   struct snplab_step_result *sr)
{
	struct snplab_attempt *a = &sr->attempts[run->nattempts];
	int ext = run->exit_code == SVM_VMGEXIT_EXT_GUEST_REQUEST;
	uint32_t head = ext ? certs_head_len(vc, pl) : 0, valid = 0, cls;
	uint64_t rax = 0, rbx = 0;
	struct gr_exit x;

	memset(gpa_ptr(pl->resp_gpa), 0, PAGE_SIZE);
	memcpy(gpa_ptr(pl->req_gpa), vc->req_msg, run->msg_len);
	/* A non-zero canary, so that "the host wrote nothing" and "the host wrote an
	 * empty table (24 zero bytes)" can be told apart from certs_head. */
	if (head)
		memset(gpa_ptr(pl->certs_gpa), SNPLAB_CERTS_CANARY, head);
	if (ext) {
		rax = pl->certs_gpa;
		rbx = run->npages;
		if (!(st->flags & SNPLAB_STEP_NO_RAX_VALID))
			valid |= GR_RAX_VALID;
		if (!(st->flags & SNPLAB_STEP_NO_RBX_VALID))
			valid |= GR_RBX_VALID;
		sr->certs_gpa = rax;
		sr->certs_npages = rbx;
	}
	hv_guest_request(vc, run->exit_code, pl->req_gpa, pl->resp_gpa, rax, rbx, valid, &x);

	a->exit_code = run->exit_code;
	a->req_gpa = pl->req_gpa;
	a->resp_gpa = pl->resp_gpa;
	a->rax_in = rax;
	a->rbx_in = rbx;
	a->rbx_out = x.rbx;
	a->sw_exitinfo1 = x.info1;
	a->sw_exitinfo2 = x.info2;
	a->seqno = run->seqno;
	a->vmpck = st->vmpck;
	a->msg_type = st->msg_type;
	a->resent = run->resent;
	memcpy(a->tag, vc->req_msg + MSG_OFF_AUTHTAG, sizeof(a->tag));
	memset(a->certs_head, 0, sizeof(a->certs_head));
	if (head)
		memcpy(a->certs_head, gpa_ptr(pl->certs_gpa), head);
	run->nattempts++;
	sr->nattempts = run->nattempts;
	run->rbx_out = x.rbx;

	cls = classify(&x);
	if (cls == SNPLAB_OUT_OK) {
		g_seqno_last[st->vmpck] = run->seqno + 1;	/* the PSP consumed it */
		cls = take_response(vc, st, pl, run->seqno, sr);
		if (ext)
			keep_certs(vc, pl, run->npages, sr);
	}
	return cls;
}

static void run_request_locked(struct vcpu_ctx *vc, const struct snplab_step *st,
			       const struct step_plan *pl, struct snplab_step_result *sr)
{
	struct step_run run = { 0 };
	uint8_t report_data[64];
	uint32_t outcome = SNPLAB_OUT_NOT_RUN, cls, busy_left = st->max_busy_retries;
	uint64_t grow_to = 0;
	int growing = 0, fresh_pending = 0;

	memcpy(report_data, st->report_data, sizeof(report_data));
	run.exit_code = st->op == SNPLAB_OP_EXT_REQ ? SVM_VMGEXIT_EXT_GUEST_REQUEST
						    : SVM_VMGEXIT_GUEST_REQUEST;
	run.npages = st->certs_npages;
	run.seqno = (st->flags & SNPLAB_STEP_SEQNO_OVERRIDE) ? st->seqno
							     : g_seqno_last[st->vmpck] + 1;
	seal_request(vc, st, report_data, &run);

	while (run.nattempts < SNPLAB_MAX_ATTEMPTS) {
		fresh_pending = 0;
		cls = do_attempt(vc, st, pl, &run, sr);
		outcome = cls;
		if (cls == SNPLAB_OUT_OK || cls == SNPLAB_OUT_DECRYPT_FAIL) {
			if (!growing)
				break;
			/* linux: the identical resend consumed the seqno; now a
			 * fresh extended request with the pages the host asked for */
			growing = 0;
			if (!certs_fit(vc, pl, grow_to)) {
				outcome = SNPLAB_OUT_INVALID_LEN;
				break;
			}
			run.exit_code = SVM_VMGEXIT_EXT_GUEST_REQUEST;
			run.npages = grow_to;
			run.seqno = g_seqno_last[st->vmpck] + 1;
			run.resent = 0;
			busy_left = st->max_busy_retries;
			seal_request(vc, st, report_data, &run);
			fresh_pending = 1;
			continue;
		}
		if (cls == SNPLAB_OUT_BUSY && st->policy == SNPLAB_POLICY_LINUX && busy_left) {
			busy_left--;
			run.resent = 1;		/* the identical bytes again */
			continue;
		}
		if (cls == SNPLAB_OUT_INVALID_LEN &&
		    run.exit_code == SVM_VMGEXIT_EXT_GUEST_REQUEST) {
			if (st->policy == SNPLAB_POLICY_LINUX) {
				grow_to = run.rbx_out;
				growing = 1;
				run.exit_code = SVM_VMGEXIT_GUEST_REQUEST;
				run.resent = 1;
				continue;
			}
			if (st->policy == SNPLAB_POLICY_NAIVE) {
				/* the IV-reuse bug: a new plaintext under the same seqno */
				if (!certs_fit(vc, pl, run.rbx_out))
					break;
				report_data[63]++;
				run.npages = run.rbx_out;
				run.resent = 0;
				seal_request(vc, st, report_data, &run);
				continue;
			}
		}
		break;
	}
	if (fresh_pending)	/* out of attempt slots before the new request went out */
		outcome = SNPLAB_OUT_INVALID_LEN;
	sr->outcome = outcome;
}

static void run_request(struct vcpu_ctx *vc, const struct snplab_step *st,
			struct snplab_step_result *sr)
{
	struct step_plan pl;
	uint32_t outcome = plan_step(vc, st, &pl);

	if (outcome != SNPLAB_OUT_NOT_RUN) {
		sr->outcome = outcome;
		return;
	}
	vmpck_lock(st->vmpck);
	run_request_locked(vc, st, &pl, sr);
	vmpck_unlock(st->vmpck);
}

uint32_t run_steps(struct vcpu_ctx *vc)
{
	const struct snplab_vcpu_params *vp = vc->vp;
	uint32_t i, n = vp->nsteps;

	if (n > SNPLAB_MAX_STEPS)
		n = SNPLAB_MAX_STEPS;
	for (i = 0; i < n; i++) {
		const struct snplab_step *st = &vp->steps[i];
		struct snplab_step_result *sr = &vc->res->steps[i];

		if (st->op == SNPLAB_OP_END)
			break;
		vc->res->nsteps = i + 1;
		if (st->op == SNPLAB_OP_TERMINATE) {
			vc->term_ghcb = !!(st->flags & SNPLAB_STEP_TERM_GHCB);
			return st->vmpl ? (st->vmpl & 0xff) : SNPLAB_TERM_SCRIPTED;
		}
		run_request(vc, st, sr);
	}
	return SNPLAB_TERM_DONE;
}

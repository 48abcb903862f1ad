/* SPDX-License-Identifier: MIT */
/*
 * snplab_abi.h - the one definition of the guest <-> host contract.
 *
 * The host (snplab.vmm) reads every offset and size below from the payload
 * ELF's DWARF; nothing in Python repeats this layout.  Constants that Python
 * needs (ports, enums) are read from DWARF too: they are declared as enums so
 * that they appear in the debug info.
 *
 * See docs/contract.md for the memory map and the doorbell protocol.
 */
#ifndef SNPLAB_ABI_H
#define SNPLAB_ABI_H

#include <stdint.h>

enum snplab_limits {
	SNPLAB_ABI_VERSION = 1,
	SNPLAB_MAX_VCPUS = 4,
	SNPLAB_MAX_STEPS = 16,
	SNPLAB_MAX_ATTEMPTS = 8,
	SNPLAB_CERT_STORE_SIZE = 0x10000,	/* per vCPU: copies of the cert bytes kept */
	SNPLAB_LOG_SIZE = 256,			/* per vCPU: short text log */
};

/* Emulated platform: vmgexit() is an OUT to this port, pvalidate() an OUT
 * (arguments) then an IN (result) on the second port.  Never used on SNP. */
enum snplab_ports {
	SNPLAB_DOORBELL_PORT = 0x0e0,
	SNPLAB_PVALIDATE_PORT = 0x0e4,
};

/* PVALIDATE doorbell argument (OUT, 32 bits): GPA[31:12] | flags */
enum snplab_pvalidate_arg {
	SNPLAB_PVAL_2M = 1 << 0,	/* page size: 0 = 4K, 1 = 2M */
	SNPLAB_PVAL_VALIDATE = 1 << 1,	/* 1 = validate, 0 = rescind */
};
/* PVALIDATE doorbell result (IN, 32 bits): rc[7:0] (PVALIDATE_FAIL_*), bit 8 = CF (no RMP update) */

enum snplab_platform {
	SNPLAB_PLATFORM_EMULATED = 0,
	SNPLAB_PLATFORM_SNP = 1,
};

enum snplab_op {
	SNPLAB_OP_END = 0,		/* end of this vCPU's script */
	SNPLAB_OP_EXT_REQ = 1,		/* SNP_EXTENDED_GUEST_REQUEST (0x80000012) */
	SNPLAB_OP_REQ = 2,		/* SNP_GUEST_REQUEST (0x80000011) */
	SNPLAB_OP_TERMINATE = 3,	/* GHCB termination request now (reason in step.vmpl) */
};

enum snplab_policy {
	SNPLAB_POLICY_NONE = 0,		/* record and move on */
	SNPLAB_POLICY_LINUX = 1,	/* INVALID_LEN: resend identical bytes as 0x80000011, then new EXT_REQ with RBX pages; BUSY: resend identical */
	SNPLAB_POLICY_NAIVE = 2,	/* INVALID_LEN: re-encrypt a fresh request under the SAME seqno (IV reuse) */
};

enum snplab_pages {
	SNPLAB_PAGES_NORMAL = 0,	/* own shared request and response pages */
	SNPLAB_PAGES_SAME = 1,		/* response GPA == request GPA */
	SNPLAB_PAGES_PRIVATE_REQ = 2,	/* request page is the vCPU's private scratch page */
	SNPLAB_PAGES_PRIVATE_CERTS = 3,	/* certificate buffer is the private scratch page */
	SNPLAB_PAGES_MISALIGNED_REQ = 4,/* request GPA = shared request page + 8 */
};

enum snplab_step_flags {
	SNPLAB_STEP_SEQNO_OVERRIDE = 1 << 0,	/* use step.seqno instead of the counter */
	SNPLAB_STEP_CERTS_GPA_ABS = 1 << 1,	/* RAX = step.certs_gpa (guest never touches it) */
	SNPLAB_STEP_NO_RAX_VALID = 1 << 2,	/* do not mark RAX valid in the GHCB */
	SNPLAB_STEP_NO_RBX_VALID = 1 << 3,	/* do not mark RBX valid in the GHCB */
	SNPLAB_STEP_TERM_GHCB = 1 << 4,		/* OP_TERMINATE through the GHCB (NAE 0x8000FFFE), not the MSR protocol */
};

/* What happened, judged by the guest only as far as it must to decide its
 * next move.  The host re-judges from the raw facts. */
enum snplab_outcome {
	SNPLAB_OUT_NOT_RUN = 0,
	SNPLAB_OUT_OK = 1,		/* EXITINFO1 = 0, EXITINFO2 = 0, response decrypted */
	SNPLAB_OUT_INVALID_LEN = 2,	/* EXITINFO2 = 1 << 32 (final state of the step) */
	SNPLAB_OUT_BUSY = 3,		/* EXITINFO2 = 2 << 32 and retries exhausted */
	SNPLAB_OUT_VMM_ERROR = 4,	/* any other non-zero EXITINFO2[63:32] */
	SNPLAB_OUT_FW_ERROR = 5,	/* EXITINFO2[31:0] != 0 */
	SNPLAB_OUT_GHCB_ERROR = 6,	/* EXITINFO1 != 0 (malformed input etc.) */
	SNPLAB_OUT_DECRYPT_FAIL = 7,	/* response failed header/seqno/tag checks */
	SNPLAB_OUT_BAD_PARAMS = 8,	/* the step itself is invalid (guest refused it) */
};

enum snplab_decrypt {
	SNPLAB_DEC_NONE = 0,		/* not attempted */
	SNPLAB_DEC_OK = 1,
	SNPLAB_DEC_BAD_HEADER = 2,	/* algo/hdr_version/hdr_sz/msg_type/msg_version/vmpck */
	SNPLAB_DEC_BAD_SEQNO = 3,	/* response seqno != request seqno + 1 */
	SNPLAB_DEC_BAD_SIZE = 4,	/* msg_sz too large */
	SNPLAB_DEC_BAD_TAG = 5,
};

/* Termination request reason set/code (GHCB MSR 0x100 / NAE 0x8000FFFE). */
enum snplab_term {
	SNPLAB_TERM_SET = 3,		/* snplab's own reason-code set */
	SNPLAB_TERM_DONE = 0,		/* script finished, results valid */
	SNPLAB_TERM_EXCEPTION = 1,	/* CPU exception, see results.exc_* */
	SNPLAB_TERM_BAD_PARAMS = 2,	/* params.magic/version wrong */
	SNPLAB_TERM_SETUP_FAILED = 3,	/* GHCB protocol negotiation / PSC failed, see log */
	SNPLAB_TERM_SCRIPTED = 4,	/* SNPLAB_OP_TERMINATE */
};

/* results.vcpu[v].setup_error: the setup stage that failed (setup_detail
 * holds the offending value).  Stages before the results area is shared
 * (vCPU 0's own setup) can only be reported by the termination code. */
enum snplab_setup_stage {
	SNPLAB_SETUP_OK = 0,
	SNPLAB_SETUP_SEV_STATUS = 1,	/* SEV_STATUS lacks SNP (bit 2); detail = MSR value */
	SNPLAB_SETUP_SEV_INFO = 2,	/* bad SEV_INFO response / no common version; detail = MSR */
	SNPLAB_SETUP_HV_FEATURES = 3,	/* bad HV_FEATURES response / no SNP bit; detail = MSR */
	SNPLAB_SETUP_GHCB_PVALIDATE = 4,/* rescinding the GHCB page; detail = GPA | rc | CF << 8 */
	SNPLAB_SETUP_GHCB_PSC = 5,	/* MSR-protocol PSC of the GHCB page; detail = MSR */
	SNPLAB_SETUP_GHCB_REGISTER = 6,	/* GHCB GPA registration; detail = MSR */
	SNPLAB_SETUP_PVALIDATE = 7,	/* rescinding a shared-window page; detail = GPA | rc | CF << 8 */
	SNPLAB_SETUP_PSC = 8,		/* PSC NAE; detail = SW_EXITINFO2, or 0xfff/0xffe << 52 | ... */
	SNPLAB_SETUP_RESULTS_WAIT = 9,	/* vCPU 0 did not make the results area shared */
};

/* Byte the guest writes over the head of its certificate buffer before each
 * extended attempt (see snplab_attempt.certs_head). */
enum snplab_canary {
	SNPLAB_CERTS_CANARY = 0xa5,
};

enum snplab_magic {
	SNPLAB_PARAMS_MAGIC = 0x534e5050,	/* "SNPP" */
	SNPLAB_RESULTS_MAGIC = 0x534e5052,	/* "SNPR" */
};

struct snplab_step {
	uint32_t op;			/* enum snplab_op */
	uint32_t policy;		/* enum snplab_policy */
	uint8_t msg_type;		/* header msg_type (5 = MSG_REPORT_REQ) */
	uint8_t msg_version;		/* header msg_version (1) */
	uint8_t vmpck;			/* msg_vmpck 0..3 */
	uint8_t pages;			/* enum snplab_pages */
	uint32_t vmpl;			/* MSG_REPORT_REQ.VMPL (OP_TERMINATE: reason code) */
	uint32_t flags;			/* enum snplab_step_flags */
	uint32_t max_busy_retries;	/* linux policy: resends on BUSY */
	uint64_t certs_npages;		/* RBX on the first attempt (may be 2^32-1) */
	uint64_t certs_gpa_offset;	/* added to the vCPU's certificate area GPA */
	uint64_t certs_gpa;		/* with SNPLAB_STEP_CERTS_GPA_ABS */
	uint64_t seqno;			/* with SNPLAB_STEP_SEQNO_OVERRIDE */
	uint8_t report_data[64];
};

/* Per-vCPU GPAs, chosen by the VMM (docs/contract.md memory map). */
struct snplab_vcpu_params {
	uint64_t ghcb_gpa;
	uint64_t req_gpa;
	uint64_t resp_gpa;
	uint64_t certs_gpa;		/* start of the certificate area */
	uint64_t certs_max_pages;	/* size of the area the guest may use */
	uint64_t private_gpa;		/* one private (validated) scratch page */
	uint32_t nsteps;
	uint32_t pad;
	struct snplab_step steps[SNPLAB_MAX_STEPS];
};

struct snplab_params {
	uint32_t magic;			/* SNPLAB_PARAMS_MAGIC, written by the VMM */
	uint32_t abi_version;		/* SNPLAB_ABI_VERSION */
	uint32_t platform;		/* enum snplab_platform */
	uint32_t nvcpus;
	uint64_t c_bit_mask;		/* 0 on the emulated platform */
	uint64_t secrets_gpa;
	uint64_t results_gpa;		/* struct snplab_results, in shared memory */
	uint64_t results_size;
	uint64_t shared_gpa;		/* shared window [shared_gpa, +shared_size): made shared by the guest */
	uint64_t shared_size;
	struct snplab_vcpu_params vcpu[SNPLAB_MAX_VCPUS];
};

/* One VMGEXIT of a guest request, as the guest saw it. */
struct snplab_attempt {
	uint64_t exit_code;		/* 0x80000011 or 0x80000012 */
	uint64_t req_gpa;
	uint64_t resp_gpa;
	uint64_t rax_in;		/* certificate GPA (EXT only) */
	uint64_t rbx_in;		/* npages (EXT only) */
	uint64_t rbx_out;		/* GHCB RBX after the exit */
	uint64_t sw_exitinfo1;
	uint64_t sw_exitinfo2;
	uint64_t seqno;			/* msg_seqno in the request header */
	uint8_t vmpck;
	uint8_t msg_type;
	uint8_t resent;			/* 1 = byte-identical resend of the previous attempt */
	uint8_t pad[5];
	uint8_t tag[16];		/* AES-GCM tag of the request (IV-reuse oracle) */
	uint8_t certs_head[32];		/* first 32 bytes of the cert buffer after the exit (0 if not readable; the guest fills them with SNPLAB_CERTS_CANARY before the exit) */
};

struct snplab_step_result {
	uint32_t outcome;		/* enum snplab_outcome */
	uint32_t nattempts;
	struct snplab_attempt attempts[SNPLAB_MAX_ATTEMPTS];
	/* response header (last attempt that returned EXITINFO2 = 0) */
	uint64_t resp_seqno;
	uint8_t resp_msg_type;
	uint8_t resp_msg_version;
	uint8_t resp_algo;
	uint8_t resp_hdr_version;
	uint16_t resp_hdr_sz;
	uint16_t resp_msg_sz;
	uint8_t resp_msg_vmpck;
	uint8_t pad0[3];
	uint32_t decrypt;		/* enum snplab_decrypt */
	uint32_t rsp_status;		/* MSG_REPORT_RSP.status */
	uint32_t rsp_report_size;	/* MSG_REPORT_RSP.report_size */
	uint32_t pad1;
	uint8_t report[0x4a0];		/* decrypted report (zeros if none) */
	/* certificate bytes the host wrote: copied to vcpu.cert_store */
	uint64_t certs_gpa;		/* RAX of the last extended attempt */
	uint64_t certs_npages;		/* RBX in of the last extended attempt */
	uint32_t certs_len;		/* bytes kept: max(offset+length) over table entries, clipped */
	uint32_t certs_store_off;	/* where in cert_store they were copied */
	uint32_t certs_truncated;	/* 1 if clipped by buffer or store size */
	uint32_t pad2;
};

struct snplab_vcpu_results {
	uint32_t started;		/* 1 once this vCPU entered C */
	uint32_t finished;		/* 1 once its script ended */
	uint32_t nsteps;		/* steps executed */
	uint32_t setup_error;		/* 0 or the failing enum snplab_setup_stage */
	uint64_t setup_detail;		/* e.g. the GHCB MSR response that was wrong */
	uint64_t ghcb_version;		/* negotiated GHCB protocol version */
	uint64_t hv_features;		/* HV_FEATURES response */
	uint64_t seqno_next[4];		/* per-VMPCK next seqno at the end */
	uint32_t exc_vector;		/* CPU exception, if any */
	uint32_t exc_valid;
	uint64_t exc_error_code;
	uint64_t exc_rip;
	uint64_t exc_cr2;
	struct snplab_step_result steps[SNPLAB_MAX_STEPS];
	uint32_t cert_store_used;
	uint32_t log_len;
	char log[SNPLAB_LOG_SIZE];
	uint8_t cert_store[SNPLAB_CERT_STORE_SIZE];
};

struct snplab_results {
	uint32_t magic;			/* SNPLAB_RESULTS_MAGIC, written by the guest */
	uint32_t abi_version;
	uint32_t nvcpus;
	uint32_t pad;
	struct snplab_vcpu_results vcpu[SNPLAB_MAX_VCPUS];
};

#endif /* SNPLAB_ABI_H */

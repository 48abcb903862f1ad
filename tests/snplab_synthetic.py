"""Hand-built transcripts for the oracle and transcript unit tests (no KVM, no payload).

Shapes follow struct snplab_results (guest-payloads/include/snplab_abi.h) as the VMM decodes it;
values are written out explicitly in each test so the tests say what a run looked like.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from snplab.scenario import Scenario, Step
from snplab.transcript import EXT_GUEST_REQUEST, GUEST_REQUEST, Transcript

ENUMS = {
    "snplab_outcome": {"SNPLAB_OUT_NOT_RUN": 0, "SNPLAB_OUT_OK": 1, "SNPLAB_OUT_INVALID_LEN": 2,
                       "SNPLAB_OUT_BUSY": 3, "SNPLAB_OUT_VMM_ERROR": 4, "SNPLAB_OUT_FW_ERROR": 5,
                       "SNPLAB_OUT_GHCB_ERROR": 6, "SNPLAB_OUT_DECRYPT_FAIL": 7,
                       "SNPLAB_OUT_BAD_PARAMS": 8},
    "snplab_decrypt": {"SNPLAB_DEC_NONE": 0, "SNPLAB_DEC_OK": 1, "SNPLAB_DEC_BAD_HEADER": 2,
                       "SNPLAB_DEC_BAD_SEQNO": 3, "SNPLAB_DEC_BAD_SIZE": 4,
                       "SNPLAB_DEC_BAD_TAG": 5},
}
INVALID_LEN = 1 << 32
BUSY = 2 << 32


def tag(seqno: int, text: str = "m") -> bytes:
    """A stand-in AES-GCM tag: distinct per (message text, seqno)."""
    return hashlib.sha256(f"{text}/{seqno}".encode()).digest()[:16]


def attempt(seqno: int, e2: int = 0, *, ext: bool = True, e1: int = 0, rbx_in: int = 0,
            rbx_out: int | None = None, vmpck: int = 0, msg: str = "m", resent: bool = False,
            head: bytes = b"") -> dict[str, Any]:
    return {"exit_code": EXT_GUEST_REQUEST if ext else GUEST_REQUEST, "req_gpa": 0x401000,
            "resp_gpa": 0x402000, "rax_in": 0x410000 if ext else 0, "rbx_in": rbx_in,
            "rbx_out": rbx_in if rbx_out is None else rbx_out, "sw_exitinfo1": e1,
            "sw_exitinfo2": e2, "seqno": seqno, "vmpck": vmpck, "msg_type": 5,
            "resent": int(resent), "pad": bytes(5).hex(), "tag": tag(seqno, msg).hex(),
            "certs_head": head.ljust(32, b"\0")[:32].hex()}


def report_bytes(report_data: bytes = b"") -> bytes:
    r = bytearray(0x4A0)
    r[0] = 5
    r[0x50:0x90] = report_data.ljust(64, b"\0")
    return bytes(r)


def step(attempts: Sequence[dict[str, Any]], *, outcome: int = 1, decrypt: int | None = None,
         report_data: bytes = b"", certs: tuple[int, int] = (0, 0), truncated: bool = False
         ) -> dict[str, Any]:
    last = attempts[-1] if attempts else None
    ok = last is not None and last["sw_exitinfo1"] == 0 and last["sw_exitinfo2"] == 0
    dec = decrypt if decrypt is not None else (1 if ok else 0)
    return {"outcome": outcome, "nattempts": len(attempts), "attempts": list(attempts),
            "resp_seqno": last["seqno"] + 1 if ok else 0, "resp_msg_type": 6 if ok else 0,
            "resp_msg_version": 1 if ok else 0, "resp_algo": 1, "resp_hdr_version": 1,
            "resp_hdr_sz": 0x60, "resp_msg_sz": 0x4C0, "resp_msg_vmpck": 0, "decrypt": dec,
            "rsp_status": 0, "rsp_report_size": 0x4A0 if ok else 0,
            "report": (report_bytes(report_data) if ok and dec == 1 else bytes(0x4A0)).hex(),
            "certs_gpa": 0x410000, "certs_npages": last["rbx_in"] if last else 0,
            "certs_store_off": certs[0], "certs_len": certs[1], "certs_truncated": int(truncated)}


def vcpu(steps: Sequence[dict[str, Any]], *, seqno_next: Sequence[int] | None = None,
         cert_store: bytes = b"") -> dict[str, Any]:
    return {"started": 1, "finished": 1, "nsteps": len(steps), "setup_error": 0,
            "setup_detail": 0, "ghcb_version": 2, "hv_features": 1,
            "seqno_next": list(seqno_next) if seqno_next is not None else None,
            "exc_vector": 0, "exc_valid": 0, "exc_error_code": 0, "exc_rip": 0, "exc_cr2": 0,
            "steps": list(steps), "cert_store_used": len(cert_store), "log_len": 0, "log": "",
            "cert_store": cert_store.hex()}


def log_entry(seqno: int, *, reached: bool, fw_status: int | None = 0, vcpu_: int = 0,
              vmpck: int = 0, msg: str = "m", ext: bool = True) -> dict[str, Any]:
    t = tag(seqno, msg)
    return {"vcpu": vcpu_, "exit_code": EXT_GUEST_REQUEST if ext else GUEST_REQUEST,
            "vmpck": vmpck, "seqno": seqno, "msg_type": 5,
            "ct_sha256": hashlib.sha256(b"ct" + t).hexdigest(), "tag": t.hex(),
            "reached_firmware": reached, "fw_status": fw_status if reached else None}


def cert_exit(npages_in: int, ret: int, npages: int, vcpu_: int = 0) -> dict[str, Any]:
    return {"t": 0.0, "vcpu": vcpu_, "kind": "ReqCerts", "gpa": 0x410000, "npages": npages_in,
            "answer": {"ret": ret, "npages": npages}}


def transcript(scenario: Scenario, vcpus: Sequence[dict[str, Any]], *, events=(),
               message_log=(), blob: bytes = b"", status: str = "ok",
               abi: str | None = None) -> Transcript:
    return Transcript(
        scenario=scenario, platform="emulated", abi=abi or scenario.abi,
        product=scenario.product, status=status,
        vcpus=tuple({"status": "terminated", "rip": 0, "symbol": "", "exit_reason": ""}
                    for _ in vcpus),
        events=tuple(events), results={"magic": 0x534E5052, "abi_version": 1,
                                       "nvcpus": len(vcpus), "vcpu": list(vcpus)},
        message_log=tuple(message_log), cert_blobs=(blob.hex(),) if blob else (),
        enums=ENUMS)


def scenario(*steps: Step, abi: str = "req-certs", **kw: Any) -> Scenario:
    return Scenario.single(abi, "milan", *steps, **kw)

"""The oracles of snplab.checks on hand-built transcripts: each property holds on a correct run
and is reported, by name, when the run shows the violation it is about."""

from __future__ import annotations

import uuid

import pytest
from snplab_synthetic import (
    BUSY,
    INVALID_LEN,
    attempt,
    cert_exit,
    log_entry,
    scenario,
    step,
    transcript,
    vcpu,
)

from snplab import checks
from snplab.abi.cert_table import ARK_GUID, ASK_GUID, VCEK_GUID, build_table
from snplab.scenario import Step
from snplab.transcript import Transcript

BLOB = build_table([(VCEK_GUID, b"V" * 1400), (ASK_GUID, b"S" * 1700), (ARK_GUID, b"A" * 1700)])
NEED = -(-len(BLOB) // 4096)  # 2 pages


def linux_retry_run(*, rbx_out: int = NEED, e2: int = INVALID_LEN, head: bytes = b"",
                    second: dict | None = None, final_seq: int = 3, seqno_next: int = 5,
                    blob: bytes = BLOB, log: list | None = None) -> Transcript:
    """INVALID_LEN on 1 page, plain resend (seq 1), new extended request with NEED pages (seq 3)."""
    sc = scenario(Step.ext(1, policy="linux", report_data=b"hello"))
    a0 = attempt(1, e2, rbx_in=1, rbx_out=rbx_out, head=head)
    a1 = second or attempt(1, 0, ext=False, resent=True)
    a2 = attempt(final_seq, 0, rbx_in=NEED, msg="m2")
    store = blob
    s = step([a0, a1, a2], report_data=b"hello", certs=(0, len(store)))
    logs = log if log is not None else [
        log_entry(1, reached=False), log_entry(1, reached=True, ext=False),
        log_entry(final_seq, reached=True, msg="m2")]
    return transcript(sc, [vcpu([s], seqno_next=[seqno_next, 1, 1, 1], cert_store=store)],
                      events=[cert_exit(1, 28, NEED), cert_exit(NEED, 0, 0)],
                      message_log=logs, blob=blob)


def names_failing(results) -> set[str]:
    return {r.name for r in results if r.ok is False}


def test_correct_linux_retry_satisfies_every_invariant():
    """A correct INVALID_LEN → resend → bigger buffer run violates no invariant."""
    t = linux_retry_run()
    res = checks.invariants(t)
    assert [r for r in res if r.ok is not True] == []
    checks.assert_invariants(t)
    checks.assert_invalid_len(t, 0, 0, pages=NEED)
    checks.assert_success(t, 0, 0)


def test_rbx_not_updated_is_named():
    t = linux_retry_run(rbx_out=1)
    assert names_failing(checks.invariants(t)) == {"invalid_len_rbx"}
    with pytest.raises(checks.CheckFailed, match=r"^invalid_len_rbx violated: .*RBX=1"):
        checks.assert_invalid_len_rbx(t)


def test_invalid_len_with_firmware_bits_is_malformed():
    t = linux_retry_run(e2=INVALID_LEN | 0x16)
    assert "invalid_len_encoding" in names_failing(checks.invariants(t))
    assert not checks.expect_invalid_len(t, 0, 0)


def test_rbx_must_match_blob_even_if_vmm_agrees():
    """The VMM itself asking for the wrong number of pages is caught (blob size is the truth)."""
    t = linux_retry_run(rbx_out=NEED + 1)
    ev = list(t.events)
    ev[0] = cert_exit(1, 28, NEED + 1)
    t2 = Transcript(**{**t.__dict__, "events": tuple(ev)})
    r = checks.invalid_len_rbx(t2)
    assert r.ok is False and f"want {NEED} pages" in r.detail


def test_certificate_bytes_written_on_invalid_len():
    t = linux_retry_run(head=BLOB[:24])
    assert names_failing(checks.invariants(t)) == {"invalid_len_no_write"}


def test_naive_retry_is_iv_reuse():
    """Re-encrypting a different message under seqno 1 is detected from tags and from the log."""
    naive = attempt(1, 0, rbx_in=NEED, msg="other")
    t = linux_retry_run(second=naive, log=[log_entry(1, reached=False),
                                           log_entry(1, reached=True, msg="other")])
    r = checks.no_iv_reuse(t)
    assert r.ok is False and "VMPCK0 seqno 1" in r.detail
    # the guest-side evidence alone is enough (SNP platform: no firmware log)
    t_snp = Transcript(**{**t.__dict__, "message_log": (), "platform": "snp"})
    assert checks.no_iv_reuse(t_snp).ok is False


def test_seqno_skip_and_final_counter():
    t = linux_retry_run(final_seq=5, seqno_next=7,
                        log=[log_entry(1, reached=False), log_entry(1, reached=True, ext=False),
                             log_entry(5, reached=True, msg="m2")])
    r = checks.seqno_advance(t)
    assert r.ok is False and "seqno 5, want 3" in r.detail
    t2 = linux_retry_run(seqno_next=3)
    r2 = checks.seqno_advance(t2)
    assert r2.ok is False and "next seqno 3" in r2.detail


def test_firmware_log_order_checked():
    """The firmware completing seqno 3 before seqno 1 is a violation even if the guest looks fine."""
    t = linux_retry_run(log=[log_entry(3, reached=True, msg="m2"),
                             log_entry(1, reached=True, ext=False)])
    assert "firmware log" in checks.seqno_advance(t).detail


def busy_run(*, resend: dict | None = None, busy_reached: bool = False,
             fw_after: int = 0) -> Transcript:
    sc = scenario(Step.ext(NEED, policy="linux"), cert_answers=("EAGAIN",))
    a0 = attempt(1, BUSY, rbx_in=NEED)
    a1 = resend or attempt(1, fw_after, rbx_in=NEED, resent=True)
    s = step([a0, a1], certs=(0, len(BLOB)))
    logs = [log_entry(1, reached=busy_reached, fw_status=0), log_entry(1, reached=True,
                                                                      fw_status=fw_after)]
    return transcript(sc, [vcpu([s], seqno_next=[3 if fw_after == 0 else 1, 1, 1, 1],
                                cert_store=BLOB)],
                      events=[cert_exit(NEED, 11, 0), cert_exit(NEED, 0, 0)],
                      message_log=logs, blob=BLOB)


def test_busy_then_identical_resend_holds():
    t = busy_run()
    checks.assert_invariants(t)
    checks.assert_exit(t, 0, 0, BUSY)
    checks.assert_success(t, 0, 0)


def test_busy_resend_of_a_different_message_is_named():
    t = busy_run(resend=attempt(1, 0, rbx_in=NEED, msg="changed", resent=False))
    fails = names_failing(checks.invariants(t))
    assert "busy_resent_identical" in fails and "no_iv_reuse" in fails


def test_busy_after_firmware_call_is_named():
    """KVM calling the firmware and then answering BUSY consumed the seqno: the log shows it."""
    t = busy_run(busy_reached=True)
    r = checks.host_error_no_seqno(t)
    assert r.ok is False and "firmware processed seqno 1" in r.detail


def test_consumed_seqno_seen_from_the_guest_alone():
    """Without a firmware log (SNP), the firmware rejecting the identical resend shows it."""
    t = busy_run(fw_after=0x16)
    t = Transcript(**{**t.__dict__, "message_log": ()})
    r = checks.host_error_no_seqno(t)
    assert r.ok is False and "consumed the sequence number" in r.detail


def test_cert_table_checks():
    t = linux_retry_run()
    assert checks.cert_table_parses(t, 0, 0)
    assert checks.cert_table_matches_blob(t, 0, 0)
    assert checks.cert_table_contents(t, 0, 0)
    assert not checks.cert_table_contents(t, 0, 0, signer="vlek")
    bad = bytearray(BLOB)
    bad[-1] ^= 1
    t_bad = linux_retry_run(blob=BLOB)
    t_bad = Transcript(**{**t_bad.__dict__, "results": _with_store(t_bad, bytes(bad))})
    r = checks.cert_table_matches_blob(t_bad, 0, 0)
    assert r.ok is False and f"first difference at byte {len(BLOB) - 1:#x}" in r.detail
    no_ark = build_table([(VCEK_GUID, b"V" * 100), (ASK_GUID, b"S" * 100)])
    t_na = Transcript(**{**t.__dict__, "results": _with_store(t, no_ark)})
    assert "no ARK" in checks.cert_table_contents(t_na, 0, 0).detail


def test_cert_table_hostile():
    """An unterminated or overlapping table fails cert_table_parses with the parser's reason."""
    hostile = uuid.uuid4().bytes + (8).to_bytes(4, "little") + (100).to_bytes(4, "little")
    t = linux_retry_run()
    t_h = Transcript(**{**t.__dict__, "results": _with_store(t, hostile + bytes(24))})
    r = checks.cert_table_parses(t_h, 0, 0)
    assert r.ok is False and "overlaps the table" in r.detail
    with pytest.raises(checks.CheckFailed, match="^cert_table_parses violated"):
        checks.assert_cert_table_parses(t_h, 0, 0)


def _with_store(t: Transcript, store: bytes) -> dict:
    res = {**t.results}
    vc = dict(res["vcpu"][0])
    vc["cert_store"] = store.hex()
    vc["cert_store_used"] = len(store)
    vc["steps"] = [dict(vc["steps"][0], certs_len=len(store))]
    res["vcpu"] = [vc]
    return res


def test_report_data_roundtrip():
    t = linux_retry_run()
    checks.assert_report_data_roundtrip(t, 0, 0)
    sc = scenario(Step.ext(1, policy="linux", report_data=b"other"))
    t2 = Transcript(**{**t.__dict__, "scenario": sc})
    with pytest.raises(checks.CheckFailed, match="^report_data_roundtrip violated"):
        checks.assert_report_data_roundtrip(t2, 0, 0)


def test_ghcb_error_expectation():
    sc = scenario(Step.ext(NEED, pages="misaligned_req"))
    s = step([attempt(1, 5, e1=2, rbx_in=NEED)], outcome=6)
    t = transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])], blob=BLOB)
    checks.assert_ghcb_error(t, 0, 0)
    assert not checks.expect_ghcb_error(t, 0, 0, reasons=(4,))
    checks.assert_invariants(t)  # a GHCB error makes no exit and uses no seqno


def test_stub_checks():
    sc = scenario(Step.ext(1), abi="stub")
    s = step([attempt(1, 0, rbx_in=1)], certs=(0, 0))
    t = transcript(sc, [vcpu([s], seqno_next=[3, 1, 1, 1])], abi="stub")
    checks.assert_stub_no_vmm_errors(t)
    checks.assert_stub_empty_table(t, 0, 0)
    checks.assert_invariants(t)
    s_bad = step([attempt(1, INVALID_LEN, rbx_in=1, rbx_out=2)], outcome=2)
    t_bad = transcript(sc, [vcpu([s_bad])], events=[cert_exit(1, 28, 2)], abi="stub")
    r = checks.stub_no_vmm_errors(t_bad)
    assert r.ok is False and "certificate exit" in r.detail
    assert "cert_exit_per_request" in names_failing(checks.invariants(t_bad))


def test_missing_cert_exit_is_named():
    t = linux_retry_run()
    t2 = Transcript(**{**t.__dict__, "events": t.events[:1]})
    assert names_failing(checks.invariants(t2)) == {"cert_exit_per_request"}


def test_run_completed_reports_guest_exception():
    t = linux_retry_run()
    res = {**t.results, "vcpu": [dict(t.results["vcpu"][0], exc_valid=1, exc_vector=14,
                                      exc_rip=0x101234, finished=0)]}
    t2 = Transcript(**{**t.__dict__, "results": res, "status": "crash", "error": "guest fault"})
    r = checks.run_completed(t2)
    assert r.ok is False and "exception 14" in r.detail and "crash" in r.detail
    assert checks.run_completed(t)


def test_run_failed_with():
    t = linux_retry_run()
    t2 = Transcript(**{**t.__dict__, "status": "kvm-run-error", "error": "KVM_RUN: EINVAL"})
    assert checks.run_failed_with(t2, "kvm-run-error", "EINVAL")
    assert not checks.run_failed_with(t2, "kvm-run-error", "EIO")
    assert not checks.run_failed_with(t, "kvm-run-error")


def test_recorded_verdicts_and_not_applicable():
    checks.RECORDED.clear()
    t = linux_retry_run()
    checks.assert_invariants(t)
    assert {r.name for r in checks.RECORDED} >= {"seqno_advance", "no_iv_reuse"}
    with pytest.raises(checks.CheckNotApplicable):
        checks.require(checks.CheckResult("x", None, "why"))


def test_generic_error_per_abi():
    assert checks.generic_error("req-certs") == 0xFFFFFFFF_00000000
    assert checks.generic_error("vmgexit-v15") == 0x80000000_00000000


def signed_run(tamper_tcb: bool = False) -> tuple[Transcript, object]:
    """A transcript whose step carries a report signed by a synthetic VCEK and its table."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from snplab.abi.tcb import TcbLayout, TcbVersion
    from snplab.attest import testing as at

    roots = at.make_roots("milan", tag="checks-")
    tcb = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=3, tee=0, snp=8, microcode=115)
    key, vek = at.make_vek(roots, tcb)
    rd = b"report data".ljust(64, b"\0")
    report_tcb = TcbVersion(TcbLayout.MILAN_GENOA, bootloader=3, snp=9, microcode=115) \
        if tamper_tcb else tcb
    report = at.sign_report(at.make_report(report_tcb, report_data=rd), key)
    blob = build_table([(VCEK_GUID, vek.public_bytes(Encoding.DER)),
                        (ASK_GUID, roots.ask.public_bytes(Encoding.DER)),
                        (ARK_GUID, roots.ark.public_bytes(Encoding.DER))])
    sc = scenario(Step.ext(2, report_data=b"report data"))
    s = step([attempt(1, 0, rbx_in=2)], certs=(0, len(blob)))
    s["report"] = report.hex()
    t = transcript(sc, [vcpu([s], seqno_next=[3, 1, 1, 1], cert_store=blob)],
                   events=[cert_exit(2, 0, 0)], message_log=[log_entry(1, reached=True)],
                   blob=blob)
    return t, at.trust_store(roots)


def test_report_verifies_with_returned_vek():
    t, trust = signed_run()
    checks.assert_step_verified(t, 0, 0, trust)
    r = checks.report_verifies(t, 0, 0, trust)
    assert r.ok and "vcek" in r.detail


def test_report_tcb_mismatch_is_named():
    t, trust = signed_run(tamper_tcb=True)
    r = checks.report_verifies(t, 0, 0, trust)
    assert r.ok is False and r.name == "reported_tcb"
    with pytest.raises(checks.CheckFailed, match="^reported_tcb violated"):
        checks.assert_step_verified(t, 0, 0, trust)


def test_report_against_other_roots_fails_chain():
    from snplab.attest import testing as at

    t, _ = signed_run()
    other = at.trust_store(at.make_roots("milan", tag="other-"))
    r = checks.report_verifies(t, 0, 0, other)
    assert r.ok is False and r.name == "vek_chain"


def replay_run(*, third_fw: int = 0) -> Transcript:
    """Step 0 completes (seq 1); step 1 replays seq 1 (rejected); step 2 uses seq 3."""
    sc = scenario(Step.ext(NEED), Step.ext(NEED, seqno=1), Step.ext(NEED))
    s0 = step([attempt(1, 0, rbx_in=NEED)], certs=(0, len(BLOB)))
    s1 = step([attempt(1, 0x16, rbx_in=NEED)], outcome=5)
    s2 = step([attempt(3, third_fw, rbx_in=NEED, msg="m3")], certs=(0, len(BLOB)),
              outcome=1 if third_fw == 0 else 5)
    return transcript(sc, [vcpu([s0, s1, s2], seqno_next=[5 if third_fw == 0 else 3, 1, 1, 1],
                                cert_store=BLOB)],
                      events=[cert_exit(NEED, 0, 0)] * 3, blob=BLOB)


def test_replay_rejected_and_counter_kept():
    t = replay_run()
    checks.assert_firmware_rejected(t, 0, 1)
    assert not checks.expect_firmware_rejected(t, 0, 0)
    checks.assert_invariants(t)


def test_rejection_that_consumed_the_counter_is_named():
    t = replay_run(third_fw=0x16)
    r = checks.firmware_error_no_seqno(t)
    assert r.ok is False and "seqno 3" in r.detail
    assert names_failing(checks.invariants(t)) == {"firmware_error_no_seqno"}


def test_response_seqno_checked_even_when_decrypt_fails():
    t = linux_retry_run()
    res = {**t.results}
    vc = dict(res["vcpu"][0])
    vc["steps"] = [dict(vc["steps"][0], resp_seqno=3, decrypt=3)]  # BAD_SEQNO: response kept N
    res["vcpu"] = [vc]
    t2 = Transcript(**{**t.__dict__, "results": res})
    r = checks.seqno_advance(t2)
    assert r.ok is False and "response seqno 3, want 4" in r.detail


def test_run_failed_with_any_status():
    t = linux_retry_run()
    t2 = Transcript(**{**t.__dict__, "status": "error",
                       "error": "GuestSetupError: ENABLE_REQ_CERTS: Invalid argument (EINVAL)"})
    assert checks.run_failed_with(t2, None, "EINVAL", name="x").name == "x"
    assert checks.run_failed_with(t2, None, "EINVAL")
    assert not checks.run_failed_with(t, None, "EINVAL")


def _with_canary(t: Transcript, canary: int = 0xA5) -> Transcript:
    enums = {**t.enums, "snplab_canary": {"SNPLAB_CERTS_CANARY": canary}}
    return Transcript(**{**t.__dict__, "enums": enums})


def test_zeroed_buffer_on_invalid_len_is_a_write():
    """A host that zero-fills the buffer on INVALID_LEN overwrote the guest's canary."""
    t = _with_canary(linux_retry_run(head=bytes(32)))
    r = checks.invalid_len_no_write(t)
    assert r.ok is False and "written on INVALID_LEN" in r.detail


def test_untouched_canary_on_invalid_len_is_no_write():
    t = _with_canary(linux_retry_run(head=bytes([0xA5]) * 32))
    assert checks.invalid_len_no_write(t).ok is not False
    assert "invalid_len_no_write" not in names_failing(checks.invariants(t))


def test_stub_with_zero_pages_must_not_write():
    """Stub ABI, RBX = 0: KVM writes nothing, so a cleared buffer is a violation."""
    sc = scenario(Step.ext(0), abi="stub")
    for head, bad in ((bytes([0xA5]) * 32, False), (bytes(32), True)):
        s = step([attempt(1, 0, rbx_in=0, head=head)])
        t = _with_canary(transcript(sc, [vcpu([s], seqno_next=[3, 1, 1, 1])],
                                    message_log=[log_entry(1, reached=True)], abi="stub"))
        r = checks.stub_empty_table(t, 0, 0)
        assert (r.ok is False) is bad, r.detail


def test_stub_generic_vmm_error_is_flagged():
    sc = scenario(Step.ext(1), abi="stub")
    s = step([attempt(1, 0xFFFFFFFF << 32, rbx_in=1)], outcome=4)
    t = transcript(sc, [vcpu([s])], abi="stub")
    r = checks.stub_no_vmm_errors(t)
    assert r.ok is False and "0xffffffff00000000" in r.detail


@pytest.mark.parametrize("kernel,abi,e1,e2,ok", [
    ("newest", "req-certs", 2, 5, True), ("newest", "req-certs", 2, 4, False),
    ("7.0", "req-certs", 2, 4, True), ("7.0", "req-certs", 2, 5, False),
    ("6.11-stub", "stub", 2, 4, True),
    ("v15", "vmgexit-v15", 0, 0x80000000 << 32, True), ("v15", "vmgexit-v15", 2, 4, False)])
def test_kernel_answer_is_judged_by_the_transcripts_generation(kernel, abi, e1, e2, ok):
    """expect_kernel_answer reads the row of the generation the transcript's host played."""
    sc = scenario(Step.ext(NEED, pages="misaligned_req"), abi=abi, kernel=kernel)
    s = step([attempt(1, e2, e1=e1, rbx_in=NEED)], outcome=6)
    t = transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])], blob=BLOB)
    t = Transcript(**{**t.__dict__, "kernel_behaviour": kernel})
    r = checks.expect_kernel_answer(t, 0, 0)
    assert r.ok is ok, r.message
    assert ("pages-misaligned on kernel " + kernel) in r.detail


def test_v15_unaligned_certificate_gpa_accepts_any_firmware_bits():
    """v15's abort path leaves fw_err uninitialised: any low 32 bits, but GENERIC and EXITINFO1 0."""
    sc = scenario(Step.ext(NEED, certs_gpa_offset=8), abi="vmgexit-v15")
    for e2, ok in (((0x80000000 << 32) | 0x1234, True), (0xFFFFFFFF << 32, False)):
        s = step([attempt(1, e2, rbx_in=NEED)], outcome=5)
        t = transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])], blob=BLOB)
        assert checks.expect_kernel_answer(t, 0, 0).ok is ok
    assert checks.cert_exits_match_requests(t), "no certificate exit is expected on v15 here"


def test_v15_late_page_check_yields_to_the_vmm_answer():
    """On v15 the pages are checked after the certificate exit: when the VMM answered ENOSPC
    the guest rightly sees INVALID_LEN, not GENERIC."""
    sc = scenario(Step.ext(1, pages="misaligned_req"), abi="vmgexit-v15")
    s = step([attempt(1, 1 << 32, rbx_in=1, rbx_out=NEED)], outcome=2)
    t = transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])], blob=BLOB,
                   events=[{**cert_exit(1, 1, NEED), "kind": "VmgexitReqCerts"}])
    r = checks.expect_kernel_answer(t, 0, 0)
    assert r.ok is True and "vmm-enospc" in r.detail, r.message
    s = step([attempt(1, 0x80000000 << 32, rbx_in=NEED)], outcome=5)
    t = transcript(sc, [vcpu([s], seqno_next=[1, 1, 1, 1])], blob=BLOB,
                   events=[{**cert_exit(NEED, 0, 0), "kind": "VmgexitReqCerts"}])
    assert checks.expect_kernel_answer(t, 0, 0).ok is True


# ---- oracles added for the fault catalog (each also kills its fault in `snplab mutate`) ----


def test_cert_exit_args_names_a_truncated_npages():
    t = linux_retry_run()
    assert checks.cert_exit_args(t).ok is True
    t = transcript(t.scenario, list(t.results["vcpu"]), blob=BLOB, message_log=t.message_log,
                   events=[cert_exit(1, 28, NEED), cert_exit(NEED - 1, 0, 0)])
    r = checks.cert_exit_args(t)
    assert r.ok is False and "npages=1" in r.detail and f"RBX={NEED}" in r.detail


def test_invalid_len_justified_names_an_enospc_for_enough_pages():
    sc = scenario(Step.ext(NEED))
    s = step([attempt(1, INVALID_LEN, rbx_in=NEED, rbx_out=NEED)], outcome=2, decrypt=0)
    t = transcript(sc, [vcpu([s])], events=[cert_exit(NEED, 28, NEED)], blob=BLOB)
    assert "invalid_len_justified" in names_failing(checks.invariants(t))
    scripted = transcript(scenario(Step.ext(NEED), cert_answers=("ENOSPC",)), [vcpu([s])],
                          events=[cert_exit(NEED, 28, NEED)], blob=BLOB)
    assert checks.invalid_len_justified(scripted).ok is True


def test_host_error_no_response_names_a_written_response_page():
    sc = scenario(Step.ext(1))
    a = attempt(1, INVALID_LEN, rbx_in=1, rbx_out=NEED)
    t = transcript(sc, [vcpu([step([a], outcome=2, decrypt=0)])],
                   events=[cert_exit(1, 28, NEED)], blob=BLOB)
    assert checks.host_error_no_response(t).ok is True
    a["resp_written"] = 1
    t = transcript(sc, [vcpu([step([a], outcome=2, decrypt=0)])],
                   events=[cert_exit(1, 28, NEED)], blob=BLOB)
    assert "host_error_no_response" in names_failing(checks.invariants(t))


def test_busy_retried_names_a_guest_that_gives_up():
    sc = scenario(Step.ext(NEED, policy="linux", max_busy_retries=2))
    s = step([attempt(1, BUSY, rbx_in=NEED)], outcome=3, decrypt=0)
    t = transcript(sc, [vcpu([s])], events=[cert_exit(NEED, 11, 0)], blob=BLOB)
    assert "busy_retried" in names_failing(checks.invariants(t))
    none_policy = transcript(scenario(Step.ext(NEED, max_busy_retries=2)), [vcpu([s])],
                             events=[cert_exit(NEED, 11, 0)], blob=BLOB)
    assert checks.busy_retried(none_policy).ok is True


def test_message_within_page_and_firmware_call_count():
    t = linux_retry_run()
    assert checks.message_within_page(t).ok is True
    assert checks.firmware_call_per_request(t).ok is True  # no firmware log: not the emulator
    logs = [dict(m, msg_sz=4000 + 1, hdr_sz=0x60) for m in t.message_log]
    big = transcript(t.scenario, list(t.results["vcpu"]), blob=BLOB, message_log=logs,
                     events=list(t.events))
    assert checks.message_within_page(big).ok is False
    twice = Transcript(**{**big.__dict__, "message_log": t.message_log,
                          "host": {"psp_log": [{}] * 3}})
    assert checks.firmware_call_per_request(twice).ok is False

"""Scenario and Transcript data: validation, builders and exact JSON round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from snplab_synthetic import attempt, log_entry, step, transcript, vcpu

from snplab.scenario import PAGES, POLICIES, Scenario, ScenarioError, Step, pages_for
from snplab.transcript import Transcript, TranscriptError, trim_results


def test_builders_read_like_the_behaviour():
    sc = Scenario.single("stub", "genoa", Step.ext(3, policy="linux"), Step.req(vmpck=1))
    assert sc.nvcpus == 1 and sc.abi == "stub" and sc.product == "genoa"
    assert sc.step(0, 0).certs_npages == 3 and sc.step(0, 1).op == "req"
    assert sc.name == "stub/genoa/ext_req:3,req"
    m = Scenario.multi("req-certs", "turin", [[Step.ext(4)], [Step.ext(4, vmpck=1)]])
    assert m.nvcpus == 2 and m.step(1, 0).vmpck == 1
    assert sc.with_(signer="vlek").signer == "vlek" and sc.signer == "vcek"
    assert Step.terminate(4).vmpl == 4


@pytest.mark.parametrize("bad", [
    dict(op="ext"), dict(pages="shared"), dict(policy="retry"), dict(vmpck=4),
    dict(report_data=bytes(65)), dict(certs_npages=-1), dict(certs_npages=1 << 64),
    dict(msg_type=256), dict(seqno=-1)])
def test_step_rejects(bad):
    with pytest.raises(ScenarioError):
        Step(**bad)


@pytest.mark.parametrize("bad", [
    dict(abi="6.11"), dict(product="rome"), dict(signer="vek"), dict(cert_answers=("EBUSY",)),
    dict(cert_answers=("ret:-5",)),
    dict(host_data=bytes(31)), dict(report_version=4), dict(guest_timeout=0), dict(steps=())])
def test_scenario_rejects(bad):
    kw = dict(name="x", steps=((Step.ext(1),),))
    kw.update(bad)
    with pytest.raises(ScenarioError):
        Scenario(**kw)


def test_cert_answer_grammar():
    ok = Scenario(name="x", steps=((Step(),),),
                  cert_answers=("auto", "ENOSPC", "EAGAIN", "EIO", "ret:7", "ret:18446744073709551611",
                                "enospc-npages:9"))
    assert ok.cert_answers[-1] == "enospc-npages:9"


def test_pages_for():
    assert [pages_for(n) for n in (0, 1, 4095, 4096, 4097, 65536)] == [0, 1, 1, 1, 2, 16]


steps_st = st.builds(
    Step, op=st.sampled_from(["ext_req", "req"]), vmpck=st.integers(0, 3),
    report_data=st.binary(max_size=64), certs_npages=st.integers(0, (1 << 64) - 1),
    certs_gpa=st.none() | st.integers(0, (1 << 64) - 1), pages=st.sampled_from(PAGES),
    seqno=st.none() | st.integers(0, 1 << 40), policy=st.sampled_from(POLICIES),
    no_rax_valid=st.booleans())


@settings(max_examples=60, deadline=None)
@given(scripts=st.lists(st.lists(steps_st, min_size=1, max_size=3), min_size=1, max_size=4),
       blob=st.none() | st.binary(max_size=64), answers=st.lists(
           st.sampled_from(["auto", "EAGAIN", "ret:22", "enospc-npages:3"]), max_size=3))
def test_scenario_json_round_trip(scripts, blob, answers):
    sc = Scenario.multi("vmgexit-v15", "milan", scripts, cert_blob=blob,
                        cert_answers=tuple(answers), faults=("x",), label="l")
    text = json.dumps(sc.to_json())
    assert Scenario.from_json(json.loads(text)) == sc


def test_scenario_from_json_rejects_unknown_fields():
    d = Scenario.single("stub", "milan", Step.ext(1)).to_json()
    d["surprise"] = 1
    with pytest.raises(ScenarioError, match="surprise"):
        Scenario.from_json(d)


def make_transcript() -> Transcript:
    sc = Scenario.single("req-certs", "milan", Step.ext(1, report_data=b"rd"))
    s = step([attempt(1, 0, rbx_in=1)], report_data=b"rd", certs=(2, 3))
    return transcript(sc, [vcpu([s], seqno_next=[3, 1, 1, 1], cert_store=b"\0\0abc")],
                      message_log=[log_entry(1, reached=True)], blob=b"abc",
                      events=[{"t": 0.1, "vcpu": 0, "kind": "ReqCerts", "gpa": 1, "npages": 1,
                               "answer": {"ret": 0, "npages": 0}}])


def test_transcript_round_trip_and_accessors(tmp_path):
    t = make_transcript()
    path = tmp_path / "t.json"
    t.save(path)
    t2 = Transcript.load(path)
    assert t2 == t
    assert t2.cert_bytes(0, 0) == b"abc"
    assert t2.report(0, 0)[0x50:0x52] == b"rd"
    assert t2.step(0, 0).outcome_name == "OK" and t2.step(0, 0).decrypt_name == "OK"
    assert t2.attempts(0, 0)[0].seqno == 1 and t2.attempts(0, 0)[0].completed
    assert [e["kind"] for e in t2.events_of("ReqCerts")] == ["ReqCerts"]
    assert t2.events_of("ReqCerts", vcpu=1) == []
    assert t2.cert_blob == b"abc"
    assert "vCPU 0 step 0: OK" in t2.summary()


def test_transcript_errors():
    t = make_transcript()
    with pytest.raises(TranscriptError, match="no step 3"):
        t.step(0, 3)
    with pytest.raises(TranscriptError, match="no results for vCPU 2"):
        t.steps(2)
    d = t.to_json()
    d["schema"] = 99
    with pytest.raises(TranscriptError, match="schema"):
        Transcript.from_json(d)


def test_trim_results_drops_unused_parts():
    """Decoded results as the VMM gives them (bytes, full arrays) shrink to what was used."""
    raw_attempt = {k: (bytes.fromhex(v) if k in ("tag", "certs_head", "pad") else v)
                   for k, v in attempt(1, 0).items()}
    raw_step = dict(step([attempt(1, 0)]), attempts=[raw_attempt] * 8, report=bytes(0x4A0))
    raw_vcpu = dict(vcpu([raw_step]), steps=[raw_step] * 16, cert_store=b"xyz" + bytes(100),
                    cert_store_used=3, log=b"hello\0junk", log_len=5)
    raw = {"magic": 1, "abi_version": 1, "nvcpus": 1, "vcpu": [raw_vcpu] * 4}
    out = trim_results(raw)
    assert len(out["vcpu"]) == 1
    assert len(out["vcpu"][0]["steps"]) == 1
    assert len(out["vcpu"][0]["steps"][0]["attempts"]) == 1
    assert out["vcpu"][0]["cert_store"] == b"xyz".hex()
    assert out["vcpu"][0]["log"] == "hello"
    json.dumps(out)


# ---- encoding into the payload's params and running on the emulated platform ---------------

def _payload_dwarf():
    from snplab.platform import PlatformUnavailable, default_payload_path
    from snplab.vmm.elf import load_elf

    try:
        return load_elf(default_payload_path()).dwarf
    except PlatformUnavailable as e:
        pytest.skip(str(e))


def test_encode_scenario_uses_dwarf_layout_and_enums():
    """Steps land in snplab_params exactly where and as the payload's DWARF says."""
    from snplab.platform import ScenarioEncodeError, encode_scenario
    from snplab.vmm.dwarf import StructView

    dwarf = _payload_dwarf()
    layout = dwarf.layout("snplab_params")
    buf = bytearray(layout.size)
    view = StructView(layout, memoryview(buf))
    sc = Scenario.multi("req-certs", "milan", [
        [Step.ext(3, policy="linux", report_data=b"\x01\x02", certs_gpa_offset=8)],
        [Step.req(vmpck=2, vmpl=2), Step.ext(1, seqno=9, no_rbx_valid=True, pages="same"),
         Step.terminate(4)]])
    encode_scenario(view, dwarf, sc)
    dec = view.decode()
    op, pol, pages = dwarf.enum("snplab_op"), dwarf.enum("snplab_policy"), dwarf.enum("snplab_pages")
    flags = dwarf.enum("snplab_step_flags")
    v0, v1 = dec["vcpu"][0], dec["vcpu"][1]
    assert v0["nsteps"] == 1 and v1["nsteps"] == 3
    s = v0["steps"][0]
    assert (s["op"], s["policy"], s["certs_npages"], s["certs_gpa_offset"]) == (
        op["SNPLAB_OP_EXT_REQ"], pol["SNPLAB_POLICY_LINUX"], 3, 8)
    assert bytes.fromhex(s["report_data"]) == b"\x01\x02" + bytes(62)
    s = v1["steps"][1]
    assert s["seqno"] == 9 and s["pages"] == pages["SNPLAB_PAGES_SAME"]
    assert s["flags"] == flags["SNPLAB_STEP_SEQNO_OVERRIDE"] | flags["SNPLAB_STEP_NO_RBX_VALID"]
    assert v1["steps"][2]["op"] == op["SNPLAB_OP_TERMINATE"] and v1["steps"][2]["vmpl"] == 4
    assert (v1["steps"][0]["vmpck"], v1["steps"][0]["vmpl"]) == (2, 2)
    too_many = Scenario.single("stub", "milan", *[Step.ext(1)] * 17)
    with pytest.raises(ScenarioEncodeError, match="at most 16"):
        encode_scenario(StructView(layout, memoryview(bytearray(layout.size))), dwarf, too_many)


def _kvm_ok() -> bool:
    import os

    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def emulated():
    if not _kvm_ok():
        pytest.skip("/dev/kvm unusable")
    from snplab.platform import get_platform

    p = get_platform("emulated")
    yield p
    p.close()


@pytest.mark.kvm
def test_run_never_raises_for_bad_scenarios(emulated):
    """A scenario the payload cannot hold, or an unknown fault, ends as status "error"."""
    t = emulated.run(Scenario.multi("req-certs", "milan", [[Step.ext(1)]] * 5))
    assert t.status == "error" and ("5 vCPUs" in t.error or "nvcpus=5" in t.error), t.error
    t = emulated.run(Scenario.single("req-certs", "milan", Step.ext(1), faults=("no-such-fault",)))
    assert t.status == "error" and "no-such-fault" in t.error


@pytest.mark.kvm
def test_run_end_to_end_transcript(emulated):
    """A real emulated run: transcript fields filled, JSON round trip exact, blob recorded."""
    t = emulated.run(Scenario.single("req-certs", "genoa", Step.ext(0)))
    assert t.status == "ok", t.error
    assert t.step(0, 0).attempts[0].vmm_error == 1
    assert t.cert_blob == emulated.cert_blob("genoa", "vcek")
    assert t.launch_log["updates"] and t.measurement and t.message_log
    assert {"run_s", "wall_s", "platform_s"} <= set(t.timings)
    assert Transcript.loads(t.dumps()) == Transcript.from_json(json.loads(t.dumps()))
    assert t.enums["snplab_outcome"]["SNPLAB_OUT_INVALID_LEN"] == t.step(0, 0).outcome

"""The payload ELF end to end on the emulated platform (local /dev/kvm, KVM's SNP handling and the
PSP modelled by snplab.emu): setup, the linux/naive policies, sequence numbers across vCPUs and
hostile steps, read from the guest's own results.  Emulated results, not hardware results."""

from __future__ import annotations

from collections import defaultdict

import pytest

from snplab.scenario import Scenario, Step

pytestmark = pytest.mark.kvm

EXT, REQ = 0x80000012, 0x80000011


@pytest.fixture(scope="module")
def platform(emulated_platform_factory):
    yield from emulated_platform_factory()


def vcpu(t, v: int = 0) -> dict:
    return t.results["vcpu"][v]


def attempts(t, i: int, v: int = 0) -> list[dict]:
    s = vcpu(t, v)["steps"][i]
    return s["attempts"][:s["nattempts"]]


def reused(t) -> set[tuple[int, int]]:
    seen: dict[tuple[int, int], set] = defaultdict(set)
    for m in t.message_log:
        seen[(m["vmpck"], m["seqno"])].add((m["ct_sha256"], m["tag"]))
    return {k for k, v in seen.items() if len(v) > 1}


def test_setup_and_linux_policy_over_sizes(platform) -> None:
    probe = platform.run(Scenario(name="probe", steps=((Step(op="ext_req", certs_npages=0),),)))
    need = attempts(probe, 0)[0]["rbx_out"]
    assert need >= 1
    sizes = [0, 1, max(need - 1, 0), need, need + 1, 64]
    t = platform.run(Scenario(name="sizes", steps=(tuple(
        Step(op="ext_req", certs_npages=n, policy="linux", report_data=bytes([i + 1]) * 64)
        for i, n in enumerate(sizes)),)))
    assert t.status == "ok" and t.vcpus[0]["status"] == "terminated"
    r = vcpu(t)
    assert (r["started"], r["finished"], r["setup_error"], r["exc_valid"]) == (1, 1, 0, 0)
    assert r["ghcb_version"] == 2 and r["hv_features"] & 1
    consumed = []
    for i, n in enumerate(sizes):
        a, s = attempts(t, i), r["steps"][i]
        assert s["decrypt"] == 1 and bytes.fromhex(s["report"])[0x50:0x90] == bytes([i + 1]) * 64
        if n < need:
            assert [(x["exit_code"], x["resent"]) for x in a] == [(EXT, 0), (REQ, 1), (EXT, 0)]
            assert a[0]["sw_exitinfo2"] == 1 << 32 and a[0]["rbx_out"] == need
            assert a[1]["tag"] == a[0]["tag"] and a[2]["seqno"] == a[0]["seqno"] + 2
        else:
            assert len(a) == 1
        consumed += [x["seqno"] for x in a if x["sw_exitinfo2"] == 0]
        assert s["certs_len"] > 24 and not s["certs_truncated"]
    assert consumed == list(range(1, 2 * len(consumed), 2))
    assert r["seqno_next"][0] == 2 * len(consumed) + 1
    assert reused(t) == set()


def test_naive_policy_shows_iv_reuse(platform) -> None:
    step = Step(op="ext_req", certs_npages=0, policy="naive")
    t = platform.run(Scenario(name="naive", steps=((step,),)))
    a = attempts(t, 0)
    assert [x["seqno"] for x in a] == [1, 1] and a[0]["tag"] != a[1]["tag"]
    assert reused(t) == {(0, 1)}


def test_vcpus_share_the_per_vmpck_sequence(platform) -> None:
    t = platform.run(Scenario(name="mp", steps=(
        tuple(Step(op="ext_req", certs_npages=64) for _ in range(3)),
        tuple(Step(op="ext_req", certs_npages=64) for _ in range(3)),
        (Step(op="ext_req", certs_npages=64, vmpck=1),))))
    assert t.status == "ok" and all(v["status"] == "terminated" for v in t.vcpus)
    seq0 = sorted(x["seqno"] for v in (0, 1) for i in range(3) for x in attempts(t, i, v))
    assert seq0 == [1, 3, 5, 7, 9, 11]
    assert [x["seqno"] for x in attempts(t, 0, 2)] == [1]
    assert all(vcpu(t, v)["steps"][i]["decrypt"] == 1 for v, n in ((0, 3), (1, 3), (2, 1))
               for i in range(n))
    assert reused(t) == set()


def test_hostile_steps_end_in_recorded_errors(platform) -> None:
    t = platform.run(Scenario(name="hostile", steps=((
        Step(op="ext_req", certs_npages=2**32 - 1, policy="linux"),
        Step(op="ext_req", certs_npages=3, certs_gpa=0x7000_0000, policy="linux"),
        Step(op="ext_req", certs_npages=3, pages="private_certs"),
        Step(op="ext_req", certs_npages=3, pages="same"),
        Step(op="ext_req", certs_npages=3, certs_gpa_offset=8),
        Step(op="ext_req", certs_npages=3, no_rbx_valid=True),
        Step(op="ext_req", certs_npages=64),
    ),)))
    assert t.status == "ok" and t.vcpus[0]["status"] == "terminated"
    r = vcpu(t)
    assert r["finished"] == 1 and r["nsteps"] == 7 and r["exc_valid"] == 0
    assert r["steps"][3]["outcome"] == r["steps"][4]["outcome"] == r["steps"][5]["outcome"]
    assert all(attempts(t, i)[0]["sw_exitinfo1"] == 2 for i in (3, 4, 5))
    assert r["steps"][2]["certs_len"] == 0             # a private buffer is never read back
    assert r["steps"][6]["decrypt"] == 1               # and the guest is still in sync
    assert reused(t) == set()

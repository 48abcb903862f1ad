"""EmulatedBackend under the real VMM on /dev/kvm with the real payload ELF: the GHCB protocol, page
state changes, certificate exits and reports work end to end, and a fault shows in the guest's own
record. Emulated results: nothing here is a hardware result."""

from __future__ import annotations

from pathlib import Path

import pytest

from snplab.abi import ghcb as G
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_from_cert_table
from snplab.emu.platform import EmulatedBackend
from snplab.scenario import Scenario, Step

pytestmark = pytest.mark.kvm


@pytest.fixture(scope="module")
def platform(emulated_platform_factory):
    yield from emulated_platform_factory()


def _attempts(t, step: int = 0) -> list:
    return t.step(0, step).attempts


@pytest.mark.parametrize("abi", ("req-certs", "vmgexit-v15", "stub"))
def test_extended_request_end_to_end(platform, abi: str, tmp_path: Path) -> None:
    sc = Scenario.single(abi, "turin", Step.ext(npages=16, report_data=b"e2e"), Step.ext(npages=1, policy="linux"),
                         signer="vlek")
    t = platform.run(sc)
    assert t.status == "ok", t.error
    s0 = t.step(0, 0)
    assert s0.has_report
    table = s0.certs
    backend = EmulatedBackend("turin", "vlek", abi)
    trust = TrustStore.from_dir(backend.trust_dir(tmp_path / "trust"), pinned=False)
    if abi != "stub":
        verdict = verify_from_cert_table(s0.report, table, trust)
        assert verdict.ok, verdict.summary()
        a = _attempts(t, 1)
        assert a[0].sw_exitinfo2 == 1 << 32 and a[0].rbx_out == -(-len(backend.cert_blob()) // 4096)
        assert a[1].exit_code == G.SVM_VMGEXIT_GUEST_REQUEST and a[1].sw_exitinfo2 == 0
    else:
        assert all(a.sw_exitinfo2 == 0 for a in _attempts(t, 1))
    kinds = {e["kind"] for e in t.events}
    assert {"MsrRead", "MsrWrite", "Doorbell", "MapGpaRange", "SevTerm"} <= kinds
    assert ("ReqCerts" in kinds) == (abi == "req-certs") and ("VmgexitReqCerts" in kinds) == (abi == "vmgexit-v15")
    log = t.message_log
    assert log and all(m["vmpck"] == 0 for m in log)
    # linux policy: INVALID_LEN → same bytes as a plain request (seqno 3), then a new request (5)
    assert [m["seqno"] for m in log if m["reached_firmware"]] == ([1, 3] if abi == "stub" else [1, 3, 5])


def test_fault_shows_in_the_guests_record(platform) -> None:
    sc = Scenario.single("req-certs", "milan", Step.ext(npages=1), faults=("rbx-unchanged-on-invalid-len",))
    t = platform.run(sc)
    assert t.status == "ok", t.error
    a = _attempts(t)[0]
    assert a.sw_exitinfo2 == 1 << 32 and a.rbx_out == a.rbx_in == 1


def test_invalid_ret_ends_the_vcpu_like_kvm_run(platform) -> None:
    t = platform.run(Scenario.single("req-certs", "genoa", Step.ext(npages=16), cert_answers=("ret:99",)))
    assert t.status == "kvm-run-error"
    assert "EINVAL" in (t.error or "") or "Invalid argument" in (t.error or "")

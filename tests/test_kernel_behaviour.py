"""The kernel-behaviour registry (snplab.abi.kernel_behaviour): what the v15 profile plays (D2-D4
of shared/reference/fidelity-review.md), and that the emulated KVM and snplab.checks both read
the registry's rows."""

from __future__ import annotations

import errno
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from emu_refguest import RefGuest, RefHost

from snplab import checks, cli
from snplab.abi import ghcb as G
from snplab.abi import kernel_behaviour as kb
from snplab.host.kernel_generation import detect
from snplab.scenario import Scenario, ScenarioError, Step, pages_for
from snplab.vmm.events import VmgexitReqCerts

GENERIC_V15 = G.SNP_GUEST_VMM_ERR_GENERIC_V15 << 32


def _v15(tmp_path: Path, **kw) -> tuple[RefHost, RefGuest]:
    host = RefHost(tmp_path, abi="vmgexit-v15", **kw)
    guest = RefGuest(host)
    guest.setup()
    return host, guest


# ---- D2-D4: the v15 profile plays the v15 patch code ------------------------------------------


def test_v15_unaligned_certificate_gpa_is_generic(tmp_path: Path) -> None:
    """D2: [V15] snp_begin_ext_guest_req answers an unaligned RAX with GENERIC (BIT(31) in the
    VMM-error word), SW_EXITINFO1 = 0, before any exit to the VMM and without the firmware."""
    host, g = _v15(tmp_path)
    r = g.request(certs_gpa=g.certs_gpa + 8)
    a = r.attempts[0]
    assert (a.info1, a.vmm_error) == (0, G.SNP_GUEST_VMM_ERR_GENERIC_V15), (hex(a.info1), hex(a.info2))
    assert not host.of_kind(VmgexitReqCerts), "v15 aborts before the KVM_EXIT_VMGEXIT"
    assert host.psp.next_seqno(0) == 1, "no firmware call"


def test_v15_request_pages_checked_after_the_certificate_exit(tmp_path: Path) -> None:
    """D3: v15 does not check the request/response pages at validation: an extended request
    with a misaligned request page exits to the VMM, then snp_setup_guest_buf fails → GENERIC
    (EXITINFO1 = 0); req == resp is not checked at all (the request exits and goes on)."""
    host, g = _v15(tmp_path)
    r = g.request(pages="misaligned_req")
    a = r.attempts[0]
    assert (a.info1, a.info2) == (0, GENERIC_V15), (hex(a.info1), hex(a.info2))
    assert len(host.of_kind(VmgexitReqCerts)) == 1, "the certificate exit comes first"
    assert host.psp.next_seqno(0) == 1
    r = g.request(pages="same")
    assert r.attempts[0].info1 == 0, "req == resp is not malformed input on v15"
    assert len(host.of_kind(VmgexitReqCerts)) == 2
    # a plain guest request with a misaligned page: GENERIC from snp_handle_guest_req
    assert g.ghcb_call(G.SVM_VMGEXIT_GUEST_REQUEST, g.req_gpa + 8, g.resp_gpa) == (0, GENERIC_V15)


def test_v15_firmware_error_is_generic_plus_status(tmp_path: Path) -> None:
    """D4: a message the firmware rejects (replayed seqno) gets SW_EXITINFO2 =
    BIT(31) << 32 | firmware status on v15 ([V15-18] snp_handle_guest_req: vmm_ret = GENERIC)."""
    host, g = _v15(tmp_path)
    assert g.request().outcome == "ok"
    r = g.request(seqno=1)  # replay: the firmware refuses it
    a = r.attempts[0]
    assert a.info1 == 0 and a.vmm_error == G.SNP_GUEST_VMM_ERR_GENERIC_V15 and a.fw_error != 0, hex(a.info2)
    plain = g.request("req", seqno=1)
    assert plain.attempts[0].vmm_error == G.SNP_GUEST_VMM_ERR_GENERIC_V15 and plain.attempts[0].fw_error
    assert g.request().outcome == "ok", "the rejection consumed no sequence number"


# ---- the registry itself -----------------------------------------------------------------------


def test_every_row_cites_a_source_function():
    for gen, rows in kb.REGISTRY.items():
        assert set(rows) <= set(kb.SHAPES), gen
        for shape, r in rows.items():
            assert re.match(r"\[(OLD|NEW|V7|V15|V15-18)\]", r.source), (gen, shape, r.source)
            assert re.search(r"\b(sev|snp|setup|svm|__snp)_\w+", r.source), (gen, shape, r.source)
            if r.outcome == kb.GHCB_ERROR:
                assert r.reason is not None and r.exitinfo1 == G.GHCB_HV_RESP_MALFORMED_INPUT
            if r.outcome in (kb.KVM_RUN_ERROR, kb.IOCTL_ERROR):
                assert hasattr(errno, r.errno_name), (gen, shape)


def test_profiles_and_generations():
    assert kb.generations_for("vmgexit-v15") == ("v15",)
    assert kb.generations_for("req-certs") == ("7.0", "newest")
    assert set(kb.generations_for("stub")) == {"6.11-stub", "7.0", "newest"}
    for profile, gen in kb.DEFAULT_GENERATION.items():
        assert kb.allows(gen, profile)
        assert kb.has_rule(gen, kb.report_request_shape(profile))
    # v15 no longer inherits the 7.0 rows (D6): where the v15 code differs, its own row says so
    for shape in ("pages-misaligned", "pages-identical", "regs-not-valid", "certs-gpa-unaligned",
                  "firmware-error", "vmm-eio"):
        assert kb.rule("v15", shape) != kb.rule("7.0", shape), shape
    assert kb.rule("v15", "ghcb-unregistered") == kb.rule("6.11-stub", "ghcb-unregistered")
    with pytest.raises(kb.UnknownGeneration, match="unknown kernel behaviour '6.12'"):
        kb.rule("6.12", "pages-identical")
    with pytest.raises(kb.UnknownGeneration, match="no row for 'report-request'"):
        kb.rule("6.11-stub", "report-request")


@pytest.mark.parametrize("release,attr,want", [
    ((6, 8), None, None), ((6, 11), None, "6.11-stub"), ((6, 19), 0, "6.11-stub"),
    ((7, 0), 1, "7.0"), ((7, 1), 1, "newest"), ((7, 3), None, "newest"), ((7, 0), None, "7.0"),
    (None, 1, "7.0")])
def test_detect_generation(release, attr, want):
    assert kb.detect_generation(release, attr) == want


def test_host_detection_facts():
    d = detect("7.1.0-rc2", req_certs_attr=1, probe=False)
    assert d["kernel_behaviour"] == "newest" and "7.1.0-rc2" in d["kernel_behaviour_basis"]
    assert detect("6.12.5", probe=False)["kernel_behaviour"] == "6.11-stub"


def test_profile_and_generation_must_agree(tmp_path: Path):
    with pytest.raises(ScenarioError, match="kernel behaviour 6.11-stub cannot play ABI profile req-certs"):
        Scenario.single("req-certs", "milan", Step.ext(1), kernel="6.11-stub")
    with pytest.raises(ScenarioError, match="kernel behaviour"):
        Scenario.single("stub", "milan", Step.ext(1), kernel="6.12")
    with pytest.raises(ValueError, match="cannot play ABI profile vmgexit-v15"):
        RefHost(tmp_path, abi="vmgexit-v15", kernel="7.0")
    assert RefHost(tmp_path, abi="stub", kernel="7.0").kvm.generation == "7.0"
    sc = Scenario.single("stub", "milan", Step.ext(1), kernel="7.0")
    assert Scenario.from_json(sc.to_json()) == sc


def test_cli_lists_every_row(capsys):
    assert cli.main(["kernels", "--json", "--no-detect"]) == 0
    doc = json.loads(capsys.readouterr().out)
    gens = {g["generation"]: g for g in doc["generations"]}
    assert list(gens) == list(kb.GENERATIONS)
    for name, g in gens.items():
        assert {r["shape"] for r in g["rows"]} == set(kb.REGISTRY[name])
        assert all(r["source"] for r in g["rows"])
    assert gens["v15"]["profiles"] == ["vmgexit-v15"]
    assert cli.main(["kernels", "--generation", "newest", "--no-detect"]) == 0
    text = capsys.readouterr().out
    assert "pages-identical" in text and "[NEW] sev_handle_vmgexit" in text and "v15:" not in text
    assert cli.main(["kernels", "--generation", "6.12"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown kernel behaviour '6.12'" in err


# ---- both the emulated KVM and the checks read the registry -------------------------------------


@pytest.fixture(scope="module")
def platform(emulated_platform_factory):
    yield from emulated_platform_factory()


def test_changed_row_is_played_and_judged(platform, monkeypatch):
    """Change two rows of the newest generation; the emulated KVM answers what the changed rows
    say and snplab.checks expects exactly that (and rejects the old answer), without a line of
    either changed: a new kernel generation is one row."""
    rows = kb.REGISTRY["newest"]
    need = pages_for(len(platform.cert_blob("milan", "vcek")))
    misaligned = Scenario.single("req-certs", "milan", Step.ext(need, pages="misaligned_req"),
                                 Step.ext(need))
    replay = Scenario.single("req-certs", "milan", Step.ext(need), Step.ext(need, seqno=1),
                             Step.ext(need))

    before = platform.run(misaligned)
    assert before.attempts(0, 0)[0].sw_exitinfo2 == G.GHCB_ERR_INVALID_INPUT
    assert checks.expect_kernel_answer(before, 0, 0).ok is True

    # a kernel answering misaligned pages with MISSING_INPUT, and firmware errors with GENERIC
    monkeypatch.setitem(rows, "pages-misaligned",
                        replace(rows["pages-misaligned"], reason=G.GHCB_ERR_MISSING_INPUT))
    monkeypatch.setitem(rows, "firmware-error",
                        replace(rows["firmware-error"], vmm_error=G.SNP_GUEST_VMM_ERR_GENERIC))
    t = platform.run(misaligned)
    a = t.attempts(0, 0)[0]
    assert (a.sw_exitinfo1, a.sw_exitinfo2) == (G.GHCB_HV_RESP_MALFORMED_INPUT, G.GHCB_ERR_MISSING_INPUT)
    assert checks.expect_kernel_answer(t, 0, 0).ok is True
    assert checks.expect_kernel_answer(before, 0, 0).ok is False, "the old answer no longer passes"
    checks.assert_invariants(t)

    t = platform.run(replay)
    a = t.attempts(0, 1)[0]
    assert a.vmm_error == G.SNP_GUEST_VMM_ERR_GENERIC and a.fw_status != 0, hex(a.sw_exitinfo2)
    assert checks.expect_firmware_rejected(t, 0, 1).ok is True
    checks.assert_invariants(t)  # firmware_error_no_seqno / host_error_no_seqno judge by the row
    checks.assert_success(t, 0, 2)

    monkeypatch.undo()
    assert checks.expect_firmware_rejected(t, 0, 1).ok is False
    assert not checks.host_error_no_seqno(t), "under the real row GENERIC|status is a host error"

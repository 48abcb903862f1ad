"""The PVALIDATE range doorbell (snplab_abi.h ``snplab_pvalidate_range``): the emulated platform's
stand-in for the guest's loop of 4K PVALIDATE instructions, which the payload uses to rescind the
shared window in one exit pair per range instead of one pair per page (issue 14 item 2).

What must hold: the range gives exactly the RMP updates and the first failure of the single
PVALIDATEs it stands for (property test against ``Rmp.pvalidate``); the guest reports the failing
page as it would with single PVALIDATEs; and the payload's set-up exits do not grow with the size
of the shared window (a count of exits, not a timing). Emulated results, not hardware results."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from emu_refguest import PAGE, RAM, RefGuest, RefHost
from hypothesis import given, settings
from hypothesis import strategies as st

from snplab.abi import ghcb as G
from snplab.emu import ghcb as emu_ghcb
from snplab.emu.rmp import Rmp
from snplab.platform import default_payload_path
from snplab.scenario import Scenario, Step
from snplab.vmm import memory_map as mm
from snplab.vmm.dwarf import DwarfInfo

NPAGES = 48
STATES = ("validated", "private", "shared")


def _rmp(states: list[str]) -> Rmp:
    rmp = Rmp(len(states) * PAGE)
    for i, s in enumerate(states):
        if s == "validated":
            rmp.launch(i * PAGE, 1)
        elif s == "shared":
            rmp.set_shared(i * PAGE, 1)
    return rmp


def _snapshot(rmp: Rmp) -> list[tuple[bool, bool]]:
    return [(rmp.is_private(i * PAGE), rmp.is_validated(i * PAGE)) for i in range(rmp.npages)]


@settings(max_examples=300, deadline=None)
@given(states=st.lists(st.sampled_from(STATES), min_size=NPAGES, max_size=NPAGES),
       first=st.integers(0, NPAGES + 2), npages=st.integers(1, 60), validate=st.booleans())
def test_run_is_the_single_pvalidates_it_stands_for(states: list[str], first: int, npages: int,
                                                    validate: bool) -> None:
    """Same RMP afterwards and the same first failure as the guest's loop of single PVALIDATEs
    (which stops at the first rc != 0), also for ranges running off the end of RAM."""
    batched, single = _rmp(states), _rmp(states)
    got = batched.pvalidate_run(first * PAGE, npages, validate)
    want = None
    for i in range(npages):
        rc, cf = single.pvalidate((first + i) * PAGE, False, validate)
        if rc:
            want = (i, rc, cf)
            break
    assert got == want
    assert _snapshot(batched) == _snapshot(single)


def test_range_doorbell_reports_the_first_failing_page(tmp_path: Path) -> None:
    host = RefHost(tmp_path)
    g = RefGuest(host)
    base = 0x500000
    host.rmp.launch(base, 8)
    host.rmp.set_shared(base + 5 * PAGE, 1)
    assert g.pvalidate_range(base, 8, False) == (5, G.PVALIDATE_FAIL_INPUT, False)
    assert [host.rmp.is_validated(base + i * PAGE) for i in range(8)] == [False] * 5 + [False] + [True] * 2
    assert host.kvm.stats["pvalidate"] == 6 and host.kvm.stats["pvalidate_range"] == 1
    # rc 0 everywhere (CF on the pages already rescinded) -> 0; the rest get rescinded
    assert g.pvalidate_range(base + 6 * PAGE, 2, False) is None
    assert g.pvalidate_range(base, 5, False) is None  # all CF: still success
    assert not host.rmp.is_validated(base + 7 * PAGE)
    # validate a range, then the same again: CF on every page, still None
    assert g.pvalidate_range(base, 5, True) is None
    assert all(host.rmp.is_validated(base + i * PAGE) for i in range(5))
    # off the end of RAM: the first page outside fails with FAIL_INPUT at its index
    assert g.pvalidate_range(RAM - 2 * PAGE, 4, False) == (2, G.PVALIDATE_FAIL_INPUT, False)
    # the largest count the argument can carry
    host.rmp.launch(0x400000, emu_ghcb.PVAL_RANGE_MAX_PAGES)
    assert g.pvalidate_range(0x400000, emu_ghcb.PVAL_RANGE_MAX_PAGES, False) is None
    assert not any(host.rmp.is_validated(0x400000 + i * PAGE)
                   for i in range(emu_ghcb.PVAL_RANGE_MAX_PAGES))


def test_range_doorbell_constants_are_the_payloads() -> None:
    """The emulated KVM's port and argument layout are the ones snplab_abi.h declares."""
    path = default_payload_path()
    dw = DwarfInfo(path, path.read_bytes())
    assert dw.constant("SNPLAB_PVALIDATE_RANGE_PORT") == emu_ghcb.PVALIDATE_RANGE_PORT
    assert dw.constant("SNPLAB_PVALIDATE_PORT") == emu_ghcb.PVALIDATE_PORT
    assert dw.constant("SNPLAB_DOORBELL_PORT") == emu_ghcb.DOORBELL_PORT
    assert dw.enum("snplab_pvalidate_range") == {
        "SNPLAB_PVAL_RANGE_VALIDATE": emu_ghcb.PVAL_RANGE_VALIDATE,
        "SNPLAB_PVAL_RANGE_COUNT_SHIFT": emu_ghcb.PVAL_RANGE_COUNT_SHIFT,
        "SNPLAB_PVAL_RANGE_MAX_PAGES": emu_ghcb.PVAL_RANGE_MAX_PAGES,
        "SNPLAB_PVAL_RANGE_INDEX_SHIFT": emu_ghcb.PVAL_RANGE_INDEX_SHIFT}


# ---- the payload on the emulated platform (local /dev/kvm) -------------------------------------

@pytest.fixture(scope="module")
def platform(emulated_platform_factory):
    yield from emulated_platform_factory()


def _run_capturing_backend(platform, monkeypatch: pytest.MonkeyPatch, sc: Scenario, tweak=None):
    """Run ``sc``; returns (transcript, the emulated backend it ran on). ``tweak(backend)`` runs
    right after the backend built its emulated VM (before launch)."""
    backends = []
    make = type(platform).make_backend

    def make_backend(self, scenario):
        b = make(self, scenario)
        if tweak is not None:
            setup_vm = b.setup_vm

            def setup_then_tweak(guest):
                setup_vm(guest)
                tweak(b)
            b.setup_vm = setup_then_tweak
        backends.append(b)
        return b

    monkeypatch.setattr(type(platform), "make_backend", make_backend)
    t = platform.run(sc)
    monkeypatch.undo()
    return t, backends[-1]


SETUP_ONLY = Scenario(name="setup-only", steps=((Step.terminate(0),),))


def _setup_exits(platform, monkeypatch: pytest.MonkeyPatch, window_pages: int) -> int:
    monkeypatch.setattr(mm, "CERTS_MAX_PAGES", window_pages)
    t, backend = _run_capturing_backend(platform, monkeypatch, SETUP_ONLY)
    assert t.status == "ok", t.error
    r = t.results["vcpu"][0]
    assert (r["started"], r["setup_error"]) == (1, 0)
    events = t.to_json()["events"]
    doorbells = Counter((e["port"], e["direction"]) for e in events if e["kind"] == "Doorbell")
    assert doorbells[(emu_ghcb.PVALIDATE_RANGE_PORT, "out")] == 5
    assert doorbells[(emu_ghcb.PVALIDATE_RANGE_PORT, "in")] == 5
    assert doorbells[(emu_ghcb.PVALIDATE_PORT, "out")] == 0
    path = default_payload_path()
    results_pages = -(-DwarfInfo(path, path.read_bytes()).layout("snplab_results").size // PAGE)
    window = 1 + results_pages + 1 + 1 + window_pages  # GHCB, results, request, response, certs
    assert backend.kvm.stats["pvalidate"] == window  # every page still gets its PVALIDATE
    assert backend.kvm.stats["pvalidate_range"] == 5
    for page in range(window_pages):
        assert not backend.rmp.is_private(mm.certs_gpa(0) + page * PAGE)
    # exits of the vCPU: nested events (MapGpaRange raised by the emulated KVM) are not exits
    return sum(1 for e in events if e["kind"] in ("MsrRead", "MsrWrite", "Doorbell"))


@pytest.mark.kvm
def test_setup_exits_do_not_grow_with_the_window(platform, monkeypatch: pytest.MonkeyPatch) -> None:
    """A guest that only sets up and terminates makes the same number of exits whatever the size
    of its certificate area (1, 16, 128 pages) — at most 50 — with five PVALIDATE range doorbells
    (GHCB page, results area, request, response, certificates), while every page of the window
    is still rescinded (the emulated KVM counts single PVALIDATEs) and converted."""
    exits = {n: _setup_exits(platform, monkeypatch, n) for n in (1, 16, 128)}
    assert len(set(exits.values())) == 1, exits
    assert exits[128] <= 50, exits


@pytest.mark.kvm
def test_payload_reports_the_first_page_that_fails_to_rescind(platform,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Page 5 of the certificate area is already shared when the guest rescinds the area: the
    guest records SETUP_PVALIDATE with that page's GPA | FAIL_INPUT, as a loop of single PVALIDATEs
    would; the pages before it are rescinded, the pages after it untouched."""
    certs = mm.certs_gpa(0)
    bad = certs + 5 * PAGE

    def tweak(b) -> None:
        b.rmp.launch(certs, mm.CERTS_MAX_PAGES)  # validated, so that rescinding changes them
        b.rmp.set_shared(bad, 1)

    t, backend = _run_capturing_backend(platform, monkeypatch, SETUP_ONLY, tweak)
    assert t.status == "ok", t.error
    path = default_payload_path()
    dw = DwarfInfo(path, path.read_bytes())
    r = t.results["vcpu"][0]
    assert r["setup_error"] == dw.constant("SNPLAB_SETUP_PVALIDATE")
    assert r["setup_detail"] == bad | G.PVALIDATE_FAIL_INPUT
    rmp = backend.rmp
    assert [rmp.is_validated(certs + i * PAGE) for i in range(5)] == [False] * 5
    assert all(rmp.is_validated(certs + i * PAGE) for i in range(6, mm.CERTS_MAX_PAGES))

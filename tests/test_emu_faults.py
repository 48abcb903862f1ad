"""Fault injection at the unit level: the original KVM/firmware faults make a reference-guest check
fail, and the same check passes on the fault-free platform.  The whole catalog (every layer) is
measured against the suite by ``snplab mutate`` (``make mutate``)."""

from __future__ import annotations

from pathlib import Path

import emu_refguest as R
import pytest

from snplab.emu.faults import FAULTS, FaultSet
from snplab.emu.platform import EmulatedBackend

# fault → (check, extra arguments)
CAUGHT_BY: dict[str, tuple[str, dict]] = {
    "rbx-unchanged-on-invalid-len": ("invalid_len", {}),
    "firmware-called-before-busy": ("busy_then_success", {}),
    "certs-written-on-enospc": ("invalid_len", {}),
    "seqno-not-checked": ("replayed_seqno", {}),
    "counter-advances-on-error": ("replayed_seqno", {}),
    "response-seqno-unchanged": ("response_seqno", {}),
    "invalid-len-in-low-bits": ("invalid_len", {}),
    "generic-as-bit31": ("generic", {}),
    "invalid-ret-as-generic": ("invalid_ret", {}),
    "stub-no-terminator": ("stub_empty_table", {}),
    "certs-exit-any-msg-type": ("non_report_no_exit", {}),
    "late-enable-req-certs": ("late_enable", {}),
}
V15 = ("rbx-unchanged-on-invalid-len", "firmware-called-before-busy", "certs-written-on-enospc",
       "invalid-len-in-low-bits")


def test_every_check_names_a_registered_fault() -> None:
    assert set(CAUGHT_BY) <= set(FAULTS)
    assert all(check in R.CHECKS for check, _ in CAUGHT_BY.values())


@pytest.mark.parametrize("fault", sorted(CAUGHT_BY))
def test_fault_is_caught(tmp_path: Path, fault: str) -> None:
    check, kw = CAUGHT_BY[fault]
    fn = R.CHECKS[check]
    assert fn(tmp_path / "clean", **kw) == [], f"{check} fails without any fault"
    problems = fn(tmp_path / "faulty", faults=(fault,), **kw)
    assert problems, f"{check} did not notice {fault}"


@pytest.mark.parametrize("fault", V15)
def test_fault_is_caught_on_v15(tmp_path: Path, fault: str) -> None:
    check, kw = CAUGHT_BY[fault]
    assert R.CHECKS[check](tmp_path, faults=(fault,), abi="vmgexit-v15", **kw)


def test_unknown_fault_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FaultSet(["rbx-unchanged-on-invalid-len", "no-such-fault"])
    with pytest.raises(ValueError):
        EmulatedBackend(faults=("typo",))
    assert FAULTS["seqno-not-checked"].layer == "firmware"

"""Sensitivity of the suite: every fault the emulated platform can inject (snplab.emu.faults)
makes at least one suite test fail with a message naming the property the fault violates, and
the same selection of suite tests passes on the correct platform.

Each case runs pytest on a few suite tests in a subprocess (``--fault NAME``), then reads the
per-test JSON reports the plugin wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snplab.platform import kvm_problem

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.kvm, pytest.mark.slow]

# fault → (suite file, -k expression, ABI profile, the property a failure must name)
SELECTION: dict[str, tuple[str, str, str, frozenset[str]]] = {
    "rbx-unchanged-on-invalid-len": ("test_invalid_len.py", "encoding_and_rbx or zero_pages",
                                     "req-certs", frozenset({"invalid_len_rbx"})),
    "firmware-called-before-busy": ("test_busy.py", "busy_then_success", "req-certs",
                                    frozenset({"host_error_no_seqno"})),
    "certs-written-on-enospc": ("test_invalid_len.py", "nothing_written", "req-certs",
                                frozenset({"invalid_len_no_write"})),
    "seqno-not-checked": ("test_errors.py", "wrong_seqno_rejected", "req-certs",
                          frozenset({"seqno_replay_rejected"})),
    "counter-advances-on-error": ("test_errors.py", "wrong_seqno_rejected", "req-certs",
                                  frozenset({"firmware_error_no_seqno"})),
    "response-seqno-unchanged": ("test_sizes.py", "buffer_size and need", "req-certs",
                                 frozenset({"seqno_advance"})),
    "invalid-len-in-low-bits": ("test_invalid_len.py", "encoding_and_rbx", "req-certs",
                                frozenset({"invalid_len_encoding"})),
    "generic-as-bit31": ("test_errors.py", "eio_is_generic", "req-certs",
                         frozenset({"vmm_error_encoding"})),
    "invalid-ret-as-generic": ("test_errors.py", "invalid_ret", "req-certs",
                               frozenset({"kvm_run_einval"})),
    "stub-no-terminator": ("test_stub.py", "empty_table", "stub",
                           frozenset({"stub_empty_table"})),
    "certs-exit-any-msg-type": ("test_certs.py", "non_report_message", "req-certs",
                                frozenset({"cert_exit_per_request"})),
    "late-enable-req-certs": ("test_errors.py", "enable_req_certs_after_vcpu", "req-certs",
                              frozenset({"enable_req_certs_einval"})),
}


# Faults the suite cannot see yet, with the reason; strict: once caught, the mark must go.
NOT_YET_CAUGHT: dict[str, str] = {}


def _fault_params() -> list:
    return [pytest.param(f, marks=pytest.mark.xfail(strict=True, reason=NOT_YET_CAUGHT[f]))
            if f in NOT_YET_CAUGHT else f for f in sorted(SELECTION)]


def _faults() -> dict:
    try:
        from snplab.emu.faults import FAULTS
    except ImportError:
        return {}
    return FAULTS


def _kvm_usable() -> bool:
    return kvm_problem() is None


def run_suite(tmp_path: Path, file: str, expr: str, abi: str, faults: tuple[str, ...] = ()
              ) -> list[dict]:
    """Run the selected suite tests for Milan; return their per-test JSON records."""
    reports = tmp_path / "reports"
    cmd = [sys.executable, "-m", "pytest", f"suites/{file}", "-k", expr, "--abi", abi,
           "--product", "milan", "--reports", str(reports), "-q", "-p", "no:cacheprovider",
           "-p", "no:randomly", "-o", "addopts=", "--no-header", "-rN"]
    for f in faults:
        cmd += ["--fault", f]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    runs = list(reports.iterdir()) if reports.is_dir() else []
    if len(runs) != 1:
        pytest.fail(f"no report written (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")
    records = [json.loads(p.read_text()) for p in (runs[0] / "tests").glob("*.json")]
    ran = [r for r in records if r["outcome"] != "skipped"]
    if not ran:
        pytest.fail(f"selection {file} -k {expr!r} --abi {abi} ran no test:\n{proc.stdout[-3000:]}")
    return records


def _kvm_skip() -> None:
    if not _kvm_usable():
        pytest.skip("/dev/kvm unusable")


@pytest.mark.parametrize("fault", _fault_params())
def test_fault_is_caught(tmp_path: Path, fault: str):
    """With ``fault`` injected, ≥ 1 selected suite test fails naming the violated property."""
    _kvm_skip()
    faults = _faults()
    if fault not in faults:
        pytest.skip(f"fault {fault} not in snplab.emu.faults")
    file, expr, abi, props = SELECTION[fault]
    records = run_suite(tmp_path, file, expr, abi, (fault,))
    failed = [r for r in records if r["outcome"] in ("failed", "error")]
    named = [r for r in failed if r.get("failed_property") in props
             or any(p in (r.get("message") or "") for p in props)]
    summary = "\n".join(f"  {r['outcome']:7} {r['nodeid']}: {r.get('failed_property')} "
                        f"{(r.get('message') or '')[:300]}" for r in records)
    assert named, f"fault {fault} not caught as {sorted(props)}:\n{summary}"


def test_every_fault_has_a_selection():
    """A new fault in the registry needs a suite selection here (and a test that catches it)."""
    missing = sorted(set(_faults()) - set(SELECTION))
    assert not missing, f"faults without a sensitivity selection: {missing}"


@pytest.mark.parametrize("file,expr,abi", sorted({(f, e, a) for f, e, a, _ in SELECTION.values()}))
def test_selection_passes_without_faults(tmp_path: Path, file: str, expr: str, abi: str):
    """The control: the same suite tests pass on the correct emulated platform."""
    _kvm_skip()
    if not _faults():
        pytest.skip("snplab.emu.faults not available")
    records = run_suite(tmp_path, file, expr, abi)
    bad = [f"{r['nodeid']}: {r.get('message')}" for r in records
           if r["outcome"] in ("failed", "error")]
    assert not bad, "\n".join(bad)

"""No litter (issue 14 item 4): what the suite, the platforms and the tests create as scratch goes
under the run's directory or pytest's tmp_path and is removed; nothing named ``snplab-*`` stays in
the system temp dir.

The system temp dir is redirected to a fresh directory for each check (``TMPDIR`` for a
subprocess, ``tempfile.tempdir`` in-process): this machine's real /tmp is shared with other
processes creating and removing ``snplab-*`` entries of their own, so a before/after listing of it
could not tell whose an entry is."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snplab.scenario import Scenario, Step

ROOT = Path(__file__).resolve().parent.parent
# Runs guests one at a time and two at once, asks for trust anchors and certificate blobs.
SUITE_SUBSET = ["suites/test_signature.py::test_report_verifies_with_returned_vek",
                "suites/test_concurrency.py::test_two_guests_at_once"]


def _litter(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("snplab-"))


@pytest.fixture
def platform_factory():
    from snplab.platform import PlatformUnavailable, get_platform

    def make(**opts):
        try:
            return get_platform("emulated", **opts)
        except PlatformUnavailable as e:
            pytest.skip(str(e))

    return make


@pytest.mark.kvm
def test_suite_run_leaves_nothing_in_the_temp_dir(tmp_path: Path) -> None:
    """A small suite run (two xdist workers) in a subprocess whose TMPDIR is a fresh directory:
    afterwards that directory holds no ``snplab-*`` entry, and the run's directory holds its
    reports but no scratch directory."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    reports = tmp_path / "reports"
    env = {**os.environ, "TMPDIR": str(systmp)}
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *SUITE_SUBSET, "-q", "-n", "2", "-p", "no:randomly",
         "-p", "no:cacheprovider", "--reports", str(reports), "-k", "milan"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    (run_dir,) = [p for p in reports.iterdir() if p.is_dir()]
    recs = [json.loads(p.read_text()) for p in (run_dir / "tests").glob("*.json")]
    assert sum(len(r.get("runs", ())) for r in recs) >= 3, "the subset ran no guests"
    assert _litter(systmp) == []
    assert _litter(run_dir) == [], "scratch left in the run's directory"


@pytest.mark.kvm
def test_platform_scratch_is_removed_by_close(platform_factory, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, the suite's use of a platform (runs, two guests at once, trust anchors,
    certificate blobs), with the system temp dir as the code sees it redirected: the scratch
    directory exists while the platform runs guests and is gone after close()."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    p = platform_factory()
    sc = Scenario(name="litter", steps=((Step(op="ext_req", certs_npages=16),),))
    assert p.run(sc).status == "ok"
    assert [t.status for t in p.run_many([sc, sc])] == ["ok", "ok"]
    p.trust("milan")
    p.cert_blob("genoa", "vcek")
    assert [n.startswith("snplab-blobs-") for n in _litter(systmp)] == [True]  # could fail
    p.close()
    assert _litter(systmp) == []
    assert p.run(sc).status == "ok"  # usable after close: a new scratch dir, removed again
    p.close()
    assert _litter(systmp) == []


@pytest.mark.kvm
def test_platform_never_closed_cleans_up_when_collected(platform_factory, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    p = platform_factory()
    assert p.run(Scenario(name="litter", steps=((Step(op="ext_req"),),))).status == "ok"
    assert len(_litter(systmp)) == 1
    del p
    gc.collect()
    assert _litter(systmp) == []


@pytest.mark.kvm
def test_platform_with_a_work_dir_keeps_the_system_temp_dir_clean(
        platform_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite gives its platform the run's directory (``work_dir``): scratch goes there."""
    systmp = tmp_path / "systmp"
    systmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systmp))
    run_dir = tmp_path / "run"
    p = platform_factory(work_dir=run_dir)
    assert p.run(Scenario(name="litter", steps=((Step(op="ext_req"),),))).status == "ok"
    assert len(_litter(run_dir)) == 1 and _litter(systmp) == []
    p.close()
    assert _litter(run_dir) == [] and _litter(systmp) == []


def test_emulated_backend_trust_dir_needs_a_directory(tmp_path: Path) -> None:
    """The emulated backend writes its trust anchors where it is told, never into a temp dir of
    its own (which nothing removed)."""
    from snplab.emu.platform import EmulatedBackend

    b = EmulatedBackend("milan")
    with pytest.raises(TypeError):
        b.trust_dir()  # type: ignore[call-arg]
    d = b.trust_dir(tmp_path / "trust")
    assert sorted(p.name for p in d.iterdir()) == ["milan_ark.pem", "milan_ask.pem", "milan_asvk.pem"]

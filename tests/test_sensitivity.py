"""Sensitivity of the suite, the fast part: every fault of the catalog (snplab.emu.faults) is
well formed and wired to the code it perturbs, names properties the oracles can report, and a
small sample is killed by the suite through ``snplab mutate`` (JSON, HTML, exit code).  The whole
catalog runs in ``make mutate``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snplab import checks
from snplab.abi import kernel_behaviour  # noqa: F401 - the registry the KVM faults perturb
from snplab.emu.faults import FAULTS, GUEST_FAULT_BITS, LAYERS
from snplab.mutate.matrix import SCHEMA_ID, validate
from snplab.platform import kvm_problem

ROOT = Path(__file__).resolve().parent.parent

# Where a fault of each layer is checked (its name must appear at a decision point there).
LAYER_SOURCES = {
    "kvm": ["snplab/emu/ghcb.py"],
    "firmware": ["snplab/emu/psp.py"],
    "vmm": ["snplab/vmm/certs.py"],
    "guest": ["guest-payloads/src/steps.c"],
}


def _source(layer: str) -> str:
    return "\n".join((ROOT / p).read_text() for p in LAYER_SOURCES[layer])


def _properties() -> set[str]:
    """Every property name an oracle, an expectation or a suite test can report."""
    names = set(checks.VERIFIER_PROPERTIES.values())
    text = (ROOT / "snplab/checks.py").read_text()
    names |= set(re.findall(r'name(?:: str)? = "([a-z_]+)"', text))
    names |= set(re.findall(r'"([a-z]+_[a-z_]+)"', text))  # mapped names (e.g. decrypt results)
    for p in (ROOT / "suites").glob("test_*.py"):
        names |= set(re.findall(r'name="([a-z_]+)"', p.read_text()))
    return names


def test_catalog_size_and_fields():
    assert len(FAULTS) >= 35
    for f in FAULTS.values():
        assert f.layer in LAYERS, f.name
        assert f.profiles and set(f.profiles) <= {"stub", "req-certs", "vmgexit-v15"}, f.name
        assert f.description and f.source and f.breaks, f.name


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_wired_at_its_layer(name: str):
    """The fault is checked in its layer's code (a guest fault through its enum bit)."""
    f = FAULTS[name]
    needle = GUEST_FAULT_BITS[name] if f.layer == "guest" else f'"{name}"'
    assert needle in _source(f.layer), f"{name} ({f.layer}) is not checked in {LAYER_SOURCES[f.layer]}"


def test_guest_fault_bits_are_in_the_abi_header():
    header = (ROOT / "guest-payloads/include/snplab_abi.h").read_text()
    assert set(GUEST_FAULT_BITS) == {n for n, f in FAULTS.items() if f.layer == "guest"}
    for bit in GUEST_FAULT_BITS.values():
        assert bit in header


def test_breaks_are_reportable_properties():
    """A fault's ``breaks`` are properties some check can name (else it could never be killed
    specifically)."""
    known = _properties()
    unknown = {n: [p for p in f.breaks if p not in known] for n, f in FAULTS.items()}
    assert not {n: p for n, p in unknown.items() if p}, unknown


SAMPLE = ("replayed-seqno-accepted", "vmm-npages-floor", "guest-no-busy-retry")


@pytest.mark.kvm
@pytest.mark.slow
def test_mutate_kills_a_sample(tmp_path: Path):
    """``snplab mutate`` on three faults (firmware, VMM, guest): each killed naming its property,
    mutate.json validates against its schema, mutate.html is self-contained, exit 0."""
    if kvm_problem() is not None:
        pytest.skip("/dev/kvm unusable")
    proc = subprocess.run([sys.executable, "-m", "snplab.cli", "mutate", *SAMPLE, "--reports",
                           str(tmp_path), "--run-id", "sample", "-j", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((tmp_path / "sample" / "mutate.json").read_text())
    validate(doc)
    assert doc["schema"] == SCHEMA_ID
    assert doc["summary"]["faults"] == 3 and doc["summary"]["killed"] == 3, doc["summary"]
    assert doc["control"]["failed"] == [], doc["control"]
    for f in doc["faults"]:
        assert f["status"] == "killed" and f["specific_kills"] >= 1, f
        assert any(k["property"] in f["breaks"] for k in f["kills"])
    assert "3 faults, 3 killed" in proc.stdout
    html = (tmp_path / "sample" / "mutate.html").read_text()
    assert "<script" not in html and not re.search(r"(src|href)=[\"']?https?:", html)
    for name in SAMPLE:
        assert name in html

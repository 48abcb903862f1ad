"""Run reports: ``reports/<run-id>/`` with JUnit XML, one JSON per test, artifacts, a summary.

Layout (DESIGN.md "Reports")::

    reports/<run-id>/junit.xml            pytest's JUnit XML (written by the controller)
    reports/<run-id>/tests/<test>.json    one per suite test: scenario(s), transcript(s),
                                          verdicts, outcome, failed property, host facts
    reports/<run-id>/artifacts/<test>/    on failure (or --keep-artifacts): transcript, report
                                          and certificate bytes per step, guest log
    reports/<run-id>/summary.json         per-family counts (written by the controller)

Every file is written by the process that ran the test (xdist-safe: one file per test, no
shared file); only the controller writes ``summary.json``.  ``compare_runs`` diffs two runs
(base kernel vs patched kernel) test by test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

REPORT_SCHEMA = 1
_SAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")


def new_run_id() -> str:
    """A run id that sorts by time and is unique per controller process."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


def safe_name(nodeid: str) -> str:
    """A file name for a test id ("suites/test_sizes.py::test_x[a-b]" → "sizes.test_x[a-b]")."""
    path, _, rest = nodeid.partition("::")
    stem = Path(path).stem
    if stem.startswith("test_"):
        stem = stem[5:]
    name = f"{stem}.{rest}".replace("::", ".")
    name = name.replace("[", "(").replace("]", ")")
    return _SAFE.sub("_", name)[:200]


def family_of(nodeid: str) -> str | None:
    """The behaviour family of a suite test: its module name without ``test_`` (None outside
    ``suites/``)."""
    path = nodeid.partition("::")[0].replace(os.sep, "/")
    parts = path.split("/")
    if "suites" not in parts[:-1]:
        return None
    stem = Path(parts[-1]).stem
    return stem[5:] if stem.startswith("test_") else stem


@dataclass
class RunPaths:
    root: Path

    @property
    def tests(self) -> Path:
        return self.root / "tests"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def junit(self) -> Path:
        return self.root / "junit.xml"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def test_json(self, nodeid: str) -> Path:
        return self.tests / f"{safe_name(nodeid)}.json"

    def artifact_dir(self, nodeid: str) -> Path:
        return self.artifacts / safe_name(nodeid)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# Exit events too frequent to keep per passing test (page validation doorbells): counted instead.
ELIDED_EVENT_KINDS = ("Doorbell",)


def compact_transcript(t: Mapping[str, Any]) -> dict[str, Any]:
    """A passing test's transcript for its JSON report: doorbell events counted rather than
    listed and the trust roots named by hash (failing tests keep everything)."""
    import hashlib

    out = dict(t)
    events = list(t.get("events") or ())
    kept = [e for e in events if e.get("kind") not in ELIDED_EVENT_KINDS]
    if len(kept) != len(events):
        out["events"] = kept
        out["events_elided"] = dict(Counter(e.get("kind") for e in events
                                            if e.get("kind") in ELIDED_EVENT_KINDS))
    trust = t.get("trust") or {}
    if isinstance(trust.get("roots"), str):
        out["trust"] = {**trust, "roots": None,
                        "roots_sha256": hashlib.sha256(trust["roots"].encode()).hexdigest()}
    return out


def write_test_report(paths: RunPaths, record: Mapping[str, Any]) -> Path:
    """Write one test's JSON record; returns its path."""
    path = paths.test_json(str(record["nodeid"]))
    _atomic_write(path, json.dumps({"schema": REPORT_SCHEMA, **record}, indent=1, default=str))
    return path


def dump_artifacts(paths: RunPaths, nodeid: str, runs: Iterable[Mapping[str, Any]]) -> Path:
    """Write each run's transcript, and per step the report and certificate bytes, plus the
    guest logs, under ``artifacts/<test>/``."""
    d = paths.artifact_dir(nodeid)
    d.mkdir(parents=True, exist_ok=True)
    for k, run in enumerate(runs):
        t = run.get("transcript") or {}
        _atomic_write(d / f"run{k}.transcript.json", json.dumps(t, indent=1, default=str))
        for v, vc in enumerate((t.get("results") or {}).get("vcpu", ()) or ()):
            store = bytes.fromhex(vc.get("cert_store") or "")
            if vc.get("log"):
                (d / f"run{k}.vcpu{v}.log").write_text(str(vc["log"]))
            for i, s in enumerate(vc.get("steps", ()) or ()):
                rep = bytes.fromhex(s.get("report") or "")
                if any(rep):
                    (d / f"run{k}.vcpu{v}.step{i}.report.bin").write_bytes(rep)
                off, ln = int(s.get("certs_store_off", 0)), int(s.get("certs_len", 0))
                if ln:
                    (d / f"run{k}.vcpu{v}.step{i}.certs.bin").write_bytes(store[off:off + ln])
    return d


_KB_FACTS: dict[str, dict[str, Any]] = {}


def _kernel_behaviour_facts(release: str) -> dict[str, Any]:
    """The kernel generation this machine's kernel is detected as (release + the
    KVM_X86_SEV_SNP_REQ_CERTS attribute; snplab.host.kernel_generation), probed once."""
    if release not in _KB_FACTS:
        from snplab.host.kernel_generation import host_facts as kernel_behaviour_facts

        _KB_FACTS[release] = kernel_behaviour_facts(release)
    return dict(_KB_FACTS[release])


def host_facts() -> dict[str, Any]:
    """Facts about the machine running the tests (kernel, host name, CPU)."""
    u = os.uname()
    facts: dict[str, Any] = {"hostname": socket.gethostname(), "kernel": u.release,
                             "machine": u.machine, **_kernel_behaviour_facts(u.release)}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts


@dataclass
class FamilyTally:
    """Per-family outcome counts, accumulated from test reports by the controller."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    failed_properties: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, nodeid: str, outcome: str, duration: float, prop: str | None = None) -> None:
        fam = family_of(nodeid)
        if fam is None:
            return
        self.counts[fam][outcome] += 1
        self.seconds[fam] += duration
        if prop:
            self.failed_properties[fam][prop] += 1

    def lines(self, platform: str) -> list[str]:
        out = []
        width = max((len(f) for f in self.counts), default=0)
        for fam in sorted(self.counts):
            c = self.counts[fam]
            props = self.failed_properties.get(fam)
            why = (" — violated: " + ", ".join(f"{p}×{n}" for p, n in props.most_common())
                   if props else "")
            out.append(f"snplab[{platform}] {fam:<{width}}  {c['passed']:3d} passed "
                       f"{c['failed']:3d} failed {c['skipped']:3d} skipped "
                       f"({self.seconds[fam]:.1f} s){why}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {fam: {**dict(self.counts[fam]), "seconds": round(self.seconds[fam], 3),
                      "failed_properties": dict(self.failed_properties.get(fam, {}))}
                for fam in sorted(self.counts)}


def write_summary(paths: RunPaths, run_id: str, platform: str, tally: FamilyTally,
                  extra: Mapping[str, Any] | None = None) -> Path:
    doc = {"schema": REPORT_SCHEMA, "run_id": run_id, "platform": platform,
           "families": tally.to_json(), "host": host_facts(), **(extra or {})}
    _atomic_write(paths.summary, json.dumps(doc, indent=1))
    return paths.summary


def load_test_reports(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """All per-test JSON records of a run, by test id."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(Path(run_dir, "tests").glob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        out[str(rec.get("nodeid", p.stem))] = rec
    return out


@dataclass(frozen=True)
class RunDiff:
    """Test-by-test difference between run A (e.g. base kernel) and run B (patched)."""

    changed: tuple[tuple[str, str, str], ...]  # (test, outcome in A, outcome in B)
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    same: int

    def lines(self) -> list[str]:
        out = [f"{len(self.changed)} changed, {self.same} unchanged, {len(self.only_a)} only in "
               f"A, {len(self.only_b)} only in B"]
        out += [f"  {a:>7} -> {b:<7} {t}" for t, a, b in self.changed]
        return out


def compare_runs(run_a: str | Path, run_b: str | Path) -> RunDiff:
    """Compare two report directories test by test."""
    a, b = load_test_reports(run_a), load_test_reports(run_b)
    changed = []
    same = 0
    for t in sorted(set(a) & set(b)):
        oa, ob = a[t].get("outcome"), b[t].get("outcome")
        if oa != ob:
            changed.append((t, str(oa), str(ob)))
        else:
            same += 1
    return RunDiff(tuple(changed), tuple(sorted(set(a) - set(b))), tuple(sorted(set(b) - set(a))),
                   same)

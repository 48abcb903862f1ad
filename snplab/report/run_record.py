"""One JSON record per suite case, ``reports/<run-id>/tests/<case>.json``, and its artifacts.

A record holds the case's scenario(s), transcript(s), verdicts, outcome, violated property and
host facts.  ``snplab mutate`` and ``snplab compare`` read these files: fields are only ever
added, never renamed or removed (``REPORT_SCHEMA`` counts incompatible changes, none so far).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from snplab.report.run_dir import RunPaths, atomic_write

REPORT_SCHEMA = 1


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
    atomic_write(path, json.dumps({"schema": REPORT_SCHEMA, **record}, indent=1, default=str))
    return path


def dump_artifacts(paths: RunPaths, nodeid: str, runs: Iterable[Mapping[str, Any]]) -> Path:
    """Write each run's transcript, and per step the report and certificate bytes, plus the
    guest logs, under ``artifacts/<test>/``."""
    d = paths.artifact_dir(nodeid)
    d.mkdir(parents=True, exist_ok=True)
    for k, run in enumerate(runs):
        t = run.get("transcript") or {}
        atomic_write(d / f"run{k}.transcript.json", json.dumps(t, indent=1, default=str))
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

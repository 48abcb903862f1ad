"""A run directory read back for the human and machine reports (index.html, TAP, KCIDB, compare).

``load_run(dir)`` reads ``summary.json`` (if the controller got to write it) and every per-case
record under ``tests/``; a run without a summary, or whose summary says so, is *incomplete*
(killed half-way): its finished cases are still all there.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from snplab.report.run_dir import RunPaths, safe_name
from snplab.report.run_record import load_test_reports
from snplab.scenario import ABIS, PRODUCTS

OUTCOMES = ("passed", "failed", "error", "skipped")
_DIMENSIONS = ("abi", "product")


@dataclass(frozen=True)
class CaseView:
    """One suite case of a run: its id split into family / case / ABI profile / product."""

    nodeid: str
    family: str
    name: str          # the test function plus parameters other than abi and product
    abi: str
    product: str
    outcome: str
    duration_s: float
    failed_property: str | None
    message: str | None
    record: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def safe(self) -> str:
        return safe_name(self.nodeid)

    @property
    def anchor(self) -> str:
        return "case-" + self.safe

    @property
    def json_href(self) -> str:
        return f"tests/{self.safe}.json"

    @property
    def bad(self) -> bool:
        return self.outcome in ("failed", "error")

    @property
    def runs(self) -> list[Mapping[str, Any]]:
        return list(self.record.get("runs") or [])

    @property
    def full(self) -> bool:
        """The record keeps every exit (failures and --keep-artifacts)."""
        return any("events_elided" not in (r.get("transcript") or {}) for r in self.runs)


def _split_name(nodeid: str, params: Mapping[str, Any]) -> tuple[str, str, str]:
    """(case name without abi/product, abi, product) of a test id."""
    func = nodeid.rpartition("::")[2].partition("[")[0]
    abi = str(params.get("abi", "-"))
    product = str(params.get("product", "-"))
    others = [str(v) for k, v in params.items() if k not in _DIMENSIONS]
    if not params and "[" in nodeid:  # no recorded params (a crashed case): read its id
        return _split_bracket_id(nodeid)
    return (f"{func}[{'-'.join(others)}]" if others else func), abi, product


def _split_bracket_id(nodeid: str) -> tuple[str, str, str]:
    """(name, abi, product) from ``test_x[<abi>-<product>-<rest>]`` (ids the plugin makes)."""
    func, _, ids = nodeid.rpartition("::")[2].partition("[")
    ids = ids.rstrip("]")
    abi = product = "-"
    for a in sorted(ABIS, key=len, reverse=True):
        if ids == a or ids.startswith(a + "-"):
            abi, ids = a, ids[len(a) + 1:]
            break
    for p in PRODUCTS:
        if ids == p or ids.startswith(p + "-"):
            product, ids = p, ids[len(p) + 1:]
            break
    return (f"{func}[{ids}]" if ids else func), abi, product


def case_of(rec: Mapping[str, Any]) -> CaseView:
    nodeid = str(rec.get("nodeid"))
    name, abi, product = _split_name(nodeid, rec.get("params") or {})
    return CaseView(nodeid=nodeid, family=str(rec.get("family") or "other"), name=name, abi=abi,
                    product=product, outcome=str(rec.get("outcome")),
                    duration_s=float(rec.get("duration_s") or 0.0),
                    failed_property=rec.get("failed_property"), message=rec.get("message"),
                    record=rec)


@dataclass(frozen=True)
class RunView:
    root: Path
    summary: Mapping[str, Any]
    cases: tuple[CaseView, ...]

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or self.root.name)

    @property
    def platform(self) -> str:
        return str(self.summary.get("platform")
                   or next((c.record.get("platform") for c in self.cases), None) or "unknown")

    @property
    def emulated(self) -> bool:
        return self.platform == "emulated" or any(
            (r.get("transcript") or {}).get("platform") == "emulated"
            for c in self.cases[:5] for r in c.runs)

    @property
    def faults(self) -> list[str]:
        f = self.summary.get("faults")
        if f is None:
            f = next((c.record.get("faults") for c in self.cases), None)
        return list(f or [])

    @property
    def complete(self) -> bool:
        return bool(self.summary) and not self.summary.get("incomplete", False)

    @property
    def incomplete_reason(self) -> str:
        if not self.summary:
            return "no summary.json: the controller did not finish (killed?)"
        return str(self.summary.get("incomplete_reason") or "")

    @property
    def host(self) -> dict[str, Any]:
        return dict(self.summary.get("host")
                    or next((c.record.get("host") for c in self.cases), None) or {})

    def counts(self) -> Counter:
        return Counter(c.outcome for c in self.cases)

    def families(self) -> list[str]:
        return sorted({c.family for c in self.cases})

    def of_family(self, fam: str) -> list[CaseView]:
        return [c for c in self.cases if c.family == fam]

    def by_nodeid(self) -> dict[str, CaseView]:
        return {c.nodeid: c for c in self.cases}

    def transcripts(self) -> Iterator[tuple[CaseView, Mapping[str, Any]]]:
        for c in self.cases:
            for r in c.runs:
                t = r.get("transcript")
                if isinstance(t, Mapping):
                    yield c, t

    def platform_facts(self) -> dict[str, list[str]]:
        """Facts the guests' platform reported (transcript ``host.backend``: TCB, kernel
        generation, ...), each with its distinct values over the run; keys shown as found."""
        skip = {"faults", "product", "signer", "abi", "chip_id", "platform"}
        out: dict[str, set[str]] = {}
        for _, t in self.transcripts():
            host = t.get("host") or {}
            facts = dict(host.get("backend") or {})
            facts.update({k: v for k, v in host.items()
                          if k not in ("backend", "responder", "platform_note")
                          and k not in self.host})
            for k, v in facts.items():
                if k in skip or v is None or isinstance(v, (dict, list)):
                    continue
                out.setdefault(k, set()).add(str(v))
        return {k: sorted(v) for k, v in sorted(out.items())}

    def platform_note(self) -> str | None:
        for _, t in self.transcripts():
            note = (t.get("host") or {}).get("platform_note")
            if note:
                return str(note)
        return None


def load_run(run_dir: str | Path) -> RunView:
    """Read a run directory (raises ValueError if it is not one)."""
    root = Path(run_dir)
    if not RunPaths(root).tests.is_dir():
        raise ValueError(f"{run_dir}: not a snplab run directory (no tests/ inside)")
    summary: dict[str, Any] = {}
    try:
        summary = json.loads(RunPaths(root).summary.read_text())
    except (OSError, ValueError):
        summary = {}
    cases = tuple(sorted((case_of(r) for r in load_test_reports(root).values()),
                         key=lambda c: (c.family, c.name, c.abi, c.product)))
    return RunView(root=root, summary=summary, cases=cases)


_PATH_PART = re.compile(r"[^A-Za-z0-9_-]+")


def path_part(text: str) -> str:
    """A KCIDB/TAP-safe path component (letters, digits, ``_`` and ``-``)."""
    return _PATH_PART.sub("_", text).strip("_") or "_"

"""Per-family outcome tally (the controller's end-of-run lines) and ``summary.json``."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from snplab.report.host_facts import host_facts
from snplab.report.run_dir import RunPaths, atomic_write, family_of
from snplab.report.run_record import REPORT_SCHEMA


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
    atomic_write(paths.summary, json.dumps(doc, indent=1))
    return paths.summary

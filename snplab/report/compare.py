"""Test-by-test difference between two runs (base kernel A vs patched kernel B)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snplab.report.run_record import load_test_reports


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

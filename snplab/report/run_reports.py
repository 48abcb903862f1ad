"""Write every run-level report of a run directory from its per-case records: ``index.html``,
``results.tap`` and ``kcidb.json`` (``summary.json`` and ``junit.xml`` come from the controller).

``python -m snplab.report.run_reports reports/<run-id>`` regenerates them, e.g. for a run whose
controller was killed before it could (the reports then say the run is incomplete).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from snplab.report.index_html import write_index_for
from snplab.report.kcidb import write_kcidb
from snplab.report.run_view import RunView, load_run
from snplab.report.tap import write_tap

WRITERS: tuple[tuple[str, Callable[[Path, RunView], Path]], ...] = (
    ("index.html", write_index_for), ("results.tap", write_tap), ("kcidb.json", write_kcidb))


def write_run_reports(run_dir: str | Path) -> list[Path]:
    """Write all run-level reports; one that fails is named on stderr, the others still written."""
    root = Path(run_dir)
    run = load_run(root)
    written = []
    for name, write in WRITERS:
        try:
            written.append(write(root, run))
        except Exception as e:  # noqa: BLE001 - one broken report must not cost the others
            print(f"snplab: could not write {root / name}: {type(e).__name__}: {e}",
                  file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m snplab.report.run_reports reports/<run-id>", file=sys.stderr)
        return 2
    try:
        paths = write_run_reports(args[0])
    except ValueError as e:
        print(f"snplab report: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0 if len(paths) == len(WRITERS) else 1


if __name__ == "__main__":
    sys.exit(main())

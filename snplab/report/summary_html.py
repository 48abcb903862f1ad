"""``reports/<run-id>/summary.html``: one self-contained page per run.

Built from ``summary.json`` and the per-test JSON records (``snplab.report.run_record``), so it can be
regenerated for any run directory (``python -m snplab.report.summary_html reports/<run-id>``).  It shows
the run's host facts, a row per behaviour family with a bar of passed/failed/skipped cases, and
every case that did not pass with the property it violated and a link to its JSON record.
"""

from __future__ import annotations

import html
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from snplab.report.run_dir import safe_name
from snplab.report.run_record import load_test_reports

_COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#6a1b9a", "skipped": "#9e9e9e"}

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
.bar { display: flex; width: 320px; height: 14px; background: #eee; }
.bar span { display: block; height: 100%; }
code { font-size: 12px; }
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _bar(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    parts = "".join(f'<span style="width:{100 * n / total:.2f}%;background:{_COLOURS[k]}" '
                    f'title="{n} {k}"></span>'
                    for k, n in counts.items() if n and k in _COLOURS)
    return f'<div class="bar">{parts}</div>'


def render(run_dir: Path) -> str:
    """The HTML page of one run directory."""
    summary: dict[str, Any] = {}
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    records = load_test_reports(run_dir)
    fams: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    secs: dict[str, float] = defaultdict(float)
    for rec in records.values():
        fam = str(rec.get("family") or "other")
        fams[fam][str(rec.get("outcome"))] += 1
        secs[fam] += float(rec.get("duration_s") or 0.0)
    host = summary.get("host") or next((r.get("host") for r in records.values()), {}) or {}
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>snplab run "
           f"{_esc(summary.get('run_id', run_dir.name))}</title><style>{_STYLE}</style></head><body>",
           f"<h1>snplab run {_esc(summary.get('run_id', run_dir.name))}</h1>",
           "<table>"]
    facts = {"platform": summary.get("platform"), "kernel": host.get("kernel"),
             "host": host.get("hostname"), "cpu": host.get("cpu"),
             "faults injected": ", ".join(summary.get("faults") or []) or "none",
             "wall time": f"{summary['wall_s']} s" if "wall_s" in summary else None}
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts.items()
            if v is not None]
    if summary.get("platform") == "emulated":
        out.append("<tr><th>note</th><td>emulated platform: SNP parts of KVM and the PSP are "
                   "modelled; these are not hardware results</td></tr>")
    out.append("</table><h2>Families</h2><table><tr><th>family</th><th>passed</th>"
               "<th>failed</th><th>skipped</th><th></th><th>time</th></tr>")
    for fam in sorted(fams):
        c = fams[fam]
        bad = c.get("failed", 0) + c.get("error", 0)
        out.append(f"<tr><td>{_esc(fam)}</td><td>{c.get('passed', 0)}</td><td>{bad}</td>"
                   f"<td>{c.get('skipped', 0)}</td><td>{_bar(dict(c))}</td>"
                   f"<td>{secs[fam]:.1f} s</td></tr>")
    out.append("</table>")
    not_passed = sorted((n, r) for n, r in records.items() if r.get("outcome") != "passed")
    out.append(f"<h2>Cases not passed ({len(not_passed)})</h2><table><tr><th>case</th>"
               "<th>outcome</th><th>violated property / reason</th></tr>")
    for nodeid, rec in not_passed:
        link = f"tests/{safe_name(nodeid)}.json"
        why = rec.get("failed_property") or (rec.get("message") or "").splitlines()[:1]
        out.append(f"<tr><td><a href='{_esc(link)}'><code>{_esc(nodeid)}</code></a></td>"
                   f"<td style='color:{_COLOURS.get(str(rec.get('outcome')), '#000')}'>"
                   f"{_esc(rec.get('outcome'))}</td><td>{_esc(why if isinstance(why, str) else ' '.join(why))}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


def write_html_summary(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    path = run / "summary.html"
    tmp = path.with_name(".summary.html.tmp")
    tmp.write_text(render(run))
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0], "tests").is_dir():
        print("usage: python -m snplab.report.summary_html reports/<run-id>", file=sys.stderr)
        return 2
    print(write_html_summary(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

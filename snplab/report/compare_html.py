"""``snplab compare A B --html OUT``: the A/B page (base kernel A vs patched kernel B).

Cases whose verdict changed, regressions first (passed in A, failed or errored in B), then the
other changes and the fixes; each with the violated property and a side-by-side of both
transcripts' differing steps (the per-attempt story of ``case_transcript.step_lines``, aligned
with ``difflib``); then timing deltas per family, of the guests' set-up and run, and the cases
whose duration changed most.  One self-contained file like index.html.
"""

from __future__ import annotations

import difflib
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from snplab.report.case_transcript import step_lines
from snplab.report.html_page import COLOURS, EMULATED_NOTE, page
from snplab.report.run_dir import atomic_write
from snplab.report.run_view import CaseView, RunView
from snplab.report.svg_charts import esc, fmt_seconds

BAD = frozenset({"failed", "error"})
# Side-by-side rows shown per guest run before the rest is summarised (page size).
MAX_DIFF_ROWS = 40
TOP_TIMING_CASES = 12


def change_rank(a: str, b: str) -> int:
    """Sort key of a verdict change: regressions first, fixes last."""
    if a == "passed" and b in BAD:
        return 0
    if b in BAD:
        return 1
    if a in BAD and b == "passed":
        return 3
    return 2


def change_label(a: str, b: str) -> str:
    return ("REGRESSION", "worse", "changed", "fixed")[change_rank(a, b)]


def side_by_side(lines_a: Sequence[str], lines_b: Sequence[str]) -> str:
    """The differing lines of two step stories next to each other (equal runs elided)."""
    rows: list[str] = []
    same = 0
    sm = difflib.SequenceMatcher(a=list(lines_a), b=list(lines_b), autojunk=False)
    for op, i1, i2, j1, j2 in sm.get_opcodes():
        if op == "equal":
            same += i2 - i1
            continue
        left, right = list(lines_a[i1:i2]), list(lines_b[j1:j2])
        for k in range(max(len(left), len(right))):
            la = left[k] if k < len(left) else ""
            lb = right[k] if k < len(right) else ""
            rows.append(f"<tr><td class='changed'>{esc(la)}</td><td class='changed'>{esc(lb)}</td></tr>")
    shown = rows[:MAX_DIFF_ROWS]
    if len(rows) > len(shown):
        shown.append(f"<tr><td colspan=2 class='muted'>… {len(rows) - len(shown)} more differing "
                     "lines</td></tr>")
    if not rows:
        shown.append("<tr><td colspan=2 class='muted'>the transcripts tell the same story"
                     "</td></tr>")
    return ("<table class='diff'><tr><th>A</th><th>B</th></tr>" + "".join(shown)
            + (f"<tr><td colspan=2 class='muted'>{same} identical lines not shown</td></tr>"
               if same else "") + "</table>")


def _runs(c: CaseView | None) -> list[Mapping[str, Any]]:
    return [r.get("transcript") or {} for r in c.runs] if c is not None else []


def case_change(ca: CaseView, cb: CaseView) -> str:
    label = change_label(ca.outcome, cb.outcome)
    prop = cb.failed_property if cb.bad else ca.failed_property
    msg = cb.message if cb.bad else ca.message
    out = [f"<div class='change' data-change='{esc(label)}' data-nodeid='{esc(cb.nodeid)}'>",
           f"<h3><span class='{'prop' if label in ('REGRESSION', 'worse') else ''}'>"
           f"{esc(label)}</span> <code>{esc(cb.nodeid)}</code>: "
           f"<span style='color:{COLOURS.get(ca.outcome, '#000')}'>{esc(ca.outcome)}</span> → "
           f"<span style='color:{COLOURS.get(cb.outcome, '#000')}'>{esc(cb.outcome)}</span></h3>"]
    if prop:
        out.append(f"<p>violated property ({'B' if cb.bad else 'A'}): "
                   f"<span class='prop'>{esc(prop)}</span></p>")
    if msg:
        out.append(f"<p><code>{esc(msg)}</code></p>")
    ra, rb = _runs(ca), _runs(cb)
    for k in range(max(len(ra), len(rb))):
        la = step_lines(ra[k]) if k < len(ra) else ["(no guest run)"]
        lb = step_lines(rb[k]) if k < len(rb) else ["(no guest run)"]
        out.append(f"<h4>guest run {k}: differing steps</h4>" + side_by_side(la, lb))
    out.append(f"<p class='muted'>{ca.duration_s * 1e3:.1f} ms → {cb.duration_s * 1e3:.1f} ms"
               "</p></div>")
    return "".join(out)


def _guest_times(run: RunView) -> tuple[list[float], list[float]]:
    boot, rn = [], []
    for _, t in run.transcripts():
        tim = t.get("timings") or {}
        if isinstance(tim.get("run_s"), (int, float)):
            rn.append(float(tim["run_s"]))
            boot.append(sum(float(tim.get(k) or 0.0) for k in ("create_s", "load_s", "launch_s")))
    return boot, rn


def _delta(a: float, b: float) -> str:
    d = b - a
    pct = f" ({100 * d / a:+.0f} %)" if a else ""
    return f"{'+' if d >= 0 else '−'}{fmt_seconds(abs(d))}{pct}"


def timing_html(a: RunView, b: RunView) -> str:
    out = ["<section id='timing-deltas'><h2>Timing deltas (B − A)</h2>",
           "<table><tr><th>family</th><th>A</th><th>B</th><th>B − A</th></tr>"]
    fa: dict[str, float] = defaultdict(float)
    fb: dict[str, float] = defaultdict(float)
    for c in a.cases:
        fa[c.family] += c.duration_s
    for c in b.cases:
        fb[c.family] += c.duration_s
    for fam in sorted(set(fa) | set(fb)):
        out.append(f"<tr><td>{esc(fam)}</td><td>{fmt_seconds(fa[fam])}</td>"
                   f"<td>{fmt_seconds(fb[fam])}</td><td>{_delta(fa[fam], fb[fam])}</td></tr>")
    out.append("</table>")
    (boot_a, run_a), (boot_b, run_b) = _guest_times(a), _guest_times(b)
    out.append("<table><tr><th>per guest (median)</th><th>A</th><th>B</th><th>B − A</th></tr>")
    for name, xa, xb in (("set-up (create + load + launch)", boot_a, boot_b),
                         ("run (first KVM_RUN to exit)", run_a, run_b)):
        if xa and xb:
            ma, mb = statistics.median(xa), statistics.median(xb)
            out.append(f"<tr><td>{name}</td><td>{fmt_seconds(ma)}</td><td>{fmt_seconds(mb)}</td>"
                       f"<td>{_delta(ma, mb)}</td></tr>")
    out.append("</table>")
    by_b = b.by_nodeid()
    pairs = [(c, by_b[c.nodeid]) for c in a.cases if c.nodeid in by_b]
    pairs.sort(key=lambda p: -abs(p[1].duration_s - p[0].duration_s))
    out.append(f"<h3>The {min(TOP_TIMING_CASES, len(pairs))} cases whose duration changed most</h3>"
               "<table><tr><th>case</th><th>A</th><th>B</th><th>B − A</th></tr>")
    for ca, cb in pairs[:TOP_TIMING_CASES]:
        out.append(f"<tr><td><code>{esc(ca.nodeid)}</code></td><td>{fmt_seconds(ca.duration_s)}"
                   f"</td><td>{fmt_seconds(cb.duration_s)}</td>"
                   f"<td>{_delta(ca.duration_s, cb.duration_s)}</td></tr>")
    out.append("</table></section>")
    return "".join(out)


def _run_facts(run: RunView, path: str) -> dict[str, Any]:
    host = run.host
    c = run.counts()
    facts = {"directory": path, "run": run.run_id, "platform": run.platform,
             "kernel": host.get("kernel"), "host": host.get("hostname"), "cpu": host.get("cpu"),
             "faults injected": ", ".join(run.faults) or "none",
             "complete": "yes" if run.complete else f"NO — {run.incomplete_reason}",
             "totals": ", ".join(f"{c.get(o, 0)} {o}" for o in ("passed", "failed", "error",
                                                                 "skipped"))}
    facts.update({f"guest platform {k}": ", ".join(v) for k, v in run.platform_facts().items()})
    return facts


def facts_table(a: RunView, b: RunView, path_a: str, path_b: str) -> str:
    """The two runs' facts side by side, rows that differ highlighted."""
    fa, fb = _run_facts(a, path_a), _run_facts(b, path_b)
    rows = []
    for k in list(dict.fromkeys(list(fa) + list(fb))):
        va, vb = fa.get(k, ""), fb.get(k, "")
        cls = " class='changed'" if va != vb and k not in ("directory", "run") else ""
        rows.append(f"<tr><th>{esc(k)}</th><td{cls}>{esc(va)}</td><td{cls}>{esc(vb)}</td></tr>")
    return ("<table class='facts diffacts' id='run-facts'><tr><th></th><th>A (base)</th>"
            "<th>B</th></tr>" + "".join(rows) + "</table>")


def render(a: RunView, b: RunView, path_a: str, path_b: str) -> str:
    ca, cb = a.by_nodeid(), b.by_nodeid()
    changed = sorted(((ca[n], cb[n]) for n in set(ca) & set(cb) if ca[n].outcome != cb[n].outcome),
                     key=lambda p: (change_rank(p[0].outcome, p[1].outcome), p[0].nodeid))
    regressions = sum(1 for x, y in changed if change_rank(x.outcome, y.outcome) == 0)
    fixes = sum(1 for x, y in changed if change_rank(x.outcome, y.outcome) == 3)
    only_a, only_b = sorted(set(ca) - set(cb)), sorted(set(cb) - set(ca))
    body = [f"<h1>snplab compare: {esc(a.run_id)} (A) vs {esc(b.run_id)} (B)</h1>"]
    if a.emulated or b.emulated:
        body.append(f"<div class='banner emulated'>{esc(EMULATED_NOTE)}</div>")
    body.append(facts_table(a, b, path_a, path_b))
    body.append(f"<p class='totals' id='verdict'><span style='color:{COLOURS['failed']}'>"
                f"{regressions} regressions</span><span style='color:{COLOURS['passed']}'>"
                f"{fixes} fixes</span><span>{len(changed)} changed</span>"
                f"<span>{len(set(ca) & set(cb)) - len(changed)} unchanged</span>"
                f"<span>{len(only_a)} only in A</span><span>{len(only_b)} only in B</span></p>")
    body.append("<section id='changes'><h2>Cases whose verdict changed</h2>")
    body += [case_change(x, y) for x, y in changed]
    if not changed:
        body.append("<p>No verdict changed.</p>")
    body.append("</section>")
    for label, ids in (("Only in A", only_a), ("Only in B", only_b)):
        if ids:
            body.append(f"<h2>{label}</h2><ul>" + "".join(f"<li><code>{esc(n)}</code></li>"
                                                           for n in ids) + "</ul>")
    body.append(timing_html(a, b))
    return page(f"snplab compare {a.run_id} vs {b.run_id}", body)


def write_compare_html(out: str | Path, a: RunView, b: RunView, path_a: str, path_b: str) -> Path:
    path = Path(out)
    atomic_write(path, render(a, b, path_a, path_b))
    return path

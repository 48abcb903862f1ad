"""``reports/<run-id>/index.html``: the run dashboard, one self-contained file.

Sections: the header (platform — emulated runs marked as not hardware —, host and platform facts,
faults injected, wall time, totals); a matrix per family (case × ABI profile × product, coloured
by outcome, every cell a link to the case); the buffer-size view (npages offered vs what came
back, per ABI profile: the INVALID_LEN contract at a glance); a section per failed case (and per
case kept with ``--keep-artifacts``) with the violated property, the step-by-step transcript, the
exit timeline and links to its JSON and artifacts; timing charts.  Regenerate it for any run
directory with ``python -m snplab.report.index_html reports/<run-id>``.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from snplab.checks import cert_exit_of
from snplab.report.case_transcript import exit_timeline, exitinfo2_text, load, transcript_html
from snplab.report.html_page import COLOURS, SYMBOLS, page, run_header
from snplab.report.run_dir import RunPaths, atomic_write
from snplab.report.run_view import OUTCOMES, CaseView, RunView, load_run
from snplab.report.svg_charts import esc, histogram
from snplab.scenario import ABIS, PRODUCTS, pages_for
from snplab.transcript import Attempt, TranscriptError

INDEX_NAME = "index.html"
# More failed cases than this get a line each instead of a full section (page size).
MAX_CASE_SECTIONS = 150


# --------------------------------------------------------------------------------------------
# matrix


def _columns(cases: Iterable[CaseView]) -> list[tuple[str, str]]:
    seen = {(c.abi, c.product) for c in cases}
    order_a = list(ABIS) + sorted({a for a, _ in seen} - set(ABIS))
    order_p = list(PRODUCTS) + sorted({p for _, p in seen} - set(PRODUCTS))
    return [(a, p) for a in order_a for p in order_p if (a, p) in seen]


def case_href(c: CaseView, sectioned: set[str]) -> str:
    return f"#{c.anchor}" if c.nodeid in sectioned else c.json_href


def matrix_html(run: RunView, fam: str, sectioned: set[str]) -> str:
    cases = run.of_family(fam)
    cols = _columns(cases)
    grid: dict[str, dict[tuple[str, str], CaseView]] = defaultdict(dict)
    for c in cases:
        grid[c.name][(c.abi, c.product)] = c
    counts = Counter(c.outcome for c in cases)
    abis = list(dict.fromkeys(a for a, _ in cols))
    props = Counter(c.failed_property for c in cases if c.failed_property)
    out = [f"<div class='family'><h3 id='family-{esc(fam)}'>{esc(fam)} <span class='muted'>"
           + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o)) + "</span></h3>"
           + (f"<p class='violated'>violated: " + ", ".join(
               f"<b>{esc(p)}</b> ×{n}" for p, n in props.most_common()) + "</p>" if props else ""),
           f"<table class='matrix' data-family='{esc(fam)}'><tr><th rowspan=2>case</th>"
           + "".join(f"<th colspan={sum(1 for a, _ in cols if a == ab)}>{esc(ab)}</th>"
                     for ab in abis) + "</tr><tr>"
           + "".join(f"<th>{esc(p)}</th>" for _, p in cols) + "</tr>"]
    for name in sorted(grid):
        row = [f"<tr><td class='case'><code>{esc(name)}</code></td>"]
        for col in cols:
            c = grid[name].get(col)
            if c is None:
                row.append("<td><span class='cell o-none' title='not applicable'></span></td>")
                continue
            tip = f"{c.nodeid}: {c.outcome}" + (
                f" — violated {c.failed_property}" if c.failed_property else
                (f" — {c.message}" if c.message and c.outcome != "passed" else ""))
            row.append(f"<td><a class='cell o-{esc(c.outcome)}' data-outcome='{esc(c.outcome)}' "
                       f"data-nodeid='{esc(c.nodeid)}' href='{esc(case_href(c, sectioned))}' "
                       f"title='{esc(tip)}'>{SYMBOLS.get(c.outcome, '?')}</a></td>")
        out.append("".join(row) + "</tr>")
    out.append("</table></div>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# buffer-size view


@dataclass(frozen=True)
class BufferAnswer:
    """One extended-request attempt: pages offered, pages the served blob needs, the answer."""

    abi: str
    asked: int
    need: int
    kind: str        # success | invalid_len | broken (INVALID_LEN with RBX != need) | error
    rbx_out: int
    nodeid: str
    error: str = ""  # for kind "error": what came back (BUSY, GENERIC, malformed input, ...)


def buffer_answers(run: RunView) -> list[BufferAnswer]:
    out = []
    for c, tj in run.transcripts():
        t = load(tj)
        if t is None:
            continue
        need = pages_for(len(t.cert_blob)) if t.cert_blobs else 0
        try:
            attempts = [a for a in t.all_attempts() if a.is_ext]
            exits = cert_exit_of(t)
        except TranscriptError:
            continue
        for a in attempts:
            if a.completed:
                kind = "success"
            elif a.sw_exitinfo1 == 0 and a.vmm_error == 1:
                # RBX must carry what the VMM answered (need, unless the test scripted another)
                answer = (exits.get((a.vcpu, a.step, a.index)) or {}).get("answer")
                want = answer.get("npages") if isinstance(answer, dict) else need
                kind = "invalid_len" if a.rbx_out == want else "broken"
            else:
                kind = "error"
            out.append(BufferAnswer(t.abi, a.rbx_in, need, kind, a.rbx_out, c.nodeid,
                                    _error_name(a) if kind == "error" else ""))
    return out


def _error_name(a: Attempt) -> str:
    if a.sw_exitinfo1:
        return f"EXITINFO1={a.sw_exitinfo1}"
    text = exitinfo2_text(a.sw_exitinfo2)
    return text[text.index("(") + 1:-1] if "(" in text else text


_KIND_TEXT = {"success": "success", "invalid_len": "INVALID_LEN", "broken": "INVALID_LEN, wrong RBX",
              "error": "error"}


def buffer_view_html(run: RunView) -> str:
    answers = buffer_answers(run)
    out = ["<section id='buffer-sizes'><h2>Buffer sizes: npages offered vs answer</h2>",
           "<p>Every extended guest request of the run. A row is the size of the certificate blob "
           "the host served (pages needed), a column the pages the guest offered. The contract: "
           "fewer pages than needed → <span class='b-invalid_len'>&nbsp;INVALID_LEN with RBX = "
           "pages needed&nbsp;</span> (or the count a test scripted the VMM to answer); enough → <span class='b-success'>&nbsp;success&nbsp;</span>. "
           "<span class='b-broken'>&nbsp;Red&nbsp;</span>: INVALID_LEN with the wrong RBX; "
           "<span class='b-error'>&nbsp;purple&nbsp;</span>: any other error (BUSY, GENERIC, "
           "malformed input — often the scenario's intent).</p>"]
    if not answers:
        return "".join(out) + "<p class='muted'>no extended requests in this run</p></section>"
    for abi in [a for a in ABIS if any(x.abi == a for x in answers)]:
        mine = [x for x in answers if x.abi == abi]
        asked = sorted({x.asked for x in mine})
        needs = sorted({x.need for x in mine})
        cell: dict[tuple[int, int], Counter] = defaultdict(Counter)
        for x in mine:
            detail = x.rbx_out if x.kind in ("invalid_len", "broken") else x.error
            cell[(x.need, x.asked)][(x.kind, detail)] += 1
        out.append(f"<h3>{esc(abi)} <span class='muted'>({len(mine)} requests)</span></h3>"
                   f"<table class='bufsize' data-abi='{esc(abi)}'><tr><th>need \\ offered</th>"
                   + "".join(f"<th>{n if n < 1 << 16 else f'{n:#x}'}</th>" for n in asked)
                   + "</tr>")
        for need in needs:
            row = [f"<tr><th>{need}</th>"]
            for n in asked:
                c = cell.get((need, n))
                if not c:
                    row.append("<td></td>")
                    continue
                worst = max(c, key=lambda k: ("success", "error", "invalid_len",
                                              "broken").index(k[0]))[0]
                text = "".join(
                    f"<span class='b-{kind}'>"
                    + (f"✓ ×{k}" if kind == "success" else
                       f"RBX={d} ×{k}" if kind in ("invalid_len", "broken") else f"{esc(d)} ×{k}")
                    + "</span>"
                    for (kind, d), k in sorted(c.items(), key=lambda kv: -kv[1]))
                tip = "; ".join(f"{k}× {_KIND_TEXT[kind]}" + (f" RBX={d}" if kind in (
                    "invalid_len", "broken") else f" {d}" if d else "") for (kind, d), k in c.items())
                row.append(f"<td data-kind='{worst}' title='{esc(tip)}'>{text}</td>")
            out.append("".join(row) + "</tr>")
        out.append("</table>")
    out.append("</section>")
    return "".join(out)


# --------------------------------------------------------------------------------------------
# case sections


def _artifact_links(run: RunView, c: CaseView) -> str:
    d = RunPaths(run.root).artifact_dir(c.nodeid)
    if not d.is_dir():
        return ""
    files = sorted(p.name for p in d.iterdir() if p.is_file())
    rel = f"artifacts/{d.name}"
    return ("<p>artifacts: " + ", ".join(f"<a href='{esc(rel)}/{esc(f)}'>{esc(f)}</a>"
                                           for f in files) + "</p>")


def case_section(run: RunView, c: CaseView, open_: bool) -> str:
    out = [f"<details class='case' id='{esc(c.anchor)}'{' open' if open_ else ''}>",
           f"<summary><span style='color:{COLOURS.get(c.outcome, '#000')}'>{esc(c.outcome)}"
           f"</span> <code>{esc(c.nodeid)}</code> ({c.duration_s * 1e3:.1f} ms)</summary>"]
    if c.failed_property:
        out.append(f"<p>violated property: <span class='prop'>{esc(c.failed_property)}</span></p>")
    if c.message:
        out.append(f"<p><code>{esc(c.message)}</code></p>")
    doc = c.record.get("doc")
    if doc:
        out.append(f"<p class='muted'>{esc(doc)}</p>")
    bad = [v for v in c.record.get("verdicts") or () if v.get("ok") is False]
    if bad:
        out.append("<ul>" + "".join(f"<li><b>{esc(v.get('name'))}</b>: {esc(v.get('detail'))}</li>"
                                    for v in bad) + "</ul>")
    out.append(f"<p>record: <a href='{esc(c.json_href)}'>{esc(c.json_href)}</a></p>")
    out.append(_artifact_links(run, c))
    for k, r in enumerate(c.runs):
        tj = r.get("transcript") or {}
        out.append(transcript_html(tj, title=f"guest run {k}"))
        out.append(exit_timeline(tj, title=f"guest run {k}: exits over time"))
    out.append("</details>")
    return "".join(out)


def sectioned_cases(run: RunView) -> list[CaseView]:
    chosen = [c for c in run.cases if c.bad] + [c for c in run.cases if not c.bad and c.full
                                                and c.outcome != "skipped"]
    return chosen[:MAX_CASE_SECTIONS]


# --------------------------------------------------------------------------------------------
# timing charts


def timing_charts(run: RunView) -> str:
    durations = [c.duration_s for c in run.cases if c.outcome != "skipped"]
    boot, guest_run = [], []
    for _, t in run.transcripts():
        tim = t.get("timings") or {}
        try:
            boot.append(sum(float(tim[k]) for k in ("create_s", "load_s", "launch_s") if k in tim))
            guest_run.append(float(tim["run_s"]))
        except (KeyError, TypeError, ValueError):
            continue
    return ("<section id='timings'><h2>Timings</h2><div class='charts'>"
            + histogram(durations, title="case duration (pytest call)")
            + histogram(boot, title="guest set-up (create + load + launch)", colour="#2f8f83")
            + histogram(guest_run, title="guest run (first KVM_RUN to exit)", colour="#7f6bb0")
            + "</div></section>")


# --------------------------------------------------------------------------------------------


def render(run: RunView) -> str:
    sections = sectioned_cases(run)
    sectioned = {c.nodeid for c in sections}
    body = [f"<h1>snplab run {esc(run.run_id)}</h1>"]
    body += run_header(run)
    body.append("<p>" + " · ".join(
        f"<a href='#{a}'>{t}</a>" for a, t in (("families", "matrix"), ("buffer-sizes", "buffer sizes"),
                                                ("cases", "cases"), ("timings", "timings")))
                + " · <a href='results.tap'>results.tap</a> · <a href='kcidb.json'>kcidb.json</a>"
                  " · <a href='junit.xml'>junit.xml</a> · <a href='summary.json'>summary.json</a></p>")
    body.append("<section id='families'><h2>Families: case × ABI profile × product</h2>"
                "<p class='legend'>"
                + "".join(f"<span class='o-{o}'>{SYMBOLS[o]} {o}</span>" for o in OUTCOMES)
                + "<span class='o-none' style='color:#555'>not applicable</span></p>")
    body.append("<div class='families'>" + "".join(matrix_html(run, fam, sectioned)
                                                   for fam in run.families()) + "</div></section>")
    body.append(buffer_view_html(run))
    bad = [c for c in run.cases if c.bad]
    body.append(f"<section id='cases'><h2>Cases: {len(bad)} failed"
                + (f", {len(sections) - len([c for c in sections if c.bad])} kept" if
                   len(sections) > len([c for c in sections if c.bad]) else "") + "</h2>")
    body += [case_section(run, c, open_=(i == 0)) for i, c in enumerate(sections)]
    rest = [c for c in bad if c.nodeid not in sectioned]
    if rest:
        body.append(f"<p>{len(rest)} more failed cases: " + ", ".join(
            f"<a href='{esc(c.json_href)}'>{esc(c.nodeid)}</a>" for c in rest) + "</p>")
    if not bad:
        body.append("<p>No case failed.</p>")
    body.append("</section>")
    body.append(timing_charts(run))
    return page(f"snplab run {run.run_id}", body)


def write_index_for(run_dir: str | Path, run: RunView) -> Path:
    path = Path(run_dir) / INDEX_NAME
    atomic_write(path, render(run))
    return path


def write_index(run_dir: str | Path) -> Path:
    return write_index_for(run_dir, load_run(run_dir))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m snplab.report.index_html reports/<run-id>", file=sys.stderr)
        return 2
    try:
        print(write_index(args[0]))
    except ValueError as e:
        print(f"snplab report: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["render", "write_index", "buffer_answers", "INDEX_NAME"]

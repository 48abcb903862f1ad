"""The frame shared by the HTML reports: one self-contained page (inline CSS, no JS, no network)
and the run header (platform, host facts, faults, wall time, totals)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from snplab.report.run_view import OUTCOMES, RunView
from snplab.report.svg_charts import esc

COLOURS = {"passed": "#2e7d32", "failed": "#c62828", "error": "#6a1b9a", "skipped": "#9e9e9e"}
SYMBOLS = {"passed": "✓", "failed": "✗", "error": "E", "skipped": "s"}
EMULATED_NOTE = ("EMULATED PLATFORM — not hardware: the SNP parts of KVM and the PSP are modelled "
                 "in Python; these results say nothing about a real SNP host")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em 2em; color: #1d1d1d; max-width: 1400px; }
h1 { font-size: 22px; margin: 0 0 .3em; } h2 { font-size: 18px; margin: 1.6em 0 .4em;
  border-bottom: 2px solid #ddd; } h3 { font-size: 15px; margin: 1.2em 0 .3em; }
h4 { font-size: 13px; margin: .9em 0 .3em; font-weight: 600; }
table { border-collapse: collapse; margin: .4em 0 .8em; }
td, th { padding: 2px 8px; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
th { background: #f4f4f4; font-weight: 600; }
code { font: 12px ui-monospace, monospace; }
a { color: #1a5fb4; }
.banner { padding: 8px 12px; margin: .6em 0; border-radius: 4px; font-weight: 600; }
.emulated { background: #fff3cd; border: 2px solid #e0a800; color: #5c4400; }
.incomplete { background: #fde2e1; border: 2px solid #c62828; color: #7a1010; }
.facts th { background: none; width: 12em; }
.totals span { display: inline-block; margin-right: 1.2em; font-size: 16px; font-weight: 600; }
.families { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
.matrix td, .matrix th { border: 1px solid #ddd; text-align: center; padding: 1px 4px; }
.matrix td.case { text-align: left; white-space: nowrap; }
.matrix a.cell, .matrix span.cell { display: block; width: 22px; height: 18px; line-height: 18px;
  color: #fff; text-decoration: none; font-size: 12px; border-radius: 2px; margin: auto; }
.o-passed { background: #2e7d32; } .o-failed { background: #c62828; }
.o-error { background: #6a1b9a; } .o-skipped { background: #9e9e9e; } .o-none { background: #f1f1f1; }
.legend span { display: inline-block; padding: 0 6px; margin-right: 6px; color: #fff; border-radius: 2px; }
.bufsize td, .bufsize th { border: 1px solid #ddd; text-align: center; min-width: 4em; font-size: 12px; padding: 2px; }
.bufsize td span { display: block; padding: 1px 4px; margin: 1px 0; border-radius: 2px; white-space: nowrap; }
.b-success { background: #c8e6c9; } .b-invalid_len { background: #ffe0b2; }
.b-broken { background: #ef9a9a; font-weight: 700; } .b-error { background: #e1bee7; }
.steps td, .steps th { font-size: 12px; }
tr.ok td { background: #f1f8f1; } tr.warn td { background: #fff8e8; } tr.bad td { background: #fdeeee; }
.prop { font-size: 15px; color: #b71c1c; font-weight: 700; }
details.case { border: 1px solid #ccc; border-radius: 4px; padding: 4px 10px; margin: .5em 0; }
details.case summary { cursor: pointer; font-weight: 600; }
.charts svg { margin: 4px 16px 4px 0; vertical-align: top; }
.diff td.same { color: #777; } .diff td.changed, .diffacts td.changed { background: #fff3cd; }
.diffacts { width: 100%; } .diffacts td { width: 42%; }
.diff td { font: 12px ui-monospace, monospace; white-space: pre-wrap; }
.muted { color: #777; }
.violated { color: #b71c1c; margin: .1em 0 .3em; }
h3 + p.violated { font-size: 12px; }
"""


def page(title: str, body: list[str]) -> str:
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")


def fact_rows(facts: Mapping[str, Any]) -> str:
    return "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in facts.items()
                   if v not in (None, "", [], {}))


def totals_html(counts: Counter) -> str:
    return "<p class='totals'>" + "".join(
        f"<span style='color:{COLOURS[o]}'>{counts.get(o, 0)} {o}</span>" for o in OUTCOMES) + \
        f"<span>{sum(counts.values())} cases</span></p>"


def run_header(run: RunView) -> list[str]:
    """Banners (emulated, incomplete), host and platform facts, faults, wall time, totals."""
    out = []
    if run.emulated:
        out.append(f"<div class='banner emulated' id='emulated-banner'>{esc(EMULATED_NOTE)}</div>")
    if not run.complete:
        out.append(f"<div class='banner incomplete' id='incomplete-banner'>INCOMPLETE RUN — "
                   f"{esc(run.incomplete_reason)}; the {len(run.cases)} cases that finished are "
                   "all shown</div>")
    s = run.summary
    facts: dict[str, Any] = {"run": run.run_id, "platform": run.platform}
    facts.update({f"host {k}": v for k, v in run.host.items()})
    facts.update({f"guest platform {k}": ", ".join(v) for k, v in run.platform_facts().items()})
    if s.get("kernel_behaviour"):
        facts["kernel behaviour played"] = s["kernel_behaviour"]
    facts["faults injected"] = ", ".join(run.faults) or "none"
    if "wall_s" in s:
        facts["wall time"] = f"{s['wall_s']} s"
    if s.get("collected"):
        facts["cases collected"] = s["collected"]
    out.append(f"<table class='facts' id='run-facts'>{fact_rows(facts)}</table>")
    out.append(totals_html(run.counts()))
    props = Counter(c.failed_property for c in run.cases if c.failed_property)
    if props:
        out.append("<p class='violated' id='violated'>violated properties: " + ", ".join(
            f"<b>{esc(p)}</b> ×{n}" for p, n in props.most_common()) + "</p>")
    return out

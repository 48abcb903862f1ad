"""``mutate.html``: the kill matrix as one self-contained page (inline CSS, no script, no
network), rendered from the ``mutate.json`` document."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.1em;margin:1.4em 0 .4em}
.note{color:#555;max-width:70em}
.tiles{display:flex;gap:.8em;flex-wrap:wrap;margin:.8em 0}
.tile{border:1px solid #ccd;border-radius:6px;padding:.5em .9em;min-width:7em}
.tile b{display:block;font-size:1.5em}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid #d4d8e0;padding:.25em .45em;vertical-align:top;text-align:left}
th{background:#f1f3f7;font-weight:600}
th.fam{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;font-size:.85em}
td.cell{text-align:center;font-size:.8em;min-width:4.5em}
td.k{background:#cdebd3} td.w{background:#ffe8b3} td.n{color:#b0b4bc}
tr.row-survived td.name,tr.row-error td.name{background:#f7c6c6}
tr.row-weakly-killed td.name{background:#ffe8b3}
.badge{display:inline-block;border-radius:3px;padding:0 .35em;font-size:.8em;color:#fff}
.b-killed{background:#2f8a46} .b-weakly-killed{background:#b7791f} .b-survived,.b-error{background:#c53030}
.layer{color:#666;font-size:.8em}
code{font-size:.9em}
"""


def _cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return '<td class="cell n">·</td>'
    tests = cell["tests"]
    title = escape("\n".join(tests), quote=True)
    prop = cell.get("first_property") or "(no property)"
    cls = "k" if cell.get("specific") else "w"
    return (f'<td class="cell {cls}" title="{title}">{len(tests)}<br>'
            f'<code>{escape(prop)}</code></td>')


def render(doc: Mapping[str, Any]) -> str:
    """The HTML page for a ``mutate.json`` document."""
    s = doc["summary"]
    fams = list(doc["families"])
    host = doc.get("host", {})
    load = host.get("loadavg_start") or []
    out = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
           f"<title>snplab mutate {escape(doc['run_id'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>snplab mutate — {escape(doc['run_id'])}</h1>",
           f"<p class=note>Emulated platform (SNP parts of KVM and the PSP modelled in Python; not "
           f"a hardware result). Product {escape(doc['product'])}; {doc['jobs']} fault run(s) at "
           f"once on {host.get('cpu_count', '?')} CPU(s), load average at start "
           f"{', '.join(f'{x:.2f}' for x in load) or '?'}; wall {doc['wall_s']:.1f} s"
           f"{'; each fault run stopped at its first failing test (-x)' if doc['early_stop'] else ''}."
           f" Started {escape(doc['started'])}.</p>",
           "<div class=tiles>"]
    for label, value in (("faults", s["faults"]), ("killed", s["killed"]),
                         ("weakly killed", s["weakly_killed"]), ("survived", s["survived"]),
                         ("kill rate", f"{100 * s['kill_rate']:.1f} %"),
                         ("specific", f"{100 * s['specific_kill_rate']:.1f} %")):
        out.append(f"<div class=tile><b>{escape(str(value))}</b>{escape(label)}</div>")
    out.append("</div>")
    ctl = doc.get("control")
    if ctl is not None:
        bad = ctl["failed"]
        out.append(f"<p>Control (no fault): {ctl['tests_run']} tests, "
                   f"{len(bad)} false alarm(s){': ' + escape(', '.join(bad)) if bad else ''}.</p>")
    out.append("<h2>Kill matrix</h2><p class=note>Cell: number of tests of that family that "
               "failed with the fault injected, and the violated property of the first of them "
               "(hover for the tests). Green: a failure names a property the fault breaks; "
               "amber: only other failures.</p>")
    out.append("<table><tr><th>fault</th><th>breaks</th>"
               + "".join(f'<th class=fam>{escape(f)}</th>' for f in fams) + "</tr>")
    for f in doc["faults"]:
        st = f["status"]
        out.append(f'<tr class="row-{escape(st)}"><td class=name title="{escape(f["description"], quote=True)}">'
                   f'<b>{escape(f["name"])}</b> <span class=layer>{escape(f["layer"])}</span><br>'
                   f'<span class="badge b-{escape(st)}">{escape(st)}</span></td>'
                   f'<td><code>{escape(", ".join(f["breaks"]))}</code></td>'
                   + "".join(_cell(f["families"].get(fam)) for fam in fams) + "</tr>")
    out.append("</table>")
    for title, names in (("Survivors", doc["survivors"]), ("Weakly killed", doc["weakly_killed"])):
        out.append(f"<h2>{title} ({len(names)})</h2>")
        if not names:
            out.append("<p>none</p>")
            continue
        by = {f["name"]: f for f in doc["faults"]}
        out.append("<ul>" + "".join(
            f"<li><b>{escape(n)}</b> ({escape(by[n]['layer'])}): {escape(by[n]['description'])}"
            + (f" — {escape(by[n]['error'])}" if by[n].get("error") else "") + "</li>"
            for n in names) + "</ul>")
    out.append("<h2>Catalog</h2><table><tr><th>fault</th><th>layer</th><th>profiles</th>"
               "<th>description</th><th>source</th></tr>")
    for f in doc["faults"]:
        out.append(f"<tr><td><b>{escape(f['name'])}</b></td><td>{escape(f['layer'])}</td>"
                   f"<td>{escape(', '.join(f['profiles']))}</td><td>{escape(f['description'])}</td>"
                   f"<td>{escape(f['source'])}</td></tr>")
    out.append("</table>")
    nothing = doc["tests_killing_nothing"]
    out.append(f"<h2>Tests that kill nothing ({len(nothing)} of {len(doc['tests'])})</h2>"
               "<p class=note>Ran under some fault and failed under none: candidates for removal "
               "or strengthening"
               + (" (with -x most tests never ran to the end: this list says little)"
                  if doc["early_stop"] else "") + ".</p>")
    out.append("<ul>" + "".join(f"<li><code>{escape(t)}</code></li>" for t in nothing)
               + "</ul>" if nothing else "<p>none</p>")
    out.append("</body></html>")
    return "\n".join(out)

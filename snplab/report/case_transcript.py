"""A guest run's transcript as the step-by-step story a reader follows, and its exit timeline.

``step_lines`` gives one comparable text line per attempt (what the guest sent and got), used by
the case sections of index.html and by the side-by-side of ``snplab compare --html``;
``transcript_html`` renders the full story (attempts, seqnos, SW_EXITINFO1/2, RBX in/out, the
certificate exits and the VMM's answers) and ``exit_timeline`` the exits on a time axis.
"""

from __future__ import annotations

from typing import Any, Mapping

from snplab.abi.ghcb import (SNP_GUEST_VMM_ERR_BUSY, SNP_GUEST_VMM_ERR_GENERIC,
                              SNP_GUEST_VMM_ERR_GENERIC_V15, SNP_GUEST_VMM_ERR_INVALID_LEN,
                              SNP_GUEST_VMM_ERR_SHIFT)
from snplab.report.svg_charts import Mark, esc, timeline
from snplab.transcript import Attempt, Transcript, TranscriptError

_VMM_ERRORS = {SNP_GUEST_VMM_ERR_INVALID_LEN: "INVALID_LEN", SNP_GUEST_VMM_ERR_BUSY: "BUSY",
               SNP_GUEST_VMM_ERR_GENERIC: "GENERIC", SNP_GUEST_VMM_ERR_GENERIC_V15: "GENERIC(v15)"}
CERT_EXIT_KINDS = ("ReqCerts", "VmgexitReqCerts")
# snplab_abi.h SNPLAB_DOORBELL_PORT / the PVALIDATE doorbell (snplab.emu.ghcb)
_VMGEXIT_PORT, _PVALIDATE_PORT = 0xE0, 0xE4
_GHCB_MSR = 0xC0010130  # MSR_AMD64_SEV_ES_GHCB
TIMELINE_LANES = ("VMGEXIT", "PVALIDATE", "GHCB MSR", "page state", "certificate exit",
                  "termination", "other")


def exitinfo2_text(e2: int) -> str:
    """SW_EXITINFO2 decoded: the VMM error (bits 63:32) by name and the firmware status."""
    if e2 == 0:
        return "0 (success)"
    vmm, fw = e2 >> SNP_GUEST_VMM_ERR_SHIFT, e2 & 0xFFFF_FFFF
    parts = []
    if vmm:
        parts.append(_VMM_ERRORS.get(vmm, f"VMM error {vmm:#x}"))
    if fw:
        parts.append(f"fw status {fw:#x}")
    return f"{e2:#x} ({', '.join(parts)})"


def _attempt_line(a: Attempt) -> str:
    return (f"vCPU {a.vcpu} step {a.step} attempt {a.index}: {'EXT' if a.is_ext else 'REQ'} "
            f"seqno={a.seqno} RBX {a.rbx_in}→{a.rbx_out} EXITINFO1={a.sw_exitinfo1:#x} "
            f"EXITINFO2={exitinfo2_text(a.sw_exitinfo2)}{' resent' if a.resent else ''}")


def load(t_json: Mapping[str, Any]) -> Transcript | None:
    try:
        return Transcript.from_json(t_json)
    except (TranscriptError, ValueError, TypeError):
        return None


def step_lines(t_json: Mapping[str, Any]) -> list[str]:
    """One line per attempt (and per step outcome) of a run: the comparable story."""
    t = load(t_json)
    if t is None:
        return [f"(transcript unreadable) status={t_json.get('status')}"]
    lines = [f"status={t.status}" + (f" error={t.error}" if t.error else "")]
    try:
        for s in t.all_steps():
            for a in s.attempts:
                lines.append(_attempt_line(a))
            lines.append(f"vCPU {s.vcpu} step {s.index}: outcome {s.outcome_name}, decrypt "
                         f"{s.decrypt_name}, response seqno {s.resp_seqno}")
    except TranscriptError as e:
        lines.append(f"(results unreadable: {e})")
    for i, e in enumerate(t.cert_exits()):
        lines.append(f"certificate exit {i} (vCPU {e.get('vcpu')}): {e.get('kind')} "
                     f"npages={e.get('npages', e.get('data_npages'))} → VMM {e.get('answer')}")
    return lines


def _step_spec(t: Transcript, v: int, i: int) -> str:
    try:
        st = t.scenario.steps[v][i]
    except (IndexError, AttributeError):
        return ""
    bits = [st.op]
    if st.op == "ext_req":
        bits.append(f"npages={st.certs_npages}")
    if st.policy != "none":
        bits.append(f"policy={st.policy}")
    if st.pages != "normal":
        bits.append(f"pages={st.pages}")
    return " ".join(bits)


def transcript_html(t_json: Mapping[str, Any], *, title: str) -> str:
    """The step-by-step story of one guest run as HTML tables."""
    t = load(t_json)
    if t is None:
        return f"<p class='warn'>{esc(title)}: transcript unreadable</p>"
    out = [f"<h4>{esc(title)}: <code>{esc(t.scenario.name)}</code> — {esc(t.abi)} / "
           f"{esc(t.product)}, status <b>{esc(t.status)}</b>"
           + (f", error <code>{esc(t.error)}</code>" if t.error else "") + "</h4>",
           "<table class='steps'><tr><th>vCPU.step</th><th>asked</th><th>#</th><th>exit</th>"
           "<th>seqno</th><th>RBX in → out</th><th>SW_EXITINFO1</th><th>SW_EXITINFO2</th>"
           "<th>result</th></tr>"]
    try:
        for s in t.all_steps():
            spec = _step_spec(t, s.vcpu, s.index)
            result = f"{s.outcome_name} / decrypt {s.decrypt_name}" + (
                f" / resp seqno {s.resp_seqno}" if s.resp_seqno else "")
            rows = s.attempts or ()
            if not rows:
                out.append(f"<tr><td>{s.vcpu}.{s.index}</td><td>{esc(spec)}</td>"
                           f"<td colspan=6>no attempt</td><td>{esc(result)}</td></tr>")
            for a in rows:
                cls = "ok" if a.completed else ("bad" if a.ghcb_error else "warn")
                out.append(
                    f"<tr class='{cls}'><td>{s.vcpu}.{s.index}</td><td>{esc(spec)}</td>"
                    f"<td>{a.index}</td><td>{'EXT' if a.is_ext else 'REQ'}"
                    f"{' (resent)' if a.resent else ''}</td><td>{a.seqno}</td>"
                    f"<td>{a.rbx_in} → {a.rbx_out}</td><td>{a.sw_exitinfo1:#x}</td>"
                    f"<td>{esc(exitinfo2_text(a.sw_exitinfo2))}</td>"
                    f"<td>{esc(result) if a is rows[-1] else ''}</td></tr>")
    except TranscriptError as e:
        out.append(f"<tr><td colspan=9>results unreadable: {esc(e)}</td></tr>")
    out.append("</table>")
    exits = t.cert_exits()
    responder = list((t.host or {}).get("responder") or [])
    if exits or responder:
        out.append("<table class='steps'><tr><th>certificate exit</th><th>vCPU</th><th>kind</th>"
                   "<th>npages offered</th><th>VMM answer</th><th>VMM's reason</th></tr>")
        for i, e in enumerate(exits):
            why = responder[i].get("reason", "") if i < len(responder) else ""
            out.append(f"<tr><td>{i}</td><td>{esc(e.get('vcpu'))}</td><td>{esc(e.get('kind'))}</td>"
                       f"<td>{esc(e.get('npages', e.get('data_npages')))}</td>"
                       f"<td><code>{esc(e.get('answer'))}</code></td><td>{esc(why)}</td></tr>")
        out.append("</table>")
    return "".join(out)


def _lane(e: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(e.get("kind"))
    if kind == "Doorbell":
        port = e.get("port")
        if port == _VMGEXIT_PORT:
            return "VMGEXIT", "#3b6fb6"
        if port == _PVALIDATE_PORT:
            return "PVALIDATE", "#9aa7b8"
    if kind in ("MsrRead", "MsrWrite"):
        return ("GHCB MSR", "#7f6bb0") if e.get("index") == _GHCB_MSR else ("other", "#888")
    if kind == "MapGpaRange":
        return "page state", "#2f8f83"
    if kind in CERT_EXIT_KINDS:
        return "certificate exit", "#d35400"
    if kind == "SevTerm":
        return "termination", "#222"
    return "other", "#888"


def exit_timeline(t_json: Mapping[str, Any], *, title: str) -> str:
    """The guest's exits on a time axis (one lane per kind) under its set-up/run phases."""
    tim = t_json.get("timings") or {}
    phases = [(k[:-2], float(tim[k])) for k in ("create_s", "load_s", "launch_s", "run_s")
              if isinstance(tim.get(k), (int, float))]
    # exit times count from the first KVM_RUN (snplab.vmm.vcpu): shift them past the set-up
    setup = sum(s for name, s in phases if name != "run")
    marks = []
    for e in t_json.get("events") or ():
        try:
            ts = float(e.get("t", 0.0))
        except (TypeError, ValueError):
            continue
        lane, colour = _lane(e)
        detail = {k: v for k, v in e.items() if k not in ("t", "kind")}
        marks.append(Mark(setup + ts, lane, f"{e.get('kind')} {detail}", colour))
    elided = t_json.get("events_elided") or {}
    if elided:
        title += " (not shown: " + ", ".join(f"{n} {k}" for k, n in elided.items()) + ")"
    return timeline(marks, TIMELINE_LANES, title=title, phases=phases)

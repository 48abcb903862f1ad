"""Oracles: pure functions of a ``Transcript`` that judge one property each.

Every oracle returns a ``CheckResult(name, ok, detail)``; ``ok`` is None when the property does
not apply (or its ingredients are missing, e.g. no measurement predictor yet).  Each has an
``assert_*`` twin that raises ``CheckFailed`` (an AssertionError) whose message starts with the
property's name, e.g. ``seqno_advance violated: vCPU 0 step 1 attempt 0 used seqno 1, want 3``.

Two kinds:
- *invariants* hold for every run whatever the scenario (``invariants(t)``): INVALID_LEN
  encoding and RBX, nothing written on INVALID_LEN, sequence numbers, no IV reuse, BUSY resent
  identically, host-side errors never reach the firmware;
- *expectations* say what a particular step should have got (``expect_*``) or check the
  certificates and the report of one step (``cert_table_*``, ``report_*``).

Facts (errata.md table A, kvm-host-abi.md §1(a), §1(d), §2): SW_EXITINFO2[63:32] is the VMM
error: 1 INVALID_LEN (RBX = pages needed), 2 BUSY, GENERIC; bits 31:0 are the firmware status.
SW_EXITINFO1 = 2 is malformed input with the reason in SW_EXITINFO2.  The firmware only advances a
VMPCK's sequence number on a successful exchange: request N, response N+1, next request N+2.

What depends on the kernel — which reason a bad page pair gets, when the certificate exit fires,
GENERIC's value, how a firmware error is reported — is read from the kernel-behaviour registry
(``snplab.abi.kernel_behaviour``) for the generation the transcript's host played
(``generation_of``), never hard-coded here.
"""

from __future__ import annotations

import errno as errno_mod
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from snplab.abi import kernel_behaviour as kb
from snplab.abi.ghcb import (GHCB_ERR_INVALID_INPUT, GHCB_ERR_MISSING_INPUT,
                              GHCB_HV_RESP_MALFORMED_INPUT, SNP_GUEST_VMM_ERR_BUSY,
                              SNP_GUEST_VMM_ERR_INVALID_LEN, SNP_GUEST_VMM_ERR_SHIFT)
from snplab.scenario import MSG_REPORT_REQ, pages_for
from snplab.transcript import Attempt, StepResult, Transcript, TranscriptError
from snplab.vmm.memory_map import CERTS_MAX_PAGES

INVALID_LEN = SNP_GUEST_VMM_ERR_INVALID_LEN << SNP_GUEST_VMM_ERR_SHIFT
BUSY = SNP_GUEST_VMM_ERR_BUSY << SNP_GUEST_VMM_ERR_SHIFT
# Reasons a misaligned or identical request/response page may get on some kernel (errata B1);
# what a given kernel answers is its registry row (``kernel_rule``).
PAGE_ERROR_REASONS = (GHCB_ERR_MISSING_INPUT, GHCB_ERR_INVALID_INPUT)
MSG_KEY_REQ = 3  # SNP firmware ABI guest message type
# Bad-input shapes a guest step can have, in KVM's order of checks within one stage.
STEP_SHAPES = ("pages-misaligned", "pages-identical", "regs-not-valid", "certs-gpa-unaligned")


def generation_of(t: Transcript) -> str:
    """The kernel generation whose registry rows judge ``t``: the one the host played (recorded
    in the transcript), else the scenario's, else the profile's default."""
    return t.kernel_behaviour or t.scenario.kernel or kb.default_generation(t.abi)


def kernel_rule(t: Transcript, shape: str) -> kb.Rule:
    """The registry row for ``shape`` in the generation ``t``'s host played."""
    return kb.rule(generation_of(t), shape)


def generic_error(t: Transcript | str) -> int:
    """SW_EXITINFO2 a guest sees for the VMM's generic error (EIO; v15 ret GENERIC) on the
    transcript's kernel (or on an ABI profile's default kernel)."""
    gen = generation_of(t) if isinstance(t, Transcript) else kb.default_generation(t)
    vmm = kb.rule(gen, "vmm-eio").vmm_error
    assert vmm is not None
    return vmm << SNP_GUEST_VMM_ERR_SHIFT


def _kvm_msg_type(t: Transcript, a: Attempt) -> int:
    """The message type KVM reads from the request page (a private page reads as zeros)."""
    sstep = _scenario_step(t, a.vcpu, a.step)
    return 0 if sstep is not None and sstep.pages == "private_req" else a.msg_type


def request_shapes(t: Transcript, a: Attempt) -> tuple[str, ...]:
    """The registry's bad-input shapes of attempt ``a``, from the scenario step it ran."""
    st = _scenario_step(t, a.vcpu, a.step)
    if st is None:
        return ()
    shapes = []
    if st.pages == "misaligned_req":
        shapes.append("pages-misaligned")
    elif st.pages == "same":
        shapes.append("pages-identical")
    report_like = _kvm_msg_type(t, a) == MSG_REPORT_REQ or kernel_rule(t, "other-msg-type").cert_exit
    if a.is_ext and report_like:
        if st.no_rax_valid or st.no_rbx_valid:
            shapes.append("regs-not-valid")
        gpa = st.certs_gpa if st.certs_gpa is not None else st.certs_gpa_offset
        if not st.no_rax_valid and gpa % 4096:
            shapes.append("certs-gpa-unaligned")
    return tuple(shapes)


def answering_rule(t: Transcript, a: Attempt) -> tuple[str, kb.Rule] | None:
    """The (shape, row) that decides attempt ``a``'s answer on ``t``'s kernel, or None for a
    well-formed request."""
    return kb.first_rule(generation_of(t), request_shapes(t, a))


@dataclass(frozen=True)
class CheckResult:
    """The verdict of one oracle on one property."""

    name: str
    ok: bool | None  # None: not applicable / could not be judged (detail says why)
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok is True

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}

    @property
    def message(self) -> str:
        state = {True: "holds", False: "violated", None: "not judged"}[self.ok]
        return f"{self.name} {state}: {self.detail}" if self.detail else f"{self.name} {state}"


class CheckFailed(AssertionError):
    """A property does not hold; the message starts with the property's name."""

    def __init__(self, result: CheckResult, context: str = "") -> None:
        self.result = result
        super().__init__(result.message + (f"\n{context}" if context else ""))


class CheckNotApplicable(Exception):
    """An oracle could not judge (``ok`` None); the pytest plugin turns this into a skip."""


# Verdicts collected while a test runs (the pytest plugin reads and clears this list).
RECORDED: list[CheckResult] = []


def require(result: CheckResult, t: Transcript | None = None) -> CheckResult:
    """Record ``result``; raise CheckFailed if violated, CheckNotApplicable if not judged."""
    RECORDED.append(result)
    if result.ok is False:
        raise CheckFailed(result, t.summary() if t is not None else "")
    if result.ok is None:
        raise CheckNotApplicable(result.message)
    return result


def _ok(name: str, detail: str = "") -> CheckResult:
    return CheckResult(name, True, detail)


def _fail(name: str, problems: Sequence[str], more: int = 3) -> CheckResult:
    extra = f" (+{len(problems) - more} more)" if len(problems) > more else ""
    return CheckResult(name, False, "; ".join(problems[:more]) + extra)


def _verdict(name: str, problems: Sequence[str], ok_detail: str = "") -> CheckResult:
    return _fail(name, problems) if problems else _ok(name, ok_detail)


def _na(name: str, why: str) -> CheckResult:
    return CheckResult(name, None, why)


# ---------------------------------------------------------------------------------------------
# run level


def run_completed(t: Transcript) -> CheckResult:
    """The run ended normally: every vCPU ran its script to the end and terminated."""
    name = "run_completed"
    problems = []
    if t.status != "ok":
        problems.append(f"run status {t.status}" + (f" ({t.error})" if t.error else ""))
    for v, vc in enumerate(t.vcpus):
        if vc.get("status") not in ("terminated", "ok"):
            problems.append(f"vCPU {v} {vc.get('status')} at {vc.get('symbol') or vc.get('rip')}"
                            f" {vc.get('exit_reason') or ''}".rstrip())
    for v, vr in enumerate(t.results.get("vcpu", ())):
        if not vr.get("finished"):
            problems.append(f"vCPU {v} did not finish its script ({vr.get('nsteps', 0)} steps)")
        if vr.get("setup_error"):
            problems.append(f"vCPU {v} setup failed at stage {vr['setup_error']} "
                            f"(detail {vr.get('setup_detail', 0):#x}) log: {vr.get('log', '')!r}")
        if vr.get("exc_valid"):
            problems.append(f"vCPU {v} took exception {vr.get('exc_vector')} at "
                            f"{vr.get('exc_rip', 0):#x}")
    if not t.results and not problems:
        problems.append("no guest results")
    return _verdict(name, problems)


def run_failed_with(t: Transcript, status: str | None = None, errno_name: str | None = None,
                    *, name: str = "run_failure_reported") -> CheckResult:
    """The run failed (with ``status``, or any status but "ok" if None) and the failure names
    ``errno_name`` (e.g. "EINVAL") if given."""
    if t.status == "ok" or (status is not None and t.status != status):
        return _fail(name, [f"run status {t.status!r}, want {status or 'a failure'!r}"
                            + (f" ({t.error})" if t.error else "")])
    if errno_name:
        text = " ".join([str(t.error or "")] + [f"{vc.get('reason', '')} {vc.get('exit_reason', '')}"
                                                for vc in t.vcpus])
        num = getattr(errno_mod, errno_name, None)
        forms = [errno_name] + ([f"errno {num}", os.strerror(num)] if num is not None else [])
        if not any(f in text for f in forms):
            return _fail(name, [f"{errno_name} not named in the failure ({text.strip()!r})"])
    return _ok(name, f"status {t.status}: {t.error}")


# ---------------------------------------------------------------------------------------------
# matching attempts to certificate exits


def _reaches_cert_exit(t: Transcript, a: Attempt) -> bool:
    """Whether KVM (per ABI) turns this attempt into a certificate exit to the VMM.  A request
    page the guest left private is not readable by KVM (it sees no valid header): not judged."""
    if not a.is_ext or a.ghcb_error:
        return False
    hit = answering_rule(t, a)
    if hit is not None:
        return hit[1].cert_exit
    if _kvm_msg_type(t, a) != MSG_REPORT_REQ:
        return kernel_rule(t, "other-msg-type").cert_exit
    return kernel_rule(t, kb.report_request_shape(t.abi)).cert_exit


def cert_exit_of(t: Transcript) -> dict[tuple[int, int, int], dict[str, Any]]:
    """Pair each attempt that should have exited to the VMM with that exit, per vCPU in order."""
    pairs: dict[tuple[int, int, int], dict[str, Any]] = {}
    for v in range(t.nvcpus):
        exits = t.cert_exits(v)
        attempts = [a for s in t.steps(v) for a in s.attempts if _reaches_cert_exit(t, a)]
        for a, e in zip(attempts, exits):
            pairs[(a.vcpu, a.step, a.index)] = e
    return pairs


def _answer(e: Mapping[str, Any]) -> tuple[int | None, int | None]:
    ans = e.get("answer")
    if isinstance(ans, Mapping):
        return ans.get("ret"), ans.get("npages")
    if isinstance(ans, (list, tuple)) and len(ans) == 2:
        return ans[0], ans[1]
    return None, None


def cert_exits_match_requests(t: Transcript) -> CheckResult:
    """Every extended report request produced exactly one certificate exit (none on stub)."""
    name = "cert_exit_per_request"
    problems = []
    for v in range(t.nvcpus):
        want = sum(1 for s in t.steps(v) for a in s.attempts if _reaches_cert_exit(t, a))
        got = len(t.cert_exits(v))
        if want != got:
            problems.append(f"vCPU {v}: {got} certificate exit(s) for {want} extended report "
                            f"request(s) on {t.abi}")
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# INVALID_LEN


def _invalid_len_attempts(t: Transcript) -> list[Attempt]:
    return [a for a in t.all_attempts()
            if a.vmm_error == SNP_GUEST_VMM_ERR_INVALID_LEN and not a.ghcb_error]


def invalid_len_encoding(t: Transcript) -> CheckResult:
    """INVALID_LEN is exactly SW_EXITINFO2 = 1<<32 with SW_EXITINFO1 = 0, only on EXT requests."""
    name = "invalid_len_encoding"
    problems = []
    for a in t.all_attempts():
        if a.vmm_error != SNP_GUEST_VMM_ERR_INVALID_LEN:
            continue
        if a.sw_exitinfo1 != 0 or a.sw_exitinfo2 != INVALID_LEN:
            problems.append(f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2="
                            f"{a.sw_exitinfo2:#x}, want 0 and {INVALID_LEN:#x}")
        elif not a.is_ext:
            problems.append(f"{a.where}: INVALID_LEN on a plain guest request {a.exit_code:#x}")
    n = len(_invalid_len_attempts(t))
    return _verdict(name, problems, f"{n} INVALID_LEN answer(s) well formed")


def invalid_len_rbx(t: Transcript) -> CheckResult:
    """On INVALID_LEN, RBX holds the pages the VMM asked for, and the VMM asked for
    ceil(blob / 4096) unless the test scripted another number."""
    name = "invalid_len_rbx"
    attempts = _invalid_len_attempts(t)
    if not attempts:
        return _ok(name, "no INVALID_LEN answers")
    problems = []
    blobs = t.served_blobs()
    needed = {pages_for(len(b)) for b in blobs}
    pairs = cert_exit_of(t)
    exits = t.cert_exits()
    for a in attempts:
        e = pairs.get((a.vcpu, a.step, a.index))
        _, npages = _answer(e) if e is not None else (None, None)
        if npages is not None and a.rbx_out != npages:
            problems.append(f"{a.where}: RBX={a.rbx_out} after INVALID_LEN, but the VMM answered "
                            f"npages={npages}")
            continue
        scripted = _scripted_npages(t, exits, e)
        want = {scripted} if scripted is not None else needed
        if want and a.rbx_out not in want:
            sizes = "/".join(str(len(b)) for b in blobs)
            problems.append(f"{a.where}: RBX={a.rbx_out} after INVALID_LEN, want "
                            f"{'/'.join(map(str, sorted(want)))} pages for a {sizes}-byte blob")
    return _verdict(name, problems, f"{len(attempts)} INVALID_LEN answer(s) with the right RBX")


def _scripted_npages(t: Transcript, exits: Sequence[Mapping[str, Any]],
                     e: Mapping[str, Any] | None) -> int | None:
    """npages the scenario scripted for this certificate exit (``enospc-npages:N``), if any.
    The VMM consumes ``cert_answers`` in the order of exits across the whole VM."""
    if e is None:
        return None
    k = next((n for n, x in enumerate(exits) if x is e), None)
    answers = t.scenario.cert_answers
    if k is not None and k < len(answers) and answers[k].startswith("enospc-npages:"):
        return int(answers[k].split(":", 1)[1])
    return None


def _head_observed(t: Transcript, a: Attempt) -> bool:
    """The guest could read the head of this attempt's certificate buffer (it lies in the
    guest's own certificate area, not a private page or an address the script chose)."""
    st = _scenario_step(t, a.vcpu, a.step)
    return st is None or (st.pages != "private_certs" and st.certs_gpa is None)


def host_wrote_certs(t: Transcript, a: Attempt) -> bool | None:
    """Whether the host wrote into the head of the certificate buffer during this attempt.

    The payload fills the first 32 bytes of its buffer with SNPLAB_CERTS_CANARY before every
    extended attempt and records them after the exit (``certs_head``): any other byte came from
    the host.  None when the guest could not observe the buffer."""
    if not a.is_ext or not _head_observed(t, a):
        return None
    canary = t.enums.get("snplab_canary", {}).get("SNPLAB_CERTS_CANARY")
    if canary is None:  # a payload without the canary enum: only a non-uniform head is proof
        return len(set(a.certs_head)) > 1
    return any(b != canary for b in a.certs_head)


def invalid_len_no_write(t: Transcript) -> CheckResult:
    """Nothing is written to the guest's certificate buffer when INVALID_LEN is returned."""
    name = "invalid_len_no_write"
    problems = []
    for a in _invalid_len_attempts(t):
        if host_wrote_certs(t, a):
            problems.append(f"{a.where}: certificate buffer written on INVALID_LEN "
                            f"(head {a.certs_head[:24].hex()})")
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# sequence numbers and IV reuse


def _vmpck_users(t: Transcript) -> dict[int, set[int]]:
    users: dict[int, set[int]] = defaultdict(set)
    for v, script in enumerate(t.scenario.steps):
        for s in script:
            if s.op != "terminate":
                users[s.vmpck].add(v)
    return users


def seqno_advance(t: Transcript) -> CheckResult:
    """Sequence numbers go 1, 3, 5, ... per VMPCK: each new message uses the next number,
    only a completed exchange advances it (by 2), resends reuse it, the response carries N+1,
    and the firmware saw completed exchanges in that order."""
    name = "seqno_advance"
    problems: list[str] = []
    users = _vmpck_users(t)
    for v in range(t.nvcpus):
        expected: dict[int, int | None] = {}
        for s in t.steps(v):
            sstep = _scenario_step(t, v, s.index)
            overridden = sstep is not None and sstep.seqno is not None
            for a in s.attempts:
                k = a.vmpck
                if len(users.get(k, {v})) > 1:
                    continue  # shared VMPCK: only the firmware's log can order the messages
                if overridden:
                    expected[k] = None  # resynchronise after a deliberate replay or skip
                    continue
                want = expected.get(k, 1)
                if want is None:
                    want = a.seqno
                if a.seqno != want:
                    problems.append(f"{a.where}: VMPCK{k} seqno {a.seqno}, want {want}")
                    want = a.seqno
                expected[k] = want + 2 if a.completed else want
            last = s.last
            if last is not None and last.completed and s.resp_seqno != last.seqno + 1:
                problems.append(f"{s.where}: response seqno {s.resp_seqno}, want {last.seqno + 1}")
        seq_next = t.vcpu(v).get("seqno_next")
        if isinstance(seq_next, (list, tuple)):
            for k, want in expected.items():
                if want is not None and k < len(seq_next) and len(users.get(k, ())) <= 1 \
                        and seq_next[k] != want:
                    problems.append(f"vCPU {v}: VMPCK{k} next seqno {seq_next[k]} at the end, "
                                    f"want {want}")
    # The firmware's view (emulated platform): completed exchanges per VMPCK in order.
    fw_next: dict[int, int] = {}
    for m in t.message_log:
        if m.get("reached_firmware") and m.get("fw_status") == 0 and m.get("seqno") is not None:
            k, n = int(m["vmpck"]), int(m["seqno"])
            want = fw_next.get(k, 1)
            if n != want:
                problems.append(f"firmware log: VMPCK{k} completed seqno {n}, want {want}")
            fw_next[k] = n + 2
    return _verdict(name, problems)


def _scenario_step(t: Transcript, v: int, i: int):
    try:
        return t.scenario.steps[v][i]
    except IndexError:
        return None


def no_iv_reuse(t: Transcript) -> CheckResult:
    """No (VMPCK, seqno) is ever used with two different ciphertexts (AES-GCM IV reuse), by the
    firmware's message log (emulated) and by the guest's own request tags."""
    name = "no_iv_reuse"
    problems = []
    seen: dict[tuple[int, int], dict[str, str]] = defaultdict(dict)
    for m in t.message_log:
        if m.get("vmpck") is None or m.get("seqno") is None:
            continue  # KVM could not read a message header there
        key = (int(m["vmpck"]), int(m["seqno"]))
        ct = f"{m.get('ct_sha256', '')}/{m.get('tag', '')}"
        seen[key].setdefault(ct, f"log vCPU {m.get('vcpu')} exit {int(m.get('exit_code', 0)):#x}")
    for a in t.all_attempts():
        if not any(a.tag):
            continue
        seen[(a.vmpck, a.seqno)].setdefault(f"tag:{a.tag.hex()}", a.where)
    for (k, n), variants in sorted(seen.items()):
        tags = {c for c in variants if c.startswith("tag:")}
        logs = {c for c in variants if not c.startswith("tag:")}
        if len(tags) > 1 or len(logs) > 1:
            where = ", ".join(sorted(set(variants.values())))
            problems.append(f"VMPCK{k} seqno {n} used for {max(len(tags), len(logs))} different "
                            f"messages ({where})")
    return _verdict(name, problems)


def _fw_rejected(t: Transcript, a: Attempt) -> bool:
    """The firmware ran and refused the message: status in SW_EXITINFO2[31:0] and the kernel's
    VMM error for a firmware error in [63:32] (0; v15: GENERIC)."""
    vmm = kernel_rule(t, "firmware-error").vmm_error or 0
    return a.sw_exitinfo1 == 0 and a.vmm_error == vmm and a.fw_status != 0


def _host_error(t: Transcript, a: Attempt) -> bool:
    """KVM or the VMM answered without the firmware (a firmware rejection is not one)."""
    return a.host_error and not _fw_rejected(t, a)


def firmware_error_no_seqno(t: Transcript) -> CheckResult:
    """A message the firmware rejects does not consume a sequence number: after a rejection,
    the guest's next message under its (unchanged) counter is accepted."""
    name = "firmware_error_no_seqno"
    problems = []
    for v in range(t.nvcpus):
        prev: dict[int, Attempt] = {}
        for s in t.steps(v):
            sstep = _scenario_step(t, v, s.index)
            override = sstep is not None and sstep.seqno is not None
            for a in s.attempts:
                if _host_error(t, a):
                    continue  # never reached the firmware
                before = prev.get(a.vmpck)
                if _fw_rejected(t, a) and not override and before is not None:
                    problems.append(f"{a.where}: firmware rejected seqno {a.seqno} (status "
                                    f"{a.fw_status:#x}) right after rejecting {before.where} "
                                    f"(seqno {before.seqno}): the rejection consumed a sequence "
                                    "number")
                if _fw_rejected(t, a):
                    prev[a.vmpck] = a
                else:
                    prev.pop(a.vmpck, None)
    return _verdict(name, problems)


def expect_firmware_rejected(t: Transcript, v: int, i: int, *, attempt: int = 0,
                             name: str = "firmware_rejected") -> CheckResult:
    """The attempt reached the firmware and was refused: EXITINFO1 = 0, no VMM error, a non-zero
    firmware status."""
    s = _step_or_none(t, v, i)
    if s is None or attempt >= len(s.attempts):
        return _fail(name, [f"vCPU {v} step {i} made no attempt {attempt} (run status "
                            f"{t.status}: {t.error})"])
    a = s.attempts[attempt]
    if not _fw_rejected(t, a):
        return _fail(name, [f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2="
                            f"{a.sw_exitinfo2:#x}, want a firmware status (seqno {a.seqno})"])
    return _ok(name, f"{a.where}: firmware status {a.fw_status:#x}")


def busy_resent_identical(t: Transcript) -> CheckResult:
    """After BUSY the guest re-sends the byte-identical message (same exit, seqno and tag)."""
    name = "busy_resent_identical"
    problems = []
    nbusy = 0
    for s in t.all_steps():
        for a, b in zip(s.attempts, s.attempts[1:]):
            if a.vmm_error != SNP_GUEST_VMM_ERR_BUSY or a.ghcb_error:
                continue
            nbusy += 1
            if (b.seqno, b.tag, b.exit_code, b.vmpck) != (a.seqno, a.tag, a.exit_code, a.vmpck) \
                    or not b.resent:
                problems.append(f"{b.where}: after BUSY sent seqno {b.seqno} tag {b.tag.hex()[:8]}"
                                f" exit {b.exit_code:#x}, want the identical message "
                                f"(seqno {a.seqno} tag {a.tag.hex()[:8]} exit {a.exit_code:#x})")
    return _verdict(name, problems, f"{nbusy} BUSY answer(s) followed by identical resends")


def _log_key(vcpu: int, vmpck: Any, seqno: Any, tag: Any, exit_code: Any, e1: Any,
             e2: Any) -> tuple:
    return (vcpu, vmpck, seqno, str(tag or ""), exit_code, e1, e2)


def _message_log_of(t: Transcript) -> dict[tuple[int, int, int], Mapping[str, Any]]:
    """Pair guest attempts with the firmware-log entry of the same VMGEXIT: same vCPU, message
    (VMPCK, seqno, tag), exit code and SW_EXITINFO1/2, in order."""
    pool: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for m in t.message_log:
        pool[_log_key(int(m.get("vcpu", -1)), m.get("vmpck"), m.get("seqno"), m.get("tag"),
                      m.get("exit_code"), m.get("sw_exit_info_1"),
                      m.get("sw_exit_info_2"))].append(m)
    out: dict[tuple[int, int, int], Mapping[str, Any]] = {}
    for a in t.all_attempts():
        keys = [_log_key(a.vcpu, a.vmpck, a.seqno, a.tag.hex(), a.exit_code, a.sw_exitinfo1,
                         a.sw_exitinfo2),
                _log_key(a.vcpu, a.vmpck, a.seqno, a.tag.hex(), a.exit_code, None, None)]
        for k in keys:
            if pool.get(k):
                out[(a.vcpu, a.step, a.index)] = pool[k].pop(0)
                break
    return out


def host_error_no_seqno(t: Transcript) -> CheckResult:
    """A host-side error (GHCB error, INVALID_LEN, BUSY, generic) never reaches the firmware, so
    it never consumes a sequence number: the firmware log shows no firmware call for it, and the
    next message under that seqno is not rejected by the firmware."""
    name = "host_error_no_seqno"
    problems = []
    logged = _message_log_of(t)
    for v in range(t.nvcpus):
        attempts = [a for s in t.steps(v) for a in s.attempts]
        for idx, a in enumerate(attempts):
            if not _host_error(t, a):
                continue
            m = logged.get((a.vcpu, a.step, a.index))
            if m is not None and m.get("reached_firmware"):
                problems.append(f"{a.where}: EXITINFO2={a.sw_exitinfo2:#x} returned to the guest "
                                f"but the firmware processed seqno {a.seqno} "
                                f"(status {m.get('fw_status')})")
                continue
            nxt = next((b for b in attempts[idx + 1:] if b.vmpck == a.vmpck
                        and b.seqno == a.seqno and not _host_error(t, b)), None)
            if nxt is not None and nxt.fw_status != 0:
                problems.append(f"{nxt.where}: firmware rejected seqno {nxt.seqno} "
                                f"(status {nxt.fw_status:#x}) after a host-side error at "
                                f"{a.where}: the error consumed the sequence number")
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# stub profile


def stub_no_vmm_errors(t: Transcript) -> CheckResult:
    """The stub (6.11–6.19) never exits to the VMM and never answers with a VMM error
    (INVALID_LEN, BUSY or any other non-zero SW_EXITINFO2[63:32])."""
    name = "stub_no_vmm_errors"
    problems = [f"{a.where}: EXITINFO2={a.sw_exitinfo2:#x} on the stub ABI"
                for a in t.all_attempts()
                if a.vmm_error != 0]
    if t.cert_exits():
        problems.append(f"{len(t.cert_exits())} certificate exit(s) to the VMM on the stub ABI")
    return _verdict(name, problems)


def stub_empty_table(t: Transcript, v: int, i: int) -> CheckResult:
    """With RBX != 0 the stub leaves an empty certificate table (the registry's zeroed bytes: 24,
    a terminator entry), nothing else; with RBX = 0 it writes nothing."""
    name = "stub_empty_table"
    s = t.step(v, i)
    n = kernel_rule(t, "report-request-no-certs-exit").zeroes
    problems = []
    for a in s.attempts:
        if a.is_ext and a.rbx_in and any(a.certs_head[:n]):
            problems.append(f"{a.where}: table head {a.certs_head[:n].hex()}, want {n} zero bytes")
        if a.is_ext and not a.rbx_in and host_wrote_certs(t, a):
            problems.append(f"{a.where}: RBX = 0 but the buffer was written (head "
                            f"{a.certs_head[:24].hex()}); the stub writes only when RBX != 0")
    if s.certs.rstrip(b"\0"):
        problems.append(f"{s.where}: guest kept {len(s.certs)} certificate bytes from an empty "
                        "table")
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# expectations about one step


def _first_or_all(s: StepResult, attempt: int | None) -> list[Attempt]:
    if attempt is None:
        return list(s.attempts)
    if attempt >= len(s.attempts):
        return []
    return [s.attempts[attempt]]


def expect_exit(t: Transcript, v: int, i: int, exitinfo2: int, *, exitinfo1: int = 0,
                attempt: int = 0, name: str = "step_result") -> CheckResult:
    """Attempt ``attempt`` of step ``i`` got exactly SW_EXITINFO1/2 = (exitinfo1, exitinfo2)."""
    s = _step_or_none(t, v, i)
    if s is None:
        return _fail(name, [f"vCPU {v} has no step {i} (run status {t.status}: {t.error})"])
    atts = _first_or_all(s, attempt)
    if not atts:
        return _fail(name, [f"{s.where} made {len(s.attempts)} attempt(s), no attempt {attempt}"])
    a = atts[0]
    if (a.sw_exitinfo1, a.sw_exitinfo2) != (exitinfo1, exitinfo2):
        return _fail(name, [f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2="
                            f"{a.sw_exitinfo2:#x}, want {exitinfo1:#x} and {exitinfo2:#x}"])
    return _ok(name, f"{a.where}: EXITINFO2={exitinfo2:#x}")


def expect_invalid_len(t: Transcript, v: int, i: int, *, pages: int | None = None,
                       attempt: int = 0) -> CheckResult:
    """The attempt got INVALID_LEN (exactly 1<<32) with RBX = ``pages`` (default: the blob's)."""
    name = "invalid_len_encoding"
    r = expect_exit(t, v, i, INVALID_LEN, attempt=attempt, name=name)
    if not r:
        return r
    a = t.step(v, i).attempts[attempt]
    want = pages if pages is not None else pages_for(len(t.cert_blob))
    if a.rbx_out != want:
        return _fail("invalid_len_rbx", [f"{a.where}: RBX={a.rbx_out} after INVALID_LEN, want "
                                         f"{want} pages for a {len(t.cert_blob)}-byte blob"])
    return _ok(name, f"{a.where}: INVALID_LEN, RBX={want}")


def expect_success(t: Transcript, v: int, i: int) -> CheckResult:
    """The step's final attempt completed (EXITINFO1 = EXITINFO2 = 0) and the response decrypted."""
    name = "request_completed"
    s = _step_or_none(t, v, i)
    if s is None:
        return _fail(name, [f"vCPU {v} has no step {i} (run status {t.status}: {t.error})"])
    a = s.last
    if a is None:
        return _fail(name, [f"{s.where}: no attempt made ({s.outcome_name})"])
    if not a.completed:
        return _fail(name, [f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2="
                            f"{a.sw_exitinfo2:#x}, want 0/0"])
    if s.decrypt_name != "OK":
        # a response under the wrong sequence number breaks seqno_advance (response = N + 1)
        prop = {"BAD_SEQNO": "seqno_advance", "BAD_HEADER": "response_header"}.get(
            s.decrypt_name, "response_authentic")
        return _fail(prop, [f"{s.where}: response did not decrypt ({s.decrypt_name}): response "
                            f"seqno {s.resp_seqno} for request seqno {a.seqno}"])
    if s.rsp_status != 0:
        return _fail(name, [f"{s.where}: MSG_REPORT_RSP status {s.rsp_status:#x}"])
    return _ok(name, f"{s.where}: {len(s.attempts)} attempt(s)")


def expect_ghcb_error(t: Transcript, v: int, i: int,
                      reasons: Iterable[int] = PAGE_ERROR_REASONS, attempt: int = 0) -> CheckResult:
    """KVM rejected the call as malformed: EXITINFO1 = 2 and EXITINFO2 one of ``reasons``."""
    name = "ghcb_error_code"
    reasons = tuple(reasons)
    s = _step_or_none(t, v, i)
    if s is None:
        return _fail(name, [f"vCPU {v} has no step {i} (run status {t.status}: {t.error})"])
    atts = _first_or_all(s, attempt)
    if not atts:
        return _fail(name, [f"{s.where} made no attempt {attempt}"])
    a = atts[0]
    if a.sw_exitinfo1 != GHCB_HV_RESP_MALFORMED_INPUT or a.sw_exitinfo2 not in reasons:
        return _fail(name, [f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2="
                            f"{a.sw_exitinfo2:#x}, want 2 and one of "
                            f"{'/'.join(map(str, reasons))}"])
    return _ok(name, f"{a.where}: malformed input, reason {a.sw_exitinfo2}")


def expect_kernel_answer(t: Transcript, v: int, i: int, *, attempt: int = 0,
                         shape: str | None = None, name: str = "kernel_answer") -> CheckResult:
    """Attempt ``attempt`` of step ``i`` got what the host's kernel generation answers for the
    step's bad-input shape (or ``shape``), as the registry row says: the GHCB error and reason,
    the VMM error, a firmware call, or a failed KVM_RUN."""
    s = _step_or_none(t, v, i)
    if s is None:
        return _fail(name, [f"vCPU {v} has no step {i} (run status {t.status}: {t.error})"])
    gen = generation_of(t)
    if attempt >= len(s.attempts):
        hit = kb.first_rule(gen, (shape,) if shape else ())
        if hit is not None and hit[1].outcome == kb.KVM_RUN_ERROR:
            return run_failed_with(t, None, hit[1].errno_name, name=name)
        return _fail(name, [f"{s.where} made no attempt {attempt}"])
    a = s.attempts[attempt]
    hit = kb.first_rule(gen, (shape,)) if shape else answering_rule(t, a)
    if hit is None:
        return _na(name, f"{a.where}: a well-formed request (no bad-input shape)")
    sh, r = hit
    if r.cert_exit and r.stage == kb.FIRMWARE_SETUP and not shape:
        # checked after the certificate exit: a non-zero VMM answer wins (v15 pages)
        e = cert_exit_of(t).get((a.vcpu, a.step, a.index))
        ret = _answer(e)[0] if e is not None else None
        if ret:
            sh = kb.certs_answer_shape(gen, ret)
            r = kb.rule(gen, sh)
    e1, e2 = a.sw_exitinfo1, a.sw_exitinfo2
    if r.outcome == kb.KVM_RUN_ERROR:
        return run_failed_with(t, None, r.errno_name, name=name)
    if r.outcome == kb.GHCB_ERROR:
        ok, want = (e1, e2) == (GHCB_HV_RESP_MALFORMED_INPUT, r.reason), f"2 and {r.reason}"
    elif r.outcome == kb.VMM_ERROR:
        vmm = r.vmm_error
        ok = e1 == 0 and (vmm is None or a.vmm_error == vmm) and (r.fw_bits == "any" or a.fw_status == 0)
        want = f"0 and {vmm:#x} << 32" if vmm is not None else "0 and the VMM's ret << 32"
        want += " | any" if r.fw_bits == "any" else ""
    elif r.outcome == kb.FIRMWARE:
        ok = e1 == 0 and (e2 == 0 or _fw_rejected(t, a))
        want = "0 and a firmware answer (0, or a firmware status)"
    else:
        ok, want = not a.ghcb_error, "no GHCB error"
    where = f"{sh} on kernel {gen}: {r.source}"
    if not ok:
        return _fail(name, [f"{a.where}: EXITINFO1={e1:#x} EXITINFO2={e2:#x}, want {want} ({where})"])
    return _ok(name, f"{a.where}: {r.outcome} ({where})")


def _step_or_none(t: Transcript, v: int, i: int) -> StepResult | None:
    try:
        return t.step(v, i)
    except TranscriptError:
        return None


# ---------------------------------------------------------------------------------------------
# certificates


def _parse(buf: bytes):
    from snplab.abi.cert_table import parse_table

    return parse_table(buf)


def cert_table_parses(t: Transcript, v: int, i: int) -> CheckResult:
    """The certificate bytes the guest got parse as a strict GHCB certificate table."""
    name = "cert_table_parses"
    s = t.step(v, i)
    if s.certs_truncated:
        return _fail(name, [f"{s.where}: table runs past the guest's buffer or store "
                            f"({len(s.certs)} bytes kept)"])
    try:
        table = _parse(s.certs)
    except ValueError as e:
        return _fail(name, [f"{s.where}: {e}"])
    return _ok(name, f"{s.where}: {len(table.entries)} entries, {len(s.certs)} bytes")


def cert_table_matches_blob(t: Transcript, v: int, i: int) -> CheckResult:
    """The table the guest got is byte-for-byte the blob the host served (up to its used end)."""
    name = "cert_table_matches_blob"
    s = t.step(v, i)
    blobs = t.served_blobs()
    if not blobs:
        return _na(name, "no served blob recorded")
    for b in blobs:
        try:
            used = _parse(b).used_length
        except ValueError:
            used = len(b)
        if s.certs == b[:used]:
            return _ok(name, f"{s.where}: {len(s.certs)} bytes equal the served blob")
    return _fail(name, [f"{s.where}: {len(s.certs)} bytes (sha {_short(s.certs)}) differ from the "
                        f"served blob(s) of {', '.join(str(len(b)) for b in blobs)} bytes"
                        + _first_diff(s.certs, blobs[0])])


def _short(b: bytes) -> str:
    import hashlib

    return hashlib.sha256(b).hexdigest()[:12]


def _first_diff(a: bytes, b: bytes) -> str:
    for k, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f", first difference at byte {k:#x}"
    return f", lengths {len(a)} vs {len(b)}" if len(a) != len(b) else ""


def cert_table_contents(t: Transcript, v: int, i: int, signer: str | None = None) -> CheckResult:
    """The table holds the signer's VEK (VCEK or VLEK), the ASK/ASVK and the ARK."""
    from snplab.abi.cert_table import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID

    name = "cert_table_contents"
    s = t.step(v, i)
    try:
        table = _parse(s.certs)
    except ValueError as e:
        return _fail(name, [f"{s.where}: unparseable: {e}"])
    signer = signer or t.scenario.signer
    vek = VLEK_GUID if signer == "vlek" else VCEK_GUID
    missing = [n for g, n in ((vek, signer.upper()), (ASK_GUID, "ASK/ASVK"), (ARK_GUID, "ARK"))
               if table.get(g) is None]
    if missing:
        return _fail(name, [f"{s.where}: no {', '.join(missing)} in the table"])
    return _ok(name, f"{s.where}: {signer.upper()}, ASK/ASVK and ARK present")


# ---------------------------------------------------------------------------------------------
# the report


def report_data_roundtrip(t: Transcript, v: int, i: int) -> CheckResult:
    """REPORT_DATA in the report is exactly what the step asked for (zero-padded to 64 bytes)."""
    from snplab.abi.report import REPORT_DATA_OFFSET, REPORT_DATA_SIZE

    name = "report_data_roundtrip"
    s = t.step(v, i)
    want = t.scenario.steps[v][i].padded_report_data
    got = s.report[REPORT_DATA_OFFSET:REPORT_DATA_OFFSET + REPORT_DATA_SIZE]
    if got != want:
        return _fail(name, [f"{s.where}: REPORT_DATA {got.hex()[:32]}..., want {want.hex()[:32]}..."])
    return _ok(name, s.where)


def report_vmpl(t: Transcript, v: int, i: int) -> CheckResult:
    """The report's VMPL is the one MSG_REPORT_REQ asked for."""
    from snplab.abi.report import VMPL_OFFSET

    name = "report_vmpl"
    s = t.step(v, i)
    want = t.scenario.steps[v][i].vmpl
    got = int.from_bytes(s.report[VMPL_OFFSET:VMPL_OFFSET + 4], "little")
    if got != want:
        return _fail(name, [f"{s.where}: report VMPL {got}, the request asked for {want}"])
    return _ok(name, f"{s.where}: VMPL {want}")


def expect_report_refused(t: Transcript, v: int, i: int, *,
                          name: str = "report_refused") -> CheckResult:
    """The exchange completed but the firmware granted no report (MSG_REPORT_RSP.status != 0,
    report_size 0)."""
    s = _step_or_none(t, v, i)
    if s is None or s.last is None:
        return _fail(name, [f"vCPU {v} step {i} made no attempt (run status {t.status})"])
    if not s.last.completed or s.decrypt_name != "OK":
        return _fail(name, [f"{s.where}: exchange did not complete (EXITINFO2="
                            f"{s.last.sw_exitinfo2:#x}, {s.decrypt_name})"])
    if s.rsp_status == 0 or s.has_report:
        return _fail(name, [f"{s.where}: MSG_REPORT_RSP status {s.rsp_status:#x} with a report, "
                            "want a refusal"])
    return _ok(name, f"{s.where}: refused with status {s.rsp_status:#x}")


def _trust_from(t: Transcript, trust: Any) -> Any:
    """The trust store to use: the one given, else the emulated roots carried in the transcript
    (accepted unpinned: they are the emulated platform's own, never AMD's)."""
    if trust is not None:
        return trust
    pem = t.trust.get("roots") if t.platform == "emulated" else None
    if not pem:
        return None
    from snplab.attest.trust import TrustStore

    return TrustStore.from_pem(pem, pinned=False, label="emulated roots (transcript)")


# Verifier check name (snplab.attest.verify.CHECK_ORDER) -> the suite property it establishes.
VERIFIER_PROPERTIES = {
    "report_parse": "report_parses", "cert_table": "cert_table_parses",
    "chain_parse": "vek_chain", "vek_parse": "vek_chain", "product": "vek_chain",
    "chain_ark_self_signed": "vek_chain", "chain_ark_pinned": "vek_chain",
    "chain_ask": "vek_chain", "chain_vek": "vek_chain", "validity": "vek_chain",
    "signature_algo": "report_signature", "signature": "report_signature",
    "reported_tcb": "reported_tcb", "chip_id": "chip_id", "signing_key": "signing_key",
    "report_format": "report_format",
}


def _at_kw(at: Any) -> dict[str, Any]:
    """``at`` for the verifier only when the caller chose one (its default is now)."""
    return {} if at is _DEFAULT_AT else {"at": at}


_DEFAULT_AT: Any = object()


def report_verifies(t: Transcript, v: int, i: int, trust: Any = None,
                    at: Any = _DEFAULT_AT) -> CheckResult:
    """The report verifies with the VEK the host returned in the certificate table and chains to
    a trusted root; its REPORTED_TCB and CHIP_ID match the VEK (``snplab.attest.verify``)."""
    name = "report_verifies"
    s = t.step(v, i)
    trust = _trust_from(t, trust)
    if trust is None:
        return _na(name, "no trust anchors")
    from snplab.attest.verify import verify_from_cert_table

    verdict = verify_from_cert_table(s.report, s.certs, trust, **_at_kw(at))
    return _from_verdict(name, s.where, verdict)


def report_verifies_with(t: Transcript, v: int, i: int, vek: bytes, chain: Any = None,
                         trust: Any = None, at: Any = _DEFAULT_AT) -> CheckResult:
    """The report verifies with a VEK the test supplies (stub ABI: certificates fetched
    elsewhere, as a real user would from AMD's KDS)."""
    name = "report_verifies"
    s = t.step(v, i)
    trust = _trust_from(t, trust)
    if trust is None:
        return _na(name, "no trust anchors")
    from snplab.attest.verify import verify_report

    verdict = verify_report(s.report, vek, trust, chain=chain, **_at_kw(at))
    return _from_verdict(name, s.where, verdict)


def _from_verdict(name: str, where: str, verdict: Any) -> CheckResult:
    if verdict.ok:
        return _ok(name, f"{where}: {len(verdict.checks)} checks passed ({verdict.signer}, "
                         f"report v{verdict.report_version})")
    first = verdict.first_failure
    cname = first.name if first is not None else "input"
    detail = first.detail if first is not None else (verdict.input_error or "")
    return _fail(VERIFIER_PROPERTIES.get(cname, name), [f"{where}: {cname}: {detail}"])


def measurement_matches(t: Transcript) -> CheckResult:
    """The launch MEASUREMENT (and each report's) equals the digest ``snplab.attest.measure``
    predicts from the launch sequence the VMM recorded, independently of the PSP."""
    from snplab.abi.report import MEASUREMENT_OFFSET, MEASUREMENT_SIZE

    name = "measurement_matches"
    try:
        from snplab.attest import measure
    except ImportError:
        return _na(name, "snplab.attest.measure not available")
    if not t.launch_log:
        return _na(name, "no launch log recorded")
    try:
        predicted = measure.predict_from_transcript({"launch_log": t.launch_log})
    except ValueError as e:
        return _fail(name, [f"launch log unusable for the prediction: {e}"])
    problems = []
    if t.measurement and bytes.fromhex(t.measurement) != predicted:
        problems.append(f"launch digest {t.measurement[:24]}..., predicted {predicted.hex()[:24]}...")
    reports = 0
    for s in t.all_steps():
        if s.has_report:
            reports += 1
            got = s.report[MEASUREMENT_OFFSET:MEASUREMENT_OFFSET + MEASUREMENT_SIZE]
            if got != predicted:
                problems.append(f"{s.where}: report MEASUREMENT {got.hex()[:24]}..., predicted "
                                f"{predicted.hex()[:24]}...")
    return _verdict(name, problems, f"{predicted.hex()[:16]}... in {reports} report(s)")


# ---------------------------------------------------------------------------------------------
# the host's side of an exchange: exit arguments, writes, firmware calls


def cert_exit_args(t: Transcript) -> CheckResult:
    """Each certificate exit carries the guest's RAX and RBX unchanged (``gpa``/``npages`` are
    u64: nothing truncated or rounded on the way to the VMM)."""
    name = "cert_exit_args"
    problems = []
    pairs = cert_exit_of(t)
    for a in t.all_attempts():
        e = pairs.get((a.vcpu, a.step, a.index))
        if e is None:
            continue
        gpa, npages = e.get("gpa", e.get("data_gpa")), e.get("npages", e.get("data_npages"))
        if (gpa, npages) != (a.rax_in, a.rbx_in):
            problems.append(f"{a.where}: exit gpa={gpa:#x} npages={npages}, the guest sent "
                            f"RAX={a.rax_in:#x} RBX={a.rbx_in}")
    return _verdict(name, problems)


def _answers_scripted_enospc(t: Transcript, e: Mapping[str, Any] | None) -> bool:
    """The scenario scripted ENOSPC (or a page count) for this certificate exit."""
    if e is None:
        return False
    exits = t.cert_exits()
    k = next((n for n, x in enumerate(exits) if x is e), None)
    answers = t.scenario.cert_answers
    return k is not None and k < len(answers) and (
        answers[k] == "ENOSPC" or answers[k].startswith("enospc-npages:"))


def invalid_len_justified(t: Transcript) -> CheckResult:
    """INVALID_LEN only when the guest's buffer is too small: never for RBX >= the pages every
    blob the host served needs (unless the test scripted ENOSPC)."""
    name = "invalid_len_justified"
    blobs = t.served_blobs()
    if not blobs:
        return _ok(name, "no served blob recorded")
    need = max(pages_for(len(b)) for b in blobs)
    pairs = cert_exit_of(t)
    problems = [f"{a.where}: INVALID_LEN for RBX={a.rbx_in} pages, the blob needs {need}"
                for a in _invalid_len_attempts(t)
                if a.rbx_in >= need and not _answers_scripted_enospc(t, pairs.get(
                    (a.vcpu, a.step, a.index)))]
    return _verdict(name, problems)


def certs_within_buffer(t: Transcript) -> CheckResult:
    """The VMM writes certificate bytes only inside the guest's buffer (gpa, npages pages)."""
    name = "certs_within_buffer"
    problems = []
    for r in t.host.get("responder") or ():
        n, at = int(r.get("written_len") or 0), r.get("written_gpa")
        if not n or at is None:
            continue
        end, limit = int(at) + n, int(r["gpa"]) + int(r["npages"]) * 4096
        if int(at) < int(r["gpa"]) or end > limit:
            problems.append(f"vCPU {r.get('vcpu')}: {n} bytes written at {int(at):#x}, the buffer "
                            f"is {r['npages']} page(s) at {int(r['gpa']):#x}")
    return _verdict(name, problems)


def host_error_no_response(t: Transcript) -> CheckResult:
    """A request refused by KVM or the VMM (GHCB error, INVALID_LEN, BUSY, generic) leaves the
    guest's response page untouched (the guest zeroes it before every exit)."""
    name = "host_error_no_response"
    problems = [f"{a.where}: EXITINFO1={a.sw_exitinfo1:#x} EXITINFO2={a.sw_exitinfo2:#x} yet the "
                "response page was written" for a in t.all_attempts()
                if _host_error(t, a) and a.resp_written]
    return _verdict(name, problems)


def firmware_call_per_request(t: Transcript) -> CheckResult:
    """Every guest request KVM forwarded was handed to the firmware exactly once (the
    firmware's own log against KVM's; emulated platform)."""
    name = "firmware_call_per_request"
    psp_log = t.host.get("psp_log")
    if psp_log is None:
        return _ok(name, "no firmware log (not the emulated platform)")
    forwarded = sum(1 for m in t.message_log if m.get("reached_firmware"))
    if len(psp_log) != forwarded:
        return _fail(name, [f"the firmware processed {len(psp_log)} message(s) for {forwarded} "
                            "request(s) KVM forwarded"])
    return _ok(name, f"{forwarded} firmware call(s)")


def message_within_page(t: Transcript) -> CheckResult:
    """No guest message claims more than one page (header + msg_sz <= 4096), as KVM saw it."""
    name = "message_within_page"
    problems = []
    for m in t.message_log:
        sz = m.get("msg_sz")
        if sz is not None and int(m.get("hdr_sz") or 0x60) + int(sz) > 4096:
            problems.append(f"vCPU {m.get('vcpu')} seqno {m.get('seqno')}: header + msg_sz "
                            f"{int(m.get('hdr_sz') or 0x60)} + {sz} > 4096")
    return _verdict(name, problems)


def _well_formed_step(t: Transcript, v: int, i: int) -> bool:
    """The step sends an ordinary message the firmware must accept under the right seqno."""
    st = _scenario_step(t, v, i)
    return (st is not None and st.seqno is None and st.pages == "normal" and st.msg_version == 1
            and st.msg_type in (MSG_REPORT_REQ, MSG_KEY_REQ))


def firmware_accepts_next_seqno(t: Transcript) -> CheckResult:
    """A well-formed message under the guest's next sequence number (1, then +2 per completed
    exchange) is accepted by the firmware: the firmware's counter follows the same rule."""
    name = "firmware_accepts_next_seqno"
    problems = []
    users = _vmpck_users(t)
    for v in range(t.nvcpus):
        expected: dict[int, int | None] = {}
        for s in t.steps(v):
            for a in s.attempts:
                k = a.vmpck
                if len(users.get(k, {v})) > 1:
                    continue
                if not _well_formed_step(t, v, s.index):
                    expected[k] = None  # a deliberate replay, skip or malformed message
                    continue
                want = expected.get(k, 1)
                if want is not None and a.seqno == want and _fw_rejected(t, a):
                    problems.append(f"{a.where}: the firmware rejected seqno {a.seqno} (status "
                                    f"{a.fw_status:#x}), the next one after the completed "
                                    "exchanges")
                if a.completed:
                    expected[k] = a.seqno + 2
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# the guest's policy (what a Linux-style guest does with INVALID_LEN and BUSY)


def _max_attempts(t: Transcript) -> int:
    """Attempt slots per step (SNPLAB_MAX_ATTEMPTS from the payload's DWARF)."""
    return int(t.enums.get("snplab_limits", {}).get("SNPLAB_MAX_ATTEMPTS", 8))


def busy_retried(t: Transcript) -> CheckResult:
    """A Linux-policy step that got BUSY with retries left resends the message."""
    name = "busy_retried"
    problems = []
    for s in t.all_steps():
        st = _scenario_step(t, s.vcpu, s.index)
        if st is None or st.policy != "linux" or not s.attempts:
            continue
        last = s.attempts[-1]
        resends = sum(1 for a, b in zip(s.attempts, s.attempts[1:])
                      if a.vmm_error == SNP_GUEST_VMM_ERR_BUSY)
        if (last.vmm_error == SNP_GUEST_VMM_ERR_BUSY and not last.ghcb_error
                and resends < st.max_busy_retries and len(s.attempts) < _max_attempts(t)):
            problems.append(f"{last.where}: BUSY with {st.max_busy_retries - resends} retr"
                            "ies left, and the guest gave up")
    return _verdict(name, problems)


def invalid_len_retry_pages(t: Transcript) -> CheckResult:
    """A Linux-policy step told INVALID_LEN with RBX = N pages (that fit the guest's area) asks
    again with at least N pages once its plain resend completed."""
    name = "invalid_len_retry_pages"
    problems = []
    for s in t.all_steps():
        st = _scenario_step(t, s.vcpu, s.index)
        if st is None or st.policy != "linux":
            continue
        for k, a in enumerate(s.attempts):
            if a.vmm_error != SNP_GUEST_VMM_ERR_INVALID_LEN or not a.is_ext or a.ghcb_error:
                continue
            rest = s.attempts[k + 1:]
            if not rest or not rest[0].completed or len(s.attempts) >= _max_attempts(t) \
                    or a.rbx_out > CERTS_MAX_PAGES:
                continue  # the resend did not complete, or no room to ask again
            if not any(b.is_ext and b.rbx_in >= a.rbx_out for b in rest[1:]):
                problems.append(f"{a.where}: INVALID_LEN asked for {a.rbx_out} pages; the guest "
                                "never asked again with that many")
    return _verdict(name, problems)


# ---------------------------------------------------------------------------------------------
# bundles


INVARIANTS: tuple[Callable[[Transcript], CheckResult], ...] = (
    invalid_len_encoding, invalid_len_rbx, invalid_len_no_write, invalid_len_justified,
    cert_exits_match_requests, cert_exit_args, certs_within_buffer, seqno_advance, no_iv_reuse,
    busy_resent_identical, host_error_no_seqno, host_error_no_response, firmware_error_no_seqno,
    firmware_accepts_next_seqno, firmware_call_per_request, message_within_page, busy_retried,
    invalid_len_retry_pages)


def invariants(t: Transcript, *, skip: Iterable[str] = ()) -> list[CheckResult]:
    """Every invariant's verdict on ``t`` (those named in ``skip`` left out)."""
    skip = set(skip)
    out = []
    for f in INVARIANTS:
        if f.__name__ in skip:
            continue
        try:
            r = f(t)
        except TranscriptError as e:
            r = _fail(f.__name__, [str(e)])
        if r.name not in skip:
            out.append(r)
    return out


def step_verdicts(t: Transcript, v: int, i: int, trust: Any = None,
                  at: Any = _DEFAULT_AT) -> list[CheckResult]:
    """Everything that must hold of a successful extended report request step."""
    out = [expect_success(t, v, i)]
    if not out[0]:
        return out
    out += [cert_table_parses(t, v, i), cert_table_matches_blob(t, v, i),
            cert_table_contents(t, v, i), report_data_roundtrip(t, v, i), report_vmpl(t, v, i),
            report_verifies(t, v, i, trust, at)]
    return out


# ---------------------------------------------------------------------------------------------
# assert_* forms


def _asserting(f: Callable[..., CheckResult]) -> Callable[..., CheckResult]:
    def wrapper(t: Transcript, *args: Any, **kw: Any) -> CheckResult:
        return require(f(t, *args, **kw), t)

    wrapper.__name__ = "assert_" + f.__name__
    wrapper.__qualname__ = wrapper.__name__
    wrapper.__doc__ = f"Raise CheckFailed unless: {(f.__doc__ or '').strip()}"
    return wrapper


def assert_all(results: Iterable[CheckResult], t: Transcript | None = None,
               allow_na: bool = True) -> None:
    """Record all ``results`` and raise CheckFailed for the first violated one (skips not-judged
    results when ``allow_na``)."""
    results = list(results)
    RECORDED.extend(results)
    for r in results:
        if r.ok is False:
            raise CheckFailed(r, t.summary() if t is not None else "")
    if not allow_na:
        for r in results:
            if r.ok is None:
                raise CheckNotApplicable(r.message)


def assert_invariants(t: Transcript, *, skip: Iterable[str] = ()) -> None:
    """Raise CheckFailed naming the first invariant ``t`` violates."""
    assert_all(invariants(t, skip=skip), t)


def assert_step_verified(t: Transcript, v: int, i: int, trust: Any = None,
                         at: Any = _DEFAULT_AT) -> None:
    """Raise CheckFailed unless step ``i`` of vCPU ``v`` completed with a table equal to the
    served blob and a report that verifies against it."""
    assert_all(step_verdicts(t, v, i, trust, at), t, allow_na=False)


assert_run_completed = _asserting(run_completed)
assert_run_failed_with = _asserting(run_failed_with)
assert_cert_exits_match_requests = _asserting(cert_exits_match_requests)
assert_invalid_len_encoding = _asserting(invalid_len_encoding)
assert_invalid_len_rbx = _asserting(invalid_len_rbx)
assert_invalid_len_no_write = _asserting(invalid_len_no_write)
assert_seqno_advance = _asserting(seqno_advance)
assert_no_iv_reuse = _asserting(no_iv_reuse)
assert_busy_resent_identical = _asserting(busy_resent_identical)
assert_host_error_no_seqno = _asserting(host_error_no_seqno)
assert_firmware_error_no_seqno = _asserting(firmware_error_no_seqno)
assert_firmware_rejected = _asserting(expect_firmware_rejected)
assert_stub_no_vmm_errors = _asserting(stub_no_vmm_errors)
assert_stub_empty_table = _asserting(stub_empty_table)
assert_exit = _asserting(expect_exit)
assert_invalid_len = _asserting(expect_invalid_len)
assert_success = _asserting(expect_success)
assert_ghcb_error = _asserting(expect_ghcb_error)
assert_kernel_answer = _asserting(expect_kernel_answer)
assert_cert_table_parses = _asserting(cert_table_parses)
assert_cert_table_matches_blob = _asserting(cert_table_matches_blob)
assert_cert_table_contents = _asserting(cert_table_contents)
assert_report_data_roundtrip = _asserting(report_data_roundtrip)
assert_report_verifies = _asserting(report_verifies)
assert_report_verifies_with = _asserting(report_verifies_with)
assert_measurement_matches = _asserting(measurement_matches)
assert_report_vmpl = _asserting(report_vmpl)
assert_report_refused = _asserting(expect_report_refused)
assert_cert_exit_args = _asserting(cert_exit_args)
assert_invalid_len_justified = _asserting(invalid_len_justified)
assert_certs_within_buffer = _asserting(certs_within_buffer)
assert_host_error_no_response = _asserting(host_error_no_response)
assert_firmware_call_per_request = _asserting(firmware_call_per_request)
assert_firmware_accepts_next_seqno = _asserting(firmware_accepts_next_seqno)
assert_message_within_page = _asserting(message_within_page)
assert_busy_retried = _asserting(busy_retried)
assert_invalid_len_retry_pages = _asserting(invalid_len_retry_pages)

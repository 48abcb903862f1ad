"""The payload's step interpreter (guest-payloads/src/steps.c) on the host, against the harness's
fake KVM + PSP (guest-payloads/host/fake_hv.c): retry policies, sequence numbers, the IV-reuse
oracle, certificate bookkeeping and hostile host answers.  This is the same C code the guest
runs; only the GHCB exit is replaced by the fake (test-only; not evidence of KVM behaviour)."""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass, field

import pytest
from payload_abi import abi

from snplab.payload import run_harness

VCEK = bytes.fromhex("63da758de6644564adc5f4b93be8accd")
ASK = bytes.fromhex("4ab7b379bbac4fe4a02f05aef327c782")
ARK = bytes.fromhex("c0b406a4a803495297433fb6014cd0ae")
EXT, REQ = 0x80000012, 0x80000011
AREA = 0x410000                    # vCPU 0 certificate area (docs/contract.md memory map)
PRIVATE = 0x380000                 # vCPU 0 private scratch page
INVALID_LEN, BUSY = 1 << 32, 2 << 32



def out(name: str) -> int:
    return abi()[f"SNPLAB_OUT_{name}"]


def fake_blob(need: int) -> bytes:
    """The certificate blob fake_hv.c serves (three entries + terminator, then data)."""
    n = need * 4096 - 123
    data = n - 96
    l1 = l2 = data // 3
    l3 = data - l1 - l2
    table = b"".join(g + struct.pack("<II", o, ln) for g, o, ln in
                     ((VCEK, 96, l1), (ASK, 96 + l1, l2), (ARK, 96 + l1 + l2, l3))) + bytes(24)
    return table + bytes((i * 7 + 3) & 0xFF for i in range(96, n))


_TEXT_FIELDS = {"tag", "ct", "head", "report_data", "answer", "tamper", "seqno_next"}


def _kv(tokens: list[str]) -> dict[str, object]:
    d: dict[str, object] = {}
    for t in tokens:
        k, _, v = t.partition("=")
        d[k] = v if k in _TEXT_FIELDS else int(v, 0)
    return d


@dataclass
class Run:
    blob_len: int = 0
    msgs: list[dict] = field(default_factory=list)       # every request seen at a VMGEXIT
    fw: list[dict] = field(default_factory=list)         # firmware calls
    certexits: list[dict] = field(default_factory=list)
    vcpus: dict[int, dict] = field(default_factory=dict)
    steps: dict[tuple[int, int], dict] = field(default_factory=dict)
    attempts: dict[tuple[int, int], list[dict]] = field(default_factory=lambda: defaultdict(list))
    store: dict[int, bytes] = field(default_factory=dict)

    def step(self, i: int, v: int = 0) -> dict:
        return self.steps[(v, i)]

    def att(self, i: int, v: int = 0) -> list[dict]:
        return self.attempts[(v, i)]

    def reused_ivs(self) -> dict[tuple[int, int], set]:
        """(vmpck, seqno) seen with more than one different (ciphertext, tag)."""
        seen: dict[tuple[int, int], set] = defaultdict(set)
        for m in self.msgs:
            seen[(m["vmpck"], m["seqno"])].add((m["ct"], m["tag"]))
        return {k: v for k, v in seen.items() if len(v) > 1}


def run(steps: list[dict], need: int = 3, answers: str = "", resp: str = "",
        vcpus: int = 1) -> Run:
    cmds = [f"run need={need} vcpus={vcpus}" + (f" answers={answers}" if answers else "")
            + (f" resp={resp}" if resp else "")]
    for s in steps:
        cmds.append("step " + " ".join(f"{k}={v}" for k, v in s.items()))
    cmds.append("go")
    r = Run()
    for line in run_harness(cmds):
        kind, *rest = line.split()
        if kind == "blob":
            r.blob_len = int(_kv(rest)["len"])  # type: ignore[arg-type]
        elif kind == "msg":
            r.msgs.append(_kv(rest))
        elif kind == "fw":
            r.fw.append(_kv(rest))
        elif kind == "certexit":
            r.certexits.append(_kv(rest))
        elif kind == "vcpu":
            r.vcpus[int(rest[0])] = _kv(rest[1:])
        elif kind == "step":
            r.steps[(int(rest[0]), int(rest[1]))] = _kv(rest[2:])
        elif kind == "att":
            r.attempts[(int(rest[0]), int(rest[1]))].append(_kv(rest[3:]))
        elif kind == "store":
            r.store[int(rest[0])] = bytes.fromhex(rest[1].replace("-", ""))
    return r


def ext(npages: int, policy: str = "LINUX", **kw: object) -> dict:
    return {"op": abi()["SNPLAB_OP_EXT_REQ"], "policy": abi()[f"SNPLAB_POLICY_{policy}"],
            "npages": npages, **kw}


def seqno_next(r: Run, vmpck: int = 0, v: int = 0) -> int:
    return int(str(r.vcpus[v]["seqno_next"]).split(",")[vmpck], 16)


NEED = 3


def test_linux_policy_over_buffer_sizes() -> None:
    sizes = [0, 1, NEED - 1, NEED, NEED + 1, 64]
    rds = [bytes([i + 1]) * 64 for i in range(len(sizes))]
    r = run([ext(n, rd=rd.hex()) for n, rd in zip(sizes, rds)], need=NEED)
    blob = fake_blob(NEED)
    assert r.blob_len == len(blob)
    consumed = []
    for i, n in enumerate(sizes):
        s, a = r.step(i), r.att(i)
        assert s["outcome"] == out("OK") and s["decrypt"] == abi()["SNPLAB_DEC_OK"]
        assert bytes.fromhex(str(s["report_data"])) == rds[i]
        assert s["certs_len"] == len(blob) and s["trunc"] == 0
        assert r.store[0][s["store_off"]:s["store_off"] + s["certs_len"]] == blob
        final = a[-1]
        assert final["exit"] == EXT and final["info2"] == 0 and final["rbx_in"] == max(n, NEED)
        assert bytes.fromhex(str(final["head"])) == blob[:32]
        if n < NEED:
            first, resend = a[0], a[1]
            assert len(a) == 3
            assert (first["exit"], first["info2"], first["rbx_out"]) == (EXT, INVALID_LEN, NEED)
            assert bytes.fromhex(str(first["head"])) == bytes([abi()["SNPLAB_CERTS_CANARY"]]) * 32  # the host wrote nothing
            # the byte-identical request again, as a plain guest request
            assert (resend["exit"], resend["resent"], resend["info2"]) == (REQ, 1, 0)
            assert (resend["seqno"], resend["tag"]) == (first["seqno"], first["tag"])
            assert final["seqno"] == first["seqno"] + 2 and final["resent"] == 0
        else:
            assert len(a) == 1
        consumed += [x["seqno"] for x in a if x["info2"] == 0]
    assert consumed == list(range(1, 2 * len(consumed), 2))       # 1, 3, 5, ...
    assert seqno_next(r) == 2 * len(consumed) + 1
    assert r.reused_ivs() == {}
    assert [f["seqno"] for f in r.fw] == consumed
    assert r.vcpus[0]["store_used"] == len(blob)     # one copy of a repeated blob


def test_naive_policy_reuses_the_sequence_number() -> None:
    rd = bytes(range(64))
    r = run([ext(0, "NAIVE", rd=rd.hex())], need=NEED)
    a = r.att(0)
    assert [(x["exit"], x["seqno"], x["resent"], x["info2"]) for x in a] == \
        [(EXT, 1, 0, INVALID_LEN), (EXT, 1, 0, 0)]
    assert a[0]["tag"] != a[1]["tag"] and a[1]["rbx_in"] == NEED
    assert r.step(0)["outcome"] == out("OK")
    # the fresh request carried REPORT_DATA with byte 63 incremented
    assert bytes.fromhex(str(r.step(0)["report_data"])) == rd[:63] + bytes([rd[63] + 1])
    assert set(r.reused_ivs()) == {(0, 1)}


def test_none_policy_records_and_moves_on() -> None:
    r = run([ext(0, "NONE"), ext(NEED, "NONE", rd="01")], need=NEED)
    assert r.step(0)["outcome"] == out("INVALID_LEN") and len(r.att(0)) == 1
    # nothing was consumed, so the next request reuses seqno 1 with a new plaintext: `none` is
    # the raw behaviour the suite must flag
    assert r.att(1)[0]["seqno"] == 1 and r.step(1)["outcome"] == out("OK")
    assert set(r.reused_ivs()) == {(0, 1)}
    assert seqno_next(r) == 3


def test_busy_is_retried_with_identical_bytes() -> None:
    r = run([ext(NEED)], answers="busy,busy")
    a = r.att(0)
    assert [(x["info2"], x["resent"]) for x in a] == [(BUSY, 0), (BUSY, 1), (0, 1)]
    assert len({(x["seqno"], x["tag"], x["exit"], x["rbx_in"]) for x in a}) == 1
    assert r.step(0)["outcome"] == out("OK") and r.reused_ivs() == {}


def test_busy_retries_are_bounded() -> None:
    r = run([ext(NEED, busy=1)], answers="busy,busy,busy")
    assert [x["info2"] for x in r.att(0)] == [BUSY, BUSY]
    assert r.step(0)["outcome"] == out("BUSY") and seqno_next(r) == 1


@pytest.mark.parametrize("policy", ["LINUX", "NAIVE"])
def test_hostile_rbx_is_capped(policy: str) -> None:
    r = run([ext(0, policy)], answers="enospc:0xffffffff")
    a = r.att(0)
    assert a[0]["rbx_out"] == 0xFFFFFFFF and r.step(0)["outcome"] == out("INVALID_LEN")
    if policy == "LINUX":   # the seqno is still consumed by the identical plain resend
        assert [x["exit"] for x in a] == [EXT, REQ] and seqno_next(r) == 3
    else:
        assert len(a) == 1 and seqno_next(r) == 1
    assert len(r.certexits) == 1


def test_generic_vmm_error_consumes_nothing() -> None:
    r = run([ext(NEED), ext(NEED)], answers="eio")
    assert r.step(0)["outcome"] == out("VMM_ERROR")
    assert r.att(0)[0]["info2"] == 0xFFFFFFFF_00000000
    assert r.att(1)[0]["seqno"] == 1 and r.step(1)["outcome"] == out("OK")


@pytest.mark.parametrize("answer,npages", [("garbage", 8), ("hugeoff", 4)])
def test_garbage_certificate_tables_stay_in_bounds(answer: str, npages: int) -> None:
    r = run([ext(npages)], answers=answer)
    s = r.step(0)
    assert s["outcome"] == out("OK") and s["trunc"] == 1
    assert s["certs_len"] == npages * 4096 == len(r.store[0])


def test_certificate_store_overflow_is_truncated() -> None:
    r = run([ext(64), ext(64)], answers="garbage,garbage")
    store = abi()["SNPLAB_CERT_STORE_SIZE"]
    assert r.step(0)["certs_len"] == store and r.step(0)["trunc"] == 1
    assert r.step(1)["certs_len"] == 0 and r.step(1)["trunc"] == 1
    assert r.step(1)["store_off"] == store and r.vcpus[0]["store_used"] == store


@pytest.mark.parametrize("mode,dec", [("badtag", "BAD_TAG"), ("badseqno", "BAD_SEQNO"),
                                      ("badhdr", "BAD_HEADER"), ("bigsize", "BAD_SIZE")])
def test_tampered_responses_fail_decryption_but_consume_the_seqno(mode: str, dec: str) -> None:
    r = run([ext(NEED), ext(NEED)], resp=mode)
    s = r.step(0)
    assert s["outcome"] == out("DECRYPT_FAIL") and s["decrypt"] == abi()[f"SNPLAB_DEC_{dec}"]
    assert bytes.fromhex(str(s["report_data"])) == bytes(64)      # nothing kept
    assert r.att(1)[0]["seqno"] == 3 and r.step(1)["outcome"] == out("OK")


@pytest.mark.parametrize("pages,expect", [("SAME", "GHCB_ERROR"), ("MISALIGNED_REQ", "GHCB_ERROR"),
                                          ("PRIVATE_REQ", "FW_ERROR")])
def test_bad_request_pages_consume_nothing(pages: str, expect: str) -> None:
    r = run([ext(NEED, pages=abi()[f"SNPLAB_PAGES_{pages}"]), ext(NEED)])
    a = r.att(0)[0]
    assert r.step(0)["outcome"] == out(expect)
    if pages == "SAME":
        assert a["req"] == a["resp"]
    if pages == "MISALIGNED_REQ":
        assert a["req"] % 4096 == 8
    if pages == "PRIVATE_REQ":
        assert a["req"] == PRIVATE and a["info2"] == 0x16
    assert r.att(1)[0]["seqno"] == 1 and r.step(1)["outcome"] == out("OK")


def test_private_certificate_buffer_is_not_read_back() -> None:
    r = run([ext(NEED, pages=abi()["SNPLAB_PAGES_PRIVATE_CERTS"])])
    a, s = r.att(0)[0], r.step(0)
    assert a["rax"] == PRIVATE and s["outcome"] == out("OK")
    assert s["certs_len"] == 0 and a["head"] == "00" * 32


def test_absolute_certificate_gpa_outside_ram() -> None:
    flags = abi()["SNPLAB_STEP_CERTS_GPA_ABS"]
    r = run([ext(NEED, flags=flags, gpa=0x4000_0000)])   # the harness aborts if touched
    assert r.att(0)[0]["rax"] == 0x4000_0000 and r.step(0)["certs_len"] == 0


def test_misaligned_certificate_gpa() -> None:
    r = run([ext(NEED, offset=8)])
    assert r.att(0)[0]["rax"] == AREA + 8 and r.step(0)["outcome"] == out("GHCB_ERROR")


@pytest.mark.parametrize("flag", ["NO_RAX_VALID", "NO_RBX_VALID"])
def test_missing_valid_bits(flag: str) -> None:
    r = run([ext(NEED, flags=abi()[f"SNPLAB_STEP_{flag}"])])
    assert r.step(0)["outcome"] == out("GHCB_ERROR") and r.att(0)[0]["info2"] == 5
    assert seqno_next(r) == 1


def test_seqno_override_replay_is_refused() -> None:
    r = run([ext(NEED), ext(NEED, flags=abi()["SNPLAB_STEP_SEQNO_OVERRIDE"], seqno=1), ext(NEED)])
    assert r.att(1)[0]["seqno"] == 1 and r.step(1)["outcome"] == out("FW_ERROR")
    assert r.att(2)[0]["seqno"] == 3 and r.step(2)["outcome"] == out("OK")


def test_plain_request_and_other_message_types() -> None:
    req = {"op": abi()["SNPLAB_OP_REQ"], "policy": abi()["SNPLAB_POLICY_LINUX"], "npages": 5}
    r = run([req, ext(NEED, type=3)])
    assert r.att(0)[0]["exit"] == REQ and r.att(0)[0]["rbx_in"] == 0
    assert r.step(0)["outcome"] == out("OK") and r.step(0)["certs_len"] == 0
    # an extended request that is not MSG_REPORT_REQ is a plain request for KVM: no cert exit
    assert r.att(1)[0]["exit"] == EXT and r.step(1)["resp_type"] == 4
    assert r.certexits == [] and r.step(1)["outcome"] == out("OK")


def test_script_control() -> None:
    term = {"op": abi()["SNPLAB_OP_TERMINATE"], "vmpl": 0}
    r = run([ext(NEED), term, ext(NEED)])
    assert r.vcpus[0]["code"] == abi()["SNPLAB_TERM_SCRIPTED"] and r.vcpus[0]["nsteps"] == 2
    assert (0, 2) not in r.steps
    r = run([{"op": abi()["SNPLAB_OP_TERMINATE"], "vmpl": 0x17}])
    assert r.vcpus[0]["code"] == 0x17
    r = run([ext(NEED), {"op": abi()["SNPLAB_OP_END"]}, ext(NEED)])
    assert r.vcpus[0]["code"] == abi()["SNPLAB_TERM_DONE"] and r.vcpus[0]["nsteps"] == 1


@pytest.mark.parametrize("bad", [{"vmpck": 4}, {"pages": 9}, {"policy": 7}, {"op": 9}])
def test_invalid_steps_are_refused(bad: dict) -> None:
    r = run([{**ext(NEED), **bad}])
    assert r.step(0)["outcome"] == out("BAD_PARAMS") and r.step(0)["nattempts"] == 0
    assert r.msgs == []


def test_vcpus_share_the_per_vmpck_counter() -> None:
    r = run([ext(NEED, vcpu=0), ext(NEED, vcpu=1), ext(NEED, vcpu=1, vmpck=1)], vcpus=2)
    assert r.att(0, v=0)[0]["seqno"] == 1
    assert r.att(0, v=1)[0]["seqno"] == 3          # same VMPCK: the guest-wide counter
    assert r.att(1, v=1)[0]["seqno"] == 1 and r.att(1, v=1)[0]["vmpck"] == 1
    assert r.att(0, v=1)[0]["req"] == 0x501000     # vCPU 1's own slice
    assert all(r.step(i, v)["outcome"] == out("OK") for v, i in r.steps)
    assert r.reused_ivs() == {}

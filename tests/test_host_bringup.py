"""``snplab host bringup`` against the fake SNP KVM + fake guest of tests/snp_fakes.py: a run that
passes every item, a failure injected at every item (the walk stops there and names the ioctl,
errno and firmware status), the record (Markdown + JSON, never claiming hardware for a fake),
and the refusal on this machine (no SNP: one line, exit 1, no traceback)."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snp_fakes import FakeSnpGuest, FakeSnpKvm  # noqa: E402

from snplab.host import bringup as B  # noqa: E402
from snplab.host import cli  # noqa: E402
from snplab.platform import default_payload_path  # noqa: E402

MILAN_CPUINFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                 "model name\t: AMD EPYC 7763 64-Core Processor\nstepping\t: 1\nflags\t\t: sev sev_es sev_snp\n\n")


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from snplab.attest.trust import TrustStore
    from snplab.emu import keys
    from snplab.emu.platform import EmulatedBackend

    d = tmp_path_factory.mktemp("bringup-host")
    (d / "proc").mkdir()
    (d / "proc/cpuinfo").write_text(MILAN_CPUINFO)
    (d / "blob.bin").write_bytes(bytes(EmulatedBackend("milan", "vcek", "req-certs", (), 5).cert_blob()))
    keys.write_trust_dir("milan", d / "trust")
    return {"root": str(d), "blob": str(d / "blob.bin"), "trust": TrustStore.from_dir(d / "trust", pinned=False),
            "elf": default_payload_path()}


def bringup(host, fake_kw=None, guest_kw=None, **kw):
    fake = FakeSnpKvm(partial=64, **(fake_kw or {}))
    fake.guest = FakeSnpGuest(host["elf"], **(guest_kw or {}))
    return B.run_bringup(certs_blob=host["blob"], ioctl=fake, root=host["root"], trust=host["trust"], **kw), fake


def by_id(rec):
    return {r.item.id: r for r in rec.items}


def test_fake_run_passes_every_item(host):
    rec, fake = bringup(host)
    items = by_id(rec)
    assert [r.item.id for r in rec.items] == list(B.ITEM_IDS)
    assert {i: r.status for i, r in items.items() if r.status != B.PASS} == {}
    assert "data[0] = 0x400000 (vCPU 0's GHCB GPA)" in items["sev_term_ghcb"].evidence
    assert rec.ok and rec.failed is None and rec.profile == "req-certs"
    assert "first attempt" in items["launch_update"].evidence
    assert "15 checks passed" in items["ext_request"].evidence
    assert rec.host["family"] == 25 and rec.host["product"] == "milan" and rec.host["stepping"] == 1
    # never a hardware claim for a fake
    assert rec.target.startswith("fake") and "not a hardware result" in rec.target
    md = rec.markdown()
    assert "Not a hardware result" in md and "hardware run" not in md
    assert "| 7 | KVM_SEV_SNP_LAUNCH_UPDATE with our CPUID page | 1, 2 | pass |" in md


def test_cpuid_fallback_is_recorded(host):
    rec, _ = bringup(host, {"cpuid_reject": "always"})
    ev = by_id(rec)["launch_update"].evidence
    assert rec.ok and "firmware-corrected retry" in ev and "1 entries corrected" in ev


def test_stub_profile_skips_what_the_stub_cannot_do(host):
    rec, fake = bringup(host, {"req_certs_attr": None})
    items = by_id(rec)
    assert rec.ok and rec.profile == "stub"
    assert {i for i, r in items.items() if r.status == B.SKIPPED} == {"enable_req_certs", "invalid_len", "busy"}


EIO, EINVAL = errno.EIO, errno.EINVAL
FAILURES = {  # item → (fake KVM options, fake guest options, what the record must name)
    "create_vm": ({"fail": {"KVM_CREATE_VM": (EINVAL, 0)}}, {}, "KVM_CREATE_VM: EINVAL"),
    "init2": ({"fail": {"sev:22": (EIO, 0x1)}}, {}, "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_INIT2): EIO (Input/output "
                                                    "error), firmware status INVALID_PLATFORM_STATE (0x1)"),
    "enable_req_certs": ({"fail": {"sev:103": (EINVAL, 0)}}, {},
                         "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_ENABLE_REQ_CERTS): EINVAL"),
    "guest_memfd": ({"fail": {"KVM_CREATE_GUEST_MEMFD": (EINVAL, 0)}}, {}, "KVM_CREATE_GUEST_MEMFD: EINVAL"),
    "vcpus": ({"fail": {"KVM_SET_SREGS": (EINVAL, 0)}}, {}, "KVM_SET_SREGS: EINVAL"),
    "launch_start": ({"fail": {"sev:100": (EIO, 0x10)}}, {},
                     "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_START): EIO (Input/output error), firmware status "
                     "INVALID_GUEST (0x10)"),
    "launch_update": ({"fail_update_at": 0x100000}, {}, "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE): EIO "
                                                        "(Input/output error), firmware status INVALID_PAGE_STATE (0x1a)"),
    "launch_finish": ({"fail": {"sev:102": (EIO, 0x16)}}, {},
                      "KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_FINISH): EIO (Input/output error), firmware status "
                      "INVALID_PARAM (0x16)"),
    "entry_64bit": ({}, {"fail_at": "entry"}, "KVM_RUN: EFAULT"),
    "guest_request": ({}, {"fail_at": "req"}, "EXITINFO2=0x16"),
    "ext_request": ({}, {"fail_at": "ext_req"}, "EXITINFO2=0x16"),
    "measurement": ({}, {"fail_at": "measurement"}, "report MEASUREMENT 000000"),
    "invalid_len": ({}, {"fail_at": "invalid_len"}, "want 0x0 and 0x100000000"),
    "busy": ({}, {"fail_at": "busy"}, "want 0x0 and 0x200000000"),
    "sev_term_msr": ({}, {"fail_at": "sev_term"}, "SystemEvent(type=0x1"),
    "sev_term_ghcb": ({}, {"fail_at": "sev_term_ghcb"}, "want SEV_TERM with data[0] = GHCB GPA 0x400000"),
}


def test_every_item_has_a_failure_case():
    assert set(FAILURES) == set(B.ITEM_IDS)


@pytest.mark.parametrize("item", list(FAILURES))
def test_stops_at_the_first_failure(host, item):
    fake_kw, guest_kw, named = FAILURES[item]
    rec, _ = bringup(host, fake_kw, guest_kw)
    f = rec.failed
    assert f is not None and f.item.id == item, [(r.item.id, r.status) for r in rec.items]
    assert named in f"{f.ioctl or ''} {f.evidence}"
    order = list(B.ITEM_IDS)
    after = [r for r in rec.items if order.index(r.item.id) > order.index(item)]
    assert all(r.status == B.NOT_RUN for r in after)
    before = [r for r in rec.items if order.index(r.item.id) < order.index(item)]
    assert all(r.status in (B.PASS, B.SKIPPED) for r in before)
    assert not rec.ok


def test_launch_update_failure_record(host, tmp_path):
    """The record of a run that stops at LAUNCH_UPDATE names ioctl, errno and firmware status, in
    Markdown and JSON, and the CLI exits 1."""
    fake = FakeSnpKvm(partial=64, fail_update_at=0x100000)
    fake.guest = FakeSnpGuest(host["elf"])
    out = tmp_path / "rec"
    rc = cli.main(["host", "bringup", "--certs-blob", host["blob"], "--out", str(out)], io=fake, root=host["root"],
                  trust=host["trust"])
    assert rc == 1
    (md,), (js,) = out.glob("*.md"), out.glob("*.json")
    text = md.read_text()
    assert ("Stopped at **launch_update**: KVM_MEMORY_ENCRYPT_OP(KVM_SEV_SNP_LAUNCH_UPDATE): EIO (Input/output "
            "error), firmware status INVALID_PAGE_STATE (0x1a)") in text
    data = json.loads(js.read_text())
    assert data["stopped_at"] == "launch_update" and not data["ok"] and data["target"].startswith("fake")
    assert [i["status"] for i in data["items"]][:8] == ["pass"] * 6 + ["fail", "not run"]


def test_cli_fake_run_exit_0(host, tmp_path, capsys):
    fake = FakeSnpKvm(partial=64)
    fake.guest = FakeSnpGuest(host["elf"])
    rc = cli.main(["host", "bringup", "--certs-blob", host["blob"], "--out", str(tmp_path), "--json"], io=fake,
                  root=host["root"], trust=host["trust"])
    out = capsys.readouterr().out
    assert rc == 0 and '"ok": true' in out and '"target": "fake' in out


@pytest.mark.skipif(Path("/dev/sev").exists(), reason="this machine has /dev/sev")
def test_refuses_on_this_machine(tmp_path):
    """No SNP here: one line on stderr, exit 1, no traceback, no record claiming anything."""
    p = subprocess.run([sys.executable, "-m", "snplab.cli", "host", "bringup", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "SNP" in p.stderr
    assert not list(tmp_path.iterdir())


def test_help_is_clear():
    p = subprocess.run([sys.executable, "-m", "snplab.cli", "host", "bringup", "--help"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0
    for word in ("docs/hardware-status.md", "first failure", "--certs-blob", "never runs on the emulated", "exit"):
        assert word in " ".join(p.stdout.split()), word

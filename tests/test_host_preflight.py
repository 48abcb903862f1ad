"""`snplab host check` against fixture hosts (tests/fixtures/hosts) and on this machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from host_fakes import FIXTURES, FakeHostIoctl, host_tree, make_chain, pins_for

from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.host import certs, cli, kernel_headers
from snplab.host.preflight import (
    DEFAULT_CERT_BLOB,
    HostEnv,
    Status,
    parse_cpuinfo,
    run_checks,
)

REPORTED_TCB = 0x5417000000000009  # fixture hosts' host.json
CHIP = bytes(range(64))


def write_blob(root: Path, chain, path: str = DEFAULT_CERT_BLOB) -> None:
    blob = certs.build_blob(certs.CertSet(vek=chain.vek, signer="vcek", ask=chain.ask, ark=chain.ark, product="genoa"))
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(blob)


def good_chain(**kw):
    tcb = TcbVersion.unpack(kw.pop("tcb", REPORTED_TCB), TcbLayout.MILAN_GENOA)
    return make_chain("genoa", tcb, kw.pop("hw_id", CHIP), **kw)


def run(name: str, tmp_path: Path, chain=None, pins=None, probe=False, blob=True):
    root, spec = host_tree(name, tmp_path)
    chain = chain or good_chain()
    if blob:
        write_blob(root, chain)
    env = HostEnv(root=root, io=FakeHostIoctl(spec), ark_pins=pins or pins_for(chain), probe_headers=probe)
    return run_checks(env), env


def statuses(report) -> dict[str, str]:
    return {c.id: c.status.value for c in report.checks}


def test_good_host_passes_every_check(tmp_path):
    report, env = run("genoa-7.0-good", tmp_path)
    assert statuses(report) == dict.fromkeys(
        ["cpu", "kernel", "dev_kvm", "kvm_amd", "dev_sev", "vm_types", "sev_attrs", "snp_status", "asids",
         "cert_blob"], "ok") | {"headers": "warn"}  # the fixture has no kernel headers: a warning only
    assert "no linux/kvm.h" in report.check("headers").detail
    assert report.ok and report.abi == "req-certs"
    assert report.check("sev_attrs").facts["kernel_behaviour"] == "7.0"
    st = report.check("snp_status")
    assert st.facts["firmware"] == "1.55.29" and st.facts["reported_tcb"] == "0x5417000000000009"
    assert st.facts["chip_id"] == CHIP.hex()
    assert report.check("asids").facts == {"capacity": 99, "in_use": 2, "free": 97}
    assert report.check("cpu").facts["product"] == "genoa"
    assert report.check("cert_blob").facts["tcb"] == "0x5417000000000009"
    assert not env.io.fds, "every fd the preflight opened is closed"
    text = report.render()
    assert "✗" not in text and text.count("✓") == 10 and text.count("!") == 1 and "can run the snp platform (ABI profile req-certs)" in text
    assert json.loads(json.dumps(report.to_json()))["ok"] is True


def test_stub_kernel_is_usable_with_stub_profile(tmp_path):
    report, _ = run("genoa-6.12-stub", tmp_path)
    assert report.ok and report.abi == "stub"
    assert report.check("kernel").facts["expected_abi"] == "stub"
    assert report.check("sev_attrs").facts["kernel_behaviour"] == "6.11-stub"


def test_guest_vm_like_this_machine(tmp_path):
    report, _ = run("amd-guest-vm", tmp_path)
    s = statuses(report)
    assert not report.ok
    assert s["cpu"] == "fail" and "running as a guest" in report.check("cpu").detail
    assert s["kvm_amd"] == "fail" and "not loaded" in report.check("kvm_amd").detail
    assert s["dev_sev"] == "fail" and s["vm_types"] == "fail"
    assert s["sev_attrs"] == "skip" and s["snp_status"] == "skip"
    assert s["asids"] == "warn"
    assert report.abi is None
    for c in report.failed:
        assert c.hint, f"{c.id} fails without a fix hint"


def test_snp_disabled_in_bios(tmp_path):
    report, _ = run("snp-disabled-bios", tmp_path)
    s = statuses(report)
    assert s["cpu"] == "fail" and "no 'sev_snp' CPU flag" in report.check("cpu").detail
    assert s["kvm_amd"] == "fail" and report.check("kvm_amd").detail == "sev_snp = N"
    assert s["vm_types"] == "fail" and "0xf lack" in report.check("vm_types").detail
    assert s["snp_status"] == "fail" and "state UNINIT" in report.check("snp_status").detail
    assert "RMP not initialised" in report.check("snp_status").detail


def test_old_kernel_old_firmware_no_asids(tmp_path):
    report, _ = run("milan-old-kernel", tmp_path)
    s = statuses(report)
    assert s["kernel"] == "fail" and "older than 6.11" in report.check("kernel").detail
    assert s["kvm_amd"] == "fail" and "no sev_snp parameter" in report.check("kvm_amd").detail
    assert s["vm_types"] == "fail"
    assert s["snp_status"] == "fail" and "API older than 1.51" in report.check("snp_status").detail
    assert s["asids"] == "fail" and report.check("asids").facts["free"] == 0
    # the blob is a Genoa one, this host is Milan
    assert s["cert_blob"] == "fail" and "this host is milan" in report.check("cert_blob").detail


def test_unopenable_dev_sev(tmp_path):
    report, _ = run("genoa-sev-noaccess", tmp_path)
    s = statuses(report)
    assert s["dev_sev"] == "fail" and "Permission denied" in report.check("dev_sev").detail
    assert s["snp_status"] == "skip"
    assert s["cert_blob"] == "warn" and "TCB not compared" in report.check("cert_blob").detail


@pytest.mark.parametrize("case,expect", [
    ("stale_tcb", "fetch the certificate for the current TCB"),
    ("other_chip", "is not this chip's ID"),
    ("amd_pins", "is not the pinned genoa ARK"),
    ("garbage", "not a certificate table"),
    ("missing", "No such file"),
    ("expired", "expired"),
])
def test_bad_certificate_blobs(tmp_path, case, expect):
    chain, pins = good_chain(), None
    if case == "stale_tcb":
        chain = good_chain(tcb=0x5416000000000009)
    elif case == "other_chip":
        chain = good_chain(hw_id=bytes(64 * [7]))
    elif case == "expired":
        chain = good_chain(valid_days=10)  # expired 20 days ago
    if case == "amd_pins":
        from snplab.attest.trust import AMD_ARK_SHA256
        pins = AMD_ARK_SHA256
    report, env = run("genoa-7.0-good", tmp_path, chain=chain, pins=pins, blob=case != "missing")
    if case == "garbage":
        (env.root / DEFAULT_CERT_BLOB.lstrip("/")).write_bytes(b"\x01" * 100)
        report = run_checks(env)
    c = report.check("cert_blob")
    assert c.status is Status.FAIL and expect in c.detail, c.detail
    assert "snplab host certs" in c.hint
    assert not report.ok


def test_cert_blob_path_override(tmp_path):
    root, spec = host_tree("genoa-7.0-good", tmp_path)
    chain = good_chain()
    write_blob(root, chain, "/srv/blob.bin")
    env = HostEnv(root=root, io=FakeHostIoctl(spec), ark_pins=pins_for(chain), probe_headers=False,
                  cert_blob="/srv/blob.bin")
    assert run_checks(env).check("cert_blob").status is Status.OK


def test_parse_cpuinfo_first_block():
    info = parse_cpuinfo((FIXTURES / "genoa-7.0-good/proc/cpuinfo").read_text())
    assert (info["vendor"], info["family"], info["model"]) == ("AuthenticAMD", 25, 17)
    assert "sev_snp" in info["flags"]


# ---- kernel headers ---------------------------------------------------------------------------

needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="no C compiler")


@needs_cc
def test_probe_agrees_with_installed_headers():
    r = kernel_headers.probe_layouts("/usr/include")
    assert r.error is None, r.error
    assert r.ok and r.compared > 100, r.mismatches
    assert "sizeof(struct kvm_run)" not in {m.what for m in r.mismatches}


@needs_cc
def test_probe_flags_draft_layout_and_exit_number():
    inc = FIXTURES / "headers-v6-draft/usr/include"
    r = kernel_headers.probe_layouts(inc)
    assert r.error is None, r.error
    what = {m.what: m for m in r.mismatches}
    assert what["sizeof(struct kvm_exit_snp_req_certs)"].headers == 16
    assert what["offsetof(struct kvm_exit_snp_req_certs, ret)"].headers == 12
    assert "kvm_exit_snp_req_certs:gpa" in r.absent
    assert [(n.what, n.headers) for n in r.notes] == [("KVM_EXIT_SNP_REQ_CERTS", 42)]
    assert not r.ok


def test_read_define_and_exit_number(tmp_path):
    assert kernel_headers.req_certs_exit_number(FIXTURES / "headers-v6-draft") == 42
    assert kernel_headers.req_certs_exit_number(tmp_path) is None
    k = tmp_path / "lib/modules/7.0.1/build/include/uapi/linux/kvm.h"
    k.parent.mkdir(parents=True)
    k.write_text("#define KVM_EXIT_ARM_LDST64B 42\n#define KVM_EXIT_SNP_REQ_CERTS    43 /* x */\n")
    assert kernel_headers.req_certs_exit_number(tmp_path, "7.0.1") == 43


@needs_cc
def test_preflight_fails_on_header_mismatch(tmp_path):
    report_root, spec = host_tree("genoa-7.0-good", tmp_path)
    shutil.copytree(FIXTURES / "headers-v6-draft/usr", report_root / "usr")
    chain = good_chain()
    write_blob(report_root, chain)
    env = HostEnv(root=report_root, io=FakeHostIoctl(spec), ark_pins=pins_for(chain), probe_headers=True)
    report = run_checks(env)
    h = report.check("headers")
    assert h.status is Status.FAIL and "kvm_exit_snp_req_certs" in json.dumps(h.facts)
    assert h.facts["KVM_EXIT_SNP_REQ_CERTS"] == 42
    assert not report.ok


# ---- the command line -------------------------------------------------------------------------


def test_cli_good_and_bad_hosts(tmp_path, capsys):
    root, spec = host_tree("genoa-7.0-good", tmp_path)
    chain = good_chain()
    write_blob(root, chain)
    rc = cli.main(["host", "check", "--root", str(root), "--json", "--no-probe"], io=FakeHostIoctl(spec),
                  ark_pins=pins_for(chain))
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["abi"] == "req-certs" and out["failed"] == []
    root2, spec2 = host_tree("snp-disabled-bios", tmp_path)
    rc = cli.main(["host", "check", "--root", str(root2), "--no-probe"], io=FakeHostIoctl(spec2))
    text = capsys.readouterr().out
    assert rc == 1 and "✗ CPU" in text and "CANNOT run" in text and "fix:" in text


def test_cli_bad_option_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["host", "check", "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments" in err


@pytest.mark.skipif(Path("/dev/sev").exists(), reason="this machine has /dev/sev: it may be an SNP host")
def test_this_machine_reports_no_snp(capsys):
    """The development machine has no SNP: the real preflight says so, and why, with exit 1."""
    rc = cli.main(["host", "check", "--no-probe"])
    text = capsys.readouterr().out
    assert rc == 1
    assert "✗ /dev/sev" in text and "CANNOT run the snp platform" in text

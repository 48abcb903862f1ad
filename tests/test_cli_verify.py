"""`snplab verify` / `snplab report show`: exit codes, JSON shape, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from snplab import cli
from snplab.abi import cert_table as ct
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import testing as fake
from snplab.attest.certs import der_bytes, load_certificate

REPO = Path(__file__).resolve().parents[1]
VECTORS = Path(os.environ.get("SNPLAB_VECTORS") or REPO.parent / "shared" / "vectors")
needs_vectors = pytest.mark.skipif(not (VECTORS / "manifest.json").is_file(), reason=f"no test vectors at {VECTORS}")
ROOTS = str(VECTORS / "amd_roots")
JSON_KEYS = {"verdict", "product", "signer", "report_version", "checks"}


def _manifest() -> list[dict]:
    p = VECTORS / "manifest.json"
    return json.loads(p.read_text()) if p.is_file() else []


def _at(vek: Path) -> str:
    c = load_certificate(vek.read_bytes())
    return (c.not_valid_before_utc + (c.not_valid_after_utc - c.not_valid_before_utc) / 2).isoformat()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _args(e: dict) -> list[str]:
    f = e["files"]
    a = ["verify", "--vek", str(VECTORS / f["vek"]), "--trust-dir", ROOTS, "--at", _at(VECTORS / f["vek"])]
    if "report" in f:
        a += ["--report", str(VECTORS / f["report"])]
    if "chain" in f:
        a += ["--chain", str(VECTORS / f["chain"])]
    return a


@needs_vectors
@pytest.mark.parametrize("e", [e for e in _manifest() if e["expect"] == "pass"], ids=lambda e: e["id"])
def test_pass_vectors_exit_0_with_json(capsys, e):
    rc, out, err = run(capsys, *_args(e), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert set(doc) == JSON_KEYS
    assert doc["verdict"] == "pass" and doc["signer"] == e["signer"]
    assert all(set(c) == {"name", "ok", "detail"} and c["ok"] is True for c in doc["checks"])
    f = e["files"]
    want = int.from_bytes((VECTORS / f["report"]).read_bytes()[:4], "little") if "report" in f else None
    assert doc["report_version"] == want
    assert err == ""


@needs_vectors
@pytest.mark.parametrize("e", [e for e in _manifest() if e["expect"] == "fail"], ids=lambda e: e["id"])
def test_fail_vectors_exit_1_naming_the_check(capsys, e):
    rc, out, err = run(capsys, *_args(e))
    assert rc == 1
    assert _one_line(err).startswith("snplab verify: rejected: chain_vek: ")
    rc, out, _ = run(capsys, *_args(e), "--json")
    doc = json.loads(out)
    assert rc == 1 and doc["verdict"] == "fail"
    assert next(c for c in doc["checks"] if not c["ok"])["name"] == "chain_vek"


@needs_vectors
@pytest.mark.parametrize("e", [e for e in _manifest() if e["expect"] == "parse-only"], ids=lambda e: e["id"])
def test_parse_only_vectors_show(capsys, e):
    rc, out, err = run(capsys, "report", "show", str(VECTORS / e["files"]["report"]))
    assert rc == 0 and err == ""
    assert "version            2" in out and "reported_tcb" in out and "chip_id" in out


@needs_vectors
def test_tampered_report_names_signature(capsys, tmp_path):
    e = next(e for e in _manifest() if e["id"] == "genoa_v5_routex")
    b = bytearray((VECTORS / e["files"]["report"]).read_bytes())
    b[0x50] ^= 1
    (tmp_path / "r.bin").write_bytes(bytes(b))
    args = _args(e)
    args[args.index("--report") + 1] = str(tmp_path / "r.bin")
    rc, out, err = run(capsys, *args)
    assert rc == 1 and _one_line(err).startswith("snplab verify: rejected: signature: ")


@needs_vectors
def test_vlek_needs_at_inside_validity(capsys):
    e = next(e for e in _manifest() if e["signer"] == "vlek")
    args = _args(e)
    i = args.index("--at")
    rc, _, err = run(capsys, *args[:i], *args[i + 2:], "--at", "2031-01-01T00:00:00Z")
    assert rc == 1 and "rejected: validity:" in _one_line(err)
    rc, _, _ = run(capsys, *args[:i], *args[i + 2:], "--at", "none")
    assert rc == 0


@needs_vectors
def test_certs_table(capsys, tmp_path):
    vek = (VECTORS / "milan_virtee" / "vcek.der").read_bytes()
    ask = der_bytes(load_certificate((VECTORS / "amd_roots" / "milan_ask.pem").read_bytes()))
    ark = der_bytes(load_certificate((VECTORS / "amd_roots" / "milan_ark.pem").read_bytes()))
    table = ct.build_table([(ct.VCEK_GUID, vek), (ct.ASK_GUID, ask), (ct.ARK_GUID, ark)])
    (tmp_path / "t.bin").write_bytes(table + bytes(4096 - len(table) % 4096))
    base = ["verify", "--report", str(VECTORS / "milan_virtee" / "report.bin"), "--trust-dir", ROOTS,
            "--at", _at(VECTORS / "milan_virtee" / "vcek.der")]
    rc, out, err = run(capsys, *base, "--certs", str(tmp_path / "t.bin"), "--json")
    assert rc == 0, err
    assert [c["name"] for c in json.loads(out)["checks"]][:2] == ["report_parse", "cert_table"]
    (tmp_path / "bad.bin").write_bytes(table[:30])
    rc, out, err = run(capsys, *base, "--certs", str(tmp_path / "bad.bin"), "--json")
    assert rc == 2 and json.loads(out)["verdict"] == "error"
    assert "cert_table" in _one_line(err) and "unterminated" in err


@needs_vectors
def test_default_trust_dir(capsys, monkeypatch):
    monkeypatch.setenv("SNPLAB_VECTORS", str(VECTORS))
    e = next(e for e in _manifest() if e["id"] == "milan_gosevguest")
    args = [a for a in _args(e) if a not in ("--trust-dir", ROOTS)]
    assert run(capsys, *args)[0] == 0


def test_no_trust_dir_anywhere_is_usage_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SNPLAB_VECTORS", str(tmp_path))
    (tmp_path / "r").write_bytes(bytes(0x4A0))
    (tmp_path / "v").write_bytes(b"x")
    rc, _, err = run(capsys, "verify", "--report", str(tmp_path / "r"), "--vek", str(tmp_path / "v"))
    assert rc == 2 and "--trust-dir is required" in _one_line(err)


def test_allow_unpinned_with_emulated_roots(capsys, tmp_path):
    roots = fake.make_roots("turin")
    for kind in ("ark", "ask", "asvk"):
        (tmp_path / f"turin_{kind}.pem").write_bytes(getattr(roots, kind).public_bytes(Encoding.PEM))
    tcb = TcbVersion(TcbLayout.TURIN, fmc=1, bootloader=2, snp=3, microcode=4)
    key, vek = fake.make_vek(roots, tcb)
    (tmp_path / "r.bin").write_bytes(fake.sign_report(fake.make_report(tcb, "turin"), key))
    (tmp_path / "v.pem").write_bytes(vek.public_bytes(Encoding.PEM))
    args = ["verify", "--report", str(tmp_path / "r.bin"), "--vek", str(tmp_path / "v.pem"),
            "--trust-dir", str(tmp_path), "--at", "2024-06-01"]
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "rejected: chain_ark_pinned:" in _one_line(err)
    rc, out, err = run(capsys, *args, "--allow-unpinned")
    assert rc == 0 and out.startswith("verified: report v5, turin, vcek")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("verify_files")
    roots = fake.make_roots("milan")
    (p / "milan_ark.pem").write_bytes(roots.ark.public_bytes(Encoding.PEM))
    _, vek = fake.make_vek(roots, TcbVersion(TcbLayout.MILAN_GENOA))
    (p / "vek.der").write_bytes(der_bytes(vek))
    return p


@settings(max_examples=40, deadline=None)
@given(n=st.one_of(st.integers(0, 0x49F), st.integers(0x4A1, 0x3000)))
def test_truncated_or_oversized_report_exit_2(files, n):
    rep = files / "rep.bin"
    rep.write_bytes(bytes([2, 0, 0, 0]) + bytes(max(0, n - 4)) if n >= 4 else bytes(n))
    for argv in (["verify", "--report", str(rep), "--vek", str(files / "vek.der"), "--trust-dir", str(files)],
                 ["report", "show", str(rep)]):
        out_err = _capture(argv)
        rc, out, err = out_err
        assert rc == 2
        line = _one_line(err)
        assert "0x4a0" in line and f"got {n}" in line


def _capture(argv: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        rc = cli.main(argv)
    return rc, o.getvalue(), e.getvalue()


def test_bad_version_exit_2(capsys, files):
    (files / "v9.bin").write_bytes(bytes([9]) + bytes(0x49F))
    rc, _, err = run(capsys, "report", "show", str(files / "v9.bin"))
    assert rc == 2 and "unsupported attestation report version 9" in _one_line(err)


def test_unreadable_inputs_exit_2(capsys, files):
    rc, _, err = run(capsys, "verify", "--report", str(files / "missing"), "--vek", str(files / "vek.der"),
                     "--trust-dir", str(files))
    assert rc == 2 and "cannot read report" in _one_line(err)
    (files / "ok.bin").write_bytes(fake.make_report(TcbVersion(TcbLayout.MILAN_GENOA)).pack())
    (files / "junk.der").write_bytes(b"\x30\x82junk")
    rc, out, err = run(capsys, "verify", "--report", str(files / "ok.bin"), "--vek", str(files / "junk.der"),
                       "--trust-dir", str(files), "--json")
    assert rc == 2 and json.loads(out)["verdict"] == "error" and "vek_parse" in _one_line(err)
    rc, _, err = run(capsys, "verify", "--report", str(files / "ok.bin"), "--trust-dir", str(files))
    assert rc == 2 and "--vek is required" in _one_line(err)
    rc, _, err = run(capsys, "verify", "--report", str(files / "ok.bin"), "--vek", str(files / "vek.der"),
                     "--trust-dir", str(files), "--at", "yesterday")
    assert rc == 2 and "ISO 8601" in _one_line(err)
    rc, _, err = run(capsys, "verify", "--report", str(files / "ok.bin"), "--vek", str(files / "vek.der"),
                     "--trust-dir", str(files / "nope"))
    assert rc == 2 and "does not exist" in _one_line(err)


def test_usage_error_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments" in _one_line(capsys.readouterr().err)


def test_subcommand_registration_hook(capsys, monkeypatch):
    mod = types.ModuleType("snplab_test_ext")

    def register(sub):
        p = sub.add_parser("hello")
        p.add_argument("--code", type=int, default=0)
        p.set_defaults(func=lambda args: args.code)

    mod.register = register
    monkeypatch.setitem(sys.modules, "snplab_test_ext", mod)
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ["snplab_test_ext", "snplab_not_installed_ext"])
    assert cli.main(["hello", "--code", "7"]) == 7


def test_console_entry_point_subprocess(tmp_path):
    (tmp_path / "short.bin").write_bytes(bytes(100))
    p = subprocess.run([sys.executable, "-m", "snplab.cli", "report", "show", str(tmp_path / "short.bin")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert _one_line(p.stderr) == f"snplab report: {tmp_path / 'short.bin'}: attestation report must be 0x4a0 (1184) bytes, got 100"

"""`snplab host certs build|show|verify|fetch`, the blob checks and the KDS client (no network)."""

from __future__ import annotations

import email.message
import io
import json
import urllib.error
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from host_fakes import make_chain, pins_for

from snplab.abi import cert_table
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import extensions
from snplab.attest.certs import der_bytes, load_certificate, load_certificates
from snplab.host import certs, cli, kds

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
TCB = 0x5417000000000009
GENOA_TCB = TcbVersion.unpack(TCB, TcbLayout.MILAN_GENOA)
CHIP = bytes(range(64))


def pem(c) -> bytes:
    return c.public_bytes(Encoding.PEM)


def cert_dir(tmp_path: Path, chain, *, vek_name="vcek.der", ask_name="ask.pem") -> Path:
    d = tmp_path / "certs"
    d.mkdir(exist_ok=True)
    (d / "ark.pem").write_bytes(pem(chain.ark))
    (d / ask_name).write_bytes(pem(chain.ask))
    (d / vek_name).write_bytes(der_bytes(chain.vek))
    (d / "notes.txt").write_text("ignored: not a certificate suffix")
    return d


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err


# ---- build / show / verify --------------------------------------------------------------------


def test_build_show_verify_roundtrip(tmp_path, capsys):
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    d = cert_dir(tmp_path, chain)
    out = tmp_path / "blob.bin"
    assert cli.main(["host", "certs", "build", "--dir", str(d), "-o", str(out)]) == 0
    assert "VCEK+ASK+ARK" in capsys.readouterr().out
    table = cert_table.parse_table(out.read_bytes())
    assert table.guids() == (cert_table.VCEK_GUID, cert_table.ASK_GUID, cert_table.ARK_GUID)
    assert table.get(cert_table.VCEK_GUID) == der_bytes(chain.vek)
    assert table.get(cert_table.ARK_GUID) == der_bytes(chain.ark)

    assert cli.main(["host", "certs", "show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["signer"] == "vcek" and shown["product"] == "genoa" and shown["tcb"] == "0x5417000000000009"
    assert [e["name"] for e in shown["entries"]] == ["VCEK", "ASK", "ARK"] and shown["hw_id"] == CHIP.hex()

    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "genoa_ark.pem").write_bytes(pem(chain.ark))
    ok = ["host", "certs", "verify", str(out), "--offline", "--product", "genoa", "--trust-dir", str(trust),
          "--chip-id", CHIP.hex()]
    assert cli.main(ok + ["--tcb", f"{TCB:x}"]) == 0
    assert "OK" in capsys.readouterr().out
    assert cli.main(ok + ["--tcb", "5418000000000009"]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and "current TCB" in err
    # AMD's pins (no --trust-dir) reject the test ARK
    assert cli.main(["host", "certs", "verify", str(out), "--offline", "--tcb", f"{TCB:x}"]) == 1
    assert "pinned genoa ARK" in capsys.readouterr().err


def test_vlek_blob_uses_vlek_and_ask_guids(tmp_path):
    chain = make_chain("milan", TcbVersion.unpack(0, TcbLayout.MILAN_GENOA), signer="vlek")
    d = cert_dir(tmp_path, chain, vek_name="vlek.der", ask_name="asvk.pem")
    cs = certs.load_dir(d)
    assert cs.signer == "vlek" and cs.product == "milan"
    blob = certs.build_blob(cs)
    assert cert_table.parse_table(blob).guids() == (cert_table.VLEK_GUID, cert_table.ASK_GUID, cert_table.ARK_GUID)
    s = certs.check_blob(blob, ark_pins=pins_for(chain, "milan"), chip_id=bytes(64))  # VLEK: no chip binding
    assert s.signer == "vlek" and s.chain_checked


@pytest.mark.parametrize("case,msg", [
    ("empty", "no certificate files"),
    ("two_veks", "two different VCEK"),
    ("vcek_asvk", "not an ASVK"),
    ("foreign", "not an AMD"),
    ("not_cert", "not an X.509"),
    ("mixed", "different products"),
])
def test_build_rejects_bad_sets(tmp_path, capsys, case, msg):
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    d = tmp_path / "d"
    d.mkdir()
    if case != "empty":
        (d / "vcek.der").write_bytes(der_bytes(chain.vek))
        (d / "ask.pem").write_bytes(pem(chain.ask))
    if case == "two_veks":
        (d / "vcek2.der").write_bytes(der_bytes(make_chain("genoa", GENOA_TCB, bytes(64), key_tag="x").vek))
    elif case == "vcek_asvk":
        (d / "asvk.pem").write_bytes(pem(make_chain("genoa", signer="vlek").ask))
    elif case == "foreign":
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from host_fakes import _ec, _name
        k = _ec("foreign")
        c = (x509.CertificateBuilder().subject_name(_name("example.org")).issuer_name(_name("example.org"))
             .public_key(k.public_key()).serial_number(5).not_valid_before(dt.datetime(2020, 1, 1))
             .not_valid_after(dt.datetime(2030, 1, 1)).sign(k, hashes.SHA384()))
        (d / "web.crt").write_bytes(pem(c))
    elif case == "not_cert":
        (d / "ark.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    elif case == "mixed":
        (d / "ark.pem").write_bytes(pem(make_chain("milan").ark))
    rc = cli.main(["host", "certs", "build", "--dir", str(d), "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and msg in err, err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("blob,msg", [
    (b"", "unterminated"),
    (cert_table.pack_entry(cert_table.VCEK_GUID, 48, 1 << 30) + bytes(24), "outside"),
    (cert_table.pack_entry(cert_table.VCEK_GUID, 48, 4) + bytes(24) + b"junk", "not one DER certificate"),
    (bytes(24), "exactly one VCEK or VLEK"),
])
def test_show_hostile_blobs(tmp_path, capsys, blob, msg):
    p = tmp_path / "blob"
    p.write_bytes(blob)
    rc = cli.main(["host", "certs", "show", str(p)])
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and msg in err, err


def test_blob_with_wrong_cert_under_guid():
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    blob = cert_table.build_table([(cert_table.VCEK_GUID, der_bytes(chain.ask))])
    with pytest.raises(certs.BlobError, match="VCEK entry holds a ASK"):
        certs.check_blob(blob)


def test_missing_blob_file(tmp_path, capsys):
    assert cli.main(["host", "certs", "show", str(tmp_path / "nope")]) == 2
    assert "No such file" in capsys.readouterr().err


@pytest.mark.skipif(not (VECTORS / "milan_virtee").is_dir(), reason="shared/vectors absent")
def test_real_amd_chain_with_amd_pins(tmp_path, capsys):
    """A blob from a real Milan VCEK + KDS chain passes with AMD's pinned ARK and its own TCB."""
    d = tmp_path / "real"
    d.mkdir()
    (d / "vcek.der").write_bytes((VECTORS / "milan_virtee/vcek.der").read_bytes())
    (d / "chain.pem").write_bytes((VECTORS / "milan_virtee/chain.pem").read_bytes())
    out = tmp_path / "blob"
    assert cli.main(["host", "certs", "build", "--dir", str(d), "-o", str(out)]) == 0
    ext = extensions.parse_extensions(load_certificate((d / "vcek.der").read_bytes()))
    tcb = ext.tcb(TcbLayout.MILAN_GENOA).pack()
    capsys.readouterr()
    assert cli.main(["host", "certs", "verify", str(out), "--offline", "--product", "milan",
                     "--tcb", f"{tcb:x}", "--chip-id", ext.hw_id.hex()]) == 0
    assert "chain verified" in capsys.readouterr().out


# ---- KDS --------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class FakeKds:
    """An opener answering like KDS from a dict url → bytes, with scripted failures first."""

    def __init__(self, docs: dict[str, bytes], failures: list[tuple[int, str | None]] = ()) -> None:
        self.docs, self.failures, self.urls = docs, list(failures), []

    def open(self, req, timeout=None):
        url = req.full_url
        self.urls.append(url)
        if self.failures:
            code, retry_after = self.failures.pop(0)
            hdrs = email.message.Message()
            if retry_after is not None:
                hdrs["Retry-After"] = retry_after
            raise urllib.error.HTTPError(url, code, "busy", hdrs, None)
        if url not in self.docs:
            raise urllib.error.HTTPError(url, 404, "Not Found", email.message.Message(), None)
        return FakeResponse(self.docs[url])


def genoa_kds(chain) -> dict[str, bytes]:
    return {kds.chain_url("genoa"): pem(chain.ask) + pem(chain.ark),
            kds.vcek_url("genoa", CHIP, GENOA_TCB): der_bytes(chain.vek)}


def test_kds_urls():
    assert kds.vcek_url("genoa", CHIP, GENOA_TCB) == (
        f"https://kdsintf.amd.com/vcek/v1/Genoa/{CHIP.hex()}?blSPL=9&teeSPL=0&snpSPL=23&ucodeSPL=84")
    turin = TcbVersion(TcbLayout.TURIN, fmc=0, bootloader=1, tee=0, snp=2, microcode=71)
    assert kds.vcek_url("turin", bytes.fromhex("3b42092f69c656d3") + bytes(56), turin) == (
        "https://kdsintf.amd.com/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=0&blSPL=1&teeSPL=0&snpSPL=2&ucodeSPL=71")
    assert kds.chain_url("milan", "vlek") == "https://kdsintf.amd.com/vlek/v1/Milan/cert_chain"
    with pytest.raises(kds.KdsError, match="all zero"):
        kds.vcek_url("milan", bytes(64), GENOA_TCB)
    with pytest.raises(kds.KdsError, match="no product"):
        kds.chain_url("naples")


def fetch_args(tmp_path, chain, *extra):
    trust = tmp_path / "trust"
    trust.mkdir(exist_ok=True)
    (trust / "genoa_ark.pem").write_bytes(pem(chain.ark))
    return ["host", "certs", "fetch", "--product", "genoa", "--tcb", f"{TCB:x}", "--chip-id", CHIP.hex(),
            "--trust-dir", str(trust), *extra]


def test_fetch_builds_a_blob_and_caches(tmp_path, capsys):
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    opener = FakeKds(genoa_kds(chain))
    out, cache, d = tmp_path / "blob", tmp_path / "cache", tmp_path / "files"
    args = fetch_args(tmp_path, chain, "-o", str(out), "--cache", str(cache), "--dir", str(d))
    assert cli.main(args, opener=opener) == 0
    assert "2 request(s)" in capsys.readouterr().out
    assert len(opener.urls) == 2 and opener.urls[0].endswith("/vcek/v1/Genoa/cert_chain")
    s = certs.check_blob(out.read_bytes(), product="genoa", reported_tcb=TCB, chip_id=CHIP,
                         ark_pins=pins_for(chain))
    assert s.chain_checked and s.signer == "vcek"
    assert sorted(p.name for p in d.iterdir()) == ["ark.der", "ask.der", "vcek.der"]
    # second run: everything from the on-disk cache, no request
    assert cli.main(args, opener=FakeKds({})) == 0
    assert "0 request(s)" in capsys.readouterr().out


def test_fetch_backs_off_on_rate_limits(tmp_path):
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    sleeps: list[float] = []
    client = kds.KdsClient(FakeKds(genoa_kds(chain), [(429, "3"), (503, None), (429, "600")]), sleep=sleeps.append,
                           base_delay=1.0, max_delay=30.0)
    ch = client.chain("genoa", "vcek", pins_for(chain))
    assert sleeps == [3.0, 2.0, 30.0]  # Retry-After, exponential (attempt 1), capped Retry-After
    assert client.requests == 4 and ch.ark.subject == chain.ark.subject
    client = kds.KdsClient(FakeKds(genoa_kds(chain), [(429, None)] * 10), sleep=sleeps.append, max_tries=3)
    with pytest.raises(kds.KdsError, match="rate limit: HTTP 429 .* after 3 tries"):
        client.chain("genoa", "vcek", pins_for(chain))


@pytest.mark.parametrize("case,msg", [
    ("unpinned_ark", "does not match the pinned genoa ARK"),
    ("not_found", "HTTP 404"),
    ("wrong_vcek", "does not verify"),
    ("garbage_chain", "not an X.509 certificate"),
])
def test_fetch_rejects_bad_answers(tmp_path, capsys, case, msg):
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    docs = genoa_kds(chain)
    args = fetch_args(tmp_path, chain, "-o", str(tmp_path / "blob"), "--cache", "")
    if case == "unpinned_ark":
        args = [a for a in args if a not in ("--trust-dir", str(tmp_path / "trust"))]
    elif case == "not_found":
        docs.pop(kds.vcek_url("genoa", CHIP, GENOA_TCB))
    elif case == "wrong_vcek":
        docs[kds.vcek_url("genoa", CHIP, GENOA_TCB)] = der_bytes(make_chain("genoa", GENOA_TCB, CHIP, key_tag="o").vek)
    elif case == "garbage_chain":
        docs[kds.chain_url("genoa")] = b"<html>maintenance</html>"
    rc = cli.main(args, opener=FakeKds(docs))
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and msg in err, err
    assert not (tmp_path / "blob").exists()


def test_fetch_unreachable_host(tmp_path, capsys):
    """A real urllib opener against a closed local port: one line, exit 2, quickly."""
    chain = make_chain("genoa", GENOA_TCB, CHIP)
    rc = cli.main(fetch_args(tmp_path, chain, "-o", str(tmp_path / "b"), "--cache", "",
                             "--kds-url", "http://127.0.0.1:9"))
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and "cannot reach 127.0.0.1:9" in err, err


def test_fetch_dns_failure_is_one_line(tmp_path, capsys):
    class NoDns:
        def open(self, req, timeout=None):
            raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    chain = make_chain("genoa", GENOA_TCB, CHIP)
    rc = cli.main(fetch_args(tmp_path, chain, "-o", str(tmp_path / "b"), "--cache", ""), opener=NoDns())
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and "cannot reach kdsintf.amd.com" in err


@pytest.mark.skipif(Path("/dev/sev").exists(), reason="this machine has /dev/sev")
def test_fetch_without_host_facts_says_what_to_pass(capsys):
    rc = cli.main(["host", "certs", "fetch", "-o", "/nonexistent/blob"], opener=FakeKds({}))
    err = capsys.readouterr().err
    assert rc == 2 and one_line(err) and "--chip-id" in err


@pytest.mark.skipif(not (VECTORS / "amd_roots").is_dir(), reason="shared/vectors absent")
def test_fetch_real_milan_chain_with_amd_pins(tmp_path):
    """KDS answers replayed from real data: AMD's Milan ASK+ARK pass the built-in pin, the real VCEK
    is checked against the real ASK."""
    vcek = load_certificate((VECTORS / "milan_virtee/vcek.der").read_bytes())
    ext = extensions.parse_extensions(vcek)
    tcb = ext.tcb(TcbLayout.MILAN_GENOA)
    ask = (VECTORS / "amd_roots/milan_ask.pem").read_bytes()
    ark = (VECTORS / "amd_roots/milan_ark.pem").read_bytes()
    docs = {kds.chain_url("milan"): ask + ark, kds.vcek_url("milan", ext.hw_id, tcb): der_bytes(vcek)}
    from snplab.attest.trust import AMD_ARK_SHA256
    client = kds.KdsClient(FakeKds(docs))
    ch = client.chain("milan", "vcek", AMD_ARK_SHA256)
    got = client.vcek("milan", ext.hw_id, tcb, ch.ask)
    assert der_bytes(got) == der_bytes(vcek)
    assert load_certificates(ark)[0].subject == ch.ark.subject


def test_install_blob_waits_for_vmm_shared_lock(tmp_path):
    """install_blob rewrites the blob in place under the exclusive lock the VMM's responder
    respects: it waits while a responder holds its shared lock, and fails after its timeout."""
    import os
    import threading
    import time

    from snplab.vmm.certs import lock_shared

    path = tmp_path / "blob.bin"
    certs.install_blob(path, b"old" * 100)
    inode = path.stat().st_ino
    fd = os.open(path, os.O_RDONLY)
    assert lock_shared(fd)  # a guest request is between its exit and the firmware call
    with pytest.raises(OSError):
        certs.install_blob(path, b"new", timeout=0.05)
    assert path.read_bytes() == b"old" * 100
    done = threading.Event()
    t = threading.Thread(target=lambda: (certs.install_blob(path, b"new" * 10, timeout=5), done.set()))
    t.start()
    time.sleep(0.05)
    assert not done.is_set()
    os.close(fd)  # the request reached firmware: the responder drops its lock
    t.join(5)
    assert done.is_set() and path.read_bytes() == b"new" * 10 and path.stat().st_ino == inode

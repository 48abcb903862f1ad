"""`snplab host ...` commands: preflight and certificate provisioning.

``register(subparsers)`` adds the ``host`` command to the top-level ``snplab`` parser; every leaf
sets ``func(args) -> int``. Exit codes: 0 success, 1 the host/blob does not pass, 2 unreadable
input or a service that cannot be reached. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

EXIT_OK, EXIT_FAIL, EXIT_INPUT = 0, 1, 2
DEFAULT_KDS_CACHE = "~/.cache/snplab/kds"


def _err(msg: str) -> None:
    print(f"snplab host: {msg}", file=sys.stderr)


def _hex_bytes(text: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not hex: {text[:20]!r}") from None


def _hex_int(text: str) -> int:
    try:
        v = int(text, 16) if not text.lower().startswith("0x") else int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a hex integer: {text!r}") from None
    if not 0 <= v < 1 << 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a u64")
    return v


# ---- check ----------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from snplab.host.preflight import HostEnv, run_checks

    env = HostEnv(root=Path(args.root), cert_blob=args.certs, probe_headers=not args.no_probe)
    if getattr(args, "io", None) is not None:  # test hook: fake ioctl layer
        env.io = args.io
    if getattr(args, "ark_pins", None) is not None:  # test hook: pins of a fake chain
        env.ark_pins = args.ark_pins
    report = run_checks(env)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render())
    return EXIT_OK if report.ok else EXIT_FAIL


# ---- bringup --------------------------------------------------------------------------------


def cmd_bringup(args: argparse.Namespace) -> int:
    from snplab.host.bringup import BringupError, run_bringup, write_record

    if getattr(args, "io", None) is None and not Path(args.certs_blob).is_file():
        from snplab.vmm.snp import unavailable_reason

        reason = unavailable_reason()  # no SNP: say that rather than ask for a blob
        if reason:
            _err(f"bringup: {reason}")
            return EXIT_FAIL
        _err(f"certificate blob {args.certs_blob}: not found (snplab host certs fetch -o FILE)")
        return EXIT_INPUT
    try:
        record = run_bringup(certs_blob=args.certs_blob, trust_dir=args.trust_dir, payload=args.payload,
                             ioctl=getattr(args, "io", None), root=getattr(args, "root", "/"),
                             product=args.product, abi=args.abi, trust=getattr(args, "trust", None))
    except BringupError as e:
        _err(f"bringup: {e}")
        return EXIT_FAIL
    except OSError as e:  # e.g. an unreadable blob or payload
        _err(f"bringup: {e}")
        return EXIT_INPUT
    try:
        md, js = write_record(record, args.out)
    except OSError as e:
        print(record.markdown())
        _err(f"bringup: cannot write the record to {args.out}: {e.strerror or e}")
        return EXIT_INPUT
    print(json.dumps(record.to_json(), indent=1) if args.json else record.markdown())
    print(f"record: {md} {js}")
    return EXIT_OK if record.failed is None else EXIT_FAIL


# ---- certs ----------------------------------------------------------------------------------


def _write(path: str, data: bytes) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def _install(path: str, blob: bytes) -> None:
    from snplab.host.certs import install_blob

    install_blob(path, blob)


def cmd_certs_build(args: argparse.Namespace) -> int:
    from snplab.host import certs

    try:
        cs = certs.load_dir(args.dir)
        blob = certs.build_blob(cs)
        summary = certs.check_blob(blob)
        _install(args.output, blob)
    except certs.BlobError as e:
        _err(str(e))
        return EXIT_INPUT
    except OSError as e:
        _err(f"{args.output}: {e.strerror}")
        return EXIT_INPUT
    print(f"wrote {args.output}: {summary.describe()}")
    for p in summary.problems:
        print(f"warning: {p}", file=sys.stderr)
    return EXIT_OK


def _read_blob(path: str) -> bytes | None:
    try:
        st = os.stat(path)
        if st.st_size > 64 << 20:
            _err(f"{path}: larger than 64 MiB, not a certificate blob")
            return None
        return Path(path).read_bytes()
    except OSError as e:
        _err(f"{path}: {e.strerror}")
        return None


def cmd_certs_show(args: argparse.Namespace) -> int:
    from snplab.host import certs

    blob = _read_blob(args.blob)
    if blob is None:
        return EXIT_INPUT
    try:
        summary = certs.check_blob(blob)
    except certs.BlobError as e:
        _err(f"{args.blob}: {e}")
        return EXIT_INPUT
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
    else:
        print(f"{args.blob}: {summary.describe()}")
        for name, length, digest in summary.entries:
            print(f"  {name:<6} {length:6d} bytes  sha256 {digest}")
        if summary.hw_id:
            print(f"  hwID   {summary.hw_id.hex()}")
        for p in summary.problems:
            print(f"  note: {p}")
    return EXIT_OK


def _host_facts(root: str) -> tuple[str | None, int | None, bytes | None, str | None]:
    """(product, reported TCB, chip ID, why-not) read from this host's cpuinfo and /dev/sev."""
    from snplab.attest.product import product_from_cpuid
    from snplab.host import sev_device
    from snplab.host.preflight import HostEnv, parse_cpuinfo

    env = HostEnv(root=Path(root))
    info = parse_cpuinfo(env.read("/proc/cpuinfo") or "")
    product = None
    if info.get("vendor") == "AuthenticAMD" and "family" in info and "model" in info:
        product = product_from_cpuid(info["family"], info["model"])
    try:
        fd = env.open_dev("/dev/sev")
    except OSError as e:
        return product, None, None, f"cannot open /dev/sev: {e.strerror}"
    try:
        status = sev_device.snp_platform_status(env.io, fd)
        chip = None if status.mask_chip_id else sev_device.chip_id(env.io, fd)
        return product, status.reported_tcb, chip, None
    except OSError as e:
        return product, None, None, str(e)
    finally:
        env.io.close(fd)


def _pins(trust_dir: str | None) -> dict[str, str]:
    from snplab.attest.certs import sha256_fingerprint
    from snplab.attest.trust import AMD_ARK_SHA256, TrustStore

    pins = dict(AMD_ARK_SHA256)
    if trust_dir:  # an explicit trust directory (e.g. emulated roots) replaces AMD's pins
        store = TrustStore.from_dir(trust_dir, pinned=False)
        pins = {p: sha256_fingerprint(store.get(p).ark) for p in store.products if store.get(p).ark is not None}
    return pins


def cmd_certs_verify(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from snplab.attest.trust import TrustStoreError
    from snplab.host import certs

    blob = _read_blob(args.blob)
    if blob is None:
        return EXIT_INPUT
    product, tcb, chip, why = args.product, args.tcb, args.chip_id, None
    if not args.offline and (tcb is None or product is None):
        hp, htcb, hchip, why = _host_facts(args.root)
        product = product or hp
        tcb = tcb if tcb is not None else htcb
        chip = chip if chip is not None else hchip
    try:
        summary = certs.check_blob(blob, product=product, reported_tcb=tcb, chip_id=chip,
                                   ark_pins=_pins(args.trust_dir), at=datetime.now(timezone.utc))
    except TrustStoreError as e:
        _err(str(e))
        return EXIT_INPUT
    except certs.BlobError as e:
        _err(f"{args.blob}: {e}")
        return EXIT_FAIL
    if args.json:
        print(json.dumps(summary.to_json() | {"tcb_compared": tcb is not None, "host_note": why}, indent=2))
    else:
        print(f"{args.blob}: OK: {summary.describe()}")
        if tcb is None:
            print(f"note: TCB not compared ({why or 'no --tcb given'})", file=sys.stderr)
    return EXIT_OK


def cmd_certs_fetch(args: argparse.Namespace) -> int:
    from snplab.abi.tcb import TcbVersion, layout_for_product
    from snplab.attest.certs import der_bytes
    from snplab.host import certs, kds

    product, tcb, chip = args.product, args.tcb, args.chip_id
    if product is None or (args.signer == "vcek" and (tcb is None or chip is None)):
        hp, htcb, hchip, why = _host_facts(args.root)
        product = product or hp
        tcb = tcb if tcb is not None else htcb
        chip = chip if chip is not None else hchip
        if product is None or (args.signer == "vcek" and (tcb is None or chip is None)):
            _err(f"cannot tell this host's product, TCB and chip ID ({why or 'not an SNP EPYC'}): "
                 "pass --product, --tcb and --chip-id")
            return EXIT_INPUT
    client = kds.KdsClient(cache_dir=Path(os.path.expanduser(args.cache)) if args.cache else None,
                           base=args.kds_url, opener=getattr(args, "opener", None),
                           sleep=getattr(args, "sleep", None) or __import__("time").sleep)
    try:
        pins = _pins(args.trust_dir)
        ch = client.chain(product, args.signer, pins)
        files: dict[str, bytes] = {"ark.der": der_bytes(ch.ark), ("ask.der" if args.signer == "vcek" else "asvk.der"): der_bytes(ch.ask)}
        blob = None
        if args.signer == "vcek":
            vcek = client.vcek(product, chip, TcbVersion.unpack(tcb, layout_for_product(product)), ch.ask)
            files["vcek.der"] = der_bytes(vcek)
            cs = certs.CertSet(vek=vcek, signer="vcek", ask=ch.ask, ark=ch.ark, product=product)
            blob = certs.build_blob(cs)
            certs.check_blob(blob, product=product, reported_tcb=tcb, chip_id=chip, ark_pins=pins)
        if args.dir:
            for name, data in files.items():
                _write(str(Path(args.dir) / name), data)
        if blob is not None and args.output:
            _install(args.output, blob)
    except kds.KdsError as e:
        _err(str(e))
        return EXIT_INPUT
    except certs.BlobError as e:
        _err(f"KDS answer does not fit this host: {e}")
        return EXIT_FAIL
    except OSError as e:
        _err(f"{e.filename or ''}: {e.strerror}")
        return EXIT_INPUT
    where = ", ".join(x for x in (args.output if blob is not None else None, args.dir) if x)
    print(f"fetched {'+'.join(sorted(files))} for {product} from KDS ({client.requests} request(s)) → {where or 'nowhere (give -o or --dir)'}")
    return EXIT_OK


# ---- wiring ---------------------------------------------------------------------------------


def register(subparsers: Any) -> argparse.ArgumentParser:
    host = subparsers.add_parser("host", help="lab-host preflight and certificate provisioning")
    hsub = host.add_subparsers(dest="host_cmd", required=True)

    check = hsub.add_parser("check", help="can this host run the suite on the snp platform?")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--root", default="/", help="read /proc, /sys, /dev under this root (testing)")
    check.add_argument("--certs", default=None, help="certificate blob to check (default $SNPLAB_CERT_BLOB "
                                                     "or /var/lib/snplab/cert-blob.bin)")
    check.add_argument("--no-probe", action="store_true", help="do not compile the kernel-header probe")
    check.set_defaults(func=cmd_check)

    bu = hsub.add_parser(
        "bringup", help="first run on a new SNP host: every hardware-status item in order, with a record",
        description="Walk the items of docs/hardware-status.md in order on this host, as real SNP guests "
                    "(create SNP VM, INIT2, ENABLE_REQ_CERTS, guest_memfd, vCPUs in long mode, "
                    "LAUNCH_START/UPDATE/FINISH with our CPUID page, 64-bit entry, a plain guest request, "
                    "an extended request, measurement = prediction, INVALID_LEN, BUSY, SEV_TERM both forms). "
                    "Stops at the first failure naming the ioctl, errno and firmware status, and writes a "
                    "Markdown + JSON record (host CPU, kernel, firmware, TCB, ABI profile, each item "
                    "pass/fail/skipped with evidence) ready to paste into docs/hardware-status.md. "
                    "Needs an SNP host (run 'snplab host check' first); it never runs on the emulated "
                    "platform, and exits 1 with one line if this host cannot run SNP guests.",
        epilog="exit status: 0 every item passed or was skipped, 1 an item failed or this is not an SNP "
               "host, 2 bad input")
    bu.add_argument("--certs-blob", metavar="FILE", default=os.environ.get("SNPLAB_CERT_BLOB", "/var/lib/snplab/cert-blob.bin"),
                    help="the host's certificate blob (default $SNPLAB_CERT_BLOB or /var/lib/snplab/cert-blob.bin)")
    bu.add_argument("--trust-dir", metavar="DIR", help="AMD ARK/ASK/ASVK PEMs to verify reports against (default: AMD's "
                                        "pinned ARK, chain taken from the served blob)")
    bu.add_argument("--out", metavar="DIR", default="reports/bringup", help="where the .md and .json record go "
                                                             "(default reports/bringup)")
    bu.add_argument("--product", choices=("milan", "genoa", "turin"), help="CPU product if /proc/cpuinfo "
                                                                           "does not tell")
    bu.add_argument("--abi", choices=("stub", "req-certs", "vmgexit-v15"),
                    help="force the ABI profile instead of detecting it")
    bu.add_argument("--payload", metavar="ELF", help="guest payload ELF (default: the built one)")
    bu.add_argument("--json", action="store_true", help="print the JSON record instead of the Markdown")
    bu.set_defaults(func=cmd_bringup)

    certs = hsub.add_parser("certs", help="build, show, verify or fetch the certificate blob")
    csub = certs.add_subparsers(dest="certs_cmd", required=True)

    b = csub.add_parser("build", help="blob from a directory of ARK/ASK/VCEK (or ASVK/VLEK) files")
    b.add_argument("--dir", required=True)
    b.add_argument("-o", "--output", required=True)
    b.set_defaults(func=cmd_certs_build)

    s = csub.add_parser("show", help="list the entries of a blob")
    s.add_argument("blob")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_certs_show)

    v = csub.add_parser("verify", help="check a blob's chain and that it fits this host's TCB and chip")
    v.add_argument("blob")
    v.add_argument("--root", default="/")
    v.add_argument("--product", choices=("milan", "genoa", "turin"))
    v.add_argument("--tcb", type=_hex_int, help="reported TCB (hex u64) instead of reading /dev/sev")
    v.add_argument("--chip-id", type=_hex_bytes, help="chip ID (hex) instead of reading /dev/sev")
    v.add_argument("--trust-dir", help="pin the ARKs of this directory instead of AMD's")
    v.add_argument("--offline", action="store_true", help="do not read /dev/sev")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_certs_verify)

    f = csub.add_parser("fetch", help="VCEK and chain from AMD KDS for this host's chip and TCB")
    f.add_argument("-o", "--output", help="write the certificate blob here")
    f.add_argument("--dir", help="also write ark.der, ask.der/asvk.der, vcek.der here")
    f.add_argument("--signer", choices=("vcek", "vlek"), default="vcek",
                   help="vlek fetches only the ASVK+ARK chain (KDS serves VLEKs to CSPs only)")
    f.add_argument("--root", default="/")
    f.add_argument("--product", choices=("milan", "genoa", "turin"))
    f.add_argument("--tcb", type=_hex_int, help="reported TCB (hex u64)")
    f.add_argument("--chip-id", type=_hex_bytes, help="chip ID (hex, 64 bytes)")
    f.add_argument("--cache", default=DEFAULT_KDS_CACHE, help="on-disk KDS cache ('' disables)")
    f.add_argument("--trust-dir", help="pin the ARKs of this directory instead of AMD's")
    f.add_argument("--kds-url", default="https://kdsintf.amd.com")
    f.set_defaults(func=cmd_certs_fetch)
    return host


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        _err(message)
        raise SystemExit(EXIT_INPUT)


def main(argv: Sequence[str] | None = None, **extra: Any) -> int:
    """Standalone entry (``python -m snplab.host.cli host check``); ``extra`` sets test hooks."""
    parser = _Parser(prog="snplab")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    register(sub)
    args = parser.parse_args(argv)
    for k, v in extra.items():
        setattr(args, k, v)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

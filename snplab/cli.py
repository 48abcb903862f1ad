"""The ``snplab`` command line.

    snplab verify --report R --vek V [--trust-dir D] [--chain PEM] [--certs TABLE]
                  [--at ISO8601|none] [--json] [--allow-unpinned]
    snplab report show R [--json]

Exit codes: 0 verified, 1 rejected (first failing check on stderr, one line), 2 input unreadable or
bad usage (one line on stderr). Other parts add subcommands through a module-level
``register(subparsers)`` function listed in SUBCOMMAND_MODULES (e.g. ``snplab host ...``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_INPUT = 2
MAX_INPUT_BYTES = 16 << 20  # no legitimate report, certificate or table is this large

# Modules that contribute subcommands: each defines register(subparsers) and gives every parser
# it adds a `func(args) -> int` default.
SUBCOMMAND_MODULES: list[str] = ["snplab.host.cli", "snplab.report.compare_cli", "snplab.kernels_cli",
                                  "snplab.mutate.cli"]

PROG = "snplab"


class InputError(Exception):
    """Input that cannot be read: reported in one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage first)
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message}\n")


def vectors_dir() -> Path:
    """shared/vectors next to the repository (or $SNPLAB_VECTORS)."""
    env = os.environ.get("SNPLAB_VECTORS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "vectors"


def default_trust_dir() -> Path | None:
    d = vectors_dir() / "amd_roots"
    return d if d.is_dir() else None


def read_input(path: str, what: str) -> bytes:
    try:
        p = Path(path)
        size = p.stat().st_size
        if size > MAX_INPUT_BYTES:
            raise InputError(f"{what} {path}: {size} bytes is too large")
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror or e}") from None


def parse_at(text: str | None):
    """None → now; 'none' → time checks off; else ISO 8601 (naive = UTC)."""
    from snplab.attest.verify import NOW

    if text is None:
        return NOW
    if text.lower() == "none":
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--at {text!r} is not ISO 8601 (e.g. 2025-06-01T00:00:00Z) or 'none'") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


# --- verify ---------------------------------------------------------------------------------


def _cmd_verify(args: argparse.Namespace) -> int:
    from snplab.attest.trust import TrustStore, TrustStoreError
    from snplab.attest.verify import verify_from_cert_table, verify_report, verify_vek

    if args.vek is None and args.certs is None:
        raise InputError("--vek is required unless --certs gives a certificate table")
    if args.certs is not None and args.report is None:
        raise InputError("--certs needs --report")
    at = parse_at(args.at)
    report = read_input(args.report, "report") if args.report else None
    vek = read_input(args.vek, "VEK") if args.vek else None
    chain = read_input(args.chain, "chain") if args.chain else None
    table = read_input(args.certs, "certificate table") if args.certs else None

    trust_dir = args.trust_dir or default_trust_dir()
    try:
        if trust_dir is not None:
            trust = TrustStore.from_dir(trust_dir, pinned=not args.allow_unpinned)
        elif chain is not None or table is not None:
            trust = TrustStore.empty(pinned=not args.allow_unpinned)
        else:
            raise InputError("--trust-dir is required (no default trust directory found)")
    except TrustStoreError as e:
        raise InputError(str(e)) from None

    if table is not None:
        if chain is not None:
            raise InputError("--chain and --certs are exclusive")
        verdict = verify_from_cert_table(report, table, trust, at=at, vek_der=vek)
    elif report is not None:
        verdict = verify_report(report, vek, trust, chain=chain, at=at)
    else:
        verdict = verify_vek(vek, trust, chain=chain, at=at)

    if args.json:
        print(json.dumps(verdict.to_json(), indent=None if args.compact else 2))
    if verdict.input_error is not None:
        first = verdict.first_failure
        name = first.name if first else "input"
        print(f"{PROG} verify: unreadable input: {name}: {verdict.input_error}", file=sys.stderr)
        return EXIT_INPUT
    if not verdict.ok:
        first = verdict.first_failure
        assert first is not None
        print(f"{PROG} verify: rejected: {first.name}: {first.detail}", file=sys.stderr)
        return EXIT_REJECTED
    if not args.json:
        what = f"report v{verdict.report_version}" if verdict.report_version else "certificate chain"
        print(f"verified: {what}, {verdict.product}, {verdict.signer} ({len(verdict.checks)} checks)")
    return EXIT_OK


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify an attestation report against its VCEK/VLEK and the AMD chain",
                       description="Exit 0 verified, 1 rejected, 2 input unreadable.")
    p.add_argument("--report", metavar="R", help="raw attestation report (0x4A0 bytes); omit to check a VEK chain only")
    p.add_argument("--vek", metavar="V", help="VCEK or VLEK certificate (DER or PEM)")
    p.add_argument("--trust-dir", metavar="D",
                   help="directory with <product>_ark.pem, _ask.pem, _asvk.pem (default: ../shared/vectors/amd_roots)")
    p.add_argument("--chain", metavar="PEM", help="ASK/ASVK (and ARK) presented with the evidence, PEM")
    p.add_argument("--certs", metavar="TABLE", help="GHCB certificate table as the guest received it")
    p.add_argument("--at", metavar="ISO8601|none", help="time for validity checks (default now; 'none' = off)")
    p.add_argument("--json", action="store_true", help="print the verdict as one JSON object")
    p.add_argument("--compact", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--allow-unpinned", action="store_true",
                   help="accept ARKs that are not AMD's (emulated platform roots)")
    p.set_defaults(func=_cmd_verify)


# --- report show ----------------------------------------------------------------------------


def _fmt_tcb(value: int, product: str | None) -> str:
    from snplab.abi.tcb import TcbLayout, TcbVersion, layout_for_product

    if product is not None:
        return f"{value:#018x} ({TcbVersion.unpack(value, layout_for_product(product))})"
    return (f"{value:#018x} (milan/genoa: {TcbVersion.unpack(value, TcbLayout.MILAN_GENOA)} | "
            f"turin: {TcbVersion.unpack(value, TcbLayout.TURIN)})")


def report_lines(raw: bytes) -> list[str]:
    """Human-readable fields of a report (raises ReportFormatError)."""
    from snplab.abi.report import AttestationReport
    from snplab.attest.product import product_from_cpuid

    r = AttestationReport.unpack(raw)
    product = product_from_cpuid(r.cpuid_fam_id, r.cpuid_mod_id) if r.has_cpuid else None
    pol, plat, sig = r.guest_policy, r.platform, r.signer
    lines = [
        f"version            {r.version}",
        f"guest_svn          {r.guest_svn}",
        f"policy             {r.policy:#x} (abi {pol.abi_major}.{pol.abi_minor}; {', '.join(pol.flags()) or '-'})",
        f"family_id          {r.family_id.hex()}",
        f"image_id           {r.image_id.hex()}",
        f"vmpl               {r.vmpl}",
        f"signature_algo     {r.signature_algo}",
        f"current_tcb        {_fmt_tcb(r.current_tcb, product)}",
        f"platform_info      {r.platform_info:#x} ({', '.join(plat.flags()) or '-'})",
        f"signer_info        {r.signer_info:#x} (signing_key={sig.signing_key_name}, "
        f"author_key_en={int(sig.author_key_en)}, mask_chip_key={int(sig.mask_chip_key)})",
        f"report_data        {r.report_data.hex()}",
        f"measurement        {r.measurement.hex()}",
        f"host_data          {r.host_data.hex()}",
        f"id_key_digest      {r.id_key_digest.hex()}",
        f"author_key_digest  {r.author_key_digest.hex()}",
        f"report_id          {r.report_id.hex()}",
        f"report_id_ma       {r.report_id_ma.hex()}",
        f"reported_tcb       {_fmt_tcb(r.reported_tcb, product)}",
    ]
    if r.has_cpuid:
        lines.append(f"cpuid              family {r.cpuid_fam_id:#04x} model {r.cpuid_mod_id:#04x} "
                     f"stepping {r.cpuid_step} ({product or 'unknown product'})")
    lines += [
        f"chip_id            {r.chip_id.hex()}",
        f"committed_tcb      {_fmt_tcb(r.committed_tcb, product)}",
        f"current_version    {r.current_major}.{r.current_minor}.{r.current_build}",
        f"committed_version  {r.committed_major}.{r.committed_minor}.{r.committed_build}",
        f"launch_tcb         {_fmt_tcb(r.launch_tcb, product)}",
    ]
    if r.has_mitigation_vectors:
        lines += [f"launch_mit_vector  {r.launch_mit_vector:#x}", f"current_mit_vector {r.current_mit_vector:#x}"]
    lines += [f"signature_r        {r.r:#x}", f"signature_s        {r.s:#x}"]
    bad = r.reserved_nonzero()
    if bad:
        lines.append(f"non-zero reserved  {', '.join(bad)}")
    return lines


def _cmd_report_show(args: argparse.Namespace) -> int:
    from snplab.abi.report import ReportFormatError

    raw = read_input(args.path, "report")
    try:
        lines = report_lines(raw)
    except ReportFormatError as e:
        raise InputError(f"{args.path}: {e}") from None
    print("\n".join(lines))
    return EXIT_OK


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="inspect attestation reports")
    rsub = p.add_subparsers(dest="report_cmd", required=True, parser_class=_Parser)
    show = rsub.add_parser("show", help="print a report's fields")
    show.add_argument("path", metavar="R")
    show.set_defaults(func=_cmd_report_show)


# --- main -----------------------------------------------------------------------------------

BUILTIN: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_verify, _add_report)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="SEV-SNP extended guest request test suite tools")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in BUILTIN:
        add(sub)
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue  # that part is not installed (yet)
            raise
        register = getattr(mod, "register", None)
        if callable(register):
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except InputError as e:
        print(f"{PROG} {args.command}: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""Verify an SNP attestation report against its VCEK/VLEK and the AMD chain.

A library: returns a ``Verdict`` (never prints, never exits). Every check has a stable name; a
check that could not run because an earlier one failed is recorded as failed with detail
"not run: ...", so ``first_failure`` is always the root cause. Check order:

    report_parse, cert_table (tables only) / chain_parse (only if unreadable), vek_parse, product,
    chain_ark_self_signed,
    chain_ark_pinned, chain_ask, chain_vek, validity, signature_algo, signature, reported_tcb,
    chip_id, signing_key, report_format

What each check means is in shared/reference/verify.md §a–§b; the certificate a check concerns
comes from the evidence (``chain`` / certificate table) if given, else from the trust store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

from cryptography import x509

from snplab.abi import cert_table as ct
from snplab.abi.report import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    SIGNING_KEY_NONE,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    AttestationReport,
    ReportFormatError,
)
from snplab.abi.tcb import TcbLayout, TcbVersion, layout_for_product
from snplab.attest import chain as chainmod
from snplab.attest.certs import (
    CertLoadError,
    Role,
    common_name,
    expected_cn,
    load_certificate,
    load_certificates,
    role_and_product,
)
from snplab.attest.extensions import AmdExtensions, ExtensionError, parse_extensions
from snplab.attest.product import detect_product, product_from_name
from snplab.attest.signature import SignatureError, check_p384_key, verify_report_signature
from snplab.attest.trust import TrustStore


class _Now:
    def __repr__(self) -> str:
        return "NOW"


NOW = _Now()  # default for `at`: the current time; pass at=None to switch validity checks off

CHECK_ORDER = (
    "report_parse", "cert_table", "chain_parse", "vek_parse", "product", "chain_ark_self_signed",
    "chain_ark_pinned", "chain_ask", "chain_vek", "validity", "signature_algo", "signature", "reported_tcb", "chip_id",
    "signing_key", "report_format",
)
INPUT_CHECKS = ("report_parse", "cert_table", "chain_parse")
_AFTER_INPUT = tuple(n for n in CHECK_ORDER if n not in INPUT_CHECKS)  # failing one of these means "unreadable input"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]
    product: str | None = None
    signer: str | None = None  # "vcek" | "vlek" | None
    report_version: int | None = None
    input_error: str | None = None  # set when an input could not be decoded at all

    @property
    def ok(self) -> bool:
        return self.input_error is None and bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.checks if not c.ok)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def verdict(self) -> str:
        return "error" if self.input_error else ("pass" if self.ok else "fail")

    def to_json(self) -> dict:
        return {
            "verdict": self.verdict,
            "product": self.product,
            "signer": self.signer,
            "report_version": self.report_version,
            "checks": [c.to_json() for c in self.checks],
        }

    def summary(self) -> str:
        f = self.first_failure
        if f is None:
            return f"verified ({self.product}, {self.signer}, report v{self.report_version})"
        return f"{f.name}: {f.detail}"


class _Checks:
    def __init__(self) -> None:
        self.items: list[Check] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.items.append(Check(name, ok, detail))
        return ok

    def skip(self, name: str, because: str) -> None:
        self.items.append(Check(name, False, f"not run: {because}"))


@dataclass
class _Evidence:
    """Certificates presented with the report (chain PEM or certificate table)."""

    ark: x509.Certificate | None = None
    intermediates: list[x509.Certificate] = field(default_factory=list)
    vek: x509.Certificate | None = None


def _resolve_at(at: datetime | None | _Now) -> datetime | None:
    if at is NOW:
        return datetime.now(timezone.utc)
    if at is None:
        return None
    assert isinstance(at, datetime)
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _sort_presented(certs: Sequence[x509.Certificate]) -> _Evidence:
    ev = _Evidence()
    for c in certs:
        role, _ = role_and_product(c)
        self_issued = c.issuer == c.subject
        if role is Role.ARK or (role is Role.UNKNOWN and self_issued):
            ev.ark = c
        elif role in (Role.VCEK, Role.VLEK):
            ev.vek = c
        else:
            ev.intermediates.append(c)
    return ev


def _load_chain(chain: bytes | Sequence[x509.Certificate] | None) -> list[x509.Certificate]:
    if chain is None:
        return []
    if isinstance(chain, (bytes, bytearray, memoryview)):
        return load_certificates(bytes(chain))
    return list(chain)


@dataclass
class _Vek:
    cert: x509.Certificate
    ext: AmdExtensions
    kind: str  # "vcek" | "vlek"


def _parse_vek(cert: x509.Certificate) -> tuple[_Vek | None, str]:
    role, _ = role_and_product(cert)
    try:
        ext = parse_extensions(cert)
    except ExtensionError as e:
        return None, str(e)
    if role is Role.VCEK:
        kind = "vcek"
    elif role is Role.VLEK:
        kind = "vlek"
    else:
        return None, f"subject CN {common_name(cert.subject)!r} is neither SEV-VCEK nor SEV-VLEK"
    try:
        check_p384_key(cert.public_key())
    except (SignatureError, ValueError) as e:
        return None, str(e)
    if kind == "vcek" and (ext.hw_id is None or ext.csp_id is not None):
        return None, "a VCEK must carry hwID and no cspID"
    if kind == "vlek" and (ext.csp_id is None or ext.hw_id is not None):
        return None, "a VLEK must carry cspID and no hwID"
    missing = [n for n in ("bl_spl", "tee_spl", "snp_spl", "ucode_spl") if getattr(ext, n) is None]
    if missing:
        return None, f"missing AMD extensions: {', '.join(missing)}"
    ident = f"hwID {len(ext.hw_id)} bytes{' (OCTET STRING)' if ext.hw_id_wrapped else ''}" if ext.hw_id \
        else f"cspID {ext.csp_id!r}"
    return _Vek(cert, ext, kind), f"{kind.upper()} productName {ext.product_name!r}, {ident}"


def _chain_checks(
    out: _Checks,
    product: str | None,
    vek: _Vek | None,
    trust: TrustStore,
    presented: _Evidence,
    at: datetime | None,
) -> None:
    """chain_ark_self_signed, chain_ark_pinned, chain_ask, chain_vek, validity."""
    names = ("chain_ark_self_signed", "chain_ark_pinned", "chain_ask", "chain_vek", "validity")
    if product is None:
        for n in names:
            out.skip(n, "product unknown")
        return
    roots = trust.get(product)
    ark = roots.ark or presented.ark
    ark_src = "trust store" if roots.ark is not None else "evidence"
    used: list[x509.Certificate] = []

    ark_ok = False
    if ark is None:
        out.add("chain_ark_self_signed", False, f"no {product} ARK in the trust store or the evidence")
    else:
        try:
            if common_name(ark.subject) != expected_cn(Role.ARK, product):
                raise chainmod.ChainError(
                    f"ARK CN {common_name(ark.subject)!r}, expected {expected_cn(Role.ARK, product)!r}")
            chainmod.check_ca(ark)
            chainmod.verify_signed_by(ark, ark)
            ark_ok = out.add("chain_ark_self_signed", True, f"{common_name(ark.subject)} from {ark_src}")
            used.append(ark)
        except chainmod.ChainError as e:
            out.add("chain_ark_self_signed", False, str(e))

    if ark is None:
        out.skip("chain_ark_pinned", "no ARK")
    else:
        problem = trust.ark_pin_problem(product, ark)
        if problem is None and presented.ark is not None and roots.ark is not None and presented.ark != roots.ark:
            problem = f"the ARK presented with the evidence differs from the trusted {product} ARK"
        if problem:
            out.add("chain_ark_pinned", False, problem)
        else:
            out.add("chain_ark_pinned", True,
                    f"SHA-256 pin of AMD's {product} ARK" if trust.pinned
                    else f"unpinned trust store ({trust.label or 'explicitly allowed'})")

    if vek is None:
        for n in ("chain_ask", "chain_vek"):
            out.skip(n, "no usable VEK")
        inter = None
    else:
        role = Role.ASVK if vek.kind == "vlek" else Role.ASK
        want_cn = expected_cn(role, product)
        # path building: prefer the presented intermediate that issued this VEK, then the trust store's
        cands = [c for c in presented.intermediates if c.subject == vek.cert.issuer]
        cands += [c for c in presented.intermediates if c not in cands]
        inter = cands[0] if cands else (roots.asvk if role is Role.ASVK else roots.ask)
        src = "evidence" if cands else "trust store"
        if inter is None:
            out.add("chain_ask", False, f"no {role.value.upper()} for {product} in the trust store or the evidence")
        elif ark is None or not ark_ok:
            out.skip("chain_ask", "ARK not usable")
        else:
            try:
                if common_name(inter.subject) != want_cn:
                    raise chainmod.ChainError(
                        f"{role.value.upper()} CN {common_name(inter.subject)!r}, expected {want_cn!r}")
                chainmod.check_ca(inter)
                chainmod.verify_signed_by(inter, ark)
                out.add("chain_ask", True, f"{want_cn} signed by {common_name(ark.subject)} ({src})")
                used.append(inter)
            except chainmod.ChainError as e:
                out.add("chain_ask", False, str(e))
        if inter is None:
            out.skip("chain_vek", f"no {role.value.upper()}")
        else:
            try:
                chainmod.verify_signed_by(vek.cert, inter)
                out.add("chain_vek", True, f"{vek.kind.upper()} signed by {common_name(inter.subject)}")
                used.append(vek.cert)
            except chainmod.ChainError as e:
                out.add("chain_vek", False, str(e))

    if at is None:
        out.add("validity", True, "time checks off")
    else:
        certs = [c for c in (ark, inter if vek else None, vek.cert if vek else None) if c is not None]
        problems = [p for p in (chainmod.validity_problem(c, at) for c in certs) if p]
        if problems:
            out.add("validity", False, f"at {at.isoformat()}: " + "; ".join(problems))
        else:
            out.add("validity", True, f"{len(certs)} certificates valid at {at.isoformat()}")


def _report_checks(out: _Checks, report: AttestationReport, raw: bytes, product: str | None,
                   vek: _Vek | None) -> None:
    """signature_algo, signature, reported_tcb, chip_id, signing_key, report_format."""
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        out.add("signature_algo", False, f"SIGNATURE_ALGO {report.signature_algo}, expected 1 (ECDSA P-384/SHA-384)")
    else:
        out.add("signature_algo", True, "ECDSA P-384 with SHA-384")

    if vek is None:
        out.skip("signature", "no usable VEK")
    else:
        try:
            verify_report_signature(raw, vek.cert.public_key())
            out.add("signature", True, f"verifies with the {vek.kind.upper()} key")
        except SignatureError as e:
            out.add("signature", False, str(e))

    if vek is None or product is None:
        out.skip("reported_tcb", "no usable VEK" if vek is None else "product unknown")
    else:
        layout = layout_for_product(product)
        reported = TcbVersion.unpack(report.reported_tcb, layout)
        try:
            cert_tcb = vek.ext.tcb(layout)
        except ExtensionError as e:
            out.add("reported_tcb", False, str(e))
        else:
            if cert_tcb.pack() == report.reported_tcb:
                out.add("reported_tcb", True, f"{reported} ({layout.value} layout)")
            else:
                out.add("reported_tcb", False,
                        f"REPORTED_TCB {report.reported_tcb:#018x} ({reported}) != {vek.kind.upper()} "
                        f"{cert_tcb.pack():#018x} ({cert_tcb})")

    if vek is None or product is None:
        out.skip("chip_id", "no usable VEK" if vek is None else "product unknown")
    elif vek.kind == "vlek":
        out.add("chip_id", True, f"VLEK: no hwID to compare (cspID {vek.ext.csp_id!r})")
    elif report.chip_id_masked:
        out.add("chip_id", True, "CHIP_ID is zero (MASK_CHIP_ID): not compared")
    else:
        hw = vek.ext.hw_id or b""
        if layout_for_product(product) is TcbLayout.TURIN:
            want = hw + bytes(64 - len(hw)) if len(hw) == 8 else None
            rule = "Turin: 8-byte hwID then 56 zero bytes"
        else:
            want = hw if len(hw) == 64 else None
            rule = "64-byte hwID"
        if want is None:
            out.add("chip_id", False, f"{product} VCEK hwID has {len(hw)} bytes ({rule})")
        elif want == report.chip_id:
            out.add("chip_id", True, f"CHIP_ID equals VCEK hwID ({rule})")
        else:
            out.add("chip_id", False, f"CHIP_ID {report.chip_id.hex()[:16]}... != VCEK hwID {hw.hex()[:16]}...")

    sk = report.signer.signing_key
    if vek is None:
        out.skip("signing_key", "no usable VEK")
    else:
        want_key = SIGNING_KEY_VLEK if vek.kind == "vlek" else SIGNING_KEY_VCEK
        if sk == want_key:
            out.add("signing_key", True, f"SIGNING_KEY={sk} ({vek.kind})")
        elif sk == SIGNING_KEY_NONE:
            out.add("signing_key", False, "SIGNING_KEY=7: the report is not signed")
        else:
            out.add("signing_key", False,
                    f"SIGNING_KEY={sk} ({report.signer.signing_key_name}) but the certificate is a {vek.kind.upper()}")

    problems = list(report.guest_policy.problems()) + [f"non-zero {n}" for n in report.reserved_nonzero()]
    out.add("report_format", not problems, "; ".join(problems) if problems else "reserved fields zero, policy well-formed")


def _verify(
    report_bytes: bytes | None,
    vek_in: bytes | x509.Certificate | None,
    trust: TrustStore,
    presented: _Evidence,
    at: datetime | None | _Now,
    out: _Checks,
) -> Verdict:
    when = _resolve_at(at)
    report: AttestationReport | None = None
    raw = b""
    if report_bytes is not None:
        raw = bytes(report_bytes)
        try:
            report = AttestationReport.unpack(raw)
            out.add("report_parse", True, f"version {report.version}, {len(raw)} bytes")
        except ReportFormatError as e:
            out.add("report_parse", False, str(e))
            for n in _AFTER_INPUT:
                out.skip(n, "report unreadable")
            return Verdict(tuple(out.items), input_error=str(e))

    cert: x509.Certificate | None = None
    load_problem = None
    if isinstance(vek_in, x509.Certificate):
        cert = vek_in
    elif vek_in is not None:
        try:
            cert = load_certificate(bytes(vek_in))
        except CertLoadError as e:
            load_problem = str(e)
    elif presented.vek is not None:
        cert = presented.vek
    else:
        load_problem = "no VCEK/VLEK given"
    vek: _Vek | None = None
    vek_detail = load_problem or ""
    if cert is not None:
        vek, vek_detail = _parse_vek(cert)

    product_name = vek.ext.product_name if vek else None
    if report is not None:
        product, pdetail = detect_product(report, product_name)
    else:
        product = product_from_name(product_name)
        how = f"VEK productName {product_name!r}"
        if product is None and cert is not None:
            issuer_cn = common_name(cert.issuer) or ""
            product = product_from_name(issuer_cn.rsplit("-", 1)[-1])
            how = f"VEK issuer {issuer_cn!r}"
        pdetail = f"{product} from {how} (no report)" if product else f"product unknown: no report and {how}"
    out.add("vek_parse", vek is not None, vek_detail)
    out.add("product", product is not None, pdetail)

    _chain_checks(out, product, vek, trust, presented, when)
    if report is not None:
        _report_checks(out, report, raw, product, vek)

    return Verdict(
        tuple(out.items),
        product=product,
        signer=vek.kind if vek else None,
        report_version=report.version if report else None,
        input_error=load_problem if (load_problem and vek_in is not None) else None,
    )


def _presented_chain(chain: bytes | Sequence[x509.Certificate] | None
                     ) -> _Evidence | Verdict:
    """The certificates presented with the evidence, sorted; a Verdict if they cannot be read."""
    try:
        return _sort_presented(_load_chain(chain))
    except CertLoadError as e:
        return Verdict((Check("chain_parse", False, str(e)),), input_error=f"chain: {e}")


def verify_report(
    report_bytes: bytes,
    vek_der: bytes | x509.Certificate | None,
    trust: TrustStore,
    chain: bytes | Sequence[x509.Certificate] | None = None,
    at: datetime | None | _Now = NOW,
) -> Verdict:
    """Verify a report with its VCEK/VLEK (DER or PEM) against `trust`.

    `chain`: certificates presented with the evidence (PEM bundle bytes or a list): ASK/ASVK and
    optionally the ARK (which must then equal the trusted one), and optionally the VEK when
    `vek_der` is None. `at`: validity time (default NOW; None switches time checks off)."""
    presented = _presented_chain(chain)
    if isinstance(presented, Verdict):
        return presented
    return _verify(report_bytes, vek_der, trust, presented, at, _Checks())


def verify_vek(
    vek_der: bytes | x509.Certificate,
    trust: TrustStore,
    chain: bytes | Sequence[x509.Certificate] | None = None,
    at: datetime | None | _Now = NOW,
) -> Verdict:
    """Chain-only verification of a VCEK/VLEK (no report): product, vek_parse, chain_*, validity."""
    presented = _presented_chain(chain)
    if isinstance(presented, Verdict):
        return presented
    return _verify(None, vek_der, trust, presented, at, _Checks())


def verify_from_cert_table(
    report_bytes: bytes,
    table_bytes: bytes,
    trust: TrustStore,
    at: datetime | None | _Now = NOW,
    vek_der: bytes | x509.Certificate | None = None,
) -> Verdict:
    """Verify a report with the VEK, ASK/ASVK and ARK taken from a GHCB certificate table.

    The VEK entry is chosen by the report's SIGNING_KEY (VCEK or VLEK GUID); `vek_der`, if given,
    overrides it. A malformed table is an input error (check ``cert_table``)."""
    out = _Checks()
    raw = bytes(report_bytes)
    try:
        report = AttestationReport.unpack(raw)
        out.add("report_parse", True, f"version {report.version}, {len(raw)} bytes")
    except ReportFormatError as e:
        out.add("report_parse", False, str(e))
        for n in ("cert_table",) + _AFTER_INPUT:
            out.skip(n, "report unreadable")
        return Verdict(tuple(out.items), input_error=str(e))
    try:
        table = ct.parse_table(table_bytes)
    except ct.CertTableError as e:
        out.add("cert_table", False, str(e))
        for n in _AFTER_INPUT:
            out.skip(n, "certificate table unreadable")
        return Verdict(tuple(out.items), report_version=report.version, input_error=str(e))

    want_guid = ct.VLEK_GUID if report.signer.signing_key == SIGNING_KEY_VLEK else ct.VCEK_GUID
    presented = _Evidence()
    problems: list[str] = []
    for guid, slot in ((ct.ARK_GUID, "ark"), (ct.ASK_GUID, "ask"), (want_guid, "vek")):
        blob = table.get(guid)
        if blob is None:
            continue
        try:
            cert = load_certificate(blob)
        except CertLoadError as e:
            problems.append(f"{ct.guid_name(guid)} entry: {e}")
            continue
        if slot == "ark":
            presented.ark = cert
        elif slot == "ask":
            presented.intermediates.append(cert)
        else:
            presented.vek = cert
    if vek_der is None and presented.vek is None:
        problems.append(f"no {ct.guid_name(want_guid)} entry (report SIGNING_KEY={report.signer.signing_key})")
    names = ", ".join(ct.guid_name(g) for g in table.guids()) or "empty"
    if problems:
        out.add("cert_table", False, "; ".join(problems) + f" [entries: {names}]")
        for n in _AFTER_INPUT:
            out.skip(n, "certificate table unusable")
        return Verdict(tuple(out.items), report_version=report.version, input_error="; ".join(problems))
    out.add("cert_table", True, f"entries: {names}")
    verdict = _verify(raw, vek_der, trust, presented, at, _Checks())
    # keep report_parse + cert_table first, then the rest (report_parse is re-run by _verify)
    rest = tuple(c for c in verdict.checks if c.name != "report_parse")
    return Verdict(tuple(out.items) + rest, product=verdict.product, signer=verdict.signer,
                   report_version=verdict.report_version, input_error=verdict.input_error)

"""Synthetic AMD-shaped certificates and signed reports, for tests of the verifier itself.

Everything here is made up on the spot: ARKs are not AMD's, so a TrustStore of these roots only
verifies with ``pinned=False``. Structure follows shared/reference/verify.md §a (names, RSASSA-PSS
SHA-384/MGF1-SHA-384/salt 48, AMD extensions, VCEK/VLEK key P-384). Not used by the emulated
platform (snplab.emu has its own PSP model and roots and must not import snplab.attest).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from snplab.abi.report import AttestationReport
from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import extensions as amd
from snplab.attest.trust import ProductRoots, TrustStore

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def amd_name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


@functools.lru_cache(maxsize=None)
def rsa_key(tag: str, bits: int = 2048) -> rsa.RSAPrivateKey:
    """A cached RSA key per tag (key generation is the slow part of these fixtures)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _ca(cn: str, issuer_cn: str, key, issuer_key, serial: int, not_before: datetime, days: int,
        pss: padding.PSS = PSS) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(amd_name(cn)).issuer_name(amd_name(issuer_cn))
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None if cn.startswith("ARK") else 0), True)
         .add_extension(x509.KeyUsage(False, False, False, False, False, True, cn.startswith("ARK"), False, False), True))
    return b.sign(issuer_key, hashes.SHA384(), rsa_padding=pss)


@dataclass(frozen=True)
class FakeRoots:
    product: str
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    asvk_key: rsa.RSAPrivateKey
    asvk: x509.Certificate

    def product_roots(self) -> ProductRoots:
        return ProductRoots(self.product, self.ark, self.ask, self.asvk)


@functools.lru_cache(maxsize=None)
def make_roots(product: str = "milan", tag: str = "") -> FakeRoots:
    P = product.capitalize()
    ark_key, ask_key, asvk_key = (rsa_key(f"{tag}{product}-{k}") for k in ("ark", "ask", "asvk"))
    ark = _ca(f"ARK-{P}", f"ARK-{P}", ark_key, ark_key, 0x10000, EPOCH, 25 * 365)
    ask = _ca(f"SEV-{P}", f"ARK-{P}", ask_key, ark_key, 0x10001, EPOCH, 25 * 365)
    asvk = _ca(f"SEV-VLEK-{P}", f"ARK-{P}", asvk_key, ark_key, 0x10101, EPOCH, 25 * 365)
    return FakeRoots(product, ark_key, ark, ask_key, ask, asvk_key, asvk)


def trust_store(*roots: FakeRoots) -> TrustStore:
    return TrustStore({r.product: r.product_roots() for r in roots}, pinned=False, label="synthetic test roots")


def _int_ext(oid: str, v: int) -> x509.UnrecognizedExtension:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")  # minimal positive DER INTEGER
    return x509.UnrecognizedExtension(ObjectIdentifier(oid), bytes([0x02, len(body)]) + body)


def _ia5_ext(oid: str, s: str) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(ObjectIdentifier(oid), bytes([0x16, len(s)]) + s.encode())


def make_vek(
    roots: FakeRoots,
    tcb: TcbVersion,
    kind: str = "vcek",
    hw_id: bytes | None = None,
    hw_id_wrapped: bool = False,
    csp_id: str = "CN=test.example",
    product_name: str | None = None,
    not_before: datetime = EPOCH,
    days: int = 7 * 365,
    key: ec.EllipticCurvePrivateKey | None = None,
    signer_key=None,
    pss: padding.PSS = PSS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A VCEK/VLEK with AMD extensions for `tcb`, signed by the roots' ASK/ASVK."""
    key = key or ec.generate_private_key(ec.SECP384R1())
    issuer = roots.asvk if kind == "vlek" else roots.ask
    exts = [_int_ext(amd.OID_STRUCT_VERSION, 1 if tcb.layout is TcbLayout.TURIN else 0),
            _ia5_ext(amd.OID_PRODUCT_NAME, product_name or roots.product.capitalize())]
    if tcb.layout is TcbLayout.TURIN:
        exts.append(_int_ext(amd.OID_FMC_SPL, tcb.fmc))
    exts += [_int_ext(amd.OID_BL_SPL, tcb.bootloader), _int_ext(amd.OID_TEE_SPL, tcb.tee),
             _int_ext(amd.OID_SNP_SPL, tcb.snp), _int_ext(amd.OID_UCODE_SPL, tcb.microcode)]
    if tcb.layout is TcbLayout.MILAN_GENOA:
        spl = tcb.reserved or bytes(4)
        exts += [_int_ext(o, v) for o, v in zip((amd.OID_SPL_4, amd.OID_SPL_5, amd.OID_SPL_6, amd.OID_SPL_7), spl)]
    if kind == "vcek":
        hw = hw_id if hw_id is not None else bytes(range(64 if tcb.layout is TcbLayout.MILAN_GENOA else 8))
        exts.append(x509.UnrecognizedExtension(
            ObjectIdentifier(amd.OID_HW_ID), (bytes([0x04, len(hw)]) + hw) if hw_id_wrapped else hw))
    else:
        exts.append(_ia5_ext(amd.OID_CSP_ID, csp_id))
    b = (x509.CertificateBuilder()
         .subject_name(amd_name("SEV-VLEK" if kind == "vlek" else "SEV-VCEK")).issuer_name(issuer.subject)
         .public_key(key.public_key()).serial_number(1)
         .not_valid_before(not_before).not_valid_after(not_before + timedelta(days=days)))
    for e in exts:
        b = b.add_extension(e, critical=False)
    sk = signer_key or (roots.asvk_key if kind == "vlek" else roots.ask_key)
    return key, b.sign(sk, hashes.SHA384(), rsa_padding=pss)


def sign_report(report: AttestationReport, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Sign bytes [0, 0x2A0) as the PSP does; R and S little-endian at 0x2A0 / 0x2E8."""
    der = key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return report.with_signature(r, s).pack()


CPUID = {"milan": (0x19, 0x01, 1), "genoa": (0x19, 0x11, 1), "turin": (0x1A, 0x02, 1)}


def make_report(tcb: TcbVersion, product: str = "milan", chip_id: bytes | None = None, signing_key: int = 0,
                version: int = 5, report_data: bytes = bytes(64), **fields) -> AttestationReport:
    fam, mod, step = CPUID[product] if version >= 3 else (0, 0, 0)
    if chip_id is None:
        chip_id = bytes(range(64)) if tcb.layout is TcbLayout.MILAN_GENOA else bytes(range(8)) + bytes(56)
    return AttestationReport(version=version, reported_tcb=tcb.pack(), current_tcb=tcb.pack(),
                             committed_tcb=tcb.pack(), launch_tcb=tcb.pack(), cpuid_fam_id=fam,
                             cpuid_mod_id=mod, cpuid_step=step, chip_id=chip_id,
                             signer_info=signing_key << 2, report_data=report_data, **fields)

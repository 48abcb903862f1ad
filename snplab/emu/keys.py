"""The emulated AMD key hierarchy: ARK → ASK → VCEK and ARK → ASVK → VLEK, per product.

Shape of every certificate copied from AMD's real ones (shared/reference/verify.md §a.1/§a.2, checked
against shared/vectors): X.509 v3, subject/issuer DN in the order OU, C, L, ST, O, CN; ARK/ASK/ASVK
RSA-4096 (e=65537), VCEK/VLEK ECDSA P-384; every link signed with RSASSA-PSS SHA-384, MGF1-SHA-384,
salt 48 and an *explicit* trailerField 1 (as AMD's DER has it); ARK serial 0x10000/0x20000/0x30000,
ASK 0x10001/0x20002/0x30001, ASVK 0x10101/0x20101/0x30101, VCEK/VLEK serial 0; validity 25 years
(ARK/ASK/ASVK), 7 years (VCEK), 1 year (VLEK); VCEK/VLEK carry only AMD's extensions
(arc 1.3.6.1.4.1.3704.1), in AMD's order, with minimal-DER INTEGERs and a bare (untagged) hwID:

    Milan/Genoa VCEK: 1 structVersion=0, 2 productName, 3.1 bl, 3.2 tee, 3.4..3.7 spl_4..7,
                      3.3 snp, 3.8 ucode, 4 hwID (64 bytes)
    Turin VCEK:       1 structVersion=1, 2 productName, 3.9 fmc, 3.1, 3.2, 3.3, 3.5..3.7, 3.8,
                      4 hwID (8 bytes)
    VLEK:             as the VCEK of its product but productName = product line and 5 cspID
                      instead of hwID

What marks them as *not* AMD's: O = "snplab emulated (not AMD)" in every subject and issuer, and
the CRL distribution points name the reserved ``.invalid`` domain. Nothing here is hardware-backed.

Generated keys are cached on disk (``$SNPLAB_CACHE/emu-keys`` or ``~/.cache/snplab/emu-keys``),
one JSON file per (kind, product, parameters), written atomically (temp file + rename) under an
exclusive ``flock`` so that pytest-xdist workers generating the same key wait for one another.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from snplab.abi.cert_table import ARK_GUID, ASK_GUID, VCEK_GUID, VLEK_GUID, build_table
from snplab.abi.tcb import TcbLayout, TcbVersion, layout_for_product

EMULATED_ORGANIZATION = "snplab emulated (not AMD)"
PRODUCTS = ("milan", "genoa", "turin")
SIGNERS = ("vcek", "vlek")
CACHE_FORMAT = 1  # bump when the cached files or certificate contents change


class KeyStoreError(RuntimeError):
    """The key cache cannot be used (unwritable directory, corrupt file that cannot be replaced)."""


@dataclass(frozen=True)
class ProductInfo:
    """What the emulated platform says about one EPYC generation.

    CPUID family/model/stepping are those seen in real reports (verify.md §0 "observed models").
    """

    name: str  # as in AMD's CNs: "Milan"
    family: int
    model: int
    stepping: int
    vcek_product_name: str  # productName extension on a VCEK
    struct_version: int  # VCEK structVersion extension
    hwid_size: int  # bytes of hwID / significant bytes of CHIP_ID
    ark_serial: int
    ask_serial: int
    asvk_serial: int
    default_tcb: tuple[tuple[str, int], ...]  # TcbVersion keyword arguments

    @property
    def tcb_layout(self) -> TcbLayout:
        return layout_for_product(self.name)

    @property
    def cpuid_signature(self) -> int:
        """CPUID(1).EAX: (ext_family<<20)|(ext_model<<16)|(base_family<<8)|(base_model<<4)|stepping."""
        base_family = min(self.family, 0xF)
        ext_family = self.family - 0xF if self.family > 0xF else 0
        return ((ext_family << 20) | ((self.model >> 4) << 16) | (base_family << 8)
                | ((self.model & 0xF) << 4) | self.stepping)


PRODUCT_INFO: dict[str, ProductInfo] = {
    "milan": ProductInfo("Milan", 0x19, 0x01, 1, "Milan-B0", 0, 64, 0x10000, 0x10001, 0x10101,
                         (("bootloader", 4), ("tee", 0), ("snp", 22), ("microcode", 213))),
    "genoa": ProductInfo("Genoa", 0x19, 0x11, 1, "Genoa", 0, 64, 0x20000, 0x20002, 0x20101,
                         (("bootloader", 9), ("tee", 0), ("snp", 23), ("microcode", 72))),
    "turin": ProductInfo("Turin", 0x1A, 0x02, 1, "Turin", 1, 8, 0x30000, 0x30001, 0x30101,
                         (("fmc", 1), ("bootloader", 1), ("tee", 1), ("snp", 3), ("microcode", 73))),
}


def product_info(product: str) -> ProductInfo:
    try:
        return PRODUCT_INFO[product.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown product {product!r} (want one of {', '.join(PRODUCTS)})") from None


def default_tcb(product: str) -> TcbVersion:
    info = product_info(product)
    return TcbVersion(info.tcb_layout, **dict(info.default_tcb))  # type: ignore[arg-type]


def default_chip_id(product: str) -> bytes:
    """A fixed, obviously synthetic CHIP_ID (64 bytes; Turin: 8 significant bytes then zeros)."""
    info = product_info(product)
    raw = hashlib.sha512(f"snplab emulated chip {info.name}".encode()).digest()
    return raw[: info.hwid_size].ljust(64, b"\0")


def normalize_chip_id(product: str, chip_id: bytes | None) -> bytes:
    """The 64-byte CHIP_ID a report carries. Turin accepts 8 bytes (or 64 with a zero tail)."""
    info = product_info(product)
    if chip_id is None:
        return default_chip_id(product)
    chip_id = bytes(chip_id)
    if len(chip_id) == info.hwid_size:
        return chip_id.ljust(64, b"\0")
    if len(chip_id) == 64 and not any(chip_id[info.hwid_size:]):
        return chip_id
    raise ValueError(f"{info.name} CHIP_ID must be {info.hwid_size} bytes"
                     + (" (or 64 with bytes 8..63 zero)" if info.hwid_size != 64 else "")
                     + f", got {len(chip_id)}")


DEFAULT_CSP_ID = "CN=snplab-emulated-csp.invalid"

# ---------------------------------------------------------------------------------------------
# Minimal DER (only what is needed to emit AMD's exact encodings)

_TAG_INTEGER, _TAG_BIT_STRING, _TAG_IA5 = 0x02, 0x03, 0x16
_TAG_OID, _TAG_NULL, _TAG_SEQUENCE = 0x06, 0x05, 0x30


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def der_integer(value: int) -> bytes:
    """Minimal DER INTEGER (non-negative): 02 01 xx below 128, 02 02 00 xx for 128..255."""
    if value < 0:
        raise ValueError("negative INTEGER")
    body = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _tlv(_TAG_INTEGER, body)


def der_ia5(text: str) -> bytes:
    return _tlv(_TAG_IA5, text.encode("ascii"))


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return _tlv(_TAG_OID, bytes(body))


def _der_children(content: bytes) -> list[bytes]:
    """Split DER content into its top-level TLVs (raw bytes of each). Input is our own DER."""
    out, pos = [], 0
    while pos < len(content):
        start = pos
        pos += 1
        first = content[pos]
        pos += 1
        if first & 0x80:
            n = first & 0x7F
            length = int.from_bytes(content[pos:pos + n], "big")
            pos += n
        else:
            length = first
        pos += length
        out.append(content[start:pos])
    return out


def _der_content(tlv: bytes) -> bytes:
    first = tlv[1]
    head = 2 + (first & 0x7F if first & 0x80 else 0)
    return tlv[head:]


# RSASSA-PSS AlgorithmIdentifier exactly as in AMD's certificates (explicit trailerField 1).
_OID_SHA384 = "2.16.840.1.101.3.4.2.2"
_SHA384_ALG = _tlv(_TAG_SEQUENCE, _der_oid(_OID_SHA384) + _tlv(_TAG_NULL, b""))
AMD_PSS_ALGORITHM = _tlv(_TAG_SEQUENCE, _der_oid("1.2.840.113549.1.1.10") + _tlv(_TAG_SEQUENCE,
    _tlv(0xA0, _SHA384_ALG)
    + _tlv(0xA1, _tlv(_TAG_SEQUENCE, _der_oid("1.2.840.113549.1.1.8") + _SHA384_ALG))
    + _tlv(0xA2, der_integer(48))
    + _tlv(0xA3, der_integer(1))))

PSS_SHA384 = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


def _sign_amd_style(tbs_template: bytes, serial: int, issuer_key: rsa.RSAPrivateKey) -> bytes:
    """Re-encode a tbsCertificate with ``serial`` and AMD's PSS AlgorithmIdentifier, sign it with
    RSASSA-PSS SHA-384 (salt 48) and return the whole certificate's DER."""
    parts = _der_children(_der_content(tbs_template))
    idx = 1 if parts[0][0] == 0xA0 else 0  # [0] version
    parts[idx] = der_integer(serial)
    parts[idx + 1] = AMD_PSS_ALGORITHM
    tbs = _tlv(_TAG_SEQUENCE, b"".join(parts))
    sig = issuer_key.sign(tbs, PSS_SHA384, hashes.SHA384())
    return _tlv(_TAG_SEQUENCE, tbs + AMD_PSS_ALGORITHM + _tlv(_TAG_BIT_STRING, b"\0" + sig))


def _load_der(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # serial 0, as AMD's VCEK/VLEK
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(der)


# ---------------------------------------------------------------------------------------------
# Certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, EMULATED_ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _crl_dp(kind: str, product: str) -> x509.CRLDistributionPoints:
    url = f"https://kds.snplab-emulated.invalid/{kind}/v1/{product}/crl"
    return x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None,
        crl_issuer=None)])


_KU_FALSE = dict(digital_signature=False, content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False, encipher_only=False,
                 decipher_only=False)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _validity(years: int, now: _dt.datetime) -> tuple[_dt.datetime, _dt.datetime]:
    start = now - _dt.timedelta(days=1)
    return start, start + _dt.timedelta(days=365 * years + years // 4)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, years: int,
             now: _dt.datetime) -> x509.CertificateBuilder:
    nb, na = _validity(years, now)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(1).not_valid_before(nb).not_valid_after(na))


def _issue(builder: x509.CertificateBuilder, serial: int, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    # cryptography refuses serial 0 and omits the default trailerField, so the builder only gives
    # the template; _sign_amd_style produces AMD's exact encoding.
    template = builder.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS_SHA384)
    return _load_der(_sign_amd_style(template.tbs_certificate_bytes, serial, issuer_key))


def make_ark(product: str, key: rsa.RSAPrivateKey, now: _dt.datetime | None = None) -> x509.Certificate:
    info = product_info(product)
    name = _name(f"ARK-{info.name}")
    b = _builder(name, name, key.public_key(), 25, now or _now())
    b = b.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=True, **_KU_FALSE), critical=True)
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(_crl_dp("vcek", info.name), critical=False)
    return _issue(b, info.ark_serial, key)


def make_intermediate(product: str, kind: str, key: rsa.RSAPrivateKey, ark: x509.Certificate,
                      ark_key: rsa.RSAPrivateKey, now: _dt.datetime | None = None) -> x509.Certificate:
    """ASK (kind "ask", CN SEV-<P>) or ASVK (kind "asvk", CN SEV-VLEK-<P>)."""
    info = product_info(product)
    cn, serial, crl = {"ask": (f"SEV-{info.name}", info.ask_serial, "vcek"),
                       "asvk": (f"SEV-VLEK-{info.name}", info.asvk_serial, "vlek")}[kind]
    b = _builder(_name(cn), ark.subject, key.public_key(), 25, now or _now())
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ark_key.public_key()),
                        critical=False)
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    b = b.add_extension(x509.KeyUsage(key_cert_sign=True, crl_sign=False, **_KU_FALSE), critical=True)
    b = b.add_extension(_crl_dp(crl, info.name), critical=False)
    return _issue(b, serial, ark_key)


# AMD extension OIDs (go-sev-guest kds/kds.go; fmcSPL from snpguest/trustee; verify.md §a.2)
OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_SPL_4 = "1.3.6.1.4.1.3704.1.3.4"
OID_SPL_5 = "1.3.6.1.4.1.3704.1.3.5"
OID_SPL_6 = "1.3.6.1.4.1.3704.1.3.6"
OID_SPL_7 = "1.3.6.1.4.1.3704.1.3.7"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
OID_HWID = "1.3.6.1.4.1.3704.1.4"
OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"


def amd_extensions(product: str, tcb: TcbVersion, *, hwid: bytes | None = None,
                   csp_id: str | None = None, product_name: str | None = None) -> list[tuple[str, bytes]]:
    """(OID, extnValue content) in AMD's order for a VCEK (hwid) or VLEK (csp_id)."""
    info = product_info(product)
    if tcb.layout is not info.tcb_layout:
        raise ValueError(f"TCB layout {tcb.layout.value} does not match product {info.name}")
    if (hwid is None) == (csp_id is None):
        raise ValueError("give exactly one of hwid (VCEK) or csp_id (VLEK)")
    name = product_name or (info.vcek_product_name if hwid is not None else info.name)
    tail: list[tuple[str, bytes]] = ([(OID_HWID, bytes(hwid))] if hwid is not None
                                     else [(OID_CSP_ID, der_ia5(csp_id or ""))])
    if info.tcb_layout is TcbLayout.TURIN:
        splis = [(OID_FMC_SPL, tcb.fmc), (OID_BL_SPL, tcb.bootloader), (OID_TEE_SPL, tcb.tee),
                 (OID_SNP_SPL, tcb.snp), (OID_SPL_5, 0), (OID_SPL_6, 0), (OID_SPL_7, 0),
                 (OID_UCODE_SPL, tcb.microcode)]
        version = 1
    else:
        res = tcb.reserved or bytes(4)  # TCB bytes 2..5 ↔ spl_4..spl_7 (go-sev-guest)
        splis = [(OID_BL_SPL, tcb.bootloader), (OID_TEE_SPL, tcb.tee), (OID_SPL_4, res[0]),
                 (OID_SPL_5, res[1]), (OID_SPL_6, res[2]), (OID_SPL_7, res[3]),
                 (OID_SNP_SPL, tcb.snp), (OID_UCODE_SPL, tcb.microcode)]
        version = info.struct_version
    return ([(OID_STRUCT_VERSION, der_integer(version)), (OID_PRODUCT_NAME, der_ia5(name))]
            + [(oid, der_integer(v)) for oid, v in splis] + tail)


def make_vek(product: str, kind: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate,
             issuer_key: rsa.RSAPrivateKey, tcb: TcbVersion, *, chip_id: bytes | None = None,
             csp_id: str | None = None, now: _dt.datetime | None = None) -> x509.Certificate:
    """VCEK (kind "vcek", hwID from chip_id) or VLEK (kind "vlek", cspID)."""
    info = product_info(product)
    if kind == "vcek":
        chip = normalize_chip_id(product, chip_id)
        exts = amd_extensions(product, tcb, hwid=chip[: info.hwid_size])
        cn, years = "SEV-VCEK", 7
    elif kind == "vlek":
        exts = amd_extensions(product, tcb, csp_id=csp_id or DEFAULT_CSP_ID)
        cn, years = "SEV-VLEK", 1
    else:
        raise ValueError(f"unknown endorsement key kind {kind!r}")
    b = _builder(_name(cn), issuer.subject, key.public_key(), years, now or _now())
    for oid, value in exts:
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    return _issue(b, 0, issuer_key)


# ---------------------------------------------------------------------------------------------
# Key material and the on-disk cache


@dataclass(frozen=True)
class IssuedKey:
    """A private key and the certificate that binds its public half."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def to_json(self) -> dict[str, str]:
        return {"key": self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()).decode(),
                "cert": self.pem.decode()}

    @classmethod
    def from_json(cls, d: dict[str, str]) -> IssuedKey:
        # Our own cache, written by generate(): skip the (slow, ~0.2 s per RSA-4096 key) RSA
        # consistency check; the key/certificate match below still guards against corruption.
        key = serialization.load_pem_private_key(d["key"].encode(), password=None,
                                                 unsafe_skip_rsa_key_validation=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_pem_x509_certificate(d["cert"].encode())
        if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
            raise ValueError("cached certificate does not match its key")
        return cls(key=key, cert=cert)  # type: ignore[arg-type]

    def valid_for(self, margin: _dt.timedelta, now: _dt.datetime | None = None) -> bool:
        now = now or _now()
        return self.cert.not_valid_before_utc <= now and now + margin <= self.cert.not_valid_after_utc


@dataclass(frozen=True)
class EmulatedRoots:
    product: str
    ark: IssuedKey
    ask: IssuedKey
    asvk: IssuedKey

    def write_trust_dir(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``<product>_ark.pem``, ``_ask.pem``, ``_asvk.pem`` (atomically) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for role in ("ark", "ask", "asvk"):
            _atomic_write(d / f"{self.product}_{role}.pem", getattr(self, role).pem)
        return d


@dataclass(frozen=True)
class PlatformKeys:
    """Everything the emulated PSP signs with and the host serves, for one product and signer."""

    product: str
    signer: str  # "vcek" | "vlek"
    tcb: TcbVersion
    chip_id: bytes  # 64 bytes as reported
    roots: EmulatedRoots
    vek: IssuedKey  # the VCEK or VLEK

    @property
    def intermediate(self) -> IssuedKey:
        return self.roots.ask if self.signer == "vcek" else self.roots.asvk

    def cert_table(self) -> bytes:
        """GHCB certificate blob: VCEK/VLEK, ASK/ASVK (under the ASK GUID), ARK."""
        vek_guid = VCEK_GUID if self.signer == "vcek" else VLEK_GUID
        return build_table([(vek_guid, self.vek.der), (ASK_GUID, self.intermediate.der),
                            (ARK_GUID, self.roots.ark.der)])

    def write_trust_dir(self, directory: str | os.PathLike[str]) -> Path:
        return self.roots.write_trust_dir(directory)


def default_cache_dir() -> Path:
    root = os.environ.get("SNPLAB_CACHE")
    if root:
        return Path(root) / "emu-keys"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "snplab" / "emu-keys"


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


_VEK_MARGIN = _dt.timedelta(days=7)  # regenerate a cached VLEK/VCEK this close to expiry


class KeyStore:
    """Process-wide + on-disk cache of emulated keys. Thread-, process- and xdist-safe."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._mem: dict[str, object] = {}
        self._lock = threading.Lock()
        self.generated = 0  # keys this store generated (not loaded): tests read it

    # -- generic cached get --------------------------------------------------------------------

    def _get(self, name: str, make: Callable[[], dict], load: Callable[[dict], object],
             fresh: Callable[[object], bool] = lambda _o: True) -> object:
        with self._lock:
            obj = self._mem.get(name)
            if obj is not None and fresh(obj):
                return obj
            path = self.directory / f"v{CACHE_FORMAT}-{name}.json"
            obj = self._read(path, load, fresh)
            if obj is None:
                try:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    lock_path = self.directory / f".v{CACHE_FORMAT}-{name}.lock"
                    with open(lock_path, "a+b") as lf:
                        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
                        try:
                            obj = self._read(path, load, fresh)  # another worker may have made it
                            if obj is None:
                                data = make()
                                self.generated += 1
                                _atomic_write(path, json.dumps(data, indent=1).encode())
                                obj = load(data)
                        finally:
                            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)
                except OSError as e:
                    raise KeyStoreError(f"emulated key cache {self.directory}: {e}") from None
            self._mem[name] = obj
            return obj

    @staticmethod
    def _read(path: Path, load: Callable[[dict], object], fresh: Callable[[object], bool]) -> object | None:
        try:
            obj = load(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            return None  # corrupt or foreign: regenerate over it
        return obj if fresh(obj) else None

    # -- the hierarchy ---------------------------------------------------------------------------

    def roots(self, product: str) -> EmulatedRoots:
        product = product_info(product).name.lower()

        def make() -> dict:
            now = _now()
            ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
            ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
            asvk_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
            ark = IssuedKey(ark_key, make_ark(product, ark_key, now))
            ask = IssuedKey(ask_key, make_intermediate(product, "ask", ask_key, ark.cert, ark_key, now))
            asvk = IssuedKey(asvk_key, make_intermediate(product, "asvk", asvk_key, ark.cert, ark_key, now))
            return {"product": product, "ark": ark.to_json(), "ask": ask.to_json(), "asvk": asvk.to_json()}

        def load(d: dict) -> EmulatedRoots:
            if d["product"] != product:
                raise ValueError("product mismatch")
            return EmulatedRoots(product, IssuedKey.from_json(d["ark"]), IssuedKey.from_json(d["ask"]),
                                 IssuedKey.from_json(d["asvk"]))

        obj = self._get(f"roots-{product}", make, load,
                        lambda r: r.ark.valid_for(_VEK_MARGIN))  # type: ignore[attr-defined]
        return obj  # type: ignore[return-value]

    def vek(self, product: str, signer: str, tcb: TcbVersion | None = None, *,
            chip_id: bytes | None = None, csp_id: str | None = None) -> IssuedKey:
        """The VCEK for (product, TCB, chip ID) or the VLEK for (product, TCB, CSP ID)."""
        product = product_info(product).name.lower()
        tcb = tcb or default_tcb(product)
        roots = self.roots(product)
        if signer == "vcek":
            chip = normalize_chip_id(product, chip_id)
            ident = hashlib.sha256(chip).hexdigest()[:16]
            issuer = roots.ask
        elif signer == "vlek":
            chip = None
            ident = hashlib.sha256((csp_id or DEFAULT_CSP_ID).encode()).hexdigest()[:16]
            issuer = roots.asvk
        else:
            raise ValueError(f"unknown signer {signer!r} (want vcek or vlek)")
        # the issuer's key fingerprint is part of the name: new roots → new endorsement keys
        root_id = hashlib.sha256(issuer.der).hexdigest()[:12]
        name = f"{signer}-{product}-{tcb.pack():016x}-{ident}-{root_id}"

        def make() -> dict:
            key = ec.generate_private_key(ec.SECP384R1())
            cert = make_vek(product, signer, key, issuer.cert, issuer.key, tcb,  # type: ignore[arg-type]
                            chip_id=chip, csp_id=csp_id)
            return IssuedKey(key, cert).to_json()

        obj = self._get(name, make, IssuedKey.from_json,
                        lambda k: k.valid_for(_VEK_MARGIN))  # type: ignore[attr-defined]
        return obj  # type: ignore[return-value]

    def platform_keys(self, product: str, signer: str = "vcek", tcb: TcbVersion | None = None, *,
                      chip_id: bytes | None = None, csp_id: str | None = None) -> PlatformKeys:
        product = product_info(product).name.lower()
        tcb = tcb or default_tcb(product)
        chip = normalize_chip_id(product, chip_id)
        return PlatformKeys(product=product, signer=signer, tcb=tcb, chip_id=chip,
                            roots=self.roots(product),
                            vek=self.vek(product, signer, tcb, chip_id=chip, csp_id=csp_id))


_DEFAULT_STORE: KeyStore | None = None
_DEFAULT_LOCK = threading.Lock()


def default_store() -> KeyStore:
    """The store at the default cache directory (re-created if SNPLAB_CACHE changed)."""
    global _DEFAULT_STORE
    with _DEFAULT_LOCK:
        if _DEFAULT_STORE is None or _DEFAULT_STORE.directory != default_cache_dir():
            _DEFAULT_STORE = KeyStore()
        return _DEFAULT_STORE


def write_trust_dir(product: str, directory: str | os.PathLike[str], store: KeyStore | None = None) -> Path:
    """Trust directory holding the emulated ARK/ASK/ASVK of ``product``."""
    return (store or default_store()).roots(product).write_trust_dir(directory)


def cert_blob(product: str, signer: str = "vcek", tcb: TcbVersion | None = None, *,
              chip_id: bytes | None = None, store: KeyStore | None = None) -> bytes:
    """The GHCB certificate table the emulated host serves for product + signer."""
    return (store or default_store()).platform_keys(product, signer, tcb, chip_id=chip_id).cert_table()


def guid_of(signer: str) -> uuid.UUID:
    return VCEK_GUID if signer == "vcek" else VLEK_GUID

"""Loading AMD certificates (DER or PEM) and naming their role from the subject CN.

AMD names (shared/reference/verify.md §a.1): ARK ``ARK-<P>``, ASK ``SEV-<P>``, ASVK ``SEV-VLEK-<P>``,
VCEK ``SEV-VCEK``, VLEK ``SEV-VLEK``; <P> in {Milan, Genoa, Turin}. VCEK/VLEK serial numbers are 0,
which ``cryptography`` warns about; the warning is silenced here.
"""

from __future__ import annotations

import enum
import hashlib
import re
import warnings

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

PRODUCTS = ("milan", "genoa", "turin")


class CertLoadError(ValueError):
    """Bytes that are not an X.509 certificate (or PEM bundle of them)."""


class Role(enum.Enum):
    ARK = "ark"
    ASK = "ask"
    ASVK = "asvk"
    VCEK = "vcek"
    VLEK = "vlek"
    UNKNOWN = "unknown"


_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _quiet(fn, data: bytes) -> x509.Certificate:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return fn(data)


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate, DER or PEM."""
    data = bytes(data)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            blocks = _PEM_RE.findall(data)
            if len(blocks) != 1:
                raise CertLoadError(f"expected one PEM certificate, found {len(blocks)}")
            return _quiet(x509.load_pem_x509_certificate, blocks[0])
        return _quiet(x509.load_der_x509_certificate, data)
    except CertLoadError:
        raise
    except ValueError:
        raise CertLoadError(f"not an X.509 certificate (DER or PEM), {len(data)} bytes") from None


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle, or a single DER certificate."""
    data = bytes(data)
    if b"-----BEGIN" in data:
        blocks = _PEM_RE.findall(data)
        if not blocks:
            raise CertLoadError("no PEM certificate found")
        return [load_certificate(b) for b in blocks]
    return [load_certificate(data)]


def der_bytes(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def sha256_fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(der_bytes(cert)).hexdigest()


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def role_and_product(cert: x509.Certificate) -> tuple[Role, str | None]:
    """Role and product (lower case) from the subject CN, e.g. 'SEV-VLEK-Milan' → (ASVK, 'milan')."""
    cn = common_name(cert.subject) or ""
    if cn == "SEV-VCEK":
        return Role.VCEK, None
    if cn == "SEV-VLEK":
        return Role.VLEK, None
    for prefix, role in (("ARK-", Role.ARK), ("SEV-VLEK-", Role.ASVK), ("SEV-", Role.ASK)):
        if cn.startswith(prefix):
            return role, cn[len(prefix):].lower() or None
    return Role.UNKNOWN, None


def expected_cn(role: Role, product: str) -> str:
    p = product.capitalize()
    return {Role.ARK: f"ARK-{p}", Role.ASK: f"SEV-{p}", Role.ASVK: f"SEV-VLEK-{p}",
            Role.VCEK: "SEV-VCEK", Role.VLEK: "SEV-VLEK"}[role]

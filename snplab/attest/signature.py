"""Report signature: ECDSA P-384 / SHA-384 over report bytes [0, 0x2A0).

R and S are 72-byte little-endian integers at 0x2A0 and 0x2E8 (SNP firmware ABI 56860
"Signature Format"; go-sev-guest ``abi.ReportToSignatureDER``; shared/reference/verify.md §b).
High-S signatures are valid (most real ones are): no low-S rule is applied.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from snplab.abi.report import (
    REPORT_SIZE,
    SIGNATURE_COMPONENT_SIZE,
    SIGNATURE_R_OFFSET,
    SIGNATURE_S_OFFSET,
    SIGNED_LENGTH,
)

P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


class SignatureError(ValueError):
    """The report signature does not verify."""


def signature_rs(report: bytes) -> tuple[int, int]:
    """(R, S) as integers read little-endian from the report."""
    if len(report) != REPORT_SIZE:
        raise SignatureError(f"report must be {REPORT_SIZE} bytes")
    r = int.from_bytes(report[SIGNATURE_R_OFFSET : SIGNATURE_R_OFFSET + SIGNATURE_COMPONENT_SIZE], "little")
    s = int.from_bytes(report[SIGNATURE_S_OFFSET : SIGNATURE_S_OFFSET + SIGNATURE_COMPONENT_SIZE], "little")
    return r, s


def signature_der(report: bytes) -> bytes:
    """The report's signature as a DER ECDSA-Sig-Value for standard libraries."""
    r, s = signature_rs(report)
    return encode_dss_signature(r, s)


def check_p384_key(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise SignatureError(f"VEK key is {type(key).__name__}, not ECDSA")
    if not isinstance(key.curve, ec.SECP384R1):
        raise SignatureError(f"VEK key is on {key.curve.name}, not secp384r1 (P-384)")
    return key


def verify_report_signature(report: bytes, key: ec.EllipticCurvePublicKey) -> None:
    """Raise SignatureError unless the report's signature verifies with `key`."""
    key = check_p384_key(key)
    r, s = signature_rs(report)
    if not (0 < r < P384_ORDER and 0 < s < P384_ORDER):
        raise SignatureError("R or S is zero or not below the P-384 group order")
    try:
        key.verify(encode_dss_signature(r, s), bytes(report[:SIGNED_LENGTH]), ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError("ECDSA P-384 signature over report bytes [0, 0x2A0) does not verify") from None


def is_high_s(report: bytes) -> bool:
    return signature_rs(report)[1] > P384_ORDER // 2

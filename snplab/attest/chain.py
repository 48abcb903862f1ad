"""Certificate-chain links: ARK (self-signed) → ASK (VCEK) / ASVK (VLEK) → VCEK / VLEK.

Every link is RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48, trailer 1 (AMD KDS spec 57230;
shared/reference/verify.md §a.1). The parameters are read from each certificate's own
signatureAlgorithm (and must equal the copy inside tbsCertificate) and checked before verifying.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from snplab.attest import der
from snplab.attest.certs import common_name, der_bytes

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"
OID_MGF1 = "1.2.840.113549.1.1.8"
OID_SHA1 = "1.3.14.3.2.26"
OID_SHA384 = "2.16.840.1.101.3.4.2.2"
PSS_SALT_LENGTH = 48
PSS_TRAILER_FIELD = 1


class ChainError(ValueError):
    """A chain link that does not hold."""


@dataclass(frozen=True)
class PssParams:
    hash_oid: str
    mgf_oid: str
    mgf_hash_oid: str
    salt_length: int
    trailer_field: int


def _algorithm_identifier(cert: x509.Certificate) -> tuple[der.Tlv, der.Tlv]:
    """(outer signatureAlgorithm, tbsCertificate.signature) as raw TLVs."""
    top = der.read_single(der_bytes(cert), der.TAG_SEQUENCE)
    parts = der.children(top.value)
    if len(parts) != 3 or parts[0].tag != der.TAG_SEQUENCE or parts[1].tag != der.TAG_SEQUENCE:
        raise der.DerError("certificate is not SEQUENCE { tbs, algorithm, signature }")
    tbs = der.children(parts[0].value)
    idx = 1 if tbs and tbs[0].tag == 0xA0 else 0  # skip [0] version
    if len(tbs) <= idx + 1:
        raise der.DerError("tbsCertificate too short")
    return parts[1], tbs[idx + 1]


def pss_params(cert: x509.Certificate) -> PssParams:
    """RSASSA-PSS parameters of the certificate's signature, with ASN.1 defaults applied."""
    try:
        outer, inner = _algorithm_identifier(cert)
        if outer.raw != inner.raw:
            raise ChainError("signatureAlgorithm differs from the tbsCertificate signature field")
        alg = der.children(outer.value)
        if not alg:
            raise ChainError("empty AlgorithmIdentifier")
        oid = der.decode_oid(alg[0])
        if oid != OID_RSASSA_PSS:
            raise ChainError(f"signature algorithm {oid} is not RSASSA-PSS")
        hash_oid, mgf_oid, mgf_hash_oid, salt, trailer = OID_SHA1, OID_MGF1, OID_SHA1, 20, 1
        if len(alg) > 1:
            if alg[1].tag != der.TAG_SEQUENCE:
                raise ChainError("RSASSA-PSS parameters are not a SEQUENCE")
            for field in der.children(alg[1].value):
                inner_tlv = der.read_single(field.value)
                if field.tag == 0xA0:
                    hash_oid = der.decode_oid(der.children(inner_tlv.value)[0])
                elif field.tag == 0xA1:
                    mgf = der.children(inner_tlv.value)
                    mgf_oid = der.decode_oid(mgf[0])
                    if len(mgf) < 2 or mgf[1].tag != der.TAG_SEQUENCE:
                        raise ChainError("MGF parameters missing")
                    mgf_hash_oid = der.decode_oid(der.children(mgf[1].value)[0])
                elif field.tag == 0xA2:
                    salt = der.decode_integer(inner_tlv)
                elif field.tag == 0xA3:
                    trailer = der.decode_integer(inner_tlv)
                else:
                    raise ChainError(f"unexpected RSASSA-PSS parameter tag {field.tag:#x}")
        return PssParams(hash_oid, mgf_oid, mgf_hash_oid, salt, trailer)
    except (der.DerError, IndexError) as e:
        raise ChainError(f"cannot read the signature algorithm: {e or 'truncated'}") from None


def check_pss_sha384(cert: x509.Certificate) -> PssParams:
    p = pss_params(cert)
    want = PssParams(OID_SHA384, OID_MGF1, OID_SHA384, PSS_SALT_LENGTH, PSS_TRAILER_FIELD)
    if p != want:
        raise ChainError(
            f"RSASSA-PSS parameters hash={p.hash_oid} mgf={p.mgf_oid}/{p.mgf_hash_oid} "
            f"salt={p.salt_length} trailer={p.trailer_field}; expected SHA-384/MGF1-SHA-384/salt 48/trailer 1"
        )
    return p


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise ChainError unless `issuer` issued `cert` with RSASSA-PSS SHA-384 / MGF1-SHA-384 / 48."""
    if cert.issuer != issuer.subject:
        raise ChainError(
            f"issuer CN {common_name(cert.issuer)!r} is not the signer's subject CN "
            f"{common_name(issuer.subject)!r}"
        )
    params = check_pss_sha384(cert)
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ChainError(f"signer {common_name(issuer.subject)!r} does not hold an RSA key")
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=params.salt_length),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise ChainError(
            f"signature of {common_name(cert.subject)!r} does not verify with the key of "
            f"{common_name(issuer.subject)!r}"
        ) from None


def check_ca(cert: x509.Certificate) -> None:
    """ARK/ASK/ASVK must be CA certificates."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ChainError(f"{common_name(cert.subject)!r} has no BasicConstraints") from None
    if not bc.ca:
        raise ChainError(f"{common_name(cert.subject)!r} is not a CA certificate")


def validity_problem(cert: x509.Certificate, at: datetime) -> str | None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < nb:
        return f"{common_name(cert.subject)} not valid before {nb.isoformat()}"
    if at > na:
        return f"{common_name(cert.subject)} expired {na.isoformat()}"
    return None

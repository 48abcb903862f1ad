"""AMD X.509 extensions of VCEK/VLEK certificates (arc 1.3.6.1.4.1.3704.1, AMD's PEN 3704).

Source: AMD KDS spec 57230, as in go-sev-guest ``kds/kds.go`` (OIDs) and snpguest ``src/verify.rs``
(Turin fmcSPL); encodings confirmed on real certificates (shared/reference/verify.md §a.2).
Each extnValue holds: INTEGER (SPLs, structVersion), IA5String (productName, cspID), or the hwID
as bare bytes — a DER OCTET STRING wrapper is also accepted. Parsed by OID, never by position.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning

from snplab.abi.tcb import TcbLayout, TcbVersion
from snplab.attest import der

AMD_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = AMD_ARC + ".1"
OID_PRODUCT_NAME = AMD_ARC + ".2"
OID_BL_SPL = AMD_ARC + ".3.1"
OID_TEE_SPL = AMD_ARC + ".3.2"
OID_SNP_SPL = AMD_ARC + ".3.3"
OID_SPL_4 = AMD_ARC + ".3.4"
OID_SPL_5 = AMD_ARC + ".3.5"
OID_SPL_6 = AMD_ARC + ".3.6"
OID_SPL_7 = AMD_ARC + ".3.7"
OID_UCODE_SPL = AMD_ARC + ".3.8"
OID_FMC_SPL = AMD_ARC + ".3.9"  # Turin
OID_HW_ID = AMD_ARC + ".4"
OID_CSP_ID = AMD_ARC + ".5"

_INT_FIELDS = {
    OID_STRUCT_VERSION: "struct_version",
    OID_BL_SPL: "bl_spl",
    OID_TEE_SPL: "tee_spl",
    OID_SNP_SPL: "snp_spl",
    OID_SPL_4: "spl_4",
    OID_SPL_5: "spl_5",
    OID_SPL_6: "spl_6",
    OID_SPL_7: "spl_7",
    OID_UCODE_SPL: "ucode_spl",
    OID_FMC_SPL: "fmc_spl",
}
_STR_FIELDS = {OID_PRODUCT_NAME: "product_name", OID_CSP_ID: "csp_id"}
HW_ID_SIZES = (64, 8)  # Milan/Genoa, Turin


class ExtensionError(ValueError):
    """An AMD extension is missing, duplicated or badly encoded."""


@dataclass(frozen=True)
class AmdExtensions:
    struct_version: int | None = None
    product_name: str | None = None
    bl_spl: int | None = None
    tee_spl: int | None = None
    snp_spl: int | None = None
    spl_4: int | None = None
    spl_5: int | None = None
    spl_6: int | None = None
    spl_7: int | None = None
    ucode_spl: int | None = None
    fmc_spl: int | None = None
    hw_id: bytes | None = None
    hw_id_wrapped: bool = False  # hwID came as a DER OCTET STRING rather than bare bytes
    csp_id: str | None = None
    unknown_amd_oids: tuple[str, ...] = ()

    def tcb(self, layout: TcbLayout) -> TcbVersion:
        """The TCB this certificate was issued for, in the report's byte layout."""
        need = ["bl_spl", "tee_spl", "snp_spl", "ucode_spl"]
        if layout is TcbLayout.TURIN:
            need.append("fmc_spl")
        missing = [n for n in need if getattr(self, n) is None]
        if missing:
            raise ExtensionError(f"certificate lacks {', '.join(missing)} for the {layout.value} TCB layout")
        for n in need + ["spl_4", "spl_5", "spl_6", "spl_7"]:
            v = getattr(self, n)
            if v is not None and not 0 <= v <= 0xFF:
                raise ExtensionError(f"{n}={v} does not fit in a TCB byte")
        if layout is TcbLayout.TURIN:
            return TcbVersion(layout, bootloader=self.bl_spl, tee=self.tee_spl, snp=self.snp_spl,
                              microcode=self.ucode_spl, fmc=self.fmc_spl)
        # go-sev-guest: spl_4..spl_7 are the reserved bytes 2..5 of the Milan/Genoa layout
        reserved = bytes((self.spl_4 or 0, self.spl_5 or 0, self.spl_6 or 0, self.spl_7 or 0))
        return TcbVersion(layout, bootloader=self.bl_spl, tee=self.tee_spl, snp=self.snp_spl,
                          microcode=self.ucode_spl, reserved=reserved if any(reserved) else b"")


def decode_hw_id(value: bytes) -> tuple[bytes, bool]:
    """hwID extnValue → (id, wrapped). Bare 64/8 bytes, or OCTET STRING of 64/8 bytes.

    Decided by length, so a bare hwID that happens to start with 04 40 is not misread."""
    if len(value) in HW_ID_SIZES:
        return value, False
    if len(value) - 2 in HW_ID_SIZES and value[0] == der.TAG_OCTET_STRING and value[1] == len(value) - 2:
        return value[2:], True
    raise ExtensionError(
        f"hwID must be {' or '.join(map(str, HW_ID_SIZES))} bytes (bare or in an OCTET STRING), "
        f"got {len(value)} bytes starting {value[:2].hex()}"
    )


def parse_extensions(cert: x509.Certificate) -> AmdExtensions:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            exts = list(cert.extensions)
    except x509.DuplicateExtension as e:
        raise ExtensionError(f"duplicate extension {e.oid.dotted_string}") from None
    except ValueError as e:
        raise ExtensionError(f"cannot decode extensions: {e}") from None
    values: dict[str, object] = {}
    unknown: list[str] = []
    for ext in exts:
        oid = ext.oid.dotted_string
        if not oid.startswith(AMD_ARC + "."):
            continue
        raw = ext.value.value if isinstance(ext.value, x509.UnrecognizedExtension) else None
        if raw is None:
            raise ExtensionError(f"extension {oid} has an unexpected type")
        try:
            if oid in _INT_FIELDS:
                values[_INT_FIELDS[oid]] = der.decode_integer(der.read_single(raw))
            elif oid in _STR_FIELDS:
                values[_STR_FIELDS[oid]] = der.decode_ia5(der.read_single(raw))
            elif oid == OID_HW_ID:
                values["hw_id"], values["hw_id_wrapped"] = decode_hw_id(raw)
            else:
                unknown.append(oid)
        except der.DerError as e:
            raise ExtensionError(f"extension {oid}: {e}") from None
    return AmdExtensions(unknown_amd_oids=tuple(unknown), **values)  # type: ignore[arg-type]

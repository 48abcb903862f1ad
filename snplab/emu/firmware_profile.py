"""What the emulated firmware reports about itself, per product and report version.

Real SNP firmware writes the report format its version implements, and the PLATFORM_INFO bits
and (from v5) mitigation vectors of that firmware. The values below are those seen in public
hardware reports (shared/vectors, read by tests/test_emu_firmware_profile.py, which checks this
table against them when they are present):

    report v2: firmware ≤ 1.55.21, PLATFORM_INFO = SMT_EN only
    report v3: firmware 1.55.29–1.55.40, PLATFORM_INFO = SMT_EN | ECC_EN | ALIAS_CHECK_COMPLETE
    report v5: firmware ≥ 1.55.35, same PLATFORM_INFO, LAUNCH/CURRENT_MIT_VECTOR = 0x0b

No public Turin report exists: Turin plays Genoa's values (an assumption, marked as such).
"""

from __future__ import annotations

from dataclasses import dataclass

from snplab.abi.policy import (
    PLATFORM_INFO_ALIAS_CHECK_COMPLETE,
    PLATFORM_INFO_ECC_EN,
    PLATFORM_INFO_SMT_EN,
)

_PI_V2 = PLATFORM_INFO_SMT_EN
_PI_V3 = PLATFORM_INFO_SMT_EN | PLATFORM_INFO_ECC_EN | PLATFORM_INFO_ALIAS_CHECK_COMPLETE  # 0x25
MIT_VECTOR_V5 = 0x0B


@dataclass(frozen=True)
class FirmwareProfile:
    firmware_version: tuple[int, int, int]  # (major, minor, build)
    platform_info: int
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    observed: bool = True  # False: no public report of this product and version to copy from


FIRMWARE_PROFILES: dict[tuple[str, int], FirmwareProfile] = {
    ("milan", 2): FirmwareProfile((1, 52, 4), _PI_V2),
    ("milan", 3): FirmwareProfile((1, 55, 29), _PI_V3),
    ("milan", 5): FirmwareProfile((1, 55, 35), _PI_V3, MIT_VECTOR_V5, MIT_VECTOR_V5),
    ("genoa", 2): FirmwareProfile((1, 55, 21), _PI_V2),
    ("genoa", 3): FirmwareProfile((1, 55, 39), _PI_V3),
    ("genoa", 5): FirmwareProfile((1, 55, 49), _PI_V3, MIT_VECTOR_V5, MIT_VECTOR_V5),
    ("turin", 2): FirmwareProfile((1, 55, 21), _PI_V2, observed=False),
    ("turin", 3): FirmwareProfile((1, 55, 39), _PI_V3, observed=False),
    ("turin", 5): FirmwareProfile((1, 55, 49), _PI_V3, MIT_VECTOR_V5, MIT_VECTOR_V5, observed=False),
}


def firmware_profile(product: str, report_version: int) -> FirmwareProfile:
    try:
        return FIRMWARE_PROFILES[(product.lower(), report_version)]
    except KeyError:
        raise ValueError(f"no emulated firmware profile for {product} report v{report_version}") from None


__all__ = ["FirmwareProfile", "FIRMWARE_PROFILES", "firmware_profile", "MIT_VECTOR_V5"]

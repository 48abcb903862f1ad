"""TCB_VERSION: the 8-byte (u64 LE) security-patch-level vector in an attestation report.

Two byte layouts (SNP firmware ABI 56860 "TCB_VERSION"; virtee/sev ``TcbVersion::from_legacy_bytes`` /
``from_turin_bytes``; shared/reference/errata.md table A):

    Milan, Genoa : [0] BOOT_LOADER [1] TEE [2..5] reserved [6] SNP [7] MICROCODE
    Turin        : [0] FMC [1] BOOT_LOADER [2] TEE [3] SNP [4..6] reserved [7] MICROCODE

The reserved bytes are kept so that unpack → pack is exact (go-sev-guest maps legacy bytes 2..5
to the VCEK's spl_4..spl_7 extensions).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TCB_VERSION_SIZE = 8


class TcbLayout(enum.Enum):
    MILAN_GENOA = "milan-genoa"
    TURIN = "turin"


# byte index of each component per layout
_INDEX: dict[TcbLayout, dict[str, int]] = {
    TcbLayout.MILAN_GENOA: {"bootloader": 0, "tee": 1, "snp": 6, "microcode": 7},
    TcbLayout.TURIN: {"fmc": 0, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 7},
}
_RESERVED: dict[TcbLayout, tuple[int, ...]] = {
    TcbLayout.MILAN_GENOA: (2, 3, 4, 5),
    TcbLayout.TURIN: (4, 5, 6),
}

_PRODUCT_LAYOUT = {"milan": TcbLayout.MILAN_GENOA, "genoa": TcbLayout.MILAN_GENOA, "turin": TcbLayout.TURIN}


def layout_for_product(product: str) -> TcbLayout:
    """'milan' / 'genoa' / 'turin' (case-insensitive) → layout. Raises ValueError otherwise."""
    try:
        return _PRODUCT_LAYOUT[product.lower()]
    except KeyError:
        raise ValueError(f"no TCB layout known for product {product!r}") from None


@dataclass(frozen=True)
class TcbVersion:
    layout: TcbLayout
    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0  # Turin only; must be 0 in the Milan/Genoa layout
    reserved: bytes = b""  # raw reserved bytes in layout order (empty = all zero)

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
            v = getattr(self, name)
            if not 0 <= v <= 0xFF:
                raise ValueError(f"TCB component {name}={v} does not fit in a byte")
        if self.layout is TcbLayout.MILAN_GENOA and self.fmc:
            raise ValueError("the Milan/Genoa TCB layout has no FMC component")
        n = len(_RESERVED[self.layout])
        if self.reserved and len(self.reserved) != n:
            raise ValueError(f"{self.layout.value} TCB has {n} reserved bytes, got {len(self.reserved)}")
        if not any(self.reserved):
            object.__setattr__(self, "reserved", b"")  # one spelling of "all zero", for equality

    @classmethod
    def unpack(cls, value: int, layout: TcbLayout) -> "TcbVersion":
        if not 0 <= value < 1 << 64:
            raise ValueError(f"TCB_VERSION {value:#x} is not a u64")
        b = value.to_bytes(8, "little")
        fields = {name: b[i] for name, i in _INDEX[layout].items()}
        reserved = bytes(b[i] for i in _RESERVED[layout])
        return cls(layout=layout, reserved=reserved if any(reserved) else b"", **fields)

    @classmethod
    def from_bytes(cls, raw: bytes, layout: TcbLayout) -> "TcbVersion":
        if len(raw) != TCB_VERSION_SIZE:
            raise ValueError(f"TCB_VERSION is {TCB_VERSION_SIZE} bytes, got {len(raw)}")
        return cls.unpack(int.from_bytes(raw, "little"), layout)

    def pack(self) -> int:
        b = bytearray(8)
        for name, i in _INDEX[self.layout].items():
            b[i] = getattr(self, name)
        for i, v in zip(_RESERVED[self.layout], self.reserved):
            b[i] = v
        return int.from_bytes(b, "little")

    def to_bytes(self) -> bytes:
        return self.pack().to_bytes(8, "little")

    def components(self) -> dict[str, int]:
        """Named components of this layout (fmc only for Turin)."""
        return {name: getattr(self, name) for name in _INDEX[self.layout]}

    def __str__(self) -> str:
        parts = " ".join(f"{k}={v}" for k, v in self.components().items())
        if any(self.reserved):
            parts += f" reserved={self.reserved.hex()}"
        return parts

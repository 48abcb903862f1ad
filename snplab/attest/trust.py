"""Trust anchors: per product an ARK, ASK (VCEK side) and ASVK (VLEK side).

AMD's certificates are third-party data and are not shipped: they are read from a trust directory
holding ``<product>_ark.pem``, ``<product>_ask.pem``, ``<product>_asvk.pem`` (product in lower case).
Each AMD ARK is pinned by the SHA-256 of its DER (below). A store of *emulated* roots (the emulated
platform's own ARKs) is only accepted with ``pinned=False``, which the caller must ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from snplab.attest.certs import (
    PRODUCTS,
    CertLoadError,
    Role,
    load_certificate,
    load_certificates,
    role_and_product,
    sha256_fingerprint,
)

# SHA-256 of the DER of AMD's ARKs, computed once with
#   python3 -c "from snplab.attest.certs import *; print(sha256_fingerprint(load_certificate(open(p,'rb').read())))"
# over shared/vectors/amd_roots/<product>_ark.pem (byte-identical to go-sev-guest verify/trust/*.pem
# and virtee/sev builtin certs; KDS https://kdsintf.amd.com/vcek/v1/<P>/cert_chain).
AMD_ARK_SHA256 = {
    "milan": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    "genoa": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    "turin": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
}


class TrustStoreError(ValueError):
    """A trust directory or bundle that cannot be loaded."""


@dataclass(frozen=True)
class ProductRoots:
    product: str
    ark: x509.Certificate | None = None
    ask: x509.Certificate | None = None
    asvk: x509.Certificate | None = None


@dataclass(frozen=True)
class TrustStore:
    roots: dict[str, ProductRoots] = field(default_factory=dict)
    pinned: bool = True  # False only for emulated roots, by explicit request
    label: str = ""

    def get(self, product: str) -> ProductRoots:
        return self.roots.get(product, ProductRoots(product))

    @property
    def products(self) -> tuple[str, ...]:
        return tuple(sorted(self.roots))

    def ark_pin_problem(self, product: str, ark: x509.Certificate) -> str | None:
        """None if `ark` is acceptable as the product's root under this store's pinning rule."""
        if not self.pinned:
            return None
        pin = AMD_ARK_SHA256.get(product)
        if pin is None:
            return f"no pinned ARK fingerprint for product {product!r}"
        got = sha256_fingerprint(ark)
        if got != pin:
            return f"ARK SHA-256 {got} is not AMD's {product} ARK ({pin})"
        return None

    @classmethod
    def empty(cls, pinned: bool = True) -> "TrustStore":
        """No anchors: an ARK presented with the evidence is accepted only if it matches the pin."""
        return cls({}, pinned=pinned, label="pins only")

    @classmethod
    def from_dir(cls, path: str | Path, pinned: bool = True) -> "TrustStore":
        d = Path(path)
        if not d.is_dir():
            raise TrustStoreError(f"trust directory {d} does not exist")
        roots: dict[str, ProductRoots] = {}
        for product in PRODUCTS:
            certs = {}
            for kind in ("ark", "ask", "asvk"):
                f = d / f"{product}_{kind}.pem"
                if f.is_file():
                    try:
                        certs[kind] = load_certificate(f.read_bytes())
                    except (CertLoadError, OSError) as e:
                        raise TrustStoreError(f"{f}: {e}") from None
            if certs:
                roots[product] = ProductRoots(product, **certs)
        if not roots:
            raise TrustStoreError(f"trust directory {d} holds no <product>_ark.pem / _ask.pem / _asvk.pem")
        return cls(roots, pinned=pinned, label=str(d))

    @classmethod
    def from_pem(cls, pem: bytes | str, pinned: bool = True, label: str = "PEM bundle") -> "TrustStore":
        """ARK/ASK/ASVK certificates of any products in one PEM bundle, sorted by subject CN."""
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certs = load_certificates(data)
        except CertLoadError as e:
            raise TrustStoreError(str(e)) from None
        found: dict[str, dict[str, x509.Certificate]] = {}
        for c in certs:
            role, product = role_and_product(c)
            if role not in (Role.ARK, Role.ASK, Role.ASVK) or product is None:
                raise TrustStoreError(f"certificate {c.subject.rfc4514_string()} is not an ARK, ASK or ASVK")
            slot = found.setdefault(product, {})
            if role.value in slot:
                raise TrustStoreError(f"two {role.value.upper()} certificates for {product}")
            slot[role.value] = c
        return cls({p: ProductRoots(p, **v) for p, v in found.items()}, pinned=pinned, label=label)

"""Certificate provisioning on a lab host: the GHCB certificate blob the VMM serves.

The blob is a GHCB certificate table (snplab.abi.cert_table) holding DER certificates: the
VCEK (or VLEK), the ASK (or ASVK, under the ASK GUID) and the ARK. ``build_blob`` makes one from
a directory of certificate files, ``check_blob`` proves one fits this host: it parses strictly,
names its signer, checks VEK → ASK/ASVK → ARK signatures, the ARK against its pinned
fingerprint, validity, and that the VEK was issued for the host's reported TCB and chip ID.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import struct
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

from cryptography import x509

from snplab.abi import cert_table
from snplab.abi.tcb import TcbVersion, layout_for_product
from snplab.attest import chain, extensions
from snplab.attest.certs import CertLoadError, Role, der_bytes, load_certificates, role_and_product, sha256_fingerprint
from snplab.attest.product import product_from_name

CERT_SUFFIXES = (".pem", ".der", ".cer", ".crt", ".cert")
MAX_CERT_FILE = 1 << 20  # a certificate file larger than 1 MiB is not a certificate
PAGE_SIZE = 4096

_GUID_FOR_ROLE = {Role.ARK: cert_table.ARK_GUID, Role.ASK: cert_table.ASK_GUID, Role.ASVK: cert_table.ASK_GUID,
                  Role.VCEK: cert_table.VCEK_GUID, Role.VLEK: cert_table.VLEK_GUID}


class BlobError(ValueError):
    """A certificate set or blob that cannot be served by this host."""


@dataclass(frozen=True)
class CertSet:
    """The certificates of one blob, by role."""

    vek: x509.Certificate
    signer: str  # "vcek" | "vlek"
    ask: x509.Certificate | None  # ASK for a VCEK, ASVK for a VLEK
    ark: x509.Certificate | None
    product: str | None


def classify(certs: Sequence[x509.Certificate], source: str = "input") -> CertSet:
    """Sort certificates by role (subject CN); exactly one VEK, at most one ASK/ASVK and ARK."""
    found: dict[Role, x509.Certificate] = {}
    products: set[str] = set()
    for c in certs:
        role, product = role_and_product(c)
        if role is Role.UNKNOWN:
            raise BlobError(f"{source}: certificate {c.subject.rfc4514_string()!r} is not an AMD ARK/ASK/ASVK/VCEK/VLEK")
        if role in found:
            if der_bytes(found[role]) == der_bytes(c):
                continue
            raise BlobError(f"{source}: two different {role.value.upper()} certificates")
        found[role] = c
        if product:
            products.add(product)
    veks = [r for r in (Role.VCEK, Role.VLEK) if r in found]
    if len(veks) != 1:
        raise BlobError(f"{source}: need exactly one VCEK or VLEK, found {len(veks)}")
    vek_role = veks[0]
    if vek_role is Role.VCEK and Role.ASVK in found:
        raise BlobError(f"{source}: a VCEK is signed by an ASK, not an ASVK")
    if vek_role is Role.VLEK and Role.ASK in found:
        raise BlobError(f"{source}: a VLEK is signed by an ASVK, not an ASK")
    try:
        ext = extensions.parse_extensions(found[vek_role])
    except extensions.ExtensionError as e:
        raise BlobError(f"{source}: {vek_role.value.upper()}: {e}") from None
    name_product = product_from_name(ext.product_name)
    if name_product:
        products.add(name_product)
    if len(products) > 1:
        raise BlobError(f"{source}: certificates of different products {sorted(products)}")
    return CertSet(vek=found[vek_role], signer=vek_role.value,
                   ask=found.get(Role.ASK if vek_role is Role.VCEK else Role.ASVK), ark=found.get(Role.ARK),
                   product=products.pop() if products else None)


def load_dir(directory: str | Path) -> CertSet:
    """Every certificate file (PEM bundles included) in ``directory``, classified."""
    d = Path(directory)
    if not d.is_dir():
        raise BlobError(f"{d}: not a directory")
    certs: list[x509.Certificate] = []
    for f in sorted(d.iterdir()):
        if not f.is_file() or f.suffix.lower() not in CERT_SUFFIXES:
            continue
        if f.stat().st_size > MAX_CERT_FILE:
            raise BlobError(f"{f}: larger than {MAX_CERT_FILE} bytes, not a certificate")
        try:
            certs.extend(load_certificates(f.read_bytes()))
        except (CertLoadError, OSError) as e:
            raise BlobError(f"{f}: {e}") from None
    if not certs:
        raise BlobError(f"{d}: no certificate files ({', '.join(CERT_SUFFIXES)})")
    return classify(certs, str(d))


def build_blob(cs: CertSet) -> bytes:
    """The GHCB certificate table: VEK, then ASK/ASVK, then ARK, each as DER."""
    entries = [(_GUID_FOR_ROLE[Role(cs.signer)], der_bytes(cs.vek))]
    if cs.ask is not None:
        entries.append((cert_table.ASK_GUID, der_bytes(cs.ask)))
    if cs.ark is not None:
        entries.append((cert_table.ARK_GUID, der_bytes(cs.ark)))
    return cert_table.build_table(entries)


def parse_blob(blob: bytes) -> tuple[cert_table.CertTable, CertSet]:
    try:
        table = cert_table.parse_table(blob)
    except cert_table.CertTableError as e:
        raise BlobError(f"not a certificate table: {e}") from None
    certs = []
    for e in table.entries:
        name = cert_table.guid_name(e.guid)
        if e.guid == cert_table.CRL_GUID or e.guid not in cert_table.KNOWN_GUIDS:
            continue  # CRLs and vendor entries are served as they are
        try:
            (cert,) = load_certificates(table.data[e.offset:e.end])
        except (CertLoadError, ValueError) as err:
            raise BlobError(f"{name} entry is not one DER certificate: {err}") from None
        role, _ = role_and_product(cert)
        expected = {cert_table.VCEK_GUID: {Role.VCEK}, cert_table.VLEK_GUID: {Role.VLEK},
                    cert_table.ASK_GUID: {Role.ASK, Role.ASVK}, cert_table.ARK_GUID: {Role.ARK}}.get(e.guid)
        if expected is not None and role not in expected:
            raise BlobError(f"{name} entry holds a {role.value.upper()} certificate")
        certs.append(cert)
    return table, classify(certs, "blob")


@dataclass(frozen=True)
class BlobSummary:
    signer: str
    product: str | None
    tcb: TcbVersion | None
    hw_id: bytes | None
    entries: tuple[tuple[str, int, str], ...]  # (name, length, sha256 of the bytes)
    size: int
    chain_checked: bool
    problems: tuple[str, ...] = ()  # non-fatal findings (e.g. no ARK in the blob)

    @property
    def pages(self) -> int:
        return -(-self.size // PAGE_SIZE)

    def describe(self) -> str:
        names = "+".join(n for n, _, _ in self.entries)
        tcb = f", TCB {self.tcb.pack():#018x} ({self.tcb})" if self.tcb else ""
        chained = ", chain verified" if self.chain_checked else ""
        return f"{names}, {self.size} bytes ({self.pages} pages), {self.signer.upper()}{tcb}{chained}"

    def to_json(self) -> dict[str, Any]:
        return {"signer": self.signer, "product": self.product, "size": self.size, "pages": self.pages,
                "tcb": None if self.tcb is None else f"{self.tcb.pack():#018x}",
                "tcb_components": None if self.tcb is None else self.tcb.components(),
                "hw_id": None if self.hw_id is None else self.hw_id.hex(),
                "entries": [{"name": n, "length": ln, "sha256": h} for n, ln, h in self.entries],
                "chain_checked": self.chain_checked, "problems": list(self.problems)}


def _verify_chain(cs: CertSet, product: str | None, ark_pins: Mapping[str, str] | None, at: datetime | None) -> list[str]:
    """Raise BlobError on a broken link; return the non-fatal problems."""
    problems = []
    try:
        if cs.ask is None:
            problems.append(f"no {'ASK' if cs.signer == 'vcek' else 'ASVK'} in the blob: the chain cannot be checked")
        else:
            chain.verify_signed_by(cs.vek, cs.ask)
            chain.check_ca(cs.ask)
            if cs.ark is None:
                problems.append("no ARK in the blob")
            else:
                chain.verify_signed_by(cs.ask, cs.ark)
                chain.verify_signed_by(cs.ark, cs.ark)
                chain.check_ca(cs.ark)
    except chain.ChainError as e:
        raise BlobError(f"certificate chain: {e}") from None
    if cs.ark is not None and ark_pins is not None:
        pin = ark_pins.get(product or "")
        got = sha256_fingerprint(cs.ark)
        if pin is None:
            raise BlobError(f"no pinned ARK fingerprint for product {product!r}")
        if got != pin:
            raise BlobError(f"ARK SHA-256 {got} is not the pinned {product} ARK {pin}")
    if at is not None:
        for c in (cs.vek, cs.ask, cs.ark):
            if c is not None and (msg := chain.validity_problem(c, at)):
                raise BlobError(msg)
    return problems


def check_blob(
    blob: bytes,
    *,
    product: str | None = None,
    reported_tcb: int | None = None,
    chip_id: bytes | None = None,
    ark_pins: Mapping[str, str] | None = None,
    at: datetime | None = None,
) -> BlobSummary:
    """Parse ``blob`` and check it fits a host (any argument left None is not compared)."""
    table, cs = parse_blob(blob)
    if product and cs.product and product != cs.product:
        raise BlobError(f"blob is for {cs.product}, this host is {product}")
    product = product or cs.product
    problems = _verify_chain(cs, product, ark_pins, at)
    ext = extensions.parse_extensions(cs.vek)
    tcb = None
    if product:
        layout = layout_for_product(product)
        try:
            tcb = ext.tcb(layout)
        except extensions.ExtensionError as e:
            raise BlobError(f"{cs.signer.upper()}: {e}") from None
        if reported_tcb is not None:
            host = TcbVersion.unpack(reported_tcb, layout)
            if host.components() != tcb.components():
                raise BlobError(f"{cs.signer.upper()} is for TCB {tcb.pack():#018x} ({tcb}), the host reports "
                                f"{reported_tcb:#018x} ({host}): fetch the certificate for the current TCB")
    elif reported_tcb is not None:
        problems.append("product unknown: TCB not compared")
    if chip_id is not None and cs.signer == "vcek":
        if ext.hw_id is None:
            raise BlobError("VCEK has no hwID extension")
        if ext.hw_id != chip_id[:len(ext.hw_id)]:
            raise BlobError(f"VCEK hwID {ext.hw_id.hex()[:16]}… is not this chip's ID {chip_id.hex()[:16]}…")
    entries = tuple((cert_table.guid_name(e.guid), e.length, hashlib.sha256(table.data[e.offset:e.end]).hexdigest())
                    for e in table.entries)
    return BlobSummary(signer=cs.signer, product=product, tcb=tcb, hw_id=ext.hw_id, entries=entries,
                       size=table.used_length, chain_checked=cs.ask is not None and cs.ark is not None,
                       problems=tuple(problems))


# ---- installing a blob that running guests may be reading ----------------------------------------

# fcntl.h open-file-description locks; struct flock on x86-64 (the VMM's responder uses the same).
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = struct.Struct("hhxxxxqqixxxx")


def install_blob(path: str | Path, blob: bytes, timeout: float = 10.0) -> None:
    """Write ``blob`` to ``path`` in place under an exclusive OFD lock.

    The certificate-blob convention (amd-memory-encryption.rst; kvm-host-abi.md §1(d)): a VMM
    holds a shared lock on the blob from a certificate exit until the request reached firmware,
    an updater holds the exclusive lock while it changes the blob. Rewriting the same inode (not
    renaming a new file over it) keeps every VMM and updater on one lock. A VMM that finds the
    lock taken answers EAGAIN, so guests see BUSY and retry.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.fcntl(fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        view = memoryview(blob)
        while view:
            view = view[os.pwrite(fd, view, len(blob) - len(view)):]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing the description drops its lock

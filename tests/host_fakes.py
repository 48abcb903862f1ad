"""Test doubles for snplab.host and snplab.vmm.snp: a fake AMD certificate chain (clearly not
AMD's: its ARK fails AMD's pins), a fake /dev/kvm + /dev/sev ioctl layer driven by a fixture
host's host.json, and helpers to copy a fixture host tree."""

from __future__ import annotations

import ctypes as C
import datetime as dt
import errno
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from snplab.abi.tcb import TcbVersion
from snplab.host import sev_device
from snplab.vmm import uapi
from snplab.vmm.kvm import IoctlLayer

FIXTURES = Path(__file__).parent / "fixtures" / "hosts"
AMD_ARC = "1.3.6.1.4.1.3704.1"
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)


@functools.lru_cache(maxsize=None)
def _rsa(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.lru_cache(maxsize=None)
def _ec(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class FakeChain:
    ark: x509.Certificate
    ask: x509.Certificate
    vek: x509.Certificate
    vek_key: ec.EllipticCurvePrivateKey


def make_chain(product: str = "genoa", tcb: TcbVersion | None = None, hw_id: bytes = bytes(range(64)),
               signer: str = "vcek", valid_days: int = 400, key_tag: str = "") -> FakeChain:
    """ARK (self-signed) → ASK/ASVK → VCEK/VLEK, RSA-PSS SHA-384 like AMD's, with AMD extensions."""
    P = product.capitalize()
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)  # valid since a month ago
    until = now + dt.timedelta(days=valid_days)
    ark_key, ask_key = _rsa("ark" + product + key_tag), _rsa("ask" + product + key_tag)
    vek_key = _ec("vek" + product + key_tag)

    def ca(subject: str, issuer: str, key, signer_key) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
                .public_key(key.public_key()).serial_number(1).not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(signer_key, hashes.SHA384(), rsa_padding=PSS))

    ark = ca(f"ARK-{P}", f"ARK-{P}", ark_key, ark_key)
    ask_cn = f"SEV-{P}" if signer == "vcek" else f"SEV-VLEK-{P}"
    ask = ca(ask_cn, f"ARK-{P}", ask_key, ark_key)
    tcb = tcb or TcbVersion.unpack(0, _layout(product))
    exts = {".1": _der_int(1), ".2": _der_ia5(P), ".3.1": _der_int(tcb.bootloader), ".3.2": _der_int(tcb.tee),
            ".3.3": _der_int(tcb.snp), ".3.4": _der_int(0), ".3.5": _der_int(0), ".3.6": _der_int(0),
            ".3.7": _der_int(0), ".3.8": _der_int(tcb.microcode)}
    if product == "turin":
        exts[".3.9"] = _der_int(tcb.fmc)
    if signer == "vcek":
        exts[".4"] = hw_id[:8] if product == "turin" else hw_id
    else:
        exts[".5"] = _der_ia5("snplab-test-csp")
    b = (x509.CertificateBuilder().subject_name(_name("SEV-VCEK" if signer == "vcek" else "SEV-VLEK"))
         .issuer_name(_name(ask_cn)).public_key(vek_key.public_key()).serial_number(2)
         .not_valid_before(now).not_valid_after(until))
    for suffix, value in exts.items():
        b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD_ARC + suffix), value), critical=False)
    vek = b.sign(ask_key, hashes.SHA384(), rsa_padding=PSS)
    return FakeChain(ark, ask, vek, vek_key)


def _layout(product: str):
    from snplab.abi.tcb import layout_for_product
    return layout_for_product(product)


def pins_for(chain: FakeChain, product: str = "genoa") -> dict[str, str]:
    from snplab.attest.certs import sha256_fingerprint
    return {product: sha256_fingerprint(chain.ark)}


# ---- fake ioctl layer -----------------------------------------------------------------------


class FakeHostIoctl(IoctlLayer):
    """Answers /dev/kvm and /dev/sev ioctls from a host spec (host.json of a fixture tree).

    spec: {"vm_types": int, "attrs": {"vmsa_features"|"snp_policy_bits"|"req_certs": int | "ENXIO"},
           "snp_status": {SnpPlatformStatus fields} | "EIO", "chip_id": hex | null,
           "open_errors": {"/dev/sev": "EACCES"}}
    """

    ATTRS = {uapi.KVM_X86_SEV_VMSA_FEATURES: "vmsa_features", uapi.KVM_X86_SNP_POLICY_BITS: "snp_policy_bits",
             uapi.KVM_X86_SEV_SNP_REQ_CERTS: "req_certs"}

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.fds: dict[int, str] = {}
        self.calls: list[tuple[str, int, Any]] = []
        self._next = 100

    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        kind = os.path.basename(path)
        err = self.spec.get("open_errors", {}).get("/dev/" + kind)
        if err:
            code = getattr(errno, err)
            raise PermissionError(code, os.strerror(code), path) if code == errno.EACCES else OSError(code, os.strerror(code), path)
        self._next += 1
        self.fds[self._next] = kind
        return self._next

    def close(self, fd: int) -> None:
        self.fds.pop(fd)

    @staticmethod
    def _fail(code: int) -> None:
        raise OSError(code, os.strerror(code))

    def ioctl(self, fd: int, request: int, arg: Any = 0) -> int:
        kind = self.fds[fd]
        self.calls.append((kind, request, arg))
        if kind == "kvm":
            if request == uapi.KVM_CHECK_EXTENSION:
                if arg == uapi.KVM_CAP_VM_TYPES:
                    return int(self.spec.get("vm_types", 0))
                return 0
            if request == uapi.KVM_GET_DEVICE_ATTR:
                name = self.ATTRS.get(arg.attr) if arg.group == uapi.KVM_X86_GRP_SEV else None
                value = self.spec.get("attrs", {}).get(name, "ENXIO") if name else "ENXIO"
                if isinstance(value, str):
                    self._fail(getattr(errno, value))
                C.c_uint64.from_address(arg.addr).value = value
                return 0
            self._fail(errno.ENOTTY)
        if kind == "sev" and request == sev_device.SEV_ISSUE_CMD:
            if arg.cmd == sev_device.SNP_PLATFORM_STATUS:
                st = self.spec.get("snp_status", "ENODEV")
                if isinstance(st, str):
                    arg.error = 0
                    self._fail(getattr(errno, st))
                raw = sev_device.SnpPlatformStatus(**st).to_bytes()
                C.memmove(arg.data, raw, len(raw))
                return 0
            if arg.cmd == sev_device.SEV_GET_ID2:
                chip = self.spec.get("chip_id")
                if chip is None:
                    self._fail(errno.EIO)
                req = sev_device.sev_user_data_get_id2.from_address(arg.data)
                raw = bytes.fromhex(chip)
                C.memmove(req.address, raw, len(raw))
                req.length = len(raw)
                return 0
            arg.error = 0x10
            self._fail(errno.EIO)
        self._fail(errno.ENOTTY)
        return -1


def host_tree(name: str, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """Copy fixture host ``name`` into ``tmp``; return (root, host.json spec)."""
    root = tmp / name
    shutil.copytree(FIXTURES / name, root, symlinks=True)
    spec = json.loads((root / "host.json").read_text())
    return root, spec

"""The /dev/sev platform-management ioctl (ccp driver): SNP platform status and the chip ID.

Source: Linux include/uapi/linux/psp-sev.h, read in the public-source index (copy with the 2025
ciphertext-hiding bits; search id 64760511); all structs ``__packed``::

    enum { SEV_FACTORY_RESET = 0, SEV_PLATFORM_STATUS, SEV_PEK_GEN, SEV_PEK_CSR, SEV_PDH_GEN,
           SEV_PDH_CERT_EXPORT, SEV_PEK_CERT_IMPORT, SEV_GET_ID, SEV_GET_ID2,
           SNP_PLATFORM_STATUS, SNP_COMMIT, SNP_SET_CONFIG, SNP_VLEK_LOAD };
    struct sev_issue_cmd { __u32 cmd; __u64 data; __u32 error; };          16 B
    struct sev_user_data_get_id2 { __u64 address; __u32 length; };         12 B
    struct sev_user_data_snp_status {                                      32 B
        __u8 api_major, api_minor, state; __u8 is_rmp_initialized:1, rsvd:7;
        __u32 build_id;
        __u32 mask_chip_id:1, mask_chip_key:1, vlek_en:1, feature_info:1, rapl_dis:1,
              ciphertext_hiding_cap:1, ciphertext_hiding_en:1, rsvd1:25;
        __u32 guest_count; __u64 current_tcb_version; __u64 reported_tcb_version; };
    #define SEV_ISSUE_CMD _IOWR('S', 0x0, struct sev_issue_cmd)

Every call goes through an ``IoctlLayer`` (snplab.vmm.kvm) so tests can answer like the driver.
"""

from __future__ import annotations

import ctypes as C
import errno
import os
from dataclasses import dataclass
from typing import Any

from snplab.vmm import uapi

SEV_GET_ID2 = 8
SNP_PLATFORM_STATUS = 9

SEV_IOC_TYPE = ord("S")
CHIP_ID_SIZE = 64

# SNP platform states (SNP firmware ABI 56860, SNP_PLATFORM_STATUS).
SNP_STATE_UNINIT = 0
SNP_STATE_INIT = 1
SNP_STATE_NAMES = {SNP_STATE_UNINIT: "UNINIT", SNP_STATE_INIT: "INIT"}


class sev_issue_cmd(C.Structure):
    _pack_ = 1
    _fields_ = [("cmd", C.c_uint32), ("data", C.c_uint64), ("error", C.c_uint32)]


class sev_user_data_get_id2(C.Structure):
    _pack_ = 1
    _fields_ = [("address", C.c_uint64), ("length", C.c_uint32)]


class sev_user_data_snp_status(C.Structure):
    _pack_ = 1
    _fields_ = [("api_major", C.c_uint8), ("api_minor", C.c_uint8), ("state", C.c_uint8),
                ("_flags3", C.c_uint8), ("build_id", C.c_uint32), ("_flags8", C.c_uint32),
                ("guest_count", C.c_uint32), ("current_tcb_version", C.c_uint64),
                ("reported_tcb_version", C.c_uint64)]


for _cls, _size in ((sev_issue_cmd, 16), (sev_user_data_get_id2, 12), (sev_user_data_snp_status, 32)):
    if C.sizeof(_cls) != _size:
        raise uapi.UapiLayoutError(f"{_cls.__name__}: sizeof {C.sizeof(_cls)}, want {_size}")
del _cls, _size

SEV_ISSUE_CMD = uapi.IOWR(SEV_IOC_TYPE, 0x0, sev_issue_cmd)

# Firmware status codes worth naming in messages (psp-sev.h sev_ret_code).
SEV_RET_NAMES = {0x00: "SUCCESS", 0x01: "INVALID_PLATFORM_STATE", 0x07: "POLICY_FAILURE",
                 0x10: "INVALID_COMMAND", 0x16: "INVALID_PARAM", 0x20: "RMP_INIT_REQUIRED"}


class SevDeviceError(OSError):
    """A /dev/sev command failed: names the command, the errno and the firmware status."""

    def __init__(self, what: str, err: int, fw_error: int = 0) -> None:
        self.what, self.fw_error = what, fw_error
        fw = f", firmware status {fw_error:#x} {SEV_RET_NAMES.get(fw_error, '')}".rstrip() if fw_error else ""
        super().__init__(err, f"{what}: {os.strerror(err)}{fw}")


@dataclass(frozen=True)
class SnpPlatformStatus:
    api_major: int
    api_minor: int
    state: int
    is_rmp_initialized: bool
    build_id: int
    mask_chip_id: bool
    mask_chip_key: bool
    vlek_en: bool
    guest_count: int
    current_tcb: int
    reported_tcb: int

    @property
    def firmware_version(self) -> str:
        return f"{self.api_major}.{self.api_minor}.{self.build_id}"

    @property
    def state_name(self) -> str:
        return SNP_STATE_NAMES.get(self.state, f"unknown({self.state})")

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SnpPlatformStatus":
        if len(raw) < C.sizeof(sev_user_data_snp_status):
            raise ValueError(f"SNP platform status is 32 bytes, got {len(raw)}")
        s = sev_user_data_snp_status.from_buffer_copy(raw[:32])
        return cls(api_major=s.api_major, api_minor=s.api_minor, state=s.state,
                   is_rmp_initialized=bool(s._flags3 & 1), build_id=s.build_id,
                   mask_chip_id=bool(s._flags8 & 1), mask_chip_key=bool(s._flags8 & 2),
                   vlek_en=bool(s._flags8 & 4), guest_count=s.guest_count,
                   current_tcb=s.current_tcb_version, reported_tcb=s.reported_tcb_version)

    def to_bytes(self) -> bytes:
        s = sev_user_data_snp_status(
            api_major=self.api_major, api_minor=self.api_minor, state=self.state,
            _flags3=int(self.is_rmp_initialized), build_id=self.build_id,
            _flags8=int(self.mask_chip_id) | int(self.mask_chip_key) << 1 | int(self.vlek_en) << 2,
            guest_count=self.guest_count, current_tcb_version=self.current_tcb,
            reported_tcb_version=self.reported_tcb)
        return bytes(s)

    def to_json(self) -> dict[str, Any]:
        return {"firmware": self.firmware_version, "state": self.state_name,
                "rmp_initialized": self.is_rmp_initialized, "guest_count": self.guest_count,
                "mask_chip_id": self.mask_chip_id, "mask_chip_key": self.mask_chip_key,
                "vlek_loaded": self.vlek_en, "current_tcb": f"{self.current_tcb:#018x}",
                "reported_tcb": f"{self.reported_tcb:#018x}"}


def _issue(io: Any, fd: int, cmd: int, data_addr: int, what: str) -> None:
    req = sev_issue_cmd(cmd=cmd, data=data_addr, error=0)
    try:
        io.ioctl(fd, SEV_ISSUE_CMD, req)
    except OSError as e:
        raise SevDeviceError(what, e.errno or errno.EIO, req.error) from None


def snp_platform_status(io: Any, fd: int) -> SnpPlatformStatus:
    """SEV_ISSUE_CMD(SNP_PLATFORM_STATUS) on an open /dev/sev fd."""
    buf = sev_user_data_snp_status()
    _issue(io, fd, SNP_PLATFORM_STATUS, C.addressof(buf), "SNP_PLATFORM_STATUS")
    return SnpPlatformStatus.from_bytes(bytes(buf))


def chip_id(io: Any, fd: int) -> bytes:
    """SEV_ISSUE_CMD(SEV_GET_ID2): the 64-byte CHIP_ID (the VCEK's hwID)."""
    out = (C.c_uint8 * CHIP_ID_SIZE)()
    arg = sev_user_data_get_id2(address=C.addressof(out), length=CHIP_ID_SIZE)
    _issue(io, fd, SEV_GET_ID2, C.addressof(arg), "SEV_GET_ID2")
    if not 0 < arg.length <= CHIP_ID_SIZE:
        raise SevDeviceError("SEV_GET_ID2", errno.EINVAL)
    return bytes(out)[: arg.length]

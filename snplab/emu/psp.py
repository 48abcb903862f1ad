"""The emulated AMD Secure Processor (PSP) firmware: SNP launch, the secrets page, and guest
messages (SNP_GUEST_REQUEST) with attestation reports and derived keys.

This is a model, not AMD firmware: it follows the published ABI facts (shared/reference/
guest-protocol.md §3–§5, verify.md §0/§b/§e, errata.md) and fills the gaps as documented below.

Launch (``Launcher`` protocol of ``snplab.vmm.launch``): ``start(policy)`` → ``update(gpa, data,
type)``* → ``finish(host_data, vcpus)``; every page extends the launch digest (launch_digest.py),
is written into guest memory as the firmware would (NORMAL/UNMEASURED/CPUID: the data; ZERO: zeros;
SECRETS: the secrets page it generates) and becomes private + validated in the RMP. ``finish``
measures one VMSA per vCPU (vmsa.py), vCPU 0 first. A page launched twice fails (the firmware
requires an unassigned page).

CPUID pages get the cheap part of the firmware's value check (``_check_cpuid_page``): feature bits
the firmware refuses (snplab.abi.cpuid_page ``FIRMWARE_MASKED_FEATURES``, QEMU's mask list) and
0xD.0/0xD.1 EBX other than 0x240 for xcr0_in = 1, xss_in = 0. Such a page fails with
INVALID_PARAM, is not measured or assigned, and the corrected page is written back into it (as the
firmware writes its correction, which KVM then copies to the VMM's uaddr); launching the corrected
page succeeds. Not modelled: the check of every other leaf against the host's real CPUID (the
firmware only lets values through that the hardware allows), XSAVE sizes for other XCR0/XSS
values, and entry-count/ordering rules.

Report fields that depend on the firmware (version, PLATFORM_INFO, v5 mitigation vectors) come
from firmware_profile.py, per product and report version, as public hardware reports show them.

Guest messages: header checks (algo 1, hdr_version 1, hdr_sz 0x60, msg_vmpck ≤ 3,
msg_sz ≤ 4000), then the sequence number (must equal the counter of that VMPCK, which starts at 1),
then AES-256-GCM with VMPCKn, IV = seqno (u64 LE) + 4 zero bytes, AAD = header[0x30:0x60]; then
the message type and size. **Every rejection returns INVALID_PARAM (0x16) and leaves the counter
unchanged** (settled-questions.md Q3: INVALID_PARAM is documented for a bad type/size and is the
best estimate for a bad tag or sequence number). The response page is written only on success,
with seqno + 1 and msg_type + 1; the counter then advances by 2. A counter that would wrap gives
AEAD_OFLOW. Supported: MSG_REPORT_REQ (report v5 by default, v2/v3 selectable) and MSG_KEY_REQ;
every other type is "not a valid message type" → INVALID_PARAM.

The PSP logs every message it is handed: (vmpck, seqno, msg_type, SHA-256 of the ciphertext, tag,
status) — the IV-reuse oracle reads it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from snplab.abi import cpuid_page as cpuid_abi
from snplab.abi import guest_msg as gm
from snplab.abi.policy import (
    PLATFORM_INFO_SMT_EN,
    POLICY_MBZ_MASK,
    POLICY_RESERVED_MBO,
    POLICY_SMT,
)
from snplab.abi.report import (
    REPORT_SIZE,
    SIGNER_INFO_SIGNING_KEY_SHIFT,
    SIGNING_KEY_VCEK,
    SIGNING_KEY_VLEK,
    AttestationReport,
)
from snplab.abi.sev_status import SevStatus, status_name
from snplab.abi.tcb import TcbVersion
from snplab.emu.faults import FaultSet
from snplab.emu.firmware_profile import firmware_profile
from snplab.emu.keys import IssuedKey, normalize_chip_id, product_info
from snplab.emu.launch_digest import (
    INITIAL_VMSA_GPA,
    SNP_PAGE_TYPE_CPUID,
    SNP_PAGE_TYPE_NORMAL,
    SNP_PAGE_TYPE_SECRETS,
    SNP_PAGE_TYPE_VMSA,
    SNP_PAGE_TYPE_ZERO,
    LaunchDigest,
)
from snplab.emu.rmp import Memory, Rmp
from snplab.emu.vmsa import SVM_SEV_FEAT_SNP_ACTIVE, build_vmsa_for

PAGE_SIZE = 4096
_PAGE_TYPE_NAMES = {1: "NORMAL", 2: "VMSA", 3: "ZERO", 4: "UNMEASURED", 5: "SECRETS", 6: "CPUID"}

# Secrets page (struct snp_secrets_page, arch/x86/include/asm/sev.h; settled-questions.md Q4)
SECRETS_VERSION_OFFSET = 0x000
SECRETS_IMIEN_OFFSET = 0x004
SECRETS_FMS_OFFSET = 0x008
SECRETS_GOSVW_OFFSET = 0x010
SECRETS_VMPCK_OFFSET = 0x020  # VMPCK0..3, 32 bytes each
SECRETS_OS_AREA_OFFSET = 0x0A0
SECRETS_TSC_FACTOR_OFFSET = 0x160
SECRETS_PAGE_VERSION = 3  # format version the emulated firmware writes (value not verified)

# MSG_KEY_REQ v1 (32 bytes) / v2 (+LAUNCH_MIT_VECTOR) and MSG_KEY_RSP (64 bytes)
# (uapi linux/sev-guest.h struct snp_derived_key_req; guest-protocol.md §3.5)
_KEY_REQ = struct.Struct("<IIQIIQ")
KEY_REQ_SIZE_V1 = 0x20
KEY_REQ_SIZE_V2 = 0x28
KEY_RSP_SIZE = 0x40
KEY_REQ_ROOT_KEY_SELECT = 1 << 0
KEY_REQ_KEY_SEL_SHIFT = 1
GUEST_FIELD_SELECT_MASK = 0x7F  # policy, image_id, family_id, measurement, guest_svn, tcb, mit vector



class PspError(RuntimeError):
    """A firmware command failed (launch commands: the VMM's call was invalid)."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        super().__init__(f"{status_name(status)}: {detail}")


@dataclass(frozen=True)
class PspLogEntry:
    vmpck: int
    seqno: int
    msg_type: int
    ct_sha256: str
    tag: str
    status: int

    def to_json(self) -> dict[str, Any]:
        return {"vmpck": self.vmpck, "seqno": self.seqno, "msg_type": self.msg_type,
                "ct_sha256": self.ct_sha256, "tag": self.tag, "status": self.status}


def _page_type(value: Any) -> int:
    v = int(value)
    if v not in _PAGE_TYPE_NAMES or v == SNP_PAGE_TYPE_VMSA:
        raise PspError(SevStatus.INVALID_PARAM, f"page type {value!r} cannot be launched")
    return v


class EmulatedPsp:
    """One guest's context in the emulated firmware (plus the platform keys it signs with)."""

    def __init__(self, *, product: str, tcb: TcbVersion, vcek: IssuedKey, vlek: IssuedKey | None = None,
                 chip_id: bytes | None = None, report_version: int = 5, memory: Memory | None = None,
                 rmp: Rmp | None = None, faults: Iterable[str] = (), platform_info: int | None = None,
                 firmware_version: tuple[int, int, int] | None = None,
                 sev_features: int = SVM_SEV_FEAT_SNP_ACTIVE, host_cr4_mce: bool = True,
                 rng: Callable[[int], bytes] = os.urandom) -> None:
        if report_version not in (2, 3, 5):
            raise ValueError(f"report version {report_version} not emulated (2, 3 or 5)")
        self.info = product_info(product)
        self.product = self.info.name.lower()
        self.tcb = tcb
        self.vcek = vcek
        self.vlek = vlek
        self.chip_id = normalize_chip_id(self.product, chip_id)
        self.report_version = report_version
        self.memory = memory
        self.rmp = rmp
        self.faults = faults if isinstance(faults, FaultSet) else FaultSet(faults)
        # firmware version, PLATFORM_INFO and mitigation vectors as real firmware writing this
        # report version reports them (firmware_profile.py); explicit arguments override
        self.profile = firmware_profile(self.product, report_version)
        self.platform_info = self.profile.platform_info if platform_info is None else platform_info
        self.firmware_version = self.profile.firmware_version if firmware_version is None else firmware_version
        self.sev_features = sev_features | SVM_SEV_FEAT_SNP_ACTIVE
        self.host_cr4_mce = host_cr4_mce
        self._rng = rng
        # guest context
        self.state = "uninit"  # → launching → running
        self.policy: int | None = None
        self.host_data = bytes(32)
        self._ld = LaunchDigest()
        self._launched: set[int] = set()
        self.launch_log: list[dict[str, Any]] = []
        self.vmpcks: tuple[bytes, ...] = tuple(rng(32) for _ in range(4))
        self.report_id = rng(32)
        self._seqno = [1, 1, 1, 1]  # next sequence number the firmware accepts, per VMPCK
        self._aead = [AESGCM(k) for k in self.vmpcks]
        self.message_log: list[PspLogEntry] = []
        self.reports_signed = 0
        self.last_report: AttestationReport | None = None
        self.cpuid_corrected: bytes | None = None  # the last CPUID page the firmware corrected

    # -- endorsement keys ----------------------------------------------------------------------

    def install_keys(self, tcb: TcbVersion, vcek: IssuedKey, vlek: IssuedKey | None = None) -> None:
        """A TCB update (SNP_COMMIT / SNP_SET_CONFIG) or VLEK load: new REPORTED_TCB and keys."""
        self.tcb, self.vcek, self.vlek = tcb, vcek, vlek

    # -- launch --------------------------------------------------------------------------------

    @property
    def measurement(self) -> bytes | None:
        return self._ld.value if self.state == "running" else None

    def start(self, policy: int) -> None:
        if self.state != "uninit":
            raise PspError(SevStatus.INVALID_GUEST_STATE, "SNP_LAUNCH_START on a launched guest")
        if not policy & POLICY_RESERVED_MBO or policy & POLICY_MBZ_MASK:
            raise PspError(SevStatus.INVALID_PARAM, f"guest policy {policy:#x}: bit 17 must be 1, 63:26 zero")
        if self.platform_info & PLATFORM_INFO_SMT_EN and not policy & POLICY_SMT:
            raise PspError(SevStatus.POLICY_FAILURE, "SMT is enabled but the guest policy forbids it")
        major, minor = (policy >> 8) & 0xFF, policy & 0xFF
        if (major, minor) > self.firmware_version[:2]:
            raise PspError(SevStatus.POLICY_FAILURE, f"policy needs ABI {major}.{minor}")
        self.policy = policy
        self.state = "launching"
        self.launch_log.append({"op": "start", "policy": policy, "sev_features": self.sev_features})

    def update(self, gpa: int, data: bytes, page_type: Any) -> None:
        if self.state != "launching":
            raise PspError(SevStatus.INVALID_GUEST_STATE, "SNP_LAUNCH_UPDATE outside start..finish")
        ptype = _page_type(page_type)
        if gpa % PAGE_SIZE or not data or len(data) % PAGE_SIZE:
            raise PspError(SevStatus.INVALID_PARAM, f"update {gpa:#x}+{len(data):#x} is not page-aligned")
        npages = len(data) // PAGE_SIZE
        pages = [gpa + i * PAGE_SIZE for i in range(npages)]
        twice = [p for p in pages if p in self._launched]
        if twice:
            raise PspError(SevStatus.INVALID_PAGE_STATE, f"page {twice[0]:#x} is already launched")
        if ptype == SNP_PAGE_TYPE_SECRETS and npages != 1:
            raise PspError(SevStatus.INVALID_PARAM, "a SECRETS update is exactly one page")
        if ptype == SNP_PAGE_TYPE_CPUID:
            for i, page_gpa in enumerate(pages):
                self._check_cpuid_page(page_gpa, bytes(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
        entry: dict[str, Any] = {"op": "update", "gpa": gpa, "page_type": _PAGE_TYPE_NAMES[ptype],
                                 "npages": npages}
        digests = []
        for i, page_gpa in enumerate(pages):
            page = bytes(data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
            self._ld.extend(page_gpa, ptype, page)
            if ptype == SNP_PAGE_TYPE_NORMAL:
                digests.append(hashlib.sha384(page).hexdigest())
            self._write_launched(page_gpa, ptype, page)
        if digests:
            entry["sha384"] = digests
        entry["digest"] = self._ld.value.hex()
        self._launched.update(pages)
        if self.rmp is not None:
            self.rmp.launch(gpa, npages)
        self.launch_log.append(entry)

    def _check_cpuid_page(self, gpa: int, page: bytes) -> None:
        """Refuse a CPUID page with values the firmware corrects (see the module docstring)."""
        entries = cpuid_abi.parse_page(page)
        fixed = []
        for e in entries:
            f = cpuid_abi.without_masked(e)
            if cpuid_abi.is_legacy_xsave_leaf(f) and f.ebx != cpuid_abi.XSAVE_LEGACY_SIZE:
                f = dataclasses.replace(f, ebx=cpuid_abi.XSAVE_LEGACY_SIZE)
            fixed.append(f)
        bad = [e for e, f in zip(entries, fixed) if e != f]
        if not bad:
            return
        corrected = cpuid_abi.pack_page(fixed)
        if self.memory is not None:
            self.memory.view(gpa, PAGE_SIZE)[:] = corrected
        self.cpuid_corrected = corrected
        raise PspError(SevStatus.INVALID_PARAM, f"CPUID page at {gpa:#x}: {len(bad)} entr"
                       f"{'y' if len(bad) == 1 else 'ies'} with values the firmware refuses "
                       f"(first: leaf {bad[0].eax_in:#x}.{bad[0].ecx_in})")

    def _write_launched(self, gpa: int, ptype: int, page: bytes) -> None:
        if self.memory is None:
            return
        if ptype == SNP_PAGE_TYPE_SECRETS:
            content = self.secrets_page()
        elif ptype == SNP_PAGE_TYPE_ZERO:
            content = bytes(PAGE_SIZE)
        else:  # NORMAL, UNMEASURED, CPUID: the firmware copies the source page
            content = page
        self.memory.view(gpa, PAGE_SIZE)[:] = content

    def finish(self, host_data: bytes, vcpus: Sequence[Any]) -> None:
        if self.state != "launching":
            raise PspError(SevStatus.INVALID_GUEST_STATE, "SNP_LAUNCH_FINISH outside a launch")
        host_data = bytes(host_data)
        if len(host_data) != 32:
            raise PspError(SevStatus.INVALID_PARAM, f"HOST_DATA is 32 bytes, got {len(host_data)}")
        if not vcpus:
            raise PspError(SevStatus.INVALID_PARAM, "no vCPU to launch")
        for v in vcpus:
            self._ld.extend(INITIAL_VMSA_GPA, SNP_PAGE_TYPE_VMSA,
                            build_vmsa_for(v, sev_features=self.sev_features, host_cr4_mce=self.host_cr4_mce))
        self.host_data = host_data
        self.state = "running"
        self.launch_log.append({"op": "finish", "host_data": host_data.hex(), "sev_features": self.sev_features,
                                "vcpus": [v.to_json() if hasattr(v, "to_json") else v for v in vcpus],
                                "digest": self._ld.value.hex()})

    def secrets_page(self) -> bytes:
        page = bytearray(PAGE_SIZE)
        struct.pack_into("<III", page, SECRETS_VERSION_OFFSET, SECRETS_PAGE_VERSION, 0, self.info.cpuid_signature)
        for i, key in enumerate(self.vmpcks):
            page[SECRETS_VMPCK_OFFSET + 32 * i:SECRETS_VMPCK_OFFSET + 32 * (i + 1)] = key
        return bytes(page)

    # -- guest messages --------------------------------------------------------------------------

    def next_seqno(self, vmpck: int) -> int:
        """The sequence number the firmware will accept next on VMPCKn."""
        return self._seqno[vmpck]

    def guest_request(self, request: bytes | bytearray | memoryview, response: bytearray) -> int:
        """SNP_GUEST_REQUEST: ``request`` is the 4 KiB request page, ``response`` the 4 KiB
        response page (written only on success). Returns the firmware status."""
        req = bytes(request[:PAGE_SIZE]).ljust(PAGE_SIZE, b"\0")
        hdr = gm.MsgHeader.unpack(req)
        ct = req[gm.PAYLOAD_OFFSET:gm.PAYLOAD_OFFSET + min(hdr.msg_sz, gm.MAX_PAYLOAD_SIZE)]
        status = self._process(hdr, ct, response)
        self.message_log.append(PspLogEntry(hdr.msg_vmpck, hdr.msg_seqno, hdr.msg_type,
                                            hashlib.sha256(ct).hexdigest(), hdr.tag.hex(), int(status)))
        return int(status)

    def _process(self, hdr: gm.MsgHeader, ct: bytes, response: bytearray) -> int:
        if self.state != "running":
            return SevStatus.INVALID_GUEST_STATE
        if (hdr.algo != gm.AEAD_ALGO_AES_256_GCM or hdr.hdr_version != gm.MSG_HDR_VER
                or hdr.hdr_sz != gm.MSG_HDR_SIZE or hdr.msg_vmpck >= gm.VMPCK_COUNT
                or hdr.msg_sz > gm.MAX_PAYLOAD_SIZE):
            return SevStatus.INVALID_PARAM
        vmpck = hdr.msg_vmpck
        expected = self._seqno[vmpck]
        if hdr.msg_seqno != expected and "seqno-not-checked" not in self.faults:
            return self._reject(vmpck)
        if hdr.msg_seqno == 0 or hdr.msg_seqno + 1 >= 1 << 64:
            return SevStatus.AEAD_OFLOW if hdr.msg_seqno else self._reject(vmpck)
        try:
            plaintext = self._aead[vmpck].decrypt(gm.aead_iv(hdr.msg_seqno), ct + hdr.tag, hdr.aad())
        except InvalidTag:
            return self._reject(vmpck)
        handlers: dict[int, Callable[[gm.MsgHeader, bytes], bytes | None]] = {
            gm.MsgType.REPORT_REQ: self._report_req, gm.MsgType.KEY_REQ: self._key_req}
        handler = handlers.get(hdr.msg_type)
        if handler is None:
            return self._reject(vmpck)
        payload = handler(hdr, plaintext)
        if payload is None:  # message too short for its type/version
            return self._reject(vmpck)
        rsp_seqno = hdr.msg_seqno if "response-seqno-unchanged" in self.faults else hdr.msg_seqno + 1
        rhdr = gm.MsgHeader(msg_seqno=rsp_seqno, msg_type=hdr.msg_type + 1, msg_sz=len(payload),
                            msg_vmpck=vmpck, msg_version=hdr.msg_version)
        sealed = self._aead[vmpck].encrypt(gm.aead_iv(rhdr.msg_seqno), payload, rhdr.aad())
        out = rhdr.with_tag(sealed[-gm.AUTHTAG_LEN:]).pack() + sealed[:-gm.AUTHTAG_LEN]
        response[:PAGE_SIZE] = out.ljust(PAGE_SIZE, b"\0")
        self._seqno[vmpck] = hdr.msg_seqno + 2
        return SevStatus.SUCCESS

    def _reject(self, vmpck: int) -> int:
        if "counter-advances-on-error" in self.faults:
            self._seqno[vmpck] += 2
        return SevStatus.INVALID_PARAM

    # -- MSG_REPORT_REQ ------------------------------------------------------------------------

    def _signing_key(self, key_sel: int) -> tuple[int, IssuedKey | None, int]:
        """(status, key, SIGNING_KEY) for KEY_SEL bits 1:0."""
        sel = key_sel & 3
        if sel == gm.KEY_SEL_DEFAULT:
            return (0, self.vlek, SIGNING_KEY_VLEK) if self.vlek else (0, self.vcek, SIGNING_KEY_VCEK)
        if sel == gm.KEY_SEL_VCEK:
            return 0, self.vcek, SIGNING_KEY_VCEK
        if sel == gm.KEY_SEL_VLEK:
            return (0, self.vlek, SIGNING_KEY_VLEK) if self.vlek else (gm.REPORT_RSP_STATUS_INVALID_KEY, None, 0)
        return gm.REPORT_RSP_STATUS_INVALID_PARAM, None, 0

    def _report_req(self, hdr: gm.MsgHeader, plaintext: bytes) -> bytes | None:
        if hdr.msg_version != 1 or len(plaintext) < gm.REPORT_REQ_SIZE:
            return None
        req = gm.ReportReq.unpack(plaintext)
        status, key, signing_key = self._signing_key(req.key_sel)
        if not status and (req.vmpl > 3 or req.vmpl < hdr.msg_vmpck or req.key_sel & ~3 or any(req.reserved)):
            status = gm.REPORT_RSP_STATUS_INVALID_PARAM
        if status or key is None:
            return gm.ReportRsp(status=status, report_size=0, report=bytes(REPORT_SIZE)).pack()
        report = self.sign_report(self.build_report(req.report_data, req.vmpl, signing_key), key)
        return gm.ReportRsp(status=0, report_size=REPORT_SIZE, report=report.pack()).pack()

    def build_report(self, report_data: bytes, vmpl: int, signing_key: int = SIGNING_KEY_VCEK) -> AttestationReport:
        v = self.report_version
        tcb = self.tcb.pack()
        major, minor, build = self.firmware_version
        return AttestationReport(
            version=v, policy=self.policy or 0, vmpl=vmpl, current_tcb=tcb,
            platform_info=self.platform_info, signer_info=signing_key << SIGNER_INFO_SIGNING_KEY_SHIFT,
            report_data=bytes(report_data).ljust(64, b"\0")[:64], measurement=self._ld.value,
            host_data=self.host_data, report_id=self.report_id, report_id_ma=b"\xff" * 32,
            reported_tcb=tcb, committed_tcb=tcb, launch_tcb=tcb,
            cpuid_fam_id=self.info.family if v >= 3 else 0, cpuid_mod_id=self.info.model if v >= 3 else 0,
            cpuid_step=self.info.stepping if v >= 3 else 0, chip_id=self.chip_id,
            current_major=major, current_minor=minor, current_build=build,
            committed_major=major, committed_minor=minor, committed_build=build,
            launch_mit_vector=self.profile.launch_mit_vector if v >= 5 else 0,
            current_mit_vector=self.profile.current_mit_vector if v >= 5 else 0)

    def sign_report(self, report: AttestationReport, key: IssuedKey) -> AttestationReport:
        """ECDSA P-384 / SHA-384 over bytes [0, 0x2A0); R and S stored little-endian."""
        if not isinstance(key.key, ec.EllipticCurvePrivateKey):
            raise TypeError("a report is signed with an ECDSA P-384 key (VCEK/VLEK)")
        der = key.key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        signed = report.with_signature(r, s)
        self.reports_signed += 1
        self.last_report = signed
        return signed

    # -- MSG_KEY_REQ ---------------------------------------------------------------------------

    def _key_req(self, hdr: gm.MsgHeader, plaintext: bytes) -> bytes | None:
        size = {1: KEY_REQ_SIZE_V1, 2: KEY_REQ_SIZE_V2}.get(hdr.msg_version)
        if size is None or len(plaintext) < size:
            return None
        root, _rsvd, fields, vmpl, guest_svn, tcb = _KEY_REQ.unpack(plaintext[:KEY_REQ_SIZE_V1])
        mit = int.from_bytes(plaintext[0x20:0x28], "little") if hdr.msg_version == 2 else 0
        sel = (root >> KEY_REQ_KEY_SEL_SHIFT) & 3
        status = 0
        if root & KEY_REQ_ROOT_KEY_SELECT or root >> 3 or sel == 3 or fields & ~GUEST_FIELD_SELECT_MASK:
            status = gm.REPORT_RSP_STATUS_INVALID_PARAM  # VMRK needs a migration agent
        elif sel == gm.KEY_SEL_VLEK and self.vlek is None:
            status = gm.REPORT_RSP_STATUS_INVALID_KEY
        elif vmpl > 3 or vmpl < hdr.msg_vmpck or guest_svn > 0 or not _tcb_le(tcb, self.tcb):
            status = gm.REPORT_RSP_STATUS_INVALID_PARAM
        key = bytes(32)
        if not status:
            root_key = self.vlek if (sel == gm.KEY_SEL_VLEK or (sel == 0 and self.vlek)) else self.vcek
            secret = hashlib.sha384(b"snplab emulated key derivation" + root_key.der).digest()  # type: ignore[union-attr]
            mix = struct.pack("<QIIQQ", fields, vmpl, guest_svn, tcb, mit)
            for bit, value in ((0, (self.policy or 0).to_bytes(8, "little")), (1, bytes(16)), (2, bytes(16)),
                               (3, self._ld.value)):
                if fields >> bit & 1:
                    mix += value
            key = hmac.new(secret, mix, hashlib.sha256).digest()
        return struct.pack("<I28s32s", status, bytes(28), key)


def _tcb_le(requested: int, current: TcbVersion) -> bool:
    """Every component of the requested TCB_VERSION ≤ the current one (byte-wise)."""
    cur = current.pack().to_bytes(8, "little")
    return all(a <= b for a, b in zip(requested.to_bytes(8, "little"), cur))

"""The emulated PSP's launch: digest over PAGE_INFO (checked against bytes written out by hand here),
VMSA pages, the secrets page, guest memory and the RMP after launch."""

from __future__ import annotations

import hashlib
import struct

import pytest
from emu_refguest import FakeMemory, vcpu_init_state

from snplab.emu import keys
from snplab.emu.psp import EmulatedPsp, PspError
from snplab.emu.rmp import Rmp
from snplab.vmm.launch import PageType

PAGE = 4096


def _psp(memory: FakeMemory | None = None, rmp: Rmp | None = None, product: str = "milan") -> EmulatedPsp:
    store = keys.default_store()
    return EmulatedPsp(product=product, tcb=keys.default_tcb(product), vcek=store.vek(product, "vcek"),
                       memory=memory, rmp=rmp)


def _page_info(ld: bytes, contents: bytes, page_type: int, gpa: int) -> bytes:
    """PAGE_INFO (SNP ABI; verify.md §e.1) spelled out field by field."""
    out = ld + contents                       # 0x00 DIGEST_CUR, 0x30 CONTENTS
    out += (0x70).to_bytes(2, "little")      # 0x60 LENGTH
    out += bytes([page_type])                # 0x62 PAGE_TYPE
    out += b"\x00"                           # 0x63 IMI_PAGE
    out += b"\x00\x00\x00\x00"               # 0x64 reserved, VMPL1..3 permissions (KVM: none)
    out += gpa.to_bytes(8, "little")         # 0x68 GPA
    assert len(out) == 0x70
    return out


def _expected_vmsa() -> bytes:
    """The VMSA KVM would build for emu_refguest.vcpu_init_state(0), offsets from verify.md §e.4 /
    struct sev_es_save_area, written out by hand."""
    p = bytearray(PAGE)

    def seg(off: int, sel: int, attrib: int, limit: int, base: int) -> None:
        p[off:off + 16] = sel.to_bytes(2, "little") + attrib.to_bytes(2, "little") + limit.to_bytes(4, "little") \
            + base.to_bytes(8, "little")

    def q(off: int, v: int, n: int = 8) -> None:
        p[off:off + n] = v.to_bytes(n, "little")

    code = 0xB | 1 << 4 | 1 << 7 | 1 << 9 | 1 << 11    # type 11, S, P, L, G = 0xA9B
    data = 0x3 | 1 << 4 | 1 << 7 | 1 << 10 | 1 << 11   # type 3, S, P, DB, G = 0xC93
    for off in (0x00, 0x30, 0x40, 0x50, 0x20):          # ES DS FS GS SS
        seg(off, 0x10, data, 0xFFFFFFFF, 0)
    seg(0x10, 0x08, code, 0xFFFFFFFF, 0)                # CS
    seg(0x60, 0, 0, 23, 0x4000)                         # GDTR: limit/base only
    seg(0x70, 0, 0x82, 0xFFFF, 0)                       # LDTR: type 2, P
    seg(0x80, 0, 0, 0, 0)                               # IDTR
    seg(0x90, 0, 0x8B, 0xFFFF, 0)                       # TR: type 11, P
    q(0xD0, 0xD01 | 0x1000)                             # EFER | SVME
    q(0x148, 0x620 | 0x40)                              # CR4 | host MCE
    q(0x150, 0x1000)                                    # CR3
    q(0x158, 0x80050033)                                # CR0
    q(0x160, 0x400)                                     # DR7
    q(0x168, 0xFFFF0FF0)                                # DR6
    q(0x170, 2)                                         # RFLAGS
    q(0x178, 0x100000)                                  # RIP
    q(0x1D8, 0x304000)                                  # RSP
    q(0x330, 0x100000)                                  # RSI
    q(0x268, 0x0007040600070406)                        # G_PAT
    q(0x3B0, 1)                                         # SEV_FEATURES: SNP active
    q(0x3E8, 1)                                         # XCR0
    q(0x408, 0x1F80, 4)                                 # MXCSR
    q(0x410, 0x37F, 2)                                  # X87_FCW
    return bytes(p)


def test_launch_digest_equals_hand_written_page_info() -> None:
    mem = FakeMemory()
    psp = _psp(mem)
    normal = bytes((i * 7) & 0xFF for i in range(2 * PAGE))
    unmeasured = b"\x5a" * PAGE
    psp.start(0x30000)
    psp.update(0x1000, normal, PageType.NORMAL)
    psp.update(0x5000, bytes(PAGE), PageType.SECRETS)
    psp.update(0x6000, b"\x01" * PAGE, PageType.CPUID)
    psp.update(0x7000, unmeasured, PageType.UNMEASURED)
    psp.update(0x300000, bytes(2 * PAGE), PageType.ZERO)
    assert psp.measurement is None  # not before LAUNCH_FINISH
    psp.finish(bytes(32), [vcpu_init_state(0)])

    zero48 = bytes(48)
    ld = zero48
    steps = [(0x1000, 1, hashlib.sha384(normal[:PAGE]).digest()),
             (0x2000, 1, hashlib.sha384(normal[PAGE:]).digest()),
             (0x5000, 5, zero48), (0x6000, 6, zero48), (0x7000, 4, zero48),
             (0x300000, 3, zero48), (0x301000, 3, zero48),
             (0xFFFFFFFFF000, 2, hashlib.sha384(_expected_vmsa()).digest())]
    for gpa, ptype, contents in steps:
        ld = hashlib.sha384(_page_info(ld, contents, ptype, gpa)).digest()
    assert psp.measurement == ld
    assert psp.launch_log[-1]["digest"] == ld.hex()


def test_measurement_agrees_with_the_independent_predictor() -> None:
    from snplab.attest import measure

    psp = _psp(FakeMemory())
    psp.start(0x30000)
    psp.update(0x1000, b"\x11" * (4 * PAGE), PageType.NORMAL)
    psp.update(0x5000, bytes(PAGE), PageType.SECRETS)
    psp.update(0x100000, b"\x90" * (3 * PAGE), PageType.NORMAL)
    psp.update(0x300000, bytes(8 * PAGE), PageType.ZERO)
    psp.finish(bytes(range(32)), [vcpu_init_state(0), vcpu_init_state(1)])
    predicted = measure.predict_measurement(measure.launch_log_from_json(psp.launch_log))
    assert predicted == psp.measurement
    # and it depends on the second vCPU's state
    psp2 = _psp(FakeMemory())
    psp2.start(0x30000)
    psp2.update(0x1000, b"\x11" * (4 * PAGE), PageType.NORMAL)
    psp2.update(0x5000, bytes(PAGE), PageType.SECRETS)
    psp2.update(0x100000, b"\x90" * (3 * PAGE), PageType.NORMAL)
    psp2.update(0x300000, bytes(8 * PAGE), PageType.ZERO)
    psp2.finish(bytes(range(32)), [vcpu_init_state(0), vcpu_init_state(0)])
    assert psp2.measurement != psp.measurement


def test_secrets_zero_and_normal_pages_land_in_memory_and_rmp() -> None:
    mem = FakeMemory()
    rmp = Rmp(mem.end)
    psp = _psp(mem, rmp, product="genoa")
    mem.write(0x300000, b"\xff" * PAGE)  # garbage the firmware must zero
    psp.start(0x30000)
    psp.update(0x1000, b"\x42" * PAGE, PageType.NORMAL)
    psp.update(0x5000, b"\x99" * PAGE, PageType.SECRETS)  # source contents are ignored
    psp.update(0x300000, bytes(PAGE), PageType.ZERO)
    psp.finish(bytes(32), [vcpu_init_state(0)])
    secrets = mem.read(0x5000, PAGE)
    version, imien, fms = struct.unpack_from("<III", secrets, 0)
    assert version == 3 and imien == 0
    assert fms == 0x00A10F11  # Genoa: family 0x19 model 0x11 stepping 1
    for i in range(4):
        assert secrets[0x20 + 32 * i:0x40 + 32 * i] == psp.vmpcks[i]
    assert len(set(psp.vmpcks)) == 4 and bytes(32) not in psp.vmpcks
    assert secrets[0xA0:] == bytes(PAGE - 0xA0)  # OS area and the rest zero
    assert mem.read(0x1000, PAGE) == b"\x42" * PAGE
    assert mem.read(0x300000, PAGE) == bytes(PAGE)
    for gpa in (0x1000, 0x5000, 0x300000):
        assert rmp.is_private(gpa) and rmp.is_validated(gpa)
    assert rmp.is_private(0x2000) and not rmp.is_validated(0x2000)
    # another guest gets other keys
    other = _psp(FakeMemory())
    assert set(other.vmpcks).isdisjoint(psp.vmpcks)


def test_launch_commands_are_checked() -> None:
    psp = _psp(FakeMemory())
    with pytest.raises(PspError):
        psp.update(0x1000, bytes(PAGE), PageType.NORMAL)  # before start
    with pytest.raises(PspError):
        psp.start(0x10000)  # policy bit 17 (must be one) clear
    psp.start(0x30000)
    psp.update(0x1000, bytes(PAGE), PageType.NORMAL)
    with pytest.raises(PspError):
        psp.update(0x1000, bytes(PAGE), PageType.ZERO)  # launched twice
    with pytest.raises(PspError):
        psp.update(0x2000, bytes(100), PageType.NORMAL)  # not page sized
    with pytest.raises(PspError):
        psp.update(0x2000, bytes(PAGE), PageType.VMSA)  # VMSA pages come from finish
    with pytest.raises(PspError):
        psp.update(0x3000, bytes(2 * PAGE), PageType.SECRETS)
    with pytest.raises(PspError):
        psp.finish(bytes(31), [vcpu_init_state(0)])
    psp.finish(bytes(32), [vcpu_init_state(0)])
    with pytest.raises(PspError):
        psp.finish(bytes(32), [vcpu_init_state(0)])

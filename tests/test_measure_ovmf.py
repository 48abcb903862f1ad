"""snplab.attest.measure against the sev-snp-measure expectations in shared/reference/measure.

Those values come from QEMU/EC2/GCE launches of OVMF.  The launch sequence below (OVMF pages,
OVMF SEV metadata sections, one VMSA per vCPU) is expressed through the same public API our own
launch prediction uses: ``LaunchDigest`` for the chain and ``vmsa_page`` for the VMSA, with each
VMM's reset state written as the ``kvm_regs``/``kvm_sregs`` it would give KVM.  So every value
reproduced here checks the PAGE_INFO chain *and* the KVM register→VMSA model.

The fixtures are third-party data: they are read from /work/shared/reference/measure and the
tests skip when it is absent (never copied into the repository).
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

import pytest

from snplab.attest import measure as m

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "measure"
FIXTURES = REF / "fixtures"

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared/reference/measure is absent")

# OVMF footer GUIDs (verify.md §e.3); stored little-endian (bytes_le) in the image.
FOOTER_TABLE_GUID = "96b582de-1fb2-45f7-baea-a366c55a082d"
SEV_ES_RESET_BLOCK_GUID = "00f771de-1a7e-4fcb-890e-68c77e2fb44e"
SEV_METADATA_GUID = "dc886566-984a-4798-a75e-5585a7bf67cc"
SEV_HASH_TABLE_RV_GUID = "7255371f-3a3b-4b04-927b-1da6efa8d454"
# SEV kernel-hashes table (QEMU's padded table, 176 bytes).
SEV_HASH_TABLE_HEADER_GUID = "9438d606-4f22-4cc9-b479-a793d411fd21"
SEV_CMDLINE_GUID = "97d02dd8-bd20-4c94-aa78-e7714d36ab2a"
SEV_INITRD_GUID = "44baf731-3a2f-4bd7-9af1-41e29169781d"
SEV_KERNEL_GUID = "4de79437-abd2-427f-b835-d5b172d2045b"

SECTION_SNP_SEC_MEM, SECTION_SNP_SECRETS, SECTION_CPUID = 1, 2, 3
SECTION_SVSM_CAA, SECTION_KERNEL_HASHES = 4, 0x10

FOUR_GIB = 1 << 32
BSP_EIP = 0xFFFF_FFF0
EPYC_V4_SIG = 0x0080_0F12  # family 23 model 1 stepping 2


class Ovmf:
    """The pieces of an OVMF image that shape an SNP launch."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.gpa = FOUR_GIB - len(data)
        self.table = self._footer_table()

    def _footer_table(self) -> dict[str, bytes]:
        d = self.data
        hdr = 18  # u16 size + GUID
        footer = len(d) - 32 - hdr
        size, = struct.unpack_from("<H", d, footer)
        assert str(uuid.UUID(bytes_le=d[footer + 2:footer + hdr])) == FOOTER_TABLE_GUID
        body = d[footer - (size - hdr):footer]
        table = {}
        while len(body) >= hdr:
            esize, = struct.unpack_from("<H", body, len(body) - hdr)
            guid = str(uuid.UUID(bytes_le=body[len(body) - 16:]))
            assert hdr <= esize <= len(body)
            table[guid] = body[len(body) - esize:len(body) - hdr]
            body = body[:len(body) - esize]
        return table

    def u32(self, guid: str) -> int:
        return struct.unpack_from("<I", self.table[guid])[0]

    def sections(self) -> list[tuple[int, int, int]]:
        off = len(self.data) - self.u32(SEV_METADATA_GUID)
        sig, _size, version, count = struct.unpack_from("<4sIII", self.data, off)
        assert sig == b"ASEV" and version == 1
        return [struct.unpack_from("<III", self.data, off + 16 + 12 * i) for i in range(count)]


def sev_hashes_page(offset: int, cmdline: str, kernel: bytes, initrd: bytes = b"") -> bytes:
    def entry(guid: str, digest: bytes) -> bytes:
        return uuid.UUID(guid).bytes_le + struct.pack("<H", 50) + digest

    body = (entry(SEV_CMDLINE_GUID, hashlib.sha256(cmdline.encode() + b"\0").digest())
            + entry(SEV_INITRD_GUID, hashlib.sha256(initrd).digest())
            + entry(SEV_KERNEL_GUID, hashlib.sha256(kernel).digest()))
    table = uuid.UUID(SEV_HASH_TABLE_HEADER_GUID).bytes_le + struct.pack("<H", 18 + len(body)) + body
    table += bytes(-len(table) % 16)
    assert len(table) == 176
    page = bytearray(m.PAGE_SIZE)
    page[offset:offset + len(table)] = table
    return bytes(page)


def reset_vcpu(eip: int, vmm: str, vcpu_sig: int | None) -> m.VcpuInit:
    """The x86 reset state each VMM hands KVM, in kvm_sregs/kvm_regs terms."""
    code_type, ss_type, tr_type = 0xB, 0x3, 0xB
    rdx = vcpu_sig if vmm == "qemu" else 0x600
    pat = mxcsr = fcw = None  # KVM's reset values
    if vmm == "ec2":
        code_type = 0xA if eip == BSP_EIP else 0xB
        ss_type, tr_type = 0x2, 0x3
        mxcsr = fcw = 0
    elif vmm == "gce":
        pat, mxcsr, fcw = 0x0007_0106, 0, 0
    data = m.Segment(limit=0xFFFF, type=0x3, s=1, present=1)
    return m.VcpuInit(
        regs={"rip": eip & 0xFFFF, "rflags": 0x2, "rdx": rdx or 0},
        cs=m.Segment(selector=0xF000, base=eip & 0xFFFF_0000, limit=0xFFFF, type=code_type, s=1, present=1),
        ss=m.Segment(limit=0xFFFF, type=ss_type, s=1, present=1),
        ds=data, es=data, fs=data, gs=data,
        ldt=m.Segment(limit=0xFFFF, type=0x2, present=1),
        tr=m.Segment(limit=0xFFFF, type=tr_type, present=1),
        gdt=m.DescriptorTable(limit=0xFFFF), idt=m.DescriptorTable(limit=0xFFFF),
        cr0=0x6000_0010, cr3=0, cr4=0, efer=0, xcr0=1, pat=pat, mxcsr=mxcsr, fcw=fcw,
    )


def ovmf_launch_digest(
    ovmf_name: str, *, vcpus: int, features: int, vcpu_sig: int | None = EPYC_V4_SIG, vmm: str = "qemu",
    kernel: bytes | None = None, cmdline: str = "", seed: bytes | None = None,
) -> bytes:
    ovmf = Ovmf((FIXTURES / ovmf_name).read_bytes())
    if seed is None:
        ld = m.LaunchDigest()
        ld.add_range(ovmf.gpa, m.PAGE_TYPE_NORMAL, ovmf.data)
    else:
        ld = m.LaunchDigest(seed)
    cpuid_pages = []
    for gpa, size, kind in ovmf.sections():
        if kind == SECTION_SNP_SEC_MEM:
            ld.add_range(gpa, m.PAGE_TYPE_UNMEASURED if vmm == "gce" else m.PAGE_TYPE_ZERO, length=size)
        elif kind == SECTION_SNP_SECRETS:
            ld.add_page(gpa, m.PAGE_TYPE_SECRETS)
        elif kind == SECTION_CPUID:
            if vmm == "ec2":
                cpuid_pages.append(gpa)  # EC2 measures the CPUID page after every other section
            else:
                ld.add_page(gpa, m.PAGE_TYPE_CPUID)
        elif kind == SECTION_SVSM_CAA:
            ld.add_range(gpa, m.PAGE_TYPE_ZERO, length=size)
        elif kind == SECTION_KERNEL_HASHES:
            if kernel is not None:
                page = sev_hashes_page(ovmf.u32(SEV_HASH_TABLE_RV_GUID) & 0xFFF, cmdline, kernel)
                ld.add_range(gpa, m.PAGE_TYPE_NORMAL, page)
            else:
                ld.add_range(gpa, m.PAGE_TYPE_ZERO, length=size)
        else:
            raise AssertionError(f"unknown OVMF section type {kind}")
    for gpa in cpuid_pages:
        ld.add_page(gpa, m.PAGE_TYPE_CPUID)
    ap_eip = ovmf.u32(SEV_ES_RESET_BLOCK_GUID)
    for i in range(vcpus):
        ld.add_vmsa(m.vmsa_page(reset_vcpu(BSP_EIP if i == 0 else ap_eip, vmm, vcpu_sig), features))
    return ld.digest


OVMF_HASH = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
AMD = "ovmf_AmdSev_suffix.bin"
X64 = "ovmf_OvmfX64_suffix.bin"

# (case, kwargs, expected) — the rows of shared/reference/measure/README.md.
CASES = [
    ("snp_ovmf_hash_gen_default", dict(ovmf_name=AMD, vcpus=1, features=0x21, kernel=b"", seed=OVMF_HASH),
     "329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"),
    ("snp_ovmf_hash_gen_feature_snp_only", dict(ovmf_name=AMD, vcpus=1, features=0x1, kernel=b"", seed=OVMF_HASH),
     "ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"),
    ("snp_default", dict(ovmf_name=AMD, vcpus=1, features=0x21, kernel=b"", cmdline="console=ttyS0 loglevel=7"),
     "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"),
    ("snp_guest_feature_snp_only", dict(ovmf_name=AMD, vcpus=1, features=0x1, kernel=b"", cmdline="console=ttyS0 loglevel=7"),
     "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"),
    ("snp_without_kernel_default", dict(ovmf_name=AMD, vcpus=1, features=0x21),
     "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"),
    ("snp_without_kernel_feature_snp_only", dict(ovmf_name=AMD, vcpus=1, features=0x1),
     "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"),
    ("snp_with_multiple_vcpus_default", dict(ovmf_name=AMD, vcpus=4, features=0x21, kernel=b""),
     "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"),
    ("snp_with_multiple_vcpus_feature_snp_only", dict(ovmf_name=AMD, vcpus=4, features=0x1, kernel=b""),
     "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"),
    ("snp_with_ovmfx64_without_kernel_default", dict(ovmf_name=X64, vcpus=1, features=0x21),
     "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"),
    ("snp_with_ovmfx64_without_kernel_feature_snp_only", dict(ovmf_name=X64, vcpus=1, features=0x1),
     "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"),
    ("snp_ec2_default", dict(ovmf_name=AMD, vcpus=1, features=0x21, vmm="ec2", kernel=b""),
     "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"),
    ("snp_ec2_feature_snp_only", dict(ovmf_name=AMD, vcpus=1, features=0x1, vmm="ec2", kernel=b""),
     "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056"),
    ("snp_gce_default", dict(ovmf_name=AMD, vcpus=1, features=0x1, vmm="gce", vcpu_sig=None, kernel=b""),
     "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e"),
    ("snp_gce_with_multiple_vcpus_default", dict(ovmf_name=AMD, vcpus=4, features=0x1, vmm="gce", vcpu_sig=None, kernel=b""),
     "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"),
]


def test_readme_lists_exactly_these_values():
    """Every expected digest in the reference README is exercised here (none silently skipped)."""
    import re

    listed = set(re.findall(r"`([0-9a-f]{96})`", (REF / "README.md").read_text()))
    ours = {expected for _, _, expected in CASES} | {OVMF_HASH}
    assert listed == ours


def test_ovmf_pages_alone():
    ovmf = Ovmf((FIXTURES / AMD).read_bytes())
    ld = m.LaunchDigest()
    ld.add_range(ovmf.gpa, m.PAGE_TYPE_NORMAL, ovmf.data)
    assert ld.digest.hex() == OVMF_HASH


@pytest.mark.parametrize("name,kwargs,expected", CASES, ids=[c[0] for c in CASES])
def test_sev_snp_measure_case(name, kwargs, expected):
    kwargs = dict(kwargs)
    if isinstance(kwargs.get("seed"), str):
        kwargs["seed"] = bytes.fromhex(kwargs["seed"])
    assert ovmf_launch_digest(**kwargs).hex() == expected


def test_fixture_sections_match_reference():
    """verify.md §e.3 lists the AmdSev fixture's sections; our footer parser must find the same."""
    ovmf = Ovmf((FIXTURES / AMD).read_bytes())
    assert ovmf.sections() == [
        (0x800000, 0x9000, 1), (0x80A000, 0x3000, 1), (0x80D000, 0x1000, 2), (0x80E000, 0x1000, 3),
        (0x80F000, 0x1000, 4), (0x810000, 0x1000, 0x10), (0x811000, 0xF000, 1),
    ]


def test_kvm_model_matters():
    """Dropping one KVM transformation (CR4.MCE from the host) changes the digest: the fixture
    values really pin the model, they are not satisfied by any VMSA."""
    ovmf_kwargs = dict(ovmf_name=AMD, vcpus=1, features=0x21)
    good = ovmf_launch_digest(**ovmf_kwargs)
    vmsa_no_mce = m.vmsa_page(reset_vcpu(BSP_EIP, "qemu", EPYC_V4_SIG), 0x21, m.KvmHost(host_cr4_mce=False))
    vmsa_ok = m.vmsa_page(reset_vcpu(BSP_EIP, "qemu", EPYC_V4_SIG), 0x21)
    assert vmsa_no_mce != vmsa_ok
    assert good.hex() == "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"

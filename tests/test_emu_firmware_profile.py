"""The emulated firmware's self-description (F1, F2) and its CPUID-page check (D9).

F1: v5 reports carry non-zero LAUNCH/CURRENT_MIT_VECTOR as real Milan/Genoa v5 reports do, and our
verifier accepts them. F2: firmware version, report version and PLATFORM_INFO agree per product
with the public hardware reports in ../shared/vectors (read here, skipped when absent).
D9: CPUID pages with values the firmware refuses fail with INVALID_PARAM and come back corrected."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections import defaultdict
from pathlib import Path

import pytest
from emu_refguest import FakeMemory, vcpu_init_state

from snplab.abi import cpuid_page as cp
from snplab.abi.report import AttestationReport
from snplab.attest.product import product_from_cpuid
from snplab.attest.trust import TrustStore
from snplab.attest.verify import verify_from_cert_table
from snplab.emu import keys
from snplab.emu.platform import EmulatedBackend
from snplab.emu.psp import PspError
from snplab.vmm.launch import PageType

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
PAGE = 4096


def _report(product: str, version: int) -> tuple[EmulatedBackend, AttestationReport]:
    backend = EmulatedBackend(product=product, signer="vcek", report_version=version)
    mem = FakeMemory()
    psp = backend.new_vm(mem, mem.end).psp
    psp.start(0x30000)
    psp.update(0x1000, b"\x33" * PAGE, PageType.NORMAL)
    psp.finish(bytes(32), [vcpu_init_state(0)])
    key = backend.keys.vek
    return backend, psp.sign_report(psp.build_report(b"f1", 0), key)


@pytest.mark.parametrize("product", keys.PRODUCTS)
def test_v5_reports_carry_mitigation_vectors_and_verify(product, tmp_path):
    backend, rep = _report(product, 5)
    assert rep.launch_mit_vector == rep.current_mit_vector == 0x0B
    raw = rep.pack()
    assert struct.unpack_from("<QQ", raw, 0x1F8) == (0x0B, 0x0B)
    trust = TrustStore.from_dir(backend.trust_dir(tmp_path / "t"), pinned=False)
    verdict = verify_from_cert_table(raw, backend.cert_blob(), trust)
    assert verdict.ok, verdict.summary()


@pytest.mark.parametrize("version", (2, 3))
def test_older_reports_have_no_mitigation_vectors(version):
    _, rep = _report("genoa", version)
    assert rep.launch_mit_vector == rep.current_mit_vector == 0


@pytest.mark.parametrize("product", keys.PRODUCTS)
@pytest.mark.parametrize("version", (2, 3, 5))
def test_firmware_version_and_platform_info_follow_the_report_version(product, version):
    from snplab.emu.firmware_profile import FIRMWARE_PROFILES

    _, rep = _report(product, version)
    prof = FIRMWARE_PROFILES[(product, version)]
    assert (rep.current_major, rep.current_minor, rep.current_build) == prof.firmware_version
    assert (rep.committed_major, rep.committed_minor, rep.committed_build) == prof.firmware_version
    assert rep.platform_info == prof.platform_info
    assert (rep.platform_info == 0x1) == (version == 2)  # v3+ firmware reports ECC/alias-check bits too


def _observed() -> dict[tuple[str, int], list[AttestationReport]]:
    manifest = VECTORS / "manifest.json"
    if not manifest.exists():
        pytest.skip("../shared/vectors not present")
    out: dict[tuple[str, int], list[AttestationReport]] = defaultdict(list)
    for v in json.loads(manifest.read_text()):
        f = v.get("files", {}).get("report")
        if not f:
            continue
        rep = AttestationReport.unpack((VECTORS / f).read_bytes())
        if rep.version >= 3:
            product = product_from_cpuid(rep.cpuid_fam_id, rep.cpuid_mod_id)
        else:
            product = (v.get("product") or "").split()[0].lower()
        out[(product, rep.version)].append(rep)
    return out


def test_emulated_reports_consistent_with_public_hardware_reports():
    """For every (product, report version) with a public hardware report, the emulated firmware's
    report of that version has a firmware version within the versions seen, and PLATFORM_INFO and
    mitigation vectors that were seen."""
    observed = _observed()
    assert observed, "no reports in the vectors"
    checked = []
    for (product, version), reps in observed.items():
        if product not in keys.PRODUCTS or version not in (2, 3, 5):
            continue
        _, ours = _report(product, version)
        fw = (ours.current_major, ours.current_minor, ours.current_build)
        fws = sorted((r.current_major, r.current_minor, r.current_build) for r in reps)
        where = f"{product} v{version}"
        assert fws[0] <= fw <= fws[-1], f"{where}: firmware {fw}, public reports show {fws}"
        assert ours.platform_info in {r.platform_info for r in reps}, \
            f"{where}: PLATFORM_INFO {ours.platform_info:#x}, public {sorted({r.platform_info for r in reps})}"
        assert ours.launch_mit_vector in {r.launch_mit_vector for r in reps}, where
        assert ours.current_mit_vector in {r.current_mit_vector for r in reps}, where
        checked.append((product, version))
    assert ("genoa", 5) in checked and ("milan", 3) in checked, checked


def test_table_marks_what_has_a_public_report():
    from snplab.emu.firmware_profile import FIRMWARE_PROFILES

    observed = _observed()
    # a table row marked observed must have a public report behind it
    for key, prof in FIRMWARE_PROFILES.items():
        assert prof.observed == (key in observed), key


# ---- D9: CPUID page check ----------------------------------------------------------------------


def _psp():
    backend = EmulatedBackend(product="genoa", signer="vcek", report_version=5)
    mem = FakeMemory()
    psp = backend.new_vm(mem, mem.end).psp
    psp.start(0x30000)
    return psp, mem


GOOD = [cp.CpuidEntry(1, 0, 0, 0, 0xA10F11, 0x800, 0x7ED8320B, 0x178BFBFF),
        cp.CpuidEntry(7, 0, 0, 0, 1, 0xF1BF07A9, 0x405FCE, 0x10),
        cp.CpuidEntry(0xD, 0, 1, 0, 7, 0x240, 0x340, 0), cp.CpuidEntry(0xD, 1, 1, 0, 0xF, 0x240, 0, 0)]


@pytest.mark.parametrize("bad", ["tsc_deadline", "tsc_adjust", "spec_ctrl", "virt_ssbd", "xsave_ebx"])
def test_cpuid_page_with_refused_values_is_corrected(bad):
    psp, mem = _psp()
    ents = list(GOOD) + [cp.CpuidEntry(0x80000008, 0, 0, 0, 0x3030, 0x2B91D205 & ~(1 << 25), 0x7F, 0)]
    i, field, bit = {"tsc_deadline": (0, "ecx", 1 << 24), "tsc_adjust": (1, "ebx", 1 << 1),
                     "spec_ctrl": (1, "edx", 1 << 26), "virt_ssbd": (4, "ebx", 1 << 25),
                     "xsave_ebx": (2, "ebx", 0x340 ^ 0x240)}[bad]

    ents[i] = dataclasses.replace(ents[i], **{field: getattr(ents[i], field) ^ bit})
    page = cp.pack_page(ents)
    digest0 = psp._ld.value
    with pytest.raises(PspError) as e:
        psp.update(0x3000, page, PageType.CPUID)
    assert e.value.status == 0x16 and "CPUID page" in str(e.value)
    assert psp._ld.value == digest0  # the refused attempt is not measured
    corrected = bytes(mem.view(0x3000, PAGE))
    assert corrected == psp.cpuid_corrected and corrected != page
    fixed = dict(zip([x.key for x in ents], cp.parse_page(corrected)))
    assert fixed[ents[i].key] != ents[i] and cp.parse_page(corrected)[:4] == tuple(GOOD)
    psp.update(0x3000, corrected, PageType.CPUID)  # the correction is accepted


def test_qemu_style_page_passes_the_emulated_check():
    """The page the SNP backend sends first (snp_cpuid_entries) passes the emulated firmware."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from snp_fakes import FakeSnpKvm

    from snplab.vmm import snp, uapi
    from snplab.vmm.kvm import Kvm

    with Kvm("/dev/kvm", io=FakeSnpKvm()) as kvm:
        cpuid = kvm.supported_cpuid()
    raw = [cpuid.entries[i] for i in range(cpuid.nent)]
    assert any(e.function == 1 and e.ecx & (1 << 24) for e in raw)  # the host offers refused bits
    psp, _ = _psp()
    psp.update(0x3000, cp.pack_page(snp.snp_cpuid_entries(cpuid)), PageType.CPUID)
    assert uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 1

"""SnpPlatform (the ``--platform snp`` runner) against the fake SNP KVM of tests/snp_fakes.py:
scenarios mean the same as on the emulated platform (D1: ENABLE_REQ_CERTS after a vCPU → EINVAL),
and the transcript records which CPUID page the firmware launched (D5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snp_fakes import FakeSnpKvm  # noqa: E402

from snplab import checks  # noqa: E402
from snplab.platform import SnpPlatform  # noqa: E402
from snplab.scenario import Scenario, Step  # noqa: E402


@pytest.fixture
def snp_platform(tmp_path):
    def make(fake: FakeSnpKvm) -> SnpPlatform:
        blob = tmp_path / "blob.bin"
        blob.write_bytes(bytes(24))
        return SnpPlatform(ioctl=fake, certs_blob=blob, cpuinfo=str(tmp_path / "none"),
                           headers_root=str(tmp_path / "none"))

    made = []
    yield lambda fake: made.append(make(fake)) or made[-1]
    for p in made:
        p.close()


def test_enable_req_certs_after_vcpu_fails_with_einval(snp_platform):
    """suites/test_errors.py::test_enable_req_certs_after_vcpu on the snp platform: the run fails
    naming EINVAL, and no guest code ran (no KVM_RUN)."""
    fake = FakeSnpKvm()
    t = snp_platform(fake).run(Scenario.single("req-certs", "milan", Step.ext(1), enable_req_certs_late=True))
    checks.assert_run_failed_with(t, None, "EINVAL", name="enable_req_certs_einval")
    assert "KVM_SEV_SNP_ENABLE_REQ_CERTS" in (t.error or "")
    assert "KVM_RUN" not in fake.names() and not fake.req_certs_enabled


def test_enable_req_certs_early_by_default(snp_platform):
    fake = FakeSnpKvm()
    snp_platform(fake).run(Scenario.single("req-certs", "milan", Step.ext(1)))
    assert fake.req_certs_enabled


@pytest.mark.parametrize("reject,launched", [("invalid", "first attempt"), ("always", "firmware-corrected retry")])
def test_transcript_records_which_cpuid_page_launched(snp_platform, reject, launched):
    fake = FakeSnpKvm(cpuid_reject=reject)
    t = snp_platform(fake).run(Scenario.single("req-certs", "milan", Step.ext(1)))
    backend = t.host["backend"]
    assert backend["cpuid_launched"] == launched
    assert len(backend["cpuid_corrections"]) == (reject == "always")

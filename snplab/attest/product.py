"""Which EPYC generation (product line) produced a report.

Report v3+: CPUID family/model at 0x188/0x189 (virtee/sev ``identify_cpu``, snpguest
``get_processor_model``): family 0x19 models 0x00–0x0F Milan, 0x10–0x1F and 0xA0–0xAF Genoa (Genoa,
Bergamo, Siena all use the Genoa KDS endpoint); family 0x1A models 0x00–0x11 Turin.
Report v2 has no CPUID: the VEK's productName extension decides ("Milan-B0", "Genoa", "Turin", or
the bare product line for a VLEK). shared/reference/verify.md §0 and §a.3.
"""

from __future__ import annotations

from snplab.abi.report import AttestationReport

FAMILY_ZEN3_ZEN4 = 0x19
FAMILY_ZEN5 = 0x1A


def product_from_cpuid(family: int, model: int) -> str | None:
    if family == FAMILY_ZEN3_ZEN4:
        if 0x00 <= model <= 0x0F:
            return "milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "genoa"
    if family == FAMILY_ZEN5 and 0x00 <= model <= 0x11:
        return "turin"
    return None


def product_from_name(product_name: str | None) -> str | None:
    """'Milan-B0' / 'Genoa' / 'Turin-B1' / 'Milan' → 'milan' / 'genoa' / 'turin'; else None."""
    if not product_name:
        return None
    line = product_name.split("-", 1)[0].strip().lower()
    return line if line in ("milan", "genoa", "turin") else None


def detect_product(report: AttestationReport, product_name: str | None) -> tuple[str | None, str]:
    """(product or None, how it was decided / why not)."""
    if report.has_cpuid:
        fam, mod = report.cpuid_fam_id, report.cpuid_mod_id
        p = product_from_cpuid(fam, mod)
        where = f"CPUID family {fam:#04x} model {mod:#04x} stepping {report.cpuid_step}"
        return p, (f"{p} from {where}" if p else f"unknown product: {where}")
    p = product_from_name(product_name)
    if p:
        return p, f"{p} from VEK productName {product_name!r} (v{report.version} report has no CPUID)"
    return None, (f"v{report.version} report has no CPUID and VEK productName {product_name!r} "
                  "names no known product")

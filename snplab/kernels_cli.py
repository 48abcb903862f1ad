"""``snplab kernels``: list the kernel-behaviour registry (``snplab.abi.kernel_behaviour``), one
block per kernel generation with each request shape's row and the kernel function it cites, and
the generation this host's kernel is detected as.

    snplab kernels [--generation GEN] [--shape SHAPE] [--json] [--no-detect]

Exit codes: 0 listed, 2 unknown generation or shape (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from snplab.abi import kernel_behaviour as kb

EXIT_OK = 0
EXIT_USAGE = 2


def _answer(row: dict[str, Any]) -> str:
    """One short phrase for what the guest or the VMM sees."""
    out = row["outcome"]
    if out == kb.GHCB_ERROR:
        return f"EXITINFO1=2 EXITINFO2={row['reason']}"
    if out == kb.VMM_ERROR:
        vmm = row["vmm_error"]
        fw = {"0": "", "any": " | ?", "status": " | fw"}[row["fw_bits"]]
        return f"EXITINFO1=0 EXITINFO2={vmm:#x}<<32{fw}" if vmm is not None else "EXITINFO2=ret<<32"
    if out == kb.FIRMWARE:
        return f"firmware call, EXITINFO2={row['vmm_error'] or 0:#x}<<32 | fw"
    if out in (kb.KVM_RUN_ERROR, kb.IOCTL_ERROR):
        return f"{out} {row['errno_name']}"
    if out == kb.PSC_ERROR:
        return "PSC error"
    return "accepted"


def render(listing: list[dict[str, Any]], detected: dict[str, Any] | None) -> str:
    lines = []
    for g in listing:
        lines.append(f"{g['generation']}: {g['kernels']}")
        lines.append(f"  profiles: {', '.join(g['profiles'])}; read from: {g['source']}")
        width = max((len(r["shape"]) for r in g["rows"]), default=0)
        for r in g["rows"]:
            flags = (" [cert exit first]" if r["cert_exit"] else "") + ("" if r["verified"] else " [inferred]")
            lines.append(f"  {r['shape']:<{width}}  {_answer(r)} @{r['stage']}{flags}")
            lines.append(f"  {'':<{width}}    source: {r['source']}")
            if r["writes"]:
                lines.append(f"  {'':<{width}}    writes: {r['writes']}")
        lines.append("")
    defaults = ", ".join(f"{p} -> {g}" for p, g in kb.DEFAULT_GENERATION.items())
    lines.append(f"emulated platform defaults: {defaults}")
    if detected is not None:
        lines.append(f"this host: {detected['kernel_behaviour'] or 'unknown'} "
                     f"({detected['kernel_behaviour_basis']})")
    return "\n".join(lines)


def cmd_kernels(args: argparse.Namespace) -> int:
    listing = kb.listing()
    if args.generation:
        if args.generation not in kb.GENERATIONS:
            print(f"snplab kernels: unknown kernel behaviour {args.generation!r} (known: "
                  f"{', '.join(kb.GENERATIONS)})", file=sys.stderr)
            return EXIT_USAGE
        listing = [g for g in listing if g["generation"] == args.generation]
    if args.shape:
        if args.shape not in kb.SHAPES:
            print(f"snplab kernels: unknown request shape {args.shape!r} (known: "
                  f"{', '.join(kb.SHAPES)})", file=sys.stderr)
            return EXIT_USAGE
        listing = [{**g, "rows": [r for r in g["rows"] if r["shape"] == args.shape]} for g in listing]
    detected = None
    if not args.no_detect:
        from snplab.host.kernel_generation import detect

        detected = detect()
    if args.json:
        print(json.dumps({"generations": listing, "shapes": kb.SHAPES,
                          "defaults": kb.DEFAULT_GENERATION, "host": detected}, indent=1))
    else:
        print(render(listing, detected))
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("kernels", help="list what each kernel generation's KVM does per request "
                                              "shape (the kernel-behaviour registry)", description=__doc__)
    p.add_argument("--generation", metavar="GEN", help="only this generation (v15, 6.11-stub, 7.0, newest)")
    p.add_argument("--shape", metavar="SHAPE", help="only this request shape")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--no-detect", action="store_true", help="do not probe this host's kernel")
    p.set_defaults(func=cmd_kernels)

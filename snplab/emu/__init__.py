"""The emulated SNP platform: KVM's SEV-SNP exit handling and the AMD PSP firmware, in Python.

- ``keys``: emulated ARK/ASK/ASVK and VCEK/VLEK (marked "snplab emulated (not AMD)"), cached on disk.
- ``psp``: the firmware model (launch digest, secrets page, guest messages, reports, derived keys).
- ``launch_digest``, ``vmsa``: PAGE_INFO chaining and the initial VMSA KVM measures.
- ``rmp``: the RMP (private/shared, validated) and the host's shared view of guest memory.
- ``ghcb``: KVM's GHCB MSR protocol, NAE events, page-state changes and (extended) guest requests
  in the ``stub``, ``req-certs`` and ``vmgexit-v15`` profiles.
- ``faults``: named faults, each changing one behaviour.
- ``platform``: ``EmulatedBackend``, the VMM backend that wires it all to /dev/kvm.

Nothing here imports ``snplab.attest`` (it must not be checked by its own code), and nothing it
produces is a hardware result.
"""

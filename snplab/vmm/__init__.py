"""The minimal VMM: boots payload ELFs on /dev/kvm and turns their exits into typed events.

Modules (import what you use; nothing here runs at import time):
  uapi        KVM ioctl numbers, exit reasons, ctypes structs (sizes checked)
  kvm         Kvm / VmFd / VcpuFd wrappers (raw `x_raw` and checking `x`), IoctlLayer
  memory      GuestMemory (memslots, bounds-checked GPA views, page attributes)
  memory_map  the guest memory map, page tables, GDT, entry state (docs/contract.md §1)
  elf, dwarf  payload ELF (segments, symbols) and DWARF layouts / StructView
  events      exit events, CertsAnswer, KvmRunError (docs/contract.md §3)
  handlers    handler registry and event log
  status      the statuses a vCPU ends with (a leaf: imports nothing)
  vcpu, exits the run loop of one vCPU and the kvm_run → event decoders
  watchdog    the process-wide deadline thread that kicks vCPUs
  launch      PageType, VcpuInitState, Launcher protocol, PlainLauncher (docs/contract.md §4)
  guest       GuestConfig, Backend, PlainBackend, Guest, RunResult
  certs       CertResponder (certificate exits, OFD lock)
  msr_filter  enable_user_msr (MSR exits to userspace)
"""

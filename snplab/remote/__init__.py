"""Running guests on lab hosts over SSH: inventory, transport, shipping, slots, ``--platform ssh``.

See docs/remote.md. Modules: ``inventory`` (hosts.toml), ``transport`` (paramiko, host keys,
timeouts), ``artifact`` (what is shipped, by content hash), ``host`` (one host: cache,
preflight, jobs), ``host_slots`` and ``host_facts`` (run *on* the host, stdlib only),
``emu_keys`` (same emulated keys everywhere), ``platform`` (``SshPlatform``), ``pytest_remote``
(options, fixture, error reporting), ``loopback`` (a private sshd for CI and benchmarks).
"""

"""Running guests on lab hosts over SSH: inventory, transport, job servers, slots, ``--platform ssh``.

See docs/remote.md. Modules: ``inventory`` (hosts.toml), ``transport`` (paramiko, host keys,
timeouts), ``artifact`` (what is shipped, by content hash), ``protocol`` (frames and the start-up
that ships files; stdlib only, runs on both ends), ``job_server`` (the long-lived process on the
host that runs guests), ``job_client`` (the controller's end of one server), ``host`` (one host:
preflight, a pool of servers), ``host_slots`` and ``host_facts`` (run *on* the host, stdlib only),
``emu_keys`` (same emulated keys everywhere), ``platform`` (``SshPlatform``), ``pytest_remote``
(options, fixture, error reporting), ``loopback`` (a private sshd for CI and benchmarks).
"""

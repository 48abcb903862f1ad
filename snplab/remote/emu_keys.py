"""Emulated keys over SSH: lab hosts sign with exactly the controller's emulated keys.

The emulated platform generates its ARK/ASK/VCEK/VLEK once and caches them on disk
(``snplab.emu.keys``). Each host would otherwise make its own, and a report signed on a host
would not verify against the roots the controller's ``trust`` fixture hands the test. So the
controller makes sure the keys a scenario needs exist in its own cache *before* the job runs,
ships a snapshot of that cache (a hash-named tree, re-shipped only when the cache changed) and
runs the job with ``SNPLAB_CACHE`` pointing at it; ``cert_blob``/``trust`` are answered from
the same local keys. Emulated keys only: nothing here applies to ``--remote-platform snp``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from snplab.remote.artifact import Artifact, Shipment, files_zip


def _keys_only_platform(**opts: Any) -> Any:
    """An EmulatedPlatform used for its keys only (no /dev/kvm needed on the controller)."""
    from snplab.platform import EmulatedPlatform, LocalPlatform

    class KeysOnly(EmulatedPlatform):
        def __init__(self, **o: Any) -> None:
            LocalPlatform.__init__(self, **o)  # skips EmulatedPlatform's /dev/kvm check

    return KeysOnly(**opts)


class EmulatedKeyMirror:
    """The controller's emulated keys: answers cert_blob/trust and ships them to hosts."""

    def __init__(self, **platform_opts: Any) -> None:
        from snplab.emu import keys

        self._local = _keys_only_platform(**platform_opts)
        self.directory = Path(keys.default_store().directory)
        self._stamp: tuple[int, int, int] | None = None
        self._shipment: Shipment | None = None
        self._lock = threading.Lock()

    def cert_blob(self, product: str, signer: str) -> bytes:
        return bytes(self._local.cert_blob(product, signer))

    def trust(self, product: str) -> Any:
        return self._local.trust(product)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.directory.glob("v*.json") if p.is_file())

    def shipment_for(self, product: str, signer: str) -> Shipment:
        """The key tree to run a (product, signer) guest with, generating local keys first.

        Always the whole cache (a superset once every key exists, so a job server keeps one
        platform object for the run); re-zipped only when the cache directory changed (keys are
        written by atomic rename, which changes the directory's mtime and entries)."""
        self.cert_blob(product, signer)  # roots + VCEK (+ VLEK) now exist in the local cache
        with self._lock:
            st = self.directory.stat()
            # the entry count too, in case the file system's mtime is coarse
            stamp = (st.st_ino, st.st_mtime_ns, len(os.listdir(self.directory)))
            if stamp != self._stamp or self._shipment is None:
                files = self._files()
                data = files_zip({f"emu-keys/{p.name}": p.read_bytes() for p in files})
                self._shipment = Shipment.tree(Artifact.of(data), "keys")
                self._stamp = stamp
            return self._shipment

    def close(self) -> None:
        self._local.close()

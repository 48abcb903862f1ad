"""Host inventory (``--inventory hosts.toml``): the lab hosts a run may use.

Format (see docs/remote.md)::

    [defaults]                 # optional, applies to every [[host]] and [[jump]]
    user = "ci"
    key_file = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts"

    [[host]]
    name = "genoa-1"           # unique; also selectable as --hosts name=genoa-1
    host = "10.1.2.3"
    port = 22
    capacity = 4               # max concurrent guests; omit to derive it at preflight
    product = "genoa"
    labels = { kernel = "patched" }
    jump = "bastion"           # optional: name of a [[jump]] entry

    [[jump]]
    name = "bastion"
    host = "bastion.lab"

Relative paths are taken from the inventory file's directory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snplab.remote.errors import InventoryError

PRODUCTS = ("milan", "genoa", "turin")
DEFAULT_WORKDIR = ".cache/snplab"  # relative to the remote user's home directory
_ENDPOINT_KEYS = {"name", "host", "port", "user", "key_file", "known_hosts"}
_HOST_KEYS = _ENDPOINT_KEYS | {"capacity", "product", "labels", "jump", "python", "workdir", "certs_blob"}


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to log in over SSH."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None  # None: paramiko's default keys (~/.ssh/id_*) and the agent
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts of the controller's user

    @property
    def address(self) -> str:
        """``user@host:port``, for messages."""
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class HostEntry:
    """One lab host: its login, how many guests it may run at once, and what it is."""

    endpoint: Endpoint
    capacity: int | None = None  # concurrent guests; None = derive from ASIDs/memory at preflight
    product: str | None = None  # milan/genoa/turin; None = whatever the host reports
    labels: Mapping[str, str] = field(default_factory=dict)
    jump: Endpoint | None = None
    python: str = "python3"  # interpreter on the host (needs cryptography and pyelftools)
    workdir: str = DEFAULT_WORKDIR  # cache + slot locks on the host
    certs_blob: str | None = None  # snp: the host's certificate blob file, a path on the host

    @property
    def name(self) -> str:
        return self.endpoint.name

    def matches(self, selector: Mapping[str, str]) -> bool:
        """True if every ``key=value`` of selector holds (keys: labels, ``name``, ``product``)."""
        facts = dict(self.labels)
        facts["name"] = self.name
        if self.product is not None:
            facts["product"] = self.product
        return all(facts.get(k) == v for k, v in selector.items())


@dataclass(frozen=True)
class Inventory:
    """The parsed inventory file."""

    hosts: tuple[HostEntry, ...]
    source: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> Inventory:
        """Read and validate a TOML inventory; raises InventoryError with a one-line reason."""
        p = Path(path).expanduser()
        try:
            text = p.read_text()
        except OSError as e:
            raise InventoryError(f"inventory {p}: cannot read: {e.strerror or e}") from e
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InventoryError(f"inventory {p}: not valid TOML: {e}") from e
        return cls.from_dict(data, base=p.parent, source=p)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base: Path = Path("."), source: Path | None = None
    ) -> Inventory:
        """Validate an already-parsed inventory document."""
        where = f"inventory {source}" if source else "inventory"
        unknown = set(data) - {"defaults", "host", "jump"}
        if unknown:
            raise InventoryError(f"{where}: unknown top-level key(s) {sorted(unknown)}")
        defaults = _table(data.get("defaults", {}), f"{where} [defaults]")
        jumps: dict[str, Endpoint] = {}
        for i, raw in enumerate(_array(data.get("jump", []), f"{where} [[jump]]")):
            login_defaults = {k: v for k, v in defaults.items() if k in _ENDPOINT_KEYS - {"name", "host"}}
            ep = _endpoint({**login_defaults, **_table(raw, f"{where} jump #{i}")}, base, f"{where} jump #{i}")
            if ep.name in jumps:
                raise InventoryError(f"{where}: duplicate jump name {ep.name!r}")
            jumps[ep.name] = ep
        hosts: list[HostEntry] = []
        for i, raw in enumerate(_array(data.get("host", []), f"{where} [[host]]")):
            hosts.append(_host({**defaults, **_table(raw, f"{where} host #{i}")}, base, jumps, f"{where} host #{i}"))
        if not hosts:
            raise InventoryError(f"{where}: no [[host]] entries")
        names = [h.name for h in hosts]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InventoryError(f"{where}: duplicate host name(s) {dup}")
        return cls(hosts=tuple(hosts), source=source)

    def select(self, selectors: Sequence[str] = ()) -> tuple[HostEntry, ...]:
        """Hosts matching all ``key=value`` selectors (comma-separated or repeated)."""
        selector = parse_selector(selectors)
        chosen = tuple(h for h in self.hosts if h.matches(selector))
        if not chosen:
            wanted = ",".join(f"{k}={v}" for k, v in selector.items())
            raise InventoryError(f"no inventory host matches --hosts {wanted}")
        return chosen


def parse_selector(selectors: Sequence[str]) -> dict[str, str]:
    """``["kernel=base,product=genoa", "rack=a"]`` -> {"kernel": "base", ...}."""
    out: dict[str, str] = {}
    for chunk in selectors:
        for item in filter(None, (s.strip() for s in chunk.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise InventoryError(f"--hosts {item!r}: want label=value")
            out[key.strip()] = value.strip()
    return out


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InventoryError(f"{where}: want a table, got {type(value).__name__}")
    return value


def _array(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InventoryError(f"{where}: want an array of tables, got {type(value).__name__}")
    return value


def _str(raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _path(value: Any, base: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: {key!r} must be a path string, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _endpoint(raw: Mapping[str, Any], base: Path, where: str, allowed: set[str] = _ENDPOINT_KEYS) -> Endpoint:
    unknown = set(raw) - allowed
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = _str(raw, "name", where)
    where = f"{where} ({name})"
    port = raw.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InventoryError(f"{where}: 'port' must be 1..65535, got {port!r}")
    key_file = _path(raw["key_file"], base, where, "key_file") if "key_file" in raw else None
    known = raw.get("known_hosts")
    known_hosts = _path(known, base, where, "known_hosts") if known is not None else None
    return Endpoint(
        name=name,
        host=_str(raw, "host", where),
        port=port,
        user=_str(raw, "user", where, "root"),
        key_file=key_file,
        known_hosts=known_hosts,
    )


def _host(raw: Mapping[str, Any], base: Path, jumps: Mapping[str, Endpoint], where: str) -> HostEntry:
    endpoint = _endpoint({k: v for k, v in raw.items() if k in _ENDPOINT_KEYS}, base, where)
    unknown = set(raw) - _HOST_KEYS
    where = f"{where} ({endpoint.name})"
    if unknown:
        raise InventoryError(f"{where}: unknown key(s) {sorted(unknown)}")
    capacity = raw.get("capacity")
    if capacity is not None and (not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1):
        raise InventoryError(f"{where}: 'capacity' must be an integer >= 1, got {capacity!r}")
    product = raw.get("product")
    if product is not None and product not in PRODUCTS:
        raise InventoryError(f"{where}: 'product' must be one of {PRODUCTS}, got {product!r}")
    labels = raw.get("labels", {})
    if isinstance(labels, list):  # also accept ["kernel=base", ...]
        labels = parse_selector([str(x) for x in labels])
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InventoryError(f"{where}: 'labels' must be a table of strings, got {labels!r}")
    jump = None
    if "jump" in raw:
        jump = jumps.get(raw["jump"])
        if jump is None:
            raise InventoryError(f"{where}: jump {raw['jump']!r} is not a [[jump]] entry")
    return HostEntry(
        endpoint=endpoint,
        capacity=capacity,
        product=product,
        labels=dict(labels),
        jump=jump,
        python=_str(raw, "python", where, "python3"),
        workdir=_str(raw, "workdir", where, DEFAULT_WORKDIR),
        certs_blob=_str(raw, "certs_blob", where) if "certs_blob" in raw else None,
    )

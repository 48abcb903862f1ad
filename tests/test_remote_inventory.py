"""Host inventory TOML: parsing, defaults, validation messages, --hosts selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from snplab.remote.errors import InventoryError
from snplab.remote.inventory import Inventory, parse_selector

GOOD = """
[defaults]
user = "ci"
key_file = "keys/id_ed25519"
known_hosts = "/etc/snplab/known_hosts"

[[host]]
name = "genoa-1"
host = "10.0.0.1"
capacity = 4
product = "genoa"
labels = { kernel = "base", rack = "a" }

[[host]]
name = "genoa-2"
host = "10.0.0.2"
port = 2222
user = "lab"
product = "genoa"
labels = ["kernel=patched", "rack=a"]
jump = "bastion"
python = "/opt/snplab/bin/python3"
workdir = "/var/tmp/snplab"
certs_blob = "/var/lib/snplab/certs.bin"

[[jump]]
name = "bastion"
host = "bastion.example"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hosts.toml"
    p.write_text(text)
    return p


def test_parse_defaults_and_relative_paths(tmp_path):
    """Defaults apply to every host; relative key paths resolve from the inventory's directory."""
    inv = Inventory.load(write(tmp_path, GOOD))
    a, b = inv.hosts
    assert (a.name, a.endpoint.user, a.endpoint.port, a.capacity) == ("genoa-1", "ci", 22, 4)
    assert a.endpoint.key_file == tmp_path / "keys/id_ed25519"
    assert a.endpoint.known_hosts == Path("/etc/snplab/known_hosts")
    assert (b.endpoint.user, b.endpoint.port, b.capacity) == ("lab", 2222, None)
    assert b.labels == {"kernel": "patched", "rack": "a"}
    assert b.jump is not None and (b.jump.host, b.jump.user) == ("bastion.example", "ci")
    assert (b.python, b.workdir) == ("/opt/snplab/bin/python3", "/var/tmp/snplab")
    assert (a.certs_blob, b.certs_blob) == (None, "/var/lib/snplab/certs.bin")
    assert a.jump is None and a.workdir == ".cache/snplab"


def test_select_by_labels_name_and_product(tmp_path):
    """--hosts selects by labels, name= and product=; all given selectors must match."""
    inv = Inventory.load(write(tmp_path, GOOD))
    assert [h.name for h in inv.select(["kernel=patched"])] == ["genoa-2"]
    assert [h.name for h in inv.select(["rack=a", "product=genoa"])] == ["genoa-1", "genoa-2"]
    assert [h.name for h in inv.select(["rack=a,kernel=base"])] == ["genoa-1"]
    assert [h.name for h in inv.select(["name=genoa-2"])] == ["genoa-2"]
    assert len(inv.select([])) == 2
    with pytest.raises(InventoryError, match="no inventory host matches --hosts kernel=none"):
        inv.select(["kernel=none"])
    with pytest.raises(InventoryError, match="want label=value"):
        parse_selector(["kernel"])


@pytest.mark.parametrize("text, message", [
    ("[[host]]\nname='a'\n", "'host' must be a non-empty string"),
    ("[[host]]\nname='a'\nhost='h'\ncapacity=0\n", "'capacity' must be an integer >= 1"),
    ("[[host]]\nname='a'\nhost='h'\nport=70000\n", "'port' must be 1..65535"),
    ("[[host]]\nname='a'\nhost='h'\nproduct='rome'\n", "'product' must be one of"),
    ("[[host]]\nname='a'\nhost='h'\ncolour='red'\n", "unknown key(s) ['colour']"),
    ("[[host]]\nname='a'\nhost='h'\njump='nowhere'\n", "jump 'nowhere' is not a [[jump]] entry"),
    ("[[host]]\nname='a'\nhost='h'\n[[host]]\nname='a'\nhost='i'\n", "duplicate host name(s) ['a']"),
    ("[defaults]\nuser='x'\n", "no [[host]] entries"),
    ("[[host]\n", "not valid TOML"),
    ("hosts = 1\n", "unknown top-level key(s) ['hosts']"),
])
def test_bad_inventory_one_line_error(tmp_path, text, message):
    """Each mistake gives an InventoryError naming the file and the problem on one line."""
    with pytest.raises(InventoryError) as ei:
        Inventory.load(write(tmp_path, text))
    msg = str(ei.value)
    assert message in msg and str(tmp_path / "hosts.toml") in msg and "\n" not in msg


def test_missing_inventory_file(tmp_path):
    with pytest.raises(InventoryError, match="cannot read"):
        Inventory.load(tmp_path / "nope.toml")

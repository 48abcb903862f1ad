"""The kill matrix: per-test records of each fault's suite run turned into verdicts.

Input is the per-test JSON the pytest plugin writes (``reports/<run>/tests/*.json``: ``nodeid``,
``family``, ``outcome``, ``failed_property``, ``message``), read as plain dicts so this module
does not depend on the reporting internals.  Output is ``mutate.json``, a ``MutateReport``
(JSON Schema: ``mutate.schema.json`` next to this module, id ``SCHEMA_ID``).

Classification of one fault (tests that also fail without any fault, in the control run, are
not evidence and are left out):

- ``killed``: a test failed naming one of the fault's ``breaks`` properties;
- ``weakly-killed``: tests failed, none naming such a property (a crash, ``run_completed``,
  a bare assertion or an unrelated property);
- ``survived``: every selected test passed (or skipped);
- ``error``: the fault's run produced no test records (pytest could not run).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_ID = "snplab-mutate/1"
SCHEMA_PATH = Path(__file__).with_name("mutate.schema.json")
STATUSES = ("killed", "weakly-killed", "survived", "error")
FAILED = ("failed", "error")
# Properties that say only "something went wrong", never which behaviour broke.
WEAK_PROPERTIES = frozenset({"run_completed", None})
_PROPERTY_IN_MESSAGE = re.compile(r"^([a-z][a-z0-9_]*) (?:violated|holds|not judged)\b")


def failed_property(record: Mapping[str, Any]) -> str | None:
    """The property a failing record names: the plugin's ``failed_property`` (a CheckFailed),
    else one named at the start of the message (``"<property> violated: ..."``)."""
    prop = record.get("failed_property")
    if prop:
        return str(prop)
    m = _PROPERTY_IN_MESSAGE.match(str(record.get("message") or ""))
    return m.group(1) if m else None


def read_records(run_root: Path) -> list[dict[str, Any]]:
    """Every per-test JSON record under ``run_root`` (any ``*/tests/*.json`` below it)."""
    out = []
    for p in sorted(run_root.glob("**/tests/*.json")):
        try:
            rec = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "nodeid" in rec:
            out.append(rec)
    return out


@dataclass(frozen=True)
class TestKill:
    """One suite test that failed with a fault injected."""

    __test__ = False  # not a pytest test class

    nodeid: str
    family: str
    property: str | None
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"nodeid": self.nodeid, "family": self.family, "property": self.property,
                "message": self.message}


@dataclass(frozen=True)
class FaultOutcome:
    """What the suite did with one fault injected."""

    name: str
    layer: str
    profiles: tuple[str, ...]
    description: str
    source: str
    breaks: tuple[str, ...]
    status: str
    kills: tuple[TestKill, ...]
    tests_run: int
    wall_s: float
    returncode: int | None
    error: str | None = None

    @property
    def specific(self) -> tuple[TestKill, ...]:
        """Kills that name a property the fault breaks."""
        return tuple(k for k in self.kills if k.property in self.breaks)

    def families(self) -> dict[str, dict[str, Any]]:
        """family → killing tests and the violated property of the first (by test id)."""
        out: dict[str, dict[str, Any]] = {}
        for k in sorted(self.kills, key=lambda k: k.nodeid):
            cell = out.setdefault(k.family, {"tests": [], "first_property": k.property,
                                             "specific": False})
            cell["tests"].append(k.nodeid)
            cell["specific"] = cell["specific"] or k.property in self.breaks
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "layer": self.layer, "profiles": list(self.profiles),
                "description": self.description, "source": self.source,
                "breaks": list(self.breaks), "status": self.status,
                "tests_run": self.tests_run, "wall_s": round(self.wall_s, 3),
                "returncode": self.returncode, "error": self.error,
                "kills": [k.to_json() for k in self.kills],
                "specific_kills": len(self.specific), "families": self.families()}


def classify(fault: Any, records: Sequence[Mapping[str, Any]], *, ignore: Iterable[str] = (),
             wall_s: float = 0.0, returncode: int | None = None,
             error: str | None = None) -> FaultOutcome:
    """The outcome of ``fault`` (a ``snplab.emu.faults.Fault``) from its run's records; tests in
    ``ignore`` (failing without any fault) are not counted."""
    ignored = set(ignore)
    ran = [r for r in records if r.get("outcome") not in ("skipped", None)]
    kills = tuple(TestKill(str(r["nodeid"]), str(r.get("family") or "?"), failed_property(r),
                           str(r.get("message") or "")[:400])
                  for r in ran if r.get("outcome") in FAILED and r["nodeid"] not in ignored)
    breaks = tuple(fault.breaks)
    if not records:
        status = "error"
        error = error or "the fault's suite run wrote no test records"
    elif any(k.property in breaks for k in kills):
        status = "killed"
    elif kills:
        status = "weakly-killed"
    else:
        status = "survived"
    return FaultOutcome(fault.name, fault.layer, tuple(fault.profiles), fault.description,
                        fault.source, breaks, status, kills, len(ran), wall_s, returncode, error)


@dataclass(frozen=True)
class ControlOutcome:
    """The same selection without any fault: every failure here is a false alarm."""

    tests_run: int
    failed: tuple[str, ...]
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return {"tests_run": self.tests_run, "failed": list(self.failed),
                "wall_s": round(self.wall_s, 3)}


def control_outcome(records: Sequence[Mapping[str, Any]], wall_s: float) -> ControlOutcome:
    ran = [r for r in records if r.get("outcome") not in ("skipped", None)]
    return ControlOutcome(len(ran), tuple(sorted(str(r["nodeid"]) for r in ran
                                                 if r.get("outcome") in FAILED)), wall_s)


@dataclass(frozen=True)
class MutateReport:
    """The whole ``snplab mutate`` run (``mutate.json``)."""

    run_id: str
    started: str
    wall_s: float
    jobs: int
    product: str
    early_stop: bool
    host: Mapping[str, Any]
    control: ControlOutcome | None
    outcomes: tuple[FaultOutcome, ...]
    tests_seen: tuple[str, ...] = field(default=())  # every test that ran in some fault run

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def kill_rate(self) -> float:
        n = len(self.outcomes)
        return (self.count("killed") + self.count("weakly-killed")) / n if n else 0.0

    @property
    def specific_kill_rate(self) -> float:
        n = len(self.outcomes)
        return self.count("killed") / n if n else 0.0

    @property
    def survivors(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status in ("survived", "error"))

    @property
    def weakly_killed(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status == "weakly-killed")

    def kills_per_test(self) -> dict[str, list[str]]:
        """test → the faults it kills (every test seen, including those killing nothing)."""
        out: dict[str, list[str]] = {t: [] for t in self.tests_seen}
        for o in self.outcomes:
            for k in o.kills:
                out.setdefault(k.nodeid, []).append(o.name)
        return out

    @property
    def tests_killing_nothing(self) -> tuple[str, ...]:
        """Tests that ran under some fault and failed under none (candidates for removal or
        strengthening)."""
        return tuple(sorted(t for t, faults in self.kills_per_test().items() if not faults))

    @property
    def exit_code(self) -> int:
        """1 if a fault survived (or could not be run), else 0."""
        return 1 if self.survivors else 0

    def summary_line(self) -> str:
        n = len(self.outcomes)
        return (f"snplab mutate: {n} faults, {self.count('killed')} killed, "
                f"{self.count('weakly-killed')} weakly killed, {self.count('survived')} survived"
                + (f", {self.count('error')} not run" if self.count("error") else "")
                + f"; kill rate {100 * self.kill_rate:.1f} % "
                f"(specific {100 * self.specific_kill_rate:.1f} %), wall {self.wall_s:.1f} s "
                f"with {self.jobs} job(s)")

    def to_json(self) -> dict[str, Any]:
        families = sorted({k.family for o in self.outcomes for k in o.kills}
                          | {_family(t) for t in self.tests_seen})
        return {
            "schema": SCHEMA_ID, "run_id": self.run_id, "started": self.started,
            "wall_s": round(self.wall_s, 3), "jobs": self.jobs, "product": self.product,
            "early_stop": self.early_stop, "host": dict(self.host),
            "summary": {"faults": len(self.outcomes), "killed": self.count("killed"),
                        "weakly_killed": self.count("weakly-killed"),
                        "survived": self.count("survived"), "errors": self.count("error"),
                        "kill_rate": round(self.kill_rate, 4),
                        "specific_kill_rate": round(self.specific_kill_rate, 4)},
            "control": self.control.to_json() if self.control is not None else None,
            "families": families,
            "survivors": list(self.survivors), "weakly_killed": list(self.weakly_killed),
            "faults": [o.to_json() for o in self.outcomes],
            "tests": {t: sorted(f) for t, f in sorted(self.kills_per_test().items())},
            "tests_killing_nothing": list(self.tests_killing_nothing),
        }


def _family(nodeid: str) -> str:
    stem = Path(nodeid.partition("::")[0]).stem
    return stem[5:] if stem.startswith("test_") else stem


def validate(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` follows ``mutate.schema.json``."""
    import jsonschema

    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))

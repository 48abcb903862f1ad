"""snplab pytest plugin: options, markers, fixtures and run reports for the integration suite.

Loaded by the top-level ``conftest.py``.  Suite tests (``suites/test_<family>.py``) build a
``Scenario``, run it with the ``run_scenario`` fixture and judge the ``Transcript`` with
``snplab.checks``; everything about platforms, parametrisation, skipping and reports lives here.

# Fixtures

| fixture | scope | what |
|---|---|---|
| ``platform`` | session | the ``snplab.platform.Platform`` chosen by ``--platform`` |
| ``abi`` | dimension | ABI profile; a test is parametrised over its ``abi(...)`` marker (default: all three) |
| ``product`` | dimension | milan / genoa / turin (all three on the emulated platform) |
| ``signer`` | dimension | "vcek" unless the test parametrises it |
| ``run_scenario`` | function | ``run_scenario(sc) -> Transcript``; ``run_scenario.many([...])`` runs guests at once |
| ``cert_blob`` | function | the certificate blob the host serves for (product, signer) |
| ``trust`` | function | trust anchors for verifying reports (``--trust-dir`` or the emulated roots) |

# Markers

``abi(*profiles)`` the ABI profiles a test applies to; ``emulated_only`` needs the emulated
platform (fault injection, firmware log); ``hw_only`` needs a real SNP host; ``slow`` takes more
than a few seconds; ``kvm`` needs a usable ``/dev/kvm``.  A case that cannot run on the chosen
platform, ABI or product is *skipped with the reason*, never silently passed; test ids stay the
same on every platform so runs can be compared.

# Reports

``reports/<run-id>/junit.xml``, one JSON per test, artifacts of failing tests (all tests with
``--keep-artifacts``), ``summary.json``, ``index.html``, ``results.tap`` and ``kcidb.json``
(``snplab.report``); a progress line while the run goes, one summary line per family at the end.
Workers of pytest-xdist write their own files; the controller writes the JUnit XML, the summary
and the run-level reports, also for a run cut short (marked incomplete).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

from snplab import checks
from snplab.report import run_dir, run_record
from snplab.report.host_facts import host_facts
from snplab.report.run_reports import write_run_reports
from snplab.report.summary import FamilyTally, write_summary
from snplab.abi import kernel_behaviour as kb
from snplab.scenario import ABIS, PRODUCTS, Scenario

# --platform ssh (lab hosts over SSH) lives in its own plugin.
pytest_plugins = ["snplab.remote.pytest_remote"]

# Environment variable equivalent of --fault (comma separated), for subprocess runs.
FAULTS_ENV = "SNPLAB_FAULTS"
RUN_ID_ENV = "SNPLAB_RUN_ID"
# Set (to 1) by ``snplab mutate``: failing tests get compact records and no artifacts (the kill
# matrix needs only outcome, property and message; a fault fails hundreds of tests).
LEAN_REPORTS_ENV = "SNPLAB_LEAN_REPORTS"

_RUNS = pytest.StashKey[list]()
_VERDICTS = pytest.StashKey[list]()
_REPORTED = pytest.StashKey[dict]()


# --------------------------------------------------------------------------------------------
# options and markers

# Help strings say what the option does and its default, in one line each.
def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("snplab", "snplab integration suite")
    g.addoption("--platform", default="emulated", choices=("emulated", "snp", "ssh"),
                help="where guests run: emulated (default; local /dev/kvm, SNP modelled), snp "
                     "(this SNP host) or ssh (lab hosts, see --inventory)")
    g.addoption("--abi", default="auto", choices=("auto",) + ABIS,
                help="host ABI profile: auto (emulated: every profile a test applies to; snp: "
                     "detect) or one of stub, req-certs, vmgexit-v15")
    g.addoption("--kernel-behaviour", default=None, metavar="GEN",
                help="kernel generation the host plays, judged and (emulated) played from the "
                     f"registry: {', '.join(kb.GENERATIONS)} (default: emulated per ABI profile, "
                     "snp detected from the release and KVM_X86_SEV_SNP_REQ_CERTS)")
    g.addoption("--product", default="auto", choices=("auto",) + PRODUCTS,
                help="CPU product: auto (emulated: all three; snp: the host's) or one of them")
    g.addoption("--certs-blob", type=Path, default=None,
                help="the host's certificate blob file (snp hosts; emulated: serve this file)")
    g.addoption("--trust-dir", type=Path, default=None,
                help="trust anchors <product>_ark.pem/_ask.pem/_asvk.pem (default: emulated roots)")
    g.addoption("--guest-timeout", type=float, default=None,
                help="wall-clock limit per guest in seconds (default: the scenario's, 10 s)")
    g.addoption("--reports", type=Path, default=None,
                help="report directory; the run writes <DIR>/<run-id>/ (default: reports/, "
                     "when suites/ is run)")
    g.addoption("--keep-artifacts", action="store_true", default=False,
                help="dump artifacts (transcripts, reports, certificates) of passing tests too")
    g.addoption("--snplab-progress", type=float, default=2.0, metavar="SECONDS",
                help="print a progress line (cases done / total, failures) at most every "
                     "SECONDS while reports are written (default 2; 0: off)")
    g.addoption("--fault", action="append", default=[], metavar="NAME",
                help="inject an emulated-platform fault (snplab.emu.faults) into every scenario; "
                     "repeatable; also $SNPLAB_FAULTS")


MARKERS = (
    "abi(*profiles): the ABI profiles a suite test applies to (stub, req-certs, vmgexit-v15)",
    "emulated_only: needs the emulated platform (fault injection, PSP log)",
    "hw_only: needs a real SNP host",
    "slow: takes more than a few seconds",
    "kvm: needs a usable /dev/kvm",
)


def guest_platform(config: pytest.Config) -> str:
    """emulated or snp: --platform, or --remote-platform when guests run over ssh."""
    name = config.getoption("--platform")
    return config.getoption("--remote-platform") if name == "ssh" else name


class SuiteState:
    """Per-process state of the plugin (options resolved once; the report directory)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.platform_name: str = config.getoption("--platform")
        # What the guests really run on: with --platform ssh, the lab hosts' --remote-platform.
        self.guest_platform: str = guest_platform(config)
        self.abi_opt: str = config.getoption("--abi")
        self.kernel_opt: str | None = config.getoption("--kernel-behaviour")
        self.product_opt: str = config.getoption("--product")
        self.certs_blob: Path | None = config.getoption("--certs-blob")
        self.trust_dir: Path | None = config.getoption("--trust-dir")
        self.guest_timeout: float | None = config.getoption("--guest-timeout")
        self.keep_artifacts: bool = config.getoption("--keep-artifacts")
        env_faults = [f for f in os.environ.get(FAULTS_ENV, "").split(",") if f.strip()]
        self.faults: tuple[str, ...] = tuple(config.getoption("--fault")) + tuple(
            f.strip() for f in env_faults)
        self.run_id: str = _run_id(config)
        self.paths: run_dir.RunPaths | None = _report_paths(config, self.run_id)
        self.platform: Any = None
        self.platform_error: str | None = None
        self.tally = FamilyTally()
        self.started = time.monotonic()

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def get_platform(self) -> Any:
        """The platform object, created on first use (never at import or configure time)."""
        if self.platform is None and self.platform_error is None:
            from snplab.platform import PlatformUnavailable, get_platform

            opts: dict[str, Any] = {}
            if self.certs_blob is not None:
                opts["certs_blob"] = self.certs_blob
            if self.trust_dir is not None:
                opts["trust_dir"] = self.trust_dir
            if self.abi_opt != "auto":
                opts["abi"] = self.abi_opt
            if self.paths is not None:
                opts["work_dir"] = self.paths.root  # scratch files under the run's directory
            try:
                if self.platform_name == "ssh":
                    from snplab.remote.pytest_remote import make_ssh_platform

                    self.platform = make_ssh_platform(self.config)
                else:
                    self.platform = get_platform(self.platform_name, **opts)
            except PlatformUnavailable as e:
                self.platform_error = str(e)
        if self.platform is None:
            pytest.skip(f"platform {self.platform_name} unavailable: {self.platform_error}")
        return self.platform


def _run_id(config: pytest.Config) -> str:
    wi = getattr(config, "workerinput", None)
    if wi and wi.get("snplab_run_id"):
        return str(wi["snplab_run_id"])
    return os.environ.get(RUN_ID_ENV) or run_dir.new_run_id()


def _runs_suites(config: pytest.Config) -> bool:
    root = Path(str(config.rootpath))
    suites = (root / "suites").resolve()
    for a in config.args or [str(config.invocation_params.dir)]:
        p = Path(a.split("::", 1)[0])
        p = (Path(str(config.invocation_params.dir)) / p).resolve()
        if p == suites or suites in p.parents or (p in suites.parents):
            return True
    return False


def _report_paths(config: pytest.Config, run_id: str) -> run_dir.RunPaths | None:
    base = config.getoption("--reports")
    if config.option.collectonly:
        return None
    if base is None:
        if not _runs_suites(config):
            return None
        base = Path(str(config.rootpath)) / "reports"
    return run_dir.RunPaths(Path(base) / run_id)


_STATE = pytest.StashKey[SuiteState]()


def state(config: pytest.Config) -> SuiteState:
    return config.stash[_STATE]


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for m in MARKERS:
        config.addinivalue_line("markers", m)
    if guest_platform(config) != "emulated" and (config.getoption("--fault")
                                                         or os.environ.get(FAULTS_ENV)):
        raise pytest.UsageError("--fault needs the emulated platform")
    gen = config.getoption("--kernel-behaviour")
    if gen is not None and gen not in kb.GENERATIONS:
        raise pytest.UsageError(f"--kernel-behaviour {gen}: unknown kernel behaviour (known: "
                                f"{', '.join(kb.GENERATIONS)})")
    st = SuiteState(config)
    config.stash[_STATE] = st
    if not st.is_worker:
        config.pluginmanager.register(_Tally(st), "snplab-tally")
    if st.paths is not None and not st.is_worker:
        st.paths.root.mkdir(parents=True, exist_ok=True)
        if not getattr(config.option, "xmlpath", None):
            config.option.xmlpath = str(st.paths.junit)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run id to each worker so all write into one directory."""
    node.workerinput["snplab_run_id"] = state(node.config).run_id


def kernel_behaviour_note(st: SuiteState) -> str:
    """Which kernel generation the run plays/judges, and why (forced, per profile, detected)."""
    if st.kernel_opt:
        return f"{st.kernel_opt} (forced by --kernel-behaviour)"
    if st.guest_platform == "emulated":
        return "per ABI profile (" + ", ".join(f"{p} -> {g}" for p, g in
                                             kb.DEFAULT_GENERATION.items()) + ")"
    facts = host_facts()
    return (f"{facts.get('kernel_behaviour_detected') or 'unknown'} (detected: "
            f"{facts.get('kernel_behaviour_basis', '?')})")


def pytest_report_header(config: pytest.Config) -> list[str]:
    st = state(config)
    lines = [f"snplab: platform={st.platform_name} abi={st.abi_opt} product={st.product_opt}"
             + (f" faults={','.join(st.faults)}" if st.faults else "")]
    lines.append(f"snplab: kernel behaviour: {kernel_behaviour_note(st)}")
    if st.paths is not None:
        lines.append(f"snplab: reports in {st.paths.root}")
    if st.guest_platform == "emulated":
        lines.append("snplab: emulated platform: SNP parts of KVM and the PSP are modelled "
                     "in Python; results are not hardware results")
    return lines


# --------------------------------------------------------------------------------------------
# parametrisation over the dimensions


def _marker_abis(item_or_def: Any) -> tuple[str, ...]:
    m = item_or_def.get_closest_marker("abi") if hasattr(item_or_def, "get_closest_marker") \
        else None
    if m is None:
        return ABIS
    bad = [a for a in m.args if a not in ABIS]
    if bad:
        raise pytest.UsageError(f"unknown ABI profile(s) in abi marker: {bad}")
    return tuple(m.args) or ABIS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``abi`` over the test's ``abi(...)`` marker and ``product`` over all three.

    All values are always generated (ids are stable across platforms); those that cannot run
    are skipped in setup with the reason."""
    already = {n.strip() for m in metafunc.definition.iter_markers("parametrize")
               for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    if "abi" in metafunc.fixturenames and "abi" not in already:
        metafunc.parametrize("abi", _marker_abis(metafunc.definition), scope="function")
    if "product" in metafunc.fixturenames and "product" not in already:
        metafunc.parametrize("product", PRODUCTS, scope="function")


def _param(item: pytest.Item, name: str) -> Any:
    cs = getattr(item, "callspec", None)
    return cs.params.get(name) if cs is not None else None


_KVM_PROBLEM: dict[str, str | None] = {}


def _kvm_problem() -> str | None:
    """Why /dev/kvm cannot be used here (None if it can); probed once per process."""
    if "v" not in _KVM_PROBLEM:
        from snplab.platform import kvm_problem

        _KVM_PROBLEM["v"] = kvm_problem()
    return _KVM_PROBLEM["v"]




def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip, with the reason, a case that cannot run on the chosen platform, ABI or product."""
    st = state(item.config)
    checks.RECORDED.clear()
    item.stash[_RUNS] = []
    plat = st.guest_platform
    if item.get_closest_marker("emulated_only") and plat != "emulated":
        pytest.skip(f"needs the emulated platform (fault injection / firmware log), not {plat}")
    if item.get_closest_marker("hw_only") and plat == "emulated":
        pytest.skip("needs a real SNP host (--platform snp)")
    if item.get_closest_marker("kvm") or (st.platform_name == "emulated"
                                         and run_dir.family_of(item.nodeid) is not None):
        why = _kvm_problem()
        if why:
            pytest.skip(why)
    abi = _param(item, "abi")
    if abi is not None and st.abi_opt != "auto" and abi != st.abi_opt:
        pytest.skip(f"ABI {abi} not selected (--abi {st.abi_opt})")
    if abi is not None and st.kernel_opt and not kb.allows(st.kernel_opt, abi):
        pytest.skip(f"kernel behaviour {st.kernel_opt} cannot play ABI {abi} (it plays "
                    f"{', '.join(kb.profiles_of(st.kernel_opt))})")
    product = _param(item, "product")
    if product is not None and st.product_opt != "auto" and product != st.product_opt:
        pytest.skip(f"product {product} not selected (--product {st.product_opt})")
    if plat != "emulated" and (abi is not None or product is not None) and "platform" in \
            getattr(item, "fixturenames", ()):
        p = st.get_platform()
        host_abi = getattr(p, "host_abi", None)
        if abi is not None and host_abi and abi != host_abi:
            pytest.skip(f"host kernel plays ABI {host_abi}, not {abi}")
        host_product = getattr(p, "host_product", None)
        if product is not None and host_product and product != host_product:
            pytest.skip(f"host CPU is {host_product}, not {product}")


# --------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def platform(pytestconfig: pytest.Config) -> Any:
    """The platform guests run on (``--platform``)."""
    return state(pytestconfig).get_platform()


@pytest.fixture
def signer() -> str:
    """Signing key of the host: "vcek" unless the test parametrises ``signer``."""
    return "vcek"


@pytest.fixture
def report_data(request: pytest.FixtureRequest) -> bytes:
    """64 bytes of REPORT_DATA unique to this test case (derived from its id, so reproducible)."""
    import hashlib

    return hashlib.sha512(request.node.nodeid.encode()).digest()


class ScenarioRunner:
    """The ``run_scenario`` fixture: runs scenarios on the platform with the command-line
    overrides applied, and records every (scenario, transcript) for the test's report."""

    def __init__(self, st: SuiteState, item: pytest.Item) -> None:
        self._st = st
        self._item = item

    def prepare(self, sc: Scenario) -> Scenario:
        """The scenario as it will run: guest timeout and injected faults from the command line."""
        changes: dict[str, Any] = {}
        if self._st.guest_timeout is not None:
            changes["guest_timeout"] = self._st.guest_timeout
        if self._st.faults:
            changes["faults"] = tuple(sc.faults) + tuple(
                f for f in self._st.faults if f not in sc.faults)
        if self._st.kernel_opt and sc.kernel is None:
            changes["kernel"] = self._st.kernel_opt
        if not changes:
            return sc
        return sc.with_(**changes)

    def __call__(self, sc: Scenario) -> Any:
        return self.many([sc])[0]

    def many(self, scenarios: Sequence[Scenario]) -> list[Any]:
        """Run several guests at once (one per scenario) and return their transcripts."""
        p = self._st.get_platform()
        prepared = [self.prepare(sc) for sc in scenarios]
        if len(prepared) == 1:
            ts = [p.run(prepared[0])]
        else:
            ts = list(p.run_many(prepared))
        self._item.stash[_RUNS].extend(zip(prepared, ts))
        return ts


@pytest.fixture
def run_scenario(request: pytest.FixtureRequest) -> ScenarioRunner:
    """``run_scenario(scenario) -> Transcript`` on the chosen platform."""
    return ScenarioRunner(state(request.config), request.node)


@pytest.fixture
def cert_blob(request: pytest.FixtureRequest, product: str, signer: str) -> bytes:
    """The certificate blob the host serves for this product and signing key."""
    p = state(request.config).get_platform()
    if not hasattr(p, "cert_blob"):
        pytest.skip(f"platform {getattr(p, 'name', p)} cannot tell its certificate blob")
    return p.cert_blob(product, signer)


@pytest.fixture
def trust(request: pytest.FixtureRequest, product: str) -> Any:
    """Trust anchors: ``--trust-dir`` (AMD roots, pinned) or the platform's (emulated roots)."""
    p = state(request.config).get_platform()
    if not hasattr(p, "trust"):
        pytest.skip(f"platform {getattr(p, 'name', p)} has no trust anchors; pass --trust-dir")
    return p.trust(product)


# --------------------------------------------------------------------------------------------
# reports


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    rep = outcome.get_result()
    st = state(item.config)
    rec = item.stash.setdefault(_REPORTED, {})
    if call.when == "call" or (call.when == "setup" and rep.outcome != "passed"):
        rec["outcome"] = rep.outcome
        rec["duration_s"] = round(rep.duration, 4)
        rec["when"] = call.when
        prop = None
        if call.excinfo is not None:
            exc = call.excinfo.value
            if isinstance(exc, checks.CheckFailed):
                prop = exc.result.name
            rec["message"] = str(exc).splitlines()[0][:2000] if str(exc) else type(exc).__name__
        if rep.skipped and isinstance(rep.longrepr, tuple):
            rec["message"] = str(rep.longrepr[2])
        rec["failed_property"] = prop
        rec["verdicts"] = [r.to_json() for r in checks.RECORDED]
        rep.user_properties.append(("snplab_failed_property", prop or ""))
    if call.when == "teardown" and st.paths is not None \
            and run_dir.family_of(item.nodeid) is not None:
        _write_item_report(st, item, rec, failed_in_teardown=rep.failed)


def _write_item_report(st: SuiteState, item: pytest.Item, rec: dict[str, Any],
                       failed_in_teardown: bool) -> None:
    assert st.paths is not None
    outcome = rec.get("outcome", "passed")
    if failed_in_teardown and outcome == "passed":
        outcome = "error"
    full = (outcome in ("failed", "error") and os.environ.get(LEAN_REPORTS_ENV) != "1") \
        or st.keep_artifacts
    runs = [{"scenario": sc.to_json(),
             "transcript": t.to_json() if full else run_record.compact_transcript(t.to_json())}
            for sc, t in item.stash.get(_RUNS, [])]
    cs = getattr(item, "callspec", None)
    params = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
              for k, v in (cs.params.items() if cs else ())}
    record = {
        "nodeid": item.nodeid, "family": run_dir.family_of(item.nodeid),
        "doc": (getattr(item, "obj", None).__doc__ or "").strip() if getattr(item, "obj", None)
        else "",
        "outcome": outcome, "when": rec.get("when"), "duration_s": rec.get("duration_s"),
        "message": rec.get("message"), "failed_property": rec.get("failed_property"),
        "params": params, "platform": st.platform_name, "faults": list(st.faults),
        "kernel_behaviour": sorted({t.kernel_behaviour for _, t in item.stash.get(_RUNS, [])
                                    if getattr(t, "kernel_behaviour", "")}),
        "verdicts": rec.get("verdicts", []), "runs": runs, "host": host_facts(),
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "run_id": st.run_id,
    }
    run_record.write_test_report(st.paths, record)
    if runs and full:
        run_record.dump_artifacts(st.paths, item.nodeid, runs)


class _Tally:
    """Controller-side plugin object: tallies outcomes per family, prints the progress line and
    the summary, and writes the run-level reports (on the xdist controller it sees every
    worker's reports).  A run cut short (SIGINT, ``-x``, a dead worker) still gets all of them,
    marked incomplete, with every finished case."""

    def __init__(self, st: SuiteState) -> None:
        self.st = st
        self.collected: int | None = None
        self.collected_suite: int | None = None
        self.done = 0
        self.failed: set[str] = set()
        self.crashed: list[str] = []
        self.workers_lost: list[str] = []
        self.interval: float = st.config.getoption("--snplab-progress")
        self._last_progress = time.monotonic()

    # -- collection counts (the progress line's total) -------------------------------------------

    def _set_collected(self, ids: Sequence[str]) -> None:
        if self.collected is None:
            self.collected = len(ids)
            self.collected_suite = sum(1 for n in ids if run_dir.family_of(n) is not None)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.items:
            self._set_collected([i.nodeid for i in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        self._set_collected(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error:
            name = getattr(node, "gateway", None)
            self.workers_lost.append(f"{getattr(name, 'id', '?')}: {str(error).splitlines()[0]}")

    # -- per test ---------------------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            prop = dict(report.user_properties).get("snplab_failed_property") or None
            self.st.tally.add(report.nodeid, report.outcome, report.duration, prop)
        if report.failed:
            self.failed.add(report.nodeid)
        if report.when == "teardown":
            self.done += 1
        elif report.when not in ("setup", "call"):
            # xdist's report for a test whose worker died ("???"): no worker wrote its record
            self.done += 1
            self.crashed.append(report.nodeid)
            self.st.tally.add(report.nodeid, "error", report.duration, None)
            self._write_crash_record(report)
        self._progress(final=False)

    def _write_crash_record(self, report: pytest.TestReport) -> None:
        st = self.st
        if st.paths is None or run_dir.family_of(report.nodeid) is None:
            return
        text = str(report.longrepr or "worker crashed")
        run_record.write_test_report(st.paths, {
            "nodeid": report.nodeid, "family": run_dir.family_of(report.nodeid),
            "outcome": "error", "when": report.when, "duration_s": round(report.duration, 4),
            "message": text.strip().splitlines()[0][:2000] if text.strip() else "worker crashed",
            "failed_property": None, "params": {}, "platform": st.platform_name,
            "faults": list(st.faults), "verdicts": [], "runs": [], "host": host_facts(),
            "worker": str(getattr(getattr(report, "node", None), "gateway", None) and
                          report.node.gateway.id),  # type: ignore[attr-defined]
            "run_id": st.run_id, "crashed": True})

    def _progress(self, final: bool) -> None:
        if self.st.paths is None or self.interval <= 0:
            return
        now = time.monotonic()
        if not final and (self.done == 0 or now - self._last_progress < self.interval):
            return
        self._last_progress = now
        tr = self.st.config.pluginmanager.get_plugin("terminalreporter")
        if tr is None:
            return
        total = self.collected if self.collected is not None else "?"
        tw = getattr(tr, "_tw", None)
        if tw is not None and getattr(tw, "width_of_current_line", 0):
            tr.write("\n")  # end pytest's line of progress letters first
        tr.write_line(f"snplab progress: {self.done}/{total} cases done, {len(self.failed)} "
                      f"failed ({now - self.st.started:.1f} s)")

    # -- end of run -------------------------------------------------------------------------------

    def incomplete_reason(self, exitstatus: int) -> str | None:
        why = []
        if int(exitstatus) == int(pytest.ExitCode.INTERRUPTED):
            why.append("interrupted")
        if self.crashed:
            why.append(f"{len(self.crashed)} case(s) lost with a crashed worker: "
                       + ", ".join(self.crashed[:5]))
        elif self.workers_lost:
            why.append("worker(s) lost: " + "; ".join(self.workers_lost[:3]))
        if self.collected is not None and self.done < self.collected:
            why.append(f"{self.done} of {self.collected} cases finished")
        return "; ".join(why) or None

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        st = self.st
        if st.paths is None or not st.paths.tests.is_dir():
            return
        why = self.incomplete_reason(exitstatus)
        write_summary(st.paths, st.run_id, st.platform_name, st.tally,
                      {"wall_s": round(time.monotonic() - st.started, 3),
                       "exitstatus": int(exitstatus), "faults": list(st.faults),
                       "kernel_behaviour": kernel_behaviour_note(st),
                       "complete": why is None, "incomplete": why is not None,
                       "incomplete_reason": why, "collected": self.collected,
                       "collected_suite": self.collected_suite, "done": self.done})
        write_run_reports(st.paths.root)

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int) -> None:
        st = self.st
        if not st.tally.counts:
            return
        self._progress(final=True)
        terminalreporter.section("snplab summary")
        for line in st.tally.lines(st.platform_name):
            terminalreporter.write_line(line)
        if st.paths is not None:
            why = self.incomplete_reason(exitstatus)
            if why:
                terminalreporter.write_line(f"snplab: INCOMPLETE run ({why}); finished cases "
                                            "are in the reports")
            terminalreporter.write_line(f"snplab reports: {st.paths.root}/index.html")


def pytest_unconfigure(config: pytest.Config) -> None:
    st = config.stash.get(_STATE, None)
    if st is not None and st.platform is not None:
        close = getattr(st.platform, "close", None)
        if callable(close):
            close()


__all__ = ["ScenarioRunner", "SuiteState", "MARKERS", "FAULTS_ENV"]

"""pytest plugin for ``--platform ssh``: inventory options, the ``ssh_platform`` fixture, and
reporting of lab-infrastructure failures as errors.

Loaded by the main plugin (``snplab.pytest_plugin``) with
``pytest_plugins = ["snplab.remote.pytest_remote"]``; the main plugin's platform fixture returns
``request.getfixturevalue("ssh_platform")`` when ``--platform ssh``.

A test that raises ``snplab.remote.errors.RemoteError`` (host key refused, host down, command
timeout, no free slot...) did not test anything: it is reported as ERROR, not FAILED, with the
error's one line as the whole report, and the run goes on.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from snplab.remote.errors import RemoteError
from snplab.remote.inventory import Inventory
from snplab.remote.transport import SshOptions

REMOTE_ERROR_PROP = "snplab_remote_error"

# Help strings: what the option does, then its default in parentheses.


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("snplab-remote", "snplab: guests on lab hosts over SSH (--platform ssh)")
    g.addoption("--remote-platform", choices=("emulated", "snp"), default="emulated",
                help="platform the lab hosts run guests on (emulated)")
    g.addoption("--inventory", metavar="HOSTS.TOML", type=Path,
                help="host inventory for --platform ssh (see docs/remote.md)")
    g.addoption("--hosts", action="append", default=[], metavar="LABEL=VALUE[,...]",
                help="use only inventory hosts with these labels (also name=, product=); repeatable, all must match")
    g.addoption("--ssh-known-hosts", metavar="PATH", type=Path,
                help="known_hosts file for every host (the inventory's, else ~/.ssh/known_hosts)")
    g.addoption("--ssh-tofu", action="store_true",
                help="trust and record unknown host keys on first use (changed keys are still refused)")
    g.addoption("--ssh-connect-timeout", type=float, default=10.0, metavar="S",
                help="seconds for TCP connect, SSH handshake and auth (10)")
    g.addoption("--ssh-job-timeout", type=float, default=60.0, metavar="S",
                help="seconds a remote guest job may take beyond the scenario's guest_timeout (60)")
    g.addoption("--ssh-lease-timeout", type=float, default=600.0, metavar="S",
                help="seconds to wait for a free guest slot on the selected hosts (600)")


def ssh_options(config: pytest.Config) -> SshOptions:
    return SshOptions(
        connect_timeout=config.getoption("--ssh-connect-timeout"),
        known_hosts=config.getoption("--ssh-known-hosts"),
        tofu=config.getoption("--ssh-tofu"),
    )


def selected_hosts(config: pytest.Config) -> tuple[Any, ...]:
    path = config.getoption("--inventory")
    if path is None:
        raise pytest.UsageError("--platform ssh needs --inventory HOSTS.TOML")
    try:
        return Inventory.load(path).select(config.getoption("--hosts"))
    except RemoteError as e:
        raise pytest.UsageError(str(e)) from e


def _option(config: pytest.Config, name: str) -> Any:
    """An option of the main plugin, None when it is not loaded."""
    try:
        return config.getoption(name)
    except ValueError:
        return None


def default_payload() -> Path | None:
    """The payload ELF the local platforms use (shipped to the hosts), built if needed."""
    try:
        from snplab.platform import default_payload_path
    except ImportError:
        return None
    return Path(default_payload_path())


def make_ssh_platform(config: pytest.Config) -> Any:
    """An SshPlatform configured from the command line (also --certs-blob, --trust-dir, --abi)."""
    from snplab.remote.platform import SshPlatform, xdist_worker_index

    abi = _option(config, "--abi")
    return SshPlatform(
        selected_hosts(config),
        remote_platform=config.getoption("--remote-platform"),
        payload=default_payload(),
        options=ssh_options(config),
        worker_index=xdist_worker_index(),
        lease_timeout=config.getoption("--ssh-lease-timeout"),
        job_overhead_s=config.getoption("--ssh-job-timeout"),
        certs_blob=_option(config, "--certs-blob"),
        trust_dir=_option(config, "--trust-dir"),
        abi=abi if abi not in (None, "auto") else None,
    )


def pytest_configure(config: pytest.Config) -> None:
    if _option(config, "--platform") == "ssh":
        selected_hosts(config)  # a bad or missing inventory stops the run before it starts


@pytest.fixture(scope="session")
def ssh_platform(pytestconfig: pytest.Config) -> Iterator[Any]:
    """Session-wide SshPlatform (one SSH connection per host per xdist worker)."""
    platform = make_ssh_platform(pytestconfig)
    try:
        yield platform
    finally:
        platform.close()


def _remote_error(excinfo: pytest.ExceptionInfo[BaseException] | None) -> BaseException | None:
    exc = excinfo.value if excinfo is not None else None
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, RemoteError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
        item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    err = _remote_error(call.excinfo)
    if err is not None and report.failed:
        report.longrepr = f"{type(err).__name__}: {err}"
        report.user_properties.append((REMOTE_ERROR_PROP, str(err)))
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    if report.when == "call" and report.failed and any(
            k == REMOTE_ERROR_PROP for k, _ in getattr(report, "user_properties", ())):
        return "error", "E", "ERROR"
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("--inventory") is None:
        return None
    try:
        hosts = selected_hosts(config)
    except pytest.UsageError as e:
        return f"snplab remote: {e}"
    names = ", ".join(f"{h.name}({h.capacity or 'auto'})" for h in hosts)
    return f"snplab remote: {config.getoption('--remote-platform')} guests on {names}"

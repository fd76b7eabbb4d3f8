"""pytest fixtures for the end-to-end tests: two real libvirt hosts (see harness.py).

The hosts are started once per session (about 3-10 s), with psci-hook installed in each by
`psci-hook install --root <host root>` before its libvirtd starts, and the e2e probe hook
(hooks/10-e2e-probe) beside it. Every test gets them with no domain defined, the probe passive,
each host's psci-hook.conf as installed and no host profile.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import product
from tests.e2e.harness import HarnessError, HostSpec, TwoHosts
from tests.e2e.product import Record, Watch, record_of

HERE = Path(__file__).resolve().parent
PROBE_HOOK = HERE / "hooks" / "10-e2e-probe"

_times: dict[str, float] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.e2e)


def hook_files() -> dict[str, Path]:
    """Hook scripts installed in every host's hooks/qemu.d/ before its libvirtd starts."""
    return {"10-e2e-probe": PROBE_HOOK}


@pytest.fixture(scope="session")
def two_hosts() -> Iterator[TwoHosts]:
    if os.geteuid() != 0:
        pytest.fail("the e2e harness needs root", pytrace=False)
    hosts = TwoHosts(hook_files=hook_files(), before_start=_install_product)
    started = time.monotonic()
    try:
        hosts.up()
    except HarnessError as exc:
        pytest.fail(f"e2e harness: {exc}", pytrace=False)
    _times["setup"] = hosts.timings.get("setup", 0.0)
    _times["lock_wait"] = hosts.timings.get("lock_wait", 0.0)
    try:
        yield hosts
    finally:
        hosts.down()
        _times["teardown"] = hosts.timings.get("teardown", 0.0)
        _times["total"] = time.monotonic() - started


@pytest.fixture
def hosts(two_hosts: TwoHosts) -> Iterator[TwoHosts]:
    """The two hosts with no domain, the probe hook passive and no psci-hook.conf."""
    _reset(two_hosts)
    yield two_hosts
    _reset(two_hosts)


def _install_product(hosts: TwoHosts, spec: HostSpec) -> None:
    product.install_hook(hosts, spec)


def _reset(hosts: TwoHosts) -> None:
    """No domain; the probe passive; psci-hook.conf as `psci-hook install` wrote it."""
    hosts.clear_domains()
    hosts.clear_probe()
    for spec in hosts.specs.values():
        installed = product.installed_config.get(spec.key)
        if installed is None:
            hosts.remove_config(spec)
        else:
            hosts.set_config(spec, installed)
        with contextlib.suppress(FileNotFoundError):
            hosts.path(spec, "/etc/psci-hook/host.json").unlink()


@pytest.fixture
def guest_name(request: pytest.FixtureRequest) -> str:
    """A domain name unique to the test, e.g. e2e-test_veto-p2p."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    return f"e2e-{name}"[:48]


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not _times:
        return
    waited = _times.get("lock_wait", 0.0)
    terminalreporter.write_line(
        "e2e harness: setup {:.1f} s, teardown {:.1f} s, whole e2e session {:.1f} s{}".format(
            _times.get("setup", 0.0),
            _times.get("teardown", 0.0),
            _times.get("total", 0.0) - waited,
            f" (after waiting {waited:.0f} s for another e2e run)" if waited >= 1 else "",
        )
    )


# ---------------------------------------------------------------- psci-hook services in a host


@pytest.fixture(autouse=True)
def no_cache_left(hosts: TwoHosts) -> Iterator[None]:
    """refresh and watch cache the capabilities and QEMU version in a host's /run/psci-hook;
    other e2e tests expect hosts without them."""
    yield
    for spec in hosts.specs.values():
        for name in ("capabilities.xml", "qemu-version", "qemu-generation"):
            with contextlib.suppress(FileNotFoundError):
                hosts.path(spec, f"/run/psci-hook/{name}").unlink()


@pytest.fixture
def watch(hosts: TwoHosts) -> Iterator[Any]:
    """Start `psci-hook watch` in a host (after configuring it); stopped after the test."""
    started: list[Watch] = []

    def start(host: str, by_hand: bool = False) -> Watch:
        w = Watch(hosts, host, by_hand)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


class Live:
    """The test's own libvirt connection to a host, for polling the domain XML cheaply."""

    def __init__(self, hosts: TwoHosts, host: str) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        self.lv = libvirt
        self.conn = libvirt.open(hosts.uri(host))

    def xml(self, name: str, inactive: bool = False) -> str:
        flags = self.lv.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        return str(self.conn.lookupByName(name).XMLDesc(flags))

    def record(self, name: str, inactive: bool = False) -> Record | None:
        return record_of(self.xml(name, inactive))

    def wait_record(self, name: str, match: Any, timeout: float, since: float | None = None
                    ) -> tuple[Record, float]:
        """The first record that matches, and the seconds since ``since`` (default: now)."""
        started = time.monotonic() if since is None else since
        while True:
            record = self.record(name)
            if record is not None and match(record):
                return record, time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{name}: no matching record within {timeout} s: {record}")
            time.sleep(0.02)

    def close(self) -> None:
        with contextlib.suppress(self.lv.libvirtError):
            self.conn.close()


@pytest.fixture
def live(hosts: TwoHosts) -> Iterator[Any]:
    opened: list[Live] = []

    def connect(host: str) -> Live:
        opened.append(Live(hosts, host))
        return opened[-1]

    yield connect
    for c in opened:
        c.close()

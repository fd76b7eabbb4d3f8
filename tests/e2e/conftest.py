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

import pytest

from . import product
from .harness import HarnessError, HostSpec, TwoHosts

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

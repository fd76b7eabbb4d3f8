"""Shared fixtures: the bundled profiles, libvirt's in-process test driver, golden regeneration.
Shared functions and constants are in helpers.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import libvirt
import pytest

from psci_hook.profile import HostProfile, bundled_profiles, load_profile
from tests.helpers import TEST_URI


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--regenerate-golden", action="store_true",
                     help="rewrite golden files from the current output")


@pytest.fixture
def regenerate(request: Any) -> bool:
    return bool(request.config.getoption("--regenerate-golden"))


@pytest.fixture(scope="session")
def bundled() -> dict[str, HostProfile]:
    return {name: load_profile(path) for name, path in bundled_profiles().items()}


@pytest.fixture
def conn() -> Iterator[Any]:
    """A connection to libvirt's test driver. The driver keeps one shared state per process, so
    the domains made through it are removed after the test."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    c = libvirt.open(TEST_URI)
    before = {d.UUIDString() for d in c.listAllDomains()}
    yield c
    for dom in c.listAllDomains():
        if dom.UUIDString() in before:
            continue
        persistent = dom.isPersistent()  # a transient domain is gone once destroyed
        if dom.isActive():
            dom.destroy()
        if persistent:
            dom.undefine()
    c.close()

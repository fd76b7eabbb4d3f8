"""Shared fixtures: the repository, shared/ beside it, profiles built for one rule at a time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from psci_hook import registers as regs
from psci_hook.profile import HostProfile, bundled_profiles, load_profile

REPO = Path(__file__).resolve().parent.parent
# In CI the repository is cloned somewhere with a copy of shared/ beside it.
SHARED = Path(os.environ.get("PSCI_HOOK_SHARED", REPO.parent / "shared"))


def pytest_addoption(parser: Any) -> None:
    parser.addoption("--regenerate-golden", action="store_true",
                     help="rewrite golden files from the current output")


@pytest.fixture
def regenerate(request: Any) -> bool:
    return bool(request.config.getoption("--regenerate-golden"))


def fw(**values: int) -> dict[int, int]:
    return {regs.FW_BY_NAME[name].reg_id: value for name, value in values.items()}


def make_profile(release: str = "6.12.0-test", registers: dict[int, int] | None = None,
                 lists: dict[str, tuple[int, ...]] | None = None, **kw: Any) -> HostProfile:
    return HostProfile(kernel_release=release, machine="aarch64",
                       registers=registers if registers is not None else {},
                       cpreg_lists=lists, **kw)


@pytest.fixture(scope="session")
def bundled() -> dict[str, HostProfile]:
    return {name: load_profile(path) for name, path in bundled_profiles().items()}

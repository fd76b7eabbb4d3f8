"""Fixtures for the record/watch/refresh unit tests. (The tests against real libvirt daemons
are in tests/e2e/test_record_watch.py: they share the e2e harness's session.)"""

from __future__ import annotations

import pytest
from recordtools import UUID_B, profile

from psci_hook.policy import Policy
from psci_hook.recorder import ThisHost


@pytest.fixture
def host_b() -> ThisHost:
    """host-b runs Debian 6.1 on a Cortex-A76 (WORKAROUND_1 = 2, WORKAROUND_3 = 1)."""
    return ThisHost(profile("6.1__a76"), "host-b", UUID_B, Policy())

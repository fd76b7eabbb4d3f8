"""The QEMU generation read from the QEMU build itself (`psci-hook refresh`): the trace events
that only QEMU's cpreg migration tolerance series defines, listed by `<emulator> -trace help`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from psci_hook.libvirt_cache import TOLERANCE_TRACE_EVENTS, build_generation

QEMU = shutil.which("qemu-system-aarch64")


def test_debians_qemu_7_2_is_legacy_by_its_build() -> None:
    """The real emulator of this machine (Debian 12's 7.2: no tolerance series)."""
    assert QEMU is not None, "qemu-system-aarch64 missing: install scripts/deps/e2e.apt"
    generation, how = build_generation(QEMU) or ("?", "")
    assert generation == "legacy" and QEMU in how


def test_a_build_with_the_tolerance_trace_events_is_tolerant(tmp_path: Path) -> None:
    """A tolerant build cannot run here: Debian sid's qemu-system-arm 11.1.3 is only at hand as
    an arm64 binary (it lists tolerate_cpreg_only_in_incoming_stream and
    tolerate_cpreg_missing_in_incoming_stream among its trace events). The stand-in prints
    the real 7.2 emulator's trace list plus those events, as a backport would under 7.2's
    version number."""
    assert QEMU is not None
    stand_in = tmp_path / "qemu-system-aarch64"
    stand_in.write_text(f"#!/bin/sh\n{QEMU} -trace help\n"
                        + "".join(f"echo {e}\n" for e in TOLERANCE_TRACE_EVENTS))
    stand_in.chmod(0o755)
    generation, how = build_generation(str(stand_in)) or ("?", "")
    assert generation == "tolerant" and TOLERANCE_TRACE_EVENTS[0] in how


@pytest.mark.parametrize("program", ["/nonexistent/qemu", "/bin/false", "/bin/true"])
def test_an_emulator_that_cannot_say_leaves_it_to_the_version(program: str) -> None:
    assert build_generation(program) is None

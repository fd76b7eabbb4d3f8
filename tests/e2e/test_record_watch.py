"""psci-hook refresh, record and watch against real libvirt daemons and real QEMU guests.

The e2e harness's hosts (conftest.py): each a libvirtd in its own mount and UTS namespace with
psci-hook installed, its host profile from a file. `psci-hook watch` runs inside a host as the
systemd unit runs it (no --uri: libvirt's default, qemu:///system); `record` and `refresh` run
inside a host like an operator's command. Records are read back from libvirt's own XML
(live and persistent definitions) and events from the host's syslog. One TCG guest at a time
(each spins a core), apart from the few seconds of a migration.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import TwoHosts, guest_xml
from tests.e2e.product import (
    RECORD_NS,
    boot_watched,
    booted_here,
    configure,
    psci_hook_command,
    stamped_xml,
)

pytestmark = pytest.mark.e2e

HOST_A_UUID = "0e2e0000-0000-4000-8000-00000000000a"


# ---------------------------------------------------------------- refresh


def test_refresh_caches_the_capabilities_and_qemu_version(hosts: TwoHosts) -> None:
    res = hosts.run_in("a", psci_hook_command(), "refresh")
    assert res.rc == 0, res.stderr
    caps = hosts.path("a", "/run/psci-hook/capabilities.xml").read_text()
    assert f"<uuid>{HOST_A_UUID}</uuid>" in caps
    qemu = hosts.path("a", "/run/psci-hook/qemu-version").read_text().strip()
    version = subprocess.run(
        ["qemu-system-aarch64", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert qemu and f"version {qemu}" in version, (qemu, version)
    lines = res.stdout.splitlines()
    assert lines[-2] == f"wrote /run/psci-hook/qemu-version (QEMU {qemu})"
    # Debian 12's QEMU 7.2: its build has none of the cpreg tolerance series' trace events.
    assert lines[-1].startswith("wrote /run/psci-hook/qemu-generation (legacy ")
    assert hosts.path("a", "/run/psci-hook/qemu-generation").read_text().startswith("legacy ")


# ---------------------------------------------------------------- watch


def test_watch_records_a_fresh_guest_within_two_seconds(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    configure(hosts, "a", "6.1__a76")
    w = watch("a")
    hosts.define("a", guest_xml(guest_name, hosts.kernel))
    conn = live("a")
    before_start = time.monotonic()
    hosts.start("a", guest_name)
    record, waited = conn.wait_record(guest_name, lambda r: True, 5, since=before_start)
    assert waited < 2.0, f"the record took {waited:.2f} s"
    print(f"record {waited:.2f} s after virsh start was called")
    assert booted_here(record, "host-a", "6.1__a76")
    assert record.origin["host-uuid"] == HOST_A_UUID  # from the capabilities it cached
    assert record.features == "pmu"
    assert conn.record(guest_name, inactive=True) == record.as_copy()  # persistent, marked
    event = w.wait_event(lambda e: e["domain"] == guest_name, 5, "the record event")
    assert (event["action"], event["trigger"], event["written"]) == (
        "recorded",
        "booted",
        ["live", "persistent"],
    )
    assert w.stop() == 0  # SIGTERM ends it cleanly
    assert w.events()[-1]["action"] == "stopped"
    assert w.proc.stdout is not None and w.proc.stdout.read() == b""  # never stdout


def test_cold_boot_replaces_a_stale_record_from_another_host(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    configure(hosts, "a", "6.1__a76")
    w = watch("a")
    # The definition carries the record of a guest that booted on a 5.10 host-b (PSCI 1.0).
    hosts.define("a", stamped_xml(hosts, guest_name, "5.10__a57", "host-b"))
    conn = live("a")
    stale = conn.record(guest_name, inactive=True)
    assert stale is not None and stale.origin["host"] == "host-b"
    before_start = time.monotonic()
    hosts.start("a", guest_name)
    record, waited = conn.wait_record(guest_name, lambda r: r.origin["host"] == "host-a", 5,
                                      since=before_start)
    assert booted_here(record, "host-a", "6.1__a76"), record
    assert record.firmware["PSCI_VERSION"] == 0x10001 != stale.firmware["PSCI_VERSION"]
    assert conn.record(guest_name, inactive=True) == record.as_copy()
    event = w.wait_event(lambda e: e["domain"] == guest_name, 5, "the replace event")
    assert event["action"] == "replaced"
    assert event["previous_origin"]["host"] == "host-b"
    assert waited < 2.0


def test_the_watcher_survives_a_killed_daemon_and_reconciles(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    configure(hosts, "a", "6.1__a76")
    w = watch("a")
    hosts.define("a", guest_xml(guest_name, hosts.kernel))
    hosts.start("a", guest_name)
    live("a").wait_record(guest_name, lambda r: True, 5)
    # The record disappears behind the watcher's back (no lifecycle event for that) ...
    hosts.virsh("a", "metadata", guest_name, RECORD_NS, "--remove", "--live", "--config")
    assert live("a").record(guest_name) is None
    # ... then libvirtd dies (SIGKILL: no goodbye on the socket) and comes back.
    pid = hosts.daemon_pid("a")
    os.kill(pid, signal.SIGKILL)
    w.wait_event(lambda e: e["action"] == "disconnected", 10, "the watcher to notice")
    time.sleep(1.0)  # a few failed reconnection attempts while the daemon is away
    hosts.restart_daemon("a")
    assert hosts.is_running("a", guest_name)  # QEMU outlived its daemon
    assert w.proc.poll() is None
    # It reconnects and reconciles every running domain: the guest is recorded again.
    w.wait_event(
        lambda e: e["domain"] == guest_name and e["trigger"] == "reconcile",
        40,
        "the reconcile after reconnecting",
    )
    conn = live("a")
    assert booted_here(conn.record(guest_name), "host-a", "6.1__a76")
    assert conn.record(guest_name, inactive=True) == conn.record(guest_name).as_copy()
    failed = [e for e in w.events() if e["action"] == "connect-failed"]
    assert failed and "next attempt in" in failed[0]["reason"]
    # And it keeps recording fresh boots.
    hosts.virsh("a", "destroy", guest_name)
    hosts.virsh("a", "metadata", guest_name, RECORD_NS, "--remove", "--config")
    before_start = time.monotonic()
    hosts.start("a", guest_name)
    record, waited = conn.wait_record(guest_name, lambda r: True, 5, since=before_start)
    assert booted_here(record, "host-a", "6.1__a76") and waited < 2.0


# ---------------------------------------------------------------- record


def test_record_all_records_running_unrecorded_guests(
    hosts: TwoHosts, guest_name: str, live: Any
) -> None:
    configure(hosts, "a", "6.1__a76")
    hosts.define("a", guest_xml(guest_name, hosts.kernel))
    hosts.start("a", guest_name)
    conn = live("a")
    assert conn.record(guest_name) is None
    res = hosts.run_in("a", psci_hook_command(), "record", "--all")
    assert res.rc == 0, res.stderr
    assert res.stdout.startswith(f"{guest_name}: recorded: this host's values: ")
    assert res.stdout.splitlines()[-1] == "1 domain: 1 recorded"
    assert booted_here(conn.record(guest_name), "host-a", "6.1__a76")
    assert conn.record(guest_name, inactive=True) == conn.record(guest_name).as_copy()
    again = hosts.run_in("a", psci_hook_command(), "record", guest_name)
    assert (again.rc, again.stdout.splitlines()[-1]) == (0, "1 domain: 1 unchanged")


# ---------------------------------------------------------------- migration and restore in


@pytest.mark.parametrize("annotate", [True, False], ids=["annotated", "not-annotated"])
def test_migration_in_gives_the_persistent_definition_the_guests_state(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any, annotate: bool
) -> None:
    """a (6.1, a57: WORKAROUND_1 = 0) -> b (6.1, a76: WORKAROUND_1 = 2), --persistent."""
    configure(hosts, "a", "6.1__a57")
    configure(hosts, "b", "6.1__a76", annotate=annotate)
    w = watch("b")
    hosts.define("a", stamped_xml(hosts, guest_name, "6.1__a57", "host-a"))
    hosts.start("a", guest_name)
    res = hosts.migrate("a", "b", guest_name, extra=["--persistent", "--undefinesource"])
    assert res.rc == 0, res.stderr
    event = w.wait_event(
        lambda e: e["domain"] == guest_name and e["trigger"] == "migrated", 10, "the migrated event"
    )
    conn = live("b")
    record = conn.record(guest_name)
    assert record is not None
    assert (record.origin["event"], record.origin["host"]) == ("migrated", "host-b")
    assert record.firmware["SMCCC_ARCH_WORKAROUND_1"] == 2  # b's level
    assert record.history[-1]["host"] == "host-b"
    assert conn.record(guest_name, inactive=True) == record.as_copy()
    if annotate:  # the hook wrote the live record; the watcher copied it
        assert (event["action"], event["written"]) == ("synced", ["persistent"])
    else:  # the watcher computed the guest's state here and wrote both
        assert (event["action"], event["written"]) == ("updated", ["live", "persistent"])
        assert "WA_RATCHET" in event["codes"]


def test_restore_gives_the_persistent_definition_the_restored_record(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    w, conn, _ = boot_watched(hosts, watch, live, "a", guest_name, "6.1__a76")
    saved = hosts.save("a", guest_name)
    assert hosts.restore("a", saved).rc == 0
    event = w.wait_event(
        lambda e: e["domain"] == guest_name and e["trigger"] == "restored", 10, "the restored event"
    )
    record = conn.record(guest_name)
    assert record is not None and record.origin["event"] == "restored"  # the hook's
    assert conn.record(guest_name, inactive=True) == record.as_copy()
    assert (event["action"], event["written"]) == ("synced", ["persistent"])


def test_watch_log_lines_are_json_one_per_action(hosts: TwoHosts, watch: Any) -> None:
    configure(hosts, "a", "6.1__a76")
    w = watch("a")
    assert w.stop() == 0
    actions = [e["action"] for e in w.events()]
    assert actions[:2] == ["started", "connected"] and actions[-1] == "stopped"
    assert all(e["event"] == "psci-hook.record" for e in w.events())
    assert Path(w.err_path).read_text() == ""


def test_watch_run_by_hand_says_what_it_does_on_stderr(
    hosts: TwoHosts, guest_name: str, watch: Any
) -> None:
    """Run from a shell (no INVOCATION_ID): one line per action on stderr, the same actions the
    log gets; under systemd (the test above) stderr stays empty."""
    configure(hosts, "a", "6.1__a76")
    w = watch("a", by_hand=True)
    hosts.define_and_start("a", guest_name)
    w.wait_event(lambda e: e["domain"] == guest_name and e["trigger"] == "booted", 10,
                 "the booted event")
    assert w.stop() == 0
    lines = Path(w.err_path).read_text().splitlines()
    assert all(line.startswith("psci-hook: watch: ") for line in lines), lines
    said = [line[len("psci-hook: watch: "):] for line in lines]
    assert said[0] == "watching libvirt lifecycle events"
    assert said[1] == "connected to libvirt on host-a"
    assert any(line.endswith(" reconciled") for line in said[2:4]), said
    [booted] = [line for line in said if line.startswith(f"booted: {guest_name}: ")]
    assert booted.startswith(f"booted: {guest_name}: recorded: this host's values: ")
    assert said[-1] == "stopped (SIGTERM or SIGINT)"
    assert len(said) == len(w.events())  # one line per logged action

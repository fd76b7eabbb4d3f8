"""A guest's whole life on real libvirt: boots nobody watched, offline moves, snapshots, managed
save (issue 12). Each test drives the two e2e hosts (conftest.py) as an operator would, with the
real hook installed, `psci-hook watch` run as its unit runs it and `psci-hook record` as an
operator's command; records are read back from libvirt's own XML and decisions from the hosts'
syslog.

Host profiles come from files (no arm64 KVM here): 7.2 (PSCI 1.3), 6.12 and 6.1 (PSCI 1.1),
5.10 (a shorter migrated register list). The facts these tests rely on were measured on this
libvirt (9.0): a cold boot, autostart included, leaves the state reason RUNNING_BOOTED; an
incoming migration MIGRATED (kept across a daemon restart); `virsh start` of a managed-saved
guest runs `restore begin` and leaves RESTORED; a snapshot revert starts a new QEMU process
with prepare/start/started hook calls only and leaves FROM_SNAPSHOT; suspend/resume leaves
UNPAUSED.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import TwoHosts, guest_xml
from tests.e2e.product import (
    audit,
    boot_watched,
    configure,
    decisions,
    hook_failure_prefix,
    record_all,
    record_of,
    stamped_xml,
    veto_line,
)

pytestmark = pytest.mark.e2e

PSCI_1_3, PSCI_1_1 = 0x10003, 0x10001


def boot_as_at_host_start(hosts: TwoHosts, host: str) -> None:
    """Restart the host's libvirtd as a host boot does: its autostart runs again (libvirt
    autostarts once per boot, remembered in <stateDir>/autostarted, which /run loses at
    reboot)."""
    with contextlib.suppress(FileNotFoundError):
        hosts.path(host, "/run/libvirt/qemu/autostarted").unlink()
    hosts.restart_daemon(host)


# ---------------------------------------------------------------- boots nobody watched


def test_a_cold_boot_while_the_watcher_is_stopped_cannot_lend_a_stale_record(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """Issue 12, point 1: booted on b (6.1), migrated to a (7.2), then destroyed and started on
    a while `psci-hook watch` is stopped: the guest now really has PSCI 1.3. Until a reconcile
    the hook trusts nothing it booted with; `record --all` then records 7.2's values; the move
    to a 6.12 host is vetoed before any memory moves."""
    configure(hosts, "a", "7.2__a57")
    configure(hosts, "b", "6.1__a57")
    hosts.define("b", stamped_xml(hosts, guest_name, "6.1__a57", "host-b"))
    hosts.start("b", guest_name)
    w = watch("a")
    res = hosts.migrate("b", "a", guest_name, extra=["--persistent", "--undefinesource"])
    assert res.rc == 0, res.stderr
    w.wait_event(lambda e: e["domain"] == guest_name and e["trigger"] == "migrated", 10,
                 "the migrated event")
    conn = live("a")
    arrived = conn.record(guest_name)
    assert arrived is not None and arrived.origin["event"] == "migrated"
    assert arrived.firmware["PSCI_VERSION"] == PSCI_1_1  # kept for the guest's life
    copy = conn.record(guest_name, inactive=True)
    assert copy is not None and copy.status == "persistent-copy"
    assert copy.firmware == arrived.firmware
    assert w.stop() == 0

    hosts.virsh("a", "destroy", guest_name)
    hosts.start("a", guest_name)  # a cold boot on 7.2: PSCI 1.3 now, nobody watching
    qemu = hosts.qemu_pid("a", guest_name)
    booted_with = conn.record(guest_name)
    assert booted_with is not None and booted_with.status == "persistent-copy"

    # Before any reconcile: the record the guest booted with vouches for nothing; the policy
    # decides as for a guest without a record (here: veto).
    configure(hosts, "b", "6.12__a57", unrecorded="veto")
    res = hosts.migrate("a", "b", guest_name)
    assert res.rc == 1, res.stderr
    assert hook_failure_prefix(guest_name, "migrate") + veto_line("NO_RECORD", guest_name) \
        in res.stderr, res.stderr
    assert "persistent definition's copy" in res.stderr
    assert hosts.qemu_pid("a", guest_name) == qemu

    # The reconcile tells the cold boot from the arrival by libvirt's state reason.
    lines = record_all(hosts, "a")
    assert lines[guest_name].startswith(
        "replaced: cold-booted on this host after its record was written (libvirt's state "
        "reason: booted, QEMU process started "), lines
    assert "the record (migrated on host-a" in lines[guest_name]
    now = conn.record(guest_name)
    assert now is not None and now.status == ""
    assert (now.origin["event"], now.origin["host"]) == ("booted", "host-a")
    assert now.firmware["PSCI_VERSION"] == PSCI_1_3
    assert conn.record(guest_name, inactive=True).status == "persistent-copy"

    # The stale-record migration of the issue: vetoed, on the guest's real PSCI version.
    configure(hosts, "b", "6.12__a57")
    res = hosts.migrate("a", "b", guest_name)
    assert res.rc == 1, res.stderr
    assert veto_line("PSCI_UNSUPPORTED", guest_name) + "PSCI_VERSION guest=1.3" in res.stderr
    assert hosts.qemu_pid("a", guest_name) == qemu


def test_a_guest_autostarted_before_the_watcher_connects_gets_this_hosts_record(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """libvirt autostarts guests while its daemon starts, before any client (the watcher) can
    connect: the watcher's first reconcile finds the cold boot from the state reason."""
    configure(hosts, "a", "7.2__a57")
    # The definition carries a record from another host's run (6.1: PSCI 1.1).
    hosts.define("a", stamped_xml(hosts, guest_name, "6.1__a57", "host-b"))
    hosts.virsh("a", "autostart", guest_name)
    boot_as_at_host_start(hosts, "a")
    assert hosts.is_running("a", guest_name), "libvirt did not autostart the guest"
    conn = live("a")
    stale = conn.record(guest_name)
    assert stale is not None and stale.origin["host"] == "host-b"
    assert conn.conn.lookupByName(guest_name).state()[1] == conn.lv.VIR_DOMAIN_RUNNING_BOOTED

    w = watch("a")  # after the daemon: as psci-hook-watch.service is ordered
    event = w.wait_event(lambda e: e["domain"] == guest_name and e["trigger"] == "reconcile",
                         20, "the start-up reconcile")
    assert event["action"] == "replaced", event
    assert "cold-booted on this host" in event["reason"]
    assert "state reason: booted" in event["reason"]
    assert event["previous_origin"]["host"] == "host-b"
    record = conn.record(guest_name)
    assert record is not None and (record.origin["event"], record.origin["host"]) == (
        "booted", "host-a")
    assert record.firmware["PSCI_VERSION"] == PSCI_1_3
    copy = conn.record(guest_name, inactive=True)
    assert copy is not None and copy.status == "persistent-copy"
    assert copy.firmware == record.firmware
    # A second pass (a reconnection, the periodic one) finds it current.
    assert record_all(hosts, "a")[guest_name].startswith("unchanged: its record is current")


def test_a_paused_and_resumed_guest_is_judged_by_its_process_start(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """suspend/resume replaces libvirt's reason (UNPAUSED): the record this host wrote after the
    QEMU process started still counts; a record nothing vouches for is marked unverified."""
    w, conn, _ = boot_watched(hosts, watch, live, "a", guest_name, "6.1__a76")
    assert w.stop() == 0
    hosts.virsh("a", "suspend", guest_name)
    hosts.virsh("a", "resume", guest_name)
    assert conn.conn.lookupByName(guest_name).state()[1] == conn.lv.VIR_DOMAIN_RUNNING_UNPAUSED
    line = record_all(hosts, "a")[guest_name]
    assert line.startswith("unchanged: its record is current"), line
    assert "state reason: unpaused" in line
    # The same guest with a record from another host: nothing tells whether it came with the
    # state or survived a cold boot.
    foreign = record_of(stamped_xml(hosts, guest_name, "6.1__a57", "host-b"))
    assert foreign is not None
    hosts.virsh("a", "destroy", guest_name)
    hosts.virsh("a", "undefine", guest_name)
    hosts.define("a", stamped_xml(hosts, guest_name, "6.1__a57", "host-b"))
    hosts.start("a", guest_name)
    hosts.virsh("a", "suspend", guest_name)
    hosts.virsh("a", "resume", guest_name)
    line = record_all(hosts, "a")[guest_name]
    assert line.startswith("unverified: cannot tell whether the guest cold-booted"), line
    marked = conn.record(guest_name)
    assert marked is not None and marked.status == "unverified"
    assert marked.firmware == foreign.firmware
    configure(hosts, "b", "6.1__a76", unrecorded="veto")
    res = hosts.migrate("a", "b", guest_name)
    assert veto_line("NO_RECORD", guest_name) in res.stderr, res.stderr
    assert "could not tell whether the guest cold-booted" in res.stderr


# ---------------------------------------------------------------- offline migration


def test_offline_migration_of_a_shut_off_guest_is_allowed(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """`virsh migrate --offline --persistent` runs the destination's migrate hook with the
    persistent definition (qemu_migration.c does not tell the hook it is offline). Its record
    is the persistent copy: no register moves, so it is not judged; the policy's 'unrecorded'
    setting (allow by default) decides and the event says why."""
    configure(hosts, "b", "5.10__a57")  # a live move 6.12 -> 5.10 is vetoed (CPREG_COUNT)
    w, conn, _ = boot_watched(hosts, watch, live, "a", guest_name, "6.12__a57")
    res = hosts.migrate("a", "b", guest_name)
    assert veto_line("CPREG_COUNT", guest_name) in res.stderr, res.stderr
    hosts.virsh("a", "destroy", guest_name)
    w.stop()
    copy = conn.record(guest_name, inactive=True)
    assert copy is not None and copy.status == "persistent-copy"

    res = hosts.migrate("a", "b", guest_name, live=False,
                        extra=["--offline", "--persistent", "--undefinesource"])
    assert res.rc == 0, res.stderr
    assert hosts.domains("b") == [guest_name] and not hosts.is_running("b", guest_name)
    assert guest_name not in hosts.domains("a")
    offline = decisions(hosts, "b", guest_name)[-1]
    assert (offline["decision"], offline["codes"]) == ("allow", ["NO_RECORD"])
    assert "persistent definition's copy" in offline["record_not_used"]
    # It arrives still marked: it cold-boots on b and gets b's values then.
    arrived = record_of(hosts.dumpxml("b", guest_name, inactive=True))
    assert arrived is not None and arrived.status == "persistent-copy"


# ---------------------------------------------------------------- snapshots, managed save


def disk_guest_xml(hosts: TwoHosts, name: str) -> str:
    """The e2e guest with a qcow2 disk: internal snapshots with memory need one."""
    image = hosts.root / f"{name}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{image}'/><target dev='vda' bus='virtio'/></disk>")
    return guest_xml(name, hosts.kernel).replace("</devices>", f"  {disk}\n  </devices>")


def test_snapshot_revert_keeps_the_record_of_the_state_it_loads(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """A revert loads saved vCPU state with no hook call (qemu_snapshot.c) and installs the
    definition saved with the snapshot, record included; `watch` acts on
    STARTED_FROM_SNAPSHOT as on a restore."""
    w, conn, at_snapshot = boot_watched(hosts, watch, live, "a", guest_name, "6.1__a76",
                                        disk_guest_xml(hosts, guest_name))
    hosts.virsh("a", "snapshot-create-as", guest_name, "s1")
    try:
        # The definition saved with the snapshot carries the record (what `check` can read).
        saved = hosts.virsh("a", "snapshot-dumpxml", guest_name, "s1").stdout
        assert "https://psci-hook.org/xmlns/record/1" in saved
        # Afterwards the live record goes (as after a later change of this guest) ...
        hosts.virsh("a", "metadata", guest_name, "https://psci-hook.org/xmlns/record/1",
                    "--remove", "--live")
        mark = hosts.log_mark("a")
        pid = hosts.qemu_pid("a", guest_name)
        hosts.virsh("a", "snapshot-revert", guest_name, "s1")
        assert hosts.qemu_pid("a", guest_name) not in (None, pid)  # a new QEMU process
        event = w.wait_event(
            lambda e: e["domain"] == guest_name and e["trigger"] == "from-snapshot", 10,
            "the from-snapshot event")
        # ... and the revert brings back the snapshot's record; its values are this host's,
        # and it is written again as the revert's (a restore, in the record's words).
        assert event["action"] == "updated", event
        reverted = conn.record(guest_name)
        assert reverted is not None and reverted.firmware == at_snapshot.firmware
        assert (reverted.origin["event"], reverted.origin["host"]) == ("restored", "host-a")
        assert conn.conn.lookupByName(guest_name).state()[1] == \
            conn.lv.VIR_DOMAIN_RUNNING_FROM_SNAPSHOT
        # No hook call for the revert itself: no decision was logged.
        assert '"psci-hook.decision"' not in hosts.read_log("a", mark)
        line = record_all(hosts, "a")[guest_name]
        assert "state reason: from-snapshot" in line, line
    finally:
        hosts.virsh("a", "snapshot-delete", guest_name, "s1", "--metadata", check=False)


LIBVIRT_GUESTS = Path("/usr/lib/libvirt/libvirt-guests.sh")  # libvirt-daemon (scripts/deps)


def libvirt_guests(hosts: TwoHosts, host: str, action: str) -> str:
    """Run libvirt-guests' own script (what libvirt-guests.service runs at host shutdown and
    boot) against one e2e host: ON_SHUTDOWN=suspend (`virsh managedsave` of every running
    guest, their UUIDs kept in its list file), ON_BOOT=start (`virsh start` of each listed
    guest, which restores its managed save). The script reads /etc/default/libvirt-guests and
    keeps its list under /var; only those two paths are pointed at the host's directory, so
    that the real host's files are never touched."""
    work = hosts.hostdir(host) / "libvirt-guests"
    for sub in ("default", "lib/libvirt", "lock"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "default" / "libvirt-guests").write_text(
        f'URIS="{hosts.uri(host)}"\nON_BOOT=start\nON_SHUTDOWN=suspend\n')
    script = work / "libvirt-guests.sh"
    text = LIBVIRT_GUESTS.read_text()
    for line in ('sysconfdir="/etc"', 'localstatedir="/var"'):
        assert line in text, f"{LIBVIRT_GUESTS} no longer has {line}"
        text = text.replace(line, f'{line.split("=")[0]}="{work}"', 1)
    script.write_text(text)
    res = subprocess.run(["/bin/sh", str(script), action], capture_output=True, text=True,
                         timeout=300, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                           "LANG": "C.UTF-8"}, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_libvirt_guests_suspends_and_resumes_across_a_kernel_upgrade(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """A host reboot with libvirt-guests (ON_SHUTDOWN=suspend, ON_BOOT=start), run with its
    own script: the guest is managed-saved under 6.1, the host comes back on 6.12 (a new
    profile, a daemon started afresh), and libvirt-guests' `virsh start` restores it through
    the hook, which judges the saved state against the new kernel; the record then says the
    restore on this host and is current for `record --all` (libvirt's reason: restored)."""
    w, conn, booted = boot_watched(hosts, watch, live, "a", guest_name, "6.1__a57")
    out = libvirt_guests(hosts, "a", "stop")
    assert f"Suspending {guest_name}: ..." in out, out
    assert hosts.domstate("a", guest_name) == "shut off"
    assert hosts.virsh("a", "dominfo", guest_name).stdout.count("Managed save:   yes") == 1
    w.stop()

    configure(hosts, "a", "6.12__a57")  # the host boots a newer kernel
    boot_as_at_host_start(hosts, "a")
    w = watch("a")
    out = libvirt_guests(hosts, "a", "start")
    assert f"Resuming guest {guest_name}: done" in out, out
    event = w.wait_event(lambda e: e["domain"] == guest_name and e["trigger"] == "restored",
                         10, "the restored event")
    [decision] = [d for d in decisions(hosts, "a", guest_name) if d["op"] == "restore"]
    assert decision["decision"] == "allow", decision
    assert decision["guest_origin"]["kernel"] == booted.origin["kernel"]
    conn = live("a")
    record = conn.record(guest_name)
    assert record is not None and record.status == ""
    assert (record.origin["event"], record.origin["host"]) == ("restored", "host-a")
    assert record.origin["kernel"] != booted.origin["kernel"]  # the new kernel's
    assert record.history[-1]["op"] == "restore"
    assert conn.record(guest_name, inactive=True) == record.as_copy()
    assert event["action"] in ("synced", "updated"), event
    assert conn.conn.lookupByName(guest_name).state()[1] == \
        conn.lv.VIR_DOMAIN_RUNNING_RESTORED
    line = record_all(hosts, "a")[guest_name]
    assert line.startswith("unchanged: the live record is current for this host"), line


def test_managed_save_and_start_go_through_the_restore_hook(
    hosts: TwoHosts, guest_name: str, watch: Any, live: Any
) -> None:
    """`virsh managedsave`, a daemon that starts afresh, `virsh start`: the start restores the
    saved state through `restore begin`, whose annotation becomes the live definition
    (test_libvirt_facts pins that); the watcher copies it to the persistent definition. The
    record then says the restore, so a later pause/resume (which replaces libvirt's reason)
    still leaves it current for a reconcile."""
    w, conn, booted = boot_watched(hosts, watch, live, "a", guest_name, "6.1__a76")
    hosts.virsh("a", "managedsave", guest_name)
    w.stop()
    boot_as_at_host_start(hosts, "a")
    w = watch("a")
    hosts.start("a", guest_name)
    event = w.wait_event(lambda e: e["domain"] == guest_name and e["trigger"] == "restored",
                         10, "the restored event")
    assert (event["action"], event["written"]) == ("synced", ["persistent"]), event
    summary = audit(hosts, "a", guest_name, 1)
    assert summary["by_decision"] == {"allow": 1}, summary
    restore = decisions(hosts, "a", guest_name)[-1]
    assert restore["op"] == "restore"
    conn = live("a")
    record = conn.record(guest_name)
    assert record is not None and record.status == ""
    assert (record.origin["event"], record.origin["host"]) == ("restored", "host-a")
    assert record.firmware == booted.firmware and record.history[-1]["op"] == "restore"
    assert conn.conn.lookupByName(guest_name).state()[1] == conn.lv.VIR_DOMAIN_RUNNING_RESTORED
    assert conn.record(guest_name, inactive=True) == record.as_copy()
    hosts.virsh("a", "suspend", guest_name)
    hosts.virsh("a", "resume", guest_name)
    line = record_all(hosts, "a")[guest_name]
    assert line.startswith("unchanged: its record is current") or line.startswith(
        "unchanged: the live record is current for this host"), line
    assert conn.record(guest_name) == record

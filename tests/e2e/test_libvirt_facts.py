"""The libvirt facts psci-hook relies on, pinned against real libvirt + QEMU with a probe hook.

The probe (hooks/10-e2e-probe) records every call, and on request vetoes or annotates. These
tests prove, on the libvirt in use, that: the destination's qemu hook gets ``migrate begin -``
with the domain XML on stdin; exit 1 vetoes the migration with the hook's stderr in the error
text while the guest keeps running on the source; XML printed by the hook becomes the guest's
live definition; ``virsh restore`` goes through ``restore begin -`` the same way, and so does
``virsh start`` of a managed-saved guest; hooks run
with a clean environment; and each host's syslog is captured separately.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.e2e.harness import CLEAN_PATH, TwoHosts, wait_for

pytestmark = pytest.mark.e2e

PROBE = "/etc/libvirt/hooks/qemu.d/10-e2e-probe"
E2E_NS = "https://example.org/e2e-hook/1"


def ops(calls: list[dict]) -> list[tuple[str, str]]:
    return [(c["argv"][1], c["argv"][2]) for c in calls]


def hook_error(dom: str, op: str, text: str) -> str:
    """The error virsh prints when the probe hook exits 1 (PATH is the daemon's)."""
    return (
        "error: Hook script execution failed: internal error: Child process (LC_ALL=C "
        f"PATH={CLEAN_PATH} HOME=/root {PROBE} {dom} {op} begin -) unexpected exit status 1: "
        f"{text}\n"
    )


def test_start_runs_hooks_with_clean_environment_and_private_syslog(
    hosts: TwoHosts, guest_name: str
) -> None:
    mark_a, mark_b = hosts.log_mark("a"), hosts.log_mark("b")
    hosts.define_and_start("a", guest_name)
    assert hosts.is_running("a", guest_name)

    calls = hosts.hook_calls("a")
    assert ops(calls) == [("prepare", "begin"), ("start", "begin"), ("started", "begin")]
    for call in calls:
        assert call["argv"] == [guest_name, call["argv"][1], "begin", "-"]
        assert call["env"] == {"LC_ALL": "C", "PATH": CLEAN_PATH, "HOME": "/root"}
        assert call["cwd"] == "/"
        assert call["uid"] == 0
        assert call["host"] == "host-a"
        assert call["script"] == PROBE
        assert call["stdin_root"] == "domain"
    assert hosts.hook_calls("b") == []

    log_a = hosts.wait_log("a", f"{guest_name} started begin on host-a", since=mark_a)
    assert re.search(
        rf"^\S+ host-a e2e-hook\[\d+\]: {guest_name} prepare begin on host-a$", log_a, re.M
    ), log_a
    assert "e2e-hook" not in hosts.read_log("b", since=mark_b)


def test_live_migration_calls_only_the_destination_migrate_hook(
    hosts: TwoHosts, guest_name: str
) -> None:
    hosts.define_and_start("a", guest_name)
    res = hosts.migrate("a", "b", guest_name)
    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    assert not hosts.is_running("a", guest_name)

    calls_b = hosts.hook_calls("b")
    assert ops(calls_b) == [
        ("migrate", "begin"),
        ("prepare", "begin"),
        ("start", "begin"),
        ("started", "begin"),
    ]
    assert calls_b[0]["stdin_root"] == "domain"
    assert calls_b[0]["host"] == "host-b"
    calls_a = hosts.hook_calls("a")
    assert ("migrate", "begin") not in ops(calls_a)
    assert ops(calls_a)[-2:] == [("stopped", "end"), ("release", "end")]


@pytest.mark.parametrize("mode", [[], ["--p2p"]], ids=["direct", "p2p"])
def test_destination_veto_keeps_the_guest_running_on_the_source(
    hosts: TwoHosts, guest_name: str, mode: list[str]
) -> None:
    hosts.define_and_start("a", guest_name)
    qemu = hosts.qemu_pid("a", guest_name)
    assert qemu
    hosts.probe_flag("b", "veto-migrate")

    res = hosts.migrate("a", "b", guest_name, extra=mode)

    assert res.rc == 1
    assert res.stderr == hook_error(
        guest_name, "migrate", f"e2e-hook: refusing migrate of {guest_name} on host-b\n"
    )
    assert "Failed to migrate" not in res.stderr
    assert hosts.is_running("a", guest_name)
    assert hosts.qemu_pid("a", guest_name) == qemu
    assert hosts.domains("b") == []
    assert ops(hosts.hook_calls("b")) == [("migrate", "begin")]
    assert ("migrate", "begin") not in ops(hosts.hook_calls("a"))


def test_hook_output_becomes_the_live_definition(hosts: TwoHosts, guest_name: str) -> None:
    hosts.define_and_start("a", guest_name)
    hosts.probe_flag("b", "annotate")

    res = hosts.migrate("a", "b", guest_name)

    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    stamp = ET.fromstring(hosts.dumpxml("b", guest_name)).find(f"metadata/{{{E2E_NS}}}stamp")
    assert stamp is not None
    assert stamp.attrib == {"op": "migrate", "host": "host-b", "chain": "qemu.d"}
    meta = hosts.virsh("b", "metadata", guest_name, E2E_NS).stdout.strip()
    assert meta == '<stamp op="migrate" host="host-b" chain="qemu.d"/>'
    # The next hook call on b (prepare) already sees the annotated XML.
    prepare = hosts.hook_calls("b")[1]
    assert prepare["argv"][1] == "prepare"
    assert 'host="host-b"' in (prepare["stdin_metadata"] or "")


def test_restore_goes_through_the_restore_hook(hosts: TwoHosts, guest_name: str) -> None:
    hosts.define_and_start("a", guest_name)
    saved = hosts.save("a", guest_name)
    assert not hosts.is_running("a", guest_name)
    assert ops(hosts.hook_calls("a"))[-2:] == [("stopped", "end"), ("release", "end")]

    hosts.probe_flag("b", "veto-restore")
    res = hosts.restore("b", saved)
    assert res.rc == 1
    assert res.stderr == (
        f"error: Failed to restore domain from {saved}\n"
        + hook_error(guest_name, "restore", f"e2e-hook: refusing restore of {guest_name} on host-b")
        + "\n"
    )
    assert hosts.domains("b") == []
    assert saved.exists()
    assert ops(hosts.hook_calls("b")) == [("restore", "begin")]

    hosts.probe_flag("b", "veto-restore", on=False)
    hosts.probe_flag("b", "annotate")
    res = hosts.restore("b", saved)
    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    stamp = ET.fromstring(hosts.dumpxml("b", guest_name)).find(f"metadata/{{{E2E_NS}}}stamp")
    assert stamp is not None and stamp.attrib["op"] == "restore"
    assert stamp.attrib["host"] == "host-b"


def test_managed_save_start_goes_through_the_restore_hook(
    hosts: TwoHosts, guest_name: str
) -> None:
    """`virsh managedsave` then `virsh start` (what libvirt-guests does at host shutdown and
    boot): the start restores through `restore begin -` with the saved image's XML
    (qemu_driver.c, qemuDomainObjRestore -> virHookCall(..., data->xml, &xmlout)), and XML the
    hook prints becomes the live definition (qemuSaveImageUpdateDef, then
    virDomainObjAssignDef(vm, def, live=true): the persistent definition is kept as newDef, so
    it does not see the hook's change). The state reason is RESTORED."""
    hosts.define_and_start("a", guest_name)
    hosts.probe_flag("a", "annotate")
    hosts.virsh("a", "managedsave", guest_name)
    assert not hosts.is_running("a", guest_name)
    before = len(hosts.hook_calls("a"))

    hosts.start("a", guest_name)

    calls = hosts.hook_calls("a")[before:]
    assert ops(calls) == [("restore", "begin"), ("prepare", "begin"), ("start", "begin"),
                          ("started", "begin")]
    assert calls[0]["stdin_root"] == "domain"
    assert 'op="restore"' in (calls[1]["stdin_metadata"] or ""), calls[1]
    stamp = ET.fromstring(hosts.dumpxml("a", guest_name)).find(f"metadata/{{{E2E_NS}}}stamp")
    assert stamp is not None and stamp.attrib["op"] == "restore", hosts.dumpxml("a", guest_name)
    inactive = ET.fromstring(hosts.dumpxml("a", guest_name, inactive=True))
    assert inactive.find(f"metadata/{{{E2E_NS}}}stamp") is None
    state = hosts.virsh("a", "domstate", "--reason", guest_name).stdout.strip()
    assert state == "running (restored)"


def test_guest_powers_off_on_virsh_shutdown(hosts: TwoHosts, guest_name: str) -> None:
    hosts.define_and_start("b", guest_name)
    hosts.virsh("b", "shutdown", guest_name)
    wait_for(lambda: hosts.domstate("b", guest_name) == "shut off", 15, "guest power-off")
    reason = hosts.virsh("b", "domstate", "--reason", guest_name).stdout.strip()
    assert reason == "shut off (shutdown)"


def test_daemon_restart_and_reload(hosts: TwoHosts, guest_name: str) -> None:
    hosts.define_and_start("a", guest_name)
    qemu = hosts.qemu_pid("a", guest_name)
    old = hosts.daemon_pid("a")
    hosts.restart_daemon("a")
    assert hosts.daemon_pid("a") != old
    assert hosts.is_running("a", guest_name)
    assert hosts.qemu_pid("a", guest_name) == qemu
    # libvirtd reconnects to running guests in the background after it starts answering.
    wait_for(
        lambda: ops(hosts.hook_calls("a"))[-1] == ("reconnect", "begin"), 10, "reconnect hook"
    )

    pid = hosts.daemon_pid("a")
    hosts.reload("a")
    assert hosts.daemon_pid("a") == pid
    assert hosts.is_running("a", guest_name)


def test_hooks_are_discovered_at_daemon_start_or_sighup(hosts: TwoHosts, guest_name: str) -> None:
    """A hook installed while libvirtd runs without any qemu hook is not called until SIGHUP
    (or a restart): why psci-hook install says to reload libvirt."""
    qemu_d = hosts.path("b", "/etc/libvirt/hooks/qemu.d")
    aside = hosts.hostdir("b") / "qemu.d-aside"
    qemu_d.rename(aside)
    qemu_d.mkdir()
    try:
        hosts.restart_daemon("b")  # b now runs with no qemu hook at all
        for script in sorted(aside.iterdir()):
            script.rename(qemu_d / script.name)  # installed while the daemon runs
        hosts.probe_flag("b", "veto-migrate")
        hosts.define_and_start("a", guest_name)

        unseen = hosts.migrate("a", "b", guest_name)
        assert unseen.rc == 0, unseen.stderr
        assert hosts.hook_calls("b") == []
        assert hosts.migrate("b", "a", guest_name).rc == 0

        hosts.reload("b")
        seen = hosts.migrate("a", "b", guest_name)
        assert seen.rc == 1
        assert f"e2e-hook: refusing migrate of {guest_name} on host-b" in seen.stderr
        assert ops(hosts.hook_calls("b")) == [("migrate", "begin")]
    finally:
        if aside.exists():
            for script in aside.iterdir():
                script.rename(qemu_d / script.name)
            aside.rmdir()
        hosts.reload("b")

"""`psci-hook doctor` on the e2e harness's real libvirt hosts, healthy and broken.

doctor runs inside a host as an operator runs it (the host's mounts and hostname, a clean
environment, libvirt's default URI), reading psci-hook's events from the host's syslog file
(`--log`: the hosts have no journal). Each broken state is made the way it happens on a real host
and must give its named line, a fix, and exit 1 exactly when a line is FAIL; `--json` must say the
same. The fix is then applied where it can be, and the line must clear.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.harness import TwoHosts
from tests.e2e.product import (
    HOOK_PATH,
    Watch,
    config_text,
    configure,
    profile_data,
    psci_hook,
    psci_hook_command,
)

pytestmark = pytest.mark.e2e


class Report:
    """One doctor run: its exit status, its text lines and its JSON checks (run twice)."""

    def __init__(self, hosts: TwoHosts, host: str) -> None:
        log = str(hosts.hostdir(host) / "syslog")
        text = hosts.run_in(host, psci_hook_command(), "doctor", "--log", log, timeout=120)
        data = hosts.run_in(host, psci_hook_command(), "doctor", "--json", "--log", log,
                            timeout=120)
        assert text.stderr == "" and data.stderr == "", (text.stderr, data.stderr)
        self.rc, self.text = text.rc, text.stdout
        self.json_rc = data.rc
        self.data = json.loads(data.stdout)
        self.checks: list[dict[str, Any]] = self.data["checks"]
        print(f"psci-hook doctor on host-{host} (exit {self.rc}):\n{self.text}")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.checks if c["check"] == name]

    def one(self, name: str) -> dict[str, Any]:
        found = self.named(name)
        assert len(found) == 1, (name, self.text)
        return found[0]

    def failed(self) -> list[str]:
        return [c["check"] for c in self.checks if c["status"] == "FAIL"]

    def assert_consistent(self) -> None:
        """Exit 1 exactly when a check failed; the text shows each JSON check, with its fix."""
        assert self.rc == self.json_rc
        assert self.rc == (1 if self.failed() else 0), self.text
        assert self.data["failed"] == bool(self.failed())
        lines = self.text.splitlines()
        for check in self.checks:
            head = [ln for ln in lines if ln.startswith(f"{check['status']:<4}  {check['check']} ")]
            assert any(check["summary"] in ln for ln in head), (check, self.text)
            if check["status"] == "ok":
                assert check["fix"] is None
            else:
                assert check["fix"], check
                assert f"fix: {check['fix']}" in self.text
        counts = [sum(c["status"] == s for c in self.checks) for s in ("FAIL", "warn", "ok")]
        assert lines[-1] == f"{counts[0]} FAIL, {counts[1]} warn, {counts[2]} ok"


@pytest.fixture
def watch(hosts: TwoHosts) -> Iterator[Any]:
    started: list[Watch] = []

    def start(host: str) -> Watch:
        started.append(Watch(hosts, host))
        return started[-1]

    yield start
    for w in started:
        w.stop()


@pytest.fixture(autouse=True)
def restore_hosts(hosts: TwoHosts) -> Iterator[None]:
    """Whatever a test broke: the hook as `psci-hook install` writes it, no cached profile."""
    yield
    for spec in hosts.specs.values():
        hook = hosts.path(spec, HOOK_PATH)
        if hook.is_symlink() or not os.access(hook, os.X_OK):
            with contextlib.suppress(FileNotFoundError):
                hook.unlink()
        res = psci_hook("install", "--force", "--no-units", "--root", str(hosts.hostdir(spec)))
        assert res.returncode == 0, res.stderr
        for name in ("host.json", "capabilities.xml", "qemu-version"):
            with contextlib.suppress(FileNotFoundError):
                hosts.path(spec, f"/run/psci-hook/{name}").unlink()


def recorded_guest(hosts: TwoHosts, w: Watch, host: str, name: str) -> None:
    hosts.define_and_start(host, name)
    w.wait_event(lambda e: e.get("domain") == name and e["action"] == "recorded", 30,
                 f"the watcher to record {name}")


def test_a_healthy_host(hosts: TwoHosts, guest_name: str, watch: Any) -> None:
    configure(hosts, "a", "6.1__a57")
    recorded_guest(hosts, watch("a"), "a", guest_name)
    report = Report(hosts, "a")
    report.assert_consistent()
    assert report.rc == 0, report.text
    assert report.one("hook file")["status"] == "ok"
    interpreter = report.one("hook interpreter")
    assert interpreter["status"] == "ok"
    assert interpreter["details"]["version"] == psci_hook("--version").stdout.split()[-1]
    first = report.one("hook order")["details"]["first"]
    assert first == ["/etc/libvirt/hooks/qemu.d/10-e2e-probe"]
    daemon = report.one("daemon")
    assert daemon["status"] == "ok"
    assert daemon["details"]["daemon"] == "libvirtd"
    assert daemon["details"]["pid"] == hosts.daemon_pid("a")  # this host's, not host-b's
    assert report.one("host profile")["status"] == "ok"
    assert report.one("host profile")["details"]["source"] == "/etc/psci-hook/host.json"
    assert report.one("watcher")["status"] == "ok"
    assert "connected" in report.one("watcher")["summary"]
    guests = report.one("guests")
    assert guests["status"] == "ok" and guests["details"]["running"] == 1
    assert report.named(f"guest {guest_name}") == []
    assert report.one("logging")["status"] == "ok"
    # The defaults leave unrecorded guests unenforced: named, not failed.
    assert report.one("policy unrecorded")["status"] == "warn"


def test_the_watcher_stopped(hosts: TwoHosts, watch: Any) -> None:
    configure(hosts, "a", "6.1__a57")
    w = watch("a")
    assert Report(hosts, "a").one("watcher")["status"] == "ok"
    assert w.stop() == 0
    report = Report(hosts, "a")
    report.assert_consistent()
    watcher = report.one("watcher")
    assert watcher["status"] == "FAIL", report.text
    assert "psci-hook watch is not running" in watcher["summary"]
    assert "psci-hook watch" in watcher["fix"]
    assert report.rc == 1


def test_an_unrecorded_guest(hosts: TwoHosts, guest_name: str, watch: Any) -> None:
    configure(hosts, "a", "6.1__a57")
    hosts.define_and_start("a", guest_name)  # no watcher: nothing records it
    report = Report(hosts, "a")
    report.assert_consistent()
    guest = report.one(f"guest {guest_name}")
    assert guest["status"] == "FAIL"
    assert "without a psci-hook record" in guest["summary"]
    assert guest["fix"] == f"psci-hook record {guest_name}"
    assert report.rc == 1
    # The fix, run as given, clears the line; a watcher started now keeps it so.
    fixed = hosts.run_in("a", psci_hook_command(), *guest["fix"].split()[1:])
    assert fixed.rc == 0, fixed.stderr
    watch("a")
    after = Report(hosts, "a")
    after.assert_consistent()
    assert after.named(f"guest {guest_name}") == []
    assert after.rc == 0, after.text


def test_a_symlinked_hook(hosts: TwoHosts, watch: Any) -> None:
    configure(hosts, "a", "6.1__a57")
    watch("a")
    hook = hosts.path("a", HOOK_PATH)
    real = hosts.path("a", "/etc/psci-hook/50-psci-hook")
    shutil.move(str(hook), str(real))
    hook.symlink_to("/etc/psci-hook/50-psci-hook")
    report = Report(hosts, "a")
    report.assert_consistent()
    line = report.one("hook file")
    assert line["status"] == "FAIL"
    assert "is a symlink to /etc/psci-hook/50-psci-hook" in line["summary"]
    assert line["fix"] == "psci-hook install --force"
    assert report.rc == 1
    real.unlink()
    res = psci_hook("install", "--force", "--no-units", "--root", str(hosts.hostdir("a")))
    assert res.returncode == 0, res.stderr
    after = Report(hosts, "a")
    assert after.one("hook file")["status"] == "ok"
    # Written after libvirtd started, but 10-e2e-probe was there before: libvirt runs it.
    assert after.one("daemon")["status"] == "ok"
    assert "10-e2e-probe was already there" in after.one("daemon")["summary"]
    assert after.rc == 0, after.text


def test_an_interpreter_that_cannot_import_the_package(hosts: TwoHosts, watch: Any) -> None:
    configure(hosts, "a", "6.1__a57")
    watch("a")
    # Debian's python3 without the package: what a `pip install --user` leaves the hook with.
    assert exit_status("/usr/bin/python3", "-I", "-c", "import psci_hook") != 0
    hook = hosts.path("a", HOOK_PATH)
    body = hook.read_bytes().split(b"\n", 1)[1]
    hook.write_bytes(b"#!/usr/bin/python3 -I\n" + body)
    report = Report(hosts, "a")
    report.assert_consistent()
    line = report.one("hook interpreter")
    assert line["status"] == "FAIL"
    assert "/usr/bin/python3 -I cannot import psci_hook" in line["summary"]
    assert "No module named 'psci_hook'" in line["details"]["error"]
    assert line["fix"].startswith("psci-hook install --force")
    assert report.rc == 1


def exit_status(*argv: str) -> int:
    return subprocess.run(list(argv), capture_output=True, env={"PATH": "/usr/bin:/bin"},
                          cwd="/", check=False).returncode


def test_a_stale_boot_time_cache(hosts: TwoHosts, watch: Any) -> None:
    # No [host] profile: the hook reads /run/psci-hook/host.json, left from another boot.
    config = "\n".join(ln for ln in config_text().splitlines()
                       if not ln.startswith(("profile =", "#")))
    hosts.set_config("a", config + "\n")
    stale = {**profile_data("6.1__a57"), "boot_id": "00000000-0000-4000-8000-000000000000",
             "kernel_release": os.uname().release}
    hosts.path("a", "/run/psci-hook/host.json").write_text(json.dumps(stale))
    watch("a")
    report = Report(hosts, "a")
    report.assert_consistent()
    line = report.one("host profile")
    assert line["status"] == "FAIL"
    assert "is from another boot" in line["summary"]
    assert "PROFILE_UNAVAILABLE" in line["summary"]
    assert line["details"]["kind"] == "stale"
    assert "psci-hook probe --write" in line["fix"]
    assert report.rc == 1


def test_a_hook_installed_but_the_daemon_not_reloaded(hosts: TwoHosts, watch: Any) -> None:
    """libvirtd started with no qemu hook at all; then the hook is written. Outside systemd a
    SIGHUP leaves no trace, so doctor cannot tell a reload from none: it warns, names the
    reload as the fix, and says why it cannot know."""
    configure(hosts, "b", "6.12__a57")
    qemu_d = hosts.path("b", "/etc/libvirt/hooks/qemu.d")
    aside = hosts.hostdir("b") / "qemu.d-aside"
    qemu_d.rename(aside)
    qemu_d.mkdir()
    try:
        hosts.restart_daemon("b")
        for script in sorted(aside.iterdir()):
            shutil.copy(script, qemu_d / script.name)  # written while the daemon runs
        watch("b")
        report = Report(hosts, "b")
        report.assert_consistent()
        line = report.one("daemon")
        assert line["status"] == "warn", report.text
        assert "before the hook was written" in line["summary"]
        assert "SIGHUP leaves no trace" in line["summary"]
        assert line["fix"].startswith(f"kill -HUP {hosts.daemon_pid('b')}")
        assert report.rc == 0, report.text
    finally:
        for script in aside.iterdir():
            script.unlink()
        aside.rmdir()
        hosts.reload("b")


def test_the_installed_profile_file_is_the_one_the_hook_reads(hosts: TwoHosts) -> None:
    """A broken [host] profile file: FAIL, naming the file."""
    hosts.set_config("a", config_text())
    hosts.path("a", "/etc/psci-hook/host.json").write_text("{")
    report = Report(hosts, "a")
    report.assert_consistent()
    line = report.one("host profile")
    assert line["status"] == "FAIL"
    assert "[host] profile = /etc/psci-hook/host.json" in line["summary"]
    assert report.rc == 1

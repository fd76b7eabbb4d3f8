"""refresh, record and watch against libvirt's own in-process test driver (test:///default:
a real libvirt connection, no daemon), through main(argv, env).

The test driver keeps one shared state per process, so each test removes the domains it made.
Real daemons and QEMU guests: tests/e2e/test_record_watch.py.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import libvirt  # python3-libvirt, from scripts/deps/test.apt
import pytest

from psci_hook import libvirt_client
from psci_hook.cli import main
from psci_hook.commands.watch import Watcher
from psci_hook.domainxml import parse_domain
from psci_hook.environment import Environment
from psci_hook.profile import bundled_profiles
from psci_hook.record import GuestRecord, read_record
from psci_hook.status import ExitStatus
from tests.helpers import TEST_URI
from tests.record.recordtools import booted, profile


def domain_xml(name: str, arch: str = "aarch64", record: GuestRecord | None = None) -> str:
    metadata = ""
    if record is not None:
        from psci_hook.record import record_xml

        metadata = f"<metadata>{record_xml(record, '    ')}</metadata>"
    return (f"<domain type='test'><name>{name}</name>{metadata}<memory unit='KiB'>65536"
            f"</memory><vcpu>1</vcpu><os><type arch='{arch}' machine='virt'>hvm</type></os>"
            "</domain>")


@pytest.fixture
def env_for(tmp_path: Path) -> Any:
    config = tmp_path / "psci-hook.conf"
    config.write_text(f"[hook]\ndomain_types = test\n[host]\nprofile = "
                      f"{bundled_profiles()['6.1__a76']}\n[log]\ntarget = none\n")
    run_dir = tmp_path / "run"

    def make(*argv: str) -> Environment:
        return Environment.for_test(["psci-hook", *argv], run_dir=run_dir,
                                    environ={"PSCI_HOOK_CONFIG": str(config)})

    return make


def run(env: Environment) -> tuple[int, str, str]:
    status = main(env=env)
    return (status, env.stdout.getvalue().decode(),  # type: ignore[attr-defined]
            env.stderr.getvalue())  # type: ignore[attr-defined]


def record_of(dom: Any, inactive: bool = False) -> GuestRecord | None:
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
    return read_record(parse_domain(dom.XMLDesc(flags).encode()).root)


# ---------------------------------------------------------------------------------------------
# refresh
# ---------------------------------------------------------------------------------------------


def test_refresh_caches_capabilities_and_the_hypervisor_version(env_for: Any) -> None:
    env = env_for("refresh", "--uri", TEST_URI)
    status, out, err = run(env)
    assert (status, err) == (ExitStatus.OK, "")
    caps = (env.run_dir / "capabilities.xml").read_text()
    assert caps.startswith("<capabilities>") and caps.endswith("</capabilities>\n")
    version = libvirt.open(TEST_URI).getVersion()
    assert (env.run_dir / "qemu-version").read_text() == \
        libvirt_client.version_text(version) + "\n"
    assert out.count("wrote ") == 2
    assert not list(env.run_dir.glob(".*.tmp"))  # atomic: no temporary file left


def test_refresh_without_a_daemon_is_one_line_and_status_20(env_for: Any, tmp_path: Path
                                                           ) -> None:
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such-socket"
    for command in ("refresh", "record"):
        argv = [command, "--uri", uri] + (["--all"] if command == "record" else [])
        status, out, err = run(env_for(*argv))
        assert status == ExitStatus.LIBVIRT_UNAVAILABLE == 20
        assert err.startswith(f"psci-hook: {command}: cannot connect to libvirt (")
        assert err.count("\n") == 1 and out == ""


def test_without_libvirt_python_status_20(env_for: Any, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)  # import libvirt raises ImportError
    monkeypatch.setattr(libvirt_client, "_module", None)
    for argv in (["refresh"], ["record", "--all"], ["watch"]):
        status, _, err = run(env_for(*argv))
        assert status == ExitStatus.LIBVIRT_UNAVAILABLE, argv
        assert "libvirt-python is not installed" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------------------------


def test_record_all_records_unrecorded_guests_and_says_what_it_skipped(conn: Any,
                                                                       env_for: Any) -> None:
    """The test driver, like QEMU's, says its domains cold-booted (RUNNING_BOOTED): a record
    from elsewhere did not come with the state, it survived a cold boot, and is replaced."""
    fresh = conn.defineXML(domain_xml("rec-fresh"))
    fresh.create()
    foreign = conn.defineXML(domain_xml("rec-foreign", record=booted("5.10__a57", "host-a")))
    foreign.create()
    assert foreign.state() == [1, 1]  # running, booted
    conn.defineXML(domain_xml("rec-off"))  # not running: not listed by --all
    status, out, err = run(env_for("record", "--all", "--uri", TEST_URI))
    assert (status, err) == (ExitStatus.OK, "")
    lines = dict(line.split(": ", 1) for line in out.splitlines()[:-1])
    assert lines["rec-fresh"].startswith("recorded: this host's values: PSCI_VERSION=1.1")
    assert lines["rec-fresh"].endswith("[wrote the live and persistent definitions]")
    assert lines["rec-foreign"].startswith(
        "replaced: cold-booted on this host after its record was written (libvirt's state "
        "reason: booted, QEMU process start unknown): the record (booted on host-a")
    assert lines["test"].startswith("skipped: not an aarch64 or armv7l domain")  # the driver's own
    assert "rec-off" not in lines
    assert out.splitlines()[-1] == "3 domains: 1 recorded, 1 replaced, 1 skipped"
    for dom in (fresh, foreign):
        live, config = record_of(dom), record_of(dom, True)
        assert live is not None and live.origin.event == "booted" and live.vouched
        assert live.state.registers == profile("6.1__a76").registers
        assert config == live.with_status("persistent-copy")


def test_record_force_replaces_a_record_from_elsewhere(conn: Any, env_for: Any) -> None:
    dom = conn.defineXML(domain_xml("rec-force", record=booted("5.10__a57", "host-a",
                                                               event="migrated")))
    dom.create()
    status, out, _ = run(env_for("record", "rec-force", "--force", "--uri", TEST_URI))
    assert status == ExitStatus.OK
    assert out.startswith("rec-force: replaced: ")
    record = record_of(dom)
    assert record is not None and record.origin.event == "booted"
    assert record.origin.host != "host-a"


def test_record_named_domains_missing_or_shut_off(conn: Any, env_for: Any) -> None:
    conn.defineXML(domain_xml("rec-shutoff"))
    status, out, err = run(env_for("record", "rec-shutoff", "rec-nosuch", "--uri", TEST_URI))
    assert status == ExitStatus.NOT_ALL_RECORDED == 5  # some domains could not be recorded
    assert "rec-shutoff: skipped: not running" in out
    assert "rec-nosuch: failed: no domain named 'rec-nosuch'" in out
    assert err == ""


def test_record_json_says_what_the_text_says(conn: Any, env_for: Any) -> None:
    """--json: one document with each domain's event as the log gets it, the counts and the
    exit status; nothing else on stdout."""
    dom = conn.defineXML(domain_xml("rec-json"))
    dom.create()
    conn.defineXML(domain_xml("rec-json-off"))
    argv = ("record", "rec-json", "rec-json-off", "rec-json-nosuch", "--uri", TEST_URI)
    status, out, err = run(env_for(*argv, "--json"))
    assert (status, err) == (ExitStatus.NOT_ALL_RECORDED, "")
    report = json.loads(out)
    assert out.count("\n") == 1
    assert report["exit_status"] == 5
    assert report["counts"] == {"recorded": 1, "skipped": 1, "failed": 1}
    by_name = {event["domain"]: event for event in report["domains"]}
    assert by_name["rec-json-off"]["action"] == "skipped"
    assert by_name["rec-json-nosuch"]["action"] == "failed"
    assert by_name["rec-json"]["written"] == ["live", "persistent"]
    assert by_name["rec-json"]["guest"].startswith("PSCI_VERSION=1.1")
    # The same run as text: the record is current now, the other two lines the same.
    text_status, text, _ = run(env_for(*argv))
    assert text_status == status
    assert text.splitlines()[-1] == "3 domains: 1 unchanged, 1 skipped, 1 failed"


def test_record_errors_as_json(env_for: Any, tmp_path: Path) -> None:
    for argv, status, words in (
            (["record", "--json"], ExitStatus.BAD_INPUT, "name one or more domains"),
            (["record", "--all", "--json", "--uri",
              f"qemu+unix:///system?socket={tmp_path}/no-such-socket"],
             ExitStatus.LIBVIRT_UNAVAILABLE, "cannot connect to libvirt")):
        got, out, err = run(env_for(*argv))
        assert got == status
        report = json.loads(out)
        assert report["exit_status"] == int(status) and words in report["error"]
        assert err.startswith("psci-hook: record: ") and err.count("\n") == 1


def test_record_usage(env_for: Any) -> None:
    for argv in (["record"], ["record", "vm1", "--all"]):
        status, _, err = run(env_for(*argv))
        assert status == ExitStatus.BAD_INPUT
        assert "name one or more domains, or give --all" in err


def test_record_without_a_host_profile_says_why(tmp_path: Path) -> None:
    config = tmp_path / "psci-hook.conf"
    config.write_text(f"[host]\nprofile = {tmp_path}/missing.json\n")
    env = Environment.for_test(["psci-hook", "record", "--all", "--uri", TEST_URI],
                               environ={"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    status, _, err = run(env)
    assert status == ExitStatus.INTERNAL_ERROR
    assert err.startswith("psci-hook: record: no usable host profile: ")
    assert err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# watch (in a thread; the real service with daemons and signals is in tests/e2e)
# ---------------------------------------------------------------------------------------------


def test_watch_records_a_guest_as_it_boots(conn: Any, env_for: Any) -> None:
    env = env_for("watch", "--uri", TEST_URI)
    watcher = Watcher(env, TEST_URI, narrate=True)
    thread = threading.Thread(target=watcher.run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not (env.run_dir / "qemu-version").exists():  # connected and refreshed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stale = booted("5.10__a57", "host-a", event="migrated")
        dom = conn.defineXML(domain_xml("watch-boot", record=stale))
        started = time.monotonic()
        dom.create()
        while (record_of(dom) or stale).origin.host == "host-a":
            assert time.monotonic() - started < 2, "no record within 2 s"
            time.sleep(0.02)
        for inactive in (False, True):
            record = record_of(dom, inactive)
            assert record is not None and record.origin.event == "booted"
            assert record.state.registers == profile("6.1__a76").registers
    finally:
        watcher.stop.set()
        thread.join(5)
    assert not thread.is_alive()
    said = env.stderr.getvalue().splitlines()  # type: ignore[attr-defined]
    assert said[:2] == ["psci-hook: watch: watching libvirt lifecycle events",
                        "psci-hook: watch: connected to libvirt on "
                        f"{libvirt.open(TEST_URI).getHostname()}"]
    assert any(line.endswith(" running domain reconciled") or
               line.endswith(" running domains reconciled") for line in said)
    assert any(line.startswith("psci-hook: watch: booted: watch-boot: replaced: ")
               for line in said), said
    assert said[-1] == "psci-hook: watch: stopped (SIGTERM or SIGINT)"


@pytest.mark.parametrize(("argv", "environ", "says"), [
    ([], {}, True),  # by hand
    ([], {"INVOCATION_ID": "0f" * 16}, False),  # under systemd
    (["--verbose"], {"INVOCATION_ID": "0f" * 16}, True),
    (["--quiet"], {}, False),
])
def test_watch_talks_on_stderr_by_hand_and_under_systemd_only_when_asked(
        argv: list[str], environ: dict[str, str], says: bool) -> None:
    from psci_hook.cli import build_parser
    from psci_hook.commands.watch import narrates

    parser, _ = build_parser(["watch", *argv])
    args = parser.parse_args(["watch", *argv])
    assert narrates(args, environ) is says


def test_incoming_migrations_are_acted_on_when_they_end(env_for: Any) -> None:
    """STARTED_MIGRATED comes before any memory is copied: the watcher waits for DEFINED
    (--persistent) or RESUMED; a STOPPED in between (a failed migration) forgets it."""
    watcher = Watcher(env_for("watch"), TEST_URI)
    acted: list[tuple[str, str, str]] = []
    watcher._act = lambda _client, item, trigger: acted.append(  # type: ignore[method-assign]
        (item.name, item.event, trigger))
    Lifecycle = libvirt_client.Lifecycle
    for name, event, detail in [
            ("m1", "started", "migrated"), ("m1", "defined", "1"), ("m1", "resumed", "migrated"),
            ("m2", "started", "migrated"), ("m2", "resumed", "migrated"),
            ("m3", "started", "migrated"), ("m3", "stopped", "5"), ("m3", "resumed", "unpaused"),
            ("b1", "started", "booted"), ("b1", "resumed", "unpaused"),
            ("r1", "started", "restored"), ("s1", "started", "from-snapshot")]:
        watcher._handle(None, Lifecycle(f"uuid-{name}", name, event, detail))  # type: ignore[arg-type]
    assert acted == [("m1", "defined", "migrated"), ("m2", "resumed", "migrated"),
                     ("b1", "started", "booted"), ("r1", "started", "restored"),
                     ("s1", "started", "from-snapshot")]
    assert watcher.arriving == {}


def test_the_qemu_version_falls_back_to_the_aarch64_emulator(tmp_path: Path) -> None:
    """libvirt asks the host architecture's emulator; on an x86 machine running aarch64 guests
    under TCG there is none, and the aarch64 emulator of the capabilities is asked instead."""
    from psci_hook.libvirt_cache import aarch64_emulator, emulator_version

    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text("#!/bin/sh\necho 'QEMU emulator version 9.2.4 (Debian 1:9.2.4+ds-1)'\n")
    fake.chmod(0o755)
    caps = (f"<capabilities><guest><os_type>hvm</os_type><arch name='x86_64'><emulator>/nope"
            f"</emulator></arch></guest><guest><os_type>hvm</os_type><arch name='aarch64'>"
            f"<emulator>{fake}</emulator></arch></guest></capabilities>")
    assert aarch64_emulator(caps) == str(fake)
    assert emulator_version(str(fake)) == "9.2.4"
    assert aarch64_emulator("<capabilities/>") is None
    assert aarch64_emulator("<capabilities") is None
    assert emulator_version(str(tmp_path / "missing")) is None


def test_a_bug_in_one_domain_is_that_domains_failure_not_the_services_end(
        env_for: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from psci_hook.commands import watch as watch_mod

    logged: list[Any] = []
    monkeypatch.setattr(watch_mod, "log_plan", lambda _ctx, plan: logged.append(plan))

    def broken(*_args: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(watch_mod, "record_domain", broken)
    watcher = Watcher(env_for("watch"), TEST_URI)
    watcher._record(None, None, "booted", None, "vm9")  # type: ignore[arg-type]
    assert [(p.domain, p.action, p.reason) for p in logged] == [
        ("vm9", "failed", "internal error: KeyError: 'boom'")]

    def gone(*_args: Any) -> None:
        raise libvirt_client.LibvirtUnavailable("lost the libvirt connection")

    monkeypatch.setattr(watch_mod, "record_domain", gone)
    with pytest.raises(libvirt_client.LibvirtUnavailable):
        watcher._record(None, None, "booted", None, "vm9")  # type: ignore[arg-type]


def test_a_configuration_mistake_does_not_stop_recording(conn: Any, tmp_path: Path) -> None:
    """record reads the configuration as the hook does: the settings it could read, defaults
    for the rest, each problem said on stderr. Refusing to run would leave guests without
    records, which the hook then allows unchecked under the default policy."""
    config = tmp_path / "psci-hook.conf"
    config.write_text(f"[hook]\ndomain_types = test\nunrecoreded = veto\n[host]\nprofile = "
                      f"{bundled_profiles()['6.1__a76']}\n[log]\ntarget = none\n")
    dom = conn.defineXML(domain_xml("rec-typo"))
    dom.create()
    env = Environment.for_test(["psci-hook", "record", "rec-typo", "--uri", TEST_URI],
                               run_dir=tmp_path / "run",
                               environ={"PSCI_HOOK_CONFIG": str(config)})
    status, out, err = run(env)
    assert status == ExitStatus.OK
    assert out.startswith("rec-typo: recorded: ")
    assert err.count("\n") == 1 and "unrecoreded" in err and "config --check" in err
    record = record_of(dom)
    assert record is not None and record.state.registers == profile("6.1__a76").registers

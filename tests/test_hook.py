"""The hook as libvirt runs it: a subprocess with libvirt's argv, environment and stdin."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.hook import main
from psci_hook.profile import HostProfile
from psci_hook.record import read_record
from psci_hook.status import ExitStatus
from tests.hooktools import (
    DOMAIN,
    CollectingSink,
    SyslogListener,
    install_hook,
    profile_file,
    run_hook,
    stamped,
    write_config,
)

IGNORED = [
    ["prepare", "begin", "-"], ["start", "begin", "-"], ["started", "begin", "-"],
    ["stopped", "end", "-"], ["release", "end", "shutdown"], ["reconnect", "begin", "-"],
    ["attach", "begin", "-"], ["frobnicate", "begin", "-"], ["migrate", "end", "-"],
]


@pytest.fixture
def hook(tmp_path: Path) -> Path:
    return install_hook(tmp_path)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[SyslogListener]:
    sl = SyslogListener(tmp_path / "log")
    yield sl
    sl.close()


def events(listener: SyslogListener) -> list[dict[str, object]]:
    out = []
    for message in listener.messages():
        assert message.startswith("<"), message
        tag, _, body = message.partition(": ")
        assert tag.endswith(">psci-hook")
        out.append(json.loads(body))
    return out


@pytest.mark.parametrize("args", IGNORED)
def test_ignored_operations_exit_0_silently_even_with_a_broken_configuration(
        hook: Path, tmp_path: Path, args: list[str], listener: SyslogListener) -> None:
    config = tmp_path / "broken.conf"
    config.write_text("[hook\nthis is not INI")
    result = run_hook(hook, ["vm1", *args], b"<domain garbage" * 10000, config)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", "")
    assert listener.messages() == []


def test_allow_annotates_with_the_state_after_migration(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile],
        listener: SyslogListener) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.12__a76"]),
                          listener.path)
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert result.returncode == 0 and result.stderr == ""
    record = read_record(parse_domain(result.stdout).root)
    assert record is not None
    names = {k: v for k, v in GuestState.booted_on(bundled["6.12__a76"]).registers.items()}
    assert record.state.registers == {**names, **{
        k: v for k, v in bundled["6.1__a57"].registers.items()
        if k in (0x6030000000140000, 0x6030000000160000, 0x6030000000160001,
                 0x6030000000160002)}}
    assert record.origin.event == "migrated"
    assert record.origin.kernel == bundled["6.12__a76"].kernel_release
    assert [h.verdict for h in record.history] == ["allow"]
    assert "WA_RATCHET" in record.history[0].codes
    (event,) = events(listener)
    assert event["decision"] == "allow" and event["op"] == "migrate"
    assert event["domain"] == "vm1" and "WA_RATCHET" in event["codes"]  # type: ignore[operator]
    text = json.dumps(event)
    assert "<domain" not in text and "s3cret" not in text


def test_output_differs_from_input_only_inside_our_record(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.1__a76"]),
                          None)
    out = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config).stdout
    start = domain.index(b"<psci:record")
    end_in, end_out = (d.index(b"</psci:record>") + 14 for d in (domain, out))
    assert out[:start] == domain[:start] and out[end_out:] == domain[end_in:]


def test_veto_prints_one_line_and_nothing_on_stdout(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile],
        listener: SyslogListener) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["5.10__a57"]),
                          listener.path)
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert result.returncode == ExitStatus.VETO and result.stdout == b""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("psci-hook: VETO CPREG_COUNT domain vm1: ")
    assert "after copying all guest memory" in result.stderr
    (event,) = events(listener)
    assert event["decision"] == "veto"
    assert event["codes"][:3] == ["CPREG_COUNT", "REG_MISSING",  # type: ignore[index]
                                  "PSCI_UNSUPPORTED"]


def test_restore_is_judged_by_the_same_rules(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a76"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.1__a57"]),
                          None)
    result = run_hook(hook, ["vm1", "restore", "begin", "-"], domain, config)
    assert result.returncode == 1
    assert "VETO WA_LEVEL_TOO_HIGH domain vm1: SMCCC_ARCH_WORKAROUND_1 guest=NOT_REQUIRED " \
        "destination=NOT_AVAIL" in result.stderr


def test_annotation_off_prints_nothing(hook: Path, tmp_path: Path,
                                       bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.12__a57"]),
                          None, extra_hook="annotate = no")
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", "")


@pytest.mark.parametrize(("setting", "status"), [("allow", 0), ("veto", 1)])
def test_unrecorded_guest_follows_the_policy(hook: Path, tmp_path: Path,
                                             bundled: dict[str, HostProfile],
                                             listener: SyslogListener, setting: str,
                                             status: int) -> None:
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.1__a57"]),
                          listener.path, extra_hook=f"unrecorded = {setting}")
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], DOMAIN, config)
    assert result.returncode == status and result.stdout == b""
    assert ("VETO NO_RECORD" in result.stderr) is (setting == "veto")
    (event,) = events(listener)
    assert event["codes"] == ["NO_RECORD"]


@pytest.mark.parametrize(("status", "why"), [
    ("persistent-copy", "persistent definition's copy from the guest's last run"),
    ("unverified", "could not tell whether the guest cold-booted after it was written"),
])
@pytest.mark.parametrize("setting", ["allow", "veto"])
def test_a_record_that_does_not_vouch_for_live_state_is_not_judged(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile],
        listener: SyslogListener, status: str, why: str, setting: str) -> None:
    """A shut-off guest's record (what `virsh migrate --offline` sends) or one the reconcile
    could not vouch for: values that would be vetoed (6.12 -> 5.10) are not judged; the policy
    decides as for a guest without a record, and says why."""
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"])).replace(
        b' version="1"', f' version="1" status="{status}"'.encode(), 1)
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["5.10__a57"]),
                          listener.path, extra_hook=f"unrecorded = {setting}")
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert result.stdout == b""
    assert result.returncode == (ExitStatus.VETO if setting == "veto" else ExitStatus.OK)
    if setting == "veto":
        assert result.stderr.startswith("psci-hook: VETO NO_RECORD domain vm1: ")
        assert why in result.stderr
    (event,) = events(listener)
    assert event["codes"] == ["NO_RECORD"] and why in event["record_not_used"]


@pytest.mark.parametrize("domain", [
    DOMAIN.replace(b"type='kvm'", b"type='qemu'"),
    DOMAIN.replace(b"arch='aarch64'", b"arch='x86_64'"),
])
def test_other_domains_are_left_alone(hook: Path, tmp_path: Path, domain: bytes,
                                      bundled: dict[str, HostProfile]) -> None:
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["5.10__a57"]),
                          None, extra_hook="unrecorded = veto")
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", "")


def test_warn_mode_allows_and_says_what_it_would_have_vetoed(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile],
        listener: SyslogListener) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["5.10__a57"]),
                          listener.path, extra_hook="mode = warn")
    result = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain, config)
    assert result.returncode == 0 and result.stdout == b""
    (event,) = events(listener)
    assert event["decision"] == "warn" and "WOULD VETO" in str(event["message"])


def test_a_dead_log_socket_changes_nothing_but_the_log(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile],
        listener: SyslogListener) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    profile = profile_file(tmp_path, bundled["6.12__a57"])
    alive = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain,
                     write_config(tmp_path / "a.conf", profile, listener.path))
    dead = run_hook(hook, ["vm1", "migrate", "begin", "-"], domain,
                    write_config(tmp_path / "d.conf", profile, tmp_path / "nobody-listens"))
    assert len(events(listener)) == 1

    def without_times(data: bytes) -> bytes:
        import re

        return re.sub(rb'time="[^"]*"', b"", data)

    assert (alive.returncode, alive.stderr) == (dead.returncode, dead.stderr) == (0, "")
    assert without_times(alive.stdout) == without_times(dead.stdout) != b""



@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_exactly_one_event_per_invocation_in_process(
        tmp_path: Path, bundled: dict[str, HostProfile], op: str) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.12__a57"]),
                          None)
    env = Environment.for_test(["hook", "vm1", op, "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)})
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert len(sink.events) == 1 and sink.events[0]["op"] == op
    assert env.stdout.getvalue().startswith(b"<domain")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("cached", "generation"), [(None, "legacy"), ("7.2.22", "legacy"),
                                                    ("11.1.3", "tolerant")])
def test_the_qemu_version_cached_by_refresh_sets_the_generation(
        tmp_path: Path, bundled: dict[str, HostProfile], cached: str | None,
        generation: str) -> None:
    if cached is not None:
        (tmp_path / "qemu-version").write_text(cached + "\n")
    assert qemu_generation_of_a_migration(tmp_path, bundled) == generation


def qemu_generation_of_a_migration(run_dir: Path, bundled: dict[str, HostProfile]) -> object:
    """The QEMU generation the hook's event names for an allowed migration (6.1 to 6.12, a57),
    with refresh's cache files in ``run_dir``."""
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = write_config(run_dir / "c.conf", profile_file(run_dir, bundled["6.12__a57"]), None)
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=run_dir)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    return sink.events[0]["qemu_generation"]


@pytest.mark.parametrize(("op", "guest", "destination", "first", "others", "consequence"), [
    ("migrate", "6.12__a57", "5.10__a57", "CPREG_COUNT", " (+19: REG_MISSING x18, "
     "PSCI_UNSUPPORTED) ", "(the destination would refuse this only after copying all guest "
     "memory)"),
    ("restore", "6.12__a57", "5.10__a57", "CPREG_COUNT", " (+19: REG_MISSING x18, "
     "PSCI_UNSUPPORTED) ", "(QEMU would refuse this only after reading all guest memory from "
     "the saved image)"),
    ("migrate", "6.1__max", "6.1__a57", "FEATURE_MISSING", " (+",
     "(QEMU would fail to create the vCPU when it starts here, before any memory moves)"),
])
def test_the_veto_line_names_every_blocking_code_and_a_true_consequence(
        hook: Path, tmp_path: Path, bundled: dict[str, HostProfile], op: str, guest: str,
        destination: str, first: str, others: str, consequence: str) -> None:
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled[destination]),
                          None, "rehearse = no")
    xml = stamped(DOMAIN, GuestState.booted_on(bundled[guest]))
    result = run_hook(hook, ["vm1", op, "begin", "-"], xml, config)
    assert result.returncode == ExitStatus.VETO and result.stdout == b""
    line = result.stderr
    assert line.startswith(f"psci-hook: VETO {first} domain vm1: ") and line.count("\n") == 1
    assert others in line and line.endswith(f"{consequence}\n"), line


@pytest.mark.parametrize(("version", "build", "generation"), [
    ("7.2.22", "tolerant", "tolerant"),  # a distribution backport (RHEL-174858)
    ("11.1.3", "legacy", "legacy"),
    ("7.2.22", None, "legacy"),
])
def test_the_generation_read_from_the_qemu_build_beats_the_version_number(
        tmp_path: Path, bundled: dict[str, HostProfile], version: str, build: str | None,
        generation: str) -> None:
    (tmp_path / "qemu-version").write_text(version + "\n")
    if build is not None:
        (tmp_path / "qemu-generation").write_text(f"{build} (how refresh knows)\n")
    assert qemu_generation_of_a_migration(tmp_path, bundled) == generation


def _run_in_process(tmp_path: Path, bundled: dict[str, HostProfile], domain: bytes,
                    unrecorded: str) -> tuple[ExitStatus, str, dict[str, object]]:
    """The hook in process (so that mutation testing sees it) at `migrate begin` on a 6.1 a57
    host: its exit status, its stderr and its one event."""
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, bundled["6.1__a57"]),
                          None, extra_hook=f"unrecorded = {unrecorded}")
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    status = main(env, sink)
    assert env.stdout.getvalue() == b""  # type: ignore[attr-defined]
    (event,) = sink.events
    return status, env.stderr.getvalue(), event  # type: ignore[attr-defined]


def test_the_lines_and_events_of_a_guest_without_a_record(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """What libvirt shows and the journal keeps for a guest without a record: the veto line
    under unrecorded = veto, the policy named in the event under allow."""
    status, stderr, event = _run_in_process(tmp_path, bundled, DOMAIN, "veto")
    reason = ("the domain carries no psci-hook record, so the source's register values are "
              "unknown")
    assert (status, stderr) == (ExitStatus.VETO, f"psci-hook: VETO NO_RECORD domain vm1: {reason} "
                                "(the policy vetoes guests without a record (unrecorded = veto))\n")
    assert (event["decision"], event["reason"]) == ("veto", reason)
    assert "record_not_used" not in event
    status, stderr, event = _run_in_process(tmp_path, bundled, DOMAIN, "allow")
    assert (status, stderr) == (ExitStatus.OK, "")
    assert (event["decision"], event["codes"], event["policy_unrecorded"]) == (
        "allow", ["NO_RECORD"], "allow")
    assert "record_not_used" not in event


@pytest.mark.parametrize("setting", ["allow", "veto"])
def test_the_lines_and_events_of_a_record_that_does_not_vouch(
        tmp_path: Path, bundled: dict[str, HostProfile], setting: str) -> None:
    """A persistent definition's copy (an offline migration): the event says why the record
    was not used, and a veto line says it too."""
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"])).replace(
        b' version="1"', b' version="1" status="persistent-copy"', 1)
    why = ("it is the persistent definition's copy from the guest's last run: an offline "
           "migration, or a guest started since without psci-hook recording it")
    status, stderr, event = _run_in_process(tmp_path, bundled, domain, setting)
    assert event["record_not_used"] == why and event["codes"] == ["NO_RECORD"]
    if setting == "allow":
        assert (status, stderr, event["policy_unrecorded"]) == (ExitStatus.OK, "", "allow")
        return
    reason = f"the domain's psci-hook record does not vouch for the guest's register state ({why})"
    assert (status, stderr) == (ExitStatus.VETO, f"psci-hook: VETO NO_RECORD domain vm1: {reason} "
                                "(the policy vetoes guests without a record (unrecorded = veto))\n")
    assert event["reason"] == reason


def test_a_domain_without_an_architecture_is_left_alone_as_arch_unknown(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    no_arch = DOMAIN.replace(b" arch='aarch64' machine='virt-7.2'", b"")
    status, stderr, event = _run_in_process(tmp_path, bundled, no_arch, "veto")
    assert (status, stderr, event["codes"]) == (ExitStatus.OK, "", ["NOT_APPLICABLE"])
    assert event["reason"] == "type=kvm arch=?"


@pytest.mark.parametrize(("old", "new", "why"), [
    (b' version="1"', b' version="2"',
     "record version 2 is newer than this psci-hook reads (version 1)"),
    (b' version="1"', b' version="1" status="hibernated"',
     "its record's status is 'hibernated'"),
])
def test_a_record_of_a_newer_release_is_not_used_and_the_event_says_why(
        tmp_path: Path, bundled: dict[str, HostProfile], old: bytes, new: bytes,
        why: str) -> None:
    """A newer version, or a status word of a newer release: the record does not vouch for
    the guest's registers, and the policy decides as for a guest without one."""
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"])).replace(old, new, 1)
    status, stderr, event = _run_in_process(tmp_path, bundled, domain, "allow")
    assert (status, stderr, event["codes"]) == (ExitStatus.OK, "", ["NO_RECORD"])
    assert event["record_not_used"] == why

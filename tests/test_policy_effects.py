"""Every policy setting changes what the hook does, and its default does what the docs say.

Each test runs the hook's entry point in-process (psci_hook.hook.main with an in-memory
Environment, as tests/test_hook.py does) on the same input twice: once with the setting left
out (the default) and once with it set, and asserts both answers. In-process so that a mutation
run (benchmarks/mutation.py) sees them; tests/test_hook.py and tests/test_hardening.py run the
real hook file as libvirt does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest

from psci_hook import cli
from psci_hook import registers as regs
from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.hook import main
from psci_hook.profile import HostProfile
from psci_hook.record import GuestRecord, HistoryEntry, Origin, Override, read_record, record_xml
from psci_hook.rehearsal import Result
from psci_hook.splice import splice_record
from psci_hook.status import ExitStatus
from tests.helpers import fw, make_profile
from tests.hooktools import DOMAIN, CollectingSink, profile_file, stamped, write_config

PSCI = regs.PSCI_VERSION.reg_id
WA3 = regs.SMCCC_ARCH_WORKAROUND_3.reg_id
SYS = [regs.sysreg_id(3, 0, 1, 0, 0), regs.sysreg_id(3, 0, 2, 0, 0),
       regs.SYSREG_BY_NAME["OSLSR_EL1"], regs.sysreg_id(3, 0, 13, 0, 4)]
FW4 = fw(PSCI_VERSION=regs.psci_value(1, 1), SMCCC_ARCH_WORKAROUND_1=2,
         SMCCC_ARCH_WORKAROUND_2=0, SMCCC_ARCH_WORKAROUND_3=1)
ORIGIN = Origin("booted", "host-a", "5.17.0", "2026-11-30T00:00:00Z")


def host(release: str, registers: dict[int, int], *others: int) -> HostProfile:
    return make_profile(release, registers, {"pmu": tuple(sorted(set(others) | set(registers)))})


SOURCE = host("5.17.0", FW4, *SYS[:3])
# Legacy QEMU, no WORKAROUND_3: the guest's WA3 = 1 sorts above the destination's last register
# and would be dropped silently (WA_DROPPED, blocking by default). One more system register
# keeps the count check out of the way.
DROPS_WA3 = host("5.4.0", {k: v for k, v in FW4.items() if k != WA3}, *SYS)
SAME = SOURCE


class Run(NamedTuple):
    status: ExitStatus
    stdout: bytes
    stderr: str
    event: dict[str, object]


def guest() -> GuestState:
    return GuestState.booted_on(SOURCE, frozenset({"pmu"}))


def run(tmp_path: Path, domain: bytes, destination: HostProfile | None, hook: str = "",
        host_settings: str = "", rehearser: object = None, op: str = "migrate") -> Run:
    profile = (profile_file(tmp_path, destination) if destination is not None
               else tmp_path / "no-such-profile.json")
    config = write_config(tmp_path / "c.conf", profile, None, hook, host_settings)
    env = Environment.for_test(["hook", "vm1", op, "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path,
                               clock=lambda: 1_800_000_000.0)
    env.rehearser = rehearser
    sink = CollectingSink()
    status = main(env, sink)
    assert len(sink.events) == 1
    return Run(status, env.stdout.getvalue(), env.stderr.getvalue(),  # type: ignore[attr-defined]
               sink.events[0])


def test_mode(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    enforced = run(tmp_path, domain, DROPS_WA3)
    assert (enforced.status, enforced.stdout, enforced.event["decision"]) == (
        ExitStatus.VETO, b"", "veto")
    assert enforced.stderr.startswith("psci-hook: VETO WA_DROPPED domain vm1: ")
    warned = run(tmp_path, domain, DROPS_WA3, "mode = warn")
    assert (warned.status, warned.stdout, warned.event["decision"]) == (ExitStatus.OK, b"", "warn")
    assert warned.stderr == enforced.stderr.replace("VETO", "WOULD VETO", 1)


def test_unrecorded(tmp_path: Path) -> None:
    allowed = run(tmp_path, DOMAIN, SAME)
    assert (allowed.status, allowed.stdout, allowed.stderr) == (ExitStatus.OK, b"", "")
    assert allowed.event["codes"] == ["NO_RECORD"]
    assert allowed.event["policy_unrecorded"] == "allow"
    vetoed = run(tmp_path, DOMAIN, SAME, "unrecorded = veto")
    assert vetoed.status == ExitStatus.VETO and vetoed.stdout == b""
    assert vetoed.stderr.startswith("psci-hook: VETO NO_RECORD domain vm1: ")
    assert "(the policy vetoes guests without a record (unrecorded = veto))" in vetoed.stderr


def test_annotate(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    annotated = run(tmp_path, domain, SAME)
    assert annotated.status == ExitStatus.OK and annotated.stderr == ""
    record = read_record(parse_domain(annotated.stdout).root)
    assert record is not None and record.origin.event == "migrated"
    quiet = run(tmp_path, domain, SAME, "annotate = no")
    assert (quiet.status, quiet.stdout, quiet.stderr) == (ExitStatus.OK, b"", "")


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_the_annotation_says_what_happened(tmp_path: Path, op: str) -> None:
    result = run(tmp_path, stamped(DOMAIN, guest()), SAME, op=op)
    record = read_record(parse_domain(result.stdout).root)
    assert record is not None
    assert record.origin.event == ("migrated" if op == "migrate" else "restored")
    assert record.origin.kernel == "5.17.0" and record.origin.time == "2027-01-15T08:00:00Z"
    assert record.history[-1].op == op and record.history[-1].verdict == "allow"
    assert record.history[-1].time == "2027-01-15T08:00:00Z"
    assert record.origin.host == record.history[-1].host == result.event["destination"][
        "hostname"]  # type: ignore[index]


def test_on_error(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    opened = run(tmp_path, domain, None)
    assert (opened.status, opened.stdout, opened.event["codes"]) == (
        ExitStatus.OK, b"", ["PROFILE_UNAVAILABLE"])
    assert opened.stderr.startswith("psci-hook: ERROR PROFILE_UNAVAILABLE domain vm1: ")
    assert opened.stderr.endswith("; migration allowed unchecked (on_error = allow)\n")
    closed = run(tmp_path, domain, None, "on_error = veto")
    assert (closed.status, closed.stdout) == (ExitStatus.INTERNAL_ERROR, b"")
    assert closed.stderr.endswith("; migration refused (on_error = veto)\n")
    bad_xml = run(tmp_path, b"<domain", SAME, "on_error = veto")
    assert bad_xml.status == ExitStatus.BAD_INPUT
    assert bad_xml.stderr.startswith("psci-hook: ERROR XML_INVALID domain vm1: ")


def slow(seconds: float) -> object:
    def rehearser(features: frozenset[str], values: Mapping[int, int]) -> Result:
        time.sleep(seconds)
        return Result(frozenset(values))
    return rehearser


def test_timeout(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    in_time = run(tmp_path, domain, SAME, "timeout = 5", rehearser=slow(0.2))
    assert in_time.status == ExitStatus.OK and in_time.event["rehearsal"] == "accepted"
    late = run(tmp_path, domain, SAME, "timeout = 0.2", rehearser=slow(2))
    assert (late.status, late.stdout, late.event["codes"]) == (ExitStatus.OK, b"", ["TIMEOUT"])
    assert late.stderr == ("psci-hook: ERROR TIMEOUT domain vm1: no decision within 0.2 s; "
                           "migration allowed unchecked (on_error = allow)\n")
    refused = run(tmp_path, domain, SAME, "timeout = 0.2\non_error = veto", rehearser=slow(2))
    assert refused.status == ExitStatus.TIMEOUT


def test_domain_types(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest()).replace(b"<domain type='kvm'>", b"<domain type='qemu'>")
    ignored = run(tmp_path, domain, SAME)
    assert (ignored.status, ignored.stdout, ignored.stderr) == (ExitStatus.OK, b"", "")
    assert ignored.event["codes"] == ["NOT_APPLICABLE"]
    acted_on = run(tmp_path, domain, SAME, "domain_types = kvm, qemu")
    assert acted_on.status == ExitStatus.OK and acted_on.stdout.startswith(b"<domain type='qemu'>")


def test_veto_dropped_workarounds(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    vetoed = run(tmp_path, domain, DROPS_WA3)
    assert vetoed.status == ExitStatus.VETO and vetoed.event["codes"] == ["WA_DROPPED"]
    relaxed = run(tmp_path, domain, DROPS_WA3, "veto_dropped_workarounds = no")
    assert relaxed.status == ExitStatus.OK and relaxed.stdout.startswith(b"<domain")
    assert "REG_DROPPED" in relaxed.event["codes"]  # type: ignore[operator]


def test_qemu_generation(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    auto = run(tmp_path, domain, DROPS_WA3)
    assert auto.event["qemu_generation"] == "legacy"
    # Tolerant QEMU refuses the unlisted WORKAROUND_3 instead of dropping it.
    tolerant = run(tmp_path, domain, DROPS_WA3, host_settings="qemu_generation = tolerant")
    assert tolerant.event["qemu_generation"] == "tolerant"
    assert tolerant.status == ExitStatus.VETO and tolerant.event["codes"] == ["REG_MISSING"]


def refuse_psci(calls: list[Mapping[int, int]]) -> object:
    def rehearser(features: frozenset[str], values: Mapping[int, int]) -> Result:
        calls.append(values)
        return Result(frozenset(values), PSCI, values[PSCI], 0x10000, "EINVAL")
    return rehearser


def test_rehearse(tmp_path: Path) -> None:
    domain = stamped(DOMAIN, guest())
    calls: list[Mapping[int, int]] = []
    rehearsed = run(tmp_path, domain, SAME, rehearser=refuse_psci(calls))
    assert rehearsed.status == ExitStatus.VETO and len(calls) == 1
    assert rehearsed.stderr.startswith("psci-hook: VETO REHEARSAL_REFUSED domain vm1: ")
    not_rehearsed = run(tmp_path, domain, SAME, "rehearse = no", rehearser=refuse_psci(calls))
    assert len(calls) == 1, "rehearse = no, yet the rehearsal ran"
    assert not_rehearsed.status == ExitStatus.OK and "rehearsal" not in not_rehearsed.event


def with_record(record: GuestRecord) -> bytes:
    return splice_record(DOMAIN, lambda indent: record_xml(record, indent)).data


def test_allow_domain_override(tmp_path: Path) -> None:
    domain = with_record(GuestRecord(guest(), ORIGIN, override=Override(
        frozenset({"WA_DROPPED"}), "ticket 42: the guest does not need WA3")))
    honoured = run(tmp_path, domain, DROPS_WA3)
    assert honoured.status == ExitStatus.OK and honoured.stdout.startswith(b"<domain")
    assert honoured.event["codes"] == ["WA_DROPPED", "OVERRIDE"]
    assert honoured.event["override"] == ("the domain's record overrides WA_DROPPED: "
                                          "ticket 42: the guest does not need WA3")
    refused = run(tmp_path, domain, DROPS_WA3, "allow_domain_override = no")
    assert refused.status == ExitStatus.VETO and refused.event["codes"] == ["WA_DROPPED"]
    assert "override" not in refused.event
    assert "override" not in run(tmp_path, with_record(GuestRecord(guest(), ORIGIN)),
                                 SAME).event
    # `psci-hook check` shows the override among the findings, with its reason.
    xml_file = tmp_path / "vm1.xml"
    xml_file.write_bytes(domain)
    check = Environment.for_test(["psci-hook", "check", "--json", "--no-config", "--host-profile",
                                  str(profile_file(tmp_path, DROPS_WA3)), "--domain-xml",
                                  str(xml_file)], b"", {}, run_dir=tmp_path)
    assert cli.main(check.argv[1:], check) == ExitStatus.OK
    shown = json.loads(check.stdout.getvalue())  # type: ignore[attr-defined]
    assert shown["hook"]["codes"] == ["WA_DROPPED", "OVERRIDE"]
    assert [f for f in shown["findings"] if f["code"] == "OVERRIDE"] == [{
        "code": "OVERRIDE", "outcome": "override", "severity": "warning", "register": None,
        "message": honoured.event["override"]}]
    # Overriding two blocking codes names both.
    older_psci = host("5.4.0", {**DROPS_WA3.registers,
                                regs.PSCI_VERSION.reg_id: regs.psci_value(1, 0)}, *SYS)
    both = run(tmp_path, with_record(GuestRecord(guest(), ORIGIN, override=Override(
        frozenset({"WA_DROPPED", "PSCI_UNSUPPORTED"}), "ticket 43"))), older_psci)
    assert both.status == ExitStatus.OK
    assert both.event["override"] == ("the domain's record overrides PSCI_UNSUPPORTED "
                                      "WA_DROPPED: ticket 43")
    # An override that does not cover every blocking code does nothing.
    partial = with_record(GuestRecord(guest(), ORIGIN, override=Override(
        frozenset({"REG_MISSING"}), "not this one")))
    assert run(tmp_path, partial, DROPS_WA3).status == ExitStatus.VETO


HISTORY = tuple(HistoryEntry(f"2026-12-0{i}T00:00:00Z", "migrate", f"host-{i}", "allow")
                for i in range(1, 10))


@pytest.mark.parametrize(("setting", "kept"), [("", 8), ("history_limit = 2", 2),
                                               ("history_limit = 1", 1),
                                               ("history_limit = 64", 10)])
def test_history_limit(tmp_path: Path, setting: str, kept: int) -> None:
    domain = with_record(GuestRecord(guest(), ORIGIN, history=HISTORY))
    result = run(tmp_path, domain, SAME, setting)
    record = read_record(parse_domain(result.stdout).root)
    assert record is not None and len(record.history) == kept
    # The newest entries are kept: this check last, after the most recent earlier ones.
    assert record.history[:-1] == HISTORY[len(HISTORY) - kept + 1:]
    assert record.history[-1].time == "2027-01-15T08:00:00Z"


def test_history_limit_0_keeps_no_history(tmp_path: Path) -> None:
    # The docs: "history entries kept"; 0 keeps none (the record loses its <history>).
    domain = with_record(GuestRecord(guest(), ORIGIN, history=HISTORY))
    result = run(tmp_path, domain, SAME, "history_limit = 0")
    assert result.status == ExitStatus.OK
    record = read_record(parse_domain(result.stdout).root)
    assert record is not None and record.history == ()
    assert b"<psci:history" not in result.stdout and b"<psci:record" in result.stdout

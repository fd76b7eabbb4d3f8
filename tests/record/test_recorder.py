"""What record and watch write, decided without libvirt (psci_hook.recorder)."""

from __future__ import annotations

import calendar
import dataclasses
import json
import time
from pathlib import Path

import pytest

from psci_hook import registers as regs
from psci_hook.cli import main
from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState, decide
from psci_hook.environment import Environment
from psci_hook.policy import Policy
from psci_hook.record import (
    GuestRecord,
    HistoryEntry,
    Origin,
    Override,
    read_record,
    record_xml,
)
from psci_hook.recorder import (
    Observed,
    RecordAction,
    Started,
    ThisHost,
    Trigger,
    persistent_copy,
    plan_arrival,
    plan_boot,
    plan_for,
    plan_reconcile,
)
from tests.record.recordtools import EARLIER, NOW, UUID_A, UUID_B, booted, domain_xml, profile

# host-b runs Debian 6.1 on a Cortex-A76 (WORKAROUND_1 = 2, WORKAROUND_3 = 1).
host_b = ThisHost(profile("6.1__a76"), "host-b", UUID_B, Policy())
PSCI = regs.FW_BY_NAME["PSCI_VERSION"].reg_id
WA1 = regs.FW_BY_NAME["SMCCC_ARCH_WORKAROUND_1"].reg_id
WA3 = regs.FW_BY_NAME["SMCCC_ARCH_WORKAROUND_3"].reg_id
STD_BMAP = regs.FW_BY_NAME["STD_BMAP"].reg_id


def persistent(live: bytes) -> Observed:
    return Observed(live, live)


# ---------------------------------------------------------------------------------------------
# Cold boot (STARTED_BOOTED)
# ---------------------------------------------------------------------------------------------


def test_boot_without_record_records_this_hosts_values() -> None:
    plan = plan_boot(persistent(domain_xml()), host_b, NOW)
    assert (plan.action, plan.trigger, plan.domain) == (RecordAction.RECORDED, Trigger.BOOTED,
                                                        "vm1")
    assert plan.live is not None and plan.config == persistent_copy(plan.live)
    assert plan.config.status == "persistent-copy" and plan.live.vouched
    record = plan.live
    assert record.state == GuestState.booted_on(host_b.profile, frozenset({"pmu"}))
    assert (record.origin.event, record.origin.host, record.origin.host_uuid,
            record.origin.kernel, record.origin.time) == (
        "booted", "host-b", UUID_B, host_b.profile.kernel_release, NOW)
    assert plan.targets() == "live and persistent definitions"


def test_boot_replaces_a_stale_record_from_another_host_keeping_the_override() -> None:
    stale = booted("5.10__a57", "host-a", UUID_A)._replace(
        override=Override(frozenset({"WA_LEVEL_TOO_HIGH"}), "ticket 4711"),
        history=(HistoryEntry(EARLIER, "migrate", "host-c", "allow", ()),))
    plan = plan_boot(persistent(domain_xml(stale)), host_b, NOW)
    assert plan.action == RecordAction.REPLACED
    assert "booted on host-a" in plan.reason
    assert plan.previous == stale.origin
    assert plan.live is not None
    assert plan.live.state.registers[PSCI] == host_b.profile.registers[PSCI]
    assert plan.live.state.registers[WA1] == 2
    assert plan.live.override == stale.override
    assert plan.live.history == stale.history


def test_boot_replaces_an_invalid_record() -> None:
    good = domain_xml(booted("6.1__a76", "host-b")).decode()
    broken = good.replace('version="1"', 'version="99"', 1).encode()
    plan = plan_boot(Observed(broken), host_b, NOW)
    assert plan.action == RecordAction.REPLACED
    assert "invalid record" in plan.reason
    assert plan.config is None  # transient: no persistent definition


def test_boot_takes_the_vcpu_features_from_the_domain_xml() -> None:
    plan = plan_boot(Observed(domain_xml(pmu=False)), host_b, NOW)
    assert plan.live is not None
    assert plan.live.state.features == frozenset()
    assert plan.live.state.cpreg_list == host_b.profile.cpreg_list(frozenset())


@pytest.mark.parametrize(("domain_type", "arch"), [("qemu", "aarch64"), ("kvm", "x86_64")])
def test_domains_the_hook_does_not_act_on_are_skipped(domain_type: str,
                                                      arch: str) -> None:
    data = domain_xml(domain_type=domain_type, arch=arch)
    for plan in (plan_boot(Observed(data), host_b, NOW),
                 plan_arrival(Observed(data), host_b, NOW, Trigger.MIGRATED),
                 plan_reconcile(Observed(data), host_b, NOW, force=True)):
        assert plan.action == RecordAction.SKIPPED and not plan.writes
        assert f"type={domain_type}" in plan.reason


def test_tcg_domains_are_recorded_when_the_policy_says_so() -> None:
    host = dataclasses.replace(host_b, policy=Policy(domain_types=frozenset({"kvm", "qemu"})))
    plan = plan_boot(Observed(domain_xml(domain_type="qemu")), host, NOW)
    assert plan.action == RecordAction.RECORDED


# ---------------------------------------------------------------------------------------------
# Migration or restore in (STARTED_MIGRATED, STARTED_RESTORED)
# ---------------------------------------------------------------------------------------------


def test_arrival_annotated_by_the_hook_only_syncs_the_persistent_definition() -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)
    after = decide(incoming.state, host_b.profile).guest_after
    annotated = incoming._replace(state=after, origin=host_b.origin("migrated", EARLIER))
    stale_config = domain_xml(incoming)
    plan = plan_arrival(Observed(domain_xml(annotated), stale_config), host_b, NOW,
                        Trigger.MIGRATED)
    assert plan.action == RecordAction.SYNCED
    assert plan.live is None and plan.config == persistent_copy(annotated)
    # Already in step: nothing to write.
    plan = plan_arrival(Observed(domain_xml(annotated), domain_xml(persistent_copy(annotated))),
                        host_b, NOW, Trigger.MIGRATED)
    assert (plan.action, plan.writes) == (RecordAction.UNCHANGED, False)


@pytest.mark.parametrize(("trigger", "event", "op"), [(Trigger.MIGRATED, "migrated", "migrate"),
                                                      (Trigger.RESTORED, "restored", "restore")])
def test_arrival_without_annotation_brings_the_record_to_this_host(
        trigger: str, event: str, op: str) -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)  # PSCI 1.0, no bitmaps, WA levels 0
    plan = plan_arrival(persistent(domain_xml(incoming)), host_b, NOW, trigger)
    assert plan.action == RecordAction.UPDATED
    assert plan.live is not None and plan.config == persistent_copy(plan.live)
    state = plan.live.state
    assert state == decide(incoming.state, host_b.profile).guest_after
    assert state.registers[PSCI] == incoming.state.registers[PSCI]  # kept for life
    assert (state.registers[WA1], state.registers[WA3]) == (2, 1)  # this host's levels
    assert state.registers[STD_BMAP] == host_b.profile.registers[STD_BMAP]  # default here
    assert (plan.live.origin.event, plan.live.origin.host) == (event, "host-b")
    assert plan.live.history[-1] == HistoryEntry(NOW, op, "host-b", "allow", plan.codes)
    assert "WA_RATCHET" in plan.codes
    # Applying the plan again changes nothing: the record is now current.
    again = plan_arrival(Observed(domain_xml(plan.live), domain_xml(plan.config)), host_b, NOW,
                         trigger)
    assert (again.action, again.writes) == (RecordAction.UNCHANGED, False)


def test_arrival_without_a_record_records_an_upper_bound() -> None:
    plan = plan_arrival(Observed(domain_xml()), host_b, NOW, Trigger.RESTORED)
    assert (plan.action, plan.codes) == (RecordAction.RECORDED, ("NO_RECORD",))
    assert plan.live is not None and plan.config is None
    assert plan.live.origin.event == "restored"
    assert plan.live.state.registers == host_b.profile.registers
    assert plan.live.history[-1].codes == ("NO_RECORD",)


def test_arrival_with_an_invalid_record_leaves_it_alone() -> None:
    good = domain_xml(booted("6.1__a76", "host-a")).decode()
    broken = good.replace('value="0x10001"', 'value="-1"').encode()
    plan = plan_arrival(persistent(broken), host_b, NOW, Trigger.MIGRATED)
    assert plan.action == RecordAction.SKIPPED and not plan.writes
    assert "not a non-negative integer" in plan.reason


# kvm-psci-version=0.1 makes QEMU create the vCPU without KVM_ARM_VCPU_PSCI_0_2 (target/arm/kvm.c
# kvm_arch_init_vcpu); such a vCPU takes PSCI 0.1 and nothing else, any other takes all but 0.1.
PSCI_0_1_ARGS = ("-global", "host-arm-cpu.kvm-psci-version=0.1")


def hook_says(tmp_path: Path, data: bytes) -> tuple[str, tuple[str, ...]]:
    """What the hook decides for this domain XML on host-b (`check`, the hook's own decision):
    the verdict as the recorder's history writes it, and the codes."""
    profile_path = tmp_path / "host-b.json"
    profile_path.write_text(host_b.profile.to_json())
    xml_path = tmp_path / "live.xml"
    xml_path.write_bytes(data)
    env = Environment.for_test(["psci-hook", "check", "--host-profile", str(profile_path),
                                "--domain-xml", str(xml_path), "--json"], b"")
    main(env=env)
    said = json.loads(env.stdout.getvalue())  # type: ignore[attr-defined]
    return ("allow" if said["verdict"] == "allow" else "warn"), tuple(said["codes"])


@pytest.mark.parametrize(("guest_psci", "set_in"), [
    (0x1, ""), (0x1, "xml"), (0x1, "argv"), (None, "xml"), (None, "argv"), (None, "")])
def test_an_unannotated_arrival_is_decided_as_the_hook_decides(
        tmp_path: Path, guest_psci: int | None, set_in: str) -> None:
    """The recorder judges an arrival the hook did not annotate for the vCPU this host's QEMU
    created (its kvm-psci-version from the live XML, or from the running QEMU's command line,
    the ground truth), exactly as the hook judges that XML: a guest recorded at PSCI 0.1 in a
    0.2+ vCPU, or at 1.0 in a 0.1 vCPU, is PSCI_UNSUPPORTED for both."""
    source = profile("5.10__a57")
    incoming = GuestRecord(GuestState.booted_on(source, None, guest_psci),
                           Origin("booted", "host-a", source.kernel_release, EARLIER, UUID_A))
    assert (incoming.state.registers[PSCI] == 0x1) == (guest_psci == 0x1)
    live = domain_xml(incoming, qemu_args=PSCI_0_1_ARGS if set_in == "xml" else ())
    # "xml": the QEMU process's command line unreadable, the live XML tells; "argv": QEMU was
    # started with the property although the live XML has none (the ground truth wins).
    argv = None if set_in == "xml" else ("/usr/bin/qemu-system-aarch64", "-cpu", "host",
                                         *(PSCI_0_1_ARGS if set_in == "argv" else ()))
    plan = plan_arrival(Observed(live, live, argv), host_b, NOW, Trigger.MIGRATED)
    assert plan.live is not None
    entry = plan.live.history[-1]
    as_the_hook_sees_it = domain_xml(incoming, qemu_args=PSCI_0_1_ARGS if set_in else ())
    assert (entry.verdict, entry.codes) == hook_says(tmp_path, as_the_hook_sees_it)
    refused = (guest_psci == 0x1) != bool(set_in)
    assert ("PSCI_UNSUPPORTED" in entry.codes) == refused and (entry.verdict == "warn") == refused


# ---------------------------------------------------------------------------------------------
# Reconcile (`psci-hook record`, watch start-up)
# ---------------------------------------------------------------------------------------------


BOOTED_HERE = Started("booted", 1_000_000.0)
MIGRATED_HERE = Started("migrated", 1_000_000.0)
# The process started at NOW - 1 h; a pause and a resume replaced libvirt's reason.
PROCESS_START = float(calendar.timegm(time.strptime(NOW, "%Y-%m-%dT%H:%M:%SZ"))) - 3600
RESUMED_LATER = Started("unpaused", PROCESS_START)


def at(seconds_after_start: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(PROCESS_START + seconds_after_start))


def running(record: GuestRecord | None, started: Started, transient: bool = False
            ) -> Observed:
    live = domain_xml(record)
    return Observed(live, None if transient else live, started=started)


def test_reconcile_records_an_unrecorded_domain() -> None:
    plan = plan_reconcile(running(None, BOOTED_HERE), host_b, NOW)
    assert (plan.action, plan.trigger) == (RecordAction.RECORDED, Trigger.RECONCILE)
    assert plan.live is not None and plan.config == persistent_copy(plan.live)
    assert "libvirt's state reason: booted" in plan.reason


@pytest.mark.parametrize("event", ["migrated", "restored", "booted", "stamped"])
def test_a_guest_that_cold_booted_here_gets_this_hosts_values(event: str) -> None:
    """libvirt says the QEMU process cold-booted the guest (RUNNING_BOOTED): any record that
    is not this host's boot record is stale, whatever it claims (issue 12, point 1)."""
    foreign = booted("5.10__a57", "host-a", UUID_A, event=event)
    plan = plan_reconcile(running(foreign, BOOTED_HERE), host_b, NOW)
    assert plan.action == RecordAction.REPLACED and plan.live is not None
    assert plan.live.state == GuestState.booted_on(host_b.profile, frozenset({"pmu"}))
    assert f"{event} on host-a" in plan.reason and "cold-booted on this host" in plan.reason
    # A record this host wrote at an earlier migration is just as stale after a cold boot.
    own_migration = booted("5.10__a57", "host-b", UUID_B, event="migrated")
    plan = plan_reconcile(running(own_migration, BOOTED_HERE), host_b, NOW)
    assert plan.action == RecordAction.REPLACED


def test_a_cold_booted_guest_with_its_boot_record_is_current() -> None:
    record = plan_boot(Observed(domain_xml()), host_b, EARLIER).live
    assert record is not None
    plan = plan_reconcile(Observed(domain_xml(record), domain_xml(persistent_copy(record)),
                                   started=BOOTED_HERE), host_b, NOW)
    assert (plan.action, plan.writes) == (RecordAction.UNCHANGED, False)
    plan = plan_reconcile(Observed(domain_xml(record), domain_xml(), started=BOOTED_HERE),
                          host_b, NOW)
    assert (plan.action, plan.live, plan.config) == (RecordAction.SYNCED, None,
                                                     persistent_copy(record))


@pytest.mark.parametrize("reason", ["migrated", "restored", "from-snapshot"])
def test_a_guest_that_loaded_its_state_keeps_the_record_that_came_with_it(reason: str) -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)
    plan = plan_reconcile(running(incoming, Started(reason, None)), host_b, NOW)
    assert plan.action == RecordAction.UPDATED and plan.trigger == Trigger.RECONCILE
    assert plan.live is not None
    assert plan.live.state == decide(incoming.state, host_b.profile).guest_after
    assert plan.live.state.registers[PSCI] == incoming.state.registers[PSCI]


def test_a_resumed_guest_is_judged_by_its_process_start_time() -> None:
    """A pause/resume replaced libvirt's reason: a record this host wrote for this very QEMU
    process (after it started, for a boot; just before, for an arrival) is current."""
    boot_record = booted("6.1__a76", "host-b", UUID_B, time=at(1))
    assert plan_reconcile(running(boot_record, RESUMED_LATER), host_b, NOW,
                          ).action in (RecordAction.UNCHANGED, RecordAction.SYNCED)
    arrival = booted("6.1__a76", "host-b", UUID_B, event="migrated", time=at(-1))
    assert plan_reconcile(running(arrival, RESUMED_LATER), host_b, NOW).action in (
        RecordAction.UNCHANGED, RecordAction.SYNCED)


def test_a_restore_whose_record_does_not_say_it_is_written_again_as_the_restores() -> None:
    """A managed save restored on the host that saved it: the values are this host's already,
    but the live record is still the boot's (the hook's annotation did not reach it, or no
    hook ran). It is written again as the restore's, so that after a pause/resume a
    reconcile still knows it belongs to this QEMU process (instead of marking it unverified)."""
    restored_here = Started("restored", PROCESS_START)
    boot_record = booted("6.1__a76", "host-b", UUID_B, time=at(-7200))
    plan = plan_arrival(running(boot_record, restored_here), host_b, NOW, Trigger.RESTORED)
    assert plan.action == RecordAction.UPDATED
    assert "written again as this arrival's (same values)" in plan.reason
    assert plan.live is not None and plan.live.state == boot_record.state
    assert (plan.live.origin.event, plan.live.origin.time) == ("restored", NOW)
    assert plan.live.history[-1].op == "restore"
    assert plan.config == persistent_copy(plan.live)
    # Later: paused and resumed (reason unpaused); the record written after the process
    # started is this process's restore record.
    written = Observed(domain_xml(plan.live), domain_xml(plan.config), started=RESUMED_LATER)
    later = plan_reconcile(written, host_b, NOW)
    assert (later.action, later.writes) == (RecordAction.UNCHANGED, False), later.reason
    # The hook's own annotation (written just before the process started) is kept as it is.
    annotated = booted("6.1__a76", "host-b", UUID_B, event="restored", time=at(-3))
    kept = plan_arrival(running(annotated, restored_here), host_b, NOW, Trigger.RESTORED)
    assert (kept.action, kept.live) == (RecordAction.SYNCED, None)  # the persistent copy only
    # One written by this host for an earlier process is not this one's.
    earlier = booted("6.1__a76", "host-b", UUID_B, event="restored", time=at(-3600))
    assert plan_arrival(running(earlier, restored_here), host_b, NOW, Trigger.RESTORED).action == \
        RecordAction.UPDATED


@pytest.mark.parametrize(("record", "why"), [
    (booted("6.1__a76", "host-b", UUID_B, time=at(-600)), "written before the process"),
    (booted("6.1__a76", "host-b", UUID_B, event="migrated", time=at(-3600)), "old arrival"),
    (booted("5.10__a57", "host-a", UUID_A, event="migrated", time=at(-1)), "another host's"),
])
def test_a_record_nothing_vouches_for_is_marked_unverified(record: GuestRecord,
                                                           why: str) -> None:
    plan = plan_reconcile(running(record, RESUMED_LATER), host_b, NOW)
    assert plan.action == RecordAction.MARKED, why
    assert plan.live == record.with_status("unverified") and plan.config is None
    assert "cannot tell" in plan.reason and "unpaused" in plan.reason
    # Marked, it stays so until the guest's start is known, or --force.
    again = plan_reconcile(running(plan.live, RESUMED_LATER), host_b, NOW)
    assert (again.action, again.writes) == (RecordAction.UNCHANGED, False)
    forced = plan_reconcile(running(plan.live, RESUMED_LATER), host_b, NOW, force=True)
    assert forced.action == RecordAction.REPLACED
    assert forced.live is not None and forced.live.vouched


def test_a_migration_under_way_is_left_to_its_end() -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)
    plan = plan_reconcile(running(incoming, Started("migrating", None), True), host_b, NOW,
                          force=True)
    assert (plan.action, plan.writes) == (RecordAction.SKIPPED, False)


def test_without_any_fact_a_record_is_not_trusted() -> None:
    own = booted("6.1__a76", "host-b", UUID_B, event="migrated")
    assert plan_reconcile(running(own, Started()), host_b, NOW).action == RecordAction.MARKED


def test_reconcile_keeps_a_record_from_another_host_unless_forced() -> None:
    foreign = booted("5.10__a57", "host-a", UUID_A)
    forced = plan_reconcile(running(foreign, MIGRATED_HERE), host_b, NOW, force=True)
    assert forced.action == RecordAction.REPLACED
    assert forced.live is not None
    assert forced.live.state == GuestState.booted_on(host_b.profile, frozenset({"pmu"}))


def test_reconcile_keeps_this_hosts_record_and_copies_it_to_the_persistent_definition() -> None:
    own = booted("6.1__a76", "host-b", UUID_B, event="migrated")
    plan = plan_reconcile(Observed(domain_xml(own), domain_xml(), started=MIGRATED_HERE),
                          host_b, NOW)
    assert (plan.action, plan.live, plan.config) == (RecordAction.SYNCED, None,
                                                     persistent_copy(own))
    plan = plan_reconcile(Observed(domain_xml(own), None, started=MIGRATED_HERE), host_b, NOW)
    assert (plan.action, plan.writes) == (RecordAction.UNCHANGED, False)


def test_this_host_is_known_by_uuid_before_hostname() -> None:
    same_name_other_uuid = booted("6.1__a76", "host-b", UUID_A, event="migrated", time=at(-1))
    assert plan_reconcile(running(same_name_other_uuid, RESUMED_LATER, True), host_b,
                          NOW).action == RecordAction.MARKED
    no_uuid = booted("6.1__a76", "host-b", event="migrated", time=at(-1))
    assert plan_reconcile(running(no_uuid, RESUMED_LATER, True), host_b,
                          NOW).action == RecordAction.UNCHANGED


def test_reconcile_leaves_an_invalid_record_unless_forced() -> None:
    good = domain_xml(booted("6.1__a76", "host-b")).decode()
    broken = Observed(good.replace('version="1"', 'version="one"', 1).encode())
    assert plan_reconcile(broken, host_b, NOW).action == RecordAction.SKIPPED
    assert plan_reconcile(broken, host_b, NOW, force=True).action == RecordAction.REPLACED


def test_unusable_xml_from_libvirt_is_a_failure() -> None:
    plan = plan_for(Trigger.BOOTED, Observed(b"<domain"), host_b, NOW)
    assert plan.action == RecordAction.FAILED and "malformed" in plan.reason


def test_written_records_read_back_as_written() -> None:
    plan = plan_arrival(Observed(domain_xml(booted("5.10__a57", "host-a"))), host_b, NOW,
                        Trigger.MIGRATED)
    assert plan.live is not None
    text = domain_xml(plan.live)
    assert read_record(parse_domain(text).root) == plan.live
    assert record_xml(plan.live, "    ").count("<psci:record") == 1


def test_this_host_written_record_origin_matches_profile() -> None:
    host = ThisHost(profile("6.12__max"), "h", "")
    origin = host.origin("booted", NOW)
    assert (origin.kernel, origin.host_uuid) == (host.profile.kernel_release, "")
    assert host.wrote(origin)

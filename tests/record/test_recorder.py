"""What record and watch write, decided without libvirt (psci_hook.recorder)."""

from __future__ import annotations

import dataclasses

import pytest
from recordtools import EARLIER, NOW, UUID_A, UUID_B, booted, domain_xml, profile

from psci_hook import registers as regs
from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState, decide
from psci_hook.policy import Policy
from psci_hook.record import HistoryEntry, Override, read_record, record_xml
from psci_hook.recorder import (
    BOOTED,
    FAILED,
    MIGRATED,
    RECONCILE,
    RECORDED,
    REPLACED,
    RESTORED,
    SKIPPED,
    SYNCED,
    UNCHANGED,
    UPDATED,
    Observed,
    ThisHost,
    plan_arrival,
    plan_boot,
    plan_for,
    plan_reconcile,
)

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
    assert (plan.action, plan.trigger, plan.domain) == (RECORDED, BOOTED, "vm1")
    assert plan.live is plan.config is not None
    record = plan.live
    assert record.state == GuestState.booted_on(host_b.profile, frozenset({"pmu"}))
    assert (record.origin.event, record.origin.host, record.origin.host_uuid,
            record.origin.kernel, record.origin.time) == (
        "booted", "host-b", UUID_B, host_b.profile.kernel_release, NOW)
    assert plan.targets() == "live and persistent definitions"


def test_boot_replaces_a_stale_record_from_another_host_keeping_the_override() -> None:
    stale = dataclasses.replace(
        booted("5.10__a57", "host-a", UUID_A),
        override=Override(frozenset({"WA_LEVEL_TOO_HIGH"}), "ticket 4711"),
        history=(HistoryEntry(EARLIER, "migrate", "host-c", "allow", ()),))
    plan = plan_boot(persistent(domain_xml(stale)), host_b, NOW)
    assert plan.action == REPLACED
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
    assert plan.action == REPLACED
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
                 plan_arrival(Observed(data), host_b, NOW, MIGRATED),
                 plan_reconcile(Observed(data), host_b, NOW, force=True)):
        assert plan.action == SKIPPED and not plan.writes
        assert f"type={domain_type}" in plan.reason


def test_tcg_domains_are_recorded_when_the_policy_says_so() -> None:
    host = dataclasses.replace(host_b, policy=Policy(domain_types=frozenset({"kvm", "qemu"})))
    assert plan_boot(Observed(domain_xml(domain_type="qemu")), host, NOW).action == RECORDED


# ---------------------------------------------------------------------------------------------
# Migration or restore in (STARTED_MIGRATED, STARTED_RESTORED)
# ---------------------------------------------------------------------------------------------


def test_arrival_annotated_by_the_hook_only_syncs_the_persistent_definition() -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)
    after = decide(incoming.state, host_b.profile).guest_after
    annotated = dataclasses.replace(incoming, state=after)
    annotated = dataclasses.replace(annotated, origin=host_b.origin("migrated", EARLIER))
    stale_config = domain_xml(incoming)
    plan = plan_arrival(Observed(domain_xml(annotated), stale_config), host_b, NOW, MIGRATED)
    assert plan.action == SYNCED
    assert plan.live is None and plan.config == annotated
    # Already in step: nothing to write.
    plan = plan_arrival(persistent(domain_xml(annotated)), host_b, NOW, MIGRATED)
    assert (plan.action, plan.writes) == (UNCHANGED, False)


@pytest.mark.parametrize(("trigger", "event", "op"), [(MIGRATED, "migrated", "migrate"),
                                                      (RESTORED, "restored", "restore")])
def test_arrival_without_annotation_brings_the_record_to_this_host(
        trigger: str, event: str, op: str) -> None:
    incoming = booted("5.10__a57", "host-a", UUID_A)  # PSCI 1.0, no bitmaps, WA levels 0
    plan = plan_arrival(persistent(domain_xml(incoming)), host_b, NOW, trigger)
    assert plan.action == UPDATED
    assert plan.live is plan.config is not None
    state = plan.live.state
    assert state == decide(incoming.state, host_b.profile).guest_after
    assert state.registers[PSCI] == incoming.state.registers[PSCI]  # kept for life
    assert (state.registers[WA1], state.registers[WA3]) == (2, 1)  # this host's levels
    assert state.registers[STD_BMAP] == host_b.profile.registers[STD_BMAP]  # default here
    assert (plan.live.origin.event, plan.live.origin.host) == (event, "host-b")
    assert plan.live.history[-1] == HistoryEntry(NOW, op, "host-b", "allow", plan.codes)
    assert "WA_RATCHET" in plan.codes
    # Applying the plan again changes nothing: the record is now current.
    again = plan_arrival(persistent(domain_xml(plan.live)), host_b, NOW, trigger)
    assert (again.action, again.writes) == (UNCHANGED, False)


def test_arrival_without_a_record_records_an_upper_bound() -> None:
    plan = plan_arrival(Observed(domain_xml()), host_b, NOW, RESTORED)
    assert (plan.action, plan.codes) == (RECORDED, ("NO_RECORD",))
    assert plan.live is not None and plan.config is None
    assert plan.live.origin.event == "restored"
    assert plan.live.state.registers == host_b.profile.registers
    assert plan.live.history[-1].codes == ("NO_RECORD",)


def test_arrival_with_an_invalid_record_leaves_it_alone() -> None:
    good = domain_xml(booted("6.1__a76", "host-a")).decode()
    broken = good.replace('event="booted"', 'event="teleported"').encode()
    plan = plan_arrival(persistent(broken), host_b, NOW, MIGRATED)
    assert plan.action == SKIPPED and not plan.writes
    assert "teleported" in plan.reason


# ---------------------------------------------------------------------------------------------
# Reconcile (`psci-hook record`, watch start-up)
# ---------------------------------------------------------------------------------------------


def test_reconcile_records_an_unrecorded_domain() -> None:
    plan = plan_reconcile(persistent(domain_xml()), host_b, NOW)
    assert (plan.action, plan.trigger) == (RECORDED, RECONCILE)
    assert plan.live is plan.config is not None


@pytest.mark.parametrize("event", ["migrated", "restored", "booted", "stamped"])
def test_reconcile_keeps_a_record_from_another_host_unless_forced(
        event: str) -> None:
    foreign = booted("5.10__a57", "host-a", UUID_A, event=event)
    observed = persistent(domain_xml(foreign))
    plan = plan_reconcile(observed, host_b, NOW)
    assert plan.action == SKIPPED and not plan.writes
    assert f"{event} on host-a" in plan.reason and "--force" in plan.reason
    forced = plan_reconcile(observed, host_b, NOW, force=True)
    assert forced.action == REPLACED
    assert forced.live is not None
    assert forced.live.state == GuestState.booted_on(host_b.profile)


def test_reconcile_keeps_this_hosts_record_and_copies_it_to_the_persistent_definition() -> None:
    own = booted("6.1__a76", "host-b", UUID_B, event="migrated")
    plan = plan_reconcile(Observed(domain_xml(own), domain_xml()), host_b, NOW)
    assert (plan.action, plan.live, plan.config) == (SYNCED, None, own)
    plan = plan_reconcile(persistent(domain_xml(own)), host_b, NOW)
    assert (plan.action, plan.writes) == (UNCHANGED, False)
    plan = plan_reconcile(Observed(domain_xml(own)), host_b, NOW)  # transient
    assert (plan.action, plan.writes) == (UNCHANGED, False)


def test_this_host_is_known_by_uuid_before_hostname() -> None:
    same_name_other_uuid = booted("6.1__a76", "host-b", UUID_A)
    assert plan_reconcile(Observed(domain_xml(same_name_other_uuid)), host_b,
                          NOW).action == SKIPPED
    no_uuid = booted("6.1__a76", "host-b")
    assert plan_reconcile(Observed(domain_xml(no_uuid)), host_b, NOW).action == UNCHANGED


def test_reconcile_leaves_an_invalid_record_unless_forced() -> None:
    good = domain_xml(booted("6.1__a76", "host-b")).decode()
    broken = Observed(good.replace('version="1"', 'version="2"', 1).encode())
    assert plan_reconcile(broken, host_b, NOW).action == SKIPPED
    assert plan_reconcile(broken, host_b, NOW, force=True).action == REPLACED


def test_unusable_xml_from_libvirt_is_a_failure() -> None:
    plan = plan_for(BOOTED, Observed(b"<domain"), host_b, NOW)
    assert plan.action == FAILED and "malformed" in plan.reason


def test_written_records_read_back_as_written() -> None:
    plan = plan_arrival(Observed(domain_xml(booted("5.10__a57", "host-a"))), host_b, NOW,
                        MIGRATED)
    assert plan.live is not None
    text = domain_xml(plan.live)
    assert read_record(parse_domain(text).root) == plan.live
    assert record_xml(plan.live).count("<psci:record") == 1


def test_this_host_written_record_origin_matches_profile() -> None:
    host = ThisHost(profile("6.12__max"), "h", "")
    origin = host.origin("booted", NOW)
    assert (origin.kernel, origin.host_uuid) == (host.profile.kernel_release, "")
    assert host.wrote(origin)

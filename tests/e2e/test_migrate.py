"""psci-hook end to end: real `virsh migrate` and `virsh restore` between two libvirt hosts.

psci-hook is installed in each host by `psci-hook install --root` before its libvirtd starts
(conftest.py). Each host gets a host profile (a measured one from shared/profiles, or a bundled
synthetic one) and a psci-hook.conf; guests get their first record from `psci-hook stamp` before
`virsh define`. The guests are TCG (QEMU itself would migrate them whatever the firmware
registers): every veto below is psci-hook's, for the reason the host profiles give, and is
asserted as the user sees it (virsh's error), as libvirt leaves it (guest still running on the
source in the same QEMU process, nothing on the destination) and as the audit trail shows it
(`psci-hook audit` over the destination host's real syslog file).
"""

from __future__ import annotations

import re

import pytest

from tests.e2e.harness import TwoHosts, wait_for
from tests.e2e.product import (
    REFUSE_LATE,
    Record,
    assert_migration_vetoed,
    audit,
    configure,
    hook_failure_prefix,
    profile_data,
    psci_hook,
    psci_hook_command,
    record_of,
    start_stamped,
    veto_line,
)

pytestmark = pytest.mark.e2e

WA1, WA2, WA3 = (f"SMCCC_ARCH_WORKAROUND_{n}" for n in (1, 2, 3))
# ---------------------------------------------------------------- 1. compatible hosts


def test_compatible_migration_runs_on_destination_with_updated_record(
    hosts: TwoHosts, guest_name: str
) -> None:
    """6.1 (a57) -> 6.12 (a57): allowed; the live XML on b carries b's state and a history entry."""
    configure(hosts, "a", "6.1__a57")
    configure(hosts, "b", "6.12__a57")
    start_stamped(hosts, "a", guest_name, "6.1__a57")
    before = record_of(hosts.dumpxml("a", guest_name))
    assert before is not None and before.origin["event"] == "stamped"
    assert before.history == []

    res = hosts.migrate("a", "b", guest_name)

    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    assert not hosts.is_running("a", guest_name)
    after = record_of(hosts.dumpxml("b", guest_name))
    assert after is not None
    dest = profile_data("6.12__a57")
    assert after.origin["event"] == "migrated"
    assert after.origin["host"] == "host-b"
    assert after.origin["kernel"] == dest["kernel_release"]
    # WORKAROUND levels are the destination's; PSCI and the bitmaps travel with the guest.
    for reg in (WA1, WA2, WA3):
        assert after.firmware[reg] == dest["registers"][reg]
    for reg in ("PSCI_VERSION", "STD_BMAP", "STD_HYP_BMAP", "VENDOR_HYP_BMAP"):
        assert after.firmware[reg] == before.firmware[reg]
    # The list the guest's QEMU now migrates is the destination kernel's, same vCPU features.
    assert after.features == before.features
    assert after.cpreg_count == len(dest["cpreg_lists"][after.features or "none"])
    assert len(after.history) == 1
    entry = after.history[0]
    assert (entry["op"], entry["host"], entry["verdict"]) == ("migrate", "host-b", "allow")
    # The source's persistent definition is untouched (libvirt: hook XML is live-only).
    inactive = record_of(hosts.dumpxml("a", guest_name, inactive=True))
    assert inactive is not None and inactive.origin["event"] == "stamped"

    summary = audit(hosts, "b", guest_name, 1)
    assert summary["total"] == 1
    assert summary["by_decision"] == {"allow": 1}
    assert audit(hosts, "a", guest_name, 0, timeout=0)["total"] == 0


# ---------------------------------------------------------------- 2. incompatible hosts


@pytest.mark.parametrize(
    ("source", "destination", "code", "reason_start", "also"),
    [
        # The 6.12 guest's QEMU sends 258 registers; 5.10's QEMU takes 237. PSCI 1.1 > 1.0 too.
        (
            "6.12__a57",
            "5.10__a57",
            "CPREG_COUNT",
            "the source QEMU will send 258 registers but the destination legacy QEMU accepts "
            "at most 237",
            "PSCI_UNSUPPORTED",
        ),
        # A guest booted on 7.2 has PSCI 1.3; 6.12 implements up to 1.1.
        (
            "7.2__a57",
            "6.12__a57",
            "PSCI_UNSUPPORTED",
            "PSCI_VERSION guest=1.3 destination=1.1: ",
            None,
        ),
    ],
    ids=["6.12-to-5.10-count", "7.2-to-6.12-psci"],
)
def test_incompatible_host_vetoes(
    hosts: TwoHosts,
    guest_name: str,
    source: str,
    destination: str,
    code: str,
    reason_start: str,
    also: str | None,
) -> None:
    configure(hosts, "a", source)
    configure(hosts, "b", destination)
    qemu = start_stamped(hosts, "a", guest_name, source)

    res = hosts.migrate("a", "b", guest_name)

    reason = assert_migration_vetoed(hosts, res, "a", "b", guest_name, code, qemu)
    assert reason.startswith(reason_start), reason
    consequence, _, remedy = reason.partition("; remedy: ")
    assert consequence.endswith(f"({REFUSE_LATE})"), reason
    # A guest blocked by its PSCI version alone is told how to become movable (kvm-psci-version).
    assert (remedy.startswith("cold-boot the guest with kvm-psci-version=1.1 ")
            if code == "PSCI_UNSUPPORTED" else remedy == ""), reason
    record = record_of(hosts.dumpxml("a", guest_name))
    assert record is not None and record.history == []  # the source's record is untouched
    summary = audit(hosts, "b", guest_name, 1)
    assert summary["total"] == 1
    assert summary["by_decision"] == {"veto": 1}
    assert code in summary["by_code"]
    if also:
        assert also in summary["by_code"]
    assert summary["latest_vetoes"][0]["domain"] == guest_name
    assert summary["latest_vetoes"][0]["codes"][0] == code


def test_warn_mode_lets_the_incompatible_migration_through(
    hosts: TwoHosts, guest_name: str
) -> None:
    """mode = warn: the same move is allowed (TCG migrates anyway) and logged as 'warn'."""
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "5.10__a57", mode="warn")
    start_stamped(hosts, "a", guest_name, "6.12__a57")

    res = hosts.migrate("a", "b", guest_name)

    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    summary = audit(hosts, "b", guest_name, 1)
    assert summary["by_decision"] == {"warn": 1}
    assert "CPREG_COUNT" in summary["by_code"]


# ---------------------------------------------------------------- 3. guests without a record


@pytest.mark.parametrize("unrecorded", ["allow", "veto"])
def test_guest_without_record(hosts: TwoHosts, guest_name: str, unrecorded: str) -> None:
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "6.12__a57", unrecorded=unrecorded)
    hosts.define_and_start("a", guest_name)  # plain XML: no psci-hook record
    qemu = hosts.qemu_pid("a", guest_name)
    assert qemu

    res = hosts.migrate("a", "b", guest_name)

    summary = audit(hosts, "b", guest_name, 1)
    assert summary["total"] == 1
    assert "NO_RECORD" in summary["by_code"]
    if unrecorded == "allow":
        assert res.rc == 0, res.stderr
        assert hosts.is_running("b", guest_name)
        assert record_of(hosts.dumpxml("b", guest_name)) is None
        assert summary["by_decision"] == {"allow": 1}
    else:
        reason = assert_migration_vetoed(hosts, res, "a", "b", guest_name, "NO_RECORD", qemu)
        # A policy veto: nothing says the destination would refuse this guest.
        assert REFUSE_LATE not in reason, reason
        assert summary["by_decision"] == {"veto": 1}


# ---------------------------------------------------------------- 4. one-way moves


def test_workaround_ratchet_is_one_way(hosts: TwoHosts, guest_name: str) -> None:
    """a57 host (WA1 = WA3 = NOT_AVAIL) -> a76 host (WA1 = NOT_REQUIRED, WA3 = AVAIL): allowed,
    the guest takes b's levels; the way back is refused: KVM would reject the higher levels."""
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "6.12__a76")
    start_stamped(hosts, "a", guest_name, "6.12__a57")

    res = hosts.migrate("a", "b", guest_name)
    assert res.rc == 0, res.stderr
    record = record_of(hosts.dumpxml("b", guest_name))
    assert record is not None
    a76 = profile_data("6.12__a76")["registers"]
    assert (record.firmware[WA1], record.firmware[WA3]) == (a76[WA1], a76[WA3]) == (2, 1)
    assert record.history[-1]["codes"].split() == ["WA_RATCHET"]
    qemu_b = hosts.qemu_pid("b", guest_name)
    assert qemu_b

    back = hosts.migrate("b", "a", guest_name)

    # a still has the guest's persistent (inactive) definition from before, nothing running.
    reason = assert_migration_vetoed(
        hosts, back, "b", "a", guest_name, "WA_LEVEL_TOO_HIGH", qemu_b, dst_domains=[guest_name]
    )
    assert reason.startswith(f"{WA1} guest=NOT_REQUIRED destination=NOT_AVAIL: "), reason
    assert hosts.domstate("a", guest_name) == "shut off"
    b_summary = audit(hosts, "b", guest_name, 1)
    assert b_summary["by_decision"] == {"allow": 1}
    assert "WA_RATCHET" in b_summary["by_code"]
    a_summary = audit(hosts, "a", guest_name, 1)
    assert a_summary["by_decision"] == {"veto": 1}
    assert "WA_LEVEL_TOO_HIGH" in a_summary["by_code"]


def test_silently_dropped_workaround_is_vetoed(hosts: TwoHosts, guest_name: str) -> None:
    """5.10 a76 guest (WA3 = AVAIL) -> a 5.4 kernel without WORKAROUND_3 (synthetic profile):
    legacy QEMU would drop WA3 silently and the guest would keep relying on it."""
    configure(hosts, "a", "5.10__a76")
    configure(hosts, "b", "synthetic-5.4__a76")
    qemu = start_stamped(hosts, "a", guest_name, "5.10__a76")

    res = hosts.migrate("a", "b", guest_name)

    reason = assert_migration_vetoed(hosts, res, "a", "b", guest_name, "WA_DROPPED", qemu)
    assert reason.startswith(f"{WA3} guest=AVAIL"), reason
    # The danger of WA_DROPPED is that the destination would NOT refuse: the reason must not
    # say it would.
    assert REFUSE_LATE not in reason, reason
    summary = audit(hosts, "b", guest_name, 1)
    assert summary["by_decision"] == {"veto": 1}
    assert "WA_DROPPED" in summary["by_code"]


# ---------------------------------------------------------------- 5. restore


def test_restore_on_another_host_follows_the_same_rules(hosts: TwoHosts, guest_name: str) -> None:
    configure(hosts, "a", "6.12__a57")
    start_stamped(hosts, "a", guest_name, "6.12__a57")
    saved = hosts.save("a", guest_name)

    configure(hosts, "b", "5.10__a57")
    res = hosts.restore("b", saved)

    assert res.rc == 1
    first, _, rest = res.stderr.partition("\n")
    assert first == f"error: Failed to restore domain from {saved}"
    assert rest.startswith("error: Hook script execution failed: internal error: Child process")
    assert hook_failure_prefix(guest_name, "restore") + veto_line("CPREG_COUNT", guest_name) in rest
    # A restore fails after reading the image, not after copying memory between hosts.
    assert "(QEMU would refuse this only after reading all guest memory from the saved image)" \
        in rest, rest
    assert hosts.domains("b") == []
    assert saved.exists()

    configure(hosts, "b", "6.12__a76")
    res = hosts.restore("b", saved)

    assert res.rc == 0, res.stderr
    assert hosts.is_running("b", guest_name)
    record = record_of(hosts.dumpxml("b", guest_name))
    assert record is not None
    assert (record.origin["event"], record.origin["host"]) == ("restored", "host-b")
    assert record.firmware[WA1] == 2 and record.firmware[WA3] == 1  # b's levels (ratchet)
    assert [(h["op"], h["host"], h["verdict"]) for h in record.history] == [
        ("restore", "host-b", "allow")
    ]
    summary = audit(hosts, "b", guest_name, 2)
    assert summary["total"] == 2
    assert summary["by_decision"] == {"veto": 1, "allow": 1}


# ---------------------------------------------------------------- 6. the audit trail


def test_audit_text_report_over_both_hosts(hosts: TwoHosts, guest_name: str) -> None:
    """An allow on b and a veto on a, read back by `psci-hook audit` from both syslog files."""
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "6.12__a76")
    start_stamped(hosts, "a", guest_name, "6.12__a57")
    assert hosts.migrate("a", "b", guest_name).rc == 0
    assert hosts.migrate("b", "a", guest_name).rc == 1
    audit(hosts, "a", guest_name, 1)
    audit(hosts, "b", guest_name, 1)

    logs = [str(p) for p in hosts.syslog_paths.values()]
    res = psci_hook("audit", *logs, "--domain", guest_name)

    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == f"read {', '.join(logs)}"  # where it looked
    assert lines[1] in (
        "psci-hook decisions: 2 (allow 1, veto 1)",
        "psci-hook decisions: 2 (veto 1, allow 1)",
    ), lines[1]
    vetoes = [line for line in lines if guest_name in line]
    assert len(vetoes) == 1
    assert re.search(rf"\b{guest_name}  migrate  WA_LEVEL_TOO_HIGH\b", vetoes[0]), vetoes[0]
    # Each event is one syslog line from the host that decided, tagged psci-hook.
    text_a = hosts.read_log("a")
    ours = [line for line in text_a.splitlines() if f'"domain": "{guest_name}"' in line]
    assert len(ours) == 1
    assert re.match(r"^\S+ host-a psci-hook: \{", ours[0]), ours[0]


# ---------------------------------------------------------------- 7. the watcher


def test_watcher_records_a_freshly_started_guest_before_it_migrates(
    hosts: TwoHosts, guest_name: str
) -> None:
    """`psci-hook watch` on a (as its service runs it) records a guest booted from plain XML;
    b, which vetoes guests without a record, then checks that record: allowed, ratchet."""
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "6.12__a76", unrecorded="veto")
    mark = hosts.log_mark("a")
    watcher = hosts.spawn("a", psci_hook_command(), "watch", match="psci-hook")
    try:
        log = hosts.wait_log("a", "connected to libvirt", since=mark, timeout=20)
        assert "connected to libvirt" in log, log
        hosts.define_and_start("a", guest_name)  # plain XML: no record

        def live_record() -> Record | None:
            return record_of(hosts.dumpxml("a", guest_name))

        record = wait_for(live_record, 20, "the watcher's record")
        a57 = profile_data("6.12__a57")
        assert record.origin["event"] == "booted"
        assert record.origin["host"] == "host-a"
        assert record.origin["kernel"] == a57["kernel_release"]
        for reg, value in a57["registers"].items():
            assert record.firmware[reg] == value, reg

        res = hosts.migrate("a", "b", guest_name)

        assert res.rc == 0, res.stderr
        after = record_of(hosts.dumpxml("b", guest_name))
        assert after is not None
        assert (after.origin["event"], after.origin["host"]) == ("migrated", "host-b")
        assert after.firmware[WA1] == 2 and after.firmware[WA3] == 1
        assert after.history[-1]["codes"].split() == ["WA_RATCHET"]
        summary = audit(hosts, "b", guest_name, 1)
        assert summary["by_decision"] == {"allow": 1}
        assert "NO_RECORD" not in summary["by_code"]
    finally:
        assert hosts.stop_spawned("a", watcher) == 0

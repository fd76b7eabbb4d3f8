"""Golden version-1 records (tests/golden/records/): the format pinned in both directions.

Each file is the whole <psci:record> element as psci-hook writes it (record_xml). Reading a
stored file gives exactly the state built here from a probed profile, and writing that state
gives the stored bytes: a change of the format shows here before it reaches a guest. The
`newer-release` file is the same record as a later version-1 writer might add to it (an
element, attributes, an origin event, a history op and code, a register name this release does
not know, in the list by its id): it reads as the same state, with the unknown name listed.

Regenerate after a deliberate format change: PSCI_HOOK_REGENERATE_GOLDEN=1 pytest this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

from psci_hook.engine import GuestState
from psci_hook.profile import load_profile
from psci_hook.record import (
    GuestRecord,
    HistoryEntry,
    Origin,
    Override,
    parse_record,
    record_xml,
)

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "records"
PROBED = HERE / "data" / "probed-profiles"


def golden_records() -> dict[str, GuestRecord]:
    profile = load_profile(PROBED / "6.1__a57.json")
    state = GuestState.booted_on(profile, profile.default_features())
    booted = GuestRecord(state, Origin("booted", "host-a", profile.kernel_release,
                                       "2026-11-30T10:00:00Z",
                                       "0e2e0000-0000-4000-8000-00000000000a"))
    migrated = GuestRecord(
        state, Origin("migrated", "host-b", profile.kernel_release, "2026-11-30T11:00:00Z"),
        history=(HistoryEntry("2026-11-30T11:00:00Z", "migrate", "host-b", "allow",
                              ("WA_RATCHET", "REG_DROPPED")),),
        override=Override(frozenset({"WA_LEVEL_TOO_HIGH"}), "ticket 4711"))
    return {"v1-booted": booted, "v1-migrated": migrated,
            "v1-persistent-copy": migrated.with_status("persistent-copy")}


def read(name: str) -> str:
    return (GOLDEN / f"{name}.xml").read_text(encoding="ascii")


def parse(text: str) -> GuestRecord:
    return parse_record(etree.fromstring(text.encode()))


RECORDS = golden_records()
if os.environ.get("PSCI_HOOK_REGENERATE_GOLDEN"):
    for _name, _record in RECORDS.items():
        (GOLDEN / f"{_name}.xml").write_text(record_xml(_record, indent="") + "\n")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_a_stored_golden_record_reads_as_its_state(name: str) -> None:
    assert parse(read(name)) == RECORDS[name]


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_writing_the_same_state_gives_the_same_bytes(name: str) -> None:
    assert record_xml(RECORDS[name], indent="") + "\n" == read(name)


def test_what_a_newer_version_1_writer_adds_is_read_past() -> None:
    text = read("v1-migrated")
    newer = (text
             .replace('version="1"', 'version="1" written-by="psci-hook 9.0"')
             .replace('event="migrated"', 'event="teleported" zone="z1"')
             .replace("<psci:vcpu ", '<psci:provenance tool="x"/>\n  <psci:vcpu ')
             .replace('op="migrate"', 'op="rehearse"')
             .replace('codes="WA_RATCHET', 'codes="NEW_CODE WA_RATCHET')
             .replace("</psci:firmware>",
                      '  <psci:reg name="SMCCC_ARCH_WORKAROUND_4" value="0x1"/>\n  '
                      "</psci:firmware>"))
    assert newer.count("SMCCC_ARCH_WORKAROUND_4") == 1 and "teleported" in newer
    record = parse(newer)
    assert record.state == RECORDS["v1-migrated"].state
    assert record.unknown == ("SMCCC_ARCH_WORKAROUND_4",)
    assert record.origin.event == "teleported"
    assert record.history[0].op == "rehearse" and "NEW_CODE" in record.history[0].codes

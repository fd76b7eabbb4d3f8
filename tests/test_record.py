"""The guest record: written, read back exactly, and validated as untrusted input."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import pytest
from lxml import etree

from psci_hook import registers as regs
from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState
from psci_hook.profile import HostProfile
from psci_hook.record import (
    NAMESPACE,
    GuestRecord,
    HistoryEntry,
    Origin,
    Override,
    RecordError,
    RecordVersionUnknown,
    decode_list,
    encode_list,
    list_digest,
    parse_record,
    read_record,
    record_xml,
)

ORIGIN = Origin("booted", "host-a", "6.1.0-26-arm64", "2026-11-30T00:00:00Z", "uuid-1")


def record_for(profile: HostProfile, **kw: object) -> GuestRecord:
    state = GuestState.booted_on(profile)
    state = GuestState(state.registers, state.features, state.cpreg_list,
                       {"ID_AA64MMFR1_EL1": 0x11010211122}, {"CLIDR_EL1": 0x2000021,
                                                             "CCSIDR_0": 2})
    return GuestRecord(state, ORIGIN, **kw)  # type: ignore[arg-type]


def reparse(text: str) -> GuestRecord:
    return parse_record(etree.fromstring(text))


def test_round_trip_is_exact(bundled: dict[str, HostProfile]) -> None:
    record = record_for(bundled["6.12__max"],
                        history=(HistoryEntry("2026-11-30T01:00:00Z", "migrate", "host-b",
                                              "allow", ("WA_RATCHET",)),),
                        override=Override(frozenset({"WA_LEVEL_TOO_HIGH"}), "ticket 1"))
    assert reparse(record_xml(record, "    ")) == record


def test_history_is_bounded(bundled: dict[str, HostProfile]) -> None:
    record = record_for(bundled["6.1__a57"])
    for i in range(12):
        record = record.with_check(HistoryEntry(f"2026-11-30T00:00:{i:02d}Z", "migrate",
                                                "h", "allow"), 8)
    assert len(record.history) == 8 and record.history[-1].time.endswith("11Z")


def test_list_encoding_is_compact_and_exact(bundled: dict[str, HostProfile]) -> None:
    ids = bundled["6.12__max"].cpreg_lists["pmu+pauth+sve"]  # type: ignore[index]
    text = encode_list(ids)
    assert decode_list(text, len(ids), list_digest(ids)) == ids
    assert len(text) < 8 * len(ids)  # far below 18 characters per "0x..." id
    with pytest.raises(RecordError, match="digest"):
        decode_list(text.replace(" 1 ", " 2 ", 1), len(ids), list_digest(ids))
    with pytest.raises(RecordError, match="count"):
        decode_list(text, len(ids) + 1, list_digest(ids))


BUILTIN_SHA256_MODULES = ("_sha256", "_sha2")  # Python <= 3.11, 3.12+


def _builtin_sha256_module() -> tuple[str, ModuleType]:
    """The running Python's builtin SHA-256 module, by name."""
    for name in BUILTIN_SHA256_MODULES:
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    raise AssertionError(f"this Python has none of {BUILTIN_SHA256_MODULES}")


@pytest.mark.parametrize("other_python", [False, True], ids=["this-python", "other-python"])
def test_the_list_digest_needs_no_hashlib(bundled: dict[str, HostProfile],
                                         monkeypatch: pytest.MonkeyPatch,
                                         other_python: bool) -> None:
    """Python's builtin SHA-256 computes it, so the hook never imports hashlib (which
    initialises OpenSSL): the same digest with `import hashlib` made to fail. Only one Python
    runs here, so the other versions' name of the builtin module (``other_python``) is given
    by moving this one's."""
    ids = bundled["6.12__max"].cpreg_lists["pmu+pauth+sve"]  # type: ignore[index]
    expected = list_digest(ids)
    if other_python:
        name, module = _builtin_sha256_module()
        (other,) = set(BUILTIN_SHA256_MODULES) - {name}
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError
        monkeypatch.setitem(sys.modules, other, module)
    monkeypatch.setitem(sys.modules, "hashlib", None)
    assert list_digest(ids) == expected


def _mutate(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('version="1"', 'version="2"', "version"),
    ('value="0x10001"', 'value="-1"', "non-negative integer"),
    ('value="0x10001"', 'value="lots"', "non-negative integer"),
    ('value="0x10001"', 'value="0x10000000000000000"', "integer"),
    ('value="0x10001"', 'value="99999999999999999999"', "64 bits"),
    ('time="2026-11-30T00:00:00Z"', 'time="yesterday"', "time"),
    ('count="269"', 'count="270"', "count"),
    ('count="269"', 'count="100000"', "implausible"),
])
def test_malformed_records_are_findings_not_crashes(bundled: dict[str, HostProfile],
                                                    old: str, new: str, message: str) -> None:
    text = record_xml(record_for(bundled["6.12__max"]), "    ")
    with pytest.raises(RecordError, match=message):
        reparse(_mutate(text, old, new))


@pytest.mark.parametrize(("old", "new", "unknown"), [
    ('name="PSCI_VERSION"', 'name="PSCI_VERSIONS"', ("PSCI_VERSIONS",)),
    ('name="ID_AA64MMFR1_EL1"', 'name="ID_WHATEVER"', ("ID_WHATEVER",)),
    ('name="CLIDR_EL1"', 'name="CSSELR_EL1"', ("CSSELR_EL1",)),
    ('features="pmu+pauth+sve"', 'features="pmu+mte"', ("feature mte",)),
    ('event="booted"', 'event="hacked"', ()),
    ("<psci:vcpu", "<psci:surprise/><psci:vcpu", ()),
    ("<psci:vcpu", '<psci:future newer="yes"/><x:y xmlns:x="urn:x"/><psci:vcpu', ()),
    ('version="1"', 'version="1" newer-attribute="x"', ()),
])
def test_what_a_newer_release_adds_is_ignored_or_unverified(
        bundled: dict[str, HostProfile], old: str, new: str, unknown: tuple[str, ...]) -> None:
    """The versioning rule (psci_hook.record): elements, attributes and words of a newer
    release are skipped; register and feature names it knows and this one does not are left
    out of the state and listed (the hook reports them FW_UNVERIFIED)."""
    text = record_xml(record_for(bundled["6.12__max"]), "    ")
    assert new not in text
    record = reparse(_mutate(text, old, new))
    assert record.unknown == unknown
    assert record.vouched


def test_a_newer_record_version_is_not_read(bundled: dict[str, HostProfile]) -> None:
    text = record_xml(record_for(bundled["6.12__max"]), "    ")
    with pytest.raises(RecordVersionUnknown, match="version 2 is newer"):
        reparse(text.replace('version="1"', 'version="2"', 1))


def test_firmware_and_list_must_agree(bundled: dict[str, HostProfile]) -> None:
    text = record_xml(record_for(bundled["6.12__max"]), "    ")
    start = text.index('<psci:reg name="STD_BMAP"')
    end = text.index("/>", start) + 2
    with pytest.raises(RecordError) as caught:
        reparse(text[:start] + text[end:])
    assert str(caught.value) == "cpreg-list and <firmware> disagree on the firmware registers"


def test_an_empty_origin_event_is_refused(bundled: dict[str, HostProfile]) -> None:
    text = record_xml(record_for(bundled["6.12__max"]), "    ")
    with pytest.raises(RecordError) as caught:
        reparse(_mutate(text, 'event="booted"', 'event=""'))
    assert str(caught.value) == "the origin event is empty"


@pytest.mark.parametrize("cpreg_list", [(), None])
def test_an_empty_list_and_no_list_read_back_as_written(cpreg_list: tuple[int, ...] | None
                                                        ) -> None:
    """An empty list is a list (count 0, no text), not the absence of one."""
    record = GuestRecord(GuestState(registers={}, cpreg_list=cpreg_list), ORIGIN)
    assert reparse(record_xml(record, "    ")).state.cpreg_list == cpreg_list


def test_override_must_name_known_codes(bundled: dict[str, HostProfile]) -> None:
    record = record_for(bundled["6.1__a57"], override=Override(frozenset({"CPREG_COUNT"}), "x"))
    text = record_xml(record, "    ")
    with pytest.raises(RecordError, match="unknown codes"):
        reparse(_mutate(text, 'codes="CPREG_COUNT"', 'codes="EVERYTHING"'))


def test_override_codes_are_written_sorted(bundled: dict[str, HostProfile]) -> None:
    """A set has no order of its own (string hashes differ per process): eight codes come out
    sorted, the same bytes every time."""
    codes = ("CPREG_COUNT", "FEATURE_MISSING", "ID_REG_MISMATCH", "PSCI_UNSUPPORTED",
             "REG_MISSING", "SVE_LENGTHS_MISSING", "WA_DROPPED", "WA_LEVEL_TOO_HIGH")
    record = record_for(bundled["6.1__a57"], override=Override(frozenset(codes), "x"))
    assert f'codes="{" ".join(codes)}"' in record_xml(record, "    ")


def test_two_records_in_one_domain(bundled: dict[str, HostProfile]) -> None:
    rec = record_xml(record_for(bundled["6.1__a57"]), "    ")
    doc = (f"<domain type='kvm'><name>x</name><metadata>{rec}{rec}</metadata></domain>"
           ).encode()
    with pytest.raises(RecordError, match="2 psci-hook records"):
        read_record(parse_domain(doc).root)


def test_a_domain_without_record(bundled: dict[str, HostProfile]) -> None:
    doc = f"<domain><metadata><x:y xmlns:x='{NAMESPACE}x'/></metadata></domain>".encode()
    assert read_record(parse_domain(doc).root) is None
    assert regs.PSCI_VERSION.name in record_xml(record_for(bundled["6.1__a57"]), "    ")

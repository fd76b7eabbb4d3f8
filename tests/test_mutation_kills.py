"""Rules that a small, realistic slip would break without any other test noticing.

Each test here was written against a bug planted in the code (issue 19, and the survivors of
benchmarks/mutation.py): the legacy merge's reference point, the version thresholds at their
boundary, the lenient reading of a broken configuration, the exact bytes of an insertion.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from lxml import etree

from psci_hook import __version__, cli, rehearsal
from psci_hook import registers as regs
from psci_hook.domainxml import MAX_DOMAIN_XML, parse_domain
from psci_hook.engine import (
    WA2_SIMPLIFIED_SINCE,
    WRITABLE_CACHE_GEOMETRY_SINCE,
    WRITABLE_ID_REGS_SINCE,
    GuestState,
    candidate_values,
    decide,
    judge_firmware_value,
)
from psci_hook.environment import Environment
from psci_hook.hook import Outcome, _write_once, main
from psci_hook.policy import Policy, PolicyError, load_policy, parse_policy
from psci_hook.profile import (
    QEMU_VERSION_FILE,
    HostProfile,
    ProfileError,
    feature_key,
    load_profile,
    loads_profile,
    parse_feature_key,
    qemu_generation_for_version,
    read_qemu_version,
)
from psci_hook.record import (
    MAX_LIST,
    MAX_TEXT,
    NAMESPACE,
    GuestRecord,
    HistoryEntry,
    Origin,
    Override,
    RecordError,
    decode_list,
    encode_list,
    list_digest,
    parse_record,
    read_record,
    record_xml,
)
from psci_hook.rehearsal import Result
from psci_hook.splice import SpliceError, layout, splice_record
from psci_hook.status import ExitStatus
from tests.helpers import REPO, fw, make_profile
from tests.hooktools import DOMAIN, CollectingSink, SyslogListener, profile_file, stamped
from tests.test_guest_features import ALL, PSCI_0_1_GLOBAL, SVE_LENGTHS, host, xml

V = regs.psci_value
WA2 = regs.SMCCC_ARCH_WORKAROUND_2.reg_id


# ---------------------------------------------------------------------------------------------
# The legacy merge: below the DESTINATION's last register the load fails, above it the register
# is dropped. The source's own highest register plays no part.
# ---------------------------------------------------------------------------------------------

SYSREGS = [regs.sysreg_id(3, 0, 1, 0, i) for i in range(8)]


def test_the_legacy_merge_compares_with_the_destinations_last_register() -> None:
    source_fw = fw(PSCI_VERSION=V(1, 1), SMCCC_ARCH_WORKAROUND_1=1, SMCCC_ARCH_WORKAROUND_2=0,
                   SMCCC_ARCH_WORKAROUND_3=1, STD_BMAP=1, STD_HYP_BMAP=1, VENDOR_HYP_BMAP=3)
    dest_fw = fw(PSCI_VERSION=V(1, 1), SMCCC_ARCH_WORKAROUND_1=1)
    source = make_profile("6.1.0", source_fw, {"none": tuple(sorted({*SYSREGS, *source_fw}))})
    # The destination lacks every other system register and everything above WORKAROUND_1; a
    # dozen registers of its own keep the count check out of the way.
    own = [regs.sysreg_id(3, 0, 2, 0, i) for i in range(12)]
    dest_list = tuple(sorted({*SYSREGS[::2], *own, *dest_fw}))
    destination = make_profile("5.4.0", dest_fw, {"none": dest_list})
    decision = decide(GuestState.booted_on(source, frozenset()), destination, "legacy")
    merged = {f.reg_id: f.code for f in decision.findings
              if f.reg_id is not None and f.reg_id not in dest_list}
    below = {i: "REG_MISSING" for i in SYSREGS[1::2]}
    above = {WA2: "REG_DROPPED",  # NOT_AVAIL: nothing lost
             regs.SMCCC_ARCH_WORKAROUND_3.reg_id: "WA_DROPPED",
             regs.STD_BMAP.reg_id: "REG_DROPPED", regs.STD_HYP_BMAP.reg_id: "REG_DROPPED",
             regs.VENDOR_HYP_BMAP.reg_id: "REG_DROPPED"}
    assert merged == {**below, **above}
    assert max(dest_list) == regs.SMCCC_ARCH_WORKAROUND_1.reg_id < min(above)
    assert decision.codes == ["REG_MISSING", "WA_DROPPED", "REG_DROPPED"]
    # What is dropped is not carried: the guest keeps the destination's registers only.
    assert set(decision.guest_after.registers) == set(dest_fw)


# ---------------------------------------------------------------------------------------------
# Version thresholds, at the boundary.
# ---------------------------------------------------------------------------------------------

MMFR1 = regs.SYSREG_BY_NAME["ID_AA64MMFR1_EL1"]


@pytest.mark.parametrize(("release", "writable"), [
    ("6.6.63-arm64", False), ("6.7.0", True), ("6.7-rc1", True), ("6.10.0", True),
    ("5.15.0", False), ("7.0.0", True), ("custom-kernel", False),
])
def test_writable_id_registers_from_6_7(release: str, writable: bool) -> None:
    assert WRITABLE_ID_REGS_SINCE == (6, 7)
    guest = GuestState(registers={}, id_registers={"ID_AA64MMFR1_EL1": 0x1010211122})
    destination = make_profile(release, {}, id_registers={"ID_AA64MMFR1_EL1": 0x11010211122})
    decision = decide(guest, destination, "legacy")
    found = {f.register: (f.code, f.outcome, f.inferred) for f in decision.findings
             if f.register is not None}
    if writable:
        assert found == {"ID_AA64MMFR1_EL1": ("ID_REG_UNVERIFIED", "unverified", True)}
        assert not decision.vetoed
    else:
        assert found == {"ID_AA64MMFR1_EL1": ("ID_REG_MISMATCH", "rejected", True)}
        assert decision.vetoed


# CCSIDR values: LineSize in bits [2:0]. A 5.10/6.1 guest's real geometry (64-byte lines, 256
# sets, 4 ways) and a 6.3+ host's normalised one (1 set, 1 way, 64-byte lines).
REAL_CCSIDR = 0x701FE00A
NORMALISED_CCSIDR = 0x2


@pytest.mark.parametrize(("release", "settable"), [
    ("6.2.16", False), ("6.2-rc1", False), ("6.3.0", True), ("6.3-rc1", True),
    ("6.6.63-arm64", True), ("6.12.0", True), ("5.10.0", False), ("custom-kernel", False),
])
@pytest.mark.parametrize("name", ["CCSIDR_0", "CLIDR_EL1"])
def test_settable_cache_geometry_from_6_3(release: str, settable: bool, name: str) -> None:
    """arch/arm64/kvm/sys_regs.c: up to 6.2 demux_c15_set refuses any CCSIDR but the host's
    and CLIDR_EL1 is invariant; 7af0c2534f4c (6.3) made both settable (set_ccsidr,
    set_clidr), whatever the ID registers' own threshold (6.7)."""
    assert WRITABLE_CACHE_GEOMETRY_SINCE == (6, 3)
    guest = GuestState(registers={}, cache_geometry={name: REAL_CCSIDR})
    destination = make_profile(release, {}, cache_geometry={name: NORMALISED_CCSIDR})
    decision = decide(guest, destination, "legacy")
    found = {f.register: (f.code, f.outcome, f.inferred) for f in decision.findings
             if f.register is not None}
    if settable:
        assert found == {name: ("CACHE_UNVERIFIED", "unverified", True)}
        assert not decision.vetoed
    else:
        assert found == {name: ("CACHE_MISMATCH", "rejected", True)}
        assert decision.vetoed


@pytest.mark.parametrize(("guest_line", "dest_line", "refused"), [
    (2, 2, False), (3, 2, False), (1, 2, True), (0, 4, True), (7, 0, False)])
def test_settable_ccsidr_refuses_a_line_size_below_the_hosts(
        guest_line: int, dest_line: int, refused: bool) -> None:
    """set_ccsidr (6.3+) refuses a LineSize below the minimum the host derives from CTR_EL0,
    which is its own normalised CCSIDR's; CLIDR_EL1 has no such rule."""
    guest = GuestState(registers={}, cache_geometry={"CCSIDR_1": 0x1000 | guest_line,
                                                     "CLIDR_EL1": 0x1000 | guest_line})
    destination = make_profile("6.12.0", {}, cache_geometry={"CCSIDR_1": dest_line,
                                                             "CLIDR_EL1": dest_line})
    found = {f.register: f.code for f in decide(guest, destination, "legacy").findings
             if f.register is not None}
    assert found == {"CCSIDR_1": "CACHE_MISMATCH" if refused else "CACHE_UNVERIFIED",
                     "CLIDR_EL1": "CACHE_UNVERIFIED"}


@pytest.mark.parametrize(("release", "simplified"), [
    ("5.9.16", False), ("5.10.0", True), ("5.10-rc1", True), ("5.3.0", False), ("6.1.0", True),
])
def test_workaround_2_narrowed_from_5_10(release: str, simplified: bool) -> None:
    # UNKNOWN (1) against a NOT_AVAIL (0) destination: above it as is, equal once narrowed.
    assert WA2_SIMPLIFIED_SINCE == (5, 10)
    judgement = judge_firmware_value(WA2, 1, make_profile(release, {WA2: 0}))
    assert judgement.accepted is simplified and judgement.inferred
    assert judgement.code == ("ACCEPTED" if simplified else "WA_LEVEL_TOO_HIGH")


@pytest.mark.parametrize(("version", "generation"), [
    ("11.0.9", "legacy"), ("11.1.0", "tolerant"), ("11.1", "tolerant"), ("12.0.0", "tolerant"),
    ("10.2.0", "legacy"), ("7.2.0", "legacy"),
])
def test_tolerant_qemu_from_11_1(version: str, generation: str) -> None:
    assert qemu_generation_for_version(version) == generation
    profile = make_profile("6.12.0", {}, qemu_version=version)
    assert profile.generation == generation
    assert profile._replace(qemu_generation="legacy").generation == "legacy"


# ---------------------------------------------------------------------------------------------
# A configuration with mistakes: an on_error = veto line in it still counts, in any case (the
# hook reads what it can; here no host profile: PROFILE_UNAVAILABLE, and on_error decides).
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "status"), [
    ("[hook\non_error = veto\n", ExitStatus.INTERNAL_ERROR),
    ("[hook]\nON_ERROR = VETO\nmode = strict\n", ExitStatus.INTERNAL_ERROR),
    ("[hook]\n  On_Error : Veto  \nmode = strict\n", ExitStatus.INTERNAL_ERROR),
    ("[log]\non_error=veto\n[hook]\nmode = strict\n", ExitStatus.INTERNAL_ERROR),
    ("[hook]\non_error = allow\nmode = strict\n", ExitStatus.OK),
    ("[hook]\non_error = vetoed\nmode = strict\n", ExitStatus.OK),
    ("[hook]\n#on_error = veto\nmode = strict\n", ExitStatus.OK),
    ("[hook]\nmode = strict\n", ExitStatus.OK),
])
def test_a_broken_configuration_keeps_its_on_error_veto(
        tmp_path: Path, bundled: dict[str, HostProfile], text: str, status: ExitStatus) -> None:
    config = tmp_path / "broken.conf"
    config.write_text(text)
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == status
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert err.startswith("psci-hook: ERROR PROFILE_UNAVAILABLE domain vm1: ")
    assert err.endswith("; migration refused (on_error = veto)\n" if status else
                        "; migration allowed unchecked (on_error = allow)\n")
    assert env.stdout.getvalue() == b""  # type: ignore[attr-defined]
    assert sink.events[0]["policy"] == {"mode": "enforce", "unrecorded": "allow",
                                        "annotate": True,
                                        "on_error": "veto" if status else "allow"}
    assert sink.events[0]["config_problems"][0].startswith(f"{config}:")


def test_an_unreadable_configuration_cannot_say_veto(tmp_path: Path) -> None:
    config = tmp_path / "dir.conf"
    config.mkdir()
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], DOMAIN,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["config_problems"] == [
        f"{config}: cannot read: Is a directory; every setting takes its default"]


# ---------------------------------------------------------------------------------------------
# The bytes of an insertion: our element on its own line at its siblings' indentation, the
# closing tags after it where they were.
# ---------------------------------------------------------------------------------------------


def render(indent: str) -> str:
    return f"<r>\n{indent}  <c/>\n{indent}</r>"


HEAD = b"<domain type='kvm'>\n  <name>vm1</name>\n"
RECORD_AT_4 = b"<r>\n      <c/>\n    </r>"


@pytest.mark.parametrize(("before", "after"), [
    # Inside <metadata>, after its other children.
    (HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/>\n  </metadata>\n</domain>\n",
     HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/>\n    " + RECORD_AT_4
     + b"\n  </metadata>\n</domain>\n"),
    # No <metadata>: a new one, last in <domain>.
    (HEAD + b"</domain>\n",
     HEAD + b"  <metadata>\n    " + RECORD_AT_4 + b"\n  </metadata>\n</domain>\n"),
    # An empty <metadata/> becomes a whole element.
    (HEAD + b"  <metadata/>\n</domain>",
     HEAD + b"  <metadata>\n    " + RECORD_AT_4 + b"\n  </metadata>\n</domain>"),
    # Our old record is replaced where it is.
    (HEAD + b"  <metadata>\n    <p:record xmlns:p='" + NAMESPACE.encode() + b"'/>\n"
     b"    <a:x xmlns:a='urn:a'/>\n  </metadata>\n</domain>\n",
     HEAD + b"  <metadata>\n    " + RECORD_AT_4 + b"\n    <a:x xmlns:a='urn:a'/>\n"
     b"  </metadata>\n</domain>\n"),
    # A closing tag on the same line as the last child: nothing moves, nothing is added.
    (HEAD + b"  <metadata><a:x xmlns:a='urn:a'/></metadata>\n</domain>\n",
     HEAD + b"  <metadata><a:x xmlns:a='urn:a'/>" + RECORD_AT_4 + b"</metadata>\n</domain>\n"),
    (b"<domain><name>vm1</name></domain>",
     b"<domain><name>vm1</name><metadata>\n    " + RECORD_AT_4 + b"\n  </metadata></domain>"),
    # </metadata> indented unlike <metadata> (tabs, same width): not a line of ours to copy,
    # so the record goes right before the closing tag.
    (HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/>\n\t\t</metadata>\n</domain>\n",
     HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/>\n\t\t" + RECORD_AT_4
     + b"</metadata>\n</domain>\n"),
    # An indented root: the unit is how much deeper its children are, and the new <metadata>
    # lines up with them.
    (b"  <domain type='kvm'>\n    <name>vm1</name>\n  </domain>\n",
     b"  <domain type='kvm'>\n    <name>vm1</name>\n    <metadata>\n      <r>\n        <c/>\n"
     b"      </r>\n    </metadata>\n  </domain>\n"),
    # Children indented otherwise than the root (spaces under a tab): two spaces as well.
    (b"\t<domain>\n  <name>vm1</name>\n\t</domain>\n",
     b"\t<domain>\n  <name>vm1</name>\n\t  <metadata>\n\t    <r>\n\t      <c/>\n\t    </r>\n"
     b"\t  </metadata>\n\t</domain>\n"),
    # Children no deeper than the root: the unit is libvirt's two spaces.
    (b" <domain>\n <name>vm1</name>\n </domain>",
     b" <domain>\n <name>vm1</name>\n   <metadata>\n     <r>\n       <c/>\n     </r>\n"
     b"   </metadata>\n </domain>"),
    # A comment after the root that holds '</' is not the domain's end tag.
    (HEAD + b"</domain>\n<!-- was </devices> -->\n",
     HEAD + b"  <metadata>\n    " + RECORD_AT_4 + b"\n  </metadata>\n</domain>\n"
     b"<!-- was </devices> -->\n"),
    # ... nor one inside <metadata>, after its last child.
    (HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/><!-- </a:x> -->\n  </metadata>\n</domain>\n",
     HEAD + b"  <metadata>\n    <a:x xmlns:a='urn:a'/><!-- </a:x> -->\n    " + RECORD_AT_4
     + b"\n  </metadata>\n</domain>\n"),
])
def test_the_exact_bytes_of_an_insertion(before: bytes, after: bytes) -> None:
    spliced = splice_record(before, render)
    assert spliced.data == after
    start, end = spliced.inserted
    assert spliced.data[:start] + spliced.data[end:] == before if spliced.replaced is None \
        else spliced.data[:start] == before[:spliced.replaced[0]]


def test_the_record_goes_into_the_first_metadata_as_libvirt_reads_it() -> None:
    """libvirt reads the first <metadata> (src/conf/domain_conf.c, virDomainDefParseXML:
    ./metadata[1]); a second one, which libvirt itself never writes, is left as it is."""
    before = (b"<domain type='kvm'>\n  <metadata>\n    <a:x xmlns:a='urn:a'/>\n  </metadata>\n"
              b"  <metadata/>\n</domain>\n")
    spliced = splice_record(before, render)
    assert spliced.data.index(b"<r>") < spliced.data.index(b"<metadata/>")
    assert spliced.data.endswith(b"  <metadata/>\n</domain>\n")


def test_the_indentation_unit_is_the_documents() -> None:
    before = (b"<domain type='kvm'>\n    <name>vm1</name>\n    <metadata>\n"
              b"        <a:x xmlns:a='urn:a'/>\n    </metadata>\n</domain>\n")
    after = (b"<domain type='kvm'>\n    <name>vm1</name>\n    <metadata>\n"
             b"        <a:x xmlns:a='urn:a'/>\n        <r>\n          <c/>\n        </r>\n"
             b"    </metadata>\n</domain>\n")
    assert splice_record(before, render).data == after
    tabs = b"<domain>\n\t<name>vm1</name>\n</domain>\n"
    assert splice_record(tabs, render).data == (
        b"<domain>\n\t<name>vm1</name>\n\t<metadata>\n\t\t<r>\n\t\t  <c/>\n\t\t</r>\n"
        b"\t</metadata>\n</domain>\n")


def test_the_exact_text_of_a_record() -> None:
    state = GuestState(registers=fw(PSCI_VERSION=V(1, 1), SMCCC_ARCH_WORKAROUND_2=0x12),
                       features=frozenset({"pmu"}), id_registers={"ID_AA64MMFR1_EL1": 0x11},
                       cache_geometry={"CCSIDR_0": 2})
    record = GuestRecord(state, Origin("booted", "h\u00e9", "6.1.0", "2026-11-30T00:00:00Z",
                                       "u-1"),
                         (HistoryEntry("2026-12-01T00:00:00Z", "migrate", "b", "allow",
                                       ("WA_RATCHET",)),),
                         Override(frozenset({"WA_DROPPED", "REG_MISSING"}), "why"))
    assert record_xml(record, "    ") == (
        f'<psci:record xmlns:psci="{NAMESPACE}" version="1">\n'
        '      <psci:origin event="booted" host="h&#233;" host-uuid="u-1" kernel="6.1.0" '
        'time="2026-11-30T00:00:00Z"/>\n'
        '      <psci:vcpu features="pmu"/>\n'
        '      <psci:firmware>\n'
        '        <psci:reg name="PSCI_VERSION" value="0x10001"/>\n'
        '        <psci:reg name="SMCCC_ARCH_WORKAROUND_2" value="0x12"/>\n'
        '      </psci:firmware>\n'
        '      <psci:id-registers>\n'
        '        <psci:reg name="ID_AA64MMFR1_EL1" value="0x11"/>\n'
        '      </psci:id-registers>\n'
        '      <psci:cache-geometry>\n'
        '        <psci:reg name="CCSIDR_0" value="0x2"/>\n'
        '      </psci:cache-geometry>\n'
        '      <psci:override codes="REG_MISSING WA_DROPPED" reason="why"/>\n'
        '      <psci:history>\n'
        '        <psci:check time="2026-12-01T00:00:00Z" op="migrate" host="b" '
        'verdict="allow" codes="WA_RATCHET"/>\n'
        '      </psci:history>\n'
        '    </psci:record>')


def test_the_hook_inserts_the_record_before_the_closing_metadata_line(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = DOMAIN.replace(b"</domain>", b"  <metadata>\n    <a:x xmlns:a='urn:a'/>\n"
                            b"  </metadata>\n</domain>")
    unrecorded_then_annotated = stamped(domain, GuestState.booted_on(bundled["6.1__a57"]))
    head, _, rest = unrecorded_then_annotated.partition(b"    <psci:record ")
    assert head.endswith(b"<a:x xmlns:a='urn:a'/>\n") and rest.endswith(
        b"\n    </psci:record>\n  </metadata>\n</domain>\n")
    config = tmp_path / "c.conf"
    config.write_text(f"[host]\nprofile = {profile_file(tmp_path, bundled['6.12__a57'])}\n"
                      "[log]\ntarget = none\n")
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"],
                               unrecorded_then_annotated, {"PSCI_HOOK_CONFIG": str(config)},
                               run_dir=tmp_path)
    assert main(env, CollectingSink()) == ExitStatus.OK
    out = env.stdout.getvalue()  # type: ignore[attr-defined]
    assert out.startswith(head + b"    <psci:record ")
    assert out.endswith(b"\n    </psci:record>\n  </metadata>\n</domain>\n")


# ---------------------------------------------------------------------------------------------
# The hook's edges, in-process (tests/test_hardening.py runs them as libvirt does; a mutation
# run only sees what runs in its own process).
# ---------------------------------------------------------------------------------------------


def _hook_env(tmp_path: Path, argv: list[str], stdin: bytes, destination: HostProfile,
              monotonic: list[float] | None = None) -> Environment:
    config = tmp_path / "c.conf"
    config.write_text(f"[host]\nprofile = {profile_file(tmp_path, destination)}\n"
                      "[log]\ntarget = none\n")
    env = Environment.for_test(argv, stdin, {"PSCI_HOOK_CONFIG": str(config)},
                               run_dir=tmp_path)
    if monotonic is not None:
        ticks = iter(monotonic)
        env.monotonic = lambda: next(ticks)
    return env


@pytest.mark.parametrize("count", [12, 20])
def test_a_veto_event_lists_twelve_findings_and_counts_the_rest(tmp_path: Path,
                                                                count: int) -> None:
    # System registers the destination lacks, all below its last one: one REG_MISSING each.
    missing = ([regs.sysreg_id(3, 0, 5, 1, i) for i in range(8)] + [
        regs.sysreg_id(3, 0, 5, 2, i) for i in range(8)] + [
        regs.sysreg_id(3, 0, 5, 3, i) for i in range(4)])[:count]
    kept = [regs.sysreg_id(3, 0, 6, 0, i) for i in range(8)]
    own = [regs.sysreg_id(3, 0, 7, 0, i) for i in range(8)] + [
        regs.sysreg_id(3, 0, 7, 1, i) for i in range(8)] + [
        regs.sysreg_id(3, 0, 7, 2, i) for i in range(8)]
    registers = fw(PSCI_VERSION=V(1, 1))
    source = make_profile("6.1.0", registers, {"none": tuple(sorted({*missing, *kept,
                                                                      *registers}))})
    destination = make_profile("6.1.0", registers, {"none": tuple(sorted({*kept, *own,
                                                                           *registers}))})
    domain = stamped(DOMAIN, GuestState.booted_on(source, frozenset()))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain, destination)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.VETO
    event = sink.events[0]
    listed = event["findings"]
    assert isinstance(listed, list) and len(listed) == 12
    assert event.get("more_findings") == (count - 12 or None)  # none more: no count at all
    assert listed[0] == {"code": "REG_MISSING", "register": regs.register_name(missing[0])}
    assert event["codes"] == ["REG_MISSING"] and event["decision"] == "veto"
    assert event["reason"] == env.stderr.getvalue().split(": ", 2)[2].split(" (")[0]  # type: ignore[attr-defined]


def test_the_event_carries_the_run_and_the_destination(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"], monotonic=[100.0, 100.0, 100.25])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    event = sink.events[0]

    assert (event["duration_ms"], event["version"], event["op"]) == (250.0, __version__,
                                                                     "migrate")
    assert (event["domain"], event["uuid"]) == ("vm1", "c7a5fdbd-edaf-9455-926a-d65c16db1809")

    assert event["destination"] == {"hostname": socket.gethostname(),
                                    "kernel": bundled["6.12__a57"].kernel_release}
    assert event["guest_origin"] == {"host": "host-a", "kernel": "6.1.0-26-arm64",
                                     "event": "booted"}
    assert event["lists_compared"] is True and event["qemu_generation"] == "legacy"
    assert event["message"] == "" and event["decision"] == "allow"


def test_a_domain_that_is_not_arm64_is_left_alone(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    x86 = DOMAIN.replace(b"arch='aarch64' machine='virt-7.2'", b"arch='x86_64' machine='q35'")
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], x86, bundled["6.1__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["codes"] == ["NOT_APPLICABLE"]
    assert sink.events[0]["reason"] == "type=kvm arch=x86_64"
    assert env.stdout.getvalue() == b"" and env.stderr.getvalue() == ""  # type: ignore[attr-defined]


@pytest.mark.parametrize("argv", [["hook", "vm1", "migrate"], ["hook", "vm1", "migrate", "end",
                                                              "-"], ["hook"]])
def test_other_calls_are_ignored_without_an_event(
        tmp_path: Path, bundled: dict[str, HostProfile], argv: list[str]) -> None:
    env = _hook_env(tmp_path, argv, b"<domain", bundled["6.1__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK and sink.events == []
    assert env.stdout.getvalue() == b"" and env.stderr.getvalue() == ""  # type: ignore[attr-defined]


def test_oversized_input_is_drained_and_refused_as_xml_invalid(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:

    data = DOMAIN + b" " * MAX_DOMAIN_XML
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], data,
                    bundled["6.1__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert env.stdin.tell() == len(data)  # all of it read, so that libvirt can finish writing
    assert sink.events[0]["codes"] == ["XML_INVALID"]
    unreadable = _hook_env(tmp_path, ["hook", "vm1", "restore", "begin", "-"], DOMAIN,
                           bundled["6.1__a57"])
    unreadable.stdin.close()
    sink = CollectingSink()
    assert main(unreadable, sink) == ExitStatus.OK and sink.events[0]["codes"] == ["XML_INVALID"]
    assert unreadable.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        "psci-hook: ERROR XML_INVALID domain vm1: ")


def test_the_stderr_line_is_one_line(tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    # A domain name from the XML may hold line breaks and control characters.
    domain = DOMAIN.replace(b"<name>vm1</name>", b"<name>vm&#10;1&#13;&#9;x\x7f</name>")
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.1__a57"])
    config = tmp_path / "c.conf"
    config.write_text(config.read_text() + "[hook]\nunrecorded = veto\n")
    assert main(env, CollectingSink()) == ExitStatus.VETO
    assert env.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        "psci-hook: VETO NO_RECORD domain vm 1 x ")
    assert env.stderr.getvalue().count("\n") == 1  # type: ignore[attr-defined]


def test_a_reader_gone_away_leaves_the_streams_on_dev_null(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:

    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    config = tmp_path / "c.conf"
    config.write_text(config.read_text() + "[hook]\non_error = veto\ntimeout = 0.5\n"
                      "mode = strict\n")  # a mistake: allowed and annotated, and a CONFIG line
    pipes = []
    for _ in range(2):
        read_end, write_end = os.pipe()
        os.close(read_end)  # libvirt went away
        pipes.append(write_end)
    env.stdout = open(pipes[0], "wb", buffering=0)  # noqa: SIM115
    env.stderr = io.TextIOWrapper(open(pipes[1], "wb"), write_through=True)  # noqa: SIM115

    try:
        _write_once(env, Outcome(ExitStatus.OK, "allow", [], "a message", b"<domain/>"))
        # Both descriptors now lead to /dev/null: writing no longer fails.
        assert os.write(pipes[0], b"x") == 1 and os.write(pipes[1], b"x") == 1
        assert main(env, CollectingSink()) == ExitStatus.OK
    finally:
        env.stdout.close()
        env.stderr.close()


# ---------------------------------------------------------------------------------------------
# The record as untrusted input: each limit at its boundary, each refusal's exact line.
# ---------------------------------------------------------------------------------------------


def _record_text(**origin: str) -> str:
    fields = {"event": "booted", "host": "h", "kernel": "6.1.0", "time": "2026-11-30T00:00:00Z"}
    fields.update(origin)
    attrs = " ".join(f'{k}="{v}"' for k, v in fields.items())
    return (f'<psci:record xmlns:psci="{NAMESPACE}" version="1"><psci:origin {attrs}/>'
            '<psci:vcpu features="none"/><psci:firmware>'
            '<psci:reg name="PSCI_VERSION" value="0x10001"/></psci:firmware></psci:record>')


def _parse(text: str) -> GuestRecord:


    return parse_record(etree.fromstring(text))


def test_record_text_limits() -> None:

    assert MAX_TEXT == 256
    assert _parse(_record_text(host="h" * 256)).origin.host == "h" * 256
    assert _parse(_record_text(host="a b~")).origin.host == "a b~"
    for bad in ("h" * 257, "a&#10;b", "a&#9;b"):
        with pytest.raises(RecordError) as exc:
            _parse(_record_text(host=bad))
        assert str(exc.value) == "<origin> attribute 'host' is not plain text"
    with pytest.raises(RecordError) as exc:
        _parse(_record_text().replace(' kernel="6.1.0"', ""))
    assert str(exc.value) == "<origin> lacks the attribute 'kernel'"


@pytest.mark.parametrize(("value", "parsed"), [
    ("0xffffffffffffffff", (1 << 64) - 1), ("18446744073709551615", (1 << 64) - 1),
    ("0", 0), ("0x0", 0), ("0XAb", None), ("18446744073709551616", None), ("+1", None),
    ("1 ", None), ("0b1", None),
])
def test_record_values_are_64_bit_unsigned(value: str, parsed: int | None) -> None:

    text = _record_text().replace('value="0x10001"', f'value="{value}"')
    if parsed is not None:
        assert _parse(text).state.registers == {regs.PSCI_VERSION.reg_id: parsed}
        return
    with pytest.raises(RecordError) as exc:
        _parse(text)
    assert str(exc.value) in (f"value='{value}' does not fit in 64 bits",
                              f"value='{value}' is not a non-negative integer")


def test_the_migrated_list_limits() -> None:

    ids = (0x6030000000100000, 0x6030000000100001, 0x6030000000140000)
    assert encode_list(ids) == "6030000000100000 1 3ffff"
    assert decode_list("6030000000100000 1 3ffff", 3, list_digest(ids)) == ids
    assert list_digest(ids) == list_digest(list(ids)) and len(list_digest(ids)) == 16
    for text, count, message in (
            ("6030000000100000 0", 2, "cpreg-list is not strictly ascending"),
            ("6030000000100000 1", 3, "cpreg-list has 2 entries, its count says 3"),
            ("6030000000100000 X", 2, "cpreg-list entry 'X' is not lower-case hex"),
            ("6030000000100000 1", 2,
             "cpreg-list digest does not match its content (altered or truncated)")):
        with pytest.raises(RecordError) as exc:
            decode_list(text, count, list_digest(ids))
        assert str(exc.value) == message
    assert MAX_LIST == 4096
    head = _record_text().replace("</psci:firmware>", "</psci:firmware><psci:cpreg-list "
                                  'count="{}" digest="0">1</psci:cpreg-list>')
    with pytest.raises(RecordError) as exc:
        _parse(head.format(4097))
    assert str(exc.value) == "cpreg-list count 4097 is implausible (max 4096)"
    with pytest.raises(RecordError) as exc:
        _parse(head.format(4096))
    assert str(exc.value) == "cpreg-list has 1 entries, its count says 4096"


# ---------------------------------------------------------------------------------------------
# The configuration's refusals, each exactly: the one line an operator reads.
# ---------------------------------------------------------------------------------------------

ORIGIN_CONF = "/etc/psci-hook/psci-hook.conf"


@pytest.mark.parametrize(("text", "message"), [
    ("[hook]\nmode = strict",
     "2: mode 'strict' is not one of enforce, warn; the default (enforce) applies"),
    ("[hook]\nunrecorded = maybe",
     "2: unrecorded 'maybe' is not one of allow, veto; the default (allow) applies"),
    ("[host]\nqemu_generation = new", "2: qemu_generation 'new' is not one of auto, legacy, "
     "tolerant; the default (auto) applies"),
    ("[log]\ntarget = file", "2: target 'file' is not one of auto, journal, syslog, none; the "
     "default (auto) applies"),
    ("[hook]\nannotate = maybe", "2: annotate 'maybe' is not yes or no; the default (yes) applies"),
    ("[hook]\nrehearse = 2", "2: rehearse '2' is not yes or no; the default (yes) applies"),
    ("[hook]\nallow_domain_override = y",
     "2: allow_domain_override 'y' is not yes or no; the default (yes) applies"),
    ("[hook]\nveto_dropped_workarounds = sure",
     "2: veto_dropped_workarounds 'sure' is not yes or no; the default (yes) applies"),
    ("[hook]\nhistory_limit = many",
     "2: history_limit 'many' is not a whole number from 0 to 64; the default (8) applies"),
    ("[hook]\ntimeout = soon", "2: timeout 'soon' is not a number of seconds (no unit) from 0.1 "
     "to 300; the default (10) applies"),
    ("[hook]\ndomain_types = , ,", "2: domain_types is empty; the default (kvm) applies"),
    ("[hooks]\n", "1: unknown section [hooks] (did you mean 'hook'?); its settings are read by "
     "their names"),
    ("[hook]\nenforce = yes", "2: unknown setting 'enforce'; ignored"),
    ("[log]\nmode = warn", "2: mode belongs in [hook], not [log]; applied as [hook] mode"),
])
def test_each_refusal_is_exact(text: str, message: str) -> None:

    with pytest.raises(PolicyError) as exc:
        parse_policy(text, ORIGIN_CONF)
    assert str(exc.value) == f"{ORIGIN_CONF}:{message}"


def test_every_value_is_read_as_written() -> None:

    policy = parse_policy("[hook]\nmode = warn \nunrecorded =  veto\nannotate = off\n"
                          "on_error = veto\nrehearse = false\nallow_domain_override = 0\n"
                          "veto_dropped_workarounds = no\ntimeout = 7\nhistory_limit = 5\n"
                          "domain_types = kvm,, qemu ,\n"
                          "[host]\nprofile = /srv/p.json\nqemu_generation = legacy\n"
                          "[log]\ntarget = journal\njournal_socket = /run/j\n"
                          "syslog_socket = /run/s\n")
    assert policy._asdict() == {
        "mode": "warn", "unrecorded": "veto", "annotate": False, "on_error": "veto",
        "timeout": 7.0, "domain_types": frozenset({"kvm", "qemu"}),
        "host_profile": Path("/srv/p.json"), "qemu_generation": "legacy",
        "veto_dropped_workarounds": False, "rehearse": False, "allow_domain_override": False,
        "history_limit": 5, "log_target": "journal", "journal_socket": Path("/run/j"),
        "syslog_socket": Path("/run/s")}
    assert not policy.enforcing
    assert policy.summary() == {"mode": "warn", "unrecorded": "veto", "annotate": False,
                                "on_error": "veto"}
    # Each boolean setting is read from its own key, not from a neighbour.
    for key in ("annotate", "rehearse", "allow_domain_override", "veto_dropped_workarounds"):
        one = parse_policy(f"[hook]\n{key} = no")
        assert [k for k, v in one._asdict().items() if v is False] == [key]


def test_the_file_itself(tmp_path: Path) -> None:

    assert load_policy(tmp_path / "absent.conf") == Policy()
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    with pytest.raises(PolicyError) as exc:
        load_policy(directory)
    assert str(exc.value) == f"{directory}: cannot read: Is a directory; every setting takes " \
        "its default"
    latin = tmp_path / "latin.conf"
    latin.write_bytes(b"[hook]\n# caf\xe9\n")
    assert load_policy(latin) == Policy()  # a comment's bytes do not matter
    latin.write_bytes(b"[hook]\nmode = w\xe9rn\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(latin)
    assert str(exc.value) == f"{latin}:2: not UTF-8 text, or NUL bytes: line ignored"
    good = tmp_path / "good.conf"
    good.write_text("[hook]\n# caf\u00e9\nmode = warn\n", encoding="utf-8")
    assert load_policy(good) == Policy(mode="warn")
    bad = tmp_path / "bad.conf"
    bad.write_text("[hook]\nmode = strict\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(bad)
    assert str(exc.value).startswith(f"{bad}:2: mode 'strict'")


# ---------------------------------------------------------------------------------------------
# Host profiles: each refusal exactly (the line `check` and the hook print).
# ---------------------------------------------------------------------------------------------

PROFILE: dict[str, object] = {
    "schema": "psci-hook.host-profile/v1", "kernel_release": "6.1.0-26-arm64",
    "machine": "aarch64", "registers": {"PSCI_VERSION": 65537, "SMCCC_ARCH_WORKAROUND_1": 2},
    "cpreg_lists": {"pmu": ["0x603000000013c000", "0x6030000000140000", "0x6030000000140001"]},
}


def _profile_text(**changes: object) -> str:

    data = {k: v for k, v in {**PROFILE, **changes}.items() if v is not None}
    return json.dumps(data)


@pytest.mark.parametrize(("text", "message"), [
    ("{", "malformed JSON: Expecting property name enclosed in double quotes at line 1"),
    ("[]", "a profile must be a JSON object"),
    (_profile_text(schema="v2"),
     "schema must be 'psci-hook.host-profile/v1', found 'v2'"),
    (_profile_text(kernel_release=""), "'kernel_release' must be a non-empty string"),
    (_profile_text(kernel_release=6), "'kernel_release' must be a non-empty string"),
    (_profile_text(machine=64), "'machine' must be a string"),
    (_profile_text(registers=None),
     "'registers' is required (the firmware registers the kernel lists)"),
    (_profile_text(registers=[]), "'registers' must be an object"),
    (_profile_text(id_registers=[]), "'id_registers' must be an object"),
    (_profile_text(registers={"PSCI_VERSION": -1}),
     "registers.PSCI_VERSION = -1 is out of range 0..0xffffffffffffffff"),
    (_profile_text(registers={"PSCI_VERSION": 1 << 64}),
     f"registers.PSCI_VERSION = {1 << 64} is out of range 0..0xffffffffffffffff"),
    (_profile_text(registers={"PSCI_VERSION": True}),
     "registers.PSCI_VERSION must be a non-negative integer, not true"),
    (_profile_text(registers={"PSCI_VERSION": "1"}),
     'registers.PSCI_VERSION must be a non-negative integer, not "1"'),
    (_profile_text(registers={"PSCI_VERSIONS": 1}),
     "registers: unknown firmware register 'PSCI_VERSIONS'"),
    (_profile_text(cpreg_lists={"pmu": "0x6030000000140000"}),
     "cpreg_lists.pmu must be a list of register ids"),
    (_profile_text(cpreg_lists={"pmu": [1]}),
     "cpreg_lists.pmu[0] must be a string like '0x6030...'"),
    (_profile_text(cpreg_lists={"pmu": ["0x6030000000140000", "0x6030000000140000"]}),
     "cpreg_lists.pmu is not sorted ascending without duplicates at index 1"),
    (_profile_text(cpreg_lists={"pmu": ["0x6030000000100000", "0x6030000000140000",
                                        "0x6030000000140001"]}),
     "cpreg_lists.pmu[0] = 0x6030000000100000 is a core or SVE register, which QEMU does not "
     "migrate"),
    (_profile_text(cpreg_lists={"pmu": ["0x6030000000140000"]}),
     "cpreg_lists.pmu lists firmware registers ['PSCI_VERSION'] but 'registers' has "
     "['PSCI_VERSION', 'SMCCC_ARCH_WORKAROUND_1']"),
    (_profile_text(id_registers={"ID_NOPE_EL1": 1}),
     "id_registers: unknown ID register 'ID_NOPE_EL1'"),
    (_profile_text(id_registers={"ID_AA64MMFR1_EL1": -1}),
     "id_registers.ID_AA64MMFR1_EL1 = -1 is out of range 0..0xffffffffffffffff"),
    (_profile_text(cache_geometry={"CCSIDR_0": -1}),
     "cache_geometry.CCSIDR_0 = -1 is out of range 0..0xffffffffffffffff"),
    (_profile_text(qemu_version="7.2.0-rc1"),
     "'qemu_version' must look like '7.2.0', found '7.2.0-rc1'"),
    (_profile_text(qemu_version=7),
     "'qemu_version' must look like '7.2.0', found 7"),
    (_profile_text(qemu_generation="newest"),
     "'qemu_generation' must be legacy or tolerant, found 'newest'"),
])
def test_each_profile_refusal_is_exact(text: str, message: str) -> None:

    with pytest.raises(ProfileError) as exc:
        loads_profile(text, "f.json")
    assert str(exc.value) == f"f.json: {message}"


def test_a_profile_keeps_what_it_says(tmp_path: Path) -> None:

    profile = loads_profile(_profile_text(machine=None, qemu_version="11.1", hostname="b",
                                          qemu_generation="legacy", id_registers={},
                                          cache_geometry={"CLIDR_EL1": 0}))
    assert profile.machine == "aarch64" and profile.qemu_version == "11.1"
    assert profile.generation == "legacy" and profile.extra == {"hostname": "b"}
    assert (profile.id_registers, profile.cache_geometry) == ({}, {"CLIDR_EL1": 0})
    assert profile.to_dict() == {**PROFILE, "qemu_version": "11.1", "qemu_generation": "legacy",
                                 "id_registers": {}, "cache_geometry": {"CLIDR_EL1": 0},
                                 "hostname": "b"}
    assert profile.to_json().endswith("}\n") and '\n "schema": ' in profile.to_json()
    bare = loads_profile(_profile_text(cpreg_lists=None))
    assert bare.to_dict() == {k: v for k, v in PROFILE.items() if k != "cpreg_lists"}
    assert bare.cpreg_list(frozenset()) is None and bare.default_features() == frozenset()
    assert bare.generation == "legacy" and bare.kernel_version() == (6, 1)
    missing = tmp_path / "missing.json"
    with pytest.raises(ProfileError) as exc:
        load_profile(missing)
    assert str(exc.value) == f"{missing}: cannot read: No such file or directory"
    binary = tmp_path / "b.json"
    binary.write_bytes(b"\xff\xfe{")
    with pytest.raises(ProfileError) as exc:
        load_profile(binary)
    assert str(exc.value) == f"{binary}: not UTF-8 text"


def test_qemu_version_cached_by_refresh(tmp_path: Path) -> None:

    assert QEMU_VERSION_FILE == "qemu-version" and read_qemu_version(None) is None
    assert read_qemu_version(tmp_path) is None
    for text, version in (("11.1.3\n", "11.1.3"), ("  7.2 \n", "7.2"), ("7.2.0-rc1", None),
                          ("seven", None), ("7\n", None)):
        (tmp_path / "qemu-version").write_text(text)
        assert read_qemu_version(tmp_path) == version, text
    (tmp_path / "qemu-version").write_bytes(b"\xff7.2")
    assert read_qemu_version(tmp_path) is None


def test_feature_sets_and_derived_lists() -> None:

    assert feature_key(["sve", "pauth", "pmu"]) == "pmu+pauth+sve"
    assert parse_feature_key("none") == frozenset()
    assert parse_feature_key("pauth+sve") == {"pauth", "sve"}
    for bad in ("sve+pmu", "pmu+pmu", "", "pmu+"):
        with pytest.raises(ProfileError) as exc:
            parse_feature_key(bad)
        assert str(exc.value) in (
            f"cpreg_lists key {bad!r} is not a feature set ('none' or a '+'-joined subset of "
            "pmu, pauth, sve, aarch32 in that order)", "unknown vCPU feature(s): ")
    with pytest.raises(ProfileError) as exc:
        feature_key(["mte", "pmu", "bti"])
    assert str(exc.value) == "unknown vCPU feature(s): bti, mte"
    lists = {"none": (1, 5), "pmu": (1, 2, 5), "sve": (1, 5, 9)}
    profile = make_profile("6.1.0", {}, lists)
    assert profile.cpreg_list(frozenset({"pmu", "sve"})) == (1, 2, 5, 9)  # derived
    assert profile.cpreg_list(frozenset({"pmu"})) == (1, 2, 5)  # probed
    assert profile.cpreg_list(frozenset({"pauth"})) is None  # nothing to derive from
    assert profile.default_features() in ({"pmu"}, {"sve"})
    assert make_profile("6.1.0", {}, {"pmu": (1,)}).cpreg_list(frozenset({"sve"})) is None


def test_the_splice_reads_tags_as_xml_does() -> None:

    # A '>' inside an attribute value, in either quote, does not end the start tag.
    data = (b"<domain a='x>y' b=\"p>'q\">\n  <metadata c='>'>\n    <x/>\n  </metadata>\n"
            b"</domain>")
    lay = layout(data)
    assert lay.domain.start_tag_end == data.index(b"\n") and lay.domain.empty is False
    assert lay.metadata is not None
    assert data[lay.metadata.start:lay.metadata.start_tag_end] == b"<metadata c='>'>"
    assert data[lay.metadata.start:lay.metadata.end].endswith(b"</metadata>")
    assert data[lay.metadata.end_tag_start:lay.metadata.end] == b"</metadata>"
    assert data[lay.domain.end_tag_start:] == b"</domain>"
    assert lay.records == ()
    empty = layout(b"<domain><metadata a='/'/></domain>")
    assert empty.metadata is not None and empty.metadata.empty
    assert empty.metadata.end_tag_start == empty.metadata.start_tag_end == empty.metadata.end
    assert layout(b"<domain><metadata a='/'></metadata></domain>").metadata.empty is False  # type: ignore[union-attr]
    # Only the first <metadata> directly under <domain> counts.
    nested = b"<domain><devices><metadata/></devices><metadata>\n</metadata></domain>"
    assert nested[layout(nested).metadata.start:].startswith(b"<metadata>\n")  # type: ignore[union-attr]
    for bad, message in ((b"<domain", "cannot scan the domain XML: "), (b"", "cannot scan")):
        with pytest.raises(SpliceError) as exc:
            layout(bad)
        assert str(exc.value).startswith(message)
    record = f"<p:record xmlns:p='{NAMESPACE}'/>".encode()
    two = b"<domain><metadata>" + record + record + b"</metadata></domain>"
    assert len(layout(two).records) == 2
    with pytest.raises(SpliceError) as exc:
        splice_record(two, render)
    assert str(exc.value) == "the domain carries more than one psci-hook record"
    # An empty root has no place for <metadata>: no libvirt domain is empty.
    for empty_root in (b"<domain type='kvm'/>", b"<!-- </x> --><domain type='kvm'/>"):
        with pytest.raises(SpliceError) as exc:
            splice_record(empty_root, render)
        assert str(exc.value) == "the domain element is empty"
    # A record elsewhere is not ours to replace.
    outside = b"<domain><devices>" + record + b"</devices></domain>"
    assert layout(outside).records == ()


def test_an_inline_record_is_replaced_at_the_inserted_indentation() -> None:
    record = f"<p:record xmlns:p='{NAMESPACE}'/>".encode()
    before = HEAD + b"  <metadata><a:x xmlns:a='urn:a'/>" + record + b"</metadata>\n</domain>\n"
    spliced = splice_record(before, render)
    assert spliced.data == (HEAD + b"  <metadata><a:x xmlns:a='urn:a'/>" + RECORD_AT_4
                            + b"</metadata>\n</domain>\n")
    assert spliced.replaced == (before.index(b"<p:record"), before.index(b"</metadata>"))
    assert spliced.inserted == (before.index(b"<p:record"),
                                before.index(b"<p:record") + len(RECORD_AT_4))
    # Without the domain's own indentation to go by, the unit is two spaces.
    flat = b"<domain><name>x</name><metadata>" + record + b"</metadata></domain>"
    assert splice_record(flat, render).data == (
        b"<domain><name>x</name><metadata><r>\n    <c/>\n  </r></metadata></domain>")


def test_sigterm_while_deciding_is_an_error_and_the_handlers_are_restored(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:

    def terminated(features: frozenset[str], values: object) -> object:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not delivered")

    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    env.rehearser = terminated
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM))
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        "psci-hook: ERROR INTERNAL_ERROR domain vm1: interrupted by SIGTERM; migration allowed "
        "unchecked (on_error = allow)\n")
    assert sink.events[0]["codes"] == ["INTERNAL_ERROR"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_bug_is_an_internal_error_named_by_its_type(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    env.rehearser = lambda features, values: None  # not a Result: reconciling it fails
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        "psci-hook: ERROR INTERNAL_ERROR domain vm1: AttributeError: 'NoneType' object has no "
        "attribute 'refused_id'; migration allowed unchecked (on_error = allow)\n")
    assert sink.events[0]["decision"] == "error"


_FW_END = "</psci:firmware>"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('version="1"', 'version="1.0"', "record version '1.0' is not '1'"),
    ('version="1"', "", "record version None is not '1'"),
    (_FW_END, _FW_END + "<psci:vcpu features='none'/>", "more than one <vcpu> in the record"),
    ('<psci:vcpu features="none"/>', "", "the record has no <vcpu>"),
    ('time="2026-11-30T00:00:00Z"', 'time="2026-11-30 00:00:00"',
     "origin time '2026-11-30 00:00:00' is not YYYY-MM-DDTHH:MM:SSZ"),
    ('<psci:reg name="PSCI_VERSION" value="0x10001"/>',
     '<psci:reg name="PSCI_VERSION" value="0x10001"/><psci:reg name="PSCI_VERSION" value="1"/>',
     "register PSCI_VERSION appears twice"),
    (_FW_END, _FW_END + "<psci:override codes='' reason='r'/>",
     "override names unknown codes: (none)"),
    (_FW_END, _FW_END + "<psci:override codes='WA_DROPPED NOPE ALSO' reason='r'/>",
     "override names unknown codes: ALSO NOPE"),
    (_FW_END, _FW_END + "<psci:history><psci:check time='now' op='migrate' "
     "host='h' verdict='allow'/></psci:history>",
     "history time 'now' is not YYYY-MM-DDTHH:MM:SSZ"),
    (_FW_END, _FW_END + "<psci:cpreg-list count='1' digest='x'>6030000000140001</psci:cpreg-list>",
     "cpreg-list digest does not match its content (altered or truncated)"),
])
def test_each_record_refusal_is_exact(old: str, new: str, message: str) -> None:

    text = _record_text()
    assert text.count(old) == 1, old
    with pytest.raises(RecordError) as exc:
        _parse(text.replace(old, new))
    assert str(exc.value) == message


# What a newer release of the same record version may write (psci_hook.record's versioning
# rule): read past, never refused (these were refusals before records became forward-compatible).
@pytest.mark.parametrize(("old", "new", "_former_refusal"), [
    (_FW_END, _FW_END + "<psci:notes/>", "unexpected element <notes> in <record>"),
    (_FW_END, _FW_END + "<other xmlns='urn:x'/>", "unexpected element <other> in <record>"),
    ('event="booted"', 'event="cloned"',
     "origin event 'cloned' is not one of booted, migrated, restored, stamped"),
    ('features="none"', 'features="mte"', "unknown vCPU feature(s): mte"),
    ('name="PSCI_VERSION"', 'name="ID_AA64MMFR1_EL1"',
     "register 'ID_AA64MMFR1_EL1': unknown firmware register 'ID_AA64MMFR1_EL1'"),
    (_FW_END, _FW_END + "<psci:id-registers><psci:reg name='PSCI_VERSION' value='1'/>"
     "</psci:id-registers>", "register 'PSCI_VERSION': not an ID register"),
    (_FW_END, _FW_END + "<psci:history><psci:check time='2026-11-30T00:00:00Z' op='migrate' "
     "host='h' verdict='maybe'/></psci:history>",
     "a history entry has an unknown op, verdict or code"),
    (_FW_END, _FW_END + "<psci:history><psci:check time='2026-11-30T00:00:00Z' op='boot' "
     "host='h' verdict='allow'/></psci:history>",
     "a history entry has an unknown op, verdict or code"),
    (_FW_END, _FW_END + "<psci:history><psci:check time='2026-11-30T00:00:00Z' op='migrate' "
     "host='h' verdict='allow' codes='WA_DROPPED NOPE'/></psci:history>",
     "a history entry has an unknown op, verdict or code"),
    (_FW_END, _FW_END + "<psci:history><psci:entry/></psci:history>",
     "unexpected element <entry> in <history>"),
])
def test_what_a_newer_release_may_write_is_read_past(old: str, new: str,
                                                     _former_refusal: str) -> None:
    text = _record_text()
    assert text.count(old) == 1, old
    record = _parse(text.replace(old, new))
    assert record.vouched


def test_a_record_keeps_what_it_says() -> None:

    ids = (0x6030000000140000,)
    text = _record_text(**{"host-uuid": "u-1"}).replace(_FW_END, _FW_END + (
        f"<!-- a comment --><psci:cpreg-list count='1' digest='{list_digest(ids)}'>"
        "6030000000140000</psci:cpreg-list><psci:cache-geometry><psci:reg name='CCSIDR_1' "
        "value='7'/></psci:cache-geometry><psci:override codes='WA_DROPPED REG_MISSING' "
        "reason='ticket 9'/><psci:history><psci:check time='2026-11-30T00:00:00Z' "
        "op='record' host='h' verdict='warn' codes='WA_DROPPED'/></psci:history>"))
    record = _parse(text)
    assert record.origin == Origin("booted", "h", "6.1.0", "2026-11-30T00:00:00Z", "u-1")
    assert record.state.cpreg_list == ids and record.state.cache_geometry == {"CCSIDR_1": 7}
    assert record.state.id_registers is None and record.state.features == frozenset()
    assert record.override == Override(frozenset({"WA_DROPPED", "REG_MISSING"}), "ticket 9")
    assert record.history == (HistoryEntry("2026-11-30T00:00:00Z", "record", "h", "warn",
                                           ("WA_DROPPED",)),)
    # Written back, then read again: the same record (the comment is not kept).
    assert _parse(record_xml(record, "    ")) == record
    assert "host-uuid" not in record_xml(record._replace(
        origin=record.origin._replace(host_uuid="")), "    ")


# ---------------------------------------------------------------------------------------------
# What the engine tells the operator: every kind of finding, its exact sentence.
# ---------------------------------------------------------------------------------------------


def _messages(guest: GuestState, destination: HostProfile, generation: str
              ) -> list[tuple[str, str | None, str]]:
    return [(f.code, f.register, f.message)
            for f in decide(guest, destination, generation).findings]


def test_the_merge_explains_itself() -> None:
    source_fw = fw(PSCI_VERSION=V(1, 1), SMCCC_ARCH_WORKAROUND_1=1, SMCCC_ARCH_WORKAROUND_3=1,
                   STD_BMAP=1)
    dest_fw = fw(PSCI_VERSION=V(1, 0), SMCCC_ARCH_WORKAROUND_1=2)
    source = make_profile("6.1.0", source_fw, {"none": tuple(sorted({*SYSREGS[:2],
                                                                      *source_fw}))})
    destination = make_profile("5.4.0", dest_fw, {"none": tuple(sorted({SYSREGS[0],
                                                                         *dest_fw}))})
    guest = GuestState.booted_on(source, frozenset())
    not_compared = ("ID_REGS_NOT_COMPARED", None, "ID register and cache geometry values are "
                    "not in both profiles: not compared; a rehearsal on the destination "
                    "settles them.")
    psci = ("PSCI_UNSUPPORTED", "PSCI_VERSION", "the guest's PSCI_VERSION is 1.1 but the "
            "destination has 1.0: the destination kernel implements PSCI 0.2, 1.0 only.")
    ratchet = ("WA_RATCHET", "SMCCC_ARCH_WORKAROUND_1", "SMCCC_ARCH_WORKAROUND_1 rises from "
               "AVAIL to NOT_REQUIRED on this host; afterwards the guest cannot migrate back to "
               "hosts at AVAIL until it cold-boots.")
    assert _messages(guest, destination, "legacy") == [
        ("CPREG_COUNT", None, "the source QEMU will send 6 registers but the destination legacy "
         "QEMU accepts at most 3 (Failed to load cpu:cpreg_vmstate_array_len)."),
        ("REG_MISSING", "ACTLR_EL1", "the source sends ACTLR_EL1, which the destination kernel "
         "does not list; legacy QEMU fails the load on it."),
        ("WA_DROPPED", "SMCCC_ARCH_WORKAROUND_3", "legacy QEMU on the destination would "
         "silently drop SMCCC_ARCH_WORKAROUND_3 = AVAIL: the guest would keep relying on a "
         "firmware mitigation (Spectre-BHB firmware mitigation level) that the destination "
         "kernel does not offer."),
        ("REG_DROPPED", "STD_BMAP", "STD_BMAP = 0x1 (TRNG_V1_0) sorts above the destination's "
         "last register; legacy QEMU drops it silently (neither checked nor applied)."),
        psci, ratchet, not_compared]
    assert _messages(guest, destination, "tolerant") == [
        ("REG_MISSING", "ACTLR_EL1", "the source sends ACTLR_EL1, which the destination kernel "
         "does not list; QEMU fails the load."),
        ("REG_MISSING", "SMCCC_ARCH_WORKAROUND_3", "the source sends SMCCC_ARCH_WORKAROUND_3 = "
         "AVAIL, which the destination kernel does not list; QEMU fails the load."),
        ("REG_MISSING", "STD_BMAP", "the source sends STD_BMAP = 0x1 (TRNG_V1_0), which the "
         "destination kernel does not list; QEMU fails the load."),
        psci, ratchet, not_compared]


def test_tolerances_defaults_and_lists_explain_themselves() -> None:
    bmap2 = GuestState(registers=fw(PSCI_VERSION=V(1, 0), VENDOR_HYP_BMAP_2=0))
    assert _messages(bmap2, make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0),
                                                     SMCCC_ARCH_WORKAROUND_2=3)), "tolerant") == [
        ("LISTS_NOT_COMPARED", None, "no migrated register list on either side: only the "
         "firmware registers were compared; the count check and the other registers were "
         "not."),
        ("REG_TOLERATED", "VENDOR_HYP_BMAP_2", "VENDOR_HYP_BMAP_2 = 0x0 (none) is not on the "
         "destination; its QEMU tolerates and skips it."),
        ("ACCEPTED", "PSCI_VERSION", "PSCI_VERSION = 1.0 is accepted (the destination "
         "implements this PSCI version)."),
        ("DEST_DEFAULT", "SMCCC_ARCH_WORKAROUND_2", "the source does not send "
         "SMCCC_ARCH_WORKAROUND_2; the destination's default (NOT_REQUIRED) applies to the guest "
         "from now on."),
        ("ID_REGS_NOT_COMPARED", None, "ID register and cache geometry values are not in both "
         "profiles: not compared; a rehearsal on the destination settles them.")]
    bmap2_set = GuestState(registers=fw(PSCI_VERSION=V(1, 0), VENDOR_HYP_BMAP_2=1))
    assert _messages(bmap2_set, make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0))),
                     "tolerant")[1] == (
        "REG_MISSING", "VENDOR_HYP_BMAP_2", "the source sends VENDOR_HYP_BMAP_2 = 0x1 "
        "(DISCOVER_IMPL_VER), which the destination kernel does not list (tolerated only while "
        "its value is 0); QEMU fails the load.")
    psci = regs.PSCI_VERSION.reg_id
    tcr2 = regs.SYSREG_BY_NAME["TCR2_EL1"]
    with_tcr2 = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)), {"none": (tcr2, psci)})
    only_psci = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)),
                             {"none": (psci,), "pmu": (psci,)})
    assert _messages(GuestState.booted_on(with_tcr2), only_psci, "tolerant")[0] == (
        "REG_TOLERATED", "TCR2_EL1", "TCR2_EL1 is not on the destination; its QEMU tolerates "
        "and skips it.")
    assert _messages(GuestState.booted_on(with_tcr2), only_psci, "legacy")[1] == (
        "REG_MISSING", "TCR2_EL1", "the source sends TCR2_EL1, which the destination kernel "
        "does not list; legacy QEMU fails the load on it.")
    sve = make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)), {"pmu+sve": (psci,)})
    assert _messages(GuestState.booted_on(sve), only_psci, "legacy")[:2] == [
        ("FEATURE_MISSING", None, "the guest's vCPU features (pmu+sve) are not available on the "
         "destination (it offers: none, pmu); QEMU cannot create the vCPU."),
        ("LISTS_NOT_COMPARED", None, "no migrated register list on the destination's side for "
         "these vCPU features: only the firmware registers were compared; the count check and "
         "the other registers were not.")]
    assert _messages(GuestState(registers=fw(PSCI_VERSION=V(1, 0))), only_psci,
                     "legacy")[0][2].startswith("no migrated register list on the guest's side: ")
    assert _messages(GuestState.booted_on(sve), make_profile("6.1.0", fw(PSCI_VERSION=V(1, 0)),
                                                             {}), "legacy")[0][2].endswith(
        "(it offers: none); QEMU cannot create the vCPU.")


def test_id_register_findings_explain_themselves() -> None:
    guest = GuestState(registers={}, id_registers={"ID_AA64MMFR1_EL1": 0x1010211122},
                       cache_geometry={"CCSIDR_0": 2, "CCSIDR_1": 3})

    def at(release: str) -> list[tuple[str, str | None, str]]:
        return _messages(guest, make_profile(
            release, {}, id_registers={"ID_AA64MMFR1_EL1": 0x11010211122},
            cache_geometry={"CCSIDR_0": 3, "CCSIDR_1": 2}), "legacy")[1:]

    assert at("6.1.0") == [
        ("ID_REG_MISMATCH", "ID_AA64MMFR1_EL1", "ID_AA64MMFR1_EL1 differs in HCX (guest "
         "0x1010211122, destination 0x11010211122); the destination kernel (6.1.0) predates "
         "writable ID registers (6.7) and accepts only its own value."),
        ("CACHE_MISMATCH", "CCSIDR_0", "CCSIDR_0 differs in geometry (guest 0x2, destination "
         "0x3); the destination kernel (6.1.0) predates settable cache geometry (6.3) and "
         "accepts only its own value."),
        ("CACHE_MISMATCH", "CCSIDR_1", "CCSIDR_1 differs in geometry (guest 0x3, destination "
         "0x2); the destination kernel (6.1.0) predates settable cache geometry (6.3) and "
         "accepts only its own value.")]
    assert at("6.7.0") == [
        ("ID_REG_UNVERIFIED", "ID_AA64MMFR1_EL1", "ID_AA64MMFR1_EL1 differs in HCX (guest "
         "0x1010211122, destination 0x11010211122); the destination kernel (6.7.0) has writable "
         "ID registers (6.7+), so only a rehearsal on the destination can tell whether it is "
         "accepted."),
        ("CACHE_MISMATCH", "CCSIDR_0", "CCSIDR_0 differs in geometry (guest 0x2, destination "
         "0x3); the destination kernel (6.7.0) refuses a cache line size below its own minimum "
         "(LineSize 2 < 3, set_ccsidr)."),
        ("CACHE_UNVERIFIED", "CCSIDR_1", "CCSIDR_1 differs in geometry (guest 0x3, destination "
         "0x2); the destination kernel (6.7.0) has settable cache geometry (6.3+), so only a "
         "rehearsal on the destination can tell whether it is accepted.")]


@pytest.mark.parametrize(("reg", "value", "release", "own", "code", "reason"), [
    (WA2, 0x12, "5.4.0", 0, "WA_LEVEL_TOO_HIGH", "KVM refuses a level above the destination "
     "host's own; WORKAROUND_2 handling of a 5.3-5.9 (levels compared as they are) kernel, "
     "inferred from kernel release 5.4.0"),
    (WA2, 0x13, "5.10.0", 0, "WA_INVALID_VALUE", "ENABLED is only valid with AVAIL"),
    (WA2, 0x20, "5.10.0", 0, "WA_INVALID_VALUE",
     "SMCCC_ARCH_WORKAROUND_2 has bits outside the level and ENABLED (0x20)"),
    (WA2, 4, "5.10.0", 0, "WA_INVALID_VALUE", "level 4 is not a WORKAROUND_2 level; "
     "WORKAROUND_2 handling of a 5.10+ (level narrowed to NOT_AVAIL or NOT_REQUIRED) kernel, "
     "inferred from kernel release 5.10.0"),
    (WA2, 1, "5.10.0", 0, "ACCEPTED", "the destination's level is sufficient; WORKAROUND_2 "
     "handling of a 5.10+ (level narrowed to NOT_AVAIL or NOT_REQUIRED) kernel, inferred from "
     "kernel release 5.10.0"),
    (WA2, 1, "5.10.0", 1, "ACCEPTED", "the destination's level is sufficient; WORKAROUND_2 "
     "handling of a 5.3-5.9 (levels compared as they are) kernel"),
    (regs.SMCCC_ARCH_WORKAROUND_1.reg_id, 0x10, "6.1.0", 2, "WA_INVALID_VALUE",
     "SMCCC_ARCH_WORKAROUND_1 has bits outside the level field (0x10)"),
    (regs.SMCCC_ARCH_WORKAROUND_1.reg_id, 2, "6.1.0", 1, "WA_LEVEL_TOO_HIGH",
     "KVM refuses a level above the destination host's own"),
    (regs.SMCCC_ARCH_WORKAROUND_1.reg_id, 1, "6.1.0", 1, "ACCEPTED",
     "the destination's level is at least the guest's"),
    (regs.STD_BMAP.reg_id, 3, "6.1.0", 1, "BITMAP_UNSUPPORTED",
     "bits 0x2 are not implemented by the destination kernel (it supports 0x1)"),
    (regs.STD_BMAP.reg_id, 1, "6.1.0", 3, "ACCEPTED",
     "every service bit is implemented by the destination"),
    (regs.VENDOR_HYP_BMAP_2.reg_id, 3, "6.1.0", 0, "ACCEPTED",
     "every service bit is implemented by the destination"),
    (regs.VENDOR_HYP_BMAP_2.reg_id, 4, "6.1.0", 0, "BITMAP_UNSUPPORTED",
     "bits 0x4 are not implemented by the destination kernel (it supports 0x3)"),
    (0x6030000000140009, 3, "6.1.0", 1, "FW_UNVERIFIED", "0x6030000000140009 is not known to "
     "this version of psci-hook; its value cannot be judged offline"),
])
def test_each_judgement_explains_itself(reg: int, value: int, release: str, own: int,
                                        code: str, reason: str) -> None:
    judgement = judge_firmware_value(reg, value, make_profile(release, {reg: own}))
    assert (judgement.code, judgement.reason) == (code, reason)
    assert judgement.inferred is ("inferred from kernel release" in reason)
    assert judgement.accepted is {"ACCEPTED": True, "FW_UNVERIFIED": None}.get(code, False)


def test_the_destination_is_named_from_the_cached_capabilities(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:


    (tmp_path / "capabilities.xml").write_text(
        "<capabilities><host><uuid>4c4c4544-0042</uuid><cpu><arch>aarch64</arch>"
        "<model>host</model></cpu></host></capabilities>")
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "restore", "begin", "-"], domain,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["destination"] == {
        "hostname": socket.gethostname(), "kernel": bundled["6.12__a57"].kernel_release,
        "uuid": "4c4c4544-0042", "arch": "aarch64", "cpu_model": "host"}
    record = read_record(parse_domain(env.stdout.getvalue()).root)  # type: ignore[attr-defined]
    assert record is not None and record.origin.host_uuid == "4c4c4544-0042"
    assert record.origin.event == "restored" and record.history[-1].op == "restore"


def test_an_override_without_anything_to_override_says_nothing(tmp_path: Path,
                                                               bundled: dict[str, HostProfile]
                                                               ) -> None:

    record = GuestRecord(GuestState.booted_on(bundled["6.1__a57"]), Origin(
        "booted", "host-a", "6.1.0", "2026-11-30T00:00:00Z"),
        override=Override(frozenset({"WA_DROPPED"}), "just in case"))
    domain = splice_record(DOMAIN, lambda indent: record_xml(record, indent)).data
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert "OVERRIDE" not in sink.events[0]["codes"]  # type: ignore[operator]


def test_the_qemu_version_comes_from_the_profile_before_the_cache(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    (tmp_path / "qemu-version").write_text("11.1.0\n")
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    for stated, generation in (({"qemu_version": "7.2.0"}, "legacy"),
                               ({"qemu_generation": "legacy"}, "legacy"), ({}, "tolerant")):
        profile = bundled["6.12__a57"]._replace(**stated)
        env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain, profile)
        sink = CollectingSink()
        main(env, sink)
        assert sink.events[0]["qemu_generation"] == generation, stated


def test_the_ini_dialect() -> None:

    # No interpolation: a '%' in a path is a '%'.
    assert str(parse_policy("[host]\nprofile = /srv/100%.json").host_profile) == "/srv/100%.json"
    # No continuation lines: an indented line is a line of its own, not more value.
    with pytest.raises(PolicyError) as exc:
        parse_policy("[hook]\ndomain_types = kvm\n\n  qemu\n", "p.conf")
    assert str(exc.value) == "p.conf:4: not 'key = value': 'qemu' ignored"
    # A setting given twice is named with both lines; by default the file is "configuration".
    with pytest.raises(PolicyError) as exc:
        parse_policy("[hook]\nmode = warn\nmode = enforce\n", "p.conf")
    assert str(exc.value) == ("p.conf:3: mode is set twice (line 2 and here); the last valid "
                              "value applies")
    with pytest.raises(PolicyError) as exc:
        parse_policy("[hook]\nmode = strict")
    assert str(exc.value).startswith("configuration:2: mode 'strict'")
    # Keys are case-insensitive (configparser lowers them); values are not.
    assert parse_policy("[hook]\nMODE = warn").mode == "warn"


def test_profile_origins_and_the_largest_value(tmp_path: Path) -> None:

    with pytest.raises(ProfileError) as exc:
        loads_profile("[]")
    assert str(exc.value) == "profile: a profile must be a JSON object"
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ProfileError) as exc:
        load_profile(bad)
    assert str(exc.value) == f"{bad}: a profile must be a JSON object"
    top = loads_profile(_profile_text(registers={"PSCI_VERSION": (1 << 64) - 1,
                                                 "SMCCC_ARCH_WORKAROUND_1": 0}))
    assert top.registers[regs.PSCI_VERSION.reg_id] == (1 << 64) - 1


def test_features_and_lists_when_the_profile_is_uneven() -> None:
    # -cpu host enables every feature the host supports: the largest set, even when it is not
    # a superset of the others.
    uneven = make_profile("6.1.0", {}, {"pmu": (1,), "pauth+sve": (1, 3)})
    assert uneven.default_features() == {"pauth", "sve"}
    # Without a featureless list nothing is derived; a probed list is used as it is.
    no_base = make_profile("6.1.0", {}, {"pmu": (1, 2), "sve": (1, 3)})
    assert no_base.cpreg_list(frozenset({"pmu", "sve"})) is None
    probed = make_profile("6.1.0", {}, {"none": (1,), "pmu": (1, 2), "pmu+sve": (1, 2, 3, 4)})
    assert probed.cpreg_list(frozenset({"pmu", "sve"})) == (1, 2, 3, 4)


def test_a_document_that_starts_with_a_line_break() -> None:
    before = b"\n<domain>\n  <name>vm1</name>\n</domain>\n"
    assert splice_record(before, render).data == (
        b"\n<domain>\n  <name>vm1</name>\n  <metadata>\n    " + RECORD_AT_4
        + b"\n  </metadata>\n</domain>\n")


def test_id_registers_on_one_side_only_and_both_values() -> None:
    guest = GuestState(registers={}, id_registers={"ID_AA64MMFR1_EL1": 0x1010211122,
                                                   "ID_AA64PFR0_EL1": 0x11})
    destination = make_profile("6.1.0", {}, id_registers={"ID_AA64MMFR1_EL1": 0x11010211122,
                                                          "ID_AA64ISAR0_EL1": 0x22})
    found = [f for f in decide(guest, destination, "legacy").findings if f.register]
    assert [(f.code, f.register, f.guest_value, f.destination_value) for f in found] == [
        ("ID_REG_MISMATCH", "ID_AA64MMFR1_EL1", 0x1010211122, 0x11010211122)]
    assert candidate_values(regs.PSCI_VERSION.reg_id) == [
        V(0, 1), V(0, 2), V(1, 0), V(1, 1), V(1, 2), V(1, 3), V(1, 4), V(2, 0)]


def test_the_event_names_the_domain_from_its_xml_and_an_invalid_record_vetoes(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "from-argv", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["domain"] == "vm1" and "DOMAIN" not in sink.events[0]
    broken = domain.replace(b'version="1"', b'version="1.0"', 1)
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], broken,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.VETO
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        "psci-hook: VETO RECORD_INVALID domain vm1: the psci-hook record is invalid: record "
        "version '1.0' is not '1' (the record cannot be trusted, so the migration cannot be "
        "checked)\n")
    assert sink.events[0]["uuid"] == "c7a5fdbd-edaf-9455-926a-d65c16db1809"


def test_without_a_sink_the_policy_chooses_the_log(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    # target = none (written by _hook_env): the real entry point builds its own sink.
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    assert main(env) == ExitStatus.OK
    assert env.stdout.getvalue().startswith(b"<domain")  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Survivors of the 2026-12-06 mutation run over engine, record and hook
# ---------------------------------------------------------------------------------------------


def test_the_values_conformance_tries_for_each_kind_of_register() -> None:
    """`psci-hook conformance` sets exactly these values on the real kernel and compares its
    answer with the engine's: the boundaries of each rule (docs/design.md), each value once."""
    wa2 = [0, 1, 2, 3, 4, 0xF, 0x10, 0x12, 0x13, 0x20]
    workaround = [0, 1, 2, 3, 0xF, 0x10]
    bitmap = [0, 1, 2, 3, 4, 7, 1 << 63]
    assert candidate_values(regs.SMCCC_ARCH_WORKAROUND_2.reg_id) == wa2
    for reg in regs.FIRMWARE_REGISTERS:
        values = candidate_values(reg.reg_id)
        assert len(set(values)) == len(values), reg.name
        if reg.kind is regs.FwKind.WORKAROUND and reg is not regs.SMCCC_ARCH_WORKAROUND_2:
            assert values == workaround, reg.name
        elif reg.kind not in (regs.FwKind.WORKAROUND, regs.FwKind.PSCI):
            assert values == bitmap, reg.name
    assert candidate_values(0x6030_0000_0014_FFFF) == []  # not a firmware register


def _veto_on_error_env(tmp_path: Path, argv: list[str], stdin: bytes,
                       destination: HostProfile) -> Environment:
    config = tmp_path / "veto.conf"
    config.write_text(f"[hook]\non_error = veto\n[host]\nprofile = "
                      f"{profile_file(tmp_path, destination)}\n[log]\ntarget = none\n")
    return Environment.for_test(argv, stdin, {"PSCI_HOOK_CONFIG": str(config)},
                                run_dir=tmp_path)


def test_a_bug_under_on_error_veto_is_exit_internal_error(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _veto_on_error_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                             bundled["6.12__a57"])
    env.rehearser = lambda features, values: None  # not a Result: reconciling it fails
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.INTERNAL_ERROR
    assert env.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        "psci-hook: ERROR INTERNAL_ERROR domain vm1: AttributeError: ")
    assert env.stderr.getvalue().endswith(  # type: ignore[attr-defined]
        "; migration refused (on_error = veto)\n")


def test_an_error_without_a_domain_name_says_question_mark_and_four_arguments_are_enough(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    env = _veto_on_error_env(tmp_path, ["hook", "", "migrate", "begin", "-"], b"<not xml",
                             bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.BAD_INPUT
    assert env.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        "psci-hook: ERROR XML_INVALID domain ?: malformed domain XML: ")
    # libvirt passes "-" as a fourth argument; the operation is read from the second and third.
    env = _veto_on_error_env(tmp_path, ["hook", "vm1", "migrate", "begin"], b"<not xml",
                             bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.BAD_INPUT
    assert (sink.events[0]["op"], sink.events[0]["domain"]) == ("migrate", "vm1")


@pytest.mark.parametrize("typos", [12, 13, 15])
def test_the_event_lists_twelve_configuration_problems_and_counts_the_rest(
        tmp_path: Path, bundled: dict[str, HostProfile], typos: int) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    config = tmp_path / "typos.conf"
    config.write_text("[hook]\n" + "".join(f"typo{i} = 1\n" for i in range(typos))
                      + f"[host]\nprofile = {profile_file(tmp_path, bundled['6.12__a57'])}\n"
                      "[log]\ntarget = none\n")
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    event = sink.events[0]
    assert len(event["config_problems"]) == 12
    assert env.stderr.getvalue().startswith("psci-hook: CONFIG ")  # type: ignore[attr-defined]
    assert event.get("more_config_problems") == (typos - 12 or None)
    assert "more_config_problems" in event or typos == 12


def test_the_timeout_counts_the_time_spent_before_deciding(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """Reading the input and the configuration took 9.8 of the default 10 s: 0.2 s are left."""

    def slow(features: frozenset[str], values: object) -> object:
        time.sleep(2)
        raise AssertionError("the decision was not stopped at the timeout")

    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"], monotonic=[100.0, 109.8, 110.0, 110.0])
    env.rehearser = slow
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["codes"] == ["TIMEOUT"]
    assert env.stderr.getvalue().startswith(  # type: ignore[attr-defined]
        "psci-hook: ERROR TIMEOUT domain vm1: no decision within 10 s; ")


@pytest.mark.parametrize("target", ["syslog", "journal"])
def test_without_a_sink_the_event_goes_to_the_configured_socket(
        tmp_path: Path, bundled: dict[str, HostProfile], target: str) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    listener = SyslogListener(tmp_path / "log.sock")
    config = tmp_path / "log.conf"
    config.write_text(f"[host]\nprofile = {profile_file(tmp_path, bundled['6.12__a57'])}\n"
                      f"[log]\ntarget = {target}\n{target}_socket = {listener.path}\n")
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    try:
        assert main(env) == ExitStatus.OK
        received = listener.messages()
    finally:
        listener.close()
    assert len(received) == 1
    assert ("MESSAGE=" in received[0]) == (target == "journal")  # journald's native protocol


def test_the_duration_is_in_milliseconds_to_one_decimal(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"], monotonic=[100.0, 100.0, 100.03125])  # 31.25 ms
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["duration_ms"] == 31.2  # round half to even


def test_the_json_decision_names_every_part() -> None:
    guest = GuestState.booted_on(make_profile("6.1.0", fw(PSCI_VERSION=0x10001)))
    decision = decide(guest, make_profile("6.12.0", fw(PSCI_VERSION=0x10001)), "legacy")
    data = decision.to_dict()
    assert list(data) == ["verdict", "codes", "qemu_generation", "lists_compared", "findings",
                          "guest_after"]
    assert data["lists_compared"] is decision.lists_compared
    assert data["guest_after"] == {"registers": {"PSCI_VERSION": 0x10001}, "features": "none",
                                   "cpreg_list_length": None}
    listed = make_profile("6.1.0", fw(PSCI_VERSION=0x10001),
                          {"none": (0x6030_0000_0014_0000, 0x6030_0000_0014_0001)})
    after = decide(GuestState.booted_on(listed), listed, "legacy").to_dict()["guest_after"]
    assert after["cpreg_list_length"] == 2


class _CountingStdin(io.RawIOBase):
    """An oversized input that remembers the largest read asked of it."""

    def __init__(self, size: int) -> None:
        self.left, self.largest = size, 0

    def read(self, n: int | None = -1) -> bytes:
        asked = self.left if n is None or n < 0 else n
        self.largest = max(self.largest, asked)
        chunk = min(asked, self.left)
        self.left -= chunk
        return b" " * chunk


def test_an_oversized_input_is_drained_without_being_kept(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], b"",
                    bundled["6.12__a57"])
    env.stdin = stdin = _CountingStdin(3 * MAX_DOMAIN_XML)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["codes"] == ["XML_INVALID"]
    assert stdin.left == 0 and stdin.largest == MAX_DOMAIN_XML + 1


def test_an_input_of_exactly_the_limit_is_read(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    padded = domain + b" " * (MAX_DOMAIN_XML - len(domain))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], padded,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["decision"] == "allow"


def test_an_unreadable_stdin_is_an_empty_input(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:

    class Broken(io.RawIOBase):
        def read(self, n: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], b"",
                    bundled["6.12__a57"])
    env.stdin = Broken()
    assert main(env, CollectingSink()) == ExitStatus.OK
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        "psci-hook: ERROR XML_INVALID domain vm1: empty domain XML; migration allowed unchecked "
        "(on_error = allow)\n")


def test_a_malformed_id_register_name_is_refused_by_name() -> None:
    state = GuestState(registers=fw(PSCI_VERSION=V(1, 1)), id_registers={"ID_AA64MMFR1_EL1": 0x11})
    text = record_xml(GuestRecord(state, Origin("booted", "h", "6.1.0", "2026-11-30T00:00:00Z",
                                                "u-1")), "    ")
    bad = text.replace('name="ID_AA64MMFR1_EL1"', 'name="no such!"')
    with pytest.raises(RecordError) as refused:
        parse_record(etree.fromstring(bad))
    assert str(refused.value) == "register 'no such!': not an ID register"


@pytest.mark.parametrize(("op", "consequence"), [
    ("migrate", "(the destination would refuse this only after copying all guest memory)"),
    ("restore", "(QEMU would refuse this only after reading all guest memory from the saved "
                "image)"),
])
def test_the_veto_line_names_the_late_failure_of_its_operation(
        tmp_path: Path, bundled: dict[str, HostProfile], op: str, consequence: str) -> None:
    config = tmp_path / "c.conf"
    config.write_text(f"[hook]\nrehearse = no\n[host]\nprofile = "
                      f"{profile_file(tmp_path, bundled['5.10__a57'])}\n[log]\ntarget = none\n")
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.12__a57"]))
    env = Environment.for_test(["hook", "vm1", op, "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    assert main(env, CollectingSink()) == ExitStatus.VETO
    line = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert line.startswith("psci-hook: VETO CPREG_COUNT domain vm1: ")
    assert line.endswith(f" (+19: REG_MISSING x18, PSCI_UNSUPPORTED) {consequence}\n")


def test_a_psci_veto_line_ends_with_the_remedy(tmp_path: Path) -> None:
    probed = REPO / "tests" / "data" / "probed-profiles"
    guest, destination = (load_profile(probed / f"{k}__a57.json") for k in ("7.2", "6.12"))
    config = tmp_path / "c.conf"
    config.write_text(f"[hook]\nrehearse = no\n[host]\nprofile = "
                      f"{profile_file(tmp_path, destination)}\n[log]\ntarget = none\n")
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"],
                               stamped(DOMAIN, GuestState.booted_on(guest)),
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.VETO
    line = env.stderr.getvalue()  # type: ignore[attr-defined]
    assert line.startswith("psci-hook: VETO PSCI_UNSUPPORTED domain vm1: ")
    assert "(the destination would refuse this only after copying all guest memory); remedy: " \
           "cold-boot the guest with kvm-psci-version=1.1 " in line
    assert line.endswith(", then it can move here\n")
    # The event carries the same remedy, on its own.
    assert sink.events[0]["remedy"] == line.split("; remedy: ", 1)[1].rstrip("\n")


def test_warn_mode_says_would_veto_once_and_keeps_the_event_of_a_veto(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """mode = warn: the veto's line with "WOULD VETO" for its first word only (a domain may be
    named VETO-...), and the event a veto would have had, with both values of each finding."""
    named = DOMAIN.replace(b"<name>vm1</name>", b"<name>VETO-vm</name>")
    domain = stamped(named, GuestState.booted_on(bundled["6.1__a76"]))
    config = tmp_path / "c.conf"
    config.write_text(f"[hook]\nmode = warn\nrehearse = no\n[host]\nprofile = "
                      f"{profile_file(tmp_path, bundled['6.1__a57'])}\n[log]\ntarget = none\n")
    env = Environment.for_test(["hook", "VETO-vm", "restore", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    reason = ("SMCCC_ARCH_WORKAROUND_1 guest=NOT_REQUIRED destination=NOT_AVAIL: the guest's "
              "SMCCC_ARCH_WORKAROUND_1 is NOT_REQUIRED but the destination has NOT_AVAIL: KVM "
              "refuses a level above the destination host's own.")
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        f"psci-hook: WOULD VETO WA_LEVEL_TOO_HIGH domain VETO-vm: {reason} (+1: "
        "WA_LEVEL_TOO_HIGH) (QEMU would refuse this only after reading all guest memory from "
        "the saved image)\n")
    (event,) = sink.events
    assert (event["decision"], event["codes"], event["reason"]) == (
        "warn", ["WA_LEVEL_TOO_HIGH"], reason)
    assert event["findings"] == [
        {"code": "WA_LEVEL_TOO_HIGH", "register": "SMCCC_ARCH_WORKAROUND_1",
         "guest": "NOT_REQUIRED", "destination": "NOT_AVAIL"},
        {"code": "WA_LEVEL_TOO_HIGH", "register": "SMCCC_ARCH_WORKAROUND_3",
         "guest": "AVAIL", "destination": "NOT_AVAIL"}]
    assert "remedy" not in event and "more_findings" not in event


def test_the_allow_event_says_the_guest_before_and_after_and_both_vcpus(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """A featureless guest from 6.1 a57 to 6.12 a76, with an override in its record: the
    registers it brings, those it has on arrival (the workarounds ratchet up), and the vCPU
    features on each side; the record it carries on names this host as its origin, adds this
    check to its history and keeps the operator's override."""
    record = GuestRecord(GuestState.booted_on(bundled["6.1__a57"], frozenset()),
                         Origin("booted", "host-a", "6.1.0-26-arm64", "2026-11-30T00:00:00Z"),
                         override=Override(frozenset({"WA_DROPPED"}), "ticket 9"))
    domain = splice_record(DOMAIN, lambda indent: record_xml(record, indent)).data
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a76"])
    env.clock = lambda: 1_800_000_000.0
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    event = sink.events[0]
    common = ("PSCI_VERSION=1.1, {}, SMCCC_ARCH_WORKAROUND_2=NOT_AVAIL, {}, STD_BMAP=0x1 "
              "(TRNG_V1_0), STD_HYP_BMAP=0x1 (PV_TIME), VENDOR_HYP_BMAP=0x3 (FUNC_FEAT|PTP)")
    assert event["guest"] == common.format("SMCCC_ARCH_WORKAROUND_1=NOT_AVAIL",
                                           "SMCCC_ARCH_WORKAROUND_3=NOT_AVAIL")
    assert event["destination_registers"] == common.format(
        "SMCCC_ARCH_WORKAROUND_1=NOT_REQUIRED", "SMCCC_ARCH_WORKAROUND_3=AVAIL")
    assert event["vcpu_features"] == {"guest": "none", "destination": "pmu"}
    assert event["codes"] == ["FEATURE_GAINED", "WA_RATCHET"]
    output = env.stdout.getvalue()  # type: ignore[attr-defined]
    after = read_record(parse_domain(output).root)
    assert after is not None
    here = socket.gethostname()
    # No capabilities cached in the run directory: no host uuid, and no attribute for it.
    assert after.origin == Origin("migrated", here, bundled["6.12__a76"].kernel_release,
                                  "2027-01-15T08:00:00Z", "")
    assert b"host-uuid" not in output
    assert after.history == (HistoryEntry("2027-01-15T08:00:00Z", "migrate", here, "allow",
                                          ("FEATURE_GAINED", "WA_RATCHET")),)
    assert after.override == Override(frozenset({"WA_DROPPED"}), "ticket 9")


def test_a_register_of_a_newer_release_is_reported_not_judged(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """A record naming a firmware register this release does not know: allowed with
    FW_UNVERIFIED, and `psci-hook check` on a host that rehearses says why. (The rehearsal is
    a stand-in that accepts every value: arm64 KVM cannot run here.)"""
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"])).replace(
        b"</psci:firmware>",
        b'<psci:reg name="SMCCC_ARCH_WORKAROUND_4" value="0x1"/></psci:firmware>', 1)
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.1__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0]["codes"] == ["FW_UNVERIFIED"]
    xml_file = tmp_path / "d.xml"
    xml_file.write_bytes(domain)
    check = Environment.for_test(["psci-hook", "check", "--json", "--domain-xml",
                                  str(xml_file)], b"",
                                 {"PSCI_HOOK_CONFIG": str(tmp_path / "c.conf")},
                                 run_dir=tmp_path)
    check.rehearser = lambda features, values: Result(frozenset(values))
    assert cli.main(check.argv[1:], check) == ExitStatus.OK
    findings = json.loads(check.stdout.getvalue())["findings"]  # type: ignore[attr-defined]
    assert [f for f in findings if f["code"] == "FW_UNVERIFIED"] == [{
        "code": "FW_UNVERIFIED", "outcome": "unverified", "severity": "warning",
        "register": None, "message": "the record names SMCCC_ARCH_WORKAROUND_4, which this "
        "version of psci-hook does not know (a newer release wrote it): not judged"}]
    # Without a rehearsal (another host's profile) the finding is shown all the same.
    offline = Environment.for_test(["psci-hook", "check", "--host-profile", "6.1__a57",
                                    "--domain-xml", str(xml_file)], b"",
                                   {"PSCI_HOOK_CONFIG": str(tmp_path / "c.conf")},
                                   run_dir=tmp_path)
    assert cli.main(offline.argv[1:], offline) == ExitStatus.OK
    assert "the record names SMCCC_ARCH_WORKAROUND_4, which this version of psci-hook does " \
        "not know" in offline.stdout.getvalue().decode()  # type: ignore[attr-defined]


@pytest.mark.parametrize("available", [True, False])
def test_the_hook_rehearses_on_this_hosts_kvm_only_where_it_can(
        tmp_path: Path, bundled: dict[str, HostProfile], monkeypatch: pytest.MonkeyPatch,
        available: bool) -> None:
    """Without a rehearser of its own the hook uses this host's KVM when rehearsal.available()
    says it can. Both are stand-ins here: this host's /dev/kvm is x86, arm64 KVM cannot run."""
    calls: list[frozenset[str]] = []

    def kvm_rehearser(features: frozenset[str], values: dict[int, int]) -> Result:
        calls.append(features)
        return Result(frozenset(values))

    monkeypatch.setattr(rehearsal, "available", lambda: available)
    monkeypatch.setattr(rehearsal, "kvm_rehearser", kvm_rehearser)
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.OK
    assert sink.events[0].get("rehearsal") == ("accepted" if available else None)
    # The vCPU this host's QEMU creates for the guest: -cpu host's features here (a57: PMU).
    assert calls == ([frozenset({"pmu"})] if available else [])


def test_a_psci_0_1_vcpu_is_rehearsed_without_its_psci_version(tmp_path: Path) -> None:
    """A domain XML with kvm-psci-version=0.1: the vCPU QEMU creates here takes PSCI 0.1 only,
    and the scratch vCPU of the rehearsal (a 0.2+ one) would answer for another vCPU, so
    PSCI_VERSION is left to the model (rehearsal.values_to_rehearse); without the property it
    is rehearsed. The rehearsal is a stand-in: arm64 KVM cannot run here."""
    guest = GuestState.booted_on(host(), ALL)  # PSCI 1.3
    rehearsed: list[set[int]] = []

    def rehearser(features: frozenset[str], values: dict[int, int]) -> Result:
        rehearsed.append(set(values))
        return Result(frozenset(values))

    for extra in (PSCI_0_1_GLOBAL, ""):
        env = _hook_env(tmp_path, ["hook", "g", "migrate", "begin", "-"],
                        stamped(xml(extra=extra), guest), host())
        env.rehearser = rehearser
        main(env, CollectingSink())
    with_property, without = rehearsed
    assert without == with_property | {regs.PSCI_VERSION.reg_id} != with_property


def test_the_hook_judges_the_vcpu_the_domain_xml_asks_for(tmp_path: Path) -> None:
    """The destination QEMU creates the vCPU from the same domain XML: a PSCI 0.1 guest moves
    where the XML keeps kvm-psci-version=0.1 and is vetoed where it does not; an SVE length
    the XML requires and this host lacks is vetoed (QEMU: "cannot enable sve1024")."""
    guest_0_1 = GuestState.booted_on(host(), ALL, psci_version=0x1)
    statuses = []
    for extra in (PSCI_0_1_GLOBAL, ""):
        env = _hook_env(tmp_path, ["hook", "g", "migrate", "begin", "-"],
                        stamped(xml(extra=extra), guest_0_1), host())
        statuses.append(main(env, CollectingSink()))
    assert statuses == [ExitStatus.OK, ExitStatus.VETO]
    destination = host()._replace(sve_lengths=(128, 256))
    for required, status in (("sve256", ExitStatus.OK), ("sve1024", ExitStatus.VETO)):
        env = _hook_env(tmp_path, ["hook", "g", "migrate", "begin", "-"],
                        stamped(SVE_LENGTHS.replace(b"sve256", required.encode()),
                                GuestState.booted_on(host(), ALL)), destination)
        sink = CollectingSink()
        assert main(env, sink) == status, required
        assert ("FEATURE_MISSING" in sink.events[0]["codes"]) is (status == ExitStatus.VETO)


def test_the_hook_writes_the_record_at_the_documents_own_indentation(
        tmp_path: Path, bundled: dict[str, HostProfile]) -> None:
    """A domain XML indented by four spaces (not libvirt's two): the record the hook writes
    sits at the metadata's children's indentation, eight spaces (its own levels two deeper
    each, as record_xml writes them)."""
    four = b"\n".join(line[:len(line) - len(line.lstrip())] * 2 + line.lstrip()
                      for line in DOMAIN.split(b"\n"))
    domain = stamped(four, GuestState.booted_on(bundled["6.1__a57"]))
    env = _hook_env(tmp_path, ["hook", "vm1", "migrate", "begin", "-"], domain,
                    bundled["6.12__a57"])
    assert main(env, CollectingSink()) == ExitStatus.OK
    out = env.stdout.getvalue()  # type: ignore[attr-defined]
    record = out[out.index(b"<psci:record "):out.index(b"</psci:record>")]
    assert b"\n    <metadata>\n        <psci:record " in out
    assert out.endswith(b"\n        </psci:record>\n    </metadata>\n</domain>\n")
    assert b"\n          <psci:origin " in record and b"\n            <psci:check " in record

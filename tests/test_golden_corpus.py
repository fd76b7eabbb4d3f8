"""Golden tests over libvirt's own aarch64 domain XML (tests/data/libvirt-corpus, libvirt 11.3.0).

For every file: `stamp` adds our record and nothing else (the output minus our element is the
input, byte for byte); the hook's annotated output minus our element is the input again; and
validity against libvirt's domain.rng from the same source package is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from psci_hook.domainxml import parse_domain, requested_vcpu
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.hook import main
from psci_hook.profile import HostProfile, load_profile
from psci_hook.record import GuestRecord, Origin, read_record, record_xml
from psci_hook.splice import layout, splice_record
from psci_hook.status import ExitStatus
from tests.corpus import corpus_files, is_valid
from tests.hooktools import CollectingSink, profile_file, stamped, write_config

FILES = corpus_files()
SOURCE_PROFILE = "6.1__a57"
DEST_PROFILE = "6.12__a76"


def _without_record(data: bytes) -> bytes:
    """The document with our element's bytes removed (the span expat finds in it)."""
    (span,) = layout(data).records
    return data[:span.start] + data[span.end:]



@pytest.fixture(scope="module")
def profiles() -> dict[str, HostProfile]:
    from psci_hook.profile import bundled_profiles

    return {n: load_profile(p) for n, p in bundled_profiles().items()}


def test_the_corpus_is_there() -> None:
    assert len(FILES) >= 150


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_stamp_and_hook_output_minus_our_element_is_the_input(
        path: Path, tmp_path: Path, profiles: dict[str, HostProfile]) -> None:
    original = path.read_bytes()
    valid_before = is_valid(original)
    guest = GuestState.booted_on(profiles[SOURCE_PROFILE])

    spliced = splice_record(original, lambda indent: record_xml(
        GuestRecord(guest, Origin("stamped", "host-a", "6.1.0", "2026-11-30T00:00:00Z")), indent))
    start, end = spliced.inserted
    with_record = spliced.data
    assert spliced.replaced is None or original.find(b"<metadata/>") >= 0
    if spliced.replaced is None:  # inserted: removing the inserted bytes gives the input back
        assert with_record[:start] + with_record[end:] == original
    else:  # an empty <metadata/> was replaced by a full one holding ours
        a, b = spliced.replaced
        assert with_record[:start] + original[a:b] + with_record[end:] == original
    assert is_valid(with_record) is valid_before

    domain = parse_domain(original)
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, profiles[DEST_PROFILE]),
                          None, extra_hook="domain_types = kvm, qemu, hvf")
    env = Environment.for_test(["hook", domain.name, "migrate", "begin", "-"], with_record,
                               {"PSCI_HOOK_CONFIG": str(config)})
    sink = CollectingSink()
    status = main(env, sink)
    output = env.stdout.getvalue()  # type: ignore[attr-defined]
    assert len(sink.events) == 1
    if not domain.is_aarch64:  # armv7l guests in aarch64 files: not ours, untouched
        assert (status, output) == (ExitStatus.OK, b"")
        return
    destination = profiles[DEST_PROFILE]
    if destination.cpreg_list(requested_vcpu(domain, destination.default_features()).features) \
            is None:  # the XML asks for SVE, which the Cortex-A76 host lacks: QEMU cannot start
        assert (status, output) == (ExitStatus.VETO, b"")
        assert "VETO FEATURE_MISSING" in env.stderr.getvalue()  # type: ignore[attr-defined]
        return
    assert status == ExitStatus.OK, env.stderr.getvalue()  # type: ignore[attr-defined]
    # The hook replaced our element and nothing else: outside it, output == stamped input.
    assert _without_record(output) == _without_record(with_record)
    assert is_valid(output) is valid_before
    record = read_record(parse_domain(output).root)
    assert record is not None and record.origin.event == "migrated"
    assert record.state.registers == GuestState.booted_on(
        profiles[DEST_PROFILE]).registers | {
        k: v for k, v in guest.registers.items() if k >> 16 & 0xFFF == 0x16}


def test_existing_metadata_of_others_is_kept(profiles: dict[str, HostProfile]) -> None:
    with_metadata = [p for p in FILES if b"<metadata>" in p.read_bytes()]
    assert with_metadata, "the corpus has domains with <metadata> of other namespaces"
    for path in with_metadata:
        original = path.read_bytes()
        out = stamped(original, GuestState.booted_on(profiles[SOURCE_PROFILE]))
        before = parse_domain(original).root.find("metadata")
        after = parse_domain(out).root.find("metadata")
        assert [c.tag for c in after][:len(before)] == [c.tag for c in before]

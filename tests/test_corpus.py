"""The vendored libvirt corpus: present, intact, parseable, with its recorded schema baseline."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from lxml import etree

from tests.corpus import (
    CORPUS_DIR,
    KNOWN_INVALID,
    PACKAGE,
    SUITE,
    TARBALL,
    TARBALL_SHA256,
    UPSTREAM_VERSION,
    capabilities_files,
    corpus_files,
    domain_schema,
    hardened_parser,
    is_output,
    is_valid,
    negative_files,
    parse,
    schema,
    sha256sums,
    source_info,
)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "vendor-libvirt-corpus"
XML_COUNT, INPUT_COUNT, OUTPUT_COUNT = 150, 75, 75
SCHEMA_COUNT, CAPABILITIES_COUNT = 26, 2
ALL_XML = corpus_files()


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


def test_source_txt_records_the_pinned_tarball() -> None:
    info = source_info()
    assert info["package"].split()[0] == PACKAGE
    assert info["upstream-version"] == UPSTREAM_VERSION
    assert info["version"].startswith(UPSTREAM_VERSION + "-")
    assert info["suite"] == SUITE
    assert info["tarball"] == TARBALL
    assert info["tarball-sha256"] == TARBALL_SHA256
    assert info["licence"].startswith("LGPL-2.1-or-later")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", info["retrieved"])
    assert "arch='aarch64'" in info["selection"]
    # The script refuses any other tarball for this upstream version.
    assert f'"{UPSTREAM_VERSION}": "{TARBALL_SHA256}"' in SCRIPT.read_text(encoding="utf-8")


def test_counts() -> None:
    info = source_info()
    assert len(ALL_XML) == XML_COUNT == int(info["count-xml"])
    assert sum(map(is_output, ALL_XML)) == OUTPUT_COUNT
    assert len(ALL_XML) - OUTPUT_COUNT == INPUT_COUNT
    assert len(list((CORPUS_DIR / "schemas").glob("*.rng"))) == SCHEMA_COUNT
    assert int(info["count-schemas"]) == SCHEMA_COUNT
    assert len(capabilities_files()) == CAPABILITIES_COUNT == int(info["count-capabilities"])


def test_every_file_matches_sha256sums_and_nothing_else_is_there() -> None:
    sums = sha256sums()
    on_disk = {
        str(p.relative_to(CORPUS_DIR))
        for p in CORPUS_DIR.rglob("*")
        if p.is_file() and p.name not in ("SOURCE.txt", "SHA256SUMS")
    }
    assert on_disk == set(sums)
    bad = [
        rel
        for rel, digest in sums.items()
        if hashlib.sha256((CORPUS_DIR / rel).read_bytes()).hexdigest() != digest
    ]
    assert bad == []
    assert int(source_info()["total-bytes"]) == sum(
        (CORPUS_DIR / rel).stat().st_size for rel in sums
    )


def test_licence_is_the_lgpl_2_1() -> None:
    text = (CORPUS_DIR / "COPYING.LESSER").read_text(encoding="utf-8")
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text
    assert "Version 2.1, February 1999" in text


@pytest.mark.parametrize("path", ALL_XML, ids=_ids(ALL_XML))
def test_domain_xml_parses_hardened_and_matches_the_selection_rule(path: Path) -> None:
    data = path.read_bytes()
    assert b"arch='aarch64'" in data or b'arch="aarch64"' in data
    root = parse(data)
    assert root.tag == "domain"
    assert root.get("type")


@pytest.mark.parametrize("path", capabilities_files(), ids=_ids(capabilities_files()))
def test_capabilities_parse_and_validate(path: Path) -> None:
    root = parse(path.read_bytes())
    assert root.findtext("host/cpu/arch") == "aarch64"
    assert schema("capability.rng").validate(root), schema("capability.rng").error_log


def test_domain_schema_compiles_once() -> None:
    assert isinstance(domain_schema(), etree.RelaxNG)
    assert domain_schema() is domain_schema()


@pytest.mark.parametrize("path", ALL_XML, ids=_ids(ALL_XML))
def test_schema_validity_baseline(path: Path) -> None:
    assert is_valid(path.read_bytes()) == (path.name not in KNOWN_INVALID)


def test_known_invalid_files_exist() -> None:
    assert {p.name for p in negative_files()} == KNOWN_INVALID


def test_is_valid_rejects_garbage_and_a_bare_domain() -> None:
    assert not is_valid(b"<domain")
    assert not is_valid(b"<domain type='kvm'/>")


def test_parser_is_hardened() -> None:
    assert hardened_parser() is not hardened_parser()  # a fresh parser each time
    doc = (
        b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/hostname"><!ENTITY y "expanded">]>'
        b"<d><a>&x;</a><b>&y;</b></d>"
    )
    root = parse(doc)
    assert root.findtext("a") in (None, "")
    assert root.findtext("b") in (None, "")

"""The vendored libvirt domain XML corpus (tests/data/libvirt-corpus/), for golden tests.

The files come from the upstream tarball of Debian's libvirt source package and are written by
``scripts/vendor-libvirt-corpus``; SOURCE.txt records where from, the licence and the selection
rule, SHA256SUMS the digest of every vendored file.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lxml import etree

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "libvirt-corpus"
XML_DIR = CORPUS_DIR / "xml"
SCHEMA_DIR = CORPUS_DIR / "schemas"
CAPABILITIES_DIR = CORPUS_DIR / "capabilities"

# What scripts/vendor-libvirt-corpus recorded (and pins) for the vendored release.
PACKAGE = "libvirt"
UPSTREAM_VERSION = "11.3.0"
SUITE = "trixie"
TARBALL = "libvirt_11.3.0.orig.tar.xz"
TARBALL_SHA256 = "6bcb0c42c4580436fea262ced56f68a6afe20f7390b1bea2116718cc034a0283"

# Domain XMLs that are NOT valid against domain.rng, as found by validating every vendored file
# (lxml 4.9.2 / libxml2 2.9.14, Debian bookworm's python3-lxml). Every other file is valid.
# libvirt's other negative cases (those with a .err file instead of an output XML, such as
# aarch64-tpm-wrong-model.xml) are schema-valid: libvirt rejects them later, in its own checks.
KNOWN_INVALID = frozenset({"aarch64-gic-invalid.xml"})

# libvirt-formatted output files are named <test>.<arch>-<caps>[.abi-update][+accel].xml.
_OUTPUT_NAME = re.compile(r"\.aarch64-[^/]*\.xml$")


def hardened_parser() -> etree.XMLParser:
    """The parser the hook uses on untrusted XML: no entities, no network, no DTD, bounded."""
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )


def parse(xml_bytes: bytes) -> etree._Element:
    return etree.fromstring(xml_bytes, hardened_parser())


def corpus_files() -> list[Path]:
    """Every vendored domain XML (inputs and libvirt-formatted outputs), sorted by path."""
    return sorted(XML_DIR.rglob("*.xml"))


def is_output(path: Path) -> bool:
    """True for libvirt's formatted output (*.aarch64-*.xml), what a hook actually receives."""
    return bool(_OUTPUT_NAME.search(path.name))


def negative_files() -> list[Path]:
    """The domain XMLs that fail domain.rng (KNOWN_INVALID)."""
    return [p for p in corpus_files() if p.name in KNOWN_INVALID]


def capabilities_files() -> list[Path]:
    """Host capabilities XMLs of aarch64 hosts (libvirt's vircaps2xmldata)."""
    return sorted(CAPABILITIES_DIR.glob("*.xml"))


@functools.cache
def schema(name: str) -> etree.RelaxNG:
    """A compiled libvirt RelaxNG schema from the same tarball, e.g. 'capability.rng'."""
    path = SCHEMA_DIR / name
    return etree.RelaxNG(etree.parse(str(path), hardened_parser()))


def domain_schema() -> etree.RelaxNG:
    """libvirt's domain.rng (which includes domaincommon.rng and others), compiled once."""
    return schema("domain.rng")


def is_valid(xml_bytes: bytes) -> bool:
    """Whether the document is valid against domain.rng; unparsable XML is not valid."""
    try:
        root = parse(xml_bytes)
    except etree.XMLSyntaxError:
        return False
    return bool(domain_schema().validate(root))


def source_info() -> dict[str, str]:
    """SOURCE.txt's single-valued fields ('key: value' lines; repeated keys such as link:
    are collected, newline-separated, under the same key)."""
    info: dict[str, str] = {}
    for line in (CORPUS_DIR / "SOURCE.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        info[key] = f"{info[key]}\n{value}" if key in info else value
    return info


def sha256sums() -> dict[str, str]:
    """SHA256SUMS as {relative path: hex digest}."""
    sums: dict[str, str] = {}
    for line in (CORPUS_DIR / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        sums[rel] = digest
    return sums

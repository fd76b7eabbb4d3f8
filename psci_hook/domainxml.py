"""Reading libvirt domain XML safely, and the few facts psci-hook needs from it.

The XML arrives from libvirt (hook stdin) or from files; it carries secrets, so it is never
logged. Parsing is hardened: a size cap, no DTD, no entity expansion, no network.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from lxml import etree

from psci_hook.errors import first_line
from psci_hook.profile import FEATURE_ORDER, FeatureSet

MAX_DOMAIN_XML = 8 * 1024 * 1024  # libvirt domain XML is kilobytes; 8 MiB is generous


class DomainXMLError(ValueError):
    """Input that is not a usable domain XML document; the message is one line."""


class Domain(NamedTuple):  # not a dataclass: ~0.5 ms less for every hook run to import
    root: Any  # the lxml <domain> element
    name: str
    uuid: str
    type: str  # kvm, qemu, hvf ...
    arch: str  # from <os><type arch=...>

    @property
    def is_aarch64(self) -> bool:
        return self.arch == "aarch64"


def _parser() -> Any:
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_blank_text=False, remove_comments=False,
    )


def parse_domain(data: bytes, max_size: int = MAX_DOMAIN_XML) -> Domain:
    if not data.strip():
        raise DomainXMLError("empty domain XML")
    if len(data) > max_size:
        # The hook reads at most max_size + 1 bytes, so no byte count: only that it is over.
        raise DomainXMLError(f"domain XML is over the {max_size}-byte cap")
    head = data.lstrip()[:4].lower()
    if not (head.startswith(b"<") or data.startswith(b"\xef\xbb\xbf")):
        raise DomainXMLError("not XML: it does not start with '<'")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        # libvirt never sends a DTD; refusing one rules out entity expansion and external
        # entities whatever the parser version does.
        raise DomainXMLError("domain XML with a DTD or entity declarations is refused")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise DomainXMLError(f"malformed domain XML: {first_line(exc)}") from None
    except ValueError as exc:  # e.g. unicode strings with an encoding declaration
        raise DomainXMLError(f"malformed domain XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        # The byte check above misses a DTD in an encoding that is not ASCII-compatible for
        # '<' (UTF-7: "+ADw-!DOCTYPE"), which libxml2 decodes; refuse what the parser saw too.
        raise DomainXMLError("domain XML with a DTD or entity declarations is refused")
    if root.tag != "domain":
        raise DomainXMLError(f"root element is <{root.tag}>, not <domain>")
    os_type = root.find("os/type")
    return Domain(
        root=root,
        name=(root.findtext("name") or "").strip(),
        uuid=(root.findtext("uuid") or "").strip(),
        type=root.get("type", ""),
        arch=(os_type.get("arch", "") if os_type is not None else ""),
    )


def requested_features(domain: Domain, supported: FeatureSet) -> FeatureSet:
    """The vCPU features QEMU enables for this domain on a host that supports ``supported``.

    QEMU's -cpu host (and host-passthrough) enables PMU, pointer authentication and SVE when
    the host has them; the domain XML can turn them off: <features><pmu state='off'/>, and
    <cpu><feature policy='disable' name='sve'/> (or 'pauth').
    """
    enabled = set(supported)
    pmu = domain.root.find("features/pmu")
    if pmu is not None and pmu.get("state") == "off":
        enabled.discard("pmu")
    for feature in domain.root.findall("cpu/feature"):
        name, policy = feature.get("name", ""), feature.get("policy", "require")
        if name in FEATURE_ORDER and policy in ("disable", "forbid"):
            enabled.discard(name)
    return frozenset(enabled)

"""This host's identity from the libvirt capabilities XML cached by `psci-hook refresh`.

Read by the hook (never by asking libvirt: the daemon is waiting for the hook).
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

MAX_CAPABILITIES = 4 * 1024 * 1024


def capabilities_identity(path: Path) -> dict[str, str]:
    """uuid, arch, CPU vendor and model from a capabilities document; {} if unusable."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CAPABILITIES + 1)
    except OSError:
        return {}
    if len(data) > MAX_CAPABILITIES or b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        return {}
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError:
        return {}
    out = {
        "uuid": (root.findtext("host/uuid") or "").strip(),
        "arch": (root.findtext("host/cpu/arch") or "").strip(),
        "cpu_vendor": (root.findtext("host/cpu/vendor") or "").strip(),
        "cpu_model": (root.findtext("host/cpu/model") or "").strip(),
    }
    return {k: v for k, v in out.items() if v}

"""Property tests of the byte splice (psci_hook.splice) over generated domain documents.

For arbitrary well-formed domain documents (attributes in both quote styles with '>' and the
other quote inside, comments, processing instructions, CDATA, character and entity
references, non-ASCII text, other applications' namespaced <metadata>, <metadata/> empty or
with content, an existing record of ours under any prefix, whitespace and line-ending styles,
everything on one line, a BOM and an XML declaration or not):
- the output minus the span splice_record says it inserted equals the input minus the span it
  says it replaced (no replaced span: the input itself, byte for byte);
- the replaced span, when there is one, is our old record or an empty <metadata/>, and the
  inserted bytes are our element, alone or in a <metadata> of its own, with whitespace;
- the output parses as a domain and its record reads back equal to the one spliced in;
- splicing the same record again changes nothing.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from psci_hook.codes import CODES
from psci_hook.domainxml import parse_domain
from psci_hook.engine import GuestState
from psci_hook.profile import bundled_profiles, load_profile
from psci_hook.record import (
    NAMESPACE,
    VERDICTS,
    GuestRecord,
    HistoryEntry,
    HistoryOp,
    Origin,
    Override,
    read_record,
    record_xml,
)
from psci_hook.splice import splice_record

PROFILES = [load_profile(p) for p in bundled_profiles().values()]
GUESTS = [GuestState.booted_on(p) for p in PROFILES]
OTHER_NS = ["https://example.org/app/1", "http://libvirt.org/schemas/domain/qemu/1.0",
            "urn:x-test:caf%C3%A9?a=1&b=2", NAMESPACE.replace("/1", "/2")]

# ---------------------------------------------------------------------------------------------
# Text, attributes and markup
# ---------------------------------------------------------------------------------------------

# Characters XML 1.0 allows (no C0 controls but tab and newlines, no surrogates, no U+FFFE/F).
XML_CHAR = st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)).filter(
    lambda c: c not in "\ufffe\uffff") | st.sampled_from(["\t", "\n", "\u00e9", "\u4e2d",
                                                          "\U0001f600", "<", "&", ">", "'",
                                                          '"', "]"])
PLAIN = st.text(XML_CHAR, max_size=12)
NAME = st.from_regex(r"[a-z][a-z0-9._-]{0,8}", fullmatch=True)


def _escape(text: str, quote: str = "") -> str:
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    if quote:
        out = out.replace(quote, "&quot;" if quote == '"' else "&apos;")
    return out


@st.composite
def char_data(draw: Any, quote: str = "") -> str:
    """Escaped text with character references, entity references and raw non-ASCII."""
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["plain", "decimal", "hex", "entity", "raw >"]))
        if kind == "plain":
            parts.append(_escape(draw(PLAIN), quote))
        elif kind in ("decimal", "hex"):
            code = ord(draw(XML_CHAR))
            parts.append(f"&#{code};" if kind == "decimal" else f"&#x{code:X};")
        elif kind == "entity":
            parts.append(draw(st.sampled_from(["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"])))
        elif quote:  # '>' and the other quote are legal raw in an attribute value
            parts.append(">" + ("'" if quote == '"' else '"'))
    return "".join(parts)


@st.composite
def attributes(draw: Any, required: tuple[tuple[str, str], ...] = ()) -> str:
    names = draw(st.lists(NAME, max_size=3, unique=True))
    pairs = [(n, None) for n in names if n not in dict(required)]
    out = ""
    for name, value in [*((n, v) for n, v in required), *pairs]:
        quote = draw(st.sampled_from(["'", '"']))
        text = value if value is not None else draw(char_data(quote))
        space = draw(st.sampled_from([" ", "\n    ", "\t", "  "]))
        around = draw(st.sampled_from(["=", " = ", "=\n"]))
        out += f"{space}{name}{around}{quote}{text}{quote}"
    return out + draw(st.sampled_from(["", " ", "\n"]))


def comment(draw: Any) -> str:
    text = draw(PLAIN).replace("-", "_")
    trap = draw(st.sampled_from(["", " </metadata> ", ' <x a="1"> ']))
    return f"<!--{trap}{text}-->"


def processing_instruction(draw: Any) -> str:
    return f"<?{draw(NAME.filter(lambda n: not n.lower().startswith('xml')))} " \
           f"{draw(PLAIN).replace('?>', '')}?>"


def cdata(draw: Any) -> str:
    return f"<![CDATA[{draw(PLAIN).replace(']]>', '')}<metadata/>]]>"


class Layout:
    """How a document is laid out: line break, indentation unit (or all on one line)."""

    def __init__(self, newline: str, unit: str) -> None:
        self.newline, self.unit = newline, unit

    def at(self, depth: int) -> str:
        return self.newline + self.unit * depth if self.newline else ""


def leaf(draw: Any, tag: str, text: str | None = None, attrs: str = "") -> str:
    """An element with text, or empty in either style."""
    if text is None and draw(st.booleans()):
        return f"<{tag}{attrs}{draw(st.sampled_from(['/', ' /']))}>"
    body = text if text is not None else draw(char_data())
    end = draw(st.sampled_from(["", " ", "\n"]))
    return f"<{tag}{attrs}>{body}</{tag}{end}>"


def foreign(draw: Any, lay: Layout, depth: int) -> str:
    """Another application's namespaced element, prefixed or in a default namespace."""
    uri = draw(st.sampled_from(OTHER_NS))
    prefix = draw(st.sampled_from(["", "app", "psci", "p0"]))
    local = draw(st.sampled_from(["metadata", "record", "domain"]) | NAME)  # traps: our names
    tag = f"{prefix}:{local}" if prefix else local
    colon = ":" + prefix if prefix else ""
    declaration = f" xmlns{colon}='{_escape(uri, chr(39))}'"
    inner = [leaf(draw, f"{prefix}:item" if prefix else "item", attrs=draw(attributes()))
             for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        inner.append(cdata(draw))
    body = "".join(lay.at(depth + 1) + i for i in inner)
    return f"<{tag}{declaration}{draw(attributes())}>{body}{lay.at(depth) if inner else ''}</{tag}>"


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------

ATTR_TEXT = st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)).filter(
    lambda c: c not in "\ufffe\uffff"), min_size=1, max_size=40)
TIME = "2026-11-30T10:00:00Z"


@st.composite
def records(draw: Any) -> GuestRecord:
    origin = Origin(draw(st.sampled_from(["booted", "migrated", "restored", "stamped"])),
                    draw(ATTR_TEXT), draw(ATTR_TEXT), TIME,
                    draw(st.sampled_from(["", "c7a5fdbd-edaf-9455-926a-d65c16db1809"])))
    codes = st.lists(st.sampled_from(sorted(CODES)), max_size=3, unique=True)
    history = tuple(HistoryEntry(TIME, draw(st.sampled_from(tuple(HistoryOp))), draw(ATTR_TEXT),
                                 draw(st.sampled_from(VERDICTS)), tuple(draw(codes)))
                    for _ in range(draw(st.integers(0, 3))))
    override = None
    if draw(st.booleans()):
        override = Override(frozenset(draw(codes.filter(bool))), draw(ATTR_TEXT))
    return GuestRecord(draw(st.sampled_from(GUESTS)), origin, history, override)


def existing_record(draw: Any, lay: Layout, depth: int) -> str:
    """A record of ours already in the document, under any prefix (or none), any indent."""
    text = record_xml(draw(records()), lay.unit * depth if lay.newline else "")
    prefix = draw(st.sampled_from(["psci", "p0", ""]))
    if prefix == "":
        text = text.replace("xmlns:psci=", "xmlns=").replace("psci:", "")
    elif prefix != "psci":
        text = text.replace("xmlns:psci=", f"xmlns:{prefix}=").replace("psci:", f"{prefix}:")
    if not lay.newline:
        text = re.sub(r">\s+<", "><", text)
    return text


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


@st.composite
def metadata(draw: Any, lay: Layout, depth: int) -> tuple[str, str]:
    """(<metadata> text, kind): absent, empty (self-closing or not), or with content."""
    kind = draw(st.sampled_from(["absent", "self-closing", "open-close", "content",
                                 "content with our record"]))
    if kind == "absent":
        return "", kind
    if kind == "self-closing":
        return f"<metadata{draw(st.sampled_from(['', ' ']))}/>", kind
    if kind == "open-close":
        return f"<metadata>{draw(st.sampled_from(['', ' ', lay.at(depth)]))}</metadata>", kind
    items: list[str] = []
    for _ in range(draw(st.integers(1 if kind == "content" else 0, 3))):
        items.append(draw(st.sampled_from([foreign, foreign, lambda d, lay, dep: comment(d),
                                           lambda d, lay, dep: processing_instruction(d)]))(
            draw, lay, depth + 1))
    if kind == "content with our record":
        items.insert(draw(st.integers(0, len(items))), existing_record(draw, lay, depth + 1))
    inline = draw(st.booleans()) if lay.newline else True
    if inline:
        body = "".join(items)
    else:
        body = "".join(lay.at(depth + 1) + i for i in items) + lay.at(depth)
    return f"<metadata{draw(attributes()) if draw(st.booleans()) else ''}>{body}</metadata>", kind


@st.composite
def documents(draw: Any) -> tuple[bytes, str]:
    """(document bytes, the kind of <metadata> it has)."""
    newline = draw(st.sampled_from(["\n", "\r\n", ""]))
    lay = Layout(newline, draw(st.sampled_from(["  ", " ", "    ", "\t", ""])) if newline
                 else "")
    name = draw(char_data()) or "vm"
    children = [
        leaf(draw, "name", name),
        leaf(draw, "uuid", "c7a5fdbd-edaf-9455-926a-d65c16db1809"),
        leaf(draw, "description", draw(char_data()) + (cdata(draw) if draw(st.booleans())
                                                       else "")),
        "<os>" + lay.at(2) + leaf(draw, "type", "hvm", draw(attributes(
            (("arch", "aarch64"), ("machine", "virt"))))) + lay.at(1) + "</os>",
        "<devices>" + "".join(lay.at(2) + leaf(draw, draw(st.sampled_from(
            ["disk", "interface", "serial", "emulator"])), attrs=draw(attributes()))
            for _ in range(draw(st.integers(0, 3)))) + lay.at(1) + "</devices>",
    ]
    for _ in range(draw(st.integers(0, 3))):
        extra = draw(st.sampled_from([comment, processing_instruction, None]))
        children.insert(draw(st.integers(0, len(children))),
                        extra(draw) if extra else foreign(draw, lay, 1))
    meta, kind = draw(metadata(lay, 1))
    if meta:
        children.insert(draw(st.integers(0, len(children))), meta)
    root_attrs = draw(attributes((("type", "kvm"),)))
    if draw(st.booleans()):
        root_attrs += " xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"
    body = "".join(lay.at(1) + c for c in children) + lay.at(0)
    prolog = draw(st.sampled_from(["", "<?xml version='1.0'?>", '<?xml version="1.0" '
                                   'encoding="UTF-8"?>\n']))
    prolog += draw(st.sampled_from(["", "<!-- saved by virsh -->\n", "<?pi x?>"]))
    epilog = draw(st.sampled_from(["", "\n", "\n<!-- end -->\n", newline]))
    bom = "\ufeff" if draw(st.integers(0, 9)) == 0 and not prolog.startswith("<?xml") else ""
    text = f"{bom}{prolog}<domain{root_attrs}>{body}</domain>{epilog}"
    return text.encode("utf-8"), kind


# ---------------------------------------------------------------------------------------------
# The properties
# ---------------------------------------------------------------------------------------------


def _render(record: GuestRecord) -> Callable[[str], str]:
    return lambda indent: record_xml(record, indent)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(documents(), records())
def test_the_splice_changes_nothing_but_our_element(document: tuple[bytes, str],
                                                    record: GuestRecord) -> None:
    data, kind = document
    parse_domain(data)  # the generator makes well-formed domains
    spliced = splice_record(data, _render(record))
    out = spliced.data
    start, end = spliced.inserted
    old_start, old_end = spliced.replaced or (start, start)

    # Output minus what was inserted == input minus what was replaced.
    assert out[:start] == data[:old_start]
    assert out[end:] == data[old_end:]
    assert len(out) - (end - start) == len(data) - (old_end - old_start)

    # What was replaced: our old record, or an empty <metadata/>; nothing else.
    replaced = data[old_start:old_end]
    if kind == "content with our record":
        assert spliced.replaced is not None
        assert re.fullmatch(rb"<(\w+:)?record .*</(\w+:)?record>", replaced, re.S), replaced
    elif kind == "self-closing":
        assert spliced.replaced is not None and re.fullmatch(rb"<metadata ?/>", replaced)
    else:
        assert spliced.replaced is None

    # What was inserted: our element, alone or in a <metadata> of its own, and whitespace.
    inserted = out[start:end].strip()
    if inserted.startswith(b"<metadata>"):
        assert kind in ("absent", "self-closing")
        assert inserted.endswith(b"</metadata>")
        inserted = inserted[len(b"<metadata>"):-len(b"</metadata>")].strip()
    assert inserted.startswith(b"<psci:record ") and inserted.endswith(b"</psci:record>")
    assert inserted.count(b"<psci:record ") == 1

    # The output is a domain whose record is the one spliced in.
    domain = parse_domain(out)
    assert read_record(domain.root) == record

    # Splicing the same record again changes nothing.
    assert splice_record(out, _render(record)).data == out


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(documents(), records(), records())
def test_a_new_record_replaces_the_old_one_in_place(document: tuple[bytes, str],
                                                   first: GuestRecord,
                                                   second: GuestRecord) -> None:
    once = splice_record(document[0], _render(first)).data
    twice = splice_record(once, _render(second))
    assert twice.replaced is not None
    assert twice.data[:twice.inserted[0]] == once[:twice.replaced[0]]
    assert twice.data[twice.inserted[1]:] == once[twice.replaced[1]:]
    assert read_record(parse_domain(twice.data).root) == second

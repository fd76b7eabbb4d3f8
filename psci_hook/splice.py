"""Put our record into the domain XML without touching any other byte.

libvirt hands the hook its own formatting of the domain; re-serialising it (lxml, minidom)
changes quotes and whitespace and can drop what a model does not know. Instead we find byte
offsets with expat and splice: replace our existing element, or insert one before
</metadata>, or add a <metadata> before </domain>. Every other byte stays as it was.
"""

from __future__ import annotations

import xml.parsers.expat
from typing import Callable, NamedTuple

from psci_hook.record import NAMESPACE


class SpliceError(ValueError):
    pass


# A NamedTuple: the hook imports this module (docs/architecture.md#the-hook-path).
class _Span(NamedTuple):
    start: int
    end: int  # exclusive
    start_tag_end: int  # offset just after the start tag's '>'
    end_tag_start: int  # offset of the end tag's '</' (start_tag_end for <x/>)
    empty: bool  # <x/>


class Layout(NamedTuple):
    """Where things are in the original bytes."""

    domain: _Span
    metadata: _Span | None
    records: tuple[_Span, ...]


def _start_tag_end(data: bytes, start: int) -> tuple[int, bool]:
    """The offset after the '>' of the start tag at ``start``, and whether it is empty."""
    quote = None
    i = start + 1
    while i < len(data):
        c = data[i:i + 1]
        if quote:
            if c == quote:
                quote = None
        elif c in (b'"', b"'"):
            quote = c
        elif c == b">":
            return i + 1, data[i - 1:i] == b"/"
        i += 1
    raise SpliceError("unterminated start tag")


def layout(data: bytes) -> Layout:
    """Scan the document once with expat (namespace-aware) for the offsets we need."""
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    stack: list[tuple[str, int, int, bool]] = []
    found: dict[str, object] = {}
    records: list[_Span] = []

    record = f"{NAMESPACE} record"

    def start(name: str, _attrs: object) -> None:
        depth = len(stack)
        if depth == 0 or (depth == 1 and name == "metadata") or (
                depth == 2 and name == record and stack[1][0] == "metadata"):
            offset = parser.CurrentByteIndex
            tag_end, empty = _start_tag_end(data, offset)
            stack.append((name, offset, tag_end, empty))
        else:
            # Only <domain>, <metadata> and our record need offsets. Scanning every start tag
            # in Python was most of the hook's time on a large domain (0.3 s per MB).
            stack.append((name, -1, -1, False))

    def end(name: str) -> None:
        _, offset, tag_end, empty = stack.pop()
        if offset < 0:
            return
        if empty:
            span = _Span(offset, tag_end, tag_end, tag_end, True)
        else:  # expat reports an end tag at its '<'
            end_tag = parser.CurrentByteIndex
            span = _Span(offset, data.index(b">", end_tag) + 1, tag_end, end_tag, False)
        depth = len(stack)
        if depth == 0:
            found["domain"] = span
        elif depth == 1 and name == "metadata" and "metadata" not in found:
            found["metadata"] = span
        elif depth == 2 and stack[1][0] == "metadata" and name == record:
            records.append(span)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except xml.parsers.expat.ExpatError as exc:
        raise SpliceError(f"cannot scan the domain XML: {exc}") from None
    domain = found.get("domain")
    if not isinstance(domain, _Span):
        raise SpliceError("no root element")
    metadata = found.get("metadata")
    return Layout(domain, metadata if isinstance(metadata, _Span) else None, tuple(records))


def _line_indent(data: bytes, offset: int) -> bytes:
    """The whitespace between the start of the line holding ``offset`` and ``offset``."""
    line_start = data.rfind(b"\n", 0, offset) + 1
    prefix = data[line_start:offset]
    return prefix if not prefix.strip() else b""


def _starts_its_line(data: bytes, offset: int, indent: bytes) -> bool:
    """Whether the tag at ``offset`` begins a line of its own, after exactly ``indent``."""
    return data[offset - len(indent) - 1:offset] == b"\n" + indent


def _step(data: bytes, lay: Layout, domain_indent: bytes) -> bytes:
    """The document's indentation unit: how much deeper the first child of <domain> is
    indented than <domain> itself (libvirt: 2 spaces)."""
    after = data[lay.domain.start_tag_end:lay.domain.start_tag_end + 200]
    stripped = after.lstrip(b"\r\n")
    indent = stripped[:len(stripped) - len(stripped.lstrip(b" \t"))]
    step = indent[len(domain_indent):] if indent.startswith(domain_indent) else b""
    return step or b"  "


class Spliced(NamedTuple):
    data: bytes
    inserted: tuple[int, int]  # the span of the new bytes in ``data``
    replaced: tuple[int, int] | None  # the span of the old record in the input, if any


def splice_record(data: bytes, render: Callable[[str], str]) -> Spliced:
    """Insert or replace our record. ``render(indent: str) -> str`` renders the element."""
    lay = layout(data)
    if len(lay.records) > 1:
        raise SpliceError("the domain carries more than one psci-hook record")
    if lay.domain.empty:
        raise SpliceError("the domain element is empty")
    domain_indent = _line_indent(data, lay.domain.start)
    step = _step(data, lay, domain_indent)

    def rendered(indent: bytes) -> bytes:
        return render(indent.decode("ascii")).encode("ascii")

    if lay.records:
        old = lay.records[0]
        indent = _line_indent(data, old.start)
        if not _starts_its_line(data, old.start, indent) and lay.metadata is not None:
            indent = _line_indent(data, lay.metadata.start) + step  # inline: as when inserted
        new = rendered(indent)
        out = data[:old.start] + new + data[old.end:]
        return Spliced(out, (old.start, old.start + len(new)), (old.start, old.end))
    if lay.metadata is not None and not lay.metadata.empty:
        # Before </metadata>, at the indentation of its children.
        close = lay.metadata.end_tag_start
        meta_indent = _line_indent(data, lay.metadata.start)
        child_indent = meta_indent + step
        if _starts_its_line(data, close, meta_indent):
            # "\n<meta_indent></metadata>": put our element on its own line before it.
            at = close - len(meta_indent)
            new = child_indent + rendered(child_indent) + b"\n"
        else:
            at = close
            new = rendered(child_indent)
        return Spliced(data[:at] + new + data[at:], (at, at + len(new)), None)
    if lay.metadata is not None:
        # <metadata/>: replace it with a full element holding ours.
        meta = lay.metadata
        meta_indent = _line_indent(data, meta.start)
        child_indent = meta_indent + step
        new = (b"<metadata>\n" + child_indent + rendered(child_indent) + b"\n" + meta_indent
               + b"</metadata>")
        out = data[:meta.start] + new + data[meta.end:]
        return Spliced(out, (meta.start, meta.start + len(new)), (meta.start, meta.end))
    # No <metadata>: add one as the last child of <domain>.
    close = lay.domain.end_tag_start
    meta_indent = domain_indent + step
    child_indent = meta_indent + step
    block = (b"<metadata>\n" + child_indent + rendered(child_indent) + b"\n" + meta_indent
             + b"</metadata>")
    if _starts_its_line(data, close, domain_indent):
        at = close - len(domain_indent)
        new = meta_indent + block + b"\n"
    else:
        at = close
        new = block
    return Spliced(data[:at] + new + data[at:], (at, at + len(new)), None)

"""The guest record: the guest's register state, travelling in the domain's <metadata>.

One namespaced element (libvirt keeps one <metadata> child per namespace). It is the only
definition of the record: the hook, `stamp`, `check --domain-xml`, `record` and `watch` all
read and write it here. Its content is untrusted input: every value is validated, and a
malformed record raises RecordError with a one-line reason.

Versioning (the `version` attribute, an integer). Within one version a record only grows by
what older readers of that version may ignore: a reader skips elements and attributes it does
not know (in any namespace), keeps history entries and origin events it does not know
verbatim, and a firmware register a writer's catalogue names but the reader's does not is left
out of the state and reported (``GuestRecord.unknown``: the engine's FW_UNVERIFIED, never a
crash). Writers name a firmware register that is not in version 1's catalogue by its hex id, so
that every version-1 reader judges it (FW_UNVERIFIED). Anything a reader must not ignore --
anything that would make an old reader trust values it should not -- takes a new version; a
record of a version the reader does not know raises RecordVersionUnknown (its values are not
vouched for: the policy decides, as for a domain without a record).

The optional `status` attribute says the record does not describe a running QEMU process:
`persistent-copy` (the persistent definition's copy: what the guest ran with last, not live
state; what a shut-off guest carries) or `unverified` (psci-hook could not tell whether the
running guest cold-booted after the record was written). Readers treat any status as "no
vouched-for register state".

The elements, in order: origin, vcpu, sve (a vCPU with SVE: its vector lengths in
bits, `<psci:sve lengths="128 256 512"/>`), firmware, cpreg-list, id-registers, cache-geometry,
override, history. Their attributes are declared once below (ORIGIN, CHECK, OVERRIDE,
VALUE_GROUPS) and serve the reader and the writer; tests/golden/records/ holds whole version-1
records, pinned in both directions (tests/test_record_golden.py).
"""

from __future__ import annotations

import calendar
import importlib
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, NamedTuple, cast

from lxml import etree

from psci_hook import registers as regs
from psci_hook.codes import CODES
from psci_hook.engine import GuestState
from psci_hook.policy import split_list
from psci_hook.profile import KEY_ORDER, ProfileError, feature_key, parse_feature_key
from psci_hook.vocab import HookVerdict, StrEnum

NAMESPACE = "https://psci-hook.org/xmlns/record/1"
PREFIX = "psci"
VERSION = "1"
VERDICTS = (HookVerdict.ALLOW, HookVerdict.VETO, HookVerdict.WARN)  # a check in the history


class OriginEvent(StrEnum):
    """How the guest came by the register state the record describes (origin's ``event``)."""

    BOOTED = "booted"  # cold-booted on the origin host: that host's values
    MIGRATED = "migrated"  # arrived by migration (the hook's annotation, or the recorder)
    RESTORED = "restored"  # loaded from a saved image
    STAMPED = "stamped"  # written offline by `psci-hook stamp` from a profile


class HistoryOp(StrEnum):
    """What a history entry (``check``) records."""

    MIGRATE = "migrate"
    RESTORE = "restore"
    RECORD = "record"


class RecordStatus(StrEnum):
    """A record's ``status`` besides live state (no attribute)."""

    PERSISTENT_COPY = "persistent-copy"  # the persistent definition's copy, not live state
    UNVERIFIED = "unverified"  # not known to describe the running QEMU process
MAX_LIST = 4096  # far above any real kernel's migrated list (~370)
MAX_TEXT = 256
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # UTC to the second: every time in a record
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")  # a catalogue name (not a hex id)
_Q = "{" + NAMESPACE + "}"


def _builtin_sha256() -> Callable[[bytes], Any]:
    """Python's own SHA-256: `import hashlib` initialises OpenSSL, which the hook does not
    need (docs/architecture.md#the-hook-path)."""
    for name in ("_sha256", "_sha2"):  # Python <= 3.11, 3.12+
        try:
            return cast(Callable[[bytes], Any], importlib.import_module(name).sha256)
        except (ImportError, AttributeError):  # a build without the builtin hashes
            continue
    import hashlib

    return hashlib.sha256


class RecordError(ValueError):
    """A record that cannot be trusted; the message is one line."""


class RecordVersionUnknown(RecordError):
    """A record of a version this release does not read (a newer psci-hook wrote it)."""


class Origin(NamedTuple):
    """Where the guest's state came from."""

    event: str  # booted, migrated, restored, stamped (another release's word is kept as is)
    host: str
    kernel: str
    time: str
    host_uuid: str = ""


class HistoryEntry(NamedTuple):
    """One check of the guest, kept in the record's bounded history."""

    time: str
    op: str
    host: str
    verdict: str
    codes: tuple[str, ...] = ()


class Override(NamedTuple):
    """An operator's per-domain override: these blocking codes do not veto this domain."""

    codes: frozenset[str]
    reason: str


class GuestRecord(NamedTuple):
    """The whole record: the guest's state, its origin, its history, an operator override."""

    state: GuestState
    origin: Origin
    history: tuple[HistoryEntry, ...] = ()
    override: Override | None = None
    status: str = ""  # "" (live state), a RecordStatus, or a newer release's word
    # Firmware register names this release does not know (a newer writer's); left out of state.
    unknown: tuple[str, ...] = ()

    @property
    def vouched(self) -> bool:
        """Whether the record claims to describe the running guest (no status)."""
        return not self.status

    def with_status(self, status: str) -> GuestRecord:
        return self._replace(status=status)

    def with_check(self, entry: HistoryEntry, limit: int) -> GuestRecord:
        history = (*self.history, entry)
        return self._replace(history=history[-limit:] if limit else ())


# ---------------------------------------------------------------------------------------------
# The format, declared once: every attribute of every element, for the reader and the writer
# (in the manner of virtinst's XMLProperty). An element's attributes are written in this order.
# ---------------------------------------------------------------------------------------------


class XMLAttr(NamedTuple):
    """One attribute of one element, and the field of the value it carries."""

    xml: str  # the attribute's name
    field: str  # the NamedTuple field
    kind: str = "text"  # text; time (TIME_FORMAT); words (a space-separated tuple)
    required: bool = True  # a reader refuses the element without it
    omit_empty: bool = False  # a writer leaves it out when empty


ORIGIN = (XMLAttr("event", "event"), XMLAttr("host", "host"),
          XMLAttr("host-uuid", "host_uuid", required=False, omit_empty=True),
          XMLAttr("kernel", "kernel"), XMLAttr("time", "time", kind="time"))
CHECK = (XMLAttr("time", "time", kind="time"), XMLAttr("op", "op"), XMLAttr("host", "host"),
         XMLAttr("verdict", "verdict"), XMLAttr("codes", "codes", kind="words", required=False))
OVERRIDE = (XMLAttr("codes", "codes", kind="words"), XMLAttr("reason", "reason"))


class ValueGroup(NamedTuple):
    """A group of named register values (<reg name value> children) and its GuestState field."""

    xml: str
    field: str
    check: Callable[[str], object]  # raises ValueError or KeyError for a name not in the group
    order: Callable[[str], int]  # the order a writer lists them in


def _check_id_register(name: str) -> None:
    if name not in regs.ID_REGISTER_NAMES:
        raise ValueError("not an ID register")


VALUE_GROUPS = (
    ValueGroup("id-registers", "id_registers", _check_id_register,
               lambda name: regs.SYSREG_BY_NAME[name]),
    ValueGroup("cache-geometry", "cache_geometry", regs.cache_geometry_id,
               regs.cache_geometry_id),
)


def _read_attrs(elem: Any, attrs: tuple[XMLAttr, ...], what: str) -> dict[str, Any]:
    """The fields ``attrs`` declare, read and validated from ``elem``."""
    out: dict[str, Any] = {}
    for attr in attrs:
        text = _text_attr(elem, attr.xml, attr.required)
        if attr.kind == "time":
            text = _time(text, what)
        out[attr.field] = tuple(text.split()) if attr.kind == "words" else text
    return out


def _write_attrs(value: Any, attrs: tuple[XMLAttr, ...]) -> dict[str, str]:
    """The attributes ``attrs`` declare, from ``value``'s fields."""
    out: dict[str, str] = {}
    for attr in attrs:
        field = getattr(value, attr.field)
        text = " ".join(sorted(field) if isinstance(field, frozenset) else field) \
            if attr.kind == "words" else field
        if text or not attr.omit_empty:
            out[attr.xml] = text
    return out


# ---------------------------------------------------------------------------------------------
# The migrated list, compactly but exactly: the first id in hex, then hex deltas.
# ---------------------------------------------------------------------------------------------


def encode_list(ids: Iterable[int]) -> str:
    out, previous = [], None
    for reg_id in ids:
        out.append(f"{reg_id:x}" if previous is None else f"{reg_id - previous:x}")
        previous = reg_id
    return " ".join(out)


def list_digest(ids: Iterable[int]) -> str:
    # Looked up at each call rather than once at import, so that tests reach the lookup: once
    # imported, a sys.modules lookup (~3 us, against ~350 us for this whole function on a
    # 370-register list).
    sha256 = _builtin_sha256()
    digest: str = sha256(" ".join(regs.format_id(i) for i in ids).encode()).hexdigest()
    return digest[:16]


def decode_list(text: str, count: int, digest: str) -> tuple[int, ...]:
    parts = text.split()
    if len(parts) != count:
        raise RecordError(f"cpreg-list has {len(parts)} entries, its count says {count}")
    ids: list[int] = []
    for part in parts:
        if not re.fullmatch(r"[0-9a-f]{1,16}", part):
            raise RecordError(f"cpreg-list entry {part[:20]!r} is not lower-case hex")
        value = int(part, 16)
        if ids:
            if value == 0:
                raise RecordError("cpreg-list is not strictly ascending")
            value += ids[-1]
        ids.append(value)
    for reg_id in ids:
        try:
            regs.parse_hex_id(regs.format_id(reg_id))
        except ValueError as exc:
            raise RecordError(f"cpreg-list: {exc}") from None
    if list_digest(ids) != digest:
        raise RecordError("cpreg-list digest does not match its content (altered or truncated)")
    return tuple(ids)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def find_record_elements(domain: Any) -> list[Any]:
    """Our elements among the domain's <metadata> children (more than one is an error)."""
    return [child for metadata in domain.findall("metadata") for child in metadata
            if isinstance(child.tag, str) and child.tag == _Q + "record"]


def _text_attr(elem: Any, name: str, required: bool = True) -> str:
    value: str | None = elem.get(name)
    if value is None:
        if required:
            raise RecordError(f"<{etree.QName(elem).localname}> lacks the attribute {name!r}")
        return ""
    if len(value) > MAX_TEXT or any(ord(c) < 0x20 for c in value):
        raise RecordError(f"<{etree.QName(elem).localname}> attribute {name!r} is not plain text")
    return value


def _uint_attr(elem: Any, name: str) -> int:
    text = _text_attr(elem, name)
    if not re.fullmatch(r"0x[0-9a-fA-F]{1,16}|[0-9]{1,20}", text):
        raise RecordError(f"{name}={text[:40]!r} is not a non-negative integer")
    value = int(text, 0)
    if value > regs.U64_MAX:
        raise RecordError(f"{name}={text!r} does not fit in 64 bits")
    return value


def _one(elem: Any, name: str, required: bool = True) -> Any:
    found = elem.findall(_Q + name)
    if len(found) > 1:
        raise RecordError(f"more than one <{name}> in the record")
    if not found:
        if required:
            raise RecordError(f"the record has no <{name}>")
        return None
    return found[0]


def time_text(epoch: float) -> str:
    """``epoch`` in the record's time format."""
    return time.strftime(TIME_FORMAT, time.gmtime(epoch))


def time_epoch(text: str) -> float | None:
    """The epoch of a time in the record's format; None if it is not one."""
    try:
        return float(calendar.timegm(time.strptime(text, TIME_FORMAT)))
    except (ValueError, OverflowError):
        return None


def _time(text: str, what: str) -> str:
    if not _TIME_RE.fullmatch(text):
        raise RecordError(f"{what} time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return text


def _named_values(elem: Any, check_name: Any, unknown: list[str] | None = None
                  ) -> dict[str, int]:
    """The <reg name value> children; a name ``check_name`` refuses is an error, or, with
    ``unknown``, a name of a newer catalogue: collected there and left out."""
    out: dict[str, int] = {}
    for reg in elem.findall(_Q + "reg"):
        name = _text_attr(reg, "name")
        value = _uint_attr(reg, "value")
        if name in out or (unknown is not None and name in unknown):
            raise RecordError(f"register {name} appears twice")
        try:
            check_name(name)
        except (ValueError, KeyError) as exc:
            if unknown is None or not _NAME_RE.fullmatch(name):
                raise RecordError(f"register {name[:40]!r}: {exc}") from None
            unknown.append(name)
            continue
        out[name] = value
    return out


def _features(text: str, unknown: list[str]) -> frozenset[str]:
    """The vCPU feature set; a feature of a newer catalogue goes to ``unknown`` (as
    "feature <name>") and is left out."""
    try:
        return parse_feature_key(text)
    except ProfileError as exc:
        parts = text.split("+")
        known = [p for p in parts if p in KEY_ORDER]
        newer = [p for p in parts if p not in KEY_ORDER]
        if not newer or not all(re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", p) for p in newer):
            raise RecordError(str(exc)) from None
        unknown.extend(f"feature {p}" for p in newer)
        return frozenset(known)


SVE_MAX_BITS = 2048  # the architecture's largest vector length


def _sve_lengths(text: str) -> tuple[int, ...]:
    """"128 256 512": ascending multiples of 128 up to 2048 bits."""
    try:
        lengths = tuple(int(v) for v in text.split())
    except ValueError:
        raise RecordError(f"sve lengths {text[:40]!r} are not numbers") from None
    if not lengths or any(v <= 0 or v % 128 or v > SVE_MAX_BITS for v in lengths) \
            or list(lengths) != sorted(set(lengths)):
        raise RecordError(f"sve lengths {text[:40]!r} are not ascending multiples of 128 up "
                          f"to {SVE_MAX_BITS}")
    return lengths


def parse_record(elem: Any) -> GuestRecord:
    """Validate one <psci:record> element and return its content."""
    version = elem.get("version")
    if version != VERSION:
        if version is not None and re.fullmatch(r"[1-9][0-9]{0,3}", version):
            raise RecordVersionUnknown(f"record version {version} is newer than this psci-hook "
                                       f"reads (version {VERSION})")
        raise RecordError(f"record version {version!r} is not {VERSION!r}")
    status = _text_attr(elem, "status", required=False)
    origin = Origin(**_read_attrs(_one(elem, "origin"), ORIGIN, "origin"))
    if not origin.event:
        raise RecordError("the origin event is empty")
    vcpu = _one(elem, "vcpu")
    unknown: list[str] = []
    features = _features(_text_attr(vcpu, "features"), unknown)

    sve_elem = _one(elem, "sve", required=False)
    sve_lengths = None if sve_elem is None else _sve_lengths(_text_attr(sve_elem, "lengths"))

    firmware = _named_values(_one(elem, "firmware"), regs.firmware_id_from_name, unknown)
    fw_by_id = {regs.firmware_id_from_name(n): v for n, v in firmware.items()}

    cpreg_list = None
    list_elem = _one(elem, "cpreg-list", required=False)
    if list_elem is not None:
        count = _uint_attr(list_elem, "count")
        if count > MAX_LIST:
            raise RecordError(f"cpreg-list count {count} is implausible (max {MAX_LIST})")
        cpreg_list = decode_list(list_elem.text or "", count, _text_attr(list_elem, "digest"))
        listed_fw = {i for i in cpreg_list if regs.is_firmware(i)}
        # A register only a newer catalogue names is in the list without a known name.
        if not set(fw_by_id) <= listed_fw or len(listed_fw - set(fw_by_id)) > len(unknown):
            raise RecordError("cpreg-list and <firmware> disagree on the firmware registers")

    groups: dict[str, dict[str, int] | None] = {}
    for group in VALUE_GROUPS:
        group_elem = _one(elem, group.xml, required=False)
        groups[group.field] = None if group_elem is None else \
            _named_values(group_elem, group.check, unknown)

    override = None
    override_elem = _one(elem, "override", required=False)
    if override_elem is not None:
        fields = _read_attrs(override_elem, OVERRIDE, "override")
        codes = frozenset(split_list(" ".join(fields["codes"])))
        strange = sorted(c for c in codes if c not in CODES)
        if not codes or strange:
            raise RecordError(f"override names unknown codes: {' '.join(strange) or '(none)'}")
        override = Override(codes, fields["reason"])

    history: list[HistoryEntry] = []
    history_elem = _one(elem, "history", required=False)
    if history_elem is not None:
        # Ops, verdicts and codes of another release are kept as they are: history is read by
        # people and `audit`, never by a decision.
        history = [HistoryEntry(**_read_attrs(check, CHECK, "history"))
                   for check in history_elem.findall(_Q + "check")]

    state = GuestState(registers=dict(sorted(fw_by_id.items())), features=features,
                       cpreg_list=cpreg_list, sve_lengths=sve_lengths, **groups)
    return GuestRecord(state, origin, tuple(history), override, status, tuple(unknown))


def read_record(domain: Any) -> GuestRecord | None:
    """The record of a parsed <domain>, None if it has none; RecordError if it is bad."""
    found = find_record_elements(domain)
    if len(found) > 1:
        raise RecordError(f"the domain carries {len(found)} psci-hook records; expected one")
    return parse_record(found[0]) if found else None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _sub(parent: Any, name: str, attrs: Mapping[str, str] | None = None) -> Any:
    return etree.SubElement(parent, _Q + name, attrs or {})


def _values(parent: Any, name: str, values: Mapping[str, int]) -> None:
    group = _sub(parent, name)
    for key, value in values.items():
        _sub(group, "reg", {"name": key, "value": f"0x{value:x}"})


def record_element(record: GuestRecord) -> Any:
    attributes = {"version": VERSION}
    if record.status:
        attributes["status"] = record.status
    root = etree.Element(_Q + "record", attributes, nsmap={PREFIX: NAMESPACE})
    _sub(root, "origin", _write_attrs(record.origin, ORIGIN))
    state = record.state
    _sub(root, "vcpu", {"features": feature_key(state.features)})
    if state.sve_lengths:
        _sub(root, "sve", {"lengths": " ".join(map(str, state.sve_lengths))})
    _values(root, "firmware",
            {regs.firmware_name(i): v for i, v in sorted(state.registers.items())})
    if state.cpreg_list is not None:
        lst = _sub(root, "cpreg-list", {"count": str(len(state.cpreg_list)),
                                        "digest": list_digest(state.cpreg_list)})
        lst.text = encode_list(state.cpreg_list)
    for group in VALUE_GROUPS:
        values: Mapping[str, int] | None = getattr(state, group.field)
        if values is not None:
            _values(root, group.xml, dict(sorted(values.items(),
                                                 key=lambda kv: group.order(kv[0]))))
    if record.override is not None:
        _sub(root, "override", _write_attrs(record.override, OVERRIDE))
    if record.history:
        history = _sub(root, "history")
        for entry in record.history:
            _sub(history, "check", _write_attrs(entry, CHECK))
    return root


def record_xml(record: GuestRecord, indent: str, step: str = "  ") -> str:
    """The record as XML text, indented to sit at ``indent`` (ASCII only, for byte splicing)."""
    root = record_element(record)
    _indent(root, indent, step)
    text = str(etree.tostring(root, encoding=str))
    return text.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _indent(elem: Any, indent: str, step: str) -> None:
    children = list(elem)
    if children:
        elem.text = "\n" + indent + step
        for child in children:
            _indent(child, indent + step, step)
            child.tail = "\n" + indent + step
        children[-1].tail = "\n" + indent

"""The operator's policy: what the hook does with a decision, read from an INI file.

The file is /etc/psci-hook/psci-hook.conf (or the file named by $PSCI_HOOK_CONFIG). It is
optional: without it every setting takes its default.

A mistake in the file never switches the protection off. The file is read line by line and
every setting that can be read is used; a line or value that cannot (an unknown setting, a value
outside its possible values, a half-written line, an unreadable file) is a *problem*: the setting
keeps its documented default, and the problem is reported (one line each, naming the file, the
line and, for a misspelt name or value, what was probably meant). The hook logs the problems with
every decision; ``psci-hook config --check`` lists them before the file is used.

Syntax: ``[section]`` headers, ``key = value`` (or ``key: value``) lines, full-line comments
starting with ``#`` or ``;``, and inline comments after whitespace (``mode = warn  # why``).
Names are case-insensitive. A section may appear more than once (its settings add up). Lists
(``domain_types``) take commas, spaces or both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple

from psci_hook.environment import JOURNAL_SOCKET, SYSLOG_SOCKET
from psci_hook.vocab import QemuGeneration


class PolicyError(ValueError):
    """An unusable configuration; the message is one line naming the file and setting."""


MODES = ("enforce", "warn")
ALLOW_OR_VETO = ("allow", "veto")
GENERATIONS = ("auto", *QemuGeneration)  # auto: the destination's own
LOG_TARGETS = ("auto", "journal", "syslog", "none")
# libvirt's domain types (<domain type>: src/conf/domain_conf.c, virDomainVirt). Its QEMU
# driver runs kvm, qemu and hvf; "test" is its test driver's, for `record` on test:///default.
DOMAIN_TYPES = ("kvm", "qemu", "hvf", "test", "kqemu", "xen", "lxc", "uml", "openvz", "vmware",
                "hyperv", "vbox", "phyp", "parallels", "bhyve", "vz")
_TRUE = ("yes", "true", "on", "1")
_FALSE = ("no", "false", "off", "0")
MAX_FILE = 1 << 20  # a configuration is a few kilobytes; the rest of a larger file is ignored


class Policy(NamedTuple):
    """The operator's settings; every field has its default here."""

    # enforce: veto what would fail; warn: log what would be vetoed, and allow.
    mode: str = "enforce"
    # A guest whose domain XML carries no psci-hook record: allow (and say so) or veto.
    unrecorded: str = "allow"
    # On allow, print the domain XML with the updated record (taints the domain hook-script).
    annotate: bool = True
    # A bug, an unreadable host profile or a timeout: allow (fail open) or veto (fail closed).
    on_error: str = "allow"
    # Seconds the whole hook run may take before on_error applies.
    timeout: float = 10.0
    # libvirt domain types the hook acts on (<domain type=...>); add "qemu" for TCG tests.
    domain_types: frozenset[str] = frozenset({"kvm"})
    # A host profile file to use instead of the boot-time cache and the probe.
    host_profile: Path | None = None
    # The destination QEMU's generation; auto: from the host profile, else legacy.
    qemu_generation: str = "auto"
    # Veto a silently dropped WORKAROUND register whose value is above NOT_AVAIL.
    veto_dropped_workarounds: bool = True
    # Rehearse the guest's values on this host's KVM (aarch64 with /dev/kvm only).
    rehearse: bool = True
    # Whether a domain may carry a per-domain override in its record.
    allow_domain_override: bool = True
    # The history entries kept in a guest record.
    history_limit: int = 8
    # Where decision events go: auto (journal if present, else syslog), journal, syslog, none.
    log_target: str = "auto"
    journal_socket: Path = JOURNAL_SOCKET
    syslog_socket: Path = SYSLOG_SOCKET

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"

    def summary(self) -> dict[str, object]:
        """The settings that shape a decision, for the audit event."""
        return {
            "mode": self.mode,
            "unrecorded": self.unrecorded,
            "annotate": self.annotate,
            "on_error": self.on_error,
        }


class Problem(NamedTuple):
    """One thing wrong in a configuration file; ``line`` is 1-based, 0 for the whole file."""

    line: int
    message: str

    def text(self, origin: str) -> str:
        return f"{origin}:{self.line}: {self.message}" if self.line else \
            f"{origin}: {self.message}"


class PolicyReading(NamedTuple):
    """A configuration as read: the policy it gives and what was wrong with it."""

    policy: Policy
    origin: str
    problems: tuple[Problem, ...] = ()
    # Where each setting came from: field -> line number (absent: the default).
    lines: Mapping[str, int] = {}

    @property
    def messages(self) -> list[str]:
        return [p.text(self.origin) for p in self.problems]

    def summary_line(self) -> str:
        """The problems in one line: the first in full, then how many more."""
        if not self.problems:
            return ""
        more = len(self.problems) - 1
        tail = f" (+{more} more)" if more else ""
        return (f"{self.messages[0]}{tail}; other settings applied, defaults for the rest "
                f"(psci-hook config --check)")


class _Value(NamedTuple):
    """A value parsed, or the reason it could not be."""

    value: object
    problem: str = ""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    import difflib  # only when something is misspelt: the hook's usual run never pays for it

    close = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Choice(NamedTuple):
    """A setting with a fixed set of values, written in any case. A class rather than a closure:
    ``parse`` is then code that runs when a value is read, which mutation testing can reach (a
    closure's body would be built once, when SETTINGS is, benchmarks/mutation.py)."""

    allowed: tuple[str, ...]

    def parse(self, text: str) -> _Value:
        if text.lower() in self.allowed:
            return _Value(text.lower())
        return _Value(None, f"{text!r} is not one of {', '.join(self.allowed)}"
                      f"{did_you_mean(text, self.allowed)}")


def _boolean(text: str) -> _Value:
    lowered = text.lower()
    if lowered in _TRUE or lowered in _FALSE:
        return _Value(lowered in _TRUE)
    return _Value(None, f"{text!r} is not yes or no{did_you_mean(text, ('yes', 'no'))}")


class _Number(NamedTuple):
    """A number from ``low`` to ``high``: seconds (a float), or a whole number (``integer``)."""

    low: float
    high: float
    integer: bool = False

    def parse(self, text: str) -> _Value:
        try:
            parsed = int(text) if self.integer else float(text)
        except ValueError:
            parsed = math.nan
        if not self.low <= parsed <= self.high:
            what = "a whole number" if self.integer else "a number of seconds (no unit)"
            return _Value(None, f"{text!r} is not {what} from {self.low:g} to {self.high:g}")
        return _Value(parsed)


def split_list(text: str) -> list[str]:
    """A list setting's items: commas, spaces or both separate them (``kvm, qemu``,
    ``kvm qemu``); the same syntax as a record's override codes."""
    return [item for item in re.split(r"[\s,]+", text) if item]


def _domain_types(text: str) -> _Value:
    items = [t.lower() for t in split_list(text)]
    unknown = [t for t in items if t not in DOMAIN_TYPES]
    known = frozenset(t for t in items if t in DOMAIN_TYPES)
    if not unknown:
        return _Value(known) if known else _Value(None, "is empty")
    hints = "".join(did_you_mean(t, DOMAIN_TYPES) for t in unknown)
    message = (f"{', '.join(map(repr, unknown))}: not a libvirt domain type (kvm, qemu, hvf "
               f"for QEMU){hints}")
    if known:  # the types it could read are used, the mistake is still a problem
        return _Value(known, message + f"; acting on {', '.join(sorted(known))}")
    return _Value(None, message)


def _absolute_path(text: str) -> _Value:
    if not text.startswith("/"):
        return _Value(None, f"{text!r} is not an absolute path")
    return _Value(Path(text))


class Setting(NamedTuple):
    """One line of the configuration file: where it goes, its default as written, its values."""

    section: str
    key: str
    field: str  # the Policy field it sets
    default: str  # as the shipped file shows it ("" for none)
    values: str  # its possible values, for the README and `psci-hook config`
    parse: Callable[[str], _Value]


SETTINGS: tuple[Setting, ...] = (
    Setting("hook", "mode", "mode", "enforce", "enforce, warn", _Choice(MODES).parse),
    Setting("hook", "unrecorded", "unrecorded", "allow", "allow, veto",
            _Choice(ALLOW_OR_VETO).parse),
    Setting("hook", "annotate", "annotate", "yes", "yes, no", _boolean),
    Setting("hook", "on_error", "on_error", "allow", "allow, veto",
            _Choice(ALLOW_OR_VETO).parse),
    Setting("hook", "timeout", "timeout", "10", "seconds, 0.1 to 300", _Number(0.1, 300).parse),
    Setting("hook", "domain_types", "domain_types", "kvm",
            "kvm, qemu, hvf (a list: commas or spaces)", _domain_types),
    Setting("hook", "veto_dropped_workarounds", "veto_dropped_workarounds", "yes", "yes, no",
            _boolean),
    Setting("hook", "rehearse", "rehearse", "yes", "yes, no", _boolean),
    Setting("hook", "allow_domain_override", "allow_domain_override", "yes", "yes, no",
            _boolean),
    Setting("hook", "history_limit", "history_limit", "8", "0 to 64",
            _Number(0, 64, True).parse),
    Setting("host", "profile", "host_profile", "", "an absolute path", _absolute_path),
    Setting("host", "qemu_generation", "qemu_generation", "auto", "auto, legacy, tolerant",
            _Choice(GENERATIONS).parse),
    Setting("log", "target", "log_target", "auto", "auto, journal, syslog, none",
            _Choice(LOG_TARGETS).parse),
    Setting("log", "journal_socket", "journal_socket", str(JOURNAL_SOCKET),
            "an absolute path", _absolute_path),
    Setting("log", "syslog_socket", "syslog_socket", str(SYSLOG_SOCKET), "an absolute path",
            _absolute_path),
)
SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))
_BY_KEY = {s.key: s for s in SETTINGS}
_HEADER = re.compile(r"\[\s*([^\]]*?)\s*\]")
_ASSIGNMENT = re.compile(r"([A-Za-z0-9_.-]+)\s*[=:]\s*(.*)")
_INLINE_COMMENT = re.compile(r"\s+[#;].*$")


def read_policy(path: Path) -> PolicyReading:
    """The policy in ``path``, leniently: defaults when the file does not exist; an unreadable
    file gives the defaults and one problem."""
    origin = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE)
    except FileNotFoundError:
        return PolicyReading(Policy(), origin)
    except OSError as exc:
        return PolicyReading(Policy(), origin, (Problem(0, f"cannot read: "
                                                        f"{exc.strerror or exc}; every "
                                                        f"setting takes its default"),))
    return parse_policy_text(data, origin)


def parse_policy_text(data: bytes | str, origin: str = "configuration") -> PolicyReading:
    """Every line that can be read sets its setting; every other is a problem."""
    problems: list[Problem] = []
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    section: str | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if "\ufffd" in line or "\x00" in line:
            problems.append(Problem(number, "not UTF-8 text, or NUL bytes: line ignored"))
            continue
        header = _HEADER.fullmatch(line)
        if header:
            section = header.group(1).lower()
            problems += _section_problems(number, header.group(1), section)
            continue
        problems += _assign(number, _INLINE_COMMENT.sub("", line), section, values, lines)
    return PolicyReading(Policy()._replace(**values), origin, tuple(problems), lines)


def _section_problems(number: int, written: str, section: str) -> list[Problem]:
    """A section header: an unknown section is a problem (its settings still apply)."""
    if section in SECTIONS:
        return []
    name = written if written.isprintable() else repr(written)
    return [Problem(number, f"unknown section [{name}]{did_you_mean(section, SECTIONS)}; its "
                            f"settings are read by their names")]


def _assign(number: int, line: str, section: str | None, values: dict[str, Any],
            lines: dict[str, int]) -> list[Problem]:
    """One ``key = value`` line: sets ``values[field]`` (and its line) when the value can be
    read; returns its problems."""
    assignment = _ASSIGNMENT.fullmatch(line)
    if not assignment:
        what = "a section header cut short" if line.startswith("[") else "not 'key = value'"
        return [Problem(number, f"{what}: {_clip(line)!r} ignored")]
    key, value = assignment.group(1).lower(), assignment.group(2).strip()
    setting = _BY_KEY.get(key)
    if setting is None:
        return [Problem(number, f"unknown setting {key!r}{did_you_mean(key, _BY_KEY)}; "
                                "ignored")]
    problems = []
    if section != setting.section:
        where = f"[{section}]" if section else "no section"
        problems.append(Problem(number, f"{key} belongs in [{setting.section}], not "
                                f"{where}; applied as [{setting.section}] {key}"))
    if setting.field in lines:
        problems.append(Problem(number, f"{key} is set twice (line {lines[setting.field]} "
                                f"and here); the last valid value applies"))
    if not value:  # "profile =" as shipped: the default
        values.pop(setting.field, None)
        lines[setting.field] = number
        return problems
    parsed = setting.parse(value)
    if parsed.problem:
        fallback = "" if parsed.value is not None else \
            f"; the default ({setting.default or 'none'}) applies"
        problems.append(Problem(number, f"{key} {parsed.problem}{fallback}"))
    if parsed.value is not None:
        values[setting.field] = parsed.value
        lines[setting.field] = number
    return problems


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def load_policy(path: Path) -> Policy:
    """The policy in ``path``, strictly: the first problem is raised as a PolicyError."""
    reading = read_policy(path)
    if reading.problems:
        raise PolicyError(reading.messages[0])
    return reading.policy


def parse_policy(text: str, origin: str = "configuration") -> Policy:
    """The policy in ``text``, strictly (see ``load_policy``)."""
    reading = parse_policy_text(text, origin)
    if reading.problems:
        raise PolicyError(reading.messages[0])
    return reading.policy

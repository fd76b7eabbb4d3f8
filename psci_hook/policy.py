"""The operator's policy: what the hook does with a decision, read from an INI file.

The file is /etc/psci-hook/psci-hook.conf (or the file named by $PSCI_HOOK_CONFIG). It is
optional: without it every setting takes its default. A file that exists but is unreadable or
invalid is an error, reported in one line naming the file, the section and the key.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from psci_hook.errors import first_line


class PolicyError(ValueError):
    """An unusable configuration; the message is one line naming the file and setting."""


MODES = ("enforce", "warn")
ALLOW_OR_VETO = ("allow", "veto")
GENERATIONS = ("auto", "legacy", "tolerant")
LOG_TARGETS = ("auto", "journal", "syslog", "none")


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
    journal_socket: Path = Path("/run/systemd/journal/socket")
    syslog_socket: Path = Path("/dev/log")

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


_SECTIONS: Mapping[str, frozenset[str]] = {
    "hook": frozenset({
        "mode", "unrecorded", "annotate", "on_error", "timeout", "domain_types",
        "veto_dropped_workarounds", "allow_domain_override", "history_limit", "rehearse",
    }),
    "host": frozenset({"profile", "qemu_generation"}),
    "log": frozenset({"target", "journal_socket", "syslog_socket"}),
}


def load_policy(path: Path) -> Policy:
    """The policy in ``path``; defaults when the file does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Policy()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not UTF-8 text") from None
    return parse_policy(text, str(path))


def parse_policy(text: str, origin: str = "configuration") -> Policy:
    parser = configparser.ConfigParser(interpolation=None, empty_lines_in_values=False)
    try:
        parser.read_string(text, source=origin)
    except configparser.Error as exc:
        raise PolicyError(f"{origin}: {first_line(exc)}") from None
    for section in parser.sections():
        known = _SECTIONS.get(section)
        if known is None:
            raise PolicyError(f"{origin}: unknown section [{section}]")
        for key in parser[section]:
            if key not in known:
                raise PolicyError(f"{origin}: [{section}] unknown setting {key!r}")

    def get(section: str, key: str) -> str | None:
        if not parser.has_option(section, key):
            return None
        value = parser.get(section, key).strip()
        return value or None

    def choice(section: str, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = get(section, key)
        if value is None:
            return default
        if value not in allowed:
            raise PolicyError(
                f"{origin}: [{section}] {key} = {value!r}; expected one of {', '.join(allowed)}"
            )
        return value

    def boolean(section: str, key: str, default: bool) -> bool:
        if get(section, key) is None:
            return default
        try:
            return parser.getboolean(section, key)
        except ValueError:
            raise PolicyError(
                f"{origin}: [{section}] {key} = {get(section, key)!r}; expected yes or no"
            ) from None

    def number(section: str, key: str, default: float, low: float, high: float) -> float:
        value = get(section, key)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            parsed = float("nan")
        if not low <= parsed <= high:
            raise PolicyError(
                f"{origin}: [{section}] {key} = {value!r}; expected a number from {low:g} "
                f"to {high:g}"
            )
        return parsed

    defaults = Policy()
    types_text = get("hook", "domain_types")
    domain_types = defaults.domain_types
    if types_text is not None:
        domain_types = frozenset(t.strip() for t in types_text.split(",") if t.strip())
        if not domain_types:
            raise PolicyError(f"{origin}: [hook] domain_types is empty")
    profile = get("host", "profile")
    return Policy(
        mode=choice("hook", "mode", MODES, defaults.mode),
        unrecorded=choice("hook", "unrecorded", ALLOW_OR_VETO, defaults.unrecorded),
        annotate=boolean("hook", "annotate", defaults.annotate),
        on_error=choice("hook", "on_error", ALLOW_OR_VETO, defaults.on_error),
        timeout=number("hook", "timeout", defaults.timeout, 0.1, 300),
        domain_types=domain_types,
        host_profile=Path(profile) if profile else None,
        qemu_generation=choice("host", "qemu_generation", GENERATIONS, "auto"),
        veto_dropped_workarounds=boolean(
            "hook", "veto_dropped_workarounds", defaults.veto_dropped_workarounds
        ),
        rehearse=boolean("hook", "rehearse", defaults.rehearse),
        allow_domain_override=boolean(
            "hook", "allow_domain_override", defaults.allow_domain_override
        ),
        history_limit=int(number("hook", "history_limit", defaults.history_limit, 0, 64)),
        log_target=choice("log", "target", LOG_TARGETS, defaults.log_target),
        journal_socket=Path(get("log", "journal_socket") or defaults.journal_socket),
        syslog_socket=Path(get("log", "syslog_socket") or defaults.syslog_socket),
    )

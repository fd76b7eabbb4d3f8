"""The one module that talks to libvirt (libvirt-python, imported lazily, never by the hook).

`refresh`, `record` and `watch` use it; the hook must not (libvirt is waiting for the hook: a
libvirt call from inside it deadlocks). Everything libvirt-specific stays here: the connection
with reconnect and backoff, domain listing and lookup, the live and persistent XML, the guest
record written with virDomainSetMetadata, the default event loop and lifecycle events. Errors
reach the callers as LibvirtUnavailable (no libvirt-python, daemon unreachable or gone) or
LibvirtCallFailed (one call failed), each with a one-line message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable

from lxml import etree

from psci_hook.errors import first_line
from psci_hook.record import NAMESPACE, PREFIX, GuestRecord, record_element
from psci_hook.recorder import MIGRATING

# Lifecycle events by name (virDomainEventType), and the details of the ones the watcher uses.
EVENTS = {0: "defined", 1: "undefined", 2: "started", 3: "suspended", 4: "resumed",
          5: "stopped", 6: "shutdown", 7: "pmsuspended", 8: "crashed"}
STARTED, DEFINED, RESUMED, STOPPED = "started", "defined", "resumed", "stopped"
STARTED_DETAILS = {0: "booted", 1: "migrated", 2: "restored", 3: "from-snapshot", 4: "wakeup"}
RESUMED_DETAILS = {0: "unpaused", 1: "migrated", 2: "from-snapshot", 3: "postcopy"}
# virDomainState RUNNING (1) and its reasons (virDomainRunningReason), in the recorder's words.
_RUNNING = 1
RUNNING_REASONS = {1: "booted", 2: "migrated", 3: "restored", 4: "from-snapshot", 5: "unpaused",
                   6: "migration-canceled", 7: "save-canceled", 8: "wakeup", 9: "crashed",
                   10: "postcopy", 11: "postcopy-failed"}
# PAUSED (3) for a migration (virDomainPausedReason MIGRATION, 2): an incoming one not yet ended.
_PAUSED, _PAUSED_MIGRATION = 3, 2
# Where the QEMU driver of a system daemon keeps each running domain's QEMU pid
# (qemu_process.c: qemuProcessLaunch writes <stateDir>/<name>.pid; stateDir is /run/libvirt/qemu).
QEMU_PID_DIR = Path("/run/libvirt/qemu")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")


class LibvirtUnavailable(Exception):
    """libvirt-python is missing, or the daemon cannot be reached or went away (one line)."""


class LibvirtCallFailed(Exception):
    """One libvirt call failed while the connection is fine (one line)."""


_module: Any = None


def load() -> Any:
    """The libvirt module, imported on first use, with libvirt's own stderr printing off."""
    global _module
    if _module is None:
        try:
            import libvirt
        except ImportError as exc:
            raise LibvirtUnavailable(
                f"libvirt-python is not installed (python3-libvirt): {exc}") from None
        # By default libvirt prints every error to stderr as well; ours are reported once.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        _module = libvirt
    return _module


def version_text(version: int) -> str:
    """libvirt's packed version number (major * 1000000 + minor * 1000 + micro) as X.Y.Z."""
    return f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}"


def metadata_text(record: GuestRecord) -> str:
    """The record as virDomainSetMetadata takes it: without a namespace (libvirt puts the
    element and all its descendants into ``uri`` with prefix ``key`` itself, and refuses an
    element that already declares that prefix)."""
    root = record_element(record)
    for elem in root.iter():
        if isinstance(elem.tag, str):
            elem.tag = etree.QName(elem).localname
    etree.cleanup_namespaces(root)
    text: str = etree.tostring(root, encoding="unicode")
    return text


@dataclasses.dataclass(frozen=True)
class Lifecycle:
    """One lifecycle event, as plain values (taken in the event loop thread, no libvirt call)."""

    uuid: str
    name: str
    event: str  # defined, started, resumed, stopped ... (EVENTS)
    detail: str  # started: booted, migrated, restored ...; resumed: unpaused, migrated ...


@dataclasses.dataclass
class Backoff:
    """Delays between reconnection attempts: doubling from ``initial`` up to ``maximum``."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    _next: float = 0.0

    def delay(self) -> float:
        current = self._next or self.initial
        self._next = min(current * self.factor, self.maximum)
        return current

    def reset(self) -> None:
        self._next = 0.0


# ---------------------------------------------------------------------------------------------
# The event loop (one per process, before the first connection that wants events)
# ---------------------------------------------------------------------------------------------


class EventLoop:
    """libvirt's default event loop, run by a daemon thread until stop().

    The implementation is registered once per process (before the first connection that
    wants events); a timer wakes the loop regularly so that stop() is noticed.
    """

    WAKE_MS = 250
    _registered = False
    _lock = threading.Lock()

    def __init__(self) -> None:
        self._lv = load()
        self._stop = threading.Event()
        with EventLoop._lock:
            if not EventLoop._registered:
                self._lv.virEventRegisterDefaultImpl()
                self._lv.virEventAddTimeout(self.WAKE_MS, lambda _timer, _opaque: None, None)
                EventLoop._registered = True
        self._thread = threading.Thread(target=self._run, name="libvirt-event-loop",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._lv.virEventRunDefaultImpl()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


# ---------------------------------------------------------------------------------------------
# A connection
# ---------------------------------------------------------------------------------------------


class Client:
    """One open connection to a libvirt daemon (``uri`` None: libvirt's default URI)."""

    def __init__(self, conn: Any, uri: str | None) -> None:
        self._lv = load()
        self.conn = conn
        self.uri = uri
        self._callbacks: list[int] = []
        self._close_registered = False

    @classmethod
    def open(cls, uri: str | None = None) -> Client:
        lv = load()
        try:
            conn = lv.open(uri)
        except lv.libvirtError as exc:
            raise LibvirtUnavailable(
                f"cannot connect to libvirt ({uri or 'default URI'}): {first_line(exc)}"
            ) from None
        if conn is None:  # very old bindings returned None instead of raising
            raise LibvirtUnavailable(f"cannot connect to libvirt ({uri or 'default URI'})")
        return cls(conn, uri)

    @classmethod
    def open_retrying(cls, uri: str | None, stop: threading.Event, backoff: Backoff,
                      on_failure: Callable[[str, float], None]) -> Client | None:
        """Connect, retrying with ``backoff`` until it works or ``stop`` is set (then None).
        ``on_failure(message, delay)`` is told of every failed attempt."""
        while not stop.is_set():
            try:
                client = cls.open(uri)
            except LibvirtUnavailable as exc:
                delay = backoff.delay()
                on_failure(str(exc), delay)
                stop.wait(delay)
                continue
            backoff.reset()
            return client
        return None

    # -- calls ---------------------------------------------------------------------------------

    def _failure(self, what: str, exc: BaseException) -> Exception:
        message = f"{what}: {first_line(exc)}"
        if not self.alive():
            return LibvirtUnavailable(f"lost the libvirt connection ({message})")
        return LibvirtCallFailed(message)

    def _call(self, what: str, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return func(*args)
        except self._lv.libvirtError as exc:
            raise self._failure(what, exc) from None

    def alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except self._lv.libvirtError:
            return False

    def hostname(self) -> str:
        return str(self._call("hostname", self.conn.getHostname))

    def driver(self) -> str:
        """The hypervisor driver's name: "QEMU" for the QEMU driver, "TEST" for test:///."""
        return str(self._call("driver type", self.conn.getType))

    def capabilities(self) -> str:
        return str(self._call("capabilities", self.conn.getCapabilities))

    def hypervisor_version(self) -> str:
        """The hypervisor's (QEMU's) version as X.Y.Z."""
        return version_text(int(self._call("hypervisor version", self.conn.getVersion)))

    def running(self) -> list[Any]:
        """The running (active) domains."""
        flags = self._lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return list(self._call("list domains", self.conn.listAllDomains, flags))

    def lookup(self, key: str) -> Any:
        """A domain by name or UUID; LibvirtCallFailed("no domain ...") if there is none."""
        lookups = [self.conn.lookupByName]
        if _UUID_RE.fullmatch(key):
            lookups.append(self.conn.lookupByUUIDString)
        for lookup in lookups:
            try:
                return lookup(key)
            except self._lv.libvirtError as exc:
                if exc.get_error_code() != self._lv.VIR_ERR_NO_DOMAIN:
                    raise self._failure(f"look up {key}", exc) from None
        raise LibvirtCallFailed(f"no domain named {key!r}")

    # -- one domain ----------------------------------------------------------------------------

    def name(self, dom: Any) -> str:
        return str(dom.name())

    def is_active(self, dom: Any) -> bool:
        return bool(self._call(f"{dom.name()}: state", dom.isActive))

    def running_reason(self, dom: Any) -> str:
        """libvirt's reason for a running domain's state ("booted", "migrated", ...);
        MIGRATING while paused for a migration; "" otherwise (a paused domain's reason says why
        it paused, not how it started)."""
        state, reason = self._call(f"{dom.name()}: state", dom.state)
        if int(state) == _PAUSED and int(reason) == _PAUSED_MIGRATION:
            return MIGRATING
        return RUNNING_REASONS.get(int(reason), "") if int(state) == _RUNNING else ""

    def is_persistent(self, dom: Any) -> bool:
        return bool(self._call(f"{dom.name()}: persistence", dom.isPersistent))

    def live_xml(self, dom: Any) -> bytes:
        """The running definition (without secrets)."""
        text = self._call(f"{dom.name()}: live XML", dom.XMLDesc, 0)
        return str(text).encode("utf-8")

    def persistent_xml(self, dom: Any) -> bytes:
        """The persistent (inactive) definition of a persistent domain."""
        text = self._call(f"{dom.name()}: persistent XML", dom.XMLDesc,
                          self._lv.VIR_DOMAIN_XML_INACTIVE)
        return str(text).encode("utf-8")

    def set_record(self, dom: Any, record: GuestRecord, live: bool, config: bool) -> None:
        """Write ``record`` as our <metadata> element into the live and/or persistent
        definition (libvirt replaces our namespace's element: there is one per namespace)."""
        flags = ((self._lv.VIR_DOMAIN_AFFECT_LIVE if live else 0)
                 | (self._lv.VIR_DOMAIN_AFFECT_CONFIG if config else 0))
        if not flags:
            return
        self._call(f"{dom.name()}: set metadata", dom.setMetadata,
                   self._lv.VIR_DOMAIN_METADATA_ELEMENT, metadata_text(record), PREFIX,
                   NAMESPACE, flags)

    # -- events --------------------------------------------------------------------------------

    def on_lifecycle(self, handler: Callable[[Lifecycle], None]) -> None:
        """Call ``handler`` (in the event loop thread) for every domain lifecycle event."""
        lv = self._lv

        def callback(_conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
            name = EVENTS.get(event, str(event))
            details = {STARTED: STARTED_DETAILS, RESUMED: RESUMED_DETAILS}.get(name, {})
            handler(Lifecycle(dom.UUIDString(), dom.name(), name,
                              details.get(detail, str(detail))))

        callback_id = self._call("register lifecycle events", self.conn.domainEventRegisterAny,
                                 None, lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE, callback, None)
        self._callbacks.append(int(callback_id))

    def on_close(self, handler: Callable[[str], None]) -> None:
        """Call ``handler(reason)`` when the connection closes (daemon gone, keepalive lost)."""
        lv = self._lv
        reasons = {lv.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
                   lv.VIR_CONNECT_CLOSE_REASON_EOF: "end of file",
                   lv.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
                   lv.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by client"}

        def callback(_conn: Any, reason: int, _opaque: Any) -> None:
            handler(reasons.get(reason, f"reason {reason}"))

        self._call("register close callback", self.conn.registerCloseCallback, callback, None)
        self._close_registered = True

    def keepalive(self, interval: int = 5, count: int = 3) -> None:
        """Detect a hung daemon: the connection closes after ``interval * count`` s unanswered."""
        self._call("keepalive", self.conn.setKeepAlive, interval, count)

    def close(self) -> None:
        """Deregister our callbacks and close; never raises (the daemon may be gone)."""
        for callback_id in self._callbacks:
            with contextlib.suppress(self._lv.libvirtError):
                self.conn.domainEventDeregisterAny(callback_id)
        self._callbacks.clear()
        if self._close_registered:
            with contextlib.suppress(self._lv.libvirtError):
                self.conn.unregisterCloseCallback()
            self._close_registered = False
        with contextlib.suppress(self._lv.libvirtError):
            self.conn.close()



def process_start(name: str, pid_dir: Path = QEMU_PID_DIR, proc: Path = Path("/proc")
                  ) -> float | None:
    """When the QEMU process of the running domain ``name`` started (epoch seconds), from its
    pid file and /proc; None where that cannot be read (another URI, no permission, gone)."""
    try:
        pid = int((pid_dir / f"{name}.pid").read_text().strip())
        stat = (proc / str(pid) / "stat").read_text()
        # Field 22, starttime, in clock ticks since boot; the command name (field 2) may hold
        # spaces and parentheses, so count from its closing parenthesis.
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot_time = next(int(line.split()[1]) for line in
                         (proc / "stat").read_text().splitlines() if line.startswith("btime "))
        return boot_time + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

"""``psci-hook watch``: the guest recorder service, on libvirt's event loop.

- STARTED_BOOTED (a new QEMU process cold-booted the guest here): record this host's values,
  replacing whatever record the definition carried.
- STARTED_RESTORED, and STARTED_MIGRATED once that migration has ended (DEFINED or RESUMED
  follows; STARTED_MIGRATED itself comes before any memory is copied): give the persistent
  definition the live record (the hook's annotation reaches the live one only) and, where the
  hook did not annotate, bring the live record to the guest's state on this host first.
- STARTED_FROM_SNAPSHOT (a snapshot revert loaded saved vCPU state in a new QEMU process, with
  no hook call: qemu_snapshot.c): the record that came with the snapshot's definition is
  brought to the guest's state on this host, as after a restore.
- At start-up, after every reconnection and every ``--reconcile-interval`` seconds: reconcile
  every running domain as ``psci-hook record --all`` does (from facts, not events: a boot the
  watcher missed is found), after refreshing the capabilities and QEMU version cache. After the
  first one the service tells systemd it is ready (Type=notify), so that units ordered after it
  (libvirt-guests, an orchestrator's agent) start once every running guest's record is right.
- When the daemon goes away (restart, crash, keepalive timeout) reconnect with backoff.
- SIGTERM or SIGINT: stop cleanly, exit 0.

One structured event per action goes to the journal or syslog ([log] target), never to
stdout. Run by hand, the watcher also says each of them in one line on stderr (connected,
reconciled N domains, each domain's action); under systemd (INVOCATION_ID set, as systemd does
for every unit it runs) it does so only with --verbose, since stderr goes to the journal too.
This process talks to libvirt; the hook never does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import queue
import signal
import socket
import threading
from collections.abc import Mapping
from types import FrameType
from typing import Any, Union

from psci_hook import __version__, auditlog
from psci_hook.environment import Environment
from psci_hook.errors import with_type
from psci_hook.libvirt_cache import refresh as refresh_cache
from psci_hook.libvirt_client import (
    DEFINED,
    RESUMED,
    STARTED,
    STOPPED,
    Backoff,
    Client,
    EventLoop,
    LibvirtCallFailed,
    LibvirtUnavailable,
    Lifecycle,
    load,
)
from psci_hook.policy import read_policy
from psci_hook.recorder import LIBVIRT_HOW_STARTED, Plan, RecordAction, Trigger, plan_failed
from psci_hook.recording import (
    Context,
    ContextError,
    load_context,
    log_plan,
    plan_line,
    record_domain,
    sink_for,
)
from psci_hook.status import ExitStatus

HELP = ("service: record freshly booted guests and keep persistent definitions in step with "
        "the live record, from libvirt lifecycle events (psci-hook-watch.service)")
POLL_SECONDS = 0.5  # how often the main loop looks at the stop flag and the connection
RECONCILE_SECONDS = 300.0  # the periodic reconcile's default interval
RECONNECT_PAUSE = 0.5  # after losing a connection, before the first reconnection attempt


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI (default: libvirt's default, "
                        "qemu:///system for root)")
    parser.add_argument("--reconcile-interval", type=float, default=RECONCILE_SECONDS,
                        metavar="SECONDS",
                        help="reconcile every running domain this often, besides at start-up "
                        f"and reconnections (default {RECONCILE_SECONDS:g}; 0: never)")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true",
                      help="say each action on stderr also under systemd")
    talk.add_argument("--quiet", action="store_true",
                      help="say nothing on stderr (the log still gets every event)")


def narrates(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """Whether the watcher says what it does on stderr: run by hand yes, under systemd (which
    sets INVOCATION_ID for every unit it starts, systemd.exec(5)) only when asked."""
    if args.quiet:
        return False
    return bool(args.verbose) or not environ.get("INVOCATION_ID")


@dataclasses.dataclass(frozen=True)
class Closed:
    """The connection of generation ``generation`` closed."""

    generation: int
    reason: str


Item = Union[Lifecycle, Closed]


class Watcher:
    def __init__(self, env: Environment, uri: str | None,
                 backoff: Backoff | None = None,
                 reconcile_interval: float = RECONCILE_SECONDS,
                 narrate: bool = False) -> None:
        self.env = env
        self.narrate = narrate
        self.uri = uri
        self.reconcile_interval = reconcile_interval
        self.ready = False  # systemd told (after the first reconcile)
        self.backoff = backoff or Backoff()
        self.stop = threading.Event()
        self.items: queue.Queue[Item] = queue.Queue()
        self.generation = 0
        self.arriving: dict[str, Trigger] = {}  # UUID -> trigger, incoming migrations under way

    # -- logging ---------------------------------------------------------------------------

    def say(self, text: str) -> None:
        """One line on stderr when narrating (run by hand, or --verbose)."""
        if self.narrate:
            self.env.error(f"watch: {text}")

    def service_event(self, action: str, reason: str, **fields: Any) -> None:
        self.say(reason)
        sink = sink_for(read_policy(self.env.config_path).policy)
        auditlog.emit_record(sink, action=action, trigger="service", domain="",
                             reason=reason, uri=self.uri or "", **fields,
                             version=__version__)

    # -- the service -----------------------------------------------------------------------

    def run(self) -> ExitStatus:
        loop = EventLoop()
        self.service_event("started", "watching libvirt lifecycle events")
        try:
            while not self.stop.is_set():
                client = Client.open_retrying(self.uri, self.stop, self.backoff,
                                              self._connect_failed)
                if client is None:
                    break
                try:
                    self._serve(client)
                except (LibvirtUnavailable, LibvirtCallFailed) as exc:
                    self.service_event("disconnected", f"{exc}; reconnecting")
                    self.stop.wait(RECONNECT_PAUSE)
                finally:
                    client.close()
        finally:
            loop.stop()
            self.service_event("stopped", "stopped (SIGTERM or SIGINT)")
        return ExitStatus.OK

    def _connect_failed(self, message: str, delay: float) -> None:
        self.service_event("connect-failed", f"{message}; next attempt in {delay:g} s")

    def _serve(self, client: Client) -> None:
        self.generation += 1
        generation = self.generation
        client.on_close(lambda reason: self.items.put(Closed(generation, reason)))
        client.on_lifecycle(self.items.put)
        with contextlib.suppress(LibvirtCallFailed):  # test:/// has no keepalives
            client.keepalive()
        self.service_event("connected", f"connected to libvirt on {client.hostname()}")
        self._refresh(client)
        self._reconcile(client)
        if not self.ready:
            self.ready = notify_ready(self.env.environ)
        next_pass = self.env.monotonic() + self.reconcile_interval
        while not self.stop.is_set():
            try:
                item = self.items.get(timeout=POLL_SECONDS)
            except queue.Empty:
                alive = client.alive()
                if not alive:
                    raise LibvirtUnavailable(
                        "the libvirt connection is no longer alive") from None
                if self.reconcile_interval > 0 and self.env.monotonic() >= next_pass:
                    self._reconcile(client)
                    next_pass = self.env.monotonic() + self.reconcile_interval
                continue
            if isinstance(item, Closed):
                if item.generation == generation:
                    raise LibvirtUnavailable(f"the libvirt connection closed ({item.reason})")
                continue  # an earlier connection's
            self._handle(client, item)

    def _refresh(self, client: Client) -> None:
        """Cache the capabilities and QEMU version for the hook (a QEMU upgrade is usually
        followed by a daemon restart, hence a reconnection)."""
        try:
            refresh_cache(client, self.env.run_dir)
        except LibvirtCallFailed as exc:
            self.service_event("refresh-failed", str(exc))
        except OSError as exc:
            self.service_event("refresh-failed",
                               f"cannot write the cache in {self.env.run_dir}: "
                               f"{exc.strerror or exc}")

    def _context(self, domain: str, trigger: Trigger) -> Context | None:
        try:
            return load_context(self.env)
        except ContextError as exc:
            plan = plan_failed(domain, trigger, str(exc))
            self.say(plan_line(plan).rstrip())
            auditlog.emit_record(auditlog.Sink(), action=plan.action, trigger=trigger,
                                 domain=domain, reason=plan.reason, version=__version__)
            return None

    def _reconcile(self, client: Client) -> None:
        ctx = self._context("", Trigger.RECONCILE)
        if ctx is None:
            return
        running = client.running()
        for dom in running:
            self._record(client, dom, Trigger.RECONCILE, ctx, client.name(dom))
        self.service_event("reconciled", f"{len(running)} running domain"
                           f"{'s' if len(running) != 1 else ''} reconciled")

    def _record(self, client: Client, dom: Any, trigger: Trigger, ctx: Context, domain: str
                ) -> None:
        """record_domain; a bug there is logged as that domain's failure, not the end of the
        service (a lost connection still ends the connection)."""
        try:
            plan = record_domain(client, dom, trigger, ctx)
        except (LibvirtUnavailable, LibvirtCallFailed):
            raise
        except Exception as exc:
            plan = plan_failed(domain, trigger, f"internal error: {with_type(exc)}")
            log_plan(ctx, plan)
        self.say(f"{trigger}: {plan_line(plan).rstrip()}")

    def _log(self, ctx: Context, plan: Plan) -> None:
        log_plan(ctx, plan)
        self.say(f"{plan.trigger}: {plan_line(plan).rstrip()}")

    def _handle(self, client: Client, item: Lifecycle) -> None:
        """Boots and restores are acted on at once. An incoming migration is remembered at
        STARTED_MIGRATED (the migration has only begun: no memory copied yet, the domain not
        yet persistent, the migration job holding it) and acted on at its end: DEFINED (the
        persistent definition arrived, --persistent) or RESUMED (the guest runs here)."""
        if item.event == STARTED:
            trigger = LIBVIRT_HOW_STARTED.get(item.detail)
            if trigger == Trigger.MIGRATED:
                self.arriving[item.uuid] = trigger
            elif trigger is not None:
                self.arriving.pop(item.uuid, None)
                self._act(client, item, trigger)
            return
        if item.uuid not in self.arriving:
            return
        if item.event in (DEFINED, RESUMED):
            self._act(client, item, self.arriving.pop(item.uuid))
        elif item.event == STOPPED:  # the migration failed, or the guest is already gone
            del self.arriving[item.uuid]

    def _act(self, client: Client, item: Lifecycle, trigger: Trigger) -> None:
        ctx = self._context(item.name, trigger)
        if ctx is None:
            return
        try:
            dom = client.lookup(item.uuid)
            running = client.is_active(dom)
        except LibvirtCallFailed as exc:
            self._log(ctx, plan_failed(item.name, trigger, str(exc), item.uuid))
            return
        if not running:
            self._log(ctx, Plan(item.name, item.uuid, trigger, RecordAction.SKIPPED,
                                "no longer running"))
            return
        self._record(client, dom, trigger, ctx, item.name)


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    try:
        load()
    except LibvirtUnavailable as exc:
        env.error(f"watch: {exc}")
        return ExitStatus.LIBVIRT_UNAVAILABLE
    if args.reconcile_interval < 0:
        env.error("watch: --reconcile-interval must be 0 or more seconds")
        return ExitStatus.BAD_INPUT
    watcher = Watcher(env, args.uri, reconcile_interval=args.reconcile_interval,
                      narrate=narrates(args, env.environ))

    def stop(_signum: int, _frame: FrameType | None) -> None:
        watcher.stop.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return watcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def notify_ready(environ: Mapping[str, str]) -> bool:
    """Tell systemd the service is ready (sd_notify READY=1 on $NOTIFY_SOCKET; Type=notify).
    Without a socket (not under systemd) or when sending fails, nothing happens."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1\nSTATUS=every running guest reconciled", target)
    except OSError:
        return False
    return True

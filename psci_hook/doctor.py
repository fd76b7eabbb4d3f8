"""``psci-hook doctor``'s judgement: is this host really protected? Pure, no I/O.

psci_hook.commands.doctor gathers the facts (files, processes, the journal, libvirt); the
functions here turn them into checks: one ``ok``, ``warn`` or ``FAIL`` line each, and for every
line that is not ok the command that fixes it. ``FAIL`` means a migration would not be checked
(or would be refused) as the operator expects; ``warn`` means something psci-hook cannot verify,
or a setting that weakens what it enforces.

The libvirt facts the checks rely on (src/util/virhook.c): ``virHookInitialize`` runs at daemon
start and on SIGHUP and only records *whether* a driver has any executable hook (the ``qemu``
script or an entry of ``qemu.d/``); ``virHookCall`` then reads ``qemu.d/`` again at every call and
runs the ``qemu`` script first, then every executable entry in ``strcmp`` order, each one's
output being the next one's input. So a new file in ``qemu.d/`` runs without a reload as long as
the daemon already knew of another qemu hook when it started or last reloaded.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from psci_hook.policy import Policy
from psci_hook.record import OriginEvent, RecordStatus, time_epoch, time_text

# systemd's own journal messages for a unit's reload job (src/systemd/sd-messages.h:
# SD_MESSAGE_UNIT_RELOADING, SD_MESSAGE_UNIT_RELOADED).
UNIT_RELOAD_MESSAGE_IDS = ("d34d037fff1847e6ae669a370e694725",
                           "7b05ebc668384222baa8881179cfda54")
DAEMONS = ("virtqemud", "libvirtd")


class Status(str, enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


class Check(NamedTuple):
    """One line of the report."""

    name: str  # what was checked, e.g. "hook file"
    status: Status
    summary: str  # one line: what was found
    fix: str = ""  # the command that fixes it (every non-ok check has one)
    details: Mapping[str, Any] = {}


def ok(name: str, summary: str, **details: Any) -> Check:
    return Check(name, Status.OK, summary, "", details)


def warn(name: str, summary: str, fix: str, **details: Any) -> Check:
    return Check(name, Status.WARN, summary, fix, details)


def fail(name: str, summary: str, fix: str, **details: Any) -> Check:
    return Check(name, Status.FAIL, summary, fix, details)


def utc(epoch: float | None, precise: bool = False) -> str:
    """ISO 8601 UTC to the second, or to the hundredth (two moments within one second)."""
    if epoch is None:
        return "?"
    if not precise:
        return time_text(epoch)
    hundredths = int(epoch % 1 * 100)  # truncated, as the seconds are
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{hundredths:02d}Z"


# ---------------------------------------------------------------------------------------------
# The hook file
# ---------------------------------------------------------------------------------------------


class HookFile(NamedTuple):
    path: str  # as libvirt sees it: /etc/libvirt/hooks/qemu.d/50-psci-hook
    exists: bool
    symlink_to: str | None = None  # the link's target when the path is a symlink
    regular: bool = False  # a regular file (after following a symlink)
    mode: int = 0
    ctime: float | None = None  # inode change time: written, renamed or chmod-ed
    shebang: str | None = None  # the #! line without "#!", None if there is none


class ImportProbe(NamedTuple):
    """``INTERPRETER -I -c 'import psci_hook'`` run as libvirt runs the hook."""

    interpreter: str
    found: bool  # the interpreter exists and is executable
    imported: bool = False
    version: str = ""
    location: str = ""  # the directory of the psci_hook package it imported
    error: str = ""  # one line, when it did not import


def check_hook_file(hook: HookFile, reinstall: str) -> Check:
    name = "hook file"
    if hook.symlink_to is not None:
        return fail(name, f"{hook.path} is a symlink to {hook.symlink_to}: AppArmor matches the "
                    "resolved path and denies it, and libvirt may not run it at all",
                    reinstall, path=hook.path, symlink_to=hook.symlink_to)
    if not hook.exists:
        return fail(name, f"{hook.path} does not exist: libvirt runs no psci-hook, every "
                    "migration goes unchecked", reinstall, path=hook.path)
    if not hook.regular:
        return fail(name, f"{hook.path} is not a regular file", reinstall, path=hook.path)
    if not hook.mode & 0o111:
        return fail(name, f"{hook.path} is not executable (mode {hook.mode & 0o7777:04o}): "
                    "libvirt skips it", f"chmod 0755 {hook.path}", path=hook.path,
                    mode=f"{hook.mode & 0o7777:04o}")
    if hook.mode & 0o022:
        return warn(name, f"{hook.path} is writable by others than its owner "
                    f"(mode {hook.mode & 0o7777:04o}): anyone who can write it runs code as "
                    "the libvirt daemon", f"chmod 0755 {hook.path}", path=hook.path,
                    mode=f"{hook.mode & 0o7777:04o}")
    return ok(name, f"{hook.path}: a real executable file (mode {hook.mode & 0o7777:04o}), "
              f"written {utc(hook.ctime)}", path=hook.path, mode=f"{hook.mode & 0o7777:04o}",
              written=utc(hook.ctime))


def interpreter_of(shebang: str | None) -> tuple[str, list[str]]:
    """The interpreter and its arguments from a #! line ("" when there is none)."""
    parts = (shebang or "").split()
    return (parts[0], parts[1:]) if parts else ("", [])


def check_interpreter(hook: HookFile, probe: ImportProbe | None, version: str,
                      package_dir: str, reinstall: str) -> Check | None:
    """The hook's #! interpreter exists, runs with -I and imports this psci_hook."""
    if not hook.exists or not hook.regular:
        return None
    name = "hook interpreter"
    interpreter, args = interpreter_of(hook.shebang)
    if not interpreter:
        return fail(name, f"{hook.path} has no #! line: libvirt cannot run it", reinstall)
    if probe is None or not probe.found:
        return fail(name, f"#!{hook.shebang}: {interpreter} does not exist or is not "
                    "executable: the hook cannot run, every migration fails",
                    reinstall, interpreter=interpreter)
    if not probe.imported:
        return fail(name, f"{interpreter} -I cannot import psci_hook ({probe.error}): the hook "
                    "allows every migration unchecked",
                    f"{reinstall}  # from an installation whose python imports psci_hook",
                    interpreter=interpreter, error=probe.error)
    details = {"interpreter": interpreter, "arguments": args, "version": probe.version,
               "location": probe.location}
    if "-I" not in args:
        return warn(name, f"#!{hook.shebang} runs without -I: the hook would import from the "
                    "environment and the working directory", reinstall, **details)
    if probe.version != version:
        return warn(name, f"{interpreter} -I imports psci_hook {probe.version} from "
                    f"{probe.location}; this psci-hook is {version} ({package_dir})",
                    reinstall, **details)
    where = "" if probe.location == package_dir else \
        f" (from {probe.location}; this command runs {package_dir})"
    return ok(name, f"{interpreter} -I imports psci_hook {probe.version}{where}", **details)


class OtherHook(NamedTuple):
    """Another qemu hook: the ``qemu`` script or an entry of ``qemu.d/``."""

    path: str
    executable: bool
    ctime: float | None


def runs_before(hook_path: str, other: OtherHook) -> bool:
    """libvirt runs the ``qemu`` script first, then qemu.d's entries sorted by strcmp."""
    if not other.path.rsplit("/", 2)[-2].endswith(".d"):
        return True
    return other.path.encode() < hook_path.encode()


def check_order(hook: HookFile, others: Sequence[OtherHook]) -> Check | None:
    if not hook.exists:
        return None
    first = [o.path for o in others if o.executable and runs_before(hook.path, o)]
    if not first:
        return ok("hook order", "no other qemu hook runs before psci-hook", first=[])
    return ok("hook order", f"runs after {', '.join(first)}: what they print is the domain XML "
              "psci-hook sees, and a failing one vetoes on its own", first=first)


# ---------------------------------------------------------------------------------------------
# Loaded by the daemon
# ---------------------------------------------------------------------------------------------


class Daemon(NamedTuple):
    name: str  # virtqemud or libvirtd
    pid: int
    started: float  # epoch seconds
    unit: str | None = None  # the systemd unit it runs in, if any


def reload_command(daemon: Daemon) -> str:
    if daemon.unit:
        return f"systemctl reload {daemon.unit}"
    return f"kill -HUP {daemon.pid}  # {daemon.name}: libvirt reads its hooks again on SIGHUP"


def check_loaded(hook: HookFile, daemons: Sequence[Daemon], others: Sequence[OtherHook],
                 reloads: Mapping[str, Sequence[float]] | None,
                 last_decision: float | None) -> list[Check]:
    """Whether each running daemon has found the qemu hooks since the hook was written.

    ``reloads``: per unit, the times systemd's journal shows a reload job (None: the journal
    could not be read). ``last_decision``: when the hook last logged a decision on this host.
    """
    name = "daemon"
    if not hook.exists or not hook.regular:
        return []
    if not daemons:
        return [warn(name, "no libvirt daemon (virtqemud or libvirtd) is running: nothing to "
                     "check now; a daemon reads the hooks when it starts",
                     "systemctl start virtqemud.service  # or libvirtd.service")]
    checks = []
    written = hook.ctime or 0.0
    for daemon in daemons:
        label = f"{daemon.name} (pid {daemon.pid}{', ' + daemon.unit if daemon.unit else ''})"
        close = abs(daemon.started - written) < 1
        started, hook_written = utc(daemon.started, close), utc(hook.ctime, close)
        details = {"daemon": daemon.name, "pid": daemon.pid, "unit": daemon.unit,
                   "started": started, "hook_written": hook_written}
        if daemon.started >= written:
            checks.append(ok(name, f"{label} started {started}, after the hook was "
                             f"written ({hook_written})", **details))
            continue
        earlier = [o.path for o in others
                   if o.executable and o.ctime is not None and o.ctime < daemon.started]
        if earlier:
            checks.append(ok(name, f"{label} started {started}, before the hook was "
                             f"written ({hook_written}), but {earlier[0]} was already "
                             "there: libvirt reads qemu.d/ at every call", **details))
            continue
        if last_decision is not None and last_decision >= written:
            checks.append(ok(name, f"{label}: the hook logged a decision at "
                             f"{utc(last_decision)}, after it was written", **details))
            continue
        seen = [t for t in (reloads or {}).get(daemon.unit or "", ()) if t >= written]
        if seen:
            checks.append(ok(name, f"{label} reloaded at {utc(max(seen))} (systemd's journal), "
                             f"after the hook was written ({hook_written})", **details))
            continue
        if daemon.unit and reloads is not None:
            checks.append(fail(name, f"{label} started {started}, before the hook "
                               f"was written ({hook_written}), and systemd's journal shows "
                               "no reload since: it has not found the hook", reload_command(
                                   daemon), **details))
            continue
        checks.append(warn(name, f"{label} started {started}, before the hook was "
                           f"written ({hook_written}); whether it was reloaded since cannot "
                           "be seen (SIGHUP leaves no trace"
                           f"{'' if daemon.unit else ' outside systemd'}) and no decision was "
                           "logged since", reload_command(daemon), **details))
    return checks


# ---------------------------------------------------------------------------------------------
# Confinement
# ---------------------------------------------------------------------------------------------


class AppArmor(NamedTuple):
    enabled: bool
    # daemon name -> its label from /proc/PID/attr/current, e.g. "libvirtd (enforce)"
    labels: Mapping[str, str] = {}
    # profile file -> whether it has a rule letting the daemon execute /etc/libvirt/hooks/**
    hook_rules: Mapping[str, bool] = {}


def check_apparmor(facts: AppArmor) -> Check:
    name = "AppArmor"
    if not facts.enabled:
        return ok(name, "not present")
    confined = {d: lab for d, lab in facts.labels.items() if lab and lab != "unconfined"}
    if not confined:
        running = ", ".join(f"{d}: {lab or '?'}" for d, lab in facts.labels.items())
        return ok(name, "enabled; the libvirt daemon is not confined "
                  f"({running or 'none running'})")
    missing = [f for f, has in facts.hook_rules.items() if not has]
    text = ", ".join(f"{d} in {lab}" for d, lab in confined.items())
    if missing or not facts.hook_rules:
        where = missing[0] if missing else "/etc/apparmor.d/usr.sbin.libvirtd"
        return warn(name, f"{text}; no rule for /etc/libvirt/hooks/** found in "
                    f"{', '.join(missing) or 'the profile files'}",
                    f"echo '/etc/libvirt/hooks/** rmix,' >> "
                    f"{where.replace('/etc/apparmor.d/', '/etc/apparmor.d/local/')} && "
                    f"apparmor_parser -r {where}", labels=dict(facts.labels))
    return ok(name, f"{text}; the profile lets it run /etc/libvirt/hooks/** "
              "(a real file, not a symlink)", labels=dict(facts.labels))


class SELinux(NamedTuple):
    present: bool
    enforcing: bool = False
    hooks_unconfined: bool | None = None  # virt_hooks_unconfined; None: no such boolean
    hook_context: str = ""
    expected_context: str = ""  # the policy's default label (matchpathcon), "" if unknown


def check_selinux(facts: SELinux, hook_path: str) -> Check:
    name = "SELinux"
    if not facts.present:
        return ok(name, "not present")
    mode = "enforcing" if facts.enforcing else "permissive"
    details = {"mode": mode, "virt_hooks_unconfined": facts.hooks_unconfined,
               "context": facts.hook_context}
    if facts.hooks_unconfined is False:
        summary = (f"{mode}; virt_hooks_unconfined is off: libvirt's hooks run confined and "
                   "psci-hook cannot work")
        fix = "setsebool -P virt_hooks_unconfined on"
        if facts.enforcing:
            return fail(name, summary, fix, **details)
        return warn(name, summary + " once enforcing", fix, **details)
    if facts.hooks_unconfined is None:
        return warn(name, f"{mode}; this policy has no virt_hooks_unconfined boolean: check "
                    "that `virsh migrate` shows psci-hook's veto reasons",
                    "setsebool -P virt_hooks_unconfined on  # once the policy has it",
                    **details)
    context_type = facts.hook_context.split(":")[2:3]
    expected_type = facts.expected_context.split(":")[2:3]
    if facts.expected_context and context_type != expected_type:
        return warn(name, f"{mode}; {hook_path} is labelled {facts.hook_context or 'nothing'}, "
                    f"the policy says {facts.expected_context}",
                    "restorecon -Rv /etc/libvirt/hooks", **details)
    return ok(name, f"{mode}; virt_hooks_unconfined on; {hook_path} labelled "
              f"{facts.hook_context or '?'}", **details)


# ---------------------------------------------------------------------------------------------
# This host's profile
# ---------------------------------------------------------------------------------------------


class ProfileFacts(NamedTuple):
    machine: str  # os.uname().machine
    kvm: bool  # /dev/kvm exists
    configured: str | None  # [host] profile
    source: str  # the file read (the configured one or the boot-time cache)
    kernel_release: str = ""  # of the profile, when it was usable
    problem: str = ""  # why it is not usable (one line), "" when it is
    problem_kind: str = ""  # missing, stale, corrupt, unreadable
    qemu_generation: str = ""  # what the hook will use
    generation_source: str = ""  # how it was found


def check_profile(facts: ProfileFacts, policy: Policy, config_path: str) -> list[Check]:
    name = "host profile"
    details = {"source": facts.source, "configured": facts.configured is not None,
               "machine": facts.machine}
    checks = []
    if facts.configured is not None:
        if facts.problem:
            checks.append(fail(name, f"[host] profile = {facts.configured}: {facts.problem}: "
                               f"every migration is PROFILE_UNAVAILABLE (on_error = "
                               f"{policy.on_error})", f"psci-hook probe --output "
                               f"{facts.configured}  # on this host, or fix [host] profile in "
                               f"{config_path}", **details))
        else:
            checks.append(ok(name, f"[host] profile = {facts.configured} (kernel "
                             f"{facts.kernel_release})", **details))
    elif not facts.problem:
        checks.append(ok(name, f"{facts.source}: this boot's, kernel {facts.kernel_release}",
                         **details))
    elif facts.machine == "aarch64" and facts.kvm:
        checks.append(warn(name, f"{facts.problem}: the hook probes inline at every migration "
                           "until it is written", "systemctl restart psci-hook-probe.service  "
                           "# or: psci-hook probe --write", kind=facts.problem_kind, **details))
    else:
        where = "not an arm64 host" if facts.machine != "aarch64" else "no /dev/kvm"
        checks.append(fail(name, f"{facts.problem}, and the hook cannot probe ({where}): every "
                           f"migration is PROFILE_UNAVAILABLE (on_error = {policy.on_error})",
                           f"psci-hook probe --write  # on arm64 KVM; elsewhere set [host] "
                           f"profile in {config_path}", kind=facts.problem_kind, **details))
    if facts.qemu_generation:
        gen = f"QEMU generation {facts.qemu_generation} ({facts.generation_source})"
        if facts.generation_source.startswith("assumed"):
            checks.append(warn("QEMU generation", gen, "psci-hook refresh",
                               generation=facts.qemu_generation))
        else:
            checks.append(ok("QEMU generation", gen, generation=facts.qemu_generation))
    return checks


def check_probe_unit(state: str | None, result: str | None) -> Check | None:
    """psci-hook-probe.service where systemd runs (state None: no systemd)."""
    if state is None:
        return None
    name = "probe unit"
    if state == "active" or (state == "inactive" and result == "success"):
        return ok(name, f"psci-hook-probe.service {state} ({result or '?'})")
    return warn(name, f"psci-hook-probe.service {state} ({result or '?'}): the boot-time cache "
                "is not written at boot", "systemctl enable --now psci-hook-probe.service  "
                "# journalctl -u psci-hook-probe.service says why it failed",
                state=state, result=result)


# ---------------------------------------------------------------------------------------------
# Records: the watcher and the running guests
# ---------------------------------------------------------------------------------------------


class Watcher(NamedTuple):
    pids: Sequence[int]
    unit_state: str | None = None  # systemctl is-active psci-hook-watch.service; None: no systemd
    last_event: str = ""  # connected, disconnected, connect-failed, stopped ("" unknown)
    last_event_time: str = ""


def check_watcher(facts: Watcher) -> Check:
    name = "watcher"
    start = ("systemctl enable --now psci-hook-watch.service" if facts.unit_state is not None
             else "psci-hook watch &  # or run psci-hook-watch.service")
    details = {"pids": list(facts.pids), "unit": facts.unit_state, "last_event": facts.last_event,
               "last_event_time": facts.last_event_time}
    if not facts.pids:
        return fail(name, "psci-hook watch is not running: guests booted from now on get no "
                    "record (NO_RECORD: their migrations go unchecked)", start, **details)
    pids = ", ".join(map(str, facts.pids))
    if facts.last_event in ("disconnected", "connect-failed"):
        return warn(name, f"psci-hook watch (pid {pids}) runs but its last event is "
                    f"{facts.last_event} at {facts.last_event_time}: not connected to libvirt",
                    "systemctl restart psci-hook-watch.service  # and check the libvirt daemon",
                    **details)
    if facts.last_event in ("connected", "reconciled"):
        return ok(name, f"psci-hook watch (pid {pids}) connected at {facts.last_event_time}",
                  **details)
    return ok(name, f"psci-hook watch (pid {pids}) running (no connection event found in the "
              "log)", **details)


class Guest(NamedTuple):
    """A running domain the hook acts on, and what its record says."""

    name: str
    has_record: bool
    record_error: str = ""  # why the record is invalid
    origin_event: str = ""
    origin_host: str = ""
    origin_time: str = ""
    from_this_host: bool = True
    qemu_started: float | None = None  # its QEMU process's start (epoch), when known
    status: str = ""  # the record's status (psci_hook.record): "" for live state


def record_problem(guest: Guest) -> tuple[str, str]:
    """Why a running guest's record cannot be trusted here, and its fix (("", "") when it
    can). A record with a status is one the hook does not use (NO_RECORD: the policy decides)."""
    if guest.record_error:
        return (f"its record is invalid ({guest.record_error})",
                f"psci-hook record --force {guest.name}  # only if it cold-booted on this host")
    if guest.status == RecordStatus.PERSISTENT_COPY:
        return ("its live record is the persistent definition's copy (it started without "
                "psci-hook recording it): the hook does not use it, the policy's 'unrecorded' "
                "decides its migrations",
                f"psci-hook record {guest.name}  # decides from libvirt's state reason")
    if guest.status == RecordStatus.UNVERIFIED:
        return ("its record is marked unverified (psci-hook could not tell whether it "
                "cold-booted after the record was written): the hook does not use it, the "
                "policy's 'unrecorded' decides its migrations",
                f"psci-hook record --force {guest.name}  # only if it cold-booted on this host")
    if guest.status:
        return (f"its record's status is {guest.status!r} (a newer psci-hook wrote it): the "
                "hook does not use it",
                f"psci-hook record {guest.name}")
    stale = "psci-hook record {}  # decides from libvirt's state reason"
    if not guest.from_this_host:
        return (f"its record is from {guest.origin_host} ({guest.origin_event} at "
                f"{guest.origin_time}): it came with a migration the hook did not annotate, or "
                "survived a cold boot", stale.format(guest.name))
    if guest.origin_event == OriginEvent.BOOTED and guest.qemu_started is not None:
        recorded = time_epoch(guest.origin_time)
        # The record of a boot is written after the QEMU process started (one-second times).
        if recorded is not None and recorded + 1 < guest.qemu_started:
            return (f"its record is from an earlier boot ({guest.origin_time}; this QEMU "
                    f"process started {utc(guest.qemu_started)})", stale.format(guest.name))
    return "", ""




def check_guests(guests: Sequence[Guest] | None, skipped: int, error: str,
                 policy: Policy) -> list[Check]:
    name = "guests"
    if guests is None:
        return [warn(name, f"running guests not checked: {error}",
                     "apt-get install python3-libvirt  # and start the libvirt daemon"
                     if "python3-libvirt" in error else
                     "systemctl start virtqemud.service  # or libvirtd.service")]
    checks = []
    for guest in guests:
        if not guest.has_record and not guest.record_error:
            effect = ("its migrations are refused (unrecorded = veto)"
                      if policy.unrecorded == "veto" else
                      "its migrations go unchecked (NO_RECORD)")
            checks.append(fail(f"guest {guest.name}", f"running without a psci-hook record: "
                               f"{effect}", f"psci-hook record {guest.name}", domain=guest.name,
                               problem="unrecorded"))
            continue
        problem, fix = record_problem(guest)
        if problem:
            checks.append(warn(f"guest {guest.name}", problem, fix, domain=guest.name,
                               problem=guest.status or "stale"))
    bad = len(checks)
    checks.insert(0, ok(name, f"{len(guests)} running guest(s) the hook acts on, "
                        f"{len(guests) - bad} with a current record; {skipped} other(s) not "
                        "acted on", running=len(guests), not_acted_on=skipped))
    return checks


# ---------------------------------------------------------------------------------------------
# Policy and logging
# ---------------------------------------------------------------------------------------------


def effective(policy: Policy) -> dict[str, Any]:
    return {
        "mode": policy.mode, "unrecorded": policy.unrecorded, "on_error": policy.on_error,
        "annotate": policy.annotate, "timeout": policy.timeout,
        "domain_types": sorted(policy.domain_types),
        "host_profile": str(policy.host_profile) if policy.host_profile else None,
        "qemu_generation": policy.qemu_generation, "rehearse": policy.rehearse,
        "veto_dropped_workarounds": policy.veto_dropped_workarounds,
        "allow_domain_override": policy.allow_domain_override, "log_target": policy.log_target,
    }


def check_policy(policy: Policy | None, error: str, config_path: str, exists: bool
                 ) -> list[Check]:
    name = "policy"
    if policy is None:
        return [fail(name, f"{error}: the hook allows every migration unchecked (unless the "
                     "file says on_error = veto)", f"edit {config_path}")]
    values = effective(policy)
    shown = ", ".join(f"{k}={v if not isinstance(v, list) else ','.join(v)}"
                      for k, v in values.items() if k in ("mode", "unrecorded", "on_error",
                                                          "annotate", "domain_types"))
    where = config_path if exists else f"{config_path} absent: defaults"
    checks = [ok(name, f"{where}: {shown}", path=config_path, exists=exists, values=values)]
    if policy.mode == "warn":
        checks.append(warn("policy mode", "mode = warn: nothing is vetoed, what would be is "
                           "only logged", f"set [hook] mode = enforce in {config_path}"))
    if policy.unrecorded == "allow" and policy.on_error == "allow":
        checks.append(warn("policy unrecorded", "unrecorded = allow with on_error = allow: "
                           "nothing is enforced for guests without a record",
                           f"set [hook] unrecorded = veto in {config_path} once every guest "
                           "has a record (psci-hook record --all)"))
    if "kvm" not in policy.domain_types:
        checks.append(warn("policy domain types", f"domain_types = "
                           f"{','.join(sorted(policy.domain_types))}: KVM guests are not checked",
                           f"add kvm to [hook] domain_types in {config_path}"))
    return checks


class Logging(NamedTuple):
    target: str  # the policy's [log] target
    journal: str  # "reachable", or why not
    syslog: str
    read_from: str  # where decisions were read back from, "" if nowhere
    read_error: str = ""
    decisions: int = 0
    last: Mapping[str, Any] | None = None  # the last decision event


def check_logging(facts: Logging) -> list[Check]:
    checks = []
    name = "logging"
    reachable = [n for n, s in (("journal", facts.journal), ("syslog", facts.syslog))
                 if s == "reachable"]
    wanted = {"auto": ("journal", "syslog"), "journal": ("journal",),
              "syslog": ("syslog",)}.get(facts.target, ())
    details = {"target": facts.target, "journal": facts.journal, "syslog": facts.syslog}
    if not wanted:
        checks.append(warn(name, "[log] target = none: decisions are not logged",
                           "set [log] target = auto in the configuration", **details))
    elif not [r for r in reachable if r in wanted]:
        checks.append(warn(name, f"[log] target = {facts.target}, but neither socket takes "
                           f"events (journal: {facts.journal}; syslog: {facts.syslog}): "
                           "decisions are lost", "systemctl start systemd-journald.socket  "
                           "# or start rsyslog", **details))
    else:
        checks.append(ok(name, f"[log] target = {facts.target}: {' and '.join(reachable)} "
                         "reachable", **details))
    name = "last decision"
    if facts.read_error:
        checks.append(warn(name, f"cannot read the decisions back: {facts.read_error}",
                           "psci-hook doctor --log /var/log/syslog  # name the syslog file"))
    elif facts.last is None:
        checks.append(ok(name, f"no decision logged yet ({facts.read_from})", decisions=0))
    else:
        last = facts.last
        codes = " ".join(last.get("codes", [])[:3])
        checks.append(ok(name, f"{last.get('timestamp', '?')} {last.get('decision', '?')} "
                         f"{last.get('op', '?')} of {last.get('domain', '?')}"
                         f"{' (' + codes + ')' if codes else ''}; {facts.decisions} decision(s)"
                         f" in {facts.read_from}", decisions=facts.decisions,
                         last={k: last.get(k) for k in ("timestamp", "decision", "op", "domain",
                                                        "codes")}))
    return checks


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)


def render_text(checks: Sequence[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{check.status.value:<4}  {check.name:<{width}}  {check.summary}")
        if check.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    counts = {s: sum(1 for c in checks if c.status is s) for s in Status}
    lines.append(f"{counts[Status.FAIL]} FAIL, {counts[Status.WARN]} warn, "
                 f"{counts[Status.OK]} ok")
    return "\n".join(lines) + "\n"


def render_json(checks: Sequence[Check], version: str) -> str:
    data = {
        "schema": "psci-hook.doctor/v1",
        "version": version,
        "failed": failed(checks),
        "checks": [{"check": c.name, "status": c.status.value, "summary": c.summary,
                    "fix": c.fix or None, "details": dict(c.details)} for c in checks],
    }
    return json.dumps(data, indent=1) + "\n"

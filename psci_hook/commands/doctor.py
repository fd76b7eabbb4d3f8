"""``psci-hook doctor``: is this host really protected? Gathers the facts, psci_hook.doctor judges.

Read-only: it reads files below a root (``/``), processes from ``/proc``, the journal or syslog,
and asks libvirt (libvirt-python, as ``record`` does; never the hook) for the running guests. It
runs the hook's ``#!`` interpreter once, as libvirt would, to see that it imports psci_hook.
Every filesystem root, process table and external command goes through ``System``, so that the
checks can be run against a prepared tree in tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import socket
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from psci_hook import __version__, cache, doctor
from psci_hook.auditlog import (
    EVENT,
    RECORD_EVENT,
    SYSLOG_FILES,
    events_from_lines,
    read_journal,
)
from psci_hook.doctor import Check
from psci_hook.environment import DEV_KVM, HOOK, JOURNAL_SOCKET, Environment
from psci_hook.errors import first_line
from psci_hook.policy import Policy, read_policy
from psci_hook.profile import (
    ProfileError,
    load_profile,
    qemu_generation_for_version,
    read_qemu_version,
)
from psci_hook.status import ExitStatus

HELP = ("check that this host is protected: the hook file, the libvirt daemon that runs it, "
        "confinement, the host profile, guest records, the policy and logging")

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The environment libvirt gives a hook (virCommandAddEnvPassCommon).
HOOK_ENV = {"LC_ALL": "C", "PATH": CLEAN_PATH, "HOME": "/root"}
IMPORT_CHECK = ("import os, psci_hook; print(psci_hook.__version__); "
                "print(os.path.dirname(os.path.abspath(psci_hook.__file__)))")
APPARMOR_PROFILES = ("/etc/apparmor.d/usr.sbin.libvirtd", "/etc/apparmor.d/usr.sbin.virtqemud")
_HOOK_RULE_RE = re.compile(r"^\s*/etc/libvirt/hooks/\*\*\s+[a-z]*x[a-z]*\s*,", re.MULTILINE)
# The watcher's service events that say whether it is connected (psci_hook.commands.watch).
WATCHER_STATES = ("started", "connected", "reconciled", "disconnected", "connect-failed",
                  "stopped")
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])

Runner = Callable[[Sequence[str]], tuple[int, str, str]]


def run_command(argv: Sequence[str]) -> tuple[int, str, str]:
    """Run a command as libvirt runs a hook (clean environment, cwd /); 127 if it cannot."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                              env=HOOK_ENV, cwd="/", stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


@dataclasses.dataclass
class System:
    """Where this host's files and processes are read from, and how commands run."""

    root: Path = Path("/")
    proc: Path = Path("/proc")
    run: Runner = run_command
    which: Callable[[str], str | None] = dataclasses.field(
        default=lambda name: shutil.which(name, path=CLEAN_PATH))
    machine: str = dataclasses.field(default_factory=lambda: os.uname().machine)
    release: str = dataclasses.field(default_factory=lambda: os.uname().release)

    def path(self, inside: str | os.PathLike[str]) -> Path:
        return self.root / str(inside).lstrip("/")

    @property
    def systemd(self) -> bool:
        return self.path("/run/systemd/system").is_dir()


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _mount_ns(system: System, pid: str) -> str | None:
    try:
        return os.readlink(system.proc / pid / "ns" / "mnt")
    except OSError:
        return None


def processes(system: System) -> list[tuple[int, list[str]]]:
    """(pid, argv) of the live processes in this process's mount namespace (the ones that see
    the same /etc/libvirt), apart from this process."""
    own_ns = _mount_ns(system, "self")
    found = []
    try:
        entries = os.listdir(system.proc)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        raw = _read(system.proc / entry / "cmdline")
        if not raw:
            continue
        ns = _mount_ns(system, entry)
        if own_ns is not None and ns is not None and ns != own_ns:
            continue
        found.append((int(entry), [a for a in raw.split("\0") if a]))
    return sorted(found)


def start_time(system: System, pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc/PID/stat and /proc/stat's btime."""
    stat_text = _read(system.proc / str(pid) / "stat")
    boot = _read(system.proc / "stat")
    if not stat_text or not boot:
        return None
    match = re.search(r"^btime (\d+)$", boot, re.MULTILINE)
    fields = stat_text.rsplit(")", 1)[-1].split()
    if not match or len(fields) < 20:
        return None
    return int(match.group(1)) + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def unit_of(system: System, pid: int) -> str | None:
    for line in (_read(system.proc / str(pid) / "cgroup") or "").splitlines():
        for part in reversed(line.rsplit(":", 1)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


def daemons(system: System, procs: list[tuple[int, list[str]]]) -> list[doctor.Daemon]:
    found = []
    for pid, argv in procs:
        name = os.path.basename(argv[0])
        if name in doctor.DAEMONS:
            started = start_time(system, pid)
            if started is not None:
                found.append(doctor.Daemon(name, pid, started, unit_of(system, pid)))
    return found


def watchers(procs: list[tuple[int, list[str]]]) -> list[int]:
    """``psci-hook watch`` processes: the console script, or ``python -m psci_hook watch``."""
    pids = []
    for pid, argv in procs:
        names = [os.path.basename(a) for a in argv]
        if "watch" not in argv:
            continue
        at = argv.index("watch")
        if "psci-hook" in names[:at] or "psci_hook" in argv[:at]:
            pids.append(pid)
    return pids


# ---------------------------------------------------------------------------------------------
# The hook file
# ---------------------------------------------------------------------------------------------


def hook_file(system: System) -> doctor.HookFile:
    path = system.path(HOOK)
    try:
        lst = os.lstat(path)
    except OSError:
        return doctor.HookFile(str(HOOK), exists=False)
    if stat.S_ISLNK(lst.st_mode):
        return doctor.HookFile(str(HOOK), exists=path.exists(), symlink_to=os.readlink(path))
    regular = stat.S_ISREG(lst.st_mode)
    shebang = None
    if regular:
        try:
            with path.open("rb") as f:
                first = f.readline(512)
        except OSError:
            first = b""
        if first.startswith(b"#!"):
            shebang = first[2:].decode("utf-8", "replace").strip()
    return doctor.HookFile(str(HOOK), True, None, regular, lst.st_mode, lst.st_ctime, shebang)


def other_hooks(system: System) -> list[doctor.OtherHook]:
    """The ``qemu`` script and qemu.d's other entries (virFileIsExecutable: a regular file,
    followed through symlinks, with an execute bit)."""
    main = f"/etc/libvirt/hooks/{HOOK.parent.name[:-2]}"
    candidates = [main]
    with contextlib.suppress(OSError):
        candidates += [f"{HOOK.parent}/{n}" for n in sorted(os.listdir(system.path(HOOK.parent)))
                       if n != HOOK.name]
    found = []
    for inside in candidates:
        try:
            st = os.stat(system.path(inside))
        except OSError:
            continue
        found.append(doctor.OtherHook(
            inside, stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111), st.st_ctime))
    return found


def import_probe(system: System, shebang: str | None) -> doctor.ImportProbe | None:
    interpreter, args = doctor.interpreter_of(shebang)
    if not interpreter:
        return None
    if not os.access(interpreter, os.X_OK) or os.path.isdir(interpreter):
        return doctor.ImportProbe(interpreter, found=False)
    flags = [a for a in args if a.startswith("-")]
    rc, out, err = system.run([interpreter, *flags, "-c", IMPORT_CHECK])
    lines = out.strip().splitlines()
    if rc != 0 or len(lines) < 2:
        last = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        return doctor.ImportProbe(interpreter, True, error=last)
    return doctor.ImportProbe(interpreter, True, True, lines[0].strip(), lines[1].strip())


def reinstall_command(system: System) -> str:
    if system.path("/var/lib/dpkg/info/psci-hook.list").exists():
        return "apt-get install --reinstall psci-hook"
    return "psci-hook install --force"


# ---------------------------------------------------------------------------------------------
# The journal and syslog
# ---------------------------------------------------------------------------------------------


def unit_reloads(system: System, units: list[str], since: float) -> dict[str, list[float]] | None:
    """When systemd's journal shows a reload job of each unit since ``since``; None if the
    journal cannot be read."""
    if not units or system.which("journalctl") is None:
        return None
    found: dict[str, list[float]] = {}
    for unit in units:
        rc, out, _ = system.run(["journalctl", "-o", "json", "--no-pager", "_PID=1",
                                 f"UNIT={unit}", "--since", f"@{int(since)}"])
        if rc != 0:
            return None
        for entry in _json_lines(out):
            if entry.get("MESSAGE_ID") in doctor.UNIT_RELOAD_MESSAGE_IDS:
                found.setdefault(unit, []).append(
                    int(entry.get("__REALTIME_TIMESTAMP", 0)) / 1e6)
    return found


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def log_lines(system: System, files: Sequence[Path]) -> tuple[list[str], str, str]:
    """psci-hook's log lines: from ``files``, else the journal, else the syslog files.
    Returns the lines, where they came from and, if nothing could be read, why."""
    if files:
        lines: list[str] = []
        for path in files:
            try:
                lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError as exc:
                return [], "", f"{path}: {exc.strerror or exc}"
        return lines, ", ".join(map(str, files)), ""
    if system.which("journalctl") is not None and \
            system.path(str(JOURNAL_SOCKET)).exists():
        try:
            return read_journal(), "the journal", ""
        except (OSError, subprocess.SubprocessError) as exc:
            journal_error = str(exc)
    else:
        journal_error = "no journal"
    for name in map(str, SYSLOG_FILES):
        path = system.path(name)
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8", errors="replace").splitlines(), name, ""
            except OSError as exc:
                return [], "", f"{name}: {exc.strerror or exc}"
    looked = " or ".join(map(str, SYSLOG_FILES))
    return [], "", f"{journal_error} and no {looked} (name one with --log)"


def iso_epoch(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def socket_state(path: Path) -> str:
    """"reachable" when a datagram can be addressed to the socket (connect, nothing sent)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(str(path))
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    return "reachable"


# ---------------------------------------------------------------------------------------------
# Confinement
# ---------------------------------------------------------------------------------------------


def apparmor(system: System, found: list[doctor.Daemon]) -> doctor.AppArmor:
    enabled = (_read(system.path("/sys/module/apparmor/parameters/enabled")) or "").strip()
    if enabled != "Y":
        return doctor.AppArmor(False)
    labels = {}
    for daemon in found:
        label = _read(system.proc / str(daemon.pid) / "attr" / "apparmor" / "current") or \
            _read(system.proc / str(daemon.pid) / "attr" / "current") or ""
        labels[daemon.name] = label.strip("\0\n ")
    rules = {}
    for name in APPARMOR_PROFILES:
        text = _read(system.path(name))
        if text is not None:
            local = _read(system.path(name.replace("/etc/apparmor.d/", "/etc/apparmor.d/local/")))
            rules[name] = bool(_HOOK_RULE_RE.search(text + "\n" + (local or "")))
    return doctor.AppArmor(True, labels, rules)


def selinux(system: System) -> doctor.SELinux:
    enforce = _read(system.path("/sys/fs/selinux/enforce"))
    if enforce is None:
        return doctor.SELinux(False)
    boolean = _read(system.path("/sys/fs/selinux/booleans/virt_hooks_unconfined"))
    unconfined = None if boolean is None else boolean.split()[:1] == ["1"]
    try:
        context = os.getxattr(system.path(HOOK), "security.selinux").decode().strip("\0\n ")
    except OSError:
        context = ""
    expected = ""
    if system.which("matchpathcon") is not None:
        rc, out, _ = system.run(["matchpathcon", "-n", str(HOOK)])
        expected = out.strip() if rc == 0 else ""
    return doctor.SELinux(True, enforce.strip() == "1", unconfined, context, expected)


# ---------------------------------------------------------------------------------------------
# This host's profile
# ---------------------------------------------------------------------------------------------


def profile_facts(system: System, env: Environment, policy: Policy) -> doctor.ProfileFacts:
    kvm = system.path(DEV_KVM).exists()
    configured = str(policy.host_profile) if policy.host_profile is not None else None
    source = configured or str(cache.profile_path(env.run_dir))
    profile = None
    problem = kind = ""
    try:
        if policy.host_profile is not None:
            profile = load_profile(policy.host_profile)
        else:
            boot_id = (_read(system.proc / "sys/kernel/random/boot_id") or "").strip()
            profile = cache.read_cached(env.run_dir, boot_id, system.release)
    except ProfileError as exc:
        problem, kind = str(exc), "corrupt"
    except cache.CacheProblem as exc:
        problem, kind = exc.message, exc.reason
    generation, how = qemu_generation(policy, profile, env.run_dir)
    return doctor.ProfileFacts(system.machine, kvm, configured, source,
                               profile.kernel_release if profile else "", problem, kind,
                               generation, how)


def qemu_generation(policy: Policy, profile: Any, run_dir: Path) -> tuple[str, str]:
    """The QEMU generation the hook will use and how it is found (as psci_hook.hook does)."""
    if policy.qemu_generation != "auto":
        return policy.qemu_generation, "[host] qemu_generation in the configuration"
    if profile is not None and profile.qemu_generation:
        return profile.qemu_generation, "stated by the host profile"
    if profile is not None and profile.qemu_version:
        return (qemu_generation_for_version(profile.qemu_version),
                f"QEMU {profile.qemu_version}, from the host profile")
    cached = read_qemu_version(run_dir)
    if cached is not None:
        return (qemu_generation_for_version(cached),
                f"QEMU {cached}, cached by psci-hook refresh in {run_dir}")
    return "legacy", "assumed: no QEMU version is known; psci-hook refresh caches it"


def probe_unit(system: System) -> tuple[str | None, str | None]:
    if not system.systemd or system.which("systemctl") is None:
        return None, None
    _, out, _ = system.run(["systemctl", "show", "--property=ActiveState,Result",
                             "psci-hook-probe.service"])
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return values.get("ActiveState", "unknown"), values.get("Result")


def unit_state(system: System, unit: str) -> str | None:
    if not system.systemd or system.which("systemctl") is None:
        return None
    _, out, _ = system.run(["systemctl", "is-active", unit])
    return out.strip() or "unknown"


# ---------------------------------------------------------------------------------------------
# Guests, through libvirt
# ---------------------------------------------------------------------------------------------


def guests(system: System, uri: str | None, policy: Policy
           ) -> tuple[list[doctor.Guest] | None, int, str]:
    """The running guests the hook acts on, with what their records say; (None, 0, why) when
    libvirt cannot be asked."""
    from lxml import etree

    from psci_hook.domainxml import DomainXMLError, parse_domain
    from psci_hook.libvirt_client import Client, LibvirtCallFailed, LibvirtUnavailable
    from psci_hook.record import RecordError, read_record
    from psci_hook.recorder import applicable

    try:
        client = Client.open(uri)
    except LibvirtUnavailable as exc:
        return None, 0, str(exc)
    found: list[doctor.Guest] = []
    skipped = 0
    try:
        hostname = client.hostname()
        caps = etree.fromstring(client.capabilities().encode(),
                                etree.XMLParser(resolve_entities=False, no_network=True))
        host_uuid = (caps.findtext("host/uuid") or "").strip().lower()
        for dom in sorted(client.running(), key=client.name):
            try:
                domain = parse_domain(client.live_xml(dom))
            except (DomainXMLError, LibvirtCallFailed):
                continue
            if applicable(domain, policy) is not None:
                skipped += 1
                continue
            pid_text = _read(system.path(f"/run/libvirt/qemu/{domain.name}.pid")) or ""
            started = start_time(system, int(pid_text)) if pid_text.strip().isdigit() else None
            try:
                record = read_record(domain.root)
            except RecordError as exc:
                found.append(doctor.Guest(domain.name, True, record_error=str(exc)))
                continue
            if record is None:
                found.append(doctor.Guest(domain.name, False, qemu_started=started))
                continue
            origin = record.origin
            mine = (origin.host_uuid.lower() == host_uuid if origin.host_uuid and host_uuid
                    else origin.host == hostname)
            found.append(doctor.Guest(domain.name, True, "", origin.event, origin.host,
                                      origin.time, mine, started, record.status))
    except (LibvirtUnavailable, LibvirtCallFailed, etree.XMLSyntaxError) as exc:
        return None, 0, first_line(exc)
    finally:
        client.close()
    return found, skipped, ""


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--uri", default=None,
                        help="libvirt connection URI for the running guests (default: "
                        "libvirt's default, qemu:///system for root)")
    parser.add_argument("--json", action="store_true", help="the same checks as JSON")
    parser.add_argument("--log", action="append", type=Path, default=[], metavar="FILE",
                        help="read psci-hook's events from this syslog file (default: the "
                        "journal, else /var/log/syslog or /var/log/messages)")


def diagnose(env: Environment, uri: str | None, log_files: Sequence[Path],
             system: System | None = None) -> list[Check]:
    system = system or System()
    checks: list[Check] = []
    reinstall = reinstall_command(system)

    hook = hook_file(system)
    checks.append(doctor.check_hook_file(hook, reinstall))
    probe = import_probe(system, hook.shebang) if hook.regular else None
    interp = doctor.check_interpreter(hook, probe, __version__, PACKAGE_DIR, reinstall)
    others = other_hooks(system)
    order = doctor.check_order(hook, others)
    checks += [c for c in (interp, order) if c is not None]

    config_path = env.config_path
    # The hook decides with what it could read of a broken file, so that is what doctor shows.
    reading = read_policy(config_path)
    policy: Policy | None = None if reading.problems else reading.policy
    policy_error = "; ".join(reading.messages)
    effective = reading.policy

    lines, read_from, read_error = log_lines(system, log_files)
    decisions = list(events_from_lines(lines, EVENT))
    last = max(decisions, key=lambda e: str(e.get("timestamp", "")), default=None)
    service = [e for e in events_from_lines(lines, RECORD_EVENT)
               if e.get("trigger") == "service" and e.get("action") in WATCHER_STATES]

    procs = processes(system)
    running = daemons(system, procs)
    units = sorted({d.unit for d in running if d.unit})
    reloads = unit_reloads(system, units, hook.ctime or 0.0) if hook.ctime else None
    checks += doctor.check_loaded(hook, running, others, reloads,
                                  iso_epoch(last.get("timestamp")) if last else None)

    checks.append(doctor.check_apparmor(apparmor(system, running)))
    checks.append(doctor.check_selinux(selinux(system), str(HOOK)))

    checks += doctor.check_profile(profile_facts(system, env, effective), effective,
                                   str(config_path))
    if system.machine == "aarch64":
        state, result = probe_unit(system)
        unit_check = doctor.check_probe_unit(state, result)
        if unit_check is not None:
            checks.append(unit_check)

    last_service = service[-1] if service else {}
    checks.append(doctor.check_watcher(doctor.Watcher(
        watchers(procs), unit_state(system, "psci-hook-watch.service"),
        str(last_service.get("action", "")), str(last_service.get("timestamp", "")))))
    found, skipped, guest_error = guests(system, uri, effective)
    checks += doctor.check_guests(found, skipped, guest_error, effective)

    checks += doctor.check_policy(policy, policy_error, str(config_path), config_path.exists())
    checks += doctor.check_logging(doctor.Logging(
        effective.log_target, socket_state(effective.journal_socket),
        socket_state(effective.syslog_socket), read_from, read_error, len(decisions), last))
    return checks


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    checks = diagnose(env, args.uri, args.log)
    if args.json:
        env.write_out(doctor.render_json(checks, __version__))
    else:
        env.write_out(doctor.render_text(checks))
    return ExitStatus.PROBLEMS_FOUND if doctor.failed(checks) else ExitStatus.OK

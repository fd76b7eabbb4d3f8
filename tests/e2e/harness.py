"""Two real libvirt "hosts" on one Debian machine, for end-to-end hook tests (stdlib only).

Each host ``h`` in {a, b} is a mount + UTS namespace (``unshare --mount --uts --propagation
private``) held open by an anchor process (``sleep infinity``). Inside it, private bind mounts from
``$ROOT/<h>/...`` cover ``/etc/libvirt``, ``/run/libvirt``, ``/var/lib/libvirt``,
``/var/cache/libvirt``, ``/var/log/libvirt``, ``/etc/psci-hook``, ``/run/psci-hook``,
``/etc/hosts`` and ``/dev/log``; the hostname is ``host-<h>``. The host runs its own ``rsyslogd``
(listening on ``$ROOT/<h>/devlog``, which is ``/dev/log`` inside the namespace, writing
``$ROOT/<h>/syslog``), ``virtlogd -d`` and ``libvirtd -d``, all started with a clean environment
(``env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8``) so that hooks never see
a developer's PATH. Clients reach a host with
``qemu+unix:///system?socket=$ROOT/<h>/run/libvirt/libvirt-sock``.

Everything the harness starts or creates outside ``$ROOT`` (processes, the libvirt-qemu
user/group, mount-point directories, an empty ``/dev/log`` mount point) is recorded in
``$ROOT/state.json`` as it happens, so that teardown -- also the teardown of a crashed earlier
run, which ``up()`` does first -- removes exactly that. Processes are signalled only after their
cmdline and mount namespace match the record.

Command line, for manual use::

    python3 tests/e2e/harness.py up        # start both hosts, print their URIs
    python3 tests/e2e/harness.py up --psci-hook .venv/bin/psci-hook   # ... with psci-hook
    python3 tests/e2e/harness.py down      # tear down (also a stale run)
    python3 tests/e2e/harness.py status

README.md, "The end-to-end harness: two libvirt hosts on one machine", describes what it builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Union

DEFAULT_ROOT = Path(os.environ.get("PSCI_HOOK_E2E_ROOT", "/tmp/psci-hook-e2e"))
LOCK_PATH = Path("/tmp/psci-hook-e2e.lock")
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CLEAN_ENV = ("env", "-i", f"PATH={CLEAN_PATH}", "HOME=/root", "LANG=C.UTF-8")
QEMU_USER = "libvirt-qemu"
REAPER = Path(__file__).resolve().parent / "reaper.py"

# The guest's whole "kernel": poll PL061 GPIO pin 3 (the power button that `virsh shutdown`
# presses when ACPI is off), then call PSCI SYSTEM_OFF via hvc.
#   movz x1,#0x03fc; movk x1,#0x0903,lsl#16; 1: ldr w2,[x1]; tbz w2,#3,1b;
#   movz x0,#0x0008; movk x0,#0x8400,lsl#16; hvc #0; b .
GUEST_PROGRAM = bytes.fromhex("817f80d26120a1f2220040b9e2ff1f36000180d20080b0f2020000d400000014")

# Directories bind-mounted privately into each host (target in the namespace).
PRIVATE_DIRS = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
    "/etc/psci-hook",
    "/run/psci-hook",
)
# Where the e2e probe hook (tests/e2e/hooks/) looks for its switches, inside a host.
PROBE_FLAGS_DIR = "/etc/libvirt/e2e-probe"
PROBE_CALLS_LOG = "/var/log/libvirt/e2e-hook-calls.jsonl"


class HarnessError(RuntimeError):
    pass


@dataclass(frozen=True)
class HostSpec:
    key: str
    name: str
    addr: str
    uuid: str
    port_min: int
    port_max: int


HOST_SPECS = {
    "a": HostSpec("a", "host-a", "127.0.0.2", "0e2e0000-0000-4000-8000-00000000000a", 49152, 49183),
    "b": HostSpec("b", "host-b", "127.0.0.3", "0e2e0000-0000-4000-8000-00000000000b", 49184, 49215),
}

HostRef = Union[str, HostSpec]


# --------------------------------------------------------------------------- process helpers


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _cmdline(pid: int) -> list[str]:
    """argv of a live process; [] for a zombie or a process that is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _matches(pid: int, program: str, ns: str | None) -> bool:
    """True if pid is alive, runs `program` (basename of argv[0]) and lives in mount ns `ns`."""
    argv = _cmdline(pid)
    if not argv or not _alive(pid):
        return False
    if os.path.basename(argv[0]) != program:
        return False
    return ns is None or _mnt_ns(pid) == ns


def _procs_in_ns(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _mnt_ns(int(entry)) == ns and _alive(int(entry)):
            pids.append(int(entry))
    return pids


def _wait_dead(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _terminate(pids: Sequence[int], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    left = _wait_dead(pids, timeout)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _wait_dead(left, 5.0)


def _readline(stream: IO[bytes], timeout: float) -> str:
    """One line from a pipe, or "" at EOF or after `timeout` seconds."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline().decode(errors="replace") if ready else ""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- configuration


def _libvirtd_conf(spec: HostSpec) -> str:
    return f"""\
# psci-hook e2e harness: {spec.name}
host_uuid = "{spec.uuid}"
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


def _qemu_conf(spec: HostSpec) -> str:
    return f"""\
# psci-hook e2e harness: {spec.name}
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
# QEMU stays in the host's mount namespace (no private /dev per domain), so that teardown can
# verify a QEMU process belongs to this host by its mount namespace.
namespaces = [ ]
migration_host = "{spec.addr}"
migration_address = "{spec.addr}"
migration_port_min = {spec.port_min}
migration_port_max = {spec.port_max}
"""


def _rsyslog_conf(hostdir: Path) -> str:
    # Debian's default file format (RFC 3339 timestamps, RSYSLOG_FileFormat), one file per host.
    return f"""\
# psci-hook e2e harness: this host's syslog. /dev/log inside the host is {hostdir}/devlog.
global(workDirectory="{hostdir}/rsyslog")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{hostdir}/devlog" CreatePath="on" RateLimit.Interval="0")
*.* action(type="omfile" file="{hostdir}/syslog" template="RSYSLOG_FileFormat")
"""


def _etc_hosts() -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{s.addr}\t{s.name}" for s in HOST_SPECS.values()]
    return "\n".join(lines) + "\n"


def guest_xml(
    name: str,
    kernel: Path,
    metadata: str = "",
    domain_type: str = "qemu",
    cpu_model: str = "cortex-a57",
) -> str:
    """A tiny aarch64 TCG guest: virt board, 64 MiB, 1 vCPU, no disk, no NIC."""
    meta = f"\n  <metadata>{metadata}</metadata>" if metadata else ""
    return f"""\
<domain type='{domain_type}'>
  <name>{name}</name>{meta}
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='aarch64' machine='virt'>hvm</type>
    <kernel>{kernel}</kernel>
  </os>
  <cpu mode='custom' match='exact'>
    <model fallback='forbid'>{cpu_model}</model>
  </cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


# --------------------------------------------------------------------------- the harness


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def __iter__(self) -> Iterator[object]:  # (rc, stdout, stderr) = result
        return iter((self.rc, self.stdout, self.stderr))


class TwoHosts:
    """Two libvirt hosts, ``a`` (host-a) and ``b`` (host-b). Use ``up()`` / ``down()``."""

    def __init__(
        self,
        root: Path = DEFAULT_ROOT,
        hook_files: Mapping[str, Path] | None = None,
        before_start: Callable[[TwoHosts, HostSpec], None] | None = None,
        log: bool = True,
    ) -> None:
        self.root = Path(root)
        self.hook_files = dict(hook_files or {})
        # Called for each host after its tree is built and before any of its daemons start:
        # the place to install hooks (libvirt discovers them at daemon start or SIGHUP only).
        self.before_start = before_start
        self.specs = HOST_SPECS
        self.kernel = self.root / "guest" / "psci-off.bin"
        self.saves = self.root / "saves"
        self._state: dict = {}
        self._lock_fd: int | None = None
        self._children: list[subprocess.Popen] = []
        self._log = log
        self.timings: dict[str, float] = {}

    # ---- paths and names

    def spec(self, host: HostRef) -> HostSpec:
        if isinstance(host, HostSpec):
            return host
        key = host[-1] if host.startswith("host-") else host
        if key not in self.specs:
            raise HarnessError(f"no host {host!r}: use a, b, host-a or host-b")
        return self.specs[key]

    def hostdir(self, host: HostRef) -> Path:
        return self.root / self.spec(host).key

    def path(self, host: HostRef, inside: str) -> Path:
        """Where a path inside a host (under one of its private mounts) is, seen from outside."""
        for target in (*PRIVATE_DIRS, "/etc/hosts"):
            if inside == target or inside.startswith(target + "/"):
                return self.hostdir(host) / target.lstrip("/") / inside[len(target) :].lstrip("/")
        raise HarnessError(f"{inside} is not private to a host")

    def uri(self, host: HostRef) -> str:
        sock = self.path(host, "/run/libvirt/libvirt-sock")
        return f"qemu+unix:///system?socket={sock}"

    def say(self, message: str) -> None:
        if self._log:
            print(f"[e2e harness] {message}", file=sys.stderr, flush=True)

    # ---- state file

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def _host_state(self, host: HostRef) -> dict:
        return self._state.setdefault("hosts", {}).setdefault(self.spec(host).key, {})

    def _created(self) -> dict:
        return self._state.setdefault(
            "created", {"dirs": [], "devlog": False, "user": False, "group": False}
        )

    # ---- locking (one harness per machine: addresses, ports and /dev/log are global)

    def _lock(self, timeout: float = 900.0) -> None:
        if self._lock_fd is not None:
            return
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise HarnessError(f"another e2e harness holds {LOCK_PATH}") from None
                if not told:
                    self.say(f"waiting for another e2e harness run ({LOCK_PATH})")
                    told = True
                time.sleep(1.0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- bring up

    def up(self) -> None:
        self._check_prerequisites()
        waited = time.monotonic()
        self._lock()
        started = time.monotonic()
        self.timings["lock_wait"] = started - waited
        try:
            if self.root.exists():
                self.say(f"cleaning up a previous run in {self.root}")
                self._teardown_from_disk()
            self._build_tree()
            if self.before_start is not None:
                for spec in self.specs.values():
                    self.before_start(self, spec)
            self._ensure_system_prerequisites()
            for spec in self.specs.values():
                self._start_host(spec)
            self._wait_ready()
        except BaseException:
            self.say("setup failed, tearing down")
            with contextlib.suppress(Exception):
                self.down()
            raise
        self.timings["setup"] = time.monotonic() - started
        self.say(f"both hosts up in {self.timings['setup']:.1f} s")

    def _check_prerequisites(self) -> None:
        if os.geteuid() != 0:
            raise HarnessError("the e2e harness needs root (namespaces, bind mounts, daemons)")
        missing = [
            tool
            for tool in (
                "libvirtd",
                "virtlogd",
                "virsh",
                "qemu-system-aarch64",
                "rsyslogd",
                "unshare",
                "nsenter",
            )
            if shutil.which(tool, path=CLEAN_PATH) is None
        ]
        if missing:
            raise HarnessError(
                f"missing {', '.join(missing)}: install scripts/deps/e2e.apt (scripts/setup)"
            )

    def _build_tree(self) -> None:
        self.root.mkdir(parents=True)
        self._state = {"version": 1, "root": str(self.root)}
        self._created()
        self._save_state()
        self.kernel.parent.mkdir()
        self.kernel.write_bytes(GUEST_PROGRAM)
        self.saves.mkdir()
        for spec in self.specs.values():
            hd = self.hostdir(spec)
            for target in PRIVATE_DIRS:
                (hd / target.lstrip("/")).mkdir(parents=True)
            (hd / "rsyslog").mkdir()
            (hd / "etc" / "hosts").write_text(_etc_hosts())
            self.path(spec, "/etc/libvirt/libvirtd.conf").write_text(_libvirtd_conf(spec))
            self.path(spec, "/etc/libvirt/qemu.conf").write_text(_qemu_conf(spec))
            (hd / "rsyslog.conf").write_text(_rsyslog_conf(hd))
            (hd / "syslog").touch()
            self.path(spec, PROBE_FLAGS_DIR).mkdir()
            hooks = self.path(spec, "/etc/libvirt/hooks/qemu.d")
            hooks.mkdir(parents=True)
            for name, source in self.hook_files.items():
                self.install_hook(spec, name, Path(source))

    def install_hook(
        self, host: HostRef, name: str, source: Path, shebang: str | None = None
    ) -> Path:
        """Copy an executable hook into the host's hooks/qemu.d/ (call before up() or reload)."""
        dest = self.path(host, f"/etc/libvirt/hooks/qemu.d/{name}")
        data = source.read_bytes()
        if shebang is not None:
            first, _, rest = data.partition(b"\n")
            if first.startswith(b"#!"):
                data = f"#!{shebang}\n".encode() + rest
        dest.write_bytes(data)
        dest.chmod(0o755)
        return dest

    def _ensure_system_prerequisites(self) -> None:
        created = self._created()
        for target in PRIVATE_DIRS:
            if not os.path.lexists(target):
                os.makedirs(target)
                created["dirs"].append(target)
                self._save_state()
        # The libvirt QEMU driver parses its built-in default user even with user = "root".
        if _getent("group", QEMU_USER) is None:
            subprocess.run(["groupadd", "--system", QEMU_USER], check=True)
            created["group"] = True
            self._save_state()
        if _getent("passwd", QEMU_USER) is None:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--gid",
                    QEMU_USER,
                    "--no-create-home",
                    "--home-dir",
                    "/var/lib/libvirt",
                    "--shell",
                    "/usr/sbin/nologin",
                    QEMU_USER,
                ],
                check=True,
            )
            created["user"] = True
            self._save_state()
        # /dev/log is bind-mounted per host; the mount point must exist in the root namespace.
        if not os.path.lexists("/dev/log"):
            Path("/dev/log").touch()
            created["devlog"] = True
            self._save_state()
        elif not os.path.exists("/dev/log"):
            raise HarnessError("/dev/log is a dangling symlink: cannot bind a private one over it")

    def _ns(self, host: HostRef, *argv: str, env: bool = True) -> list[str]:
        anchor = self._host_state(host)["anchor"]
        prefix = ["nsenter", "-t", str(anchor), "-m", "-u", "--"]
        return prefix + (list(CLEAN_ENV) if env else []) + list(argv)

    def _run_ns(self, host: HostRef, *argv: str, timeout: float = 30.0) -> None:
        proc = subprocess.run(
            self._ns(host, *argv), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise HarnessError(
                f"{self.spec(host).name}: {' '.join(argv)} failed ({proc.returncode}): "
                f"{proc.stderr.strip()}"
            )

    def _start_host(self, spec: HostSpec) -> None:
        hd = self.hostdir(spec)
        hs = self._host_state(spec)
        own_ns = _mnt_ns(os.getpid())
        anchor = subprocess.Popen(
            ["unshare", "--mount", "--uts", "--propagation", "private", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._children.append(anchor)
        hs["anchor"] = anchor.pid
        self._save_state()
        wait_for(
            lambda: _mnt_ns(anchor.pid) != own_ns and _cmdline(anchor.pid)[:1] == ["sleep"],
            10,
            f"{spec.name}'s namespace",
        )
        hs["ns"] = _mnt_ns(anchor.pid)
        self._save_state()
        self._run_ns(spec, "hostname", spec.name)
        for target in PRIVATE_DIRS:
            self._run_ns(spec, "mount", "--bind", str(hd / target.lstrip("/")), target)
        self._run_ns(spec, "mount", "--bind", str(hd / "etc" / "hosts"), "/etc/hosts")
        if os.path.isdir("/run/systemd/journal"):
            # Hide a real journald from the host's processes: they log to our /dev/log only.
            (hd / "no-journal").mkdir(exist_ok=True)
            self._run_ns(spec, "mount", "--bind", str(hd / "no-journal"), "/run/systemd/journal")

        # The host's syslog daemon (foreground, our child), then its socket as /dev/log.
        rsyslogd = subprocess.Popen(
            self._ns(
                spec,
                "rsyslogd",
                "-n",
                "-f",
                str(hd / "rsyslog.conf"),
                "-i",
                str(hd / "rsyslog" / "rsyslogd.pid"),
            ),
            stdin=subprocess.DEVNULL,
            stdout=(hd / "rsyslogd.out").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._children.append(rsyslogd)
        hs["rsyslogd"] = rsyslogd.pid
        self._save_state()
        wait_for(
            lambda: (hd / "devlog").exists() or rsyslogd.poll() is not None,
            10,
            f"{spec.name}'s rsyslogd socket",
        )
        if rsyslogd.poll() is not None:
            raise HarnessError(f"{spec.name}: rsyslogd exited: {(hd / 'rsyslogd.out').read_text()}")
        self._run_ns(spec, "mount", "--bind", str(hd / "devlog"), "/dev/log")

        self._start_daemon(spec, "virtlogd")
        self._start_daemon(spec, "libvirtd")

    def _start_daemon(self, host: HostRef, program: str) -> int:
        spec = self.spec(host)
        hs = self._host_state(spec)
        pidfile = self.path(spec, f"/run/libvirt/{program}.pid")
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        out = (self.hostdir(spec) / f"{program}.out").open("ab")
        with out:
            # Through the reaper: the daemon and its QEMUs are reaped as soon as they exit.
            reaper = subprocess.Popen(
                self._ns(
                    spec, "python3", str(REAPER), program, "-d", "-p", f"/run/libvirt/{program}.pid"
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                start_new_session=True,
            )
        self._children.append(reaper)
        hs.setdefault("reapers", []).append(reaper.pid)
        self._save_state()
        assert reaper.stdout is not None
        with reaper.stdout:
            status = _readline(reaper.stdout, 60).strip()
        if status != "0":
            raise HarnessError(
                f"{spec.name}: {program} -d failed ({status or 'no status'}), "
                f"see {self.hostdir(spec) / (program + '.out')}; "
                + self._daemon_log_tail(spec, program)
            )

        def pid_from_file() -> int | None:
            try:
                pid = int(pidfile.read_text().strip() or 0)
            except (OSError, ValueError):
                return None
            return pid or None

        try:
            pid = wait_for(pid_from_file, 10, f"{spec.name}'s {program} pid file")
        except HarnessError as exc:
            raise HarnessError(f"{exc}; {self._daemon_log_tail(spec, program)}") from None
        if not _matches(pid, program, hs["ns"]):
            raise HarnessError(
                f"{spec.name}: {program} (pid {pid}) is not running; "
                + self._daemon_log_tail(spec, program)
            )
        hs[program] = pid
        self._save_state()
        return int(pid)

    def _daemon_log_tail(self, host: HostRef, program: str) -> str:
        """The last errors a daemon logged (the harness removes the logs at teardown)."""
        log = self.path(host, f"/var/log/libvirt/{program}.log")
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if " error : " in ln]
        except OSError:
            lines = []
        if not lines:
            return "no error logged"
        return "its last errors: " + " / ".join(ln.split(" error : ", 1)[1] for ln in lines[-3:])

    def _wait_ready(self, hosts: Sequence[HostRef] | None = None) -> None:
        """Wait until each libvirtd answers API calls (the first one probes QEMU: ~4 s)."""
        errors: dict[str, str] = {}

        def probe(spec: HostSpec) -> None:
            deadline = time.monotonic() + 60
            last = ""
            while time.monotonic() < deadline:
                if not _matches(
                    self._host_state(spec)["libvirtd"], "libvirtd", self._host_state(spec)["ns"]
                ):
                    errors[spec.key] = "libvirtd exited; " + self._daemon_log_tail(spec, "libvirtd")
                    return
                res = self.virsh(
                    spec,
                    "domcapabilities",
                    "--arch",
                    "aarch64",
                    "--virttype",
                    "qemu",
                    "--machine",
                    "virt",
                    check=False,
                    timeout=60,
                )
                if res.rc == 0:
                    return
                last = res.stderr.strip()
                time.sleep(0.1)
            errors[spec.key] = f"no answer: {last}"

        specs = [self.spec(h) for h in (hosts or list(self.specs))]
        threads = [threading.Thread(target=probe, args=(s,)) for s in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise HarnessError("; ".join(f"host-{k}: {v}" for k, v in sorted(errors.items())))

    # ---- tear down

    def down(self) -> None:
        started = time.monotonic()
        self._lock()
        try:
            if self.root.exists():
                self._teardown_from_disk()
        finally:
            for child in self._children:
                with contextlib.suppress(Exception):
                    child.wait(timeout=5)
            self._children.clear()
            self._unlock()
        self.timings["teardown"] = time.monotonic() - started
        self.say(f"teardown in {self.timings['teardown']:.1f} s")

    def _teardown_from_disk(self) -> None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            state = {}
        if state and state.get("root") != str(self.root):
            raise HarnessError(f"{self.state_path} belongs to {state.get('root')}: not touching it")
        if not state and self.root.exists() and any(self.root.iterdir()):
            raise HarnessError(
                f"{self.root} exists without a harness state file: remove it by hand"
            )
        self._state = state
        for key, hs in sorted(state.get("hosts", {}).items()):
            self._stop_host(key, hs)
        created = state.get("created", {})
        for target in reversed(created.get("dirs", [])):
            try:
                os.rmdir(target)  # only if empty: something else may have put files there
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.say(f"left {target} in place (created by the harness): {exc.strerror}")
        if created.get("devlog"):
            with contextlib.suppress(OSError):
                st = os.lstat("/dev/log")
                if (
                    os.path.isfile("/dev/log")
                    and not os.path.islink("/dev/log")
                    and st.st_size == 0
                ):
                    os.unlink("/dev/log")
        if created.get("user"):
            subprocess.run(["userdel", QEMU_USER], check=False, capture_output=True)
        if created.get("group") and _getent("group", QEMU_USER) is not None:
            subprocess.run(["groupdel", QEMU_USER], check=False, capture_output=True)
        shutil.rmtree(self.root)
        self._state = {}

    def _stop_host(self, key: str, hs: dict) -> None:
        ns = hs.get("ns")
        hostdir = self.root / key
        services = [
            svc["pid"]
            for svc in hs.get("services", [])
            if ns
            and _alive(svc["pid"])
            and _mnt_ns(svc["pid"]) == ns
            and any(svc["match"] in arg for arg in _cmdline(svc["pid"]))
        ]
        _terminate(services)
        libvirtd = hs.get("libvirtd")
        if ns and libvirtd and _matches(libvirtd, "libvirtd", ns):
            # Stop guests the libvirt way first (quick: they have no disks).
            res = _run(
                [
                    "virsh",
                    "-c",
                    f"qemu+unix:///system?socket={hostdir}/run/libvirt/libvirt-sock",
                    "list",
                    "--name",
                ],
                timeout=15,
            )
            for name in res.stdout.split() if res.rc == 0 else []:
                _run(
                    [
                        "virsh",
                        "-c",
                        f"qemu+unix:///system?socket={hostdir}/run/libvirt/libvirt-sock",
                        "destroy",
                        name,
                    ],
                    timeout=15,
                )
            _terminate([libvirtd])
        if ns:
            # QEMU processes of this host: from the private pid files, then any left in the ns.
            qemus = []
            for pidfile in (hostdir / "run" / "libvirt" / "qemu").glob("*.pid"):
                with contextlib.suppress(OSError, ValueError):
                    pid = int(pidfile.read_text().strip())
                    if _matches(pid, "qemu-system-aarch64", ns):
                        qemus.append(pid)
            qemus += [
                p
                for p in _procs_in_ns(ns)
                if p not in qemus and _matches(p, "qemu-system-aarch64", ns)
            ]
            _terminate(qemus)
        for program in ("libvirtd", "virtlogd", "rsyslogd"):
            pid = hs.get(program)
            if ns and pid and _matches(pid, program, ns):
                _terminate([pid])
        anchor = hs.get("anchor")
        if anchor and ns and _matches(anchor, "sleep", ns):
            _terminate([anchor])
        if ns:
            known = ("libvirtd", "virtlogd", "rsyslogd", "qemu-system-aarch64", "sleep", "nsenter")
            stray = [
                p
                for p in _procs_in_ns(ns)
                if os.path.basename((_cmdline(p) or [""])[0]) in known or str(REAPER) in _cmdline(p)
            ]
            _terminate(stray)

    # ---- libvirt client helpers

    def virsh(self, host: HostRef, *args: str, check: bool = True, timeout: float = 120) -> Result:
        res = _run(["virsh", "-c", self.uri(host), *args], timeout=timeout)
        if check and res.rc != 0:
            raise HarnessError(
                f"virsh {' '.join(args)} on {self.spec(host).name} failed ({res.rc}): "
                f"{res.stderr.strip()}"
            )
        return res

    def define(self, host: HostRef, xml: str) -> str:
        """Define a persistent domain from XML; returns its name."""
        name = ET.fromstring(xml).findtext("name") or ""
        path = self.root / f"define-{name}.xml"
        path.write_text(xml)
        self.virsh(host, "define", str(path))
        return name

    def start(self, host: HostRef, name: str) -> None:
        self.virsh(host, "start", name)

    def define_and_start(self, host: HostRef, name: str, metadata: str = "") -> str:
        self.define(host, guest_xml(name, self.kernel, metadata=metadata))
        self.start(host, name)
        return name

    def migrate(
        self,
        src: HostRef,
        dst: HostRef,
        name: str,
        live: bool = True,
        extra: Sequence[str] = (),
        timeout: float = 120,
    ) -> Result:
        args = ["migrate", *(["--live"] if live else []), *extra, name, self.uri(dst)]
        return self.virsh(src, *args, check=False, timeout=timeout)

    def save(self, host: HostRef, name: str) -> Path:
        path = self.saves / f"{name}.sav"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.virsh(host, "save", name, str(path))
        return path

    def restore(self, host: HostRef, path: Path) -> Result:
        return self.virsh(host, "restore", str(path), check=False)

    def dumpxml(self, host: HostRef, name: str, inactive: bool = False) -> str:
        return self.virsh(host, "dumpxml", *(["--inactive"] if inactive else []), name).stdout

    def domstate(self, host: HostRef, name: str) -> str | None:
        res = self.virsh(host, "domstate", name, check=False)
        return res.stdout.strip() if res.rc == 0 else None

    def is_running(self, host: HostRef, name: str) -> bool:
        return self.domstate(host, name) == "running"

    def domains(self, host: HostRef, all_: bool = True) -> list[str]:
        res = self.virsh(host, "list", "--name", *(["--all"] if all_ else []))
        return res.stdout.split()

    def qemu_pid(self, host: HostRef, name: str) -> int | None:
        try:
            pid = int(self.path(host, f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _matches(pid, "qemu-system-aarch64", self._host_state(host)["ns"]) else None

    def clear_domains(self) -> None:
        """Destroy and undefine every domain on both hosts (in parallel); remove save files."""

        errors: list[BaseException] = []

        def clear(spec: HostSpec) -> None:
            try:
                for name in self.domains(spec, all_=False):
                    self.virsh(spec, "destroy", name, check=False)
                for name in self.domains(spec):
                    self.virsh(spec, "undefine", "--managed-save", name, check=False)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=clear, args=(s,)) for s in self.specs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for sav in self.saves.glob("*"):
            sav.unlink()

    # ---- host configuration

    def set_profile(self, host: HostRef, source: Path) -> None:
        """Install a host profile as the host's /etc/psci-hook/host.json."""
        shutil.copyfile(source, self.path(host, "/etc/psci-hook/host.json"))

    def set_config(self, host: HostRef, text: str) -> None:
        """Write the host's /etc/psci-hook/psci-hook.conf."""
        self.path(host, "/etc/psci-hook/psci-hook.conf").write_text(text)

    def remove_config(self, host: HostRef) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(host, "/etc/psci-hook/psci-hook.conf").unlink()

    def daemon_pid(self, host: HostRef, program: str = "libvirtd") -> int:
        return int(self._host_state(host)[program])

    def restart_daemon(self, host: HostRef) -> None:
        """Stop and start libvirtd inside its namespace (guests keep running)."""
        spec = self.spec(host)
        hs = self._host_state(spec)
        pid = hs.get("libvirtd")
        if pid and _matches(pid, "libvirtd", hs["ns"]):
            _terminate([pid])
        self._start_daemon(spec, "libvirtd")
        self._wait_ready([spec])

    def reload(self, host: HostRef) -> None:
        """SIGHUP libvirtd: it looks for hook scripts again."""
        spec = self.spec(host)
        hs = self._host_state(spec)
        if not _matches(hs["libvirtd"], "libvirtd", hs["ns"]):
            raise HarnessError(f"{spec.name}: libvirtd is not running")
        os.kill(hs["libvirtd"], signal.SIGHUP)
        time.sleep(0.3)
        self._wait_ready([spec])

    def spawn(self, host: HostRef, *argv: str, match: str) -> subprocess.Popen:
        """Start a long-running command inside a host, like a service (clean environment, own
        session, output to $ROOT/<h>/service-<pid>.out). Recorded for teardown, which signals
        it only while it is in the host's namespace with `match` in its cmdline."""
        spec = self.spec(host)
        hs = self._host_state(spec)
        out = (self.hostdir(spec) / f"service-{len(hs.get('services', []))}.out").open("wb")
        with out:
            proc = subprocess.Popen(
                self._ns(spec, *argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children.append(proc)
        hs.setdefault("services", []).append({"pid": proc.pid, "match": match})
        self._save_state()
        return proc

    def stop_spawned(self, host: HostRef, proc: subprocess.Popen, timeout: float = 10) -> int:
        """SIGTERM a spawned command and reap it; returns its exit status."""
        hs = self._host_state(host)
        if proc.poll() is None and _mnt_ns(proc.pid) == hs["ns"]:
            proc.terminate()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait(timeout=5)
        hs["services"] = [s for s in hs.get("services", []) if s["pid"] != proc.pid]
        self._save_state()
        return rc

    def run_in(
        self, host: HostRef, *argv: str, stdin: str | None = None, timeout: float = 60
    ) -> Result:
        """Run a command inside a host (its mounts and hostname, clean environment)."""
        proc = subprocess.run(
            self._ns(host, *argv), input=stdin, capture_output=True, text=True, timeout=timeout
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # ---- logs

    @property
    def syslog_paths(self) -> dict[str, Path]:
        return {s.name: self.hostdir(s) / "syslog" for s in self.specs.values()}

    def log_mark(self, host: HostRef) -> int:
        return (self.hostdir(host) / "syslog").stat().st_size

    def read_log(self, host: HostRef, since: int = 0) -> str:
        """The host's syslog (everything its processes sent to /dev/log), from offset `since`."""
        with (self.hostdir(host) / "syslog").open("rb") as f:
            f.seek(since)
            return f.read().decode(errors="replace")

    def wait_log(self, host: HostRef, needle: str, since: int = 0, timeout: float = 5.0) -> str:
        """The host's syslog from `since`, once it contains `needle` (or after `timeout` s:
        the caller asserts on the text)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.read_log(host, since)
            if needle in text or time.monotonic() > deadline:
                return text
            time.sleep(0.05)

    # ---- the e2e probe hook (tests/e2e/hooks/10-e2e-probe)

    def probe_flag(self, host: HostRef, flag: str, on: bool = True) -> None:
        path = self.path(host, f"{PROBE_FLAGS_DIR}/{flag}")
        if on:
            path.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def clear_probe(self) -> None:
        for spec in self.specs.values():
            for flag in self.path(spec, PROBE_FLAGS_DIR).glob("*"):
                flag.unlink()
            with contextlib.suppress(FileNotFoundError):
                self.path(spec, PROBE_CALLS_LOG).unlink()

    def hook_calls(self, host: HostRef) -> list[dict]:
        try:
            text = self.path(host, PROBE_CALLS_LOG).read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def _run(argv: Sequence[str], timeout: float = 60, stdin: str | None = None) -> Result:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=stdin
        )
    except subprocess.TimeoutExpired as exc:
        return Result(124, str(exc.stdout or ""), f"timed out after {timeout} s: {argv}")
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _getent(database: str, key: str) -> str | None:
    proc = subprocess.run(["getent", database, key], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    hosts = TwoHosts()
    if args[:1] == ["up"] and len(args) in (1, 3) and args[1:2] in ([], ["--psci-hook"]):
        probe = Path(__file__).resolve().parent / "hooks" / "10-e2e-probe"
        hosts.hook_files = {"10-e2e-probe": probe}
        if len(args) == 3:
            command = args[2]

            def install(hosts: TwoHosts, spec: HostSpec) -> None:
                root = str(hosts.hostdir(spec))
                subprocess.run([command, "install", "--root", root, "--no-units"], check=True)

            hosts.before_start = install
        hosts.up()
        hosts._unlock()
        for spec in hosts.specs.values():
            print(f"{spec.name}: virsh -c '{hosts.uri(spec)}'")
            print(f"  inside: nsenter -t {hosts._host_state(spec)['anchor']} -m -u")
            print(f"  syslog: {hosts.hostdir(spec) / 'syslog'}")
        return 0
    if args == ["down"]:
        hosts.down()
        return 0
    if args == ["status"]:
        try:
            state = json.loads(hosts.state_path.read_text())
        except (OSError, ValueError):
            print(f"no harness state in {hosts.root}")
            return 1
        for key, hs in sorted(state.get("hosts", {}).items()):
            for program in ("anchor", "rsyslogd", "virtlogd", "libvirtd"):
                pid = hs.get(program)
                name = "sleep" if program == "anchor" else program
                ok = bool(pid) and _matches(pid, name, hs.get("ns"))
                print(f"host-{key} {program:9} {pid} {'running' if ok else 'gone'}")
        return 0
    print("usage: harness.py up [--psci-hook PSCI_HOOK_COMMAND] | down | status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

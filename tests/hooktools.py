"""Running the hook the way libvirt does, for the tests.

libvirt execs /etc/libvirt/hooks/qemu.d/50-psci-hook with argv `<domain> <op> <sub-op> -`, an
environment of only LC_ALL=C, PATH and HOME, cwd "/", and the domain XML on stdin. The tests do
exactly that, with the hook installed the way `psci-hook install` does for a pip install: the
file copied and its interpreter line pointed at this virtualenv's python (Debian's python3 has
no psci_hook unless the package is installed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from psci_hook import auditlog
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.hook import main as hook_main
from psci_hook.profile import HostProfile
from psci_hook.record import GuestRecord, Origin, record_xml
from psci_hook.splice import splice_record
from psci_hook.status import ExitStatus
from tests.helpers import REPO

HOOK_SOURCE = REPO / "hooks" / "50-psci-hook"

DOMAIN = b"""<domain type='kvm'>
  <name>vm1</name>
  <uuid>c7a5fdbd-edaf-9455-926a-d65c16db1809</uuid>
  <memory unit='KiB'>65536</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='aarch64' machine='virt-7.2'>hvm</type>
  </os>
  <cpu mode='host-passthrough' check='none'/>
  <devices>
    <emulator>/usr/bin/qemu-system-aarch64</emulator>
    <graphics type='vnc' port='-1' autoport='yes' passwd='s3cret-vnc-password'/>
  </devices>
</domain>
"""


def install_hook(directory: Path) -> Path:
    """A copy of the hook whose interpreter is this virtualenv's python, as `install` does."""
    text = HOOK_SOURCE.read_text()
    first, rest = text.split("\n", 1)
    assert first.startswith("#!"), first
    target = directory / "50-psci-hook"
    target.write_text(f"#!{sys.executable} -I\n{rest}")
    target.chmod(0o755)
    return target


def stamped(domain: bytes, guest: GuestState, host: str = "host-a") -> bytes:
    record = GuestRecord(guest, Origin("booted", host, "6.1.0-26-arm64",
                                       "2026-11-30T00:00:00Z"))
    return splice_record(domain, lambda indent: record_xml(record, indent)).data


@dataclasses.dataclass
class HookResult:
    returncode: int
    stdout: bytes
    stderr: str


def run_hook(hook: Path, args: list[str], stdin: bytes, config: Path | None,
             timeout: float = 30) -> HookResult:
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}
    if config is not None:
        env["PSCI_HOOK_CONFIG"] = str(config)
    proc = subprocess.run([str(hook), *args], input=stdin, env=env, cwd="/",
                          capture_output=True, timeout=timeout, check=False)
    return HookResult(proc.returncode, proc.stdout, proc.stderr.decode("utf-8", "replace"))


def write_config(path: Path, profile: Path | None, log_socket: Path | None,
                 extra_hook: str = "", extra_host: str = "") -> Path:
    lines = ["[hook]", extra_hook, "[host]"]
    if profile is not None:
        lines.append(f"profile = {profile}")
    lines += [extra_host, "[log]"]
    lines.append("target = syslog" if log_socket else "target = none")
    if log_socket is not None:
        lines.append(f"syslog_socket = {log_socket}")
    path.write_text("\n".join(lines) + "\n")
    return path


def profile_file(directory: Path, profile: HostProfile, name: str = "host.json") -> Path:
    path = directory / name
    path.write_text(profile.to_json())
    return path


class SyslogListener:
    """A /dev/log stand-in: a unix datagram socket that keeps what it receives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(1 << 20).decode("utf-8", "replace"))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()
        if self.path.exists():
            os.unlink(self.path)


class CollectingSink(auditlog.Sink):
    """An audit sink that keeps the decoded events, for in-process hook runs."""

    def __init__(self) -> None:
        super().__init__(None, None)
        self.events: list[dict[str, object]] = []

    def emit(self, decision: str, message: str, fields: object, **_: object) -> bool:
        self.events.append(json.loads(message))
        return True


def run_hook_on(tmp_path: Path, profile: HostProfile, data: bytes) -> dict[str, object]:
    """The hook in process at `migrate begin` of `data` on a host with `profile`: it must allow
    untouched (exit 0, nothing on stdout); returns its one audit event."""
    config = write_config(tmp_path / "c.conf", profile_file(tmp_path, profile), None)
    env = Environment.for_test(["hook", "g", "migrate", "begin", "-"], data,
                               {"PSCI_HOOK_CONFIG": str(config)})
    sink = CollectingSink()
    assert hook_main(env, sink) == ExitStatus.OK
    assert env.stdout.getvalue() == b""  # type: ignore[attr-defined]
    (event,) = sink.events
    return event

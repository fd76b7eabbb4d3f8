"""Where libvirt may be used: only psci_hook.libvirt_client imports it, and the hook process
never loads it (libvirt waits for the hook; a libvirt call from inside it deadlocks)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import psci_hook
from psci_hook import auditlog, libvirt_client
from psci_hook import registers as regs
from psci_hook.domainxml import parse_domain
from psci_hook.profile import bundled_profiles
from psci_hook.record import read_record
from tests.record.recordtools import booted, domain_xml, profile

PACKAGE = Path(psci_hook.__file__).resolve().parent
HOOK = PACKAGE.parent / "hooks" / "50-psci-hook"
WA1 = regs.FW_BY_NAME["SMCCC_ARCH_WORKAROUND_1"].reg_id


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_only_libvirt_client_imports_libvirt() -> None:
    importers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if any(m == "libvirt" or m.startswith("libvirt.")
                              for m in imported_modules(p)))
    assert importers == ["libvirt_client.py"]


def test_the_hooks_modules_do_not_import_the_libvirt_side() -> None:
    """The modules the hook imports never import libvirt_client or the libvirt commands."""
    libvirt_side = {"psci_hook.libvirt_client", "psci_hook.libvirt_cache", "psci_hook.recording",
                    "psci_hook.commands.record", "psci_hook.commands.watch",
                    "psci_hook.commands.refresh"}
    for module in ("hook.py", "record.py", "engine.py", "auditlog.py", "cache.py",
                   "thishost.py"):
        assert not imported_modules(PACKAGE / module) & libvirt_side, module


def run_hook_with_importtime(tmp_path: Path, op: str) -> subprocess.CompletedProcess[bytes]:
    """The real hook file, for `<op> begin`, as libvirt runs it (argv, minimal environment,
    cwd /, XML on stdin), under ``python -X importtime``: stderr lists every module loaded."""
    config = tmp_path / "psci-hook.conf"
    config.write_text(f"[hook]\n[host]\nprofile = {bundled_profiles()['6.1__a76']}\n"
                      "[log]\ntarget = none\n")
    env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root",
           "PSCI_HOOK_CONFIG": str(config)}
    data = domain_xml(booted("6.1__a57", "host-a"))
    return subprocess.run([sys.executable, "-I", "-X", "importtime", str(HOOK), "vm1", op,
                           "begin", "-"], input=data, env=env, cwd="/", capture_output=True,
                          timeout=60, check=False)


def loaded(stderr: bytes) -> set[str]:
    names = set()
    for line in stderr.decode().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_the_hook_never_loads_libvirt(tmp_path: Path, op: str) -> None:
    done = run_hook_with_importtime(tmp_path, op)
    assert done.returncode == 0
    # The hook did its whole job: decided and annotated the guest's record.
    record = read_record(parse_domain(done.stdout).root)
    assert record is not None
    assert record.origin.event == {"migrate": "migrated", "restore": "restored"}[op]
    assert record.state.registers[WA1] == profile("6.1__a76").registers[WA1] == 2
    modules = loaded(done.stderr)
    assert {"psci_hook.hook", "psci_hook.engine", "psci_hook.record"} <= modules
    assert not {m for m in modules if m.split(".")[0] in ("libvirt", "libvirtmod",
                                                          "libvirtmod_qemu")}
    assert not {m for m in modules if m in ("psci_hook.libvirt_client",
                                            "psci_hook.recorder")
                or m.startswith("psci_hook.commands")}


def test_ignored_operations_load_nothing_of_psci_hook(tmp_path: Path) -> None:
    done = run_hook_with_importtime(tmp_path, "started")
    assert (done.returncode, done.stdout) == (0, b"")
    assert not {m for m in loaded(done.stderr) if m.startswith(("psci_hook", "libvirt"))}


# ---------------------------------------------------------------------------------------------
# libvirt_client's pure parts
# ---------------------------------------------------------------------------------------------


def test_version_text() -> None:
    assert libvirt_client.version_text(7002000) == "7.2.0"
    assert libvirt_client.version_text(11001003) == "11.1.3"


def test_backoff_doubles_up_to_its_maximum_and_resets() -> None:
    backoff = libvirt_client.Backoff(initial=0.5, maximum=4)
    assert [backoff.delay() for _ in range(6)] == [0.5, 1, 2, 4, 4, 4]
    backoff.reset()
    assert backoff.delay() == 0.5


def test_metadata_text_is_the_record_without_its_namespace() -> None:
    """virDomainSetMetadata puts the element into our namespace itself; read back through a
    domain it is the same record."""
    record = booted("6.12__max", "host-a")
    text = libvirt_client.metadata_text(record)
    assert text.startswith('<record version="1"><origin event="booted"')
    assert "xmlns" not in text and "psci:" not in text
    ns = "https://psci-hook.org/xmlns/record/1"
    as_libvirt_shows_it = text.replace("<record ", f'<record xmlns="{ns}" ', 1)
    spliced = domain_xml().replace(b"<memory", f"<metadata>{as_libvirt_shows_it}</metadata>"
                                   "<memory".encode(), 1)
    assert read_record(parse_domain(spliced).root) == record


# ---------------------------------------------------------------------------------------------
# The record events in the log
# ---------------------------------------------------------------------------------------------


class CollectingSink(auditlog.Sink):
    def __init__(self) -> None:
        super().__init__(None, None)
        self.sent: list[tuple[str, dict[str, object], dict[str, str], object, object]] = []

    def emit(self, decision: str, message: str, fields: object, priority: int | None = None,
             message_id: str | None = None) -> bool:
        assert isinstance(fields, dict)
        self.sent.append((decision, json.loads(message), fields, priority, message_id))
        return True


def test_record_events_have_their_own_fields_priority_and_message_id() -> None:
    sink = CollectingSink()
    assert auditlog.emit_record(sink, action="skipped", trigger="reconcile", domain="vm1",
                                reason="r", codes=["NO_RECORD"])
    action, event, fields, priority, message_id = sink.sent[0]
    assert action == "skipped" and event["event"] == auditlog.RECORD_EVENT
    assert fields == {"PSCI_ACTION": "skipped", "PSCI_DOMAIN": "vm1",
                      "PSCI_TRIGGER": "reconcile", "PSCI_CODES": "NO_RECORD"}
    assert (message_id, priority) == tuple(auditlog.EVENT_KINDS[(auditlog.RECORD_EVENT,
                                                                 "skipped")])
    assert priority == 5
    own_ids = [k.message_id for (_, kind), k in auditlog.EVENT_KINDS.items()
               if kind not in ("disconnected", "connect-failed", "refresh-failed")]
    assert len(set(own_ids)) == len(own_ids)
    # Decision events are unchanged.
    auditlog.emit_decision(sink, decision="veto", domain="vm1", op="migrate", codes=["X"])
    assert sink.sent[1][2]["PSCI_DECISION"] == "veto" and sink.sent[1][3] is None


def test_process_start_reads_the_qemu_pid_file_and_proc(tmp_path: Path) -> None:
    """This test's own process stands in for QEMU: its pid file as libvirt writes it."""
    import os
    import time

    from psci_hook.libvirt_client import process_start

    (tmp_path / "vm1.pid").write_text(f"{os.getpid()}\n")
    started = process_start("vm1", pid_dir=tmp_path)
    assert started is not None
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    assert time.time() - uptime - 2 <= started <= time.time()
    assert process_start("nosuch", pid_dir=tmp_path) is None
    (tmp_path / "gone.pid").write_text("999999999\n")
    assert process_start("gone", pid_dir=tmp_path) is None


def test_the_watcher_tells_systemd_it_is_ready(tmp_path: Path) -> None:
    import socket

    from psci_hook.commands.watch import notify_ready

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notify_ready({"NOTIFY_SOCKET": str(path)})
        assert sock.recv(256).split(b"\n")[0] == b"READY=1"
    assert not notify_ready({})  # not under systemd
    assert not notify_ready({"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_every_decision_and_record_action_is_a_kind_of_event() -> None:
    """The table of event kinds names every verdict and every action but `unverified` (whose
    events carry the service events' id, as they always have)."""
    from psci_hook.recorder import RecordAction
    from psci_hook.vocab import HookVerdict

    assert all((auditlog.EVENT, v) in auditlog.EVENT_KINDS for v in HookVerdict)
    assert {a for a in RecordAction if (auditlog.RECORD_EVENT, a) not in auditlog.EVENT_KINDS} \
        == {RecordAction.MARKED}

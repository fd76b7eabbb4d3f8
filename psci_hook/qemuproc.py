"""The running QEMU of a libvirt domain: its command line, read from /proc (never by the hook).

libvirt's QEMU driver writes the process id of each running domain to
``/run/libvirt/qemu/<name>.pid`` (src/qemu/qemu_process.c qemuProcessLaunch, virPidFileWrite;
the session daemon's run directory differs). The process's ``/proc/<pid>/cmdline`` is what its
vCPU really is: libvirt's -cpu, then the domain's <qemu:commandline> appended after it. Reading
it is the ground truth where the domain XML and the process could differ (a definition edited
since the guest started). ``record`` and ``watch`` use it; the hook never does (the guest it is
asked about has no QEMU on this host yet).
"""

from __future__ import annotations

from pathlib import Path

LIBVIRT_QEMU_RUN_DIR = Path("/run/libvirt/qemu")
PROC = Path("/proc")
MAX_CMDLINE = 1 << 20


def running_qemu_argv(name: str, run_dir: Path = LIBVIRT_QEMU_RUN_DIR, proc: Path = PROC
                      ) -> tuple[str, ...] | None:
    """The argv of domain ``name``'s running QEMU, or None when it cannot be read or is not
    that domain's (a stale pid file naming another process)."""
    try:
        pid = int((run_dir / f"{name}.pid").read_text(encoding="ascii").strip())
        with open(proc / str(pid) / "cmdline", "rb") as handle:
            raw = handle.read(MAX_CMDLINE)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    argv = tuple(part.decode("utf-8", "surrogateescape") for part in raw.split(b"\0")[:-1])
    return argv if _names(argv, name) else None


def _names(argv: tuple[str, ...], name: str) -> bool:
    """Whether argv is QEMU started for ``name``: libvirt passes ``-name guest=NAME,...``
    (a comma in the name doubled, QEMU's option escaping)."""
    escaped = name.replace(",", ",,")
    for i, arg in enumerate(argv[:-1]):
        if arg == "-name":
            value = argv[i + 1]
            return value == escaped or value.startswith(f"guest={escaped},") or \
                value == f"guest={escaped}"
    return False

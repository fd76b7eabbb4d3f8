"""The boot-time cache of this host's profile: <run_dir>/host.json (run_dir is /run/psci-hook).

``psci-hook probe --write`` (run at boot, before the libvirt daemons) stores the profile
atomically; the hook reads it back. /run is a tmpfs, so the file is gone at reboot, and a file
from another boot or another kernel is stale anyway: its boot id and kernel release must match
the running system. When the cache is missing, stale or unreadable, the hook probes inline (a
probe takes milliseconds on real hardware) where it can: on an aarch64 host with /dev/kvm.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from psci_hook import kvm as kvm_mod
from psci_hook import probe as probe_mod
from psci_hook.errors import UnreadableFile, read_text_file
from psci_hook.profile import HostProfile, ProfileError, loads_profile
from psci_hook.status import ExitStatus
from psci_hook.vocab import QemuGeneration

HOST_PROFILE_NAME = "host.json"
# `psci-hook refresh` writes the QEMU generation it read from the QEMU build itself here:
# "tolerant" or "legacy", a space, and how it knows (one line).
QEMU_GENERATION_FILE = "qemu-generation"
FILE_MODE = 0o644
DIR_MODE = 0o755


class HostProfileUnavailable(Exception):
    """No usable profile of this host; ``str()`` is one line, ``status`` an exit status.

    ``reason`` is what was wrong with the cache (missing, stale, corrupt, unreadable) and, when
    the inline probe was tried and failed, ``probe_error`` is the KVM error.
    """

    def __init__(
        self,
        message: str,
        reason: str,
        status: ExitStatus = ExitStatus.INTERNAL_ERROR,
        probe_error: kvm_mod.KvmError | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        self.probe_error = probe_error


class CacheProblem(Exception):
    """Why the cached profile cannot be used (one line); ``reason`` names the kind."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


def profile_path(run_dir: Path) -> Path:
    return run_dir / HOST_PROFILE_NAME


def write_atomic(path: Path, text: str | bytes, mode: int = FILE_MODE) -> None:
    """Write ``text`` (str as UTF-8, or bytes as they are) to ``path`` so that readers see the
    old file or the new one, never a part: a temporary file in the same directory, fsync,
    rename, then fsync the directory."""
    import tempfile  # here: the hook only reads (docs/architecture.md#the-hook-path)

    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8") if isinstance(text, str) else text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_profile(run_dir: Path, profile: Mapping[str, Any]) -> Path:
    """Store a probed profile (the dict ``probe_host`` returns) as <run_dir>/host.json."""
    path = profile_path(run_dir)
    write_atomic(path, json.dumps(profile, indent=1) + "\n")
    return path


def current_identity(
    boot_id_path: Path | None = None,
    uname: Callable[[], os.uname_result] | None = None,
) -> tuple[str, str]:
    """(boot id, kernel release) of the running system."""
    return probe_mod.read_boot_id(boot_id_path), (uname or probe_mod.UNAME)().release


def read_cached(run_dir: Path, boot_id: str, kernel_release: str) -> HostProfile:
    """The cached profile if it is this boot's and this kernel's, else CacheProblem."""
    path = profile_path(run_dir)
    try:
        text = read_text_file(path)
    except UnreadableFile as exc:
        if exc.reason == "missing":
            raise CacheProblem(f"{path} does not exist", "missing") from None
        raise CacheProblem(str(exc), "corrupt" if exc.reason == "not-text" else exc.reason
                           ) from None
    try:
        profile = loads_profile(text, str(path))
    except ProfileError as exc:
        raise CacheProblem(str(exc), "corrupt") from None
    cached_boot = profile.extra.get("boot_id")
    if cached_boot != boot_id:
        raise CacheProblem(
            f"{path} is from another boot (boot id {cached_boot or 'absent'}, now {boot_id})",
            "stale",
        )
    if profile.kernel_release != kernel_release:
        raise CacheProblem(
            f"{path} is from kernel {profile.kernel_release}, running {kernel_release}",
            "stale",
        )
    return profile


def load_host_profile(
    run_dir: Path,
    probe_inline: bool,
    *,
    write_back: bool = True,
    syscalls: kvm_mod.Syscalls | None = None,
    clock: Callable[[], float] = time.time,
    boot_id_path: Path | None = None,
    uname: Callable[[], os.uname_result] | None = None,
) -> HostProfile:
    """This host's profile: the cached one when it is current, else (with ``probe_inline``) a
    fresh probe, stored back in the cache when possible. Raises HostProfileUnavailable."""
    try:
        boot_id, release = current_identity(boot_id_path, uname)
    except OSError as exc:
        raise HostProfileUnavailable(
            f"cannot read this system's boot id "
            f"({boot_id_path or probe_mod.BOOT_ID_PATH}): {exc.strerror or exc}",
            "identity",
        ) from None
    try:
        return read_cached(run_dir, boot_id, release)
    except CacheProblem as problem:
        if not probe_inline:
            raise HostProfileUnavailable(
                f"no usable host profile: {problem.message} (run 'psci-hook probe --write')",
                problem.reason,
            ) from None
        cache_problem = problem
    try:
        with kvm_mod.Kvm(syscalls) as kvm:
            data = probe_mod.probe_host(
                kvm, clock=clock, run_dir=run_dir, boot_id_path=boot_id_path, uname=uname
            )
    except kvm_mod.KvmError as exc:
        raise HostProfileUnavailable(
            f"no usable host profile ({cache_problem.message}) and the inline probe "
            f"failed: {exc.message}",
            cache_problem.reason,
            status=exc.status,
            probe_error=exc,
        ) from None
    except OSError as exc:
        raise HostProfileUnavailable(
            f"no usable host profile ({cache_problem.message}) and the inline probe "
            f"failed: {exc.strerror or exc}",
            cache_problem.reason,
        ) from None
    if write_back:
        with contextlib.suppress(OSError):
            write_profile(run_dir, data)
    try:
        return HostProfile.from_dict(data)
    except ProfileError as exc:  # a bug: the probe wrote what the reader refuses
        raise HostProfileUnavailable(
            f"the inline probe produced an invalid profile: {exc}", cache_problem.reason
        ) from None


def read_qemu_generation(run_dir: Path) -> str | None:
    """The QEMU generation `psci-hook refresh` detected from the build, if cached."""
    try:
        word = (run_dir / QEMU_GENERATION_FILE).read_text(encoding="utf-8").split(maxsplit=1)
    except (OSError, UnicodeDecodeError):
        return None
    return word[0] if word and word[0] in tuple(QemuGeneration) else None

"""``psci-hook install``: put the hook, its configuration and the systemd units in place.

For hosts without a psci-hook distribution package (a pip or venv install). The files come from
this installation's package data; the hook's ``#!`` line names the interpreter running this
command (``-I``, so a venv install imports its own psci_hook and nothing from the environment) and
the units' ``ExecStart=`` name this installation's ``psci-hook`` script.

What it writes, under ``--root`` (default ``/``):

* ``/etc/libvirt/hooks/qemu.d/50-psci-hook``, a real file, mode 0755 (AppArmor matches resolved
  paths, so a symlink out of ``/etc/libvirt/hooks`` would not run);
* ``/etc/psci-hook/psci-hook.conf``, only when there is none: an existing one is never replaced;
* ``/etc/systemd/system/psci-hook-{probe,refresh,watch}.service`` (not with ``--no-units``);
* ``/var/lib/psci-hook/install-manifest.json``: the files and directories it created, with their
  SHA-256, so that ``--uninstall`` removes exactly those and keeps anything changed since.

Installing into ``/`` first checks that ``PYTHON -I`` imports this very psci_hook, as the hook
will (a ``pip install --user`` cannot work: ``-I`` ignores the user site directory).

A hook or unit file already there that this command did not put there (a distribution package's,
or one edited since) is left alone unless ``--force``. Nothing is started or reloaded: the command
prints the ``systemctl`` lines to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path, PurePosixPath

from psci_hook.cache import write_atomic
from psci_hook.environment import HOOK, Environment
from psci_hook.status import ExitStatus

HELP = (
    "install (or --uninstall) the hook, the configuration and the systemd units from this "
    "Python installation, for hosts without a psci-hook package"
)

CONFIG = PurePosixPath("/etc/psci-hook/psci-hook.conf")
UNIT_DIR = PurePosixPath("/etc/systemd/system")
UNITS = ("psci-hook-probe.service", "psci-hook-refresh.service", "psci-hook-watch.service")
MANIFEST = PurePosixPath("/var/lib/psci-hook/install-manifest.json")
MANIFEST_SCHEMA = "psci-hook.install-manifest/v1"
PACKAGED_COMMAND = "/usr/bin/psci-hook"
# Linux before 5.1 (RHEL 8, for one) reads only the first 127 bytes of a #! line; 5.1+ read 255.
MAX_SHEBANG = 127

RELOAD_HINT = (
    "systemctl reload virtqemud.service  # or libvirtd.service; without systemd: "
    "kill -HUP the running virtqemud or libvirtd"
)


class InstallError(Exception):
    """Something that stops the whole command; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Item:
    """One file this command manages: where it goes, what it holds, its mode."""

    path: PurePosixPath
    content: bytes
    mode: int
    replace_foreign: bool  # --force may replace a file that is not ours (never the config)


@dataclasses.dataclass
class Manifest:
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> sha256
    directories: list[str] = dataclasses.field(default_factory=list)  # created, outermost first

    def to_json(self) -> str:
        data = {"schema": MANIFEST_SCHEMA, "files": self.files, "directories": self.directories}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, path: Path) -> Manifest | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise InstallError(f"{path}: unreadable install manifest: {exc}") from exc
        if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
            raise InstallError(f"{path}: not a {MANIFEST_SCHEMA} manifest")
        files = data.get("files", {})
        directories = data.get("directories", [])
        if not isinstance(files, dict) or not isinstance(directories, list):
            raise InstallError(f"{path}: malformed install manifest")
        return cls(
            files={str(k): str(v) for k, v in files.items()},
            directories=[str(d) for d in directories],
        )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="install below DIR instead of / (the #! and ExecStart= paths are not prefixed)",
    )
    parser.add_argument(
        "--uninstall",
        action="store_true",
        help="remove what an earlier install put there (files changed since are kept)",
    )
    parser.add_argument("--no-units", action="store_true", help="do not install systemd units")
    parser.add_argument(
        "--python",
        metavar="PATH",
        help="interpreter for the hook's #! line (default: the one running this command, "
        f"{sys.executable})",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace a hook or unit file that psci-hook install did not put there "
        "(the configuration file is never replaced)",
    )


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    root: Path = args.root
    try:
        if args.uninstall:
            return _uninstall(root, env)
        python = args.python or sys.executable
        return _install(root, python, not args.no_units, args.force, env)
    except InstallError as exc:
        env.error(str(exc))
        return ExitStatus.BAD_INPUT
    except OSError as exc:
        env.error(f"install: {exc}")
        return ExitStatus.BAD_INPUT


# --- what gets installed ----------------------------------------------------------------------


def _package_data(*parts: str) -> bytes:
    resource = resources.files("psci_hook") / "data"
    for part in parts:
        resource = resource / part
    try:
        return resource.read_bytes()
    except OSError as exc:
        raise InstallError(
            f"this psci-hook installation carries no data/{'/'.join(parts)} "
            "(a distribution package installs the hook and units itself)"
        ) from exc


def render_hook(python: str) -> bytes:
    """The hook file with its #! line naming ``python`` (absolute, no blanks) and ``-I``."""
    if not os.path.isabs(python) or re.search(r"\s", python):
        raise InstallError(f"--python {python!r}: need an absolute path without blanks")
    line = f"#!{python} -I"
    if len(line.encode()) > MAX_SHEBANG:
        raise InstallError(f"#! line would be {len(line.encode())} bytes, over {MAX_SHEBANG}")
    original = _package_data("hooks", HOOK.name)
    if not original.startswith(b"#!"):
        raise InstallError(f"data/hooks/{HOOK.name} has no #! line")
    _, _, body = original.partition(b"\n")
    return line.encode() + b"\n" + body


def require_importable(python: str, env: Environment) -> None:
    """On this host (no --root): ``python -I`` must import this very psci_hook, as libvirt will
    run the hook. A ``pip install --user`` fails this (-I ignores the user site directory)."""
    ours = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            [python, "-I", "-c", "import psci_hook; print(psci_hook.__file__)"],
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True,
            text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise InstallError(f"cannot run {python}: {exc}") from exc
    if done.returncode != 0:
        raise InstallError(
            f"{python} -I cannot import psci_hook, so the hook could never load it "
            "(a pip --user install? install into a virtualenv or system-wide, or name "
            "another interpreter with --python)"
        )
    theirs = Path(done.stdout.strip()).resolve().parent
    if theirs != ours:
        env.error(f"warning: {python} -I imports psci_hook from {theirs}, not from {ours}")


def find_command(env: Environment, python: str) -> str:
    """The ``psci-hook`` command of this installation, for the units' ``ExecStart=``."""
    candidates: list[str] = []
    argv0 = env.argv[0] if env.argv else ""
    if os.path.basename(argv0) == "psci-hook" and os.path.isabs(argv0):
        candidates.append(argv0)
    candidates.append(os.path.join(os.path.dirname(python), "psci-hook"))
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "psci-hook"))
    found = shutil.which("psci-hook", path=env.environ.get("PATH", os.defpath))
    if found:
        candidates.append(found)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            if re.search(r"\s", candidate):
                continue
            return candidate
    return f"{python} -I -m psci_hook"


def render_unit(name: str, command: str) -> bytes:
    text = _package_data("systemd", name).decode("utf-8")
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith(("ExecStart=", "ExecStartPre=", "ExecReload=")):
            line = line.replace(PACKAGED_COMMAND, command, 1)
        lines.append(line)
    return "".join(lines).encode("utf-8")


def planned_items(python: str, command: str, units: bool) -> list[Item]:
    items = [
        Item(HOOK, render_hook(python), 0o755, replace_foreign=True),
        Item(CONFIG, _package_data("psci-hook.conf"), 0o644, replace_foreign=False),
    ]
    if units:
        items += [
            Item(UNIT_DIR / name, render_unit(name, command), 0o644, replace_foreign=True)
            for name in UNITS
        ]
    return items


# --- install ----------------------------------------------------------------------------------


def _under(root: Path, path: PurePosixPath | str) -> Path:
    return root / str(path).lstrip("/")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str | None:
    """SHA-256 of a regular file, or None when there is none (a symlink counts as foreign)."""
    if path.is_symlink() or not path.is_file():
        return None
    return _sha256(path.read_bytes())


def _make_dirs(root: Path, path: PurePosixPath, manifest: Manifest) -> None:
    """Create the parents of ``path`` under root, recording the ones this command created."""
    for parent in reversed(path.parents):
        if str(parent) == "/":
            continue
        target = _under(root, parent)
        if not target.exists():
            target.mkdir(mode=0o755)
            os.chmod(target, 0o755)  # whatever the umask
            if str(parent) not in manifest.directories:
                manifest.directories.append(str(parent))


def _install(root: Path, python: str, units: bool, force: bool, env: Environment) -> ExitStatus:
    if not root.is_dir():
        raise InstallError(f"--root {root}: not a directory")
    items = planned_items(python, find_command(env, python), units)
    if root.resolve() == Path("/"):
        require_importable(python, env)
    manifest_path = _under(root, MANIFEST)
    manifest = Manifest.load(manifest_path) or Manifest()
    conflicts = 0
    for item in items:
        target = _under(root, item.path)
        key = str(item.path)
        current = _file_sha256(target)
        exists = os.path.lexists(target)
        ours = exists and current is not None and manifest.files.get(key) == current
        if exists and current == _sha256(item.content):
            verb = "unchanged"
        elif not exists or ours:
            verb = "updated" if exists else "installed"
        elif not item.replace_foreign:
            env.write_out(f"kept       {key} (exists; the configuration is never replaced)\n")
            continue
        elif force:
            verb = "replaced"
        else:
            env.error(
                f"refusing to replace {key}: psci-hook install did not put it there "
                "or it changed since (--force replaces it)"
            )
            conflicts += 1
            continue
        if verb != "unchanged":
            _make_dirs(root, item.path, manifest)
            if target.is_symlink():
                target.unlink()
            write_atomic(target, item.content, item.mode)
        elif (target.stat().st_mode & 0o7777) != item.mode:
            os.chmod(target, item.mode)
        manifest.files[key] = _sha256(item.content)
        detail = f" (#!{python} -I)" if item.path == HOOK else ""
        env.write_out(f"{verb:<10} {key}{detail}\n")
    _make_dirs(root, MANIFEST, manifest)
    write_atomic(manifest_path, manifest.to_json().encode("utf-8"), 0o644)
    env.write_out(f"{'recorded':<10} {MANIFEST}\n")
    if str(root.resolve()) != "/":
        env.write_out(f"(all paths above are below {root})\n")
    env.write_out("next:\n")
    if units:
        env.write_out(
            "  systemctl daemon-reload\n"
            "  systemctl enable --now psci-hook-probe.service\n"
            "  systemctl enable psci-hook-refresh.service psci-hook-watch.service\n"
        )
    env.write_out(f"  {RELOAD_HINT}\n")
    return ExitStatus.CONFLICT if conflicts else ExitStatus.OK


# --- uninstall --------------------------------------------------------------------------------


def _remove_enablement(root: Path, env: Environment) -> None:
    """Remove ``systemctl enable`` symlinks to our units below /etc/systemd/system/*/."""
    unit_dir = _under(root, UNIT_DIR)
    if not unit_dir.is_dir():
        return
    for wants in sorted(unit_dir.iterdir()):
        if not wants.is_dir() or wants.is_symlink():
            continue
        for name in UNITS:
            link = wants / name
            if link.is_symlink() and os.readlink(link).endswith(f"/{name}"):
                link.unlink()
                env.write_out(f"{'removed':<10} /{link.relative_to(root)} (enablement)\n")
                if not any(wants.iterdir()):
                    wants.rmdir()


def _uninstall(root: Path, env: Environment) -> ExitStatus:
    manifest_path = _under(root, MANIFEST)
    manifest = Manifest.load(manifest_path)
    if manifest is None:
        env.error(
            f"no {MANIFEST} below {root}: nothing was installed by psci-hook install "
            "(a distribution package is removed with its package manager)"
        )
        return ExitStatus.BAD_INPUT
    kept = 0
    for key, digest in sorted(manifest.files.items()):
        target = _under(root, key)
        current = _file_sha256(target)
        if not os.path.lexists(target):
            env.write_out(f"{'absent':<10} {key}\n")
        elif current == digest:
            target.unlink()
            env.write_out(f"{'removed':<10} {key}\n")
        else:
            env.write_out(f"{'kept':<10} {key} (changed since psci-hook install put it there)\n")
            kept += 1
    _remove_enablement(root, env)
    manifest_path.unlink()
    env.write_out(f"{'removed':<10} {MANIFEST}\n")
    created = [*manifest.directories]
    if str(MANIFEST.parent) not in created:
        created.append(str(MANIFEST.parent))
    for directory in sorted(created, key=lambda d: d.count("/"), reverse=True):
        target = _under(root, directory)
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            target.rmdir()
            env.write_out(f"{'removed':<10} {directory}/\n")
    env.write_out(f"next:\n  systemctl daemon-reload\n  {RELOAD_HINT}\n")
    if kept:
        env.write_out(f"{kept} changed file(s) kept; remove them by hand if unwanted\n")
    return ExitStatus.OK

"""Boot real Debian arm64 kernels under qemu-system-aarch64 (TCG) and run psci-hook inside.

The emulated machine has virtualization=on, so the kernel starts at EL2 and its own KVM works:
/dev/kvm exists inside, and ``psci-hook probe`` and ``psci-hook conformance`` talk to a real
arm64 KVM (docs/design.md#measured-facts says what was measured this way).

The initramfs holds busybox-static and Debian bookworm's python3.11-minimal with the libraries
it needs (arm64 packages fetched with ``apt-get download`` through a private apt configuration:
the machine's own sources, with the arm64 architecture, in a private state directory; the
machine's dpkg architectures are never changed), bookworm's python3-lxml and python3-structlog
with their library closure (checked against the ELF NEEDED entries at build time), this package's
source tree, the real hook file (/etc/libvirt/hooks/qemu.d/50-psci-hook, run by guest_hook.py as
libvirt would), and an /init that runs the commands and prints their output between markers on
the serial console.

Downloads, unpacked packages and decompressed kernels are cached under
$PSCI_HOOK_CACHE_DIR, else $XDG_CACHE_HOME/psci-hook, else ~/.cache/psci-hook. When the archive
cannot be reached and nothing is cached, HarnessError says so (the tests fail, never skip).

Environment:
  PSCI_HOOK_SHARED                the shared/ directory (default: ../shared beside the repo)
  PSCI_HOOK_CACHE_DIR             the cache directory (see above)
  PSCI_HOOK_NESTED_APT_SOURCES    an apt sources file to use instead of the machine's
  PSCI_HOOK_NESTED_REFRESH=1      download the packages again
  PSCI_HOOK_NESTED_BOOT_TIMEOUT   seconds one boot may take (default 480: a boot takes 90-120 s on 2
                                  idle cores, twice that when another emulator shares them)
"""

from __future__ import annotations

import compileall
import dataclasses
import hashlib
import json
import lzma
import os
import py_compile
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

REPO_ROOT = Path(__file__).resolve().parents[2]

DEBIAN_SUITE = "bookworm"
PACKAGES = (
    "busybox-static",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "libexpat1",
    "zlib1g",
    "libffi8",
    # The hook itself imports lxml and structlog: bookworm's python3-lxml (4.9.2, built for
    # python3.11) with its library closure (libxml2 -> libicu72, liblzma5, zlib1g; libxslt1.1 ->
    # libgcrypt20 -> libgpg-error0; libicu72 -> libstdc++6, libgcc-s1), and python3-structlog
    # (pure Python). check_elf_closure() proves at build time that this list is complete.
    "python3-lxml",
    "python3-structlog",
    "libxml2",
    "libxslt1.1",
    "libicu72",
    "liblzma5",
    "libgcrypt20",
    "libgpg-error0",
    "libstdc++6",
    "libgcc-s1",
)
# Kernel file stem in shared/kernels -> version label; CPU label -> QEMU -cpu argument.
KERNELS = ("5.10", "6.1", "6.12", "7.2")
CPUS = {"max": "max,pauth-impdef=on", "a57": "cortex-a57"}
MARK = "@@psci-nested"
STEPS = ("probe", "probe-write", "conformance", "conformance-json", "checks",
         "cross-rehearsal", "hook")
# Where the overlay installs the real hook file, as `psci-hook install` does (its #! line rewritten
# to name the image's python with -I; -I ignores PYTHONPATH, so psci_hook is also reachable from
# the interpreter's own dist-packages, like lxml and structlog).
GUEST_HOOK_PATH = "etc/libvirt/hooks/qemu.d/50-psci-hook"
GUEST_PYTHON = "/usr/bin/python3.11"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
# The ELF objects whose NEEDED closure must be in the image (see check_elf_closure).
ELF_ROOTS = ("usr/bin/python3.11", f"{DIST_PACKAGES}/lxml/etree.cpython-311-aarch64-linux-gnu.so",
             f"{DIST_PACKAGES}/lxml/objectify.cpython-311-aarch64-linux-gnu.so")
LIBRARY_DIRS = ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib", "usr/lib")
DEBIAN_CODENAMES = (
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldstable", "stable", "testing", "unstable",
)
# Parts of the packages nothing here needs: left out of the initramfs to keep it small.
PRUNE = (
    "usr/share",
    "usr/lib/aarch64-linux-gnu/gconv",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/pydoc_data",
)
BUSYBOX_APPLETS = ("sh", "mount", "cat", "echo", "poweroff", "uname", "mkdir", "sleep", "ls")


class HarnessError(Exception):
    """The nested run could not be set up or did not produce results; one clear message."""


# ---------------------------------------------------------------------------------------------
# Locations
# ---------------------------------------------------------------------------------------------


def shared_dir() -> Path:
    override = os.environ.get("PSCI_HOOK_SHARED")
    path = Path(override) if override else REPO_ROOT.parent / "shared"
    if not (path / "kernels").is_dir() or not (path / "profiles").is_dir():
        raise HarnessError(
            f"{path} is not the shared/ directory (kernels/ and profiles/ missing); "
            "set PSCI_HOOK_SHARED"
        )
    return path


def cache_dir() -> Path:
    override = os.environ.get("PSCI_HOOK_CACHE_DIR")
    if override:
        base = Path(override)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "psci-hook"
    path = base / "nested"
    path.mkdir(parents=True, exist_ok=True)
    return path


def qemu_binary() -> str:
    found = shutil.which("qemu-system-aarch64")
    if not found:
        raise HarnessError(
            "qemu-system-aarch64 is not installed (Debian package qemu-system-arm, "
            "listed in scripts/deps/nested.apt)"
        )
    return found


# ---------------------------------------------------------------------------------------------
# The arm64 packages, through a private apt configuration
# ---------------------------------------------------------------------------------------------


def _parse_sources_files() -> list[dict[str, list[str]]]:
    """The machine's apt sources as deb822 stanzas (one-line entries converted)."""
    stanzas: list[dict[str, list[str]]] = []
    etc = Path("/etc/apt")
    one_line = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            options: dict[str, list[str]] = {}
            rest = line[4:].strip()
            if rest.startswith("["):
                inner, rest = rest[1:].split("]", 1)
                for option in inner.split():
                    key, _, value = option.partition("=")
                    options[key.lower()] = value.split(",")
            words = rest.split()
            if len(words) < 3:
                continue
            stanza = {"types": ["deb"], "uris": [words[0]], "suites": [words[1]],
                      "components": words[2:]}
            if "signed-by" in options:
                stanza["signed-by"] = options["signed-by"]
            if "arch" in options:
                stanza["architectures"] = options["arch"]
            stanzas.append(stanza)
    for path in sorted((etc / "sources.list.d").glob("*.sources")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n\s*\n", text):
            stanza = {}
            for raw in block.splitlines():
                if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                    continue
                key, _, value = raw.partition(":")
                stanza[key.strip().lower()] = value.split()
            if stanza.get("enabled", ["yes"])[0].lower() == "no":
                continue
            if stanza:
                stanzas.append(stanza)
    return stanzas


def apt_sources(target: str = DEBIAN_SUITE) -> str:
    """A deb822 sources file for Debian ``target`` arm64 (with its -updates and -security pockets,
    which sid has not), from the machine's own apt sources (same mirrors, same keys), or the file
    named by PSCI_HOOK_NESTED_APT_SOURCES."""
    override = os.environ.get("PSCI_HOOK_NESTED_APT_SOURCES")
    if override:
        return Path(override).read_text(encoding="utf-8")
    out = []
    seen = set()
    for stanza in _parse_sources_files():
        if "deb" not in stanza.get("types", []) or "main" not in stanza.get("components", []):
            continue
        archs = stanza.get("architectures")
        if archs and "arm64" not in archs:
            continue
        suites = []
        for suite in stanza.get("suites", []):
            codename, sep, pocket = suite.partition("-")
            if codename not in DEBIAN_CODENAMES or pocket not in ("", "updates", "security"):
                continue
            if pocket and target in ("sid", "unstable"):
                continue
            suites.append(target + sep + pocket)
        if not suites:
            continue
        key = (tuple(stanza["uris"]), tuple(suites))
        if key in seen:
            continue
        seen.add(key)
        lines = [
            "Types: deb",
            f"URIs: {' '.join(stanza['uris'])}",
            f"Suites: {' '.join(dict.fromkeys(suites))}",
            "Components: main",
            "Architectures: arm64",
        ]
        if stanza.get("signed-by"):
            lines.append(f"Signed-By: {' '.join(stanza['signed-by'])}")
        out.append("\n".join(lines))
    if not out:
        raise HarnessError(
            "the machine's apt sources name no Debian archive to fetch the arm64 packages "
            "from; set PSCI_HOOK_NESTED_APT_SOURCES to an apt sources file"
        )
    return "\n\n".join(out) + "\n"


def _apt_options(root: Path) -> list[str]:
    return [
        "-o", "Dir::Etc::SourceList=/dev/null",
        "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "-o", f"Dir::State={root / 'state'}",
        "-o", f"Dir::State::Lists={root / 'state' / 'lists'}",
        "-o", f"Dir::State::status={root / 'state' / 'status'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "APT::Architecture=arm64",
        "-o", "APT::Architectures::=arm64",
        "-o", "APT::Sandbox::User=root",
        "-o", "Debug::NoLocking=1",
        "-o", "Acquire::Retries=2",
    ]


@dataclasses.dataclass(frozen=True)
class PackageSet:
    """arm64 packages fetched from one Debian suite into their own cache directory.

    With ``closure`` the whole Depends closure is fetched (``apt-get install -d`` against an empty
    dpkg status, so nothing counts as installed); without it exactly ``packages``
    (``apt-get download``)."""

    name: str
    packages: tuple[str, ...]
    suite: str = DEBIAN_SUITE
    closure: bool = False

    @property
    def root(self) -> Path:
        return cache_dir() / ("apt" if self.name == "nested" else f"apt-{self.name}")


NESTED_PACKAGES = PackageSet("nested", PACKAGES)


def fetch_debs(refresh: bool | None = None) -> list[Path]:
    """The arm64 .debs of PACKAGES, from the cache or downloaded into it."""
    return fetch_package_set(NESTED_PACKAGES, refresh)


def fetch_package_set(packages: PackageSet, refresh: bool | None = None) -> list[Path]:
    """The .debs of ``packages``, from the cache or downloaded into it (PSCI_HOOK_NESTED_REFRESH=1
    downloads again)."""
    if refresh is None:
        refresh = os.environ.get("PSCI_HOOK_NESTED_REFRESH") == "1"
    root = packages.root
    debs = root / "debs"
    manifest = debs / "manifest.json"
    if not refresh and manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8"))
            if recorded.get("requested", list(PACKAGES)) == list(packages.packages):
                paths = [debs / name for name in recorded["debs"]]
                if paths and all(p.is_file() for p in paths):
                    return paths
        except (KeyError, ValueError, TypeError, AttributeError):
            pass
    for sub in ("sources.list.d", "state/lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "state" / "status").write_text("", encoding="utf-8")
    (root / "sources.list.d" / "psci-hook-nested.sources").write_text(
        apt_sources(packages.suite), encoding="utf-8"
    )
    options = _apt_options(root)
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    update = subprocess.run(
        ["apt-get", *options, "update"], capture_output=True, text=True, env=env, timeout=600
    )
    failed = re.findall(r"^(?:E|W): (?:Failed to fetch|Some index files).*$",
                        update.stdout + update.stderr, re.M)
    if update.returncode != 0 or failed:
        raise HarnessError(
            f"cannot reach the Debian archive to fetch the arm64 packages ({packages.name}, "
            f"apt-get update exit {update.returncode}): "
            + _tail(update.stderr or update.stdout)
        )
    staging = Path(tempfile.mkdtemp(prefix="download.", dir=root))
    try:
        if packages.closure:
            command = ["apt-get", *options, "-o", f"Dir::Cache::Archives={staging}",
                       "install", "-d", "-y", "-q", "--no-install-recommends",
                       *[f"{p}:arm64" for p in packages.packages]]
        else:
            command = ["apt-get", *options, "download",
                       *[f"{p}:arm64" for p in packages.packages]]
        download = subprocess.run(command, capture_output=True, text=True, env=env,
                                  cwd=staging, timeout=1800)
        if download.returncode != 0:
            raise HarnessError(
                f"cannot download the arm64 packages ({packages.name}) from the Debian archive "
                f"(apt-get exit {download.returncode}): " + _tail(download.stderr)
            )
        shutil.rmtree(staging / "partial", ignore_errors=True)
        for lock in staging.glob("lock"):
            lock.unlink()
        found = sorted(p.name for p in staging.glob("*.deb"))
        for package in packages.packages:
            # arm64 packages, or Architecture: all ones (python3-structlog).
            if not any(name.startswith(f"{package}_") and name.endswith(("_arm64.deb", "_all.deb"))
                       for name in found):
                raise HarnessError(f"apt-get did not produce the {package} arm64 .deb")
        if debs.exists():
            shutil.rmtree(debs)
        staging.rename(debs)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    manifest.write_text(json.dumps({"requested": list(packages.packages), "debs": found},
                                   indent=1) + "\n", encoding="utf-8")
    return [debs / name for name in found]


def _tail(text: str, lines: int = 3) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept) or "(no output)"


# ---------------------------------------------------------------------------------------------
# The initramfs
# ---------------------------------------------------------------------------------------------


def _newc_header(ino: int, mode: int, nlink: int, size: int, name: bytes,
                 rdev: tuple[int, int] = (0, 0)) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08x" % f for f in fields) + name + b"\0"
    return header + b"\0" * (-len(header) % 4)


class CpioWriter:
    """A minimal cpio 'newc' writer (the format the kernel unpacks into its rootfs)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        self.out.write(_newc_header(self.ino, mode, nlink, len(data), name.encode(), rdev))
        self.out.write(data)
        self.out.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str, perm: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | perm, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | perm, rdev=(major, minor))

    def tree(self, root: Path, prefix: str = "") -> None:
        """Every directory, file and symlink under ``root``, named ``prefix/relative``."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            for name in dirnames + sorted(filenames):
                path = Path(dirpath) / name
                arc = str(Path(prefix) / rel_dir / name).lstrip("/")
                info = path.lstat()
                if stat.S_ISLNK(info.st_mode):
                    self.symlink(arc, os.readlink(path))
                elif stat.S_ISDIR(info.st_mode):
                    self.directory(arc, stat.S_IMODE(info.st_mode))
                elif stat.S_ISREG(info.st_mode):
                    self.file(arc, path.read_bytes(), stat.S_IMODE(info.st_mode))

    def trailer(self) -> None:
        self._entry("TRAILER!!!", 0, nlink=1)
        self.out.write(b"\0" * (-self.out.tell() % 512))


def base_image(debs: Sequence[Path]) -> Path:
    """The cached cpio of the unpacked packages (python precompiled), keyed by the .debs."""
    digest = hashlib.sha256("\n".join(sorted(d.name for d in debs)).encode()).hexdigest()[:16]
    out = cache_dir() / f"base-{digest}.cpio"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        root = Path(tmp) / "root"
        unpack_debs(debs, root, PRUNE)
        for dynload in (root / "usr/lib/python3.11/lib-dynload").glob("*test*"):
            dynload.unlink()
        check_elf_closure(root)
        _precompile(root / "usr/lib/python3.11", "/usr/lib/python3.11")
        _precompile(root / DIST_PACKAGES, "/" + DIST_PACKAGES)  # structlog, lxml's .py parts
        partial = Path(tmp) / "base.cpio"
        with open(partial, "wb") as handle:
            writer = CpioWriter(handle)
            writer.tree(root)
            writer.trailer()
        os.replace(partial, out)
    return out


def unpack_debs(debs: Iterable[Path], root: Path, prune: Iterable[str] = ()) -> None:
    """Each .deb's files under ``root`` (``dpkg-deb -x``: no maintainer scripts run), then the
    ``prune`` paths removed."""
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    for rel in prune:
        target = root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def elf_needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a 64-bit little-endian ELF file (what readelf -d lists), read
    from its section headers: the SHT_DYNAMIC section and the string table it links to."""
    import struct

    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise HarnessError(f"{path} is not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    needed = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strtab = sections[link][4]
        for pos in range(offset, offset + size, entsize or 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:  # DT_NULL
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", strtab + value)
                needed.append(data[strtab + value:end].decode())
    return needed


def check_elf_closure(root: Path) -> None:
    """Every library python3.11 and lxml's extension modules need, transitively, is in the
    unpacked packages (the dynamic loader's default directories), else HarnessError naming it:
    a missing package in PACKAGES shows here, at build time, not as an ImportError in a guest."""
    pending = [root / rel for rel in ELF_ROOTS]
    seen: set[Path] = set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        if not path.is_file():
            raise HarnessError(f"{path.relative_to(root)} is not in the unpacked packages")
        for soname in elf_needed(path):
            if soname.startswith("ld-linux"):
                continue
            found = [root / d / soname for d in LIBRARY_DIRS if (root / d / soname).exists()]
            if not found:
                raise HarnessError(
                    f"{path.name} needs {soname}, which none of the nested harness's "
                    "packages provides (add its package to PACKAGES)")
            pending.append(found[0])  # a relative symlink: read through it, inside root


def _precompile(path: Path, ddir: str) -> None:
    """Bytecode for the guest's python3.11 (same cache tag only), so it starts fast."""
    if sys.implementation.cache_tag != "cpython-311":
        return
    compileall.compile_dir(
        str(path), ddir=ddir, quiet=2, workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )


INIT_SCRIPT = """#!/bin/sh
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
export PYTHONPATH=/opt/psci-hook PYTHONDONTWRITEBYTECODE=1 HOME=/root LC_ALL=C.UTF-8
cd /
read up _ < /proc/uptime
echo "{mark} boot $(uname -r) $(uname -m) uptime=$up"
run() {{
    name=$1; shift
    read t0 _ < /proc/uptime
    "$@" > /tmp/$name.out 2> /tmp/$name.err
    rc=$?
    read t1 _ < /proc/uptime
    echo "{mark} begin $name"
    cat /tmp/$name.out
    echo "{mark} stderr $name"
    cat /tmp/$name.err
    echo "{mark} end $name rc=$rc start=$t0 end=$t1"
}}
run probe python3 -m psci_hook probe --json
run probe-write python3 -m psci_hook probe --write
run conformance python3 -m psci_hook conformance
run conformance-json python3 -m psci_hook conformance --json
run checks python3 /opt/psci-hook/guest_checks.py
run cross-rehearsal python3 /opt/psci-hook/guest_cross_rehearsal.py
run hook python3 /opt/psci-hook/guest_hook.py
echo "{mark} done"
poweroff -f
sleep 5
"""


def overlay(out: BinaryIO) -> None:
    """The per-run part: /init, busybox links, this package's source and the guest checks."""
    writer = CpioWriter(out)
    for name in ("bin", "usr", "usr/bin", "proc", "sys", "dev", "tmp", "root", "opt",
                 "opt/psci-hook", "etc", "etc/libvirt", "etc/libvirt/hooks",
                 "etc/libvirt/hooks/qemu.d"):
        writer.directory(name, 0o1777 if name == "tmp" else 0o755)
    writer.chardev("dev/console", 5, 1)
    writer.chardev("dev/null", 1, 3, 0o666)
    for applet in BUSYBOX_APPLETS:
        writer.symlink(f"bin/{applet}", "busybox")
    writer.symlink("usr/bin/python3", "python3.11")
    writer.file("init", INIT_SCRIPT.format(mark=MARK).encode(), 0o755)
    # The real hook, its #! line pointing at the image's python with -I (psci-hook install does
    # the same with the interpreter it runs under); psci_hook importable under -I.
    hook = (REPO_ROOT / "hooks" / "50-psci-hook").read_text(encoding="utf-8").split("\n", 1)[1]
    writer.file(GUEST_HOOK_PATH, f"#!{GUEST_PYTHON} -I\n{hook}".encode(), 0o755)
    writer.symlink(f"{DIST_PACKAGES}/psci_hook", "/opt/psci-hook/psci_hook")
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "psci_hook"
        shutil.copytree(REPO_ROOT / "psci_hook", package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for script in ("guest_checks.py", "guest_cross_rehearsal.py", "guest_hook.py"):
            shutil.copy(Path(__file__).with_name(script), tmp)
        shutil.copytree(REPO_ROOT / "tests" / "data" / "probed-profiles",
                        Path(tmp) / "probed-profiles")
        _precompile(Path(tmp), "/opt/psci-hook")
        writer.tree(Path(tmp), "opt/psci-hook")
    writer.trailer()


def build_initramfs(dest: Path) -> Path:
    """base image + overlay, concatenated (the kernel unpacks one archive after the other)."""
    base = base_image(fetch_debs())
    with open(dest, "wb") as handle:
        with open(base, "rb") as source:
            shutil.copyfileobj(source, handle)
        overlay(handle)
    return dest


def kernel_image(version: str) -> Path:
    """shared/kernels/vmlinuz-<version>.xz, decompressed once into the cache."""
    return kernel_file(shared_dir() / "kernels" / f"vmlinuz-{version}.xz", version)


def kernel_file(source: Path, label: str) -> Path:
    """A kernel image QEMU can boot: ``source`` itself, or when it is xz-compressed its
    decompressed copy in the cache (made once)."""
    if not source.is_file():
        raise HarnessError(f"{source} does not exist")
    data = source.read_bytes()
    if not data.startswith(b"\xfd7zXZ\0"):
        return source
    digest = hashlib.sha256(data).hexdigest()[:16]
    out = cache_dir() / f"vmlinuz-{label}-{digest}"
    if not out.is_file():
        _write_atomic(out, lzma.decompress(data))
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------------------------
# One boot
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StepResult:
    name: str
    rc: int
    stdout: str
    stderr: str
    seconds: float


@dataclasses.dataclass
class BootResult:
    kernel: str
    cpu: str
    wall_seconds: float
    console: str
    release: str = ""
    steps: dict[str, StepResult] = dataclasses.field(default_factory=dict)
    done: bool = False

    @property
    def label(self) -> str:
        return f"{self.kernel}__{self.cpu}"

    def step(self, name: str) -> StepResult:
        if name not in self.steps:
            raise HarnessError(
                f"{self.label}: the guest did not report step {name!r}; console tail:\n"
                + "\n".join(self.console.splitlines()[-25:])
            )
        return self.steps[name]

    def probe_profile(self) -> dict[str, Any]:
        step = self.step("probe")
        if step.rc != 0:
            raise HarnessError(f"{self.label}: probe exited {step.rc}: {step.stderr.strip()}")
        data: dict[str, Any] = json.loads(step.stdout)
        return data


def parse_console(text: str, result: BootResult) -> None:
    lines = text.replace("\r", "").splitlines()
    current: str | None = None
    part = ""
    out: list[str] = []
    err: list[str] = []
    for line in lines:
        if not line.startswith(MARK):
            if current is not None:
                (out if part == "out" else err).append(line)
            continue
        words = line[len(MARK):].split()
        if not words:
            continue
        if words[0] == "boot" and len(words) >= 2:
            result.release = words[1]
        elif words[0] == "begin" and len(words) >= 2:
            current, part, out, err = words[1], "out", [], []
        elif words[0] == "stderr" and current is not None:
            part = "err"
        elif words[0] == "end" and current is not None:
            fields = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            seconds = float(fields.get("end", 0)) - float(fields.get("start", 0))
            result.steps[current] = StepResult(
                current, int(fields.get("rc", "-1")), "\n".join(out) + "\n",
                "\n".join(err), round(seconds, 2),
            )
            current = None
        elif words[0] == "done":
            result.done = True


def boot(kernel: str, cpu: str, initramfs: Path, timeout: float | None = None) -> BootResult:
    if timeout is None:
        timeout = float(os.environ.get("PSCI_HOOK_NESTED_BOOT_TIMEOUT", "480"))
    command = [
        qemu_binary(),
        "-M", "virt,virtualization=on,gic-version=3",
        "-cpu", CPUS[cpu],
        "-smp", "1",
        "-m", "1024",
        "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(kernel_image(kernel)),
        "-initrd", str(initramfs),
        "-append", "console=ttyAMA0 rdinit=/init quiet loglevel=1 panic=-1",
    ]
    start = time.monotonic()
    try:
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
        console = proc.stdout.decode("utf-8", errors="replace")
        if proc.returncode != 0:
            console += f"\n[qemu exit {proc.returncode}: " + proc.stderr.decode(
                "utf-8", errors="replace").strip() + "]"
    except subprocess.TimeoutExpired as exc:
        console = (exc.stdout or b"").decode("utf-8", errors="replace")
        console += f"\n[timed out after {timeout:.0f} s]"
    result = BootResult(kernel, cpu, round(time.monotonic() - start, 1), console)
    parse_console(console, result)
    return result


def boot_all(combos: Iterable[tuple[str, str]], initramfs: Path,
             parallel: int = 2) -> Iterator[BootResult]:
    """Boot each (kernel, cpu), at most ``parallel`` at a time, in completion order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    combos = list(combos)
    for kernel in dict.fromkeys(k for k, _ in combos):
        kernel_image(kernel)  # decompressed once, before the boots run in parallel
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(boot, k, c, initramfs) for k, c in combos]
        for future in as_completed(futures):
            yield future.result()


def shared_profile(kernel: str, cpu: str) -> dict[str, Any] | None:
    path = shared_dir() / "profiles" / f"{kernel}__{cpu}.json"
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data

"""The Debian package, for real: build it, install it with apt, check it, run the hook, purge it.

scripts/build-deb builds dist/psci-hook_VERSION_all.deb from this work tree; apt installs it with
its dependencies from the archive; the tests below check every installed path, mode, owner and
conffile, run the installed hook the way libvirt runs it, remove it, purge it, and check that
nothing is left. The machine is left as it was found (the module's teardown purges on failure).

Needs root and the build dependencies of scripts/deps/packaging.apt (scripts/setup installs them).
About 20-40 s: the build is about 10 s, apt install and purge a few seconds each.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.fake_daemon import FakeDaemon

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "psci-hook"
HOOK = Path("/etc/libvirt/hooks/qemu.d/50-psci-hook")
CONFIG = Path("/etc/psci-hook/psci-hook.conf")
UNITS = ("psci-hook-probe.service", "psci-hook-refresh.service", "psci-hook-watch.service")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# The environment libvirt gives a hook (virCommandAddEnvPassCommon), nothing else.
LIBVIRT_ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}
# Where systemd enablement and its bookkeeping live: nothing of ours may stay there after purge.
SYSTEMD_STATE = (Path("/etc/systemd/system"), Path("/var/lib/systemd/deb-systemd-helper-enabled"),
                 Path("/var/lib/systemd/deb-systemd-helper-masked"))

DOMAIN_X86 = b"""<domain type='kvm'>
  <name>x86-guest</name>
  <uuid>8f2e1a52-5bb1-4c1c-9a57-6d7c0e7c2b11</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
</domain>
"""
DOMAIN_AARCH64 = b"""<domain type='kvm'>
  <name>arm-guest</name>
  <uuid>4b9a7c1e-0d55-4f0e-8a43-1f2d3c4b5a69</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu>1</vcpu>
  <os><type arch='aarch64' machine='virt-7.2'>hvm</type></os>
  <cpu mode='host-passthrough'/>
</domain>
"""

timings: dict[str, float] = {}


def run(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done  # type: ignore[no-any-return]


def package_status() -> str:
    """dpkg's status of the package ('' when dpkg does not know it)."""
    done = run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", PACKAGE, check=False)
    return done.stdout.strip() if done.returncode == 0 else ""


def run_hook(*argv: str, xml: bytes) -> subprocess.CompletedProcess[bytes]:
    """The installed hook, run as libvirt runs it: env -i, the domain XML on stdin."""
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in LIBVIRT_ENV.items()),
                           str(HOOK), *argv], input=xml, capture_output=True, timeout=60,
                          check=False)


def ours_below(places: tuple[Path, ...]) -> set[str]:
    return {str(p) for place in places if place.exists()
            for p in place.rglob("*") if "psci-hook" in p.name}


@pytest.fixture(scope="module")
def deb() -> Path:
    if os.geteuid() != 0:
        pytest.fail("installing a .deb needs root", pytrace=False)
    if package_status():
        pytest.fail(f"{PACKAGE} is already known to dpkg ({package_status()}): this test installs "
                    f"and purges it; run 'apt-get purge {PACKAGE}' first", pytrace=False)
    started = time.monotonic()
    done = run(REPO / "scripts" / "build-deb", check=False)
    timings["build"] = time.monotonic() - started
    assert done.returncode == 0, f"scripts/build-deb failed:\n{done.stdout}\n{done.stderr}"
    (path,) = (REPO / "dist").glob(f"{PACKAGE}_*_all.deb")
    return path


@pytest.fixture(scope="module")
def contents(deb: Path) -> dict[str, tuple[str, str]]:
    """Every path in the .deb -> (mode string, owner/group), as dpkg-deb lists them."""
    listing = run("dpkg-deb", "--contents", deb).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, name, *rest = line.split()
        path = name[1:].rstrip("/") or "/"
        entries[path] = (mode, owner) if not rest else (mode, owner + " " + " ".join(rest))
    return entries


# Purge removes these whole. Empty ones may be there already (the e2e harness bind-mounts private
# copies over them inside its namespaces): they are put back, empty, after the purge.
PURGED_DIRS = (Path("/etc/psci-hook"), Path("/run/psci-hook"))


@pytest.fixture(scope="module")
def installed(deb: Path, contents: dict[str, tuple[str, str]]) -> Iterator[dict[str, object]]:
    """apt-get install ./psci-hook_*.deb; the teardown purges whatever happened."""
    for directory in PURGED_DIRS:
        if directory.is_dir() and any(directory.iterdir()):
            pytest.fail(f"{directory} is not empty, and purging {PACKAGE} removes it: this test "
                        "will not destroy files it did not create", pytrace=False)
    empty_before = [d for d in PURGED_DIRS if d.is_dir()]
    existed = {path for path in contents if os.path.lexists(path)}
    systemd_before = ours_below(SYSTEMD_STATE)
    with tempfile.TemporaryDirectory() as tmp:
        daemon = FakeDaemon(Path(tmp))
        started = time.monotonic()
        try:
            done = run("apt-get", "install", "-y", "-q", str(deb), env=APT_ENV, check=False)
            timings["install"] = time.monotonic() - started
            assert done.returncode == 0, f"apt-get install failed:\n{done.stdout}\n{done.stderr}"
            state: dict[str, object] = {
                "install_output": done.stdout + done.stderr,
                "existed": existed,
                "systemd_before": systemd_before,
                "reloaded_on_install": daemon.got_sighup(),
            }
        finally:
            daemon.stop()
        try:
            yield state
        finally:
            if package_status():
                run("apt-get", "purge", "-y", "-q", PACKAGE, env=APT_ENV, check=False)
            for directory in empty_before:
                directory.mkdir(mode=0o755, exist_ok=True)


def test_installs_with_its_dependencies_from_the_archive(installed: dict[str, object]) -> None:
    assert package_status() == "ii"
    depends = run("dpkg-query", "-W", "-f", "${Depends}", PACKAGE).stdout
    for dependency in ("python3-lxml", "python3-structlog", "python3"):
        assert dependency in depends
    for name in ("python3-lxml", "python3-structlog"):
        assert run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name).stdout.strip() == "ii"
    fields = run("dpkg-query", "-W", "-f", "${Recommends}|${Enhances}|${Architecture}",
                 PACKAGE).stdout
    assert fields == "python3-libvirt, python3-systemd|libvirt-daemon-system|all"


def test_every_path_mode_and_owner(installed: dict[str, object],
                                   contents: dict[str, tuple[str, str]]) -> None:
    listed = set(run("dpkg", "-L", PACKAGE).stdout.split())
    assert set(contents) - {"/"} <= listed | {"/."}
    existed = installed["existed"]
    assert isinstance(existed, set)
    for path, (mode, owner) in contents.items():
        if path in existed and mode.startswith("d"):
            continue  # a directory of the base system (/etc, /usr/bin, /lib -> usr/lib, ...)
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (0, 0), path
        assert owner == "root/root", path
        assert stat.filemode(st.st_mode) == mode, path
        if stat.S_ISLNK(st.st_mode):
            continue
        if stat.S_ISDIR(st.st_mode) or path in (str(HOOK), "/usr/bin/psci-hook"):
            assert stat.S_IMODE(st.st_mode) == 0o755, path
        else:
            assert stat.S_IMODE(st.st_mode) == 0o644, path

    # The hook: a real executable file, not a symlink (AppArmor matches resolved paths), run by
    # the distribution's python3 in isolated mode.
    assert HOOK.is_file() and not HOOK.is_symlink()
    assert HOOK.read_bytes() == (REPO / "hooks" / "50-psci-hook").read_bytes()
    assert HOOK.read_text().splitlines()[0] == "#!/usr/bin/python3 -I"
    assert CONFIG.read_bytes() == (REPO / "psci_hook/data/psci-hook.conf").read_bytes()
    assert Path("/usr/bin/psci-hook").read_text().splitlines()[0] == "#!/usr/bin/python3"

    # The module where /usr/bin/python3 -I finds it, with the bundled profiles inside.
    site = Path("/usr/lib/python3/dist-packages/psci_hook")
    assert (site / "__init__.py").is_file()
    profiles = sorted(p.name for p in (site / "data/profiles").glob("*.json"))
    assert profiles == sorted(p.name for p in (REPO / "psci_hook/data/profiles").glob("*.json"))
    # One copy of the hook and units per system: not also inside the Python package.
    assert not (site / "data/hooks").exists() and not (site / "data/systemd").exists()

    units = {Path(p).name: Path(p) for p in contents if p.endswith(".service")}
    assert sorted(units) == sorted(UNITS)
    for name, path in units.items():
        assert str(path.parent) in ("/lib/systemd/system", "/usr/lib/systemd/system")
        assert path.read_bytes() == (REPO / "packaging/systemd" / name).read_bytes()

    assert "/usr/share/man/man8/psci-hook.8.gz" in contents
    assert "/usr/share/doc/psci-hook/copyright" in contents


def test_conffiles(installed: dict[str, object]) -> None:
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE).stdout
    names = sorted(line.split()[0] for line in conffiles.strip().splitlines())
    assert names == sorted([str(HOOK), str(CONFIG)])
    info = Path(f"/var/lib/dpkg/info/{PACKAGE}.conffiles").read_text().split()
    assert sorted(info) == names

    # An admin's edit survives a reinstall of the same package, without a prompt (stdin is
    # /dev/null: a prompt would fail the command).
    original = CONFIG.read_text()
    try:
        CONFIG.write_text(original + "\n[hook]\nmode = warn\n")
        deb = next((REPO / "dist").glob(f"{PACKAGE}_*_all.deb"))
        done = run("dpkg", "-i", deb, env=APT_ENV)
        assert CONFIG.read_text().endswith("mode = warn\n")
        assert "warning" not in done.stderr, done.stderr
        # An edit with mistakes: the installation says so, names each one, and succeeds.
        CONFIG.write_text(original + "\n[hook]\nunrecoreded = veto\ntimeout = 10s\n")
        done = run("dpkg", "-i", deb, env=APT_ENV)
        lines = done.stderr.splitlines()
        assert f"psci-hook: warning: {CONFIG} has mistakes; the hook uses the settings it can " \
               "read and the defaults for the rest (psci-hook config --check shows them):" \
               in lines, done.stderr
        assert any(line.startswith(f"psci-hook: {CONFIG}:") and "unknown setting "
                   "'unrecoreded' (did you mean 'unrecorded'?)" in line for line in lines)
        assert any("timeout '10s' is not a number of seconds" in line for line in lines)
        assert package_status() == "ii"
    finally:
        CONFIG.write_text(original)


def test_distribution_python_imports_it_in_isolated_mode(installed: dict[str, object]) -> None:
    done = run("env", "-i", "PATH=/usr/bin:/bin", "/usr/bin/python3", "-I", "-c",
               "import psci_hook, psci_hook.hook; print(psci_hook.__file__)", cwd="/")
    assert done.stdout.strip() == "/usr/lib/python3/dist-packages/psci_hook/__init__.py"


def test_the_command_and_the_man_page(installed: dict[str, object]) -> None:
    from psci_hook import __version__

    done = run("env", "-i", "PATH=/usr/bin:/bin", "psci-hook", "--version")
    assert done.stdout.strip() == f"psci-hook {__version__}"
    site = Path("/usr/lib/python3/dist-packages/psci_hook/commands")
    for module in sorted(site.glob("[!_]*.py")):
        # Every command shipped parses its own --help with the distribution's libraries.
        done = run("env", "-i", "PATH=/usr/bin:/bin", "psci-hook", module.stem, "--help")
        assert done.stdout.startswith("usage: psci-hook"), module.stem
    assert run("man", "-w", "psci-hook").stdout.strip() == "/usr/share/man/man8/psci-hook.8.gz"
    # Shell completion where bash-completion and zsh look, completing with the installed
    # command's own words.
    bash = Path("/usr/share/bash-completion/completions/psci-hook")
    assert bash.read_bytes() == (REPO / "packaging/completion/psci-hook.bash").read_bytes()
    assert Path("/usr/share/zsh/vendor-completions/_psci-hook").is_file()
    done = run("env", "-i", "PATH=/usr/bin:/bin", "bash", "-c",
               f"source {bash}; COMP_WORDS=(psci-hook con); COMP_CWORD=1; _psci_hook; "
               'echo "${COMPREPLY[@]}"; COMP_WORDS=(psci-hook check --no); COMP_CWORD=2; '
               '_psci_hook; echo "${COMPREPLY[@]}"')
    assert done.stdout.splitlines() == ["conformance config", "--no-config"], done.stdout
    # On a packaged host "psci-hook install" has nothing to install, and says why.
    with tempfile.TemporaryDirectory() as root:
        done = run("psci-hook", "install", "--root", root, check=False)
        assert done.returncode == 2
        assert "a distribution package installs the hook and units itself" in done.stderr


def test_doctor_on_the_installed_package(installed: dict[str, object]) -> None:
    """The installed command checks the installed hook and says plainly that no libvirt daemon
    runs here (this machine has none in its own mount namespace)."""
    from psci_hook import __version__

    text = run("env", "-i", "PATH=/usr/bin:/bin", "psci-hook", "doctor", check=False, cwd="/")
    data = run("env", "-i", "PATH=/usr/bin:/bin", "psci-hook", "doctor", "--json", check=False,
               cwd="/")
    assert (text.stderr, data.stderr) == ("", "")
    checks = {c["check"]: c for c in json.loads(data.stdout)["checks"]}
    assert checks["hook file"]["status"] == "ok", text.stdout
    interpreter = checks["hook interpreter"]
    assert interpreter["status"] == "ok", text.stdout
    assert interpreter["details"]["interpreter"] == "/usr/bin/python3"
    assert interpreter["details"]["version"] == __version__
    assert interpreter["details"]["location"] == "/usr/lib/python3/dist-packages/psci_hook"
    daemon = checks["daemon"]
    assert daemon["status"] == "warn"
    assert daemon["summary"].startswith("no libvirt daemon (virtqemud or libvirtd) is running")
    assert daemon["fix"].startswith("systemctl start virtqemud.service")
    assert re.search(r"^warn +daemon +no libvirt daemon \(virtqemud or libvirtd\) is running",
                     text.stdout, flags=re.MULTILINE), text.stdout
    # x86 without a [host] profile: no profile the hook could use, and nothing records guests.
    assert checks["host profile"]["status"] == "FAIL"
    assert checks["watcher"]["status"] == "FAIL"
    assert (text.returncode, data.returncode) == (1, 1)
    # Every line that is not ok names its fix.
    assert text.stdout.count("fix: ") == sum(c["status"] != "ok" for c in checks.values())


def test_units_are_valid_and_enabled_as_designed(installed: dict[str, object]) -> None:
    """The probe is enabled (multi-user.target); refresh and watch are pulled in by whichever
    libvirt daemon runs, through drop-ins that are inert for a daemon that is not installed:
    no enablement, hence none of systemctl's "added as a dependency to a non-existent unit"
    warnings (this machine has neither virtqemud.service nor libvirtd.service), and the
    ordering (After= the daemons, Before= libvirt-guests) stays in the units."""
    paths = [p for p in run("dpkg", "-L", PACKAGE).stdout.split() if p.endswith(".service")]
    done = run("systemd-analyze", "verify", *paths, check=False)
    assert done.returncode == 0, done.stderr
    wanted = {str(p.relative_to("/etc/systemd/system"))
              for p in Path("/etc/systemd/system").glob("*/psci-hook-*.service")}
    assert wanted == {"multi-user.target.wants/psci-hook-probe.service"}
    output = installed["install_output"]
    assert isinstance(output, str)
    assert "non-existent unit" not in output, output
    assert "is added as a dependency" not in output, output
    dropin = (REPO / "packaging/systemd/libvirt-daemon.d/psci-hook-companions.conf").read_bytes()
    assert b"\nWants=psci-hook-refresh.service psci-hook-watch.service\n" in dropin
    for daemon in ("virtqemud", "libvirtd"):
        matches = [Path(p) for p in run("dpkg", "-L", PACKAGE).stdout.split()
                   if p.endswith(f"/{daemon}.service.d/psci-hook-companions.conf")]
        assert len(matches) == 1, daemon
        assert str(matches[0].parent.parent) in ("/lib/systemd/system", "/usr/lib/systemd/system")
        assert matches[0].read_bytes() == dropin
    for unit in ("psci-hook-refresh.service", "psci-hook-watch.service"):
        text = (REPO / "packaging/systemd" / unit).read_text()
        assert "After=virtqemud.service libvirtd.service" in text, unit
    assert "Before=libvirt-guests.service" in \
        (REPO / "packaging/systemd/psci-hook-watch.service").read_text()


def test_maintainer_scripts_reload_and_never_restart_libvirt(
    installed: dict[str, object]
) -> None:
    assert installed["reloaded_on_install"], "postinst did not SIGHUP a running virtqemud"
    for script in ("postinst", "postrm", "prerm"):
        text = Path(f"/var/lib/dpkg/info/{PACKAGE}.{script}").read_text()
        assert not re.search(r"(restart|stop|start)\W+\S*(virtqemud|libvirtd)", text), script
        assert "try-reload-or-restart" not in text


def test_the_installed_hook_runs_as_libvirt_runs_it(installed: dict[str, object]) -> None:
    for argv, xml in (
        (("x86-guest", "started", "begin", "-"), DOMAIN_X86),
        (("arm-guest", "reconnect", "begin", "-"), DOMAIN_AARCH64),
        (("arm-guest", "prepare", "begin", "-"), b"not even XML"),
        (("x86-guest", "migrate", "begin", "-"), DOMAIN_X86),
        (("x86-guest", "restore", "begin", "-"), DOMAIN_X86),
    ):
        done = run_hook(*argv, xml=xml)
        assert (done.returncode, done.stdout) == (0, b""), (argv, done.stderr)
        assert b"cannot load psci_hook" not in done.stderr, (argv, done.stderr)


def test_remove_keeps_the_conffiles_and_the_leftover_hook_allows(
    installed: dict[str, object], tmp_path: Path
) -> None:
    daemon = FakeDaemon(tmp_path)
    try:
        started = time.monotonic()
        removed = run("apt-get", "remove", "-y", "-q", PACKAGE, env=APT_ENV)
        timings["remove"] = time.monotonic() - started
        assert daemon.got_sighup(), "postrm remove did not SIGHUP a running virtqemud"
    finally:
        daemon.stop()
    assert package_status() == "rc"
    assert HOOK.is_file() and CONFIG.is_file()  # conffiles stay until purge (Debian policy)
    assert not Path("/usr/lib/python3/dist-packages/psci_hook").exists()
    # libvirt still runs the hook it found; without its package it must never block anything.
    done = run_hook("arm-guest", "migrate", "begin", "-", xml=DOMAIN_AARCH64)
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert done.stderr == (b"psci-hook: not installed (removed, not purged): migration allowed "
                           b"unchecked; purging the package removes this hook\n")
    # ... and the removal said so.
    assert ("psci-hook: removed, not purged: /etc/libvirt/hooks/qemu.d/50-psci-hook stays (a "
            "conffile) and allows every migration unchecked; 'apt-get purge psci-hook' removes "
            "it.") in removed.stdout + removed.stderr, removed  # apt shows dpkg's stderr on stdout


def test_purge_leaves_nothing(installed: dict[str, object],
                             contents: dict[str, tuple[str, str]]) -> None:
    Path("/run/psci-hook").mkdir(exist_ok=True)  # as the probe unit would have left it
    Path("/run/psci-hook/host.json").write_text("{}")
    Path(str(CONFIG) + ".dpkg-old").write_text("an old backup\n")
    started = time.monotonic()
    run("apt-get", "purge", "-y", "-q", PACKAGE, env=APT_ENV)
    timings["purge"] = time.monotonic() - started
    assert package_status() == ""
    existed = installed["existed"]
    assert isinstance(existed, set)
    left = sorted(p for p in contents if p not in existed and os.path.lexists(p))
    assert left == [], "left behind by purge"
    for path in ("/etc/psci-hook", "/run/psci-hook", str(HOOK),
                 "/usr/lib/python3/dist-packages/psci_hook"):
        assert not os.path.lexists(path), path
    assert not list(Path("/var/lib/dpkg/info").glob(f"{PACKAGE}.*"))
    assert ours_below(SYSTEMD_STATE) == installed["systemd_before"]
    print("deb timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


def test_lintian_finds_no_errors(deb: Path) -> None:
    """Errors fail; warnings and notes are printed (-s shows them) but accepted."""
    started = time.monotonic()
    done = run("lintian", "--fail-on", "error", "--info", deb, check=False)
    timings["lintian"] = time.monotonic() - started
    print(done.stdout)
    assert done.returncode == 0, done.stdout
    assert not re.search(r"^E: ", done.stdout, flags=re.MULTILINE), done.stdout


def test_debian_directory_is_self_contained() -> None:
    """packaging/debian copied to debian/ the usual way builds the whole package: no symlinks
    (they would point outside debian/) and every file psci-hook.install names is in the tree."""
    debian = REPO / "packaging" / "debian"
    assert [p for p in debian.rglob("*") if p.is_symlink()] == []
    sources = [line.split()[0] for line in (debian / "psci-hook.install").read_text().splitlines()
               if line.strip()]
    assert {Path(s).name for s in sources} >= set(UNITS)
    assert all((REPO / s).is_file() for s in sources), sources

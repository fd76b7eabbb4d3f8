"""The RPM spec (packaging/rpm/psci-hook.spec), as far as a Debian machine can check it.

Checked here, for real:
  * rpmspec parses the spec; its version agrees with psci_hook.__version__ and debian/changelog.
  * scripts/build-rpm builds the source tarball and the source RPM with rpmbuild -bs.
  * rpmbuild -ba builds the noarch binary RPM from that tarball, running the spec's own %prep,
    %build, %install, %check and %files (rpm's unpackaged-file and missing-file checks included),
    with rpm's own Python dependency generator. The file list, modes, owners, %config(noreplace)
    flags, dependencies and scriptlets of the result are checked below, the payload is compared
    with the work tree, every scriptlet passes sh -n, and the %post scriptlet is run to show it
    asks a running libvirt daemon to reload (SIGHUP, without systemd) and never restarts it.

NOT checked here (no Fedora or RHEL machine, and Debian's rpm package lacks their macros):
  * The real pyproject-rpm-macros: %pyproject_buildrequires (build dependencies generated from
    pyproject.toml), %pyproject_wheel, %pyproject_install, %pyproject_save_files and
    %pyproject_check_import are replaced by stand-ins (rpm_on_debian.macros, rpm_on_debian.py)
    that build the same wheel with python3 -m build and install it with installer.
  * The real systemd-rpm-macros: %systemd_post/%systemd_preun/%systemd_postun(_with_restart)
    are stand-ins shaped like Fedora's (systemd-update-helper); presets are not applied.
  * Fedora's build-root policy scripts (brp-mangle-shebangs on the hook's "#!/usr/bin/python3 -I",
    byte-compilation, man page compression) and Fedora's rpmlint configuration.
  * Installing the RPM with dnf, with python3-lxml and python3-structlog from Fedora or EPEL;
    the scriptlets under a running systemd; %config(noreplace) on upgrade (.rpmnew) and erase
    (.rpmsave).
  * SELinux: file labels of the hook, the virt_hooks_unconfined boolean, and whether virtqemud
    may execute the hook under enforcing (see the README).
  * RHEL 9 specifics: Python 3.9 and setuptools 53 (the spec's %prep relaxes setuptools>=61).
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from psci_hook import __version__
from tests.packaging.fake_daemon import FakeDaemon

pytestmark = [
    pytest.mark.packaging,
]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SPEC = REPO / "packaging" / "rpm" / "psci-hook.spec"
DIST = REPO / "dist"
CLEAN_ENV = {**os.environ, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run(*cmd: str | Path, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=CLEAN_ENV, check=False,
                          **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {done.returncode}:\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def built() -> dict[str, Path]:
    """scripts/build-rpm --binary with the stand-in macros: tarball, SRPM and noarch RPM."""
    run(REPO / "scripts" / "build-rpm", "--binary", "--",
        "--load", HERE / "rpm_on_debian.macros",
        "--define", f"psci_rpm_on_debian {HERE / 'rpm_on_debian.py'}")
    version = f"{__version__}-1"
    paths = {
        "tarball": DIST / f"psci-hook-{__version__}.tar.gz",
        "srpm": DIST / f"psci-hook-{version}.src.rpm",
        "rpm": DIST / f"psci-hook-{version}.noarch.rpm",
    }
    for path in paths.values():
        assert path.is_file(), f"scripts/build-rpm did not make {path}"
    return paths


def query(package: Path, fmt: str) -> str:
    return run("rpm", "-qp", "--qf", fmt, package).stdout


def test_spec_parses_and_versions_agree() -> None:
    run("rpmspec", "-P", SPEC)
    fields = run("rpmspec", "-q", "--srpm", "--qf", "%{NAME} %{VERSION} %{ARCH} %{LICENSE}",
                 SPEC).stdout
    assert fields == f"psci-hook {__version__} noarch GPL-2.0-or-later"
    changelog = (REPO / "packaging/debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"psci-hook ({__version__})")


def test_source_rpm_and_tarball(built: dict[str, Path]) -> None:
    listed = run("rpm", "-qpl", built["srpm"]).stdout.split()
    assert sorted(listed) == sorted([built["tarball"].name, "psci-hook.spec"])
    prefix = f"psci-hook-{__version__}/"
    with tarfile.open(built["tarball"]) as archive:
        members = {m.name: m for m in archive.getmembers()}
        for needed in ("hooks/50-psci-hook", "psci_hook/data/psci-hook.conf", "setup.cfg",
                       "pyproject.toml", "packaging/man/psci-hook.8", "README.md",
                       "packaging/rpm/50-psci-hook.preset",
                       "packaging/systemd/psci-hook-probe.service"):
            assert prefix + needed in members, needed
        link = members[prefix + "psci_hook/data/hooks/50-psci-hook"]
        assert link.issym() and link.linkname == "../../../hooks/50-psci-hook"
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())


def test_binary_rpm_files_modes_and_config_flags(built: dict[str, Path]) -> None:
    assert query(built["rpm"], "%{ARCH}") == "noarch"
    rows = query(built["rpm"],
                 "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEFLAGS:fflags}\t"
                 "%{FILEUSERNAME}:%{FILEGROUPNAME}\n]").splitlines()
    files = {name: (mode, flags) for name, mode, flags, _ in (r.split("\t") for r in rows)}
    assert all(r.endswith("\troot:root") for r in rows)
    hook = "/etc/libvirt/hooks/qemu.d/50-psci-hook"
    assert files[hook] == ("-rwxr-xr-x", "cn")  # %config(noreplace), a real executable file
    assert files["/etc/psci-hook/psci-hook.conf"] == ("-rw-r--r--", "cn")
    assert files["/usr/bin/psci-hook"][0] == "-rwxr-xr-x"
    for unit in ("probe", "refresh", "watch"):
        assert files[f"/usr/lib/systemd/system/psci-hook-{unit}.service"][0] == "-rw-r--r--"
    assert "/usr/lib/systemd/system-preset/50-psci-hook.preset" in files
    for daemon in ("virtqemud", "libvirtd"):
        dropin = f"/usr/lib/systemd/system/{daemon}.service.d/psci-hook-companions.conf"
        assert files[dropin][0] == "-rw-r--r--", daemon
    assert any(name.startswith("/usr/share/man/man8/psci-hook.8") for name in files)
    assert files["/usr/share/bash-completion/completions/psci-hook"][0] == "-rw-r--r--"
    assert files["/usr/share/zsh/site-functions/_psci-hook"][0] == "-rw-r--r--"
    site = [n for n in files if n.endswith("/site-packages/psci_hook/__init__.py")]
    assert len(site) == 1
    package_dir = site[0].rsplit("/", 1)[0]
    profiles = {n.rsplit("/", 1)[1] for n in files if n.startswith(package_dir + "/data/profiles/")}
    assert profiles == {p.name for p in (REPO / "psci_hook/data/profiles").glob("*.json")}
    assert not any(n.startswith(package_dir + "/data/hooks") for n in files)
    assert not any(n.startswith(package_dir + "/data/systemd") for n in files)
    # Directories we share with libvirt are owned, not created unowned; /etc/libvirt is libvirt's.
    assert "/etc/libvirt/hooks/qemu.d" in files and "/etc/libvirt" not in files


def test_binary_rpm_payload_is_the_work_tree(built: dict[str, Path], tmp_path: Path) -> None:
    cpio = subprocess.run(["rpm2cpio", str(built["rpm"])], capture_output=True, check=True,
                          env=CLEAN_ENV).stdout
    subprocess.run(["cpio", "-idm", "--quiet"], input=cpio, cwd=tmp_path, check=True)
    hook = tmp_path / "etc/libvirt/hooks/qemu.d/50-psci-hook"
    assert hook.read_bytes() == (REPO / "hooks/50-psci-hook").read_bytes()
    assert hook.read_text().splitlines()[0] == "#!/usr/bin/python3 -I"
    assert (tmp_path / "etc/psci-hook/psci-hook.conf").read_bytes() == \
        (REPO / "psci_hook/data/psci-hook.conf").read_bytes()
    for unit in (REPO / "packaging/systemd").glob("*.service"):
        assert (tmp_path / "usr/lib/systemd/system" / unit.name).read_bytes() == unit.read_bytes()


def test_binary_rpm_dependencies(built: dict[str, Path]) -> None:
    requires = query(built["rpm"], "[%{REQUIRENAME}\n]").split()
    for name in ("python3-lxml", "python3-structlog", "/usr/bin/python3"):
        assert name in requires
    assert query(built["rpm"], "[%{RECOMMENDNAME}\n]").split() == ["python3-libvirt",
                                                                    "python3-systemd"]
    assert query(built["rpm"], "[%{ENHANCENAME}\n]").split() == ["libvirt-daemon-driver-qemu"]


def test_scriptlets_reload_libvirt_and_never_restart_it(built: dict[str, Path]) -> None:
    scripts = {tag: query(built["rpm"], f"%{{{tag}}}")
               for tag in ("POSTIN", "PREUN", "POSTUN")}
    for tag, text in scripts.items():
        assert run("sh", "-n", "-c", text, check=False).returncode == 0, (tag, text)
        assert not re.search(r"(restart|stop|start)\W+\S*(virtqemud|libvirtd)", text), tag
        assert "try-reload-or-restart" not in text
    assert "systemctl reload" in scripts["POSTIN"]
    assert "systemctl reload" in scripts["POSTUN"]
    assert "rm -rf /run/psci-hook" in scripts["POSTUN"]
    for tag in ("POSTIN", "PREUN", "POSTUN"):
        assert "psci-hook-probe.service" in scripts[tag]


def test_post_scriptlet_sighups_a_running_daemon_without_systemd(built: dict[str, Path]) -> None:
    script = query(built["rpm"], "%{POSTIN}")
    assert "/run/systemd/system" in script
    with tempfile.TemporaryDirectory() as tmp:
        # A host without systemd, also where this machine runs it: the scriptlet's test for
        # systemd looks at a directory that does not exist.
        script = script.replace("/run/systemd/system", str(Path(tmp) / "no-systemd"))
        daemon = FakeDaemon(Path(tmp))
        try:
            run("sh", "-c", script, "post", "1")
            assert daemon.got_sighup(), "%post did not SIGHUP a running virtqemud"
        finally:
            daemon.stop()


def test_rpmlint_report(built: dict[str, Path]) -> None:
    """Printed only (-s shows it): Debian's rpmlint uses openSUSE defaults (Group, Packager,
    signatures), and 'executable-marked-as-config-file' on the hook is a choice, not a slip."""
    done = run("rpmlint", SPEC, built["rpm"], built["srpm"], check=False)
    print(done.stdout)

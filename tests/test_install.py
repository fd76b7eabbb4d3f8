"""``psci-hook install``: the pip/venv install path, into a temporary --root.

The last tests build a real wheel, install it into a fresh virtualenv and run the installed
command and the installed hook from there, as an operator without packages would.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from psci_hook.cli import main
from psci_hook.commands import install
from psci_hook.environment import Environment
from psci_hook.status import ExitStatus

REPO = Path(__file__).resolve().parent.parent
HOOK = "etc/libvirt/hooks/qemu.d/50-psci-hook"
CONFIG = "etc/psci-hook/psci-hook.conf"
UNITS = [f"etc/systemd/system/psci-hook-{name}.service" for name in ("probe", "refresh", "watch")]
MANIFEST = "var/lib/psci-hook/install-manifest.json"
SCRIPT = "/opt/psci-hook/bin/psci-hook"  # argv[0] as a console script would see it

NON_AARCH64_DOMAIN = b"""<domain type='kvm'>
  <name>x86-guest</name>
  <uuid>8f2e1a52-5bb1-4c1c-9a57-6d7c0e7c2b11</uuid>
  <memory unit='KiB'>1048576</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
</domain>
"""


def run_cli(*args: str, argv0: str = SCRIPT, environ: dict[str, str] | None = None,
            ) -> tuple[int, str, str]:
    env = Environment.for_test([argv0, *args], environ=environ)
    status = main(env=env)
    out = env.stdout.getvalue().decode()  # type: ignore[attr-defined]
    err = env.stderr.getvalue()  # type: ignore[attr-defined]
    return status, out, err


@pytest.fixture
def script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A psci-hook console script at a known place, found through argv[0]."""
    path = tmp_path / "venv" / "bin" / "psci-hook"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def files_below(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_install_puts_every_file_in_place(root: Path, script: str) -> None:
    status, out, err = run_cli("install", "--root", str(root), argv0=script)
    assert (status, err) == (0, "")

    hook = root / HOOK
    assert hook.is_file() and not hook.is_symlink()
    assert stat.S_IMODE(hook.stat().st_mode) == 0o755
    source = (REPO / "hooks" / "50-psci-hook").read_bytes()
    first, _, body = hook.read_bytes().partition(b"\n")
    assert first == f"#!{sys.executable} -I".encode()
    assert body == source.partition(b"\n")[2], "only the #! line may differ from hooks/"

    assert (root / CONFIG).read_bytes() == (REPO / "psci_hook/data/psci-hook.conf").read_bytes()
    assert stat.S_IMODE((root / CONFIG).stat().st_mode) == 0o644
    for unit in UNITS:
        text = (root / unit).read_text()
        source_text = (REPO / "packaging/systemd" / Path(unit).name).read_text()
        assert text == source_text.replace("ExecStart=/usr/bin/psci-hook", f"ExecStart={script}")
        assert f"ExecStart={script} " in text
        assert stat.S_IMODE((root / unit).stat().st_mode) == 0o644

    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["schema"] == "psci-hook.install-manifest/v1"
    assert sorted(manifest["files"]) == sorted(["/" + p for p in [HOOK, CONFIG, *UNITS]])
    assert "/etc/libvirt/hooks/qemu.d" in manifest["directories"]

    assert f"installed  /{HOOK} (#!{sys.executable} -I)" in out
    assert "systemctl reload virtqemud.service" in out
    assert "systemctl enable --now psci-hook-probe.service" in out
    assert f"below {root}" in out


def test_reinstall_is_idempotent(root: Path, script: str) -> None:
    assert run_cli("install", "--root", str(root), argv0=script)[0] == 0
    before = {p: (root / p).read_bytes() for p in [HOOK, CONFIG, *UNITS]}
    status, out, err = run_cli("install", "--root", str(root), argv0=script)
    assert (status, err) == (0, "")
    assert f"unchanged  /{HOOK}" in out
    assert f"unchanged  /{CONFIG}" in out
    assert before == {p: (root / p).read_bytes() for p in [HOOK, CONFIG, *UNITS]}


def test_python_option_and_its_checks(root: Path, script: str) -> None:
    status, _, _ = run_cli("install", "--root", str(root), "--python", "/usr/bin/python3",
                           argv0=script)
    assert status == 0
    assert (root / HOOK).read_bytes().startswith(b"#!/usr/bin/python3 -I\n")
    for bad in ("python3", "/opt/my venv/bin/python", "/" + "x" * 130):
        status, _, err = run_cli("install", "--root", str(root), "--python", bad, argv0=script)
        assert status == 2, bad
        assert err.startswith("psci-hook: ") and err.count("\n") == 1


def test_existing_configuration_is_never_replaced(root: Path, script: str) -> None:
    config = root / CONFIG
    config.parent.mkdir(parents=True)
    config.write_text("[hook]\nmode = warn\n")
    status, out, err = run_cli("install", "--root", str(root), "--force", argv0=script)
    assert (status, err) == (0, "")
    assert config.read_text() == "[hook]\nmode = warn\n"
    assert f"kept       /{CONFIG}" in out
    assert f"/{CONFIG}" not in json.loads((root / MANIFEST).read_text())["files"]
    assert run_cli("install", "--root", str(root), "--uninstall")[0] == 0
    assert config.read_text() == "[hook]\nmode = warn\n"
    assert files_below(root) == {"etc", "etc/psci-hook", "etc/psci-hook/psci-hook.conf"}


def test_a_hook_it_did_not_install_is_left_alone_unless_forced(root: Path, script: str) -> None:
    hook = root / HOOK
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nexit 0\n")  # a distribution package's, say
    status, out, err = run_cli("install", "--root", str(root), argv0=script)
    assert status == ExitStatus.CONFLICT == 7
    assert "refusing to replace /etc/libvirt/hooks/qemu.d/50-psci-hook" in err
    assert hook.read_text() == "#!/bin/sh\nexit 0\n"
    assert f"installed  /{UNITS[0]}" in out  # the rest is still installed
    status, out, err = run_cli("install", "--root", str(root), "--force", argv0=script)
    assert (status, err) == (0, "")
    assert f"replaced   /{HOOK}" in out
    assert hook.read_bytes().startswith(f"#!{sys.executable} -I\n".encode())


def test_a_symlink_in_the_way_is_replaced_by_a_real_file(root: Path, script: str) -> None:
    hook = root / HOOK
    hook.parent.mkdir(parents=True)
    hook.symlink_to(REPO / "hooks" / "50-psci-hook")
    assert run_cli("install", "--root", str(root), "--force", argv0=script)[0] == 0
    assert hook.is_file() and not hook.is_symlink()


def test_an_upgrade_replaces_its_own_unchanged_files(
    root: Path, script: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_cli("install", "--root", str(root), "--python", "/usr/bin/python3",
                   argv0=script)[0] == 0
    # The same files from a newer release: here, another interpreter changes the hook.
    status, out, err = run_cli("install", "--root", str(root), argv0=script)
    assert (status, err) == (0, "")
    assert f"updated    /{HOOK}" in out


def test_no_units(root: Path, script: str) -> None:
    status, out, _ = run_cli("install", "--root", str(root), "--no-units", argv0=script)
    assert status == 0
    assert not (root / "etc/systemd").exists()
    assert "systemctl enable" not in out


def test_uninstall_removes_exactly_what_install_put(root: Path, script: str) -> None:
    (root / "etc").mkdir()  # existed before: must stay
    (root / "etc/hostname").write_text("host-a\n")
    assert run_cli("install", "--root", str(root), argv0=script)[0] == 0
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "psci-hook-probe.service").symlink_to("/etc/systemd/system/psci-hook-probe.service")
    (wants / "other.service").symlink_to("/lib/systemd/system/other.service")

    status, out, err = run_cli("install", "--root", str(root), "--uninstall")
    assert (status, err) == (0, "")
    assert files_below(root) == {
        "etc", "etc/hostname", "etc/systemd", "etc/systemd/system",
        "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/multi-user.target.wants/other.service",
    }
    assert f"removed    /{HOOK}" in out
    assert "(enablement)" in out
    assert "systemctl reload virtqemud.service" in out


def test_uninstall_keeps_files_changed_since(root: Path, script: str) -> None:
    assert run_cli("install", "--root", str(root), argv0=script)[0] == 0
    with (root / CONFIG).open("a") as handle:
        handle.write("[hook]\nmode = warn\n")
    status, out, _ = run_cli("install", "--root", str(root), "--uninstall")
    assert status == 0
    assert f"kept       /{CONFIG} (changed since" in out
    assert files_below(root) == {"etc", "etc/psci-hook", "etc/psci-hook/psci-hook.conf"}


def test_uninstall_without_an_install(root: Path) -> None:
    status, out, err = run_cli("install", "--root", str(root), "--uninstall")
    assert status == 2
    assert out == ""
    assert "nothing was installed by psci-hook install" in err


def test_units_fall_back_to_python_dash_m(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(install.sysconfig, "get_path", lambda name: str(tmp_path / "nowhere"))
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    status, _, _ = run_cli("install", "--root", str(root), "--python", str(python),
                           argv0="/usr/lib/python3/dist-packages/psci_hook/__main__.py",
                           environ={"PATH": str(tmp_path / "nowhere")})
    assert status == 0
    text = (root / UNITS[0]).read_text()
    assert f"ExecStart={python} -I -m psci_hook probe --write\n" in text


def test_the_interpreter_must_import_this_psci_hook(tmp_path: Path) -> None:
    env = Environment.for_test(["psci-hook"])
    install.require_importable(sys.executable, env)  # this venv imports this very package
    assert env.stderr.getvalue() == ""  # type: ignore[attr-defined]

    cannot = tmp_path / "user-site-python"
    cannot.write_text("#!/bin/sh\nexit 1\n")
    cannot.chmod(0o755)
    with pytest.raises(install.InstallError, match="cannot import psci_hook"):
        install.require_importable(str(cannot), env)

    other = tmp_path / "other-python"
    other.write_text("#!/bin/sh\necho /usr/lib/python3/dist-packages/psci_hook/__init__.py\n")
    other.chmod(0o755)
    install.require_importable(str(other), env)
    assert "imports psci_hook from /usr/lib/python3/dist-packages/psci_hook" in \
        env.stderr.getvalue()  # type: ignore[attr-defined]


def test_unwritable_root_is_one_line(tmp_path: Path, script: str) -> None:
    status, _, err = run_cli("install", "--root", str(tmp_path / "missing"), argv0=script)
    assert status == 2
    assert err.count("\n") == 1


# --- the real pip path: a wheel, a fresh venv, the installed command and hook ------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    src = tmp_path_factory.mktemp("src") / "psci-hook"
    # A copy, so that the build leaves nothing (build/, *.egg-info) in the work tree.
    shutil.copytree(REPO, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "dist", "build", "*.egg-info",
                                                  "__pycache__", ".*_cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        check=True,
    )
    (found,) = out.glob("psci_hook-*.whl")
    return found


@pytest.mark.slow
def test_the_wheel_carries_real_copies_of_the_hook_and_units(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        hook = archive.read("psci_hook/data/hooks/50-psci-hook")
        units = {n: archive.read(f"psci_hook/data/systemd/{n}")
                 for n in ("psci-hook-probe.service", "psci-hook-refresh.service",
                           "psci-hook-watch.service")}
        info = archive.getinfo("psci_hook/data/hooks/50-psci-hook")
    assert hook == (REPO / "hooks/50-psci-hook").read_bytes()
    for name, content in units.items():
        assert content == (REPO / "packaging/systemd" / name).read_bytes()
    assert not stat.S_ISLNK(info.external_attr >> 16)
    assert "psci_hook/data/psci-hook.conf" in names
    assert any(n.startswith("psci_hook/data/profiles/") for n in names)


@pytest.mark.slow
def test_pip_install_into_a_venv_then_psci_hook_install(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # The distribution's python3 and its lxml and structlog, as on a host.
    # (Debian's pip, seen through the system site packages, installs into the venv: quicker than
    # ensurepip, same result.)
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True)
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", "--no-deps",
                    "--no-index", "--disable-pip-version-check", str(wheel)], check=True)
    root = tmp_path / "root"
    root.mkdir()
    clean = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    done = subprocess.run([str(venv / "bin/psci-hook"), "install", "--root", str(root)],
                          env=clean, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    hook = root / HOOK
    assert hook.read_bytes().startswith(f"#!{venv}/bin/python -I\n".encode()) or \
        hook.read_bytes().startswith(f"#!{venv}/bin/python3 -I\n".encode())
    assert f"ExecStart={venv}/bin/psci-hook probe --write" in (root / UNITS[0]).read_text()

    # Run the installed hook as libvirt does: minimal environment, XML on stdin.
    libvirt_env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "HOME": "/root"}
    for argv, xml in ((["x86-guest", "started", "begin", "-"], NON_AARCH64_DOMAIN),
                      (["x86-guest", "migrate", "begin", "-"], NON_AARCH64_DOMAIN)):
        ran = subprocess.run([str(hook), *argv], input=xml, env=libvirt_env,
                             capture_output=True, timeout=60, check=False)
        assert (ran.returncode, ran.stdout) == (0, b""), ran.stderr
        if argv[1] == "migrate":
            assert b"cannot load psci_hook" not in ran.stderr, ran.stderr

    done = subprocess.run([str(venv / "bin/psci-hook"), "install", "--root", str(root),
                           "--uninstall"], env=clean, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert files_below(root) == set()
    assert os.listdir(root) == []

"""psci_hook.cache: the atomic boot-time cache and the hook's load_host_profile().

The inline probe runs against the fake KVM of tests/kvmfake.py (acceptable only because this
x86_64 machine cannot run arm64 ioctls; the real probe is tested in tests/nested/).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from psci_hook import cache, kvm
from psci_hook import probe as probe_mod
from psci_hook.status import ExitStatus
from tests import kvmfake

BOOT_ID = "11111111-2222-3333-4444-555555555555"
OTHER_BOOT = "99999999-2222-3333-4444-555555555555"
RELEASE = "6.12.0-test-arm64"


def uname() -> os.uname_result:
    return os.uname_result(("Linux", "h", RELEASE, "#1", "aarch64"))


@pytest.fixture
def boot_id(tmp_path: Path) -> Path:
    path = tmp_path / "boot_id"
    path.write_text(BOOT_ID + "\n")
    return path


def profile_data(boot: str = BOOT_ID, release: str = RELEASE) -> dict[str, Any]:
    return {
        "schema": "psci-hook.host-profile/v1",
        "kernel_release": release,
        "machine": "aarch64",
        "registers": {"PSCI_VERSION": 0x10003},
        "boot_id": boot,
        "probed_at": "2026-01-01T00:00:00Z",
    }


def load(run_dir: Path, boot_id: Path, probe_inline: bool = False,
         fake: kvmfake.FakeKvm | None = None, **kw: Any) -> Any:
    return cache.load_host_profile(run_dir, probe_inline, syscalls=fake, boot_id_path=boot_id,
                                   uname=uname, clock=lambda: 0.0, **kw)


def test_atomic_write(tmp_path: Path) -> None:
    run_dir = tmp_path / "run" / "psci-hook"
    path = cache.write_profile(run_dir, profile_data())
    assert path == run_dir / "host.json"
    assert json.loads(path.read_text()) == profile_data()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o755
    # Rewriting replaces the file in one rename: a reader holding the old one keeps it whole.
    with open(path) as old:
        cache.write_profile(run_dir, profile_data(boot=OTHER_BOOT))
        assert json.loads(old.read()) == profile_data()
    assert json.loads(path.read_text())["boot_id"] == OTHER_BOOT
    assert sorted(p.name for p in run_dir.iterdir()) == ["host.json"]  # no temporary left


def test_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    cache.write_profile(run_dir, profile_data())

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        cache.write_profile(run_dir, profile_data(boot=OTHER_BOOT))
    assert json.loads((run_dir / "host.json").read_text())["boot_id"] == BOOT_ID
    assert sorted(p.name for p in run_dir.iterdir()) == ["host.json"]


def test_current_profile_is_returned(tmp_path: Path, boot_id: Path) -> None:
    cache.write_profile(tmp_path, profile_data())
    profile = load(tmp_path, boot_id)
    assert profile.registers == {0x6030000000140000: 0x10003}
    assert profile.extra["boot_id"] == BOOT_ID


@pytest.mark.parametrize(
    ("data", "reason", "text"),
    [
        (profile_data(boot=OTHER_BOOT), "stale", "from another boot"),
        ({k: v for k, v in profile_data().items() if k != "boot_id"}, "stale",
         "boot id absent"),
        (profile_data(release="6.1.0-26-arm64"), "stale",
         "from kernel 6.1.0-26-arm64, running 6.12.0-test-arm64"),
        ({"schema": "other"}, "corrupt", "schema must be"),
    ],
)
def test_unusable_cache_without_inline_probe(tmp_path: Path, boot_id: Path,
                                             data: dict[str, Any], reason: str,
                                             text: str) -> None:
    cache.write_profile(tmp_path, data)
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id)
    assert caught.value.reason == reason
    assert text in caught.value.message and "\n" not in caught.value.message
    assert "psci-hook probe --write" in caught.value.message


@pytest.mark.parametrize(
    ("content", "reason", "text"),
    [
        (b"{not json", "corrupt", "malformed JSON"),
        (b"", "corrupt", "malformed JSON"),
        (b"\xff\xfe\x00", "corrupt", "not UTF-8"),
        (b"[1, 2]", "corrupt", "must be a JSON object"),
    ],
)
def test_corrupt_file(tmp_path: Path, boot_id: Path, content: bytes, reason: str,
                      text: str) -> None:
    (tmp_path / "host.json").write_bytes(content)
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id)
    assert caught.value.reason == reason and text in caught.value.message


def test_unreadable_file(tmp_path: Path, boot_id: Path) -> None:
    path = tmp_path / "host.json"
    path.mkdir()  # reading a directory fails with EISDIR, whoever runs the test (root too)
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id)
    assert caught.value.reason == "unreadable" and "cannot read" in caught.value.message


def test_missing_file(tmp_path: Path, boot_id: Path) -> None:
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id)
    assert caught.value.reason == "missing" and "does not exist" in caught.value.message
    assert caught.value.status == ExitStatus.INTERNAL_ERROR


def test_missing_with_no_dev_kvm(tmp_path: Path, boot_id: Path) -> None:
    fake = kvmfake.FakeKvm(open_error=FileNotFoundError(2, "No such file or directory"))
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id, probe_inline=True, fake=fake)
    error = caught.value
    assert error.reason == "missing" and error.status == ExitStatus.NO_KVM
    assert isinstance(error.probe_error, kvm.NoKvm)
    assert "inline probe failed: /dev/kvm does not exist" in error.message
    assert "\n" not in error.message
    assert not (tmp_path / "host.json").exists()


def test_missing_on_a_machine_that_is_not_arm64(tmp_path: Path, boot_id: Path) -> None:
    fake = kvmfake.FakeKvm(machine="x86_64")
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, boot_id, probe_inline=True, fake=fake)
    assert caught.value.status == ExitStatus.NOT_AARCH64
    assert fake.calls == []


def test_missing_is_probed_inline_and_written_back(tmp_path: Path, boot_id: Path) -> None:
    run_dir = tmp_path / "run"
    profile = load(run_dir, boot_id, probe_inline=True, fake=kvmfake.FakeKvm())
    assert profile.kernel_release == RELEASE
    assert profile.cpreg_lists is not None and "pmu+pauth+sve" in profile.cpreg_lists
    written = json.loads((run_dir / "host.json").read_text())
    assert written["boot_id"] == BOOT_ID
    # The next call uses the cache: no KVM at all.
    untouchable = kvmfake.FakeKvm(machine="x86_64")
    assert load(run_dir, boot_id, probe_inline=True, fake=untouchable) == profile
    assert untouchable.calls == []


def test_stale_is_probed_inline(tmp_path: Path, boot_id: Path) -> None:
    cache.write_profile(tmp_path, profile_data(boot=OTHER_BOOT))
    profile = load(tmp_path, boot_id, probe_inline=True, fake=kvmfake.FakeKvm(),
                   write_back=False)
    assert profile.registers[0x6030000000140000] == 0x10001  # the fake kernel's, not the file's
    assert json.loads((tmp_path / "host.json").read_text())["boot_id"] == OTHER_BOOT


def test_inline_probe_with_an_unwritable_cache(tmp_path: Path, boot_id: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    profile = load(blocker / "run", boot_id, probe_inline=True, fake=kvmfake.FakeKvm())
    assert profile.kernel_release == RELEASE  # the write-back failure is not an error


def test_unreadable_boot_id(tmp_path: Path) -> None:
    with pytest.raises(cache.HostProfileUnavailable) as caught:
        load(tmp_path, tmp_path / "no-such-boot-id", probe_inline=True,
             fake=kvmfake.FakeKvm())
    assert caught.value.reason == "identity" and "boot id" in caught.value.message


def test_current_identity_defaults(monkeypatch: pytest.MonkeyPatch, boot_id: Path) -> None:
    monkeypatch.setattr(probe_mod, "BOOT_ID_PATH", boot_id)
    monkeypatch.setattr(probe_mod, "UNAME", uname)
    assert cache.current_identity() == (BOOT_ID, RELEASE)

"""`psci-hook config` (--check validates a file like `sshd -t`), `psci-hook profiles`, and a
mistyped command, run as an operator runs them: the installed console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psci_hook.policy import SETTINGS
from tests.helpers import REPO

PSCI_HOOK = Path(sys.executable).parent / "psci-hook"
SHIPPED = REPO / "psci_hook" / "data" / "psci-hook.conf"


def psci_hook(*argv: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    env["PSCI_HOOK_CONFIG"] = str(config or REPO / "tests" / "no-such.conf")
    return subprocess.run([str(PSCI_HOOK), *argv], capture_output=True, text=True, env=env,
                          timeout=60, check=False, cwd="/")


def test_config_check_accepts_the_shipped_file() -> None:
    done = psci_hook("config", "--check", str(SHIPPED))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{SHIPPED}: OK\n", "")
    assert psci_hook("config", "--check", "--quiet", str(SHIPPED)).stdout == ""


def test_config_check_names_every_mistake_and_exits_1(tmp_path: Path) -> None:
    config = tmp_path / "psci-hook.conf"
    config.write_text("[hook]\nunrecoreded = veto\nmode = enforcing  # strict\ntimeout = 10s\n"
                      "domain_types = kvm qemu\n[host]\nprofile = /nonexistent/host.json\n")
    done = psci_hook("config", "--check", str(config))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"psci-hook: {config}:2: unknown setting 'unrecoreded' (did you mean 'unrecorded'?); "
        "ignored",
        f"psci-hook: {config}:3: mode 'enforcing' is not one of enforce, warn (did you mean "
        "'enforce'?); the default (enforce) applies",
        f"psci-hook: {config}:4: timeout '10s' is not a number of seconds (no unit) from 0.1 "
        "to 300; the default (10) applies",
        f"psci-hook: {config}:7: [host] profile is unusable, every decision would be "
        "PROFILE_UNAVAILABLE: /nonexistent/host.json: cannot read: No such file or directory",
    ]
    assert done.stdout == (f"{config}: 4 mistakes; the hook uses the settings it can read and "
                           "the defaults for the rest\n")
    # The same file from $PSCI_HOOK_CONFIG, and as JSON.
    assert psci_hook("config", "--check", config=config).returncode == 1
    data = json.loads(psci_hook("config", "--json", config=config).stdout)
    assert data["valid"] is False and len(data["problems"]) == 4
    assert data["settings"]["hook"]["domain_types"] == {"value": "kvm, qemu", "line": 5}
    assert data["settings"]["hook"]["unrecorded"] == {"value": "allow", "line": None}


def test_config_check_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "none.conf"
    done = psci_hook("config", "--check", str(missing))
    assert (done.returncode, done.stderr) == (1, f"psci-hook: {missing}: no such file\n")
    done = psci_hook("config", "--check", config=missing)  # the hook's file: optional
    assert (done.returncode, done.stdout) == (
        0, f"{missing}: no such file; every setting takes its default\n")


def test_config_shows_every_setting_and_where_it_comes_from(tmp_path: Path) -> None:
    config = tmp_path / "psci-hook.conf"
    config.write_text("[hook]\nmode = warn\non_error = allow\n")
    done = psci_hook("config", config=config)
    assert done.returncode == 0 and done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == f"# {config}"
    assert "mode = warn                                 # line 2" in lines
    assert "on_error = allow                            # line 3, the default" in lines
    assert "timeout = 10                                # default" in lines
    assert len([line for line in lines if " = " in line]) == len(SETTINGS)


def test_a_mistyped_command_gets_a_did_you_mean() -> None:
    done = psci_hook("chekc", "--help")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == ("psci-hook: usage: unknown command 'chekc' (did you mean 'check'?); "
                           "`psci-hook --help` lists them\n")


@pytest.mark.slow
def test_profiles_lists_this_host_and_the_bundled_ones(tmp_path: Path) -> None:
    done = psci_hook("profiles")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("this host: /run/psci-hook/host.json (the boot-time cache")
    assert "  6.1__a57 " in done.stdout and "SYNTHETIC" in done.stdout
    profile = REPO / "psci_hook" / "data" / "profiles" / "6.12__a76.json"
    config = tmp_path / "c.conf"
    config.write_text(f"[host]\nprofile = {profile}\n")
    data = json.loads(psci_hook("profiles", "--json", config=config).stdout)
    assert data["this_host"]["usable"] and data["this_host"]["path"] == str(profile)
    assert data["this_host"]["kernel"] == "6.12.118+deb13-arm64"
    assert set(data["bundled"]) >= {"6.1__a57", "synthetic-5.4__a72"}
    # Every bundled name is accepted where a profile is expected.
    for name in data["bundled"]:
        done = psci_hook("check", "--host-profile", name, "--guest-profile", name, "--quiet")
        assert done.returncode == 0, (name, done.stderr)
    assert os.path.exists(data["bundled"]["6.1__a57"]["path"])

"""psci-hook audit: journalctl's time syntax, time zones, rotated and compressed syslog files,
and where it looked."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from psci_hook.cli import main
from psci_hook.commands import audit
from psci_hook.commands.audit import TimeError, parse_time, rotations
from psci_hook.environment import Environment
from tests.helpers import REPO

PLUS_ONE = dt.timezone(dt.timedelta(hours=1))
NOW = dt.datetime(2026, 12, 5, 21, 30, 15, tzinfo=PLUS_ONE)  # 20:30:15Z


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW),
    ("today", dt.datetime(2026, 12, 5, tzinfo=PLUS_ONE)),
    ("yesterday", dt.datetime(2026, 12, 4, tzinfo=PLUS_ONE)),
    ("tomorrow", dt.datetime(2026, 12, 6, tzinfo=PLUS_ONE)),
    ("-2h", NOW - dt.timedelta(hours=2)),
    ("2h ago", NOW - dt.timedelta(hours=2)),
    ("1h 30min ago", NOW - dt.timedelta(minutes=90)),
    ("-1d12h", NOW - dt.timedelta(hours=36)),
    ("+5min", NOW + dt.timedelta(minutes=5)),
    ("@1764964800", dt.datetime(2025, 12, 5, 20, 0, tzinfo=dt.timezone.utc)),
    ("2026-12-05", dt.datetime(2026, 12, 5, tzinfo=PLUS_ONE)),
    ("2026-12-05 20:00", dt.datetime(2026, 12, 5, 20, 0, tzinfo=PLUS_ONE)),
    ("2026-12-05 20:00:07.5", dt.datetime(2026, 12, 5, 20, 0, 7, 500000, tzinfo=PLUS_ONE)),
    ("2026-12-05T20:00+01:00", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc)),
    ("2026-12-05T19:00Z", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc)),
    ("2026-12-05 19:00:00 UTC", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc)),
    ("2026-12-05T14:00-0500", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc)),
    ("2026-12-05 20:00 Europe/Berlin", dt.datetime(2026, 12, 5, 19, 0, tzinfo=dt.timezone.utc)),
    ("20:00", dt.datetime(2026, 12, 5, 20, 0, tzinfo=PLUS_ONE)),
    ("Sat 2026-12-05 20:00", dt.datetime(2026, 12, 5, 20, 0, tzinfo=PLUS_ONE)),
])
def test_journalctl_time_syntax(text: str, expected: dt.datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text", ["foo", "", "2026-13-01", "2026-12-05 25:00", "-2 parsecs",
                                  "2h", "yesterday-ish", "@soon", "2026-12-05 Mars/Olympus"])
def test_what_is_not_a_time(text: str) -> None:
    with pytest.raises(TimeError):
        parse_time(text, NOW)


def _line(when: str, decision: str, domain: str = "vm1") -> str:
    event = {"event": "psci-hook.decision", "decision": decision, "op": "migrate",
             "domain": domain, "codes": ["CPREG_COUNT"] if decision == "veto" else [],
             "timestamp": when}
    return f"Dec  5 00:00:00 host-b psci-hook: {json.dumps(event)}"


def _audit(*argv: str, tz: str = "Etc/GMT-1") -> subprocess.CompletedProcess[str]:
    """The installed command as an operator runs it; local time UTC+1 (POSIX's sign is
    inverted: Etc/GMT-1 is UTC+1)."""
    script = Path(sys.executable).parent / "psci-hook"
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": tz,
           "PSCI_HOOK_CONFIG": str(REPO / "tests" / "no-such.conf")}
    return subprocess.run([str(script), "audit", *argv], capture_output=True, text=True,
                          env=env, timeout=60, check=False)


@pytest.fixture
def logs(tmp_path: Path) -> list[Path]:
    """syslog.2.gz (compressed), syslog.1 and syslog, as logrotate leaves them."""
    older = tmp_path / "syslog.2.gz"
    with gzip.open(older, "wt") as handle:
        handle.write(_line("2026-12-04T10:00:00.000001Z", "veto") + "\n")
    (tmp_path / "syslog.1").write_text(_line("2026-12-05T18:59:59Z", "allow") + "\n")
    (tmp_path / "syslog").write_text("\n".join([
        _line("2026-12-05T19:00:00.5Z", "veto"), _line("2026-12-05T20:10:00Z", "allow", "vm2"),
        "Dec  5 20:11:00 host-b kernel: unrelated"]) + "\n")
    return rotations(tmp_path / "syslog")


def test_rotated_and_compressed_files_are_read(logs: list[Path]) -> None:
    assert [p.name for p in logs] == ["syslog.2.gz", "syslog.1", "syslog"]
    data = json.loads(_audit(*map(str, logs), "--json").stdout)
    assert data["total"] == 4 and data["by_decision"] == {"veto": 2, "allow": 2}
    assert data["sources"] == [str(p) for p in logs]


def test_time_zones_are_honoured(logs: list[Path]) -> None:
    files = list(map(str, logs))
    totals = {since: json.loads(_audit(*files, "--since", since, "--json").stdout)["total"]
              for since in ("2026-12-05T20:00+01:00", "2026-12-05T19:00Z", "2026-12-05 20:00",
                            "2026-12-05 19:00 UTC", "2026-12-05 20:00 Europe/Berlin")}
    assert set(totals.values()) == {2}, totals
    assert json.loads(_audit(*files, "--until", "2026-12-05T19:00Z", "--json").stdout)[
        "total"] == 2


def test_relative_times_and_day_names(logs: list[Path]) -> None:
    """Against the real clock: events from a moment ago, today and years back."""
    now = dt.datetime.now(dt.timezone.utc)
    recent = logs[-1].parent / "recent"
    recent.write_text("\n".join([
        _line((now - dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ"), "veto"),
        _line((now - dt.timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%SZ"), "allow")]) + "\n")
    total = {since: json.loads(_audit(str(recent), "--since", since, "--json").stdout)["total"]
             for since in ("-2h", "1 hour ago", "-2d", "-1w", "yesterday")}
    assert total == {"-2h": 1, "1 hour ago": 1, "-2d": 1, "-1w": 2, "yesterday": 1}


@pytest.mark.parametrize("since", ["foo", "2026-11-31", "-3 fortnights"])
def test_a_bad_time_is_exit_2_with_one_line(logs: list[Path], since: str) -> None:
    done = _audit(str(logs[-1]), "--since", since)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"psci-hook: --since {since!r}: not a time; journalctl's "
                                  "forms: 2026-12-05, ")
    assert done.stderr.count("\n") == 1
    as_json = _audit(str(logs[-1]), "--until", since, "--json")
    assert as_json.returncode == 2 and "not a time" in json.loads(as_json.stdout)["error"]


def test_the_report_says_where_it_looked(logs: list[Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert _audit(str(logs[-1])).stdout.startswith(f"read {logs[-1]}\npsci-hook decisions: 2 ")
    # No files: where the hook writes. With no journal socket (the configuration names one that
    # does not exist), the syslog files and their rotations.
    config = tmp_path / "c.conf"
    config.write_text(f"[log]\njournal_socket = {tmp_path / 'no-journal'}\n")
    env = Environment.for_test(["psci-hook", "audit"], environ={"PSCI_HOOK_CONFIG": str(config)})
    monkeypatch.setattr(audit, "SYSLOG_FILES", (tmp_path / "messages", logs[-1]))
    assert main(env=env) == 0
    out = env.stdout.getvalue().decode()  # type: ignore[attr-defined]
    assert out.startswith(f"read {', '.join(map(str, logs))}\npsci-hook decisions: 4 "), out
    # Neither: it says so rather than reporting 0 decisions as if it had looked.
    monkeypatch.setattr(audit, "SYSLOG_FILES", (tmp_path / "messages",))
    env = Environment.for_test(["psci-hook", "audit"], environ={"PSCI_HOOK_CONFIG": str(config)})
    assert main(env=env) == 0
    out = env.stdout.getvalue().decode()  # type: ignore[attr-defined]
    assert out.startswith(f"read nothing: no journal and no {tmp_path / 'messages'} on this "
                          "host"), out


def test_a_directory_or_a_missing_file_is_one_line(tmp_path: Path) -> None:
    for path in (tmp_path, tmp_path / "missing"):
        done = _audit(str(path))
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        assert done.stderr.startswith(f"psci-hook: cannot read the decisions: {path}: ")
    assert os.path.isdir(tmp_path)

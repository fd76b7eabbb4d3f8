"""The README's tables stay in step with the code."""

from __future__ import annotations

from psci_hook.codes import CODES
from psci_hook.policy import SETTINGS
from psci_hook.status import ExitStatus
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_every_finding_code_is_in_the_readme_with_its_meaning() -> None:
    for code in CODES.values():
        assert f"| `{code.name}` | {code.severity.name.lower()} | {code.meaning} |" in README


def test_every_exit_status_is_in_the_readme() -> None:
    for status in ExitStatus:
        if status in (ExitStatus.OK, ExitStatus.VETO, ExitStatus.BAD_INPUT):
            continue
        assert f"{int(status)} " in README, status.name


def test_readme_gives_the_commands_ci_runs() -> None:
    assert "scripts/test" in README and "scripts/setup --minimal && .venv/bin/psci-hook matrix" \
        in README
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_one_settings_table_with_every_setting_of_the_shipped_file() -> None:
    """The Policy table has one row per setting, in the order of psci_hook.policy.SETTINGS, with
    its default and possible values; test_policy checks the shipped file against SETTINGS."""
    policy = README[README.index("## Policy\n"):README.index("## Exit statuses\n")]
    rows = [line for line in policy.splitlines() if line.startswith("| `[")]
    assert len(rows) == len(SETTINGS)
    for row, setting in zip(rows, SETTINGS):
        default = f"`{setting.default}`" if setting.default else "(none)"
        assert row.startswith(f"| `[{setting.section}]` | `{setting.key}` | {default} | "
                              f"{setting.values} | "), row

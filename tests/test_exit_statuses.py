"""Every exit status has one name and is documented where operators look: the README's table
gives each number (tests/packaging/test_manpage.py checks the man page's EXIT STATUS table)."""

from __future__ import annotations

from psci_hook.status import ExitStatus
from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_table_gives_each_status_a_command() -> None:
    table = README[README.index("## Exit statuses\n"):README.index("## Finding codes\n")]
    for status in ExitStatus:
        if int(status) > 2:
            assert f"{int(status)} " in table or f"{int(status)}-" in table, status.name


def test_one_is_the_only_number_with_two_names() -> None:
    """1 is the hook's veto (libvirt shows it) and a checking tool's "something failed"; every
    other number means one thing (record, conformance and install no longer borrow 1 or 2)."""
    shared = {int(s) for n, s in ExitStatus.__members__.items() if s.name != n}
    assert shared == {1}
    assert ExitStatus.PROBLEMS_FOUND is ExitStatus.VETO
    assert len({ExitStatus.NOT_ALL_RECORDED, ExitStatus.DISAGREEMENT, ExitStatus.CONFLICT,
                ExitStatus.VETO, ExitStatus.BAD_INPUT}) == 5

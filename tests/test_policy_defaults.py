"""Every policy default against its documentation: the shipped file and the README table.

`Policy()` compared with the shipped file as shipped compares the defaults with themselves
(every line there is a comment). Uncommented, each line states a value; the file must then
parse to `Policy()`, so a default changed in the code alone (or in the file alone) fails here.
"""

from __future__ import annotations

import re

from psci_hook.policy import SETTINGS, Policy, parse_policy
from tests.helpers import REPO

# section -> its settings, from the one table the reader, `psci-hook config` and the README use.
_SECTIONS: dict[str, set[str]] = {}
for _setting in SETTINGS:
    _SECTIONS.setdefault(_setting.section, set()).add(_setting.key)

SHIPPED = REPO / "psci_hook" / "data" / "psci-hook.conf"
README = REPO / "README.md"
# Settings the shipped file documents but the README table leaves out: none (one table of every
# setting, issue 18).
NOT_IN_README: set[tuple[str, str]] = set()


def uncommented(text: str) -> str:
    """The shipped file with every commented-out setting ("#key = value") made active."""
    return re.sub(r"(?m)^#(\w+ =)", r"\1", text)


def shipped_settings() -> set[tuple[str, str]]:
    section, found = "", set()
    for line in SHIPPED.read_text().splitlines():
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            section = header.group(1)
        setting = re.match(r"#(\w+) =", line)
        if setting:
            found.add((section, setting.group(1)))
    return found


def readme_table() -> list[tuple[str, str, str]]:
    """(section, setting, default) rows of the README's policy table."""
    text = README.read_text()
    table = text[text.index("\n## Policy\n"):text.index("\n## Exit statuses\n")]
    rows, section = [], ""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("`"):
            continue
        if cells[0]:
            section = cells[0].strip("`[]")
        rows.append((section, cells[1].strip("`"), cells[2]))
    return rows


def test_the_shipped_file_uncommented_parses_to_the_defaults() -> None:
    active = uncommented(SHIPPED.read_text())
    assert not re.search(r"(?m)^#\w+ =", active)
    assert parse_policy(active, str(SHIPPED)) == Policy()


def test_the_shipped_file_documents_every_setting_in_its_section() -> None:
    every = {(section, key) for section, keys in _SECTIONS.items() for key in keys}
    assert shipped_settings() == every


def test_the_readme_table_states_the_defaults() -> None:
    rows = readme_table()
    assert {(s, k) for s, k, _ in rows} == shipped_settings() - NOT_IN_README
    lines: list[str] = []
    for section in _SECTIONS:
        lines.append(f"[{section}]")
        for row_section, key, default in rows:
            if row_section == section:
                # "(none)": no profile file, the boot-time cache.
                lines.append(f"{key} = {'' if default.startswith('(') else default.strip('`')}")
    assert parse_policy("\n".join(lines), "README.md") == Policy()


def test_the_defaults_themselves() -> None:
    # The documentation above could drift together with the code; these are the values the
    # README and the shipped file promise operators (a fail-open hook that vetoes WA_DROPPED).
    policy = Policy()
    assert (policy.mode, policy.unrecorded, policy.annotate, policy.on_error) == (
        "enforce", "allow", True, "allow")
    assert (policy.timeout, policy.domain_types, policy.host_profile) == (
        10.0, frozenset({"kvm"}), None)
    assert (policy.qemu_generation, policy.veto_dropped_workarounds, policy.rehearse,
            policy.allow_domain_override, policy.history_limit, policy.log_target) == (
        "auto", True, True, True, 8, "auto")
    assert str(policy.journal_socket) == "/run/systemd/journal/socket"
    assert str(policy.syslog_socket) == "/dev/log"
    assert policy.enforcing


def test_an_empty_file_and_empty_values_take_the_defaults() -> None:
    assert parse_policy("") == Policy()
    empty = "\n".join(f"[{s}]\n" + "".join(f"{k} =\n" for k in sorted(keys))
                      for s, keys in _SECTIONS.items())
    assert parse_policy(empty) == Policy()


def test_number_bounds() -> None:
    for text, value in (("0", 0), ("64", 64), ("3", 3)):
        assert parse_policy(f"[hook]\nhistory_limit = {text}").history_limit == value
    for text in ("-1", "65"):
        try:
            parse_policy(f"[hook]\nhistory_limit = {text}", "f.conf")
        except ValueError as exc:
            assert str(exc) == (f"f.conf:2: history_limit '{text}' is not a whole number from 0 "
                                "to 64; the default (8) applies")
        else:
            raise AssertionError(f"history_limit = {text} accepted")
    assert parse_policy("[hook]\ntimeout = 0.1").timeout == 0.1
    assert parse_policy("[hook]\ntimeout = 300").timeout == 300
    for text in ("0.09", "300.5"):
        try:
            parse_policy(f"[hook]\ntimeout = {text}", "f.conf")
        except ValueError as exc:
            assert str(exc) == (f"f.conf:2: timeout '{text}' is not a number of seconds (no "
                                "unit) from 0.1 to 300; the default (10) applies")
        else:
            raise AssertionError(f"timeout = {text} accepted")

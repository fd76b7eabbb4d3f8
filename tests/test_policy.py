"""The configuration file: defaults, every setting, and mistakes that never switch a check off.

Each mistake is a problem naming the file and line (and, for a misspelt name or value, what was
probably meant); the settings that could be read apply, the documented defaults the rest.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from psci_hook.policy import (
    MAX_FILE,
    SETTINGS,
    Policy,
    PolicyError,
    PolicyReading,
    load_policy,
    parse_policy,
    parse_policy_text,
    read_policy,
    split_list,
)
from tests.helpers import REPO

SHIPPED = REPO / "psci_hook" / "data" / "psci-hook.conf"


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    reading = read_policy(tmp_path / "none.conf")
    assert reading.policy == Policy() and reading.problems == ()


def test_the_shipped_file_documents_every_setting_with_its_default() -> None:
    assert read_policy(SHIPPED).problems == ()
    assert load_policy(SHIPPED) == Policy()
    text = SHIPPED.read_text()
    sections = re.split(r"^\[(\w+)\]$", text, flags=re.M)
    by_section = dict(zip(sections[1::2], sections[2::2]))
    for setting in SETTINGS:
        line = f"#{setting.key} = {setting.default}".rstrip()
        assert re.search(rf"^{re.escape(line)}$", by_section[setting.section], re.M), line
        # The commented line, uncommented, gives the default.
        uncommented = f"[{setting.section}]\n{setting.key} = {setting.default}\n"
        assert parse_policy(uncommented) == Policy(), uncommented


def test_every_setting() -> None:
    policy = parse_policy("""
[hook]
mode = warn
unrecorded = veto
annotate = no
on_error = veto
timeout = 2.5
domain_types = kvm, qemu
veto_dropped_workarounds = no
rehearse = off
allow_domain_override = no
history_limit = 3
[host]
profile = /etc/psci-hook/host.json
qemu_generation = tolerant
[log]
target = syslog
journal_socket = /run/x/journal
syslog_socket = /run/x/log
""")
    assert policy == Policy(
        mode="warn", unrecorded="veto", annotate=False, on_error="veto", timeout=2.5,
        domain_types=frozenset({"kvm", "qemu"}), veto_dropped_workarounds=False,
        rehearse=False, allow_domain_override=False, history_limit=3,
        host_profile=Path("/etc/psci-hook/host.json"), qemu_generation="tolerant",
        log_target="syslog", journal_socket=Path("/run/x/journal"),
        syslog_socket=Path("/run/x/log"))


@pytest.mark.parametrize("text", ["kvm,qemu", "kvm qemu", "kvm, qemu", " kvm ,, qemu ",
                                  "KVM\tqemu"])
def test_lists_take_commas_spaces_or_both(text: str) -> None:
    reading = parse_policy_text(f"[hook]\ndomain_types = {text}\n")
    assert reading.problems == ()
    assert reading.policy.domain_types == {"kvm", "qemu"}


def test_split_list() -> None:
    assert split_list("WA_LEVEL_TOO_HIGH,REG_MISSING  PSCI_UNSUPPORTED") == [
        "WA_LEVEL_TOO_HIGH", "REG_MISSING", "PSCI_UNSUPPORTED"]
    assert split_list(" , ") == []


def test_a_section_may_appear_twice() -> None:
    reading = parse_policy_text("[hook]\non_error = veto\n[log]\ntarget = none\n[hook]\n"
                                "mode = warn\n")
    assert reading.problems == ()
    assert reading.policy == Policy(on_error="veto", mode="warn", log_target="none")


def test_inline_comments_are_comments() -> None:
    reading = parse_policy_text("[hook]\nmode = warn   # until Friday\non_error = veto ; why\n")
    assert reading.problems == ()
    assert (reading.policy.mode, reading.policy.on_error) == ("warn", "veto")


# (configuration text, the problem's words, the policy that results)
MISTAKES = [
    ("[hook]\nunrecoreded = veto\non_error = veto\n",
     "2: unknown setting 'unrecoreded' (did you mean 'unrecorded'?)", Policy(on_error="veto")),
    ("[hook]\nmode = enforcing\nunrecorded = veto\n",
     "2: mode 'enforcing' is not one of enforce, warn (did you mean 'enforce'?); the default "
     "(enforce) applies", Policy(unrecorded="veto")),
    ("[hook]\ntimeout = 10s\non_error = veto\n",
     "2: timeout '10s' is not a number of seconds (no unit) from 0.1 to 300; the default (10) "
     "applies", Policy(on_error="veto")),
    ("[hook]\ntimeout = nan\n", "timeout 'nan' is not a number", Policy()),
    ("[hook]\nhistory_limit = 2.5\n", "history_limit '2.5' is not a whole number", Policy()),
    ("[hook]\nannotate = maybe\n", "annotate 'maybe' is not yes or no", Policy()),
    ("[hook]\ndomain_types = kvm, qmeu\n",
     "'qmeu': not a libvirt domain type (kvm, qemu, hvf for QEMU) (did you mean 'qemu'?); "
     "acting on kvm", Policy()),
    ("[hook]\ndomain_types = ,\n", "domain_types is empty; the default (kvm) applies",
     Policy()),
    ("[hook]\nmode = warn\nmode = enforce\n",
     "3: mode is set twice (line 2 and here); the last valid value applies", Policy()),
    ("[hooks]\non_error = veto\n",
     "1: unknown section [hooks] (did you mean 'hook'?)", Policy(on_error="veto")),
    ("[hook]\nprofile = /p.json\n",
     "2: profile belongs in [host], not [hook]; applied as [host] profile",
     Policy(host_profile=Path("/p.json"))),
    ("on_error = veto\n", "1: on_error belongs in [hook], not no section",
     Policy(on_error="veto")),
    ("[hoo\non_error = veto\n", "1: a section header cut short: '[hoo' ignored",
     Policy(on_error="veto")),
    ("[hook]\non_error = veto\n[lo", "3: a section header cut short", Policy(on_error="veto")),
    ("[host]\nprofile = host.json\n", "profile 'host.json' is not an absolute path", Policy()),
    ("[hook]\nthis is not a setting\non_error = veto\n",
     "2: not 'key = value': 'this is not a setting' ignored", Policy(on_error="veto")),
]


@pytest.mark.parametrize(("text", "problem", "policy"), MISTAKES,
                         ids=[problem[:50] for _, problem, _ in MISTAKES])
def test_a_mistake_is_named_and_the_rest_applies(text: str, problem: str,
                                                 policy: Policy) -> None:
    reading = parse_policy_text(text, "/etc/psci-hook/psci-hook.conf")
    assert reading.policy == policy
    assert reading.problems
    for message in reading.messages:
        assert message.startswith("/etc/psci-hook/psci-hook.conf:") and "\n" not in message
    assert problem in reading.messages[0], reading.messages
    with pytest.raises(PolicyError, match=re.escape(problem)):  # the strict reading
        parse_policy(text, "/etc/psci-hook/psci-hook.conf")


def test_bytes_that_are_not_text_lose_only_their_line() -> None:
    reading = parse_policy_text(b"[hook]\non_error = veto\n# caf\xe9\nmode = w\xe9rn\n"
                                + b"\x00" * 8 + b"\nunrecorded = veto\n", "c")
    assert reading.policy == Policy(on_error="veto", unrecorded="veto")
    assert [p.line for p in reading.problems] == [4, 5]


def test_unreadable_file_gives_the_defaults_and_says_why(tmp_path: Path) -> None:
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    reading = read_policy(directory)
    assert reading.policy == Policy()
    assert reading.messages == [f"{directory}: cannot read: Is a directory; every setting "
                                "takes its default"]
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(directory)


def test_the_summary_line_is_one_line() -> None:
    reading = parse_policy_text("[hook]\nmdoe = warn\ntimeout = soon\n", "f.conf")
    assert reading.summary_line() == (
        "f.conf:2: unknown setting 'mdoe' (did you mean 'mode'?); ignored (+1 more); other "
        "settings applied, defaults for the rest (psci-hook config --check)")
    single = parse_policy_text("[hook]\ntimeout = soon\n", "f.conf")
    assert single.summary_line() == (
        "f.conf:2: timeout 'soon' is not a number of seconds (no unit) from 0.1 to 300; the "
        "default (10) applies; other settings applied, defaults for the rest (psci-hook config "
        "--check)")
    assert parse_policy_text("[hook]\nmode = warn\n", "f.conf").summary_line() == ""


def test_a_problem_is_one_printable_line_whatever_the_file_holds() -> None:
    reading = parse_policy_text("[ho\x1bok]\nmo\x1bde = warn\n[hook]\nmode = w\x1barn\n", "c")
    assert len(reading.problems) == 3
    for message in reading.messages:
        assert message.isprintable(), message


def test_a_missing_file_is_the_defaults_named_by_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "none.conf"
    assert read_policy(missing) == PolicyReading(Policy(), str(missing))


def test_only_the_first_mebibyte_of_a_file_is_read(tmp_path: Path) -> None:
    """A configuration is a few kilobytes: what lies beyond MAX_FILE is not read at all."""
    config = tmp_path / "big.conf"
    head = "[hook]\nmode = warn\n"
    config.write_text(head + "#" * (MAX_FILE - len(head) - 1) + "\nannotate = no\n")
    reading = read_policy(config)
    assert (reading.policy.mode, reading.policy.annotate, reading.problems) == ("warn", True, ())
    config.write_text(head + "#" * (MAX_FILE - len(head) - 20) + "\nannotate = no\n")
    assert read_policy(config).policy.annotate is False  # within the first MAX_FILE bytes

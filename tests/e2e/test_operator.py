"""What an operator's mistakes do on a real libvirt host: a configuration with typos still
vetoes a doomed migration, names each typo in the decision's log event, and `psci-hook config
--check` run inside the host names them too.

The hosts are tests/e2e's (conftest.py); see test_migrate.py for the harness and its guests.
"""

from __future__ import annotations

import json

import pytest

from psci_hook.auditlog import events_from_lines
from tests.e2e.harness import TwoHosts
from tests.e2e.product import (
    REFUSE_LATE,
    assert_migration_vetoed,
    configure,
    profile,
    psci_hook_command,
    record_of,
    start_stamped,
)

pytestmark = pytest.mark.e2e

# The kinds of mistake that used to refuse the whole file (and with it every check, under the
# default on_error = allow): a misspelt setting, an impossible value, a unit, inline comments,
# a second [hook] section, a list with spaces.
TYPOS = """\
# psci-hook e2e test host, edited by hand
[hook]
unrecoreded = veto
mode = enforcing          # we mean it
timeout = 10s

[host]
profile = /etc/psci-hook/host.json
qemu_generation = legacy

[hook]
domain_types = kvm qemu   ; TCG guests too
"""


def test_a_configuration_with_typos_still_vetoes_and_names_them(
    hosts: TwoHosts, guest_name: str
) -> None:
    configure(hosts, "a", "6.12__a57")
    configure(hosts, "b", "5.10__a57")
    conf = hosts.path("b", "/etc/psci-hook/psci-hook.conf")
    conf.write_text(TYPOS)
    qemu = start_stamped(hosts, "a", guest_name, "6.12__a57")
    mark = hosts.log_mark("b")

    res = hosts.migrate("a", "b", guest_name)

    reason = assert_migration_vetoed(hosts, res, "a", "b", guest_name, "CPREG_COUNT", qemu)
    assert reason.endswith(f"({REFUSE_LATE})"), reason
    assert "(+" in reason and "REG_MISSING" in reason  # every blocking code, not only the first
    # The decision's event names every typo, with the host's own file and line.
    events = list(events_from_lines(hosts.read_log("b", mark).splitlines()))
    assert [e["decision"] for e in events] == ["veto"], events
    problems = events[0]["config_problems"]
    path = "/etc/psci-hook/psci-hook.conf"
    lines = conf.read_text().splitlines()
    typo_line = lines.index("unrecoreded = veto") + 1
    assert problems[0] == (f"{path}:{typo_line}: unknown setting 'unrecoreded' (did you mean "
                           "'unrecorded'?); ignored"), problems
    assert any("mode 'enforcing' is not one of enforce, warn" in p for p in problems)
    assert any("timeout '10s' is not a number of seconds" in p for p in problems)
    assert len(problems) == 3, problems  # the comments, the second [hook], the spaces are fine

    # The operator's check inside the host names the same mistakes, and fails.
    check = hosts.run_in("b", psci_hook_command(), "config", "--check")
    assert check.rc == 1, check
    assert check.stderr.splitlines() == [f"psci-hook: {p}" for p in problems]
    data = json.loads(hosts.run_in("b", psci_hook_command(), "config", "--json").stdout)
    assert data["settings"]["hook"]["domain_types"]["value"] == "kvm, qemu"

    # `check` on the source, through libvirt, predicts the destination's hook: same status,
    # same line (host a's configuration acts on qemu domains as b's does).
    predicted = hosts.run_in("a", psci_hook_command(), "check", "--domain", guest_name,
                             "--host-profile", str(profile("5.10__a57")))
    assert predicted.rc == 1, predicted
    assert f"psci-hook: VETO CPREG_COUNT domain {guest_name}: {reason}" in \
        predicted.stdout.splitlines(), (reason, predicted.stdout)

    # A good guest still migrates to that host: the typos switched nothing off, nor on.
    hosts.clear_domains()
    configure(hosts, "a", "6.1__a57")
    hosts.set_profile("b", profile("6.12__a76"))
    start_stamped(hosts, "a", guest_name, "6.1__a57")
    res = hosts.migrate("a", "b", guest_name)
    assert res.rc == 0, res.stderr
    record = record_of(hosts.dumpxml("b", guest_name))
    assert record is not None and record.origin["event"] == "migrated"

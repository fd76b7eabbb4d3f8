"""The configuration file: defaults, every setting, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from psci_hook.policy import Policy, PolicyError, load_policy, parse_policy


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_policy(tmp_path / "none.conf") == Policy()


def test_the_shipped_file_documents_the_defaults() -> None:
    shipped = REPO / "psci_hook" / "data" / "psci-hook.conf"
    assert load_policy(shipped) == Policy()
    text = shipped.read_text()
    for key in ("mode", "unrecorded", "annotate", "on_error", "timeout", "domain_types",
                "profile", "qemu_generation", "target"):
        assert f"#{key} =" in text, key


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
allow_domain_override = no
history_limit = 3
[host]
profile = /etc/psci-hook/host.json
qemu_generation = tolerant
[log]
target = syslog
syslog_socket = /run/x/log
""")
    assert (policy.mode, policy.unrecorded, policy.annotate, policy.on_error) == (
        "warn", "veto", False, "veto")
    assert policy.timeout == 2.5 and policy.domain_types == {"kvm", "qemu"}
    assert not policy.veto_dropped_workarounds and not policy.allow_domain_override
    assert policy.history_limit == 3 and str(policy.host_profile) == "/etc/psci-hook/host.json"
    assert policy.qemu_generation == "tolerant" and policy.log_target == "syslog"


@pytest.mark.parametrize(("text", "message"), [
    ("[hook]\nmode = strict", "mode = 'strict'"),
    ("[hook]\nannotate = maybe", "expected yes or no"),
    ("[hook]\ntimeout = 0", "from 0.1 to 300"),
    ("[hook]\ntimeout = soon", "from 0.1 to 300"),
    ("[hook]\ntimeout = nan", "from 0.1 to 300"),
    ("[hook]\ndomain_types = ,", "empty"),
    ("[hooks]\n", "unknown section"),
    ("[hook]\nenforce = yes", "unknown setting"),
    ("mode = warn", "no section headers"),
    ("[hook]\nmode = warn\nmode = enforce", "already exists"),
    ("[hook", "no section headers"),
])
def test_invalid_configuration_is_one_line(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "/etc/psci-hook/psci-hook.conf")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(directory)

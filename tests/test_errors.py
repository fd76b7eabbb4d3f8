"""One-line messages from exceptions whose text is empty, blank or several lines long."""

from __future__ import annotations

from pathlib import Path

import pytest

from psci_hook import cache
from psci_hook.engine import GuestState
from psci_hook.environment import Environment
from psci_hook.errors import first_line, with_type
from psci_hook.hook import main
from psci_hook.profile import HostProfile
from psci_hook.status import ExitStatus
from tests.hooktools import DOMAIN, CollectingSink, stamped, write_config


@pytest.mark.parametrize(("exc", "line"), [
    (OSError(), "OSError"),
    (ValueError(""), "ValueError"),
    (ValueError("\n"), "ValueError"),
    (ValueError("\n  second line is the first with text\nthird"),
     "second line is the first with text"),
    (KeyError("x"), "'x'"),
])
def test_first_line_is_never_empty_and_never_raises(exc: BaseException, line: str) -> None:
    assert first_line(exc) == line


def test_with_type_names_the_type_once() -> None:
    assert with_type(RuntimeError()) == "RuntimeError"
    assert with_type(RuntimeError("boom\nmore")) == "RuntimeError: boom"


def test_a_profile_error_without_text_is_profile_unavailable_not_internal_error(
        tmp_path: Path, bundled: dict[str, HostProfile],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The boot-time cache loader stands in for a kernel or file error that carries no text; on
    # this x86 machine the real inline probe cannot run, so its failure is injected here.
    def silent_failure(*_args: object, **_kwargs: object) -> HostProfile:
        raise OSError()

    monkeypatch.setattr(cache, "load_host_profile", silent_failure)
    config = write_config(tmp_path / "c.conf", None, None, extra_hook="on_error = veto")
    domain = stamped(DOMAIN, GuestState.booted_on(bundled["6.1__a57"]))
    env = Environment.for_test(["hook", "vm1", "migrate", "begin", "-"], domain,
                               {"PSCI_HOOK_CONFIG": str(config)}, run_dir=tmp_path)
    sink = CollectingSink()
    assert main(env, sink) == ExitStatus.INTERNAL_ERROR  # PROFILE_UNAVAILABLE under on_error=veto
    assert sink.events[0]["codes"] == ["PROFILE_UNAVAILABLE"]
    assert "PROFILE_UNAVAILABLE" in env.stderr.getvalue()  # type: ignore[attr-defined]
    assert "OSError" in env.stderr.getvalue()  # type: ignore[attr-defined]

"""benchmarks/mutation.py runs by hand, once per release; here only its arguments and its
report, so that a release does not find it broken. The mutation run itself takes far too long
for the fast tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, load_benchmark


@pytest.fixture(scope="module")
def mutation() -> Any:
    return load_benchmark("mutation")


def test_the_core_modules_exist(mutation: Any) -> None:
    package = REPO / "psci_hook"
    assert mutation.CORE == ("engine", "record", "splice", "hook", "policy", "profile")
    assert all((package / f"{m}.py").is_file() for m in mutation.CORE)


def test_arguments(mutation: Any, tmp_path: Path) -> None:
    args = mutation.parse_args([])
    assert args.modules == list(mutation.CORE) and args.children == 1 and args.lock is None
    args = mutation.parse_args(["policy", "engine", "policy", "--workdir", str(tmp_path),
                                "--lock", "/tmp/x.lock", "--json", str(tmp_path / "r.json")])
    assert args.modules == ["policy", "engine"] and args.workdir == tmp_path
    assert args.lock == Path("/tmp/x.lock")


@pytest.mark.parametrize("argv", [["registers"], ["--children", "0"], ["--frobnicate"],
                                  ["--recheck"], ["--report-only"],
                                  ["--recheck", "--report-only", "--workdir", "/tmp"]])
def test_bad_arguments_exit_2(mutation: Any, argv: list[str],
                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        mutation.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_the_report_gives_the_score_and_names_every_survivor(mutation: Any) -> None:
    results = mutation.summarise("policy", {"psci_hook.policy.x_f__mutmut_1": "killed",
                                            "psci_hook.policy.x_f__mutmut_2": "killed",
                                            "psci_hook.policy.x_f__mutmut_3": "timeout",
                                            "psci_hook.policy.x_g__mutmut_1": "survived",
                                            "psci_hook.policy.x_g__mutmut_2": "survived",
                                            "psci_hook.policy.x_h__mutmut_1": "no tests",
                                            "psci_hook.policy.x_h__mutmut_2": "not checked"},
                                 {"psci_hook.policy.x_g__mutmut_2",
                                  "psci_hook.policy.x_f__mutmut_2",
                                  "psci_hook.policy.x_gone__mutmut_1",
                                  "psci_hook.engine.x_f__mutmut_1"})
    assert results["score"] == 75.0
    assert results["stale_equivalents"] == ["psci_hook.policy.x_f__mutmut_2: killed",
                                            "psci_hook.policy.x_gone__mutmut_1: no such mutant"]
    text = mutation.report({"policy": results})
    assert text.splitlines()[1].split() == ["policy", "7", "2", "1", "1", "1", "1", "1",
                                            "75.0%"]
    assert "psci_hook.policy.x_g__mutmut_1: survived" in text
    assert "psci_hook.policy.x_h__mutmut_1: no tests" in text
    assert "x_f__mutmut_1" not in text and "x_g__mutmut_2" not in text
    assert text.endswith("policy: listed as equivalent in mutation-equivalents.md, yet not "
                         "surviving (renumbered? rename or drop)\n"
                         "  psci_hook.policy.x_f__mutmut_2: killed\n"
                         "  psci_hook.policy.x_gone__mutmut_1: no such mutant")


def test_every_listed_equivalent_names_a_core_module(mutation: Any) -> None:
    listed = mutation.equivalents()
    assert listed, "benchmarks/mutation-equivalents.md lists no mutant"
    for name in listed:
        package, module, function = name.split(".")
        assert package == "psci_hook" and module in mutation.CORE, name
        assert "__mutmut_" in function, name


def test_a_recheck_copies_in_only_what_changed(mutation: Any, tmp_path: Path) -> None:
    """mutmut regenerates a source file's mutants when the source is newer than its mutated
    copy and keeps the results of unchanged functions: a recheck must bring in the changed
    files with a new time and leave the others as they were."""
    mutation.prepare(tmp_path, ["policy"])
    changed, untouched = tmp_path / "psci_hook" / "engine.py", tmp_path / "README.md"
    changed.write_text(changed.read_text() + "# an older version\n")
    for path in (changed, untouched):
        os.utime(path, (1, 1))
    mutation.prepare(tmp_path, ["policy"])
    assert changed.read_bytes() == (REPO / "psci_hook" / "engine.py").read_bytes()
    assert changed.stat().st_mtime > 1 and untouched.stat().st_mtime == 1
    assert (tmp_path / "pyproject.toml").read_text().count("[tool.mutmut]") == 1


TWICE = """
import contextlib, io, sys
import pytest
ids = []
for _ in range(2):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pytest.main(["--co", "-q", "-p", "no:cacheprovider", "-m", sys.argv[1], "tests"])
    ids.append([line for line in out.getvalue().splitlines() if line.startswith("tests/")])
changed = sorted(set(ids[0]) ^ set(ids[1]))
print(len(ids[0]), *changed[:5], sep="\\n")
"""


@pytest.mark.slow
def test_test_ids_are_the_same_at_every_collection(mutation: Any) -> None:
    """mutmut lists the tests and then runs them by id in one process. pytest escapes an id
    made by an `ids` callable again at each collection when it holds a backslash (the repr of
    bytes, a newline): the second collection does not find the first's id and mutmut stops
    ("not found", pytest's exit 4). Such parameters take plain ids."""
    run = subprocess.run([sys.executable, "-c", TWICE, mutation.FAST_TESTS], cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=True)
    count, *changed = run.stdout.splitlines()
    assert int(count) > 1000 and changed == []

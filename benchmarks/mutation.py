#!/usr/bin/env python3
"""Mutation testing of the core: do the fast tests fail when a rule breaks?

Runs mutmut (pinned in scripts/deps/mutation-requirements.txt) over the core modules against the
fast tests (everything but the nested, e2e and packaging markers) and prints, per module, the
mutants killed, survived, timed out and not covered by any in-process test, the score (killed
among the mutants that ran), and every survivor with its diff. Survivors judged equivalent are
listed with the reason in benchmarks/mutation-equivalents.md; the score in the README counts them
out.

It runs by hand and once per release, not in CI: a whole run is CPU-bound for a long time, so
it runs at the lowest priority (it needs no daemon, address or package the heavy suites share):

    nice -n 19 .venv/bin/python benchmarks/mutation.py --children 2 [MODULE...]

After a survivor is killed by a new test (or the code changes), recheck in the same scratch
tree instead of starting again: the changed files are copied in, mutmut re-learns which tests
call what, tests the mutants of every changed function, then runs again every mutant that was
not killed, against the tests as they are now:

    nice -n 19 .venv/bin/python benchmarks/mutation.py --children 2 --workdir DIR --recheck

The tests it runs include the `slow` marker's in-process ones (the fleet cross-check, the
splice property tests), which the fast checks leave out: mutmut only runs, per mutant, the tests
that call the mutated function, fastest first.

The run happens in a scratch tree (never the checkout: mutmut rewrites the files under test)
with its own virtualenv (Debian's libraries, plus scripts/deps/test-requirements.txt and
scripts/deps/mutation-requirements.txt). mutmut runs pytest in-process and forks one child per
mutant; only the tests that call the mutated function run.

What mutmut cannot see, by construction: a test that runs the hook as a subprocess (as libvirt
runs it, with a cleared environment) imports the mutated file but not mutmut's choice of the
active mutant, so it runs the original functions: a mutant only such tests would kill is
reported as surviving or "no tests", never as killed (tests/test_policy_effects.py runs the hook
in-process for that reason). Module-level constants and class-level defaults are not mutated
(tests/test_policy_defaults.py and tests/test_mutation_kills.py pin those).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Collection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = ("engine", "record", "splice", "hook", "policy", "profile")
FAST_TESTS = "not nested and not e2e and not packaging"
# Fast tests that cannot kill a mutant: the benchmarks judge nothing (they print figures) and are
# the slowest; fifty concurrent hook processes run the package as subprocesses (never the active
# mutant) and fail on their time bound when the machine is busy; the pip test installs a wheel of
# the mutated tree into a fresh virtualenv, without mutmut's runtime the trampolines import;
# the recheck test copies the checkout with git, and mutmut's tree is no git checkout.
NOT_FOR_MUTANTS = (
    "tests/test_bench.py",
    "tests/test_bench_fleet.py",
    "tests/test_hardening.py::test_fifty_hooks_at_once_share_the_cache_and_the_profile",
    "tests/test_install.py::test_pip_install_into_a_venv_then_psci_hook_install",
    "tests/test_mutation_script.py::test_a_recheck_copies_in_only_what_changed",
)
# mutmut's exit codes per mutant (mutmut/__main__.py, status_by_exit_code).
KILLED = "killed"
SURVIVED = "survived"
NO_TESTS = "no tests"
NOT_CHECKED = "not checked"  # a run stopped before it got there
TIMEOUT = "timeout"
EQUIVALENT = "equivalent"  # survived, and listed in EQUIVALENTS with the reason
EQUIVALENTS = Path(__file__).resolve().parent / "mutation-equivalents.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help=f"core modules to mutate (default: all of {', '.join(CORE)})")
    parser.add_argument("--workdir", type=Path,
                        help="scratch tree to run in (default: a new temporary directory); an "
                             "existing one resumes where mutmut stopped")
    parser.add_argument("--children", type=int, default=1,
                        help="mutants tested in parallel (default 1: the machine is shared)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--report-only", action="store_true",
                        help="only report what an earlier run in --workdir found")
    parser.add_argument("--recheck", action="store_true",
                        help="bring the checkout's changes into the --workdir of an earlier run, "
                             "test the mutants of changed functions, then run again every "
                             "mutant not killed")
    parser.add_argument("--tests", nargs="+", default=["tests"], metavar="PATH",
                        help="the test files or directories to run (default: tests); fewer give a "
                             "quicker run and a lower bound on the score")
    parser.add_argument("--lock", type=Path,
                        help="hold this flock(1) lock file while mutmut runs (not while the "
                             "scratch tree and its virtualenv are made)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - set(CORE))
    if unknown:
        parser.error(f"not a core module: {', '.join(unknown)} (choose from {', '.join(CORE)})")
    args.modules = list(dict.fromkeys(args.modules)) or list(CORE)
    if args.children < 1:
        parser.error("--children must be at least 1")
    for flag in ("report_only", "recheck"):
        if getattr(args, flag) and not args.workdir:
            parser.error(f"--{flag.replace('_', '-')} needs the --workdir of an earlier run")
    if args.report_only and args.recheck:
        parser.error("--report-only and --recheck exclude each other")
    return args


def prepare(workdir: Path, modules: list[str], tests: list[str] | None = None) -> None:
    """A copy of the checkout's files (tracked and new, not ignored) with mutmut's settings.

    Into an existing scratch tree only the files that differ are copied, stamped with the time
    of the copy: mutmut regenerates the mutants of a source file newer than its mutated copy and
    forgets the results of the functions whose code changed (mutmut/__main__.py,
    create_mutants_for_file)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        target = workdir / name
        if not source.is_file():
            continue
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.read_bytes() != source.read_bytes():
            shutil.copyfile(source, target)
    settings = {
        "source_paths": ["psci_hook"],
        "only_mutate": [f"psci_hook/{m}.py" for m in modules],
        # Everything else the tests read (tests, hooks, README, .ci...); mutmut copies the
        # package itself.
        "also_copy": sorted({n.split("/")[0] for n in listed if n} - {"psci_hook"}),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", FAST_TESTS, "-q",
                                *(f"--deselect={t}" for t in NOT_FOR_MUTANTS)],
        "pytest_add_cli_args_test_selection": tests or ["tests"],
        # A dependency change re-runs the mutants it affects instead of asking.
        "on_dependency_change": "rerun",
        "use_git_change_detection": False,
    }
    pyproject = workdir / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n[tool.mutmut]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))


def make_venv(workdir: Path) -> None:
    """The scratch tree's own virtualenv, whose psci_hook is the one under mutation.

    The tests that run the hook or the installer as a subprocess (`python -I`) import psci_hook
    through the interpreter's site-packages: with the checkout's virtualenv they would import
    the checkout, and tests/test_install.py rightly fails when the package imported is not the
    tree's own.
    """
    venv = workdir / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(REPO / "scripts/deps/test-requirements.txt"),
                    "-r", str(REPO / "scripts/deps/mutation-requirements.txt")], check=True)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # mutmut writes the mutated package to mutants/ and runs the tests from there.
    (Path(site) / "psci_hook_mutants.pth").write_text(f"{workdir / 'mutants'}\n")
    # The command the tests run as an operator does (setup.cfg's console_scripts entry), as pip
    # would write it; installing the tree instead would put the unmutated package on the path.
    script = venv / "bin" / "psci-hook"
    script.write_text(f"#!{python}\nimport sys\n\nfrom psci_hook.cli import main\n\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)


def mutmut(workdir: Path, *args: str, capture: bool = False) -> str:
    command = [str(workdir / ".venv" / "bin" / "python"), "-m", "mutmut", *args]
    env = dict(os.environ)
    # The tests find shared/ beside the checkout, not beside the scratch tree.
    env.setdefault("PSCI_HOOK_SHARED", str(REPO.parent / "shared"))
    proc = subprocess.run(command, cwd=workdir, env=env, check=False, text=True,
                          capture_output=capture)
    if proc.returncode != 0:
        raise SystemExit(f"mutation: {' '.join(command[2:])} failed ({proc.returncode})"
                         + (f":\n{proc.stderr[-2000:]}" if capture else ""))
    return proc.stdout if capture else ""


def collect(workdir: Path, modules: list[str]) -> dict[str, dict[str, object]]:
    """Per module: the count of each status, the score and the mutants not killed."""
    by_module: dict[str, dict[str, str]] = {m: {} for m in modules}
    for line in mutmut(workdir, "results", "--all", "true", capture=True).splitlines():
        name, _, status = line.strip().rpartition(": ")
        module = name.split(".")[1] if name.startswith("psci_hook.") else ""
        if module in by_module:
            by_module[module][name] = status
    listed = equivalents()
    return {m: summarise(m, by_module[m], listed) for m in modules}


def equivalents(path: Path = EQUIVALENTS) -> set[str]:
    """The surviving mutants judged equivalent: the first column of the tables under each
    "## <module>.py" heading of benchmarks/mutation-equivalents.md."""
    found: set[str] = set()
    module = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"## (\w+)\.py", line)
        if line.startswith("## "):
            module = heading.group(1) if heading else ""
        elif module and line.startswith("| `"):
            first = line.split(" | ")[0]
            found.update(f"psci_hook.{module}.{name}" for name in re.findall(r"`([^`]+)`", first))
    return found


def summarise(module: str, statuses: dict[str, str], equivalent: Collection[str] = ()
              ) -> dict[str, object]:
    """The counts, the score and the mutants not killed, from mutmut's status per mutant.

    The score is the share of non-equivalent mutants killed, among those that ran. A mutant
    listed as equivalent that did not survive is named too: mutmut numbers a function's mutants
    in order, so an edit above a listed one gives its name to another mutant, and the list must
    follow."""
    statuses = {name: EQUIVALENT if status == SURVIVED and name in equivalent else status
                for name, status in statuses.items()}
    counts = Counter(statuses.values())
    # A timeout is a mutant the tests noticed (an endless loop): killed, for the score.
    caught = counts[KILLED] + counts[TIMEOUT]
    ran = caught + counts[SURVIVED]
    return {
        "counts": dict(counts),
        "score": round(100 * caught / ran, 1) if ran else None,
        "not_killed": [f"{name}: {status}" for name, status in sorted(statuses.items())
                       if status not in (KILLED, TIMEOUT, EQUIVALENT)],
        "stale_equivalents": sorted(
            f"{name}: {statuses.get(name, 'no such mutant')}" for name in equivalent
            if name.startswith(f"psci_hook.{module}.") and statuses.get(name) != EQUIVALENT),
    }


def report(results: dict[str, dict[str, object]]) -> str:
    lines = [f"{'module':<10} {'mutants':>8} {'killed':>7} {'survived':>9} {'equivalent':>11} "
             f"{'timeout':>8} {'no tests':>9} {'not run':>8} {'score':>7}"]
    for module, result in results.items():
        counts: dict[str, int] = result["counts"]  # type: ignore[assignment]
        score = result["score"]
        lines.append(
            f"{module:<10} {sum(counts.values()):>8} {counts.get(KILLED, 0):>7} "
            f"{counts.get(SURVIVED, 0):>9} {counts.get(EQUIVALENT, 0):>11} "
            f"{counts.get(TIMEOUT, 0):>8} {counts.get(NO_TESTS, 0):>9} "
            f"{counts.get(NOT_CHECKED, 0):>8} {'-' if score is None else f'{score}%':>7}")
    lines.append("score: killed (or timed out) among the mutants that ran, equivalent ones "
                 "left out")
    for module, result in results.items():
        not_killed: list[str] = result["not_killed"]  # type: ignore[assignment]
        if not_killed:
            lines.append(f"\n{module}: not killed")
            lines += [f"  {entry}" for entry in not_killed]
        stale: list[str] = result["stale_equivalents"]  # type: ignore[assignment]
        if stale:
            lines.append(f"\n{module}: listed as equivalent in {EQUIVALENTS.name}, yet not "
                         "surviving (renumbered? rename or drop)")
            lines += [f"  {entry}" for entry in stale]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="psci-mutation-"))
    if not (workdir / "pyproject.toml").exists():
        workdir.mkdir(parents=True, exist_ok=True)
        prepare(workdir, args.modules, args.tests)
        make_venv(workdir)
    elif args.recheck:
        prepare(workdir, args.modules, args.tests)
        # Which tests call which function is learnt again: new and changed tests included.
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    print(f"mutation: scratch tree {workdir}", flush=True)
    if args.report_only:
        return report_only(workdir, args)
    with open(args.lock or os.devnull, "a") as lock:
        if args.lock:
            print(f"mutation: waiting for {args.lock}", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        mutmut(workdir, "run", "--max-children", str(args.children))
        if args.recheck:
            # mutmut keeps a result whose function did not change: name them to run them again.
            again = [entry.rpartition(": ")[0] for result in collect(workdir, args.modules).values()
                     for entry in result["not_killed"]]  # type: ignore[attr-defined]
            if again:
                print(f"mutation: running again the {len(again)} mutants not killed", flush=True)
                mutmut(workdir, "run", "--max-children", str(args.children), *again)
    return report_only(workdir, args)


def report_only(workdir: Path, args: argparse.Namespace) -> int:
    results = collect(workdir, args.modules)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

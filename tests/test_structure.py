"""The module boundaries docs/architecture.md describes, checked on the source (no import runs)."""

from __future__ import annotations

import ast
import collections
import runpy
import subprocess
import sys
from pathlib import Path

from psci_hook import hook
from tests.helpers import REPO

PACKAGE = REPO / "psci_hook"
# Each command module defines these: the protocol psci_hook.cli calls, and its own renderers.
COMMAND_PROTOCOL = {"configure", "run", "main", "render_text", "render_json"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_hook_file_acts_on_the_operations_the_hook_module_decides() -> None:
    """hooks/50-psci-hook drains and exits early on every other operation, before importing
    the package: its own copy of the list must be the hook module's."""
    hook_file = runpy.run_path(str(REPO / "hooks" / "50-psci-hook"), run_name="psci_hook_file")
    assert set(hook_file["ACTED_ON"]) == set(hook.ACTED_ON)


def test_no_command_imports_another_command_or_the_hook_for_helpers() -> None:
    commands = sorted((PACKAGE / "commands").glob("*.py"))
    for path in commands:
        others = {f"psci_hook.commands.{p.stem}" for p in commands
                  if p.stem != path.stem and not p.stem.startswith("_")}
        imported = _imports(path)
        assert not imported & others, path.name
        from_hook = {m for m in imported if m.startswith("psci_hook.hook.")}
        allowed = {"psci_hook.hook.decide_hook", "psci_hook.hook.Outcome"} \
            if path.stem == "check" else set()
        assert from_hook <= allowed, path.name


def test_no_two_modules_define_a_function_of_the_same_name() -> None:
    """One name, one meaning: a public function name is defined in one module only (the
    command protocol aside)."""
    where: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    shared = {name: files for name, files in where.items()
              if len(files) > 1 and name not in COMMAND_PROTOCOL}
    assert shared == {}


def test_no_dataclass_on_the_hook_path() -> None:
    """docs/architecture.md#the-hook-path, rule 1: the modules the hook imports define
    NamedTuples and plain classes, never dataclasses (the decorator's cost is paid per run)."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", "import sys, psci_hook.hook, psci_hook.thishost, "
         "psci_hook.cache; print(' '.join(m for m in sys.modules if m.startswith('psci_hook')))"],
        capture_output=True, text=True, check=True, cwd=REPO)
    checked, found = set(), set()
    for module in done.stdout.split():
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        if module == "psci_hook" or not path.exists():
            continue
        checked.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    "dataclass" in ast.unparse(d) for d in node.decorator_list):
                found.add(f"{path.stem}.{node.name}")
    assert {"hook", "environment", "profile", "kvm", "cache"} <= checked
    assert found == set()

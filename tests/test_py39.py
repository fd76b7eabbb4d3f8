"""psci-hook supports Python 3.9 (RHEL 9): every module must parse as 3.9 syntax."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO

SOURCES = [*sorted(REPO.glob("psci_hook/**/*.py")), REPO / "hooks" / "50-psci-hook"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_as_python_3_9(path: object) -> None:
    source = path.read_text()  # type: ignore[attr-defined]
    tree = ast.parse(source, feature_version=(3, 9))
    if path.suffix == ".py" and path.name != "__init__.py" and "def " in source:  # type: ignore[attr-defined]
        # Annotations may use 3.10 syntax only when they are never evaluated.
        assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                   for n in tree.body), f"{path} lacks 'from __future__ import annotations'"

"""The repository stands alone: its prose cites docs/design.md and public sources, never the
developers' notes outside it, and the design note travels in the source distribution."""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import REPO

DESIGN = REPO / "docs" / "design.md"
# Directories that hold no project prose (tool output, caches, the virtualenv).
SKIPPED_DIRS = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".mypy_cache",
                ".ruff_cache", ".cache", ".hypothesis"}
# The developers' notes (../shared/reference/*.md), which are neither in the repository nor in the
# sdist, and the section sign their "§N" citations used.
FORBIDDEN = (
    "kvm-firmware-registers", "qemu-register-lists", "real-qemu-migrations",
    "architecture-sketch", "architecture sketch", "two-libvirt-hosts",
    "libvirt-hooks-peers-packaging", "arm64-libvirt-l1", "shared/reference", "\N{SECTION SIGN}",
)
ANCHOR_CITATION = re.compile(rb"docs/design\.md#([a-z0-9-]+)")


def project_files() -> list[Path]:
    this = Path(__file__).resolve()
    return sorted(
        path for path in REPO.rglob("*")
        if path.is_file() and path.resolve() != this
        and not SKIPPED_DIRS.intersection(path.relative_to(REPO).parts)
        and not any(part.endswith(".egg-info") for part in path.relative_to(REPO).parts)
    )


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_no_file_cites_the_developers_notes() -> None:
    offenders = []
    for path in project_files():
        data = path.read_bytes()
        if b"\0" in data:  # a binary file (an image, a compiled file) is not prose
            continue
        offenders += [f"{path.relative_to(REPO)}: {word}" for word in FORBIDDEN
                      if word.encode() in data]
    assert not offenders, "cite docs/design.md or the kernel/QEMU/libvirt source instead:\n" + \
        "\n".join(offenders)


def test_every_design_citation_names_a_section() -> None:
    anchors = heading_anchors(DESIGN.read_text(encoding="utf-8"))
    cited = {
        (str(path.relative_to(REPO)), anchor.decode())
        for path in project_files()
        for anchor in ANCHOR_CITATION.findall(path.read_bytes())
    }
    assert len(cited) >= 20  # the code cites the note throughout
    cited |= {("docs/design.md", anchor)
              for anchor in re.findall(r"\]\(#([a-z0-9-]+)\)", DESIGN.read_text(encoding="utf-8"))}
    dangling = sorted(f"{where}: #{anchor}" for where, anchor in cited if anchor not in anchors)
    assert not dangling, "no such section in docs/design.md:\n" + "\n".join(dangling)


@pytest.mark.slow
def test_the_design_note_is_in_the_sdist(tmp_path: Path) -> None:
    # Built from a copy, so that the egg-info setuptools writes does not land in the work tree.
    tree = tmp_path / "tree"
    tree.mkdir()
    for path in [*project_files(), Path(__file__).resolve()]:
        target = tree / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
         str(out)],
        cwd=tree, check=True, capture_output=True, text=True)
    [sdist] = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert "docs/design.md" in names

"""docs/outputs.md describes every object a run writes: each path in the layout that the writing
modules declare (their docstrings are the source of truth, beside the code that writes the paths)
has an entry in the doc. No servers."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUTPUTS = REPO / "docs" / "outputs.md"
#: The modules that write under spec.output.uri, each with a "Layout under ...::" block.
WRITERS = ("jobs/augment/output.py", "jobs/finetune/publish.py", "jobs/finetune/checkpoint.py")


def layout_paths(module: str) -> list[str]:
    """The first path of each entry of the module's layout block."""
    doc = ast.get_docstring(ast.parse((REPO / module).read_text(encoding="utf-8"))) or ""
    block = doc.split("::", 1)[1] if "Layout under" in doc else ""
    paths = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break  # the block ends at the first unindented line
        entry = line[4:]
        if entry and not entry.startswith(" "):
            paths.append(re.split(r"[\s,]", entry, maxsplit=1)[0])
    return paths


@pytest.mark.parametrize("module", WRITERS)
def test_every_path_a_job_writes_is_documented(module: str) -> None:
    paths = layout_paths(module)
    assert len(paths) >= 4, f"{module} has no layout block to check"
    text = OUTPUTS.read_text(encoding="utf-8")
    missing = [p for p in paths if f"`{p}`" not in text]
    assert not missing, f"docs/outputs.md does not describe {missing} (written by {module})"

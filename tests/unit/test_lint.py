"""The code stays clean: ruff, the import-layer contracts (.importlinter) and mypy --strict, each run by
hack/lint.py exactly as `make lint` runs it (and CI, through `make test`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sampleforge.api

REPO = Path(__file__).resolve().parents[2]


def lint(check: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "hack" / "lint.py"), check], cwd=REPO, capture_output=True,
                          text=True, check=False, timeout=540)


def test_the_environment_imports_this_checkout() -> None:
    """lint-imports reads the code from where the environment imports it: an environment installed
    from another clone would check (and test) that clone instead (`make setup` makes one per checkout)."""
    assert [Path(p).resolve() for p in sampleforge.api.__path__] == [REPO / "api"], (
        f"{sys.prefix} imports sampleforge from {list(sampleforge.api.__path__)}, not from {REPO}; run `make setup` "
        "in this checkout and use its environment (`make venv-path`)")


@pytest.mark.parametrize("check", ["ruff", "imports", "mypy"])
def test_finds_nothing(check: str) -> None:
    done = lint(check)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]


def test_the_import_contracts_are_the_promised_ones() -> None:
    """The layers the README and DESIGN.md describe are what lint-imports enforces (not an empty config)."""
    done = lint("imports")
    for contract in ("testbed above the operator, the jobs and the cli", "never talk to Kubernetes",
                     "never imports torch", "api (the one schema"):
        assert contract in " ".join(done.stdout.split()), f"no contract {contract!r} in .importlinter"
    assert "0 broken" in done.stdout

#!/usr/bin/env python3
"""The code checks `make lint` runs and tests/unit/test_lint.py keeps clean, run with the tools of the
environment this script runs in (the checkout's venv: ``make lint`` runs it with that venv's python).

    ruff      ruff check, configured in pyproject.toml
    imports   lint-imports: the import-layer contracts in .importlinter
    mypy      mypy --strict (pyproject.toml's [tool.mypy]) over every sampleforge package

The folders api/, operator/, jobs/, testbed/ and cli/ are mapped onto the ``sampleforge`` namespace by
setuptools (pyproject.toml's package-dir); mypy finds modules by their place on disk, not through the
editable install's import hook, so it is given a tree of links, ``sampleforge/<folder>`` -> the folder,
built in a directory of this checkout's own in the cache (hack/checkout_env.py keys it), where its
incremental cache lives too. Nothing is written into the checkout.

    python hack/lint.py            # all three
    python hack/lint.py mypy       # only the named checks
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import checkout_env  # hack/ is this script's directory, so first on sys.path

REPO = checkout_env.REPO
#: The mapped folders, as sampleforge's sub-packages (pyproject.toml's package-dir).
PACKAGES = ("api", "operator", "jobs", "testbed", "cli")
CHECKS = ("ruff", "imports", "mypy")


def tool(name: str) -> str:
    """A tool of this environment: beside its python (a venv's bin/), never whatever is first on PATH."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        raise SystemExit(f"{name} is not installed beside {sys.executable}; it is in the test extra (`make setup`)")
    return str(path)


def link_tree(root: Path) -> Path:
    """``root/tree/sampleforge/<folder>`` -> ``REPO/<folder>``, (re)made to point at this checkout."""
    package = root / "tree" / "sampleforge"
    package.mkdir(parents=True, exist_ok=True)
    for name in PACKAGES:
        link, target = package / name, REPO / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target, target_is_directory=True)
    return package.parent


def commands(root: Path) -> dict[str, tuple[list[str], Path]]:
    """Each check's command line and the directory it runs in. Only ruff runs in the checkout itself:
    lint-imports puts its working directory on sys.path, where the folder operator/ would shadow the
    standard library's module; mypy runs in the link tree."""
    return {
        "ruff": ([tool("ruff"), "check", "--no-cache", "."], REPO),
        "imports": ([tool("lint-imports"), "--no-cache", str(REPO / ".importlinter")], root),
        "mypy": ([tool("mypy"), "--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(root / "mypy-cache"),
                  "--namespace-packages", "--explicit-package-bases", "-p", "sampleforge"], root / "tree"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", metavar="CHECK", help=f"any of {', '.join(CHECKS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.checks) - set(CHECKS))
    if unknown:
        parser.error(f"unknown check {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    root = checkout_env.work_dir("lint")
    link_tree(root)
    failed = []
    for name in args.checks or CHECKS:
        cmd, cwd = commands(root)[name]
        print(f"==> {name}: {' '.join(Path(cmd[0]).name if i == 0 else part for i, part in enumerate(cmd))}",
              flush=True)
        started = time.monotonic()
        rc = subprocess.run(cmd, cwd=cwd, check=False).returncode
        print(f"    {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - started:.1f}s",
              flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"lint failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

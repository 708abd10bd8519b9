"""The package layout keeps its promises: the ``operator/`` folder never shadows the standard
library, and every package folder is listed for the wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


class TestImportNames:
    def test_operator_is_the_standard_library_module(self) -> None:
        import operator

        assert Path(operator.__file__).parent != REPO_ROOT / "operator"
        assert callable(operator.itemgetter)

    def test_running_python_from_the_repository_root_does_not_shadow_operator(self) -> None:
        # `python -m pytest` or a script run from the root puts the root first on sys.path.
        code = "import operator, sys; print(operator.__file__); import sampleforge.operator as o; print(o.__file__)"
        for flags in ([], ["-S"]):
            out = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO_ROOT, capture_output=True,
                                 text=True, check=False)
            if flags and out.returncode != 0:
                continue  # with -S the editable finder (a .pth) is not loaded; only the first line matters
            first = out.stdout.splitlines()[0]
            assert not first.startswith(str(REPO_ROOT)), f"stdlib operator shadowed with {flags}: {first}"

    def test_folders_map_to_sampleforge_subpackages(self) -> None:
        import sampleforge.jobs
        import sampleforge.operator

        assert Path(sampleforge.operator.__file__).parent == REPO_ROOT / "operator"
        assert Path(sampleforge.jobs.__file__).parent == REPO_ROOT / "jobs"


class TestPackaging:
    def test_every_package_folder_is_listed(self) -> None:
        setuptools = _pyproject()["tool"]["setuptools"]
        listed = set(setuptools["packages"])
        found = set()
        for package, folder in setuptools["package-dir"].items():
            for init in (REPO_ROOT / folder).rglob("__init__.py"):
                rel = init.parent.relative_to(REPO_ROOT / folder)
                found.add(".".join([package, *rel.parts]))
        assert found == listed, f"pyproject packages out of sync: missing {found - listed}, stale {listed - found}"

    def test_the_operator_extra_has_no_torch(self) -> None:
        extras = _pyproject()["project"]["optional-dependencies"]
        names = {dep.split(">")[0].split("=")[0].split("[")[0].strip().lower() for dep in extras["operator"]}
        assert not names & {"torch", "transformers", "accelerate", "peft"}

    def test_constraints_pin_every_direct_dependency(self) -> None:
        project = _pyproject()["project"]
        pinned = {line.split("==")[0].strip().lower()
                  for line in (REPO_ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
        direct = list(project["dependencies"])
        for deps in project["optional-dependencies"].values():
            direct += deps
        names = {dep.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower() for dep in direct}
        assert names <= pinned, f"not pinned in constraints.txt: {sorted(names - pinned)}"

"""The operator image's build, replayed without Docker: its exact install commands, in a fresh venv.

No Docker engine runs here. What can go wrong in the image short of the base layer is in the
``operator-build`` stage's instructions, so this test replays them from the Dockerfile itself:
its ENV, its COPY instructions (from a clean copy of the build context, .dockerignore applied),
and its RUN commands word for word, with only the venv's path moved from /opt/venv to a temporary
folder and ``uv`` taken from the development environment (the same pinned version the image copies
from the uv image). The result must import the operator's entry point and must not contain torch.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _dockerfile_module() -> ModuleType:
    """The Dockerfile parser of tests/unit/test_dockerfile.py (loaded by path: the unit test owns it)."""
    path = REPO / "tests" / "unit" / "test_dockerfile.py"
    spec = importlib.util.spec_from_file_location("sampleforge_unit_test_dockerfile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dockerfile = _dockerfile_module()


def uv() -> Path:
    path = Path(sys.executable).with_name("uv")
    if not path.exists():
        pytest.skip(f"uv is not installed beside {sys.executable} (hack/bootstrap.sh installs it)")
    return path


def copy_context(destination: Path) -> None:
    """The build context as Docker would send it: the repository minus .dockerignore."""
    patterns = dockerfile.dockerignore_patterns()
    for root, dirs, files in os.walk(REPO):
        base = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if not dockerfile.ignored((base / d).as_posix(), patterns)]
        for name in files:
            relative = (base / name).as_posix()
            if dockerfile.ignored(relative, patterns):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, target)


def test_operator_build_stage_installs_a_working_operator_without_torch(tmp_path: Path) -> None:
    stage = dockerfile.load().stage("operator-build")
    context, workdir, venv = tmp_path / "context", tmp_path / "src", tmp_path / "venv"
    copy_context(context)
    workdir.mkdir()
    env = {**os.environ, **stage.env(), "PATH": f"{uv().parent}:{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("UV_NO_CACHE", None)  # the image keeps no cache; here the developer's cache saves minutes
    replayed = 0
    for inst in stage.instructions:
        if inst.keyword == "COPY" and "from" not in inst.flags:
            *sources, dest = shlex.split(inst.value)
            for source in sources:
                target = workdir / dest if not dest.endswith("/") and len(sources) == 1 and dest != "./" \
                    else workdir / dest / Path(source).name
                if (context / source).is_dir():
                    shutil.copytree(context / source, target, dirs_exist_ok=True)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / source, target)
        elif inst.keyword == "RUN":
            command = inst.value.replace("/opt/venv", str(venv))
            command = command.replace("python -m venv", f"{shlex.quote(sys.executable)} -m venv")
            result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env,
                                    capture_output=True, text=True, timeout=900, check=False)
            assert result.returncode == 0, f"RUN {inst.value!r} failed:\n{result.stdout}\n{result.stderr}"
            replayed += 1
    assert replayed >= 3, "the stage should create the venv, install the dependencies, then the project"

    python = venv / "bin" / "python"
    outside = tmp_path / "elsewhere"  # never the source folder: ./operator would shadow the stdlib module
    outside.mkdir()

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-c", code], cwd=outside, capture_output=True, text=True, timeout=120,
                              check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})

    entry = run("from importlib.metadata import entry_points\n"
                "ep, = [e for e in entry_points(group='console_scripts') if e.name == 'sampleforge-operator']\n"
                "main = ep.load()\n"
                "import sampleforge.operator.__main__ as m\n"
                "assert main is m.main, (main, m.main)\n"
                "import kopf, kubernetes, prometheus_client\n"
                "print(m.__file__)")
    assert entry.returncode == 0, entry.stderr
    assert str(venv) in entry.stdout, "the operator must come from the installed package, not the source tree"
    assert (venv / "bin" / "sampleforge-operator").exists()
    for heavy in ("torch", "transformers", "accelerate"):
        absent = run(f"import {heavy}")
        assert absent.returncode != 0 and "ModuleNotFoundError" in absent.stderr, f"{heavy} is in the operator image"
    # Bytecode compiled at build time (UV_COMPILE_BYTECODE): a read-only root never needs to write it.
    assert list((venv / "lib").rglob("sampleforge/operator/__pycache__/*.pyc"))

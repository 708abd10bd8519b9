"""Release: one version for the package, the images and the chart; the generated values table; and
the release workflow, which cannot run here, linted and checked against what it names.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from sampleforge.testbed import binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sampleforge"
WORKFLOW = REPO / ".github" / "workflows" / "release.yaml"


def _chartgen() -> ModuleType:
    """hack/chartgen.py, loaded by path (hack/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("sampleforge_hack_chartgen", REPO / "hack" / "chartgen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chartgen = _chartgen()


def pyproject_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def steps_text(job: str) -> str:
    """The shell scripts of a job's steps, as written."""
    return "\n".join(str(step.get("run", "")) for step in workflow()["jobs"][job]["steps"])


# --- one version ------------------------------------------------------------------------------------


def test_chart_version_and_app_version_are_the_packages() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == pyproject_version()


def test_images_take_their_tag_from_the_one_version() -> None:
    """No tag of its own in values.yaml: the templates default both to the chart's appVersion."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["tag"] == "" and values["jobImage"]["tag"] == ""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "default $root.Chart.AppVersion $image.tag" in helpers


def test_the_operators_own_default_job_image_is_the_charts() -> None:
    """Outside the chart (a local operator, the testbed) the operator falls back to its own default:
    the same repository and the one version."""
    from sampleforge.operator.settings import Settings

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert Settings().job_image == f"{values['jobImage']['repository']}:{pyproject_version()}"


def test_chart_yaml_is_rewritten_from_the_package_version() -> None:
    text = (CHART / "Chart.yaml").read_text()
    bumped = chartgen.chart_yaml(text, "1.2.3-rc.1")
    assert yaml.safe_load(bumped)["version"] == "1.2.3-rc.1" and yaml.safe_load(bumped)["appVersion"] == "1.2.3-rc.1"
    assert [line for line in bumped.splitlines() if "ersion" not in line] == \
        [line for line in text.splitlines() if "ersion" not in line], "everything else stays as it was"


def test_a_version_helm_cannot_use_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "1.2"\n')
    with pytest.raises(ValueError, match="not SemVer"):
        chartgen.package_version(tmp_path)


# --- the values table ---------------------------------------------------------------------------------


def test_generated_chart_files_are_current() -> None:
    diff = chartgen.check(REPO)
    assert diff == "", f"run `python3 hack/chartgen.py`:\n{diff}"


def test_check_mode_exits_nonzero_with_a_diff_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    chart = tmp_path / "charts" / "sampleforge"
    chart.mkdir(parents=True)
    for name in ("Chart.yaml", "values.yaml", "README.md"):
        shutil.copy(CHART / name, chart / name)
    assert chartgen.main(["--check", "--root", str(tmp_path)]) == 0
    values = chart / "values.yaml"
    values.write_text(values.read_text().replace("# -- Replicas of the operator.", "# -- How many operators."))
    capsys.readouterr()
    assert chartgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "+| `replicaCount` | `2` | How many operators." in capsys.readouterr().out
    assert chartgen.main(["--root", str(tmp_path)]) == 0
    assert chartgen.main(["--check", "--root", str(tmp_path)]) == 0


def test_every_value_is_documented_in_the_table() -> None:
    rows = chartgen.rows((CHART / "values.yaml").read_text())
    undocumented = [row.path for row in rows if not row.description]
    assert undocumented == [], "give each a `# --` comment in values.yaml"
    table = (CHART / "README.md").read_text()
    for path in ("podDisruptionBudget.minAvailable", "jobServiceAccount.annotations", "crds.install",
                 "metrics.serviceMonitor.relabelings", "metrics.prometheusRule.alerts.SampleforgeRunStalled"):
        assert f"| `{path}` |" in table


def test_descriptions_follow_the_helm_docs_convention() -> None:
    text = """\
# A section comment, not a description.
top:
  # -- First line,
  # continued.
  leaf: 1
  # A plain comment resets.
  plain: x
  # -- A map documented as one row.
  map:
    inner: {a: 1}
list:
  - a
"""
    assert chartgen.descriptions(text) == {"top.leaf": "First line, continued.", "top.map": "A map documented as one row."}
    rows = {row.path: (row.default, row.description) for row in chartgen.rows(text)}
    assert rows == {"top.leaf": (1, "First line, continued."), "top.plain": ("x", ""),
                    "top.map": ({"inner": {"a": 1}}, "A map documented as one row."), "list": (["a"], "")}
    assert "`{\"a\": \"x\\|y\"}`" in chartgen.values_table('# -- d\nm: {a: "x|y"}\n'), "pipes escaped in cells"


# --- the release workflow --------------------------------------------------------------------------------


def dockerfile_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE | re.IGNORECASE))


def test_release_runs_on_version_tags_only() -> None:
    raw: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    triggers: dict[str, Any] = raw["on"] if "on" in raw else raw[True]  # YAML 1.1 (PyYAML) reads `on` as True
    assert set(triggers) == {"push"} and set(triggers["push"]) == {"tags"}
    assert all(pattern.startswith("v") for pattern in triggers["push"]["tags"])
    assert workflow()["permissions"] == {"contents": "read"}, "write access only in the jobs that push"


def test_release_builds_both_dockerfile_targets_and_the_chart() -> None:
    jobs = workflow()["jobs"]
    targets = jobs["images"]["strategy"]["matrix"]["target"]
    assert set(targets) == {"operator", "job"} and set(targets) <= dockerfile_targets()
    build = next(s for s in jobs["images"]["steps"] if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["file"] == "Dockerfile" and (REPO / build["with"]["file"]).is_file()
    assert build["with"]["target"] == "${{ matrix.target }}" and build["with"]["push"] is True
    chart_steps = steps_text("chart")
    chart_dir = re.search(r"helm package (\S+)", chart_steps)
    assert chart_dir is not None and (REPO / chart_dir.group(1) / "Chart.yaml").is_file()
    assert "helm push" in chart_steps and "oci://" in steps_text("version")
    assert jobs["chart"]["needs"] == ["version", "images"], "the chart's default tags must name pushed images"
    for job in ("images", "chart"):
        assert jobs[job]["permissions"]["packages"] == "write"


def test_release_checks_the_tag_against_the_one_version_and_pushes_where_the_chart_points() -> None:
    version_steps = steps_text("version")
    assert "pyproject.toml" in version_steps and "GITHUB_REF_NAME" in version_steps
    assert "hack/chartgen.py --check" in version_steps and (REPO / "hack" / "chartgen.py").is_file()
    # The images' names are read from values.yaml, never repeated in the workflow.
    assert '["image"]["repository"]' in version_steps and '["jobImage"]["repository"]' in version_steps
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for repository in (values["image"]["repository"], values["jobImage"]["repository"]):
        assert repository not in WORKFLOW.read_text()


def test_release_uses_the_testbeds_helm() -> None:
    pins = tomllib.loads((REPO / "hack" / "testbed-versions.toml").read_text())
    setup = next(s for s in workflow()["jobs"]["chart"]["steps"] if str(s.get("uses", "")).startswith("azure/setup-helm"))
    assert setup["with"]["version"] == pins["helm"]["version"]


def test_actionlint_accepts_the_workflows() -> None:
    try:
        actionlint = binary("actionlint")
    except FileNotFoundError as err:
        if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SAMPLEFORGE_REQUIRE_TESTBED") == "1":
            pytest.fail(f"{err}: CI must lint the workflows")
        pytest.skip(str(err))
    workflows = sorted(str(p) for p in (REPO / ".github" / "workflows").glob("*.y*ml"))
    # The shell steps go through the testbed's shellcheck (hack/testbed-versions.toml), never
    # whatever else is on PATH; pyflakes (for python steps) is not used.
    try:
        shellcheck = str(binary("shellcheck"))
    except FileNotFoundError:
        shellcheck = ""
    result = subprocess.run([str(actionlint), f"-shellcheck={shellcheck}", "-pyflakes=", *workflows],
                            capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr

"""What the demo prints at its end: metrics a person can read, and only paths that still exist.

The demo itself runs the whole pipeline (``make demo``); these are the pieces of its output that
need no cluster.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from sampleforge.api.constants import Kind
from sampleforge.testbed import _demo
from sampleforge.testbed._demo import look_further, run_result, runs_table


def _docs() -> list[dict[str, object]]:
    return [{"kind": Kind.AUGMENTATION_RUN.value, "metadata": {"name": "catalog-aug"}},
            {"kind": Kind.FINE_TUNE_RUN.value, "metadata": {"name": "ranker"}}]


@pytest.mark.parametrize(("value", "shown"), [
    (0.9966861043736517, "0.9967"),
    (0.5, "0.5"),
    (1.0, "1"),
    (0.00012, "0.0001"),
    (12345.678, "12,345.7"),
])
def test_best_metric_is_shown_to_four_decimals(value: float, shown: str) -> None:
    status = {"results": {"bestMetric": {"name": "ndcg@10", "value": value, "step": 120}}}
    assert run_result(Kind.FINE_TUNE_RUN, status) == f"ndcg@10 {shown} at step 120"


def test_augmentation_result_is_rows_with_separators_and_missing_results_are_blank() -> None:
    assert run_result(Kind.AUGMENTATION_RUN, {"results": {"samplesOut": 18421}}) == "18,421 rows"
    assert run_result(Kind.AUGMENTATION_RUN, {}) == ""
    assert run_result(Kind.FINE_TUNE_RUN, {"phase": "Failed"}) == ""


def test_the_runs_table_never_prints_a_raw_float() -> None:
    statuses = {
        "catalog-aug": {"phase": "Succeeded", "results": {"samplesOut": 960},
                        "outputs": {"uri": "s3://demo/catalog/augmented/"}},
        "ranker": {"phase": "Succeeded", "results": {"bestMetric": {"name": "ndcg@10", "value": 0.9966861043736517,
                                                                    "step": 40}},
                   "outputs": {"uri": "s3://demo/models/ranker/", "modelUri": "s3://demo/models/ranker/model/"}},
    }
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(runs_table(_docs(), statuses))
    text = out.getvalue()
    assert "ndcg@10 0.9967 at step 40" in text and "0.99668" not in text
    assert "960 rows" in text and "s3://demo/models/ranker/model/" in text


def test_look_further_names_only_what_exists(tmp_path: Path) -> None:
    assert look_further(tmp_path) == "", "nothing kept, nothing to look at"
    (tmp_path / "operator.log").write_text("log\n")
    (tmp_path / "outputs" / "ranker").mkdir(parents=True)
    text = look_further(tmp_path)
    assert f"operator log: {tmp_path / 'operator.log'}" in text
    assert f"reports, manifests and metrics: {tmp_path / 'outputs'}" in text
    assert "runs.yaml" not in text and "pod logs" not in text
    live = look_further(tmp_path, ["export KUBECONFIG=/x/kubeconfig"])
    assert live.splitlines()[:2] == ["Look further:", "  export KUBECONFIG=/x/kubeconfig"]


def test_artefacts_are_kept_outside_the_clone_and_the_testbeds_temporary_directory(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAMPLEFORGE_CACHE", str(tmp_path / "cache"))
    kept = _demo.artefacts_dir()
    assert kept == tmp_path / "cache" / "demo" / "last"
    assert _demo.REPO_ROOT not in kept.parents

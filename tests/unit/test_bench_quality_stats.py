"""The quality benchmark's pure parts (bench/quality_stats.py, bench/quality_data.py options): its
metrics against scikit-learn, the paired bootstrap, and the quality.json slice shape."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import quality_data
import quality_stats as QS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_scikit_learn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many ties
    assert QS.average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_mean_ovr_auc_is_scikit_learns_macro_ovr_auc() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert QS.mean_ovr_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_threshold_free_metrics_ignore_a_monotone_recalibration_of_the_match_probability() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 100)
    p1 = rng.random(100)
    shifted = p1 ** 3  # a prior shift or a threshold moves no rank
    a = {"labels": y, "probabilities": np.c_[1 - p1, p1]}
    b = {"labels": y, "probabilities": np.c_[1 - shifted, shifted]}
    assert QS.metric_ap(a) == pytest.approx(QS.metric_ap(b))
    assert QS.metric_auc(a) == pytest.approx(QS.metric_auc(b))


def test_ndcg_per_query_skips_single_title_and_irrelevant_queries_and_matches_scikit_learn() -> None:
    queries = ["a", "a", "a", "b", "c", "c"]
    grades = [2, 0, 1, 1, 0, 0]
    scores = [0.1, 0.9, 0.5, 0.7, 0.2, 0.3]
    per_query = QS.ndcg_per_query(queries, grades, scores)
    assert set(per_query) == {"a"}  # b has one title, c no relevant one
    assert per_query["a"] == pytest.approx(ndcg_score([grades[:3]], [scores[:3]], k=10))


def _binary(seed: int, strength: float, n: int = 300) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 4 == 0).astype(int)
    p = 1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(size=n))))
    return {"labels": y, "probabilities": np.c_[1 - p, p], "predicted": (p >= 0.5).astype(int)}


def test_paired_bootstrap_brackets_a_real_lift_and_contains_zero_for_none() -> None:
    better = [_binary(s, 1.5) for s in range(5)]
    worse = [_binary(10 + s, 0.5) for s in range(5)]
    units = QS.units_of(worse[0], by_query=False)
    lift, (lo, hi) = QS.paired_bootstrap(better, worse, QS.metric_ap, units, draws=200)
    assert lo < lift < hi and lo > 0
    same, (lo0, hi0) = QS.paired_bootstrap(worse, worse, QS.metric_ap, units, draws=50)
    assert same == 0 and lo0 == hi0 == 0
    with pytest.raises(ValueError):
        QS.paired_bootstrap(better[:2], worse, QS.metric_ap, units)


def test_query_units_resample_whole_queries_for_ndcg() -> None:
    p = {"labels": [2, 0, 1, 0], "queries": ["a", "a", "b", "b"], "grades": [2, 0, 1, 0],
         "probabilities": [[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 0, 0]], "classGrades": [0, 1, 2]}
    units = QS.units_of(p, by_query=True)
    assert [u.tolist() for u in units] == [[0, 1], [2, 3]]
    # query a drawn twice and b once: three query draws, each NDCG 1
    assert QS.metric_ndcg10(p, np.array([0, 1, 0, 1, 2, 3])) == pytest.approx(1.0)


def test_slice_summary_has_the_issue_shape_and_picks_the_sampleforge_arm_on_validation() -> None:
    per_arm = {"no-aug": [60.0, 62.0], "nlpaug": [61.0, 61.0], "edits": [70.0, 70.0], "llm": [75.0, 75.0]}
    validation = {"no-aug": 0.6, "nlpaug": 0.6, "edits": 0.7, "llm": 0.65}  # llm is better on test only
    cell = QS.summarize_slice(per_arm, ("no-aug", "nlpaug"), validation, {"edits": (5.0, 13.0)}, {"edits": 9.0})
    assert set(cell) >= {"arms", "bestBaseline", "bestSampleforge", "lift", "liftCI95"}
    assert set(cell["arms"]["no-aug"]) == {"mean", "std", "seeds"} and cell["arms"]["no-aug"]["mean"] == 61.0
    assert cell["bestBaseline"] == "no-aug" and cell["bestSampleforge"] == "edits"
    assert cell["lift"] == 9.0 and cell["liftCI95"] == [5.0, 13.0] and QS.target_met(cell)
    assert not QS.target_met({**cell, "liftCI95": [-1.0, 13.0]})


def test_dataset_options_are_per_dataset_and_evaluation_sizes_never_move_the_qbqtc_slice() -> None:
    assert quality_data.parse_options(["qbqtc.testRows=800", "walmart.validationRows=300"]) == {
        "qbqtc": {"testRows": 800}, "walmart": {"validationRows": 300}}
    with pytest.raises(ValueError):
        quality_data.parse_options(["evalRows=5"])
    if not (quality_data.SHARED / "qbqtc" / "dev.json").exists():
        pytest.skip("shared data not here")
    small, large = quality_data.load("qbqtc", {"testRows": 100}), quality_data.load("qbqtc", {"testRows": 900})
    assert small.slice(500) == large.slice(500) and small.language == "zh" and small.grouped
    held = {r["query"] for r in large.test + large.validation}
    assert not held & {r["query"] for r in large.slice(2000)}
    assert quality_data.load("walmart").language == "en"


def test_stop_ends_running_jobs_and_the_queue(tmp_path: Path) -> None:
    """Ctrl-C: Harness.stop() kills the running job's process group, and no queued job starts."""
    import os
    import threading
    import time

    import quality_harness

    h = object.__new__(quality_harness.Harness)
    h.workdir, h.results, h.threads = tmp_path, tmp_path, 1
    h.stopping, h._procs, h._lock = threading.Event(), set(), threading.Lock()
    outcome: list[BaseException] = []

    def job() -> None:
        try:
            h.run(["sh", "-c", "sleep 60 & wait"], dict(os.environ), "sleeper")
        except BaseException as err:  # noqa: BLE001 - the test inspects it
            outcome.append(err)

    worker = threading.Thread(target=job)
    worker.start()
    deadline = time.monotonic() + 10
    while not h._procs and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    h.stop()
    worker.join(15)
    assert not worker.is_alive() and time.monotonic() - started < 12
    assert isinstance(outcome[0], quality_harness.Stopped)
    with pytest.raises(quality_harness.Stopped):
        h.run(["true"], dict(os.environ), "queued")


def test_summary_compares_the_arms_of_every_seed_and_reports_the_selection_round_apart(tmp_path: Path) -> None:
    """--select-on-first-seed: every arm on seed 1, three arms on seeds 1-3 (the last seed unfinished for
    one arm): the comparison pairs seeds 1-2 of those three; the others are listed, not compared."""
    import json
    from types import SimpleNamespace

    import quality_report

    runs = []
    plan = {"no-aug": [1, 2, 3], "nlpaug": [1, 2], "no-aug-balanced": [1], "edits": [1, 2, 3], "llm": [1]}
    for arm, seeds in plan.items():
        for seed in seeds:
            strength = 1.5 if arm == "edits" else 0.5
            p = _binary(seed * 7 + len(arm), strength)
            run_dir = tmp_path / f"{arm}-{seed}"
            run_dir.mkdir()
            (run_dir / "test-predictions.json").write_text(json.dumps(
                {k: np.asarray(v).tolist() for k, v in p.items()}))
            value = QS.metric_ap(p)
            runs.append({"dataset": "walmart", "slice": 500, "seed": seed, "arm": arm, "rows": 500,
                         "runDir": str(run_dir), "test": {"ap": value, "auc": QS.metric_auc(p), "macroF1": 0.5},
                         "validation": {"ap": value}, "publishedStep": 20, "stoppedAtStep": 40})
    split = SimpleNamespace(language="en", grouped=False, description="d")
    args = SimpleNamespace(slices=[500], seeds=[1, 2, 3], arms=["no-aug", "no-aug-balanced", "nlpaug", "edits", "llm"],
                           max_steps=40, eval_every=20, patience=2, batch_size=16, learning_rate=1e-4, warmup_ratio=0.1,
                           threads=1, jobs=2, bootstrap=100, results_dir=tmp_path)
    out = quality_report.summarize(runs, {"walmart": split}, args, {"walmart": ("ap", "auc", "macroF1")},
                                   ("no-aug", "no-aug-balanced", "nlpaug"))
    cell = out["datasets"]["walmart"]["slices"]["500"]
    assert out["datasets"]["walmart"]["primaryMetric"] == "ap"
    assert cell["seeds"] == [1, 2] and set(cell["arms"]) == {"no-aug", "nlpaug", "edits"}
    assert set(cell["selectionRound"]) == {"no-aug-balanced", "llm"}
    assert cell["bestSampleforge"] == "edits" and cell["bestBaseline"] in ("no-aug", "nlpaug")
    assert len(cell["arms"]["edits"]["seeds"]) == 2 and cell["liftCI95"][0] < cell["lift"] < cell["liftCI95"][1]
    assert cell["lift"] > 0 and cell["liftCI95"][0] > 0
    json.dumps(out)  # quality.json

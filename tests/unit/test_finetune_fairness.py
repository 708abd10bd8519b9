"""Fair training options: class weights, decision calibration on the evaluation split, losses
grouped by query and their batches, and their schema rules. Checked against scikit-learn and brute force, no servers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from sampleforge.api.finetune import Calibration, ClassWeights, FineTuneRunSpec, Task
from sampleforge.jobs.finetune.batches import Collator, PairDataset, QueryBatchSampler, Tokenized, make_loader
from sampleforge.jobs.finetune.calibration import Decision, calibrate, resolve_method, tune_offsets, tune_threshold
from sampleforge.jobs.finetune.errors import SpecError
from sampleforge.jobs.finetune.labels import LabelSpace
from sampleforge.jobs.finetune.modeling import grouped_loss, ranking_scores, task_loss


def spec(**parts: Any) -> FineTuneRunSpec:
    return FineTuneRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "minio"}, "model": "org/model",
        "task": "relevance", "data": {"uri": "s3://datasets/train.jsonl"}, "output": {"uri": "s3://models/out/"},
        **parts})


class TestClassWeights:
    def test_balanced_matches_sklearn(self) -> None:
        rng = np.random.default_rng(3)
        labels = [str(v) for v in rng.choice([0, 1, 2], size=300, p=[0.7, 0.2, 0.1])]
        space = LabelSpace.learn(Task.RELEVANCE, labels)
        targets = np.asarray([space.classes.index(v) for v in labels])
        got = space.class_weights(ClassWeights(type="balanced"), targets)
        expected = compute_class_weight("balanced", classes=np.arange(3), y=targets)
        assert got == pytest.approx(expected)
        # they average 1 over the training rows: the loss keeps its scale
        assert float(np.mean(got[targets])) == pytest.approx(1.0)
        clicks = (rng.random(200) < 0.1).astype(np.float32)
        ctr = LabelSpace.learn(Task.CTR, None).class_weights(ClassWeights(type="balanced"), clicks)
        assert ctr == pytest.approx(compute_class_weight("balanced", classes=np.arange(2), y=clicks.astype(int)))

    def test_explicit_weights_by_label_name(self) -> None:
        space = LabelSpace.learn(Task.RELEVANCE, ["Exact", "Irrelevant", "Substitute"])
        assert space.classes == ("Irrelevant", "Substitute", "Exact")
        got = space.class_weights(ClassWeights(type="explicit", weights={"Exact": 0.5, "Irrelevant": 3.0}),
                                  np.asarray([0, 1, 2]))
        assert got.tolist() == [3.0, 1.0, 0.5]  # unlisted labels weigh 1
        graded = LabelSpace.learn(Task.RELEVANCE, [0, 1, 2])
        assert graded.class_weights(ClassWeights(type="explicit", weights={"2.0": 4.0}),
                                    np.asarray([0])).tolist() == [1.0, 1.0, 4.0]
        clicks = LabelSpace.learn(Task.CTR, None)
        assert clicks.class_weights(ClassWeights(type="explicit", weights={"true": 5.0}),
                                    np.asarray([0.0])).tolist() == [1.0, 5.0]
        with pytest.raises(SpecError, match=r"training.classWeights.weights: label 'Complement' is not one of"):
            space.class_weights(ClassWeights(type="explicit", weights={"Complement": 2.0}), np.asarray([0]))
        assert space.class_weights(None, np.asarray([0])) is None

    def test_weighted_losses_scale_each_row_by_its_class(self) -> None:
        logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1]])
        targets = torch.tensor([0, 2, 2])
        weights = torch.tensor([0.5, 1.0, 3.0])
        per_row = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        got = task_loss(Task.RELEVANCE, logits, targets, weights)
        assert got.item() == pytest.approx(float((per_row * weights[targets]).mean()))
        assert got.item() != pytest.approx(task_loss(Task.RELEVANCE, logits, targets).item())
        assert task_loss(Task.RELEVANCE, logits, targets, torch.ones(3)).item() == pytest.approx(
            task_loss(Task.RELEVANCE, logits, targets).item())
        # a batch of one class still carries its weight (torch's weight= would divide it away)
        single = torch.tensor([2, 2, 2])
        assert task_loss(Task.RELEVANCE, logits, single, weights).item() == pytest.approx(
            3.0 * task_loss(Task.RELEVANCE, logits, single).item())
        click_logits, clicks = torch.tensor([[0.2], [-1.0]]), torch.tensor([1.0, 0.0])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(click_logits.squeeze(-1), clicks, reduction="none")
        assert task_loss(Task.CTR, click_logits, clicks, torch.tensor([1.0, 4.0])).item() == pytest.approx(
            float((bce * torch.tensor([4.0, 1.0])).mean()))

    def test_schema_rules(self) -> None:
        assert spec(training={"classWeights": {"type": "balanced"}}).training.class_weights == ClassWeights(
            type="balanced")
        assert spec(task="ctr", training={"classWeights": {"type": "explicit", "weights": {"1": 4.0}}})
        with pytest.raises(ValidationError, match="training.classWeights applies only when task is relevance or ctr"):
            spec(task="relevanceRegression", training={"classWeights": {"type": "balanced"}})
        with pytest.raises(ValidationError, match="training.classWeights.weights is required with type explicit"):
            spec(training={"classWeights": {"type": "explicit"}})
        with pytest.raises(ValidationError, match="forbidden with type balanced"):
            spec(training={"classWeights": {"type": "balanced", "weights": {"1": 2.0}}})
        with pytest.raises(ValidationError):
            spec(training={"classWeights": {"type": "explicit", "weights": {"1": 0.0}}})
        assert spec().training.class_weights is None  # today's behaviour by default


def _sklearn_macro_f1(y: np.ndarray, predicted: np.ndarray) -> float:
    return float(skm.f1_score(y, predicted, average="macro"))


class TestCalibration:
    def test_threshold_is_the_best_cut_by_brute_force(self) -> None:
        rng = np.random.default_rng(11)
        for _ in range(4):
            y = (rng.random(120) < 0.15).astype(int)
            p = np.clip(0.1 + 0.25 * y + rng.normal(0, 0.12, 120), 0, 1).round(3)  # ties, all below 0.5
            threshold = tune_threshold(p, y, "macroF1")
            best = max(_sklearn_macro_f1(y, (p >= t).astype(int)) for t in [*np.unique(p), 1.1])
            assert _sklearn_macro_f1(y, (p >= threshold).astype(int)) == pytest.approx(best)
            assert best > _sklearn_macro_f1(y, (p >= 0.5).astype(int))  # 0.5 predicts nobody positive
            for objective, score in (("f1", skm.f1_score), ("accuracy", skm.accuracy_score)):
                t = tune_threshold(p, y, objective)
                assert score(y, (p >= t).astype(int)) == pytest.approx(
                    max(score(y, (p >= c).astype(int)) for c in [*np.unique(p), 1.1]))

    def test_threshold_counts_match_the_metric_functions(self) -> None:
        # the one-pass counts agree with macro-F1 computed row by row, classes absent from the truth included
        rng = np.random.default_rng(2)
        for y in (np.ones(30, dtype=int), np.zeros(30, dtype=int), (rng.random(30) < 0.5).astype(int)):
            p = rng.random(30).round(2)
            t = tune_threshold(p, y, "macroF1")
            got = skm.f1_score(y, (p >= t).astype(int), average="macro", labels=np.union1d(y, (p >= t).astype(int)))
            assert got == pytest.approx(max(
                skm.f1_score(y, (p >= c).astype(int), average="macro", labels=np.union1d(y, (p >= c).astype(int)))
                for c in [*np.unique(p), 1.1]))

    def test_threshold_stays_at_one_half_when_that_is_optimal(self) -> None:
        y = np.asarray([0, 0, 1, 1])
        assert tune_threshold([0.1, 0.3, 0.7, 0.9], y, "macroF1") == 0.5
        # the optimum lies above 0.5: a threshold between the two values that separate the classes
        t = tune_threshold([0.55, 0.6, 0.8, 0.9], y, "macroF1")
        assert 0.6 < t <= 0.8

    def test_prior_offsets_correct_a_shifted_prior(self) -> None:
        rng = np.random.default_rng(5)
        y = rng.choice(3, size=400, p=[0.2, 0.3, 0.5])
        logits = rng.normal(0, 1, (400, 3))
        logits[np.arange(400), y] += 1.5
        logits[:, 0] += 2.0  # a model trained where class 0 dominated
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        offsets = tune_offsets(probs, y, "macroF1")
        assert offsets[0] == 0.0  # class 0 is the reference
        predicted = Decision("prior", offsets=offsets).predict(probs)
        before = _sklearn_macro_f1(y, probs.argmax(axis=1))
        after = _sklearn_macro_f1(y, predicted)
        assert after > before + 0.05
        # offsets against class 0's inflated prior: the others move up relative to it
        assert offsets[1] > 0.5 and offsets[2] > 0.5

    def test_prior_offsets_never_worse_than_argmax(self) -> None:
        rng = np.random.default_rng(9)
        probs = rng.dirichlet([1, 1, 1, 1], 60)
        y = probs.argmax(axis=1)  # argmax is already perfect
        offsets = tune_offsets(probs, y, "macroF1")
        assert offsets == (0.0, 0.0, 0.0, 0.0)

    def test_method_resolution_and_round_trip(self) -> None:
        binary, graded = ("0", "1"), ("0", "1", "2")
        assert resolve_method(Calibration(), binary) == "threshold"
        assert resolve_method(Calibration(), graded) == "prior"
        assert resolve_method(Calibration(method="prior"), binary) == "prior"
        with pytest.raises(SpecError, match="evaluation.calibration.method threshold needs two labels"):
            resolve_method(Calibration(method="threshold"), graded)
        decision = calibrate(Calibration(), binary, np.asarray([0.1, 0.2, 0.3, 0.35]), np.asarray([0, 0, 1, 1]))
        assert decision.method == "threshold" and 0.2 < decision.threshold <= 0.3
        document = decision.to_json(binary)
        assert document["positiveLabel"] == "1"
        assert Decision.from_json(document, binary) == decision
        prior = Decision("prior", offsets=(0.0, -0.5, 1.25))
        assert Decision.from_json(prior.to_json(graded), graded) == prior
        assert Decision.from_json(None, binary).predict(np.asarray([0.4, 0.5])).tolist() == [0, 1]

    def test_schema_rules(self) -> None:
        assert spec(evaluation={"calibration": {}}).evaluation.calibration == Calibration()
        assert spec(task="ctr", evaluation={"calibration": {"method": "threshold", "objective": "f1"}})
        with pytest.raises(ValidationError, match="evaluation.calibration applies only when task is relevance or ctr"):
            spec(task="twoTower", evaluation={"calibration": {}})
        with pytest.raises(ValidationError, match="evaluation.calibration.method prior needs task relevance"):
            spec(task="ctr", evaluation={"calibration": {"method": "prior"}})
        assert spec().evaluation.calibration is None


class TestGroupedLosses:
    def test_pairwise_is_ranknet_over_pairs_of_one_query(self) -> None:
        scores = torch.tensor([2.0, 0.5, 1.0, 3.0, -1.0], requires_grad=True)
        grades = torch.tensor([2.0, 0.0, 1.0, 1.0, 1.0])
        keys = torch.tensor([7, 7, 7, 8, 8])  # query 8: equal grades, no pair
        got = grouped_loss("pairwise", scores, grades, keys)
        pairs = [(0, 1), (0, 2), (2, 1)]  # (better, worse) inside query 7
        expected = np.mean([math.log1p(math.exp(-(scores[i].item() - scores[j].item()))) for i, j in pairs])
        assert got.item() == pytest.approx(expected)
        got.backward()
        assert scores.grad is not None and scores.grad[3].item() == 0.0 and scores.grad[4].item() == 0.0
        assert scores.grad[0].item() < 0 < scores.grad[1].item()  # push the better one up, the worse one down

    def test_listwise_is_listnet_per_query(self) -> None:
        scores = torch.tensor([0.2, 1.0, -0.3, 0.7, 0.1, 5.0])
        grades = torch.tensor([2.0, 0.0, 1.0, 1.0, 0.0, 1.0])
        keys = torch.tensor([1, 1, 1, 2, 2, 3])  # query 3: a single row, left out
        got = grouped_loss("listwise", scores, grades, keys)

        def listnet(s: list[float], g: list[float]) -> float:
            target = np.exp(g) / np.exp(g).sum()
            log_p = np.asarray(s) - np.log(np.exp(s).sum())
            return float(-(target * log_p).sum())

        expected = (listnet([0.2, 1.0, -0.3], [2.0, 0.0, 1.0]) + listnet([0.7, 0.1], [1.0, 0.0])) / 2
        assert got.item() == pytest.approx(expected, rel=1e-5)

    def test_a_batch_without_pairs_gives_zero_attached_to_the_graph(self) -> None:
        scores = torch.tensor([1.0, 2.0], requires_grad=True)
        for kind in ("pairwise", "listwise"):
            loss = grouped_loss(kind, scores, torch.tensor([1.0, 0.0]), torch.tensor([1, 2]))
            assert loss.item() == 0.0 and loss.requires_grad

    def test_relevance_ranks_by_expected_grade(self) -> None:
        logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
        got = ranking_scores(Task.RELEVANCE, logits, torch.tensor([0.0, 1.0, 2.0]))
        assert got.tolist() == pytest.approx([1.0, float(torch.softmax(logits[1], 0) @ torch.tensor([0.0, 1.0, 2.0]))])
        assert ranking_scores(Task.CTR, torch.tensor([[0.3]]), None).tolist() == pytest.approx([0.3])

    def test_query_batches_keep_a_querys_rows_together(self) -> None:
        rng = np.random.default_rng(1)
        keys = rng.integers(0, 40, 300)
        keys[:20] = 99  # one query larger than a batch
        lengths = rng.integers(5, 60, 300)
        sampler = QueryBatchSampler(keys, lengths, batch_size=16, seed=3)
        first = sampler.batches()
        sampler.set_epoch(1)
        second = sampler.batches()
        assert len(first) == len(second) == len(sampler)
        assert first != second and sorted(map(tuple, first)) == sorted(map(tuple, second))  # reordered, same packing
        assert sorted(r for b in first for r in b) == list(range(300))
        assert all(1 <= len(b) <= 16 for b in first)
        for key in set(keys.tolist()) - {99}:
            holding = [i for i, b in enumerate(first) if any(keys[r] == key for r in b)]
            assert len(holding) == 1, f"query {key} is split over batches {holding}"
        big = [b for b in first if any(keys[r] == 99 for r in b)]
        assert len(big) == 2 and sum(len([r for r in b if keys[r] == 99]) for b in big) == 20
        assert QueryBatchSampler(keys, lengths, 16, seed=3).batches() == QueryBatchSampler(keys, lengths, 16, 3).batches()
        assert QueryBatchSampler.batch_size is None  # accelerate deals variable batches out as they are

    def test_grouped_batches_carry_grades_and_queries(self) -> None:
        tokens = Tokenized([np.arange(3 + i % 4, dtype=np.int32) for i in range(10)], None)
        keys = np.asarray([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
        grades = np.asarray([2, 0, 1, 1, 0, 0, 0, 1, 2, 1], dtype=np.float64)
        dataset = PairDataset(tokens, np.zeros(10, dtype=np.int64), None, grades=grades, query_keys=keys)
        loader = make_loader(dataset, QueryBatchSampler(keys, dataset.lengths, 4, seed=0), Collator(0))
        seen = []
        for batch in loader:
            rows = batch["row"].numpy()
            assert batch["grade"].tolist() == grades[rows].tolist()
            assert batch["query_key"].tolist() == keys[rows].tolist()
            seen.extend(rows.tolist())
        assert sorted(seen) == list(range(10))

    def test_schema_rules(self) -> None:
        assert spec().training.loss == "pointwise"
        assert spec(task="relevanceRegression", training={"loss": "listwise"}).training.loss == "listwise"
        with pytest.raises(ValidationError, match="training.loss pairwise and listwise rank a query's rows"):
            spec(task="twoTower", training={"loss": "pairwise"})
        with pytest.raises(ValidationError, match="training.classWeights weigh rows of the pointwise loss"):
            spec(training={"loss": "pairwise", "classWeights": {"type": "balanced"}})

"""Fair training options: class weights, decision calibration on the evaluation split, losses
grouped by query and their batches, two-tower hard negatives, the augmentation stage's preprocessing carried into the model, and
their schema rules. Checked against scikit-learn and brute force, no servers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn import metrics as skm
from sklearn.utils.class_weight import compute_class_weight

from sampleforge.api.augmentation import Columns, Preprocess
from sampleforge.api.finetune import Calibration, ClassWeights, FineTuneRunSpec, Task
from sampleforge.api.manifest import CommittedData
from sampleforge.jobs.augment.preprocess import fit_dense_stats
from sampleforge.jobs.finetune.batches import (
    Collator,
    HardNegatives,
    PairDataset,
    QueryBatchSampler,
    Tokenized,
    TwoTowerDataset,
    make_loader,
)
from sampleforge.jobs.finetune.calibration import (
    Decision,
    calibrate,
    cross_fit,
    query_folds,
    resolve_method,
    tune_offsets,
    tune_threshold,
)
from sampleforge.jobs.finetune.data import Dataset, Examples, Rejected
from sampleforge.jobs.finetune.errors import SpecError
from sampleforge.jobs.finetune.inputs import Inputs, pair_negatives, split_and_encode, with_raw_dense
from sampleforge.jobs.finetune.labels import LabelSpace
from sampleforge.jobs.finetune.losses import grouped_loss, info_nce_loss, ranking_scores, task_loss
from sampleforge.jobs.finetune.model_source import ModelSource
from sampleforge.jobs.finetune.modeling import CrossEncoder, DenseTransform, HeadConfig


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


def _two_tower_inputs(hard_negatives: str) -> tuple[FineTuneRunSpec, Inputs]:
    """Four training queries from an augmentation output: positives, one source row judged irrelevant,
    and hardNegative's mined rows (generated, lowest label); an evaluation file of its own."""
    rows = [  # query, item, label, origin, source row, label rule
        ("red shoes", "red sneaker", 1, "source", 0, None),
        ("red shoes", "blue sandal", 0, "source", 1, None),
        ("red shoes", "red sock", 0, "generated", 0, "lowest"),
        ("red shoes", "red hat", 0, "generated", 0, "lowest"),
        ("tent", "2-person tent", 1, "source", 2, None),
        ("tent", "camping stove", 0, "generated", 2, "lowest"),
        ("lamp", "desk lamp", 1, "source", 3, None),
        ("kettle", "tea pot", 0, "generated", 9, "lowest"),  # a query without a training positive
    ]
    examples = Examples([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                        origins=[r[3] for r in rows], source_rows=[r[4] for r in rows],
                        label_rules=[r[5] for r in rows])
    evaluation = Examples(["mug"], ["coffee mug"], [1])
    columns = Columns(query="query", item="item", label="label")
    train = Dataset(examples, Rejected(), "s3://b/aug/", ["part-0.parquet"], columns)
    inputs = Inputs(ModelSource("org/m", "org/m"), train, Dataset(evaluation, Rejected(), "s3://b/e.jsonl", [], columns),
                    "data.fromAugmentationRun")
    run = spec(task="twoTower", data={"uri": "s3://datasets/aug/", "eval": "s3://datasets/e.jsonl"},
               twoTower={"hardNegatives": hard_negatives})
    return run, inputs


class TestTwoTowerHardNegatives:
    def test_mined_negatives_reach_the_loss_with_gradients(self) -> None:
        torch.manual_seed(0)
        q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
        items = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
        negatives = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1).requires_grad_()
        query_keys, item_keys = torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12])
        negative_keys = torch.tensor([13, 11])  # the second "negative" is row 1's positive item
        plain = info_nce_loss(q, items, query_keys, item_keys, 0.05)
        got = info_nce_loss(q, items, query_keys, item_keys, 0.05, negatives, negative_keys)
        logits = torch.cat([q @ items.T, q @ negatives.T], dim=1) / 0.05
        allowed = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
        expected = torch.stack([-torch.log_softmax(logits[r][allowed[r]], 0)[r] for r in range(3)]).mean()
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
        assert got.item() > plain.item()  # more negatives in every softmax
        got.backward()
        assert negatives.grad is not None
        assert negatives.grad[0].abs().sum().item() > 0  # the mined negative is trained against
        assert negatives.grad[1].abs().sum().item() > 0  # rows 0 and 2 still see item 11 as a negative

    def test_split_keeps_generated_non_positive_rows_as_negatives(self) -> None:
        space = LabelSpace.learn(Task.TWO_TOWER, None)
        run, inputs = _two_tower_inputs("generated")
        split = split_and_encode(run, inputs, space)
        assert list(split.train.items) == ["red sneaker", "2-person tent", "desk lamp"]
        assert split.negatives is not None
        assert list(split.negatives.items) == ["red sock", "red hat", "camping stove", "tea pot"]
        run_all, inputs_all = _two_tower_inputs("all")
        every = split_and_encode(run_all, inputs_all, space).negatives
        assert every is not None and "blue sandal" in every.items and len(every) == 5
        run_none, inputs_none = _two_tower_inputs("none")
        none = split_and_encode(run_none, inputs_none, space).negatives
        assert none is not None and len(none) == 0

    def test_every_negative_with_an_anchor_is_paired_each_epoch(self) -> None:
        pairs, chosen = pair_negatives(["red shoes", "tent", "lamp", "tent"],
                                       ["red shoes", "red shoes", "tent", "kettle"])
        rows = sorted(zip(pairs.tolist(), chosen.tolist()))
        # red shoes: 1 positive, 2 negatives -> 2 rows; tent: 2 positives, 1 negative; lamp: none; kettle: no anchor
        assert rows == [(0, 0), (0, 1), (1, 2), (2, -1), (3, 2)]

    def test_the_collated_batch_carries_the_negatives(self) -> None:
        def tok(n: int) -> Tokenized:
            return Tokenized([np.arange(2 + i, dtype=np.int32) for i in range(n)], None)

        hard = HardNegatives(tok(2), np.asarray([7, 8]), np.asarray([1, -1, 0]))
        dataset = TwoTowerDataset(tok(2), tok(2), np.asarray([0, 1]), np.asarray([3, 4]), np.asarray([0, 1, 0]), hard)
        batch = Collator(0)([dataset[i] for i in range(3)])
        assert batch["negative_index"].tolist() == [0, 2]
        assert batch["negative_key"].tolist() == [8, 7]
        assert batch["negative"]["input_ids"].shape == (2, 3)
        assert batch["query_key"].tolist() == [0, 1, 0]
        without = Collator(0)([dataset[1]])
        assert "negative" not in without and "negative_key" not in without


def _preprocess_document(raw: np.ndarray) -> dict[str, Any]:
    """What an AugmentationRun commits for these dense values: quantile clipping, standard scaling,
    fitted by the augmentation job's own code."""
    options = Preprocess(clip_outliers={"method": "quantile", "lower": 0.1, "upper": 0.9},
                         dense_normalization="standard")
    stats = fit_dense_stats(["price", "rating"], options, len(raw), raw.sum(axis=0), (raw * raw).sum(axis=0),
                            raw.min(axis=0), raw.max(axis=0), raw)
    return {"statsFile": "preprocess.json", **stats.to_json()}


class TestPreprocessCarryOver:
    def test_the_transform_is_the_augmentation_stages(self) -> None:
        rng = np.random.default_rng(4)
        raw = np.column_stack([rng.lognormal(4, 1, 200), rng.normal(4, 0.5, 200)])
        document = _preprocess_document(raw)
        transform = DenseTransform.from_preprocess(document, ["price", "rating"])
        assert transform is not None
        options = Preprocess(clip_outliers={"method": "quantile", "lower": 0.1, "upper": 0.9},
                             dense_normalization="standard")
        stats = fit_dense_stats(["price", "rating"], options, len(raw), raw.sum(axis=0), (raw * raw).sum(axis=0),
                                raw.min(axis=0), raw.max(axis=0), raw)
        written = stats.transform(raw)  # what the augmentation output holds
        assert transform.apply(raw) == pytest.approx(written)
        # Mapped back, then through the transform again: the written values, clipping included.
        assert transform.apply(transform.invert(written)) == pytest.approx(written)
        # Feature order follows the training columns, not the file.
        swapped = DenseTransform.from_preprocess(document, ["rating", "price"])
        assert swapped is not None and swapped.center.tolist() == transform.center[::-1].tolist()
        identity = {"clipOutliers": None, "denseNormalization": "none", "features": document["features"]}
        assert DenseTransform.from_preprocess(identity, ["price"]) is None
        with pytest.raises(ValueError, match="no statistics for dense features"):
            DenseTransform.from_preprocess(document, ["price", "weight"])

    def test_committed_rows_are_mapped_back_to_raw_values(self) -> None:
        rng = np.random.default_rng(8)
        raw = np.column_stack([rng.lognormal(4, 1, 50), rng.normal(4, 0.5, 50)])
        document = _preprocess_document(raw)
        transform = DenseTransform.from_preprocess(document, ["price", "rating"])
        assert transform is not None
        written = transform.apply(raw).astype(np.float32)
        examples = Examples(["q"] * 50, ["i"] * 50, [1] * 50, dense=written)
        columns = Columns(query="query", item="item", label="label", dense_features=["price", "rating"])
        manifest = {"files": [{"path": "data/part-00000-00000.parquet", "size": 1, "sha256": "0" * 64}],
                    "preprocess": document}
        dataset = Dataset(examples, Rejected(), "s3://b/aug/", [], columns, manifest=manifest,
                          committed=CommittedData.model_validate(manifest))
        mapped, got = with_raw_dense(dataset, "data.fromAugmentationRun")
        assert got is not None and mapped.examples.dense is not None
        clipped = np.clip(raw, transform.low, transform.high)
        assert mapped.examples.dense == pytest.approx(clipped, rel=1e-5)
        plain = Dataset(examples, Rejected(), "s3://b/raw.parquet", [], columns)
        assert with_raw_dense(plain, "data.uri") == (plain, None)  # raw data: today's own standardisation

    def test_the_head_applies_it_to_raw_features(self) -> None:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32)
        rng = np.random.default_rng(2)
        raw = np.column_stack([rng.lognormal(4, 1, 40), rng.normal(4, 0.5, 40)])
        transform = DenseTransform.from_preprocess(_preprocess_document(raw), ["price", "rating"])
        assert transform is not None
        carrying = CrossEncoder(BertModel(config), HeadConfig(Task.CTR, 1, num_dense=2, dense_clip=True), 16).eval()
        carrying.set_dense_transform(transform)
        plain = CrossEncoder(BertModel(config), HeadConfig(Task.CTR, 1, num_dense=2), 16).eval()
        plain.load_state_dict({k: v for k, v in carrying.state_dict().items()
                               if k not in ("dense_low", "dense_high", "dense_mean", "dense_std")}, strict=False)
        inputs = {"input_ids": torch.randint(0, 50, (40, 6)), "attention_mask": torch.ones(40, 6, dtype=torch.long)}
        with torch.no_grad():
            got = carrying(inputs, torch.from_numpy(raw).float())
            expected = plain(inputs, torch.from_numpy(transform.apply(raw)).float())  # plain standardises with 0/1
        assert got.numpy() == pytest.approx(expected.numpy(), abs=1e-4)
        assert carrying.state_dict()["dense_mean"].tolist() == pytest.approx(transform.center.tolist())


class TestCrossFittedCalibration:
    def test_each_half_is_measured_with_the_other_halfs_decision(self) -> None:
        rng = np.random.default_rng(21)
        queries = [f"query {i // 3}" for i in range(300)]
        y = (rng.random(300) < 0.2).astype(int)
        p = np.clip(0.15 + 0.3 * y + rng.normal(0, 0.1, 300), 0, 1)
        folds = query_folds(queries)
        assert set(folds.tolist()) == {0, 1}
        assert all(len({folds[i] for i in range(300) if queries[i] == q}) == 1 for q in set(queries))
        got = cross_fit(Calibration(estimate="crossFit"), ("0", "1"), p, y, queries)
        assert got is not None
        for fold in (0, 1):
            rows = folds == fold
            threshold = tune_threshold(p[~rows], y[~rows], "macroF1")
            assert got[rows].tolist() == (p[rows] >= threshold).astype(int).tolist()
        # measured out of sample it can only do as well as in sample, where the cut was chosen
        in_sample = (p >= tune_threshold(p, y, "macroF1")).astype(int)
        assert _sklearn_macro_f1(y, got) <= _sklearn_macro_f1(y, in_sample) + 1e-12
        assert cross_fit(Calibration(), ("0", "1"), p[:3], y[:3], queries[:3]) is None  # one query: one half

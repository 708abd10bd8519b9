"""Optimisation, early stopping, the in-batch-negative loss, metric checks, checkpoint
configuration comparison and the launcher's exit code: pure logic of the fine-tune job."""

from __future__ import annotations

import itertools
import math
import os
import signal

import pytest
import torch
from torch import nn

from sampleforge.api.finetune import EarlyStopping, FineTuneRunSpec, Task, Training
from sampleforge.api.status import format_eta
from sampleforge.jobs.finetune.checkpoint import compare_config, describe_config
from sampleforge.jobs.finetune.errors import ExitCode, SpecError
from sampleforge.jobs.finetune.evaluate import check_metrics
from sampleforge.jobs.finetune.labels import LabelSpace
from sampleforge.jobs.finetune.launch import needs_launch, worst
from sampleforge.jobs.finetune.losses import info_nce_loss, task_loss
from sampleforge.jobs.finetune.training import (
    EarlyStopper,
    PreemptionFlag,
    TrainingState,
    make_optimizer,
    make_scheduler,
    warmup_steps,
)


def spec(**changes: object) -> FineTuneRunSpec:
    document = {"storage": {"endpoint": "minio:9000", "credentialsSecret": "s"}, "model": "s3://models/minilm/",
                "task": "relevance", "data": {"uri": "s3://data/train.parquet"},
                "output": {"uri": "s3://models/out/"}, **changes}
    return FineTuneRunSpec.model_validate(document)


class TestOptimisation:
    def test_no_weight_decay_on_biases_and_norms_and_frozen_weights_left_out(self) -> None:
        model = nn.Sequential()
        model.add_module("dense", nn.Linear(4, 4))
        model.add_module("LayerNorm", nn.LayerNorm(4))
        model.add_module("frozen", nn.Linear(4, 4).requires_grad_(False))
        optimizer = make_optimizer(model, Training(weight_decay=0.1, learning_rate=1e-3))
        decay, no_decay = optimizer.param_groups
        assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(4, 4)]
        assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # dense.bias, norm weight and bias

    @pytest.mark.parametrize("name", ["linear", "cosine", "constant"])
    def test_warmup_then_decay(self, name: str) -> None:
        training = Training(learning_rate=1.0, warmup_steps=4, scheduler=name)
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(optimizer, training, total_steps=20)
        rates = []
        for _ in range(20):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        assert rates[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
        if name == "constant":
            assert rates[-1] == 1.0
        else:
            assert rates[-1] < 0.1 and all(a >= b for a, b in itertools.pairwise(rates[4:]))
        if name == "cosine":
            assert rates[12] == pytest.approx(0.5 * (1 + math.cos(math.pi * 8 / 16)))

    def test_warmup_ratio(self) -> None:
        assert warmup_steps(Training(warmup_ratio=0.1), 95) == 10
        assert warmup_steps(Training(), 95) == 0
        assert warmup_steps(Training(warmup_steps=500), 95) == 95


class TestEarlyStopping:
    def test_stops_after_patience_evaluations_without_improvement(self) -> None:
        stopper = EarlyStopper(EarlyStopping(metric="ndcg@10", patience=2, min_delta=0.01), "ndcg@10")
        state = TrainingState()
        decisions = []
        for step, value in enumerate([0.5, 0.6, 0.605, 0.59], start=1):
            state.step = step
            decisions.append(stopper.update(state, {"ndcg@10": value}))
        assert decisions == [False, False, False, True]
        assert state.best is not None and (state.best.value, state.best.step) == (0.6, 2)

    def test_lower_is_better_metrics_minimise(self) -> None:
        stopper = EarlyStopper(EarlyStopping(metric="logLoss", patience=1), "logLoss")
        state = TrainingState()
        stopper.update(state, {"logLoss": 0.7})
        assert not stopper.update(state, {"logLoss": 0.6})
        assert stopper.update(state, {"logLoss": 0.65})

    def test_without_early_stopping_the_first_metric_is_tracked_never_stopped(self) -> None:
        stopper = EarlyStopper(None, "auc")
        state = TrainingState()
        for value in (0.7, 0.6, 0.5, 0.4):
            assert not stopper.update(state, {"auc": value})
        assert state.best is not None and state.best.value == 0.7

    def test_state_survives_a_round_trip(self) -> None:
        state = TrainingState(step=7, epoch=1, batches_in_epoch=3)
        EarlyStopper(None, "mrr").update(state, {"mrr": 0.4})
        restored = TrainingState()
        restored.load_state_dict(state.state_dict())
        assert restored == state


class TestLosses:
    def test_info_nce_masks_duplicate_items_and_second_positives(self) -> None:
        q = nn.functional.normalize(torch.randn(4, 8), dim=-1)
        i = nn.functional.normalize(torch.randn(4, 8), dim=-1)
        query_keys = torch.tensor([0, 1, 0, 2])  # rows 0 and 2: the same query
        item_keys = torch.tensor([5, 6, 7, 6])  # rows 1 and 3: the same item
        got = info_nce_loss(q, i, query_keys, item_keys, temperature=0.05)
        logits = q @ i.T / 0.05
        allowed = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
        expected = torch.stack([-torch.log_softmax(logits[r][allowed[r]], 0)[int(allowed[r][:r].sum())]
                                for r in range(4)]).mean()
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)

    def test_cross_encoder_losses(self) -> None:
        logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        assert task_loss(Task.RELEVANCE, logits, torch.tensor([0, 1])).item() == pytest.approx(
            nn.functional.cross_entropy(logits, torch.tensor([0, 1])).item())
        score = torch.tensor([[0.5], [2.0]])
        assert task_loss(Task.RELEVANCE_REGRESSION, score, torch.tensor([1.0, 2.0])).item() == pytest.approx(0.125)
        assert task_loss(Task.CTR, torch.tensor([[0.0]]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))


class TestMetricChecks:
    def test_metrics_must_fit_the_task(self) -> None:
        graded = LabelSpace.learn(Task.RELEVANCE, ["0", "1", "2"])
        check_metrics(Task.RELEVANCE, graded, ("ndcg@10", "accuracy", "auc", "loss"))
        with pytest.raises(SpecError, match="evaluation.metrics: rmse is a regression metric"):
            check_metrics(Task.RELEVANCE, graded, ("rmse",))
        with pytest.raises(SpecError, match="accuracy is a classification metric and task is twoTower"):
            check_metrics(Task.TWO_TOWER, LabelSpace(Task.TWO_TOWER), ("recall@10", "accuracy"))
        with pytest.raises(SpecError, match="mrr needs ordered labels"):
            check_metrics(Task.RELEVANCE, LabelSpace.learn(Task.RELEVANCE, ["a", "b"]), ("mrr",))


class TestCheckpointConfig:
    def test_structural_and_other_differences(self) -> None:
        saved = describe_config(spec(), None, 1)
        current = describe_config(spec(method={"type": "lora", "rank": 4},
                                       training={"learningRate": 1.0e-4, "epochs": 4}), None, 2)
        structural, other = compare_config(saved, current)
        assert len(structural) == 1 and structural[0].startswith("method: {'type': 'full'} -> ")
        assert other == ["training.epochs: 3 -> 4", "training.learningRate: 5e-05 -> 0.0001", "worldSize: 1 -> 2"]

    def test_identical_configs_do_not_differ(self) -> None:
        assert compare_config(describe_config(spec(), "s3://b/aug/", 1),
                              describe_config(spec(), "s3://b/aug/", 1)) == ([], [])


class TestProcessAndExit:
    def test_one_gpu_runs_in_process_more_go_through_torchrun(self) -> None:
        assert not needs_launch(spec(), {})
        assert needs_launch(spec(distribution={"gpusPerNode": 4}), {})
        assert needs_launch(spec(), {"SAMPLEFORGE_NUM_NODES": "2"})
        assert not needs_launch(spec(distribution={"gpusPerNode": 4}), {"LOCAL_RANK": "0"})

    def test_the_pod_reports_the_most_meaningful_worker_code(self) -> None:
        assert worst([0, 143, 1]) == 143
        assert worst([143, 2]) == ExitCode.CONFIGURATION
        assert worst([0, 1]) == 1
        assert worst([]) == ExitCode.UNEXPECTED

    def test_sigterm_only_sets_a_flag(self) -> None:
        flag = PreemptionFlag().install()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert flag.requested and flag.signal_name == "SIGTERM"
        finally:
            flag.uninstall()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    def test_eta_format(self) -> None:
        assert [format_eta(s) for s in (5, 125, 3 * 3600 + 65, None)] == ["5s", "2m", "3h01m", "?"]

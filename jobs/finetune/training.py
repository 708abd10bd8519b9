"""Optimisation pieces the recipe assembles: AdamW with decoupled weight decay, the learning-rate
schedule, early stopping, the training state a checkpoint carries, and the SIGTERM flag.

Each is small and deterministic on purpose, so the unit tests pin its behaviour exactly.
"""

from __future__ import annotations

import math
import signal
import threading
from dataclasses import asdict, dataclass, field
from types import FrameType
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from sampleforge.api.finetune import EarlyStopping, Training

#: Parameters that never get weight decay: biases and normalisation weights (the BERT recipe).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def make_optimizer(model: nn.Module, training: Training) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with no weight decay on biases and norms."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if any(name.endswith(n) for n in _NO_DECAY) else decay).append(param)
    groups = [{"params": decay, "weight_decay": training.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=training.learning_rate)


def warmup_steps(training: Training, total_steps: int) -> int:
    """Warmup length: training.warmupSteps, else warmupRatio of the steps, else none."""
    if training.warmup_steps is not None:
        return min(int(training.warmup_steps), total_steps)
    return math.ceil(float(training.warmup_ratio or 0.0) * total_steps)


def make_scheduler(optimizer: torch.optim.Optimizer, training: Training, total_steps: int) -> Any:
    """Linear warmup, then linear decay to zero, a cosine decay, or a constant rate."""
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[training.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(training, total_steps),
                         num_training_steps=total_steps)


@dataclass
class Best:
    name: str
    value: float
    step: int


@dataclass
class TrainingState:
    """Progress that is not in the model, optimizer, scheduler or RNG: saved with every checkpoint
    through ``accelerator.register_for_checkpointing``, restored by ``load_state``."""

    step: int = 0
    epoch: int = 0
    #: Batches this rank has consumed in ``epoch`` (skipped on resume with skip_first_batches).
    batches_in_epoch: int = 0
    samples_seen: int = 0
    loss: float | None = None
    best: Best | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ``[step, mean training loss since the previous point]`` pairs (rank 0's loss), for report.html.
    loss_curve: list[list[float | None]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, Best(**value) if key == "best" and value is not None else value)


class LossCurve:
    """The training loss over steps for metrics.json's ``lossCurve``: one point per ``every`` optimizer
    steps (at most ``points`` over the run), the mean of those steps' losses. The sum stays on the
    device between points, so recording costs one host sync per point, not per step."""

    def __init__(self, total_steps: int, points: int = 200) -> None:
        self.every = max(1, math.ceil(total_steps / max(points, 1)))
        self._sum: torch.Tensor | None = None
        self._steps = 0

    def add(self, state: TrainingState, step_loss: torch.Tensor) -> None:
        """Record the loss of the step ``state.step`` just finished."""
        self._sum = step_loss.detach().float() if self._sum is None else self._sum + step_loss.detach().float()
        self._steps += 1
        if state.step % self.every == 0:
            self.flush(state)

    def flush(self, state: TrainingState) -> None:
        """Write the point of the steps since the last one (training ended between two points)."""
        if self._sum is None or not self._steps:
            return
        value = float(self._sum) / self._steps
        state.loss_curve.append([state.step, round(value, 6) if math.isfinite(value) else None])
        self._sum, self._steps = None, 0


class EarlyStopper:
    """Tracks the watched metric; says when ``patience`` evaluations in a row brought no
    improvement of more than ``min_delta``. Its memory lives in :class:`TrainingState`, so it
    survives a restart."""

    def __init__(self, config: EarlyStopping | None, first_metric: str) -> None:
        self.config = config
        self.metric = config.metric if config else first_metric
        self.maximise = (config.effective_mode() == "max") if config else not _lower_is_better(first_metric)

    def improved(self, value: float, best: float) -> bool:
        delta = self.config.min_delta if self.config else 0.0
        return value > best + delta if self.maximise else value < best - delta

    def update(self, state: TrainingState, metrics: dict[str, float]) -> bool:
        """Record an evaluation; True when training should stop now."""
        value = metrics.get(self.metric)
        if value is None or math.isnan(value):
            return False
        if state.best is None or self.improved(value, state.best.value):
            state.best = Best(self.metric, value, state.step)
            state.evals_without_improvement = 0
        else:
            state.evals_without_improvement += 1
        if self.config and state.evals_without_improvement >= self.config.patience:
            state.stopped_early = True
        return state.stopped_early


def _lower_is_better(metric: str) -> bool:
    from sampleforge.api.fields import LOWER_IS_BETTER

    return metric in LOWER_IS_BETTER


class PreemptionFlag:
    """SIGTERM (and SIGINT on a laptop) only set a flag: the training loop checks it at the next
    optimizer-step boundary, commits a checkpoint and exits with ExitCode.PREEMPTED. Doing the
    work inside the handler would interrupt a half-written optimizer step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def install(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

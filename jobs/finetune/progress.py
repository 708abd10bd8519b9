"""What the run tells people while it trains: heartbeats to the operator (which become
``status.progress`` and ``status.results``), a progress bar in the pod log, and JSON log lines at
each evaluation and checkpoint.

Rates are measured over a sliding window of recent steps, so the ETA follows the current speed
(after a slow first step, an evaluation, or a checkpoint upload) instead of the run's average.
Only the main process reports training state; other nodes' local main processes send liveness.
"""

from __future__ import annotations

import collections
import logging
import math
import sys
import time

from pydantic import ValidationError
from tqdm.auto import tqdm

from sampleforge.api.manifest import describe
from sampleforge.api.status import BestMetric, FineTuneResults, format_eta
from sampleforge.jobs.common.heartbeat import HeartbeatSender

from .training import TrainingState

log = logging.getLogger(__name__)


class Progress:
    """Progress of one rank; does nothing visible unless it is the main process."""

    def __init__(self, heartbeat: HeartbeatSender | None, total_steps: int, is_main: bool, report: bool,
                 window: int = 20) -> None:
        self.heartbeat = heartbeat
        self.total = total_steps
        self.is_main = is_main
        self.report = report
        self._times: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=window)
        self.latest_metrics: dict[str, float] = {}
        self.checkpoint_uri: str | None = None
        self._epoch_batches = 0
        self._last_report = 0.0
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, desc="train", unit="step", disable=not is_main, dynamic_ncols=True,
                        mininterval=0.5 if interactive else 30.0)

    def start(self, state: TrainingState) -> None:
        self.bar.n = state.step
        self.bar.refresh()
        self._times.append((time.perf_counter(), state.step, state.samples_seen))

    def due(self, every_seconds: float = 1.0) -> bool:
        """Whether it is time to read the loss off the device again: reading it forces a GPU sync,
        so the loop does it about once a second rather than every step."""
        now = time.perf_counter()
        if now - self._last_report >= every_seconds:
            self._last_report = now
            return True
        return False

    def rates(self) -> tuple[float | None, float | None]:
        """(steps per second, samples per second) over the recent window."""
        if len(self._times) < 2:
            return None, None
        (t0, s0, n0), (t1, s1, n1) = self._times[0], self._times[-1]
        elapsed = t1 - t0
        return ((s1 - s0) / elapsed, (n1 - n0) / elapsed) if elapsed > 0 else (None, None)

    def eta_seconds(self, step: int) -> float | None:
        steps_per_second, _ = self.rates()
        return (self.total - step) / steps_per_second if steps_per_second else None

    def stepped(self, state: TrainingState) -> None:
        """After each optimizer step: cheap (the heartbeat only records; a thread sends)."""
        self._times.append((time.perf_counter(), state.step, state.samples_seen))
        if not self.report:
            return
        steps_per_second, samples_per_second = self.rates()
        if self.is_main:
            self.bar.update(state.step - self.bar.n)
            if state.step % 10 == 0 or state.step == self.total:
                self.bar.set_postfix(loss=f"{state.loss:.4f}" if state.loss is not None else "?",
                                     samples_s=f"{samples_per_second or 0:.1f}", refresh=False)
        self._beat(state, steps_per_second, samples_per_second)

    def _beat(self, state: TrainingState, steps_per_second: float | None, samples_per_second: float | None,
              message: str | None = None) -> None:
        if self.heartbeat is None:
            return
        rate = steps_per_second if steps_per_second is not None and math.isfinite(steps_per_second) else None
        if not self.is_main:
            self.heartbeat.update(done=state.step, total=self.total, rate=rate)
            return
        eta = self.eta_seconds(state.step)
        self.heartbeat.update(
            done=state.step, total=self.total, rate=rate, finetune=self.results(state),
            message=message or f"step {state.step}/{self.total}, {samples_per_second or 0:.1f} samples/s, "
                               f"ETA {format_eta(eta)}")

    def results(self, state: TrainingState) -> FineTuneResults | None:
        """status.results as the heartbeat carries it; None (this report goes without) when a value
        is out of range, which is a bug in the reporting, never a reason to stop training."""
        epoch = state.epoch + (state.batches_in_epoch / self._epoch_batches if self._epoch_batches else 0.0)
        best = state.best if state.best is not None and math.isfinite(state.best.value) else None
        try:
            return FineTuneResults(
                step=state.step, epoch=epoch, checkpoint_uri=self.checkpoint_uri,
                latest_metrics={k: v for k, v in self.latest_metrics.items() if math.isfinite(v)},
                loss=state.loss if state.loss is not None and math.isfinite(state.loss) else None,
                best_metric=BestMetric(name=best.name, value=best.value, step=best.step) if best else None)
        except ValidationError as err:
            log.warning("training state left out of the heartbeat", extra={"error": describe(err)})
            return None

    def stage(self, message: str) -> None:
        """Say what the run does now, before a step that reports nothing for a while (an evaluation,
        a checkpoint upload, publishing the model): the heartbeat's keep-alives repeat it until the
        next report, so a long pause reads as work in progress, not as a pod gone silent."""
        if self.report and self.heartbeat is not None:
            self.heartbeat.stage(message)

    def set_epoch_batches(self, batches: int) -> None:
        self._epoch_batches = batches

    def evaluated(self, state: TrainingState, metrics: dict[str, float]) -> None:
        self.latest_metrics = dict(metrics)
        if self.is_main:
            log.info("evaluation", extra={"step": state.step, "metrics": metrics,
                                          "best": state.best.__dict__ if state.best else None})
            self.bar.write(f"step {state.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
                           file=sys.stderr)
        if self.report:
            self._beat(state, *self.rates())

    def checkpointed(self, state: TrainingState, uri: str) -> None:
        self.checkpoint_uri = uri
        if self.report:
            self._beat(state, *self.rates(), message=f"checkpoint at step {state.step}: {uri}")
            if self.heartbeat is not None:
                self.heartbeat.flush()

    def close(self, state: TrainingState, message: str) -> None:
        self.bar.close()
        if self.report:
            self._beat(state, *self.rates(), message=message)

"""The operator's Prometheus metrics: every name is defined here and only here.

The Grafana dashboard and the alert rules in the Helm chart query these names, and a test checks
that every metric they use is defined in this module. Per-run series carry only (kind, namespace,
name) (+ augmenter or metric name, both bounded by the spec's list sizes), and are removed when
the run is deleted, so the series count follows the number of live runs. The one per-run series of
a finished run, ``sampleforge_run_failed_timestamp_seconds``, lives only for
``FAILED_RUN_WINDOW_SECONDS`` after the failure: the SampleforgeRunFailed alert needs the run's own
namespace and name, and a cluster that keeps thousands of old failed runs must not keep a series
for each of them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sampleforge.api.status import (
    AugmentationResults,
    AugmentationRunStatus,
    FineTuneResults,
    FineTuneRunStatus,
    Progress,
)

NAMESPACE = "sampleforge"

_RUN_LABELS = ("kind", "namespace", "name")

#: How long a failed run keeps its failure series (and so its SampleforgeRunFailed alert, whose
#: expression in charts/sampleforge/alerts/sampleforge-rules.yaml uses the same number).
FAILED_RUN_WINDOW_SECONDS = 6 * 3600


class OperatorMetrics:
    """All metrics on one registry (a fresh one per operator instance keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Gauge(f"{NAMESPACE}_runs", "Runs by kind and phase.", ("kind", "phase"), registry=r)
        self.phase_transitions = Counter(f"{NAMESPACE}_run_phase_transitions_total",
                                         "Phase changes of runs.", ("kind", "from_phase", "to_phase"), registry=r)
        self.reconcile_duration = Histogram(f"{NAMESPACE}_reconcile_duration_seconds",
                                            "Time to reconcile a run (create/resume/update handlers).", ("kind",),
                                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                            registry=r)
        self.reconcile_errors = Counter(f"{NAMESPACE}_reconcile_errors_total",
                                        "Reconciles that ended in an error, by reason.", ("kind", "reason"),
                                        registry=r)
        self.job_create_errors = Counter(f"{NAMESPACE}_job_create_errors_total",
                                         "Failed attempts to create a run's Job.", ("kind",), registry=r)
        self.jobs_created = Counter(f"{NAMESPACE}_jobs_created_total", "Jobs created for runs.", ("kind",),
                                    registry=r)
        self.job_failures = Counter(f"{NAMESPACE}_job_failures_total",
                                    "Runs whose Job failed, by reason.", ("kind", "reason"), registry=r)
        self.run_failed = Gauge(f"{NAMESPACE}_run_failed_timestamp_seconds",
                                "Unix time at which a run reached phase Failed, by the Ready condition's reason; "
                                f"kept for {FAILED_RUN_WINDOW_SECONDS} s after the failure or until the run is "
                                "deleted.", (*_RUN_LABELS, "reason"), registry=r)
        self.run_duration = Histogram(f"{NAMESPACE}_run_duration_seconds",
                                      "Wall time from Job start to the run's end, by outcome.", ("kind", "phase"),
                                      buckets=(30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400), registry=r)
        self.status_writes = Counter(f"{NAMESPACE}_status_writes_total", "Status patches written to runs.",
                                     ("kind",), registry=r)
        self.heartbeats = Counter(f"{NAMESPACE}_heartbeats_total", "Heartbeats received, by result.",
                                  ("kind", "result"), registry=r)
        self.heartbeat_age = Gauge(f"{NAMESPACE}_run_heartbeat_age_seconds",
                                   "Seconds since the run's pods last sent a heartbeat.", _RUN_LABELS, registry=r)
        self.progress_ratio = Gauge(f"{NAMESPACE}_run_progress_ratio", "done / total of a running run (0..1).",
                                    _RUN_LABELS, registry=r)
        self.eta_seconds = Gauge(f"{NAMESPACE}_run_eta_seconds", "Estimated seconds until the run is done.",
                                 _RUN_LABELS, registry=r)
        self.rate = Gauge(f"{NAMESPACE}_run_rate", "Units (rows or steps) per second of a running run.",
                          _RUN_LABELS, registry=r)
        self.samples_out = Gauge(f"{NAMESPACE}_augmentation_samples_out",
                                 "Rows an AugmentationRun has written.", _RUN_LABELS, registry=r)
        self.augmenter_samples = Gauge(f"{NAMESPACE}_augmentation_augmenter_samples",
                                       "Generated rows kept, per augmenter.", (*_RUN_LABELS, "augmenter"),
                                       registry=r)
        self.filtered_samples = Gauge(f"{NAMESPACE}_augmentation_filtered_samples",
                                      "Generated rows dropped, per filter.", (*_RUN_LABELS, "filter"), registry=r)
        self.train_loss = Gauge(f"{NAMESPACE}_finetune_loss", "Latest training loss of a FineTuneRun.",
                                _RUN_LABELS, registry=r)
        self.train_step = Gauge(f"{NAMESPACE}_finetune_step", "Optimizer steps done.", _RUN_LABELS, registry=r)
        self.eval_metric = Gauge(f"{NAMESPACE}_finetune_eval_metric", "Latest evaluation metric value.",
                                 (*_RUN_LABELS, "metric"), registry=r)
        self.leader = Gauge(f"{NAMESPACE}_operator_leader", "1 when this replica holds the leader Lease.",
                            registry=r)
        self.watch_healthy = Gauge(f"{NAMESPACE}_operator_watch_healthy",
                                   "1 while the operator's watches keep up with the API server.", registry=r)
        self._per_run = (self.heartbeat_age, self.progress_ratio, self.eta_seconds, self.rate, self.samples_out,
                         self.train_loss, self.train_step)
        self._per_run_keyed = (self.augmenter_samples, self.filtered_samples, self.eval_metric, self.run_failed)

    def names(self) -> set[str]:
        """Every sample name this registry can expose (used by the dashboard/alert sync test)."""
        suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                     "gauge": ("",)}
        out: set[str] = set()
        for metric in self.registry.collect():
            out.add(metric.name)
            out.update(metric.name + suffix for suffix in suffixes.get(metric.type, ("",)))
        return out

    def set_phase_counts(self, counts: dict[tuple[str, str], int], phases: Iterable[str],
                         kinds: Iterable[str]) -> None:
        for kind in kinds:
            for phase in phases:
                self.runs.labels(kind=kind, phase=phase).set(counts.get((kind, phase), 0))
        # Called on every run event: often enough to let go of old failures without a timer of its own.
        self.prune_failed_runs()

    def record_failure(self, kind: str, namespace: str, name: str, reason: str, at: float | None = None) -> None:
        """The run reached phase Failed at ``at`` (now by default), for ``reason``.

        One series per run, so that the alert names one reason: an earlier one under the same name
        (a run deleted while another replica led, so ``forget_run`` never ran here) is replaced.
        """
        self._remove_run(self.run_failed, str(kind), namespace, name)
        self.run_failed.labels(kind=kind, namespace=namespace, name=name, reason=reason).set(
            time.time() if at is None else at)

    def prune_failed_runs(self, now: float | None = None) -> None:
        """Drop the failure series of runs that failed more than ``FAILED_RUN_WINDOW_SECONDS`` ago."""
        oldest = (time.time() if now is None else now) - FAILED_RUN_WINDOW_SECONDS
        for values, child in self._children(self.run_failed):
            if child._value.get() < oldest:
                self._remove(self.run_failed, values)

    def observe_run(self, kind: str, namespace: str, name: str, status: AugmentationRunStatus | FineTuneRunStatus,
                    heartbeat_age: float | None) -> None:
        labels = {"kind": kind, "namespace": namespace, "name": name}
        progress = status.progress or Progress()
        if heartbeat_age is not None:
            self.heartbeat_age.labels(**labels).set(heartbeat_age)
        if progress.total:
            self.progress_ratio.labels(**labels).set((progress.done or 0) / progress.total)
        if progress.eta_seconds is not None:
            self.eta_seconds.labels(**labels).set(progress.eta_seconds)
        if progress.rate is not None:
            self.rate.labels(**labels).set(progress.rate)
        results = status.results
        if isinstance(results, AugmentationResults):
            if results.samples_out is not None:
                self.samples_out.labels(**labels).set(results.samples_out)
            for augmenter, count in results.per_augmenter.items():
                self.augmenter_samples.labels(**labels, augmenter=augmenter).set(count)
            for filter_name, count in results.filtered.items():
                self.filtered_samples.labels(**labels, filter=filter_name).set(count)
        elif isinstance(results, FineTuneResults):
            if results.loss is not None:
                self.train_loss.labels(**labels).set(results.loss)
            if results.step is not None:
                self.train_step.labels(**labels).set(results.step)
            for metric, value in results.latest_metrics.items():
                self.eval_metric.labels(**labels, metric=metric).set(value)

    def forget_run(self, kind: str, namespace: str, name: str) -> None:
        """Drop every series of a deleted run."""
        for gauge in self._per_run:
            try:
                gauge.remove(kind, namespace, name)
            except KeyError:
                pass
        for gauge in self._per_run_keyed:
            self._remove_run(gauge, kind, namespace, name)

    @staticmethod
    def _children(gauge: Gauge) -> list[tuple[Sequence[str], Any]]:
        # Handlers run in several threads: copy the children under the family's own lock.
        with gauge._lock:
            return list(gauge._metrics.items())

    @staticmethod
    def _remove(gauge: Gauge, values: Sequence[str]) -> None:
        with contextlib.suppress(KeyError):  # another thread removed it first
            gauge.remove(*values)

    @classmethod
    def _remove_run(cls, gauge: Gauge, kind: str, namespace: str, name: str) -> None:
        # Labelled children are keyed by label-value tuples; remove all of this run's.
        for values, _ in cls._children(gauge):
            if tuple(values[:3]) == (kind, namespace, name):
                cls._remove(gauge, values)

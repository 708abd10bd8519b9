"""Heartbeats in, progress out: the latest report of each shard of each run, and their sum.

Shards of an AugmentationRun report separately; the run's progress is their sum (rows done and
total, rates) and its results are their summed counts. Every node of a FineTuneRun reports (so each
one's silence can be noticed), but they all count the same global optimizer steps: its progress is
node 0's alone, never a sum.
The store lives in memory: after an operator restart the pods' next heartbeats refill it, and
``status.progress.lastHeartbeatTime`` carries the last one across the gap.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sampleforge.api import Kind
from sampleforge.api.heartbeat import Heartbeat
from sampleforge.api.status import AugmentationResults, FineTuneResults, Progress, format_eta

RunKey = tuple[str, str, str]  # (kind, namespace, name)


def run_key(kind: str, namespace: str, name: str) -> RunKey:
    return (str(kind), namespace, name)


@dataclass
class RunProgress:
    uid: str
    shards: dict[int, Heartbeat] = field(default_factory=dict)
    received_at: datetime | None = None

    def _beats(self, kind: Kind) -> list[Heartbeat]:
        beats = [self.shards[i] for i in sorted(self.shards)]
        return beats[:1] if kind is Kind.FINE_TUNE_RUN else beats

    def progress(self, kind: Kind) -> Progress:
        beats = self._beats(kind)
        done = sum(b.done for b in beats)
        totals = [b.total for b in beats]
        expected = 1 if kind is Kind.FINE_TUNE_RUN else max((b.shards for b in beats), default=1)
        rates = [b.rate for b in beats if b.rate is not None]
        rate = round(sum(rates), 3) if rates else None
        total = percent = eta_seconds = eta = None
        # A total is only meaningful once every shard has reported one.
        if len(beats) >= expected and all(t is not None for t in totals):
            total = sum(t for t in totals if t is not None)
            if total > 0:
                percent = min(100, int(100 * done / total))
                if rate:
                    remaining = max(0.0, (total - done) / rate)
                    eta_seconds, eta = int(remaining), format_eta(remaining)
        stages = [b.message for b in beats if b.message]
        stage = None
        if stages:
            stage = stages[0] if len(set(stages)) == 1 else f"{stages[0]} (+{len(beats) - 1} more shard(s))"
        heartbeat = self.received_at.replace(microsecond=0) if self.received_at is not None else None
        return Progress(done=done, total=total, percent=percent, rate=rate, eta_seconds=eta_seconds, eta=eta,
                        last_heartbeat_time=heartbeat, stage=stage)

    def results(self, kind: Kind) -> AugmentationResults | FineTuneResults | None:
        beats = self._beats(kind)
        if kind is Kind.FINE_TUNE_RUN:
            return next((b.finetune for b in beats if b.finetune is not None), None)
        parts = [b.augmentation for b in beats if b.augmentation is not None]
        return sum_shards(parts) if parts else None


def _sum_known(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def sum_shards(parts: list[AugmentationResults]) -> AugmentationResults:
    """The run's counts so far: every shard's added up (a count no shard has reported stays unset)."""
    per_augmenter: Counter[str] = Counter()
    filtered: Counter[str] = Counter()
    for part in parts:
        per_augmenter.update(part.per_augmenter)
        filtered.update(part.filtered)
    return AugmentationResults(samples_in=_sum_known([p.samples_in for p in parts]),
                               samples_out=_sum_known([p.samples_out for p in parts]),
                               rejected_rows=_sum_known([p.rejected_rows for p in parts]),
                               per_augmenter=dict(sorted(per_augmenter.items())),
                               filtered=dict(sorted(filtered.items())))


class ProgressStore:
    """Thread-safe: the HTTP endpoint writes, the run monitors read."""

    def __init__(self) -> None:
        self._runs: dict[RunKey, RunProgress] = {}
        self._lock = threading.Lock()

    def record(self, beat: Heartbeat, received_at: datetime) -> None:
        key = run_key(beat.kind, beat.namespace, beat.name)
        with self._lock:
            entry = self._runs.get(key)
            if entry is None or entry.uid != beat.uid:
                # A recreated run with the same name starts from nothing.
                entry = self._runs[key] = RunProgress(uid=beat.uid)
            entry.shards[beat.shard] = beat
            entry.received_at = received_at

    def get(self, key: RunKey, uid: str) -> RunProgress | None:
        with self._lock:
            entry = self._runs.get(key)
            return entry if entry is not None and entry.uid == uid else None

    def forget(self, key: RunKey) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def __len__(self) -> int:
        return len(self._runs)

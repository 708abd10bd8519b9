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
from typing import Any

from sampleforge.api import Kind
from sampleforge.api.heartbeat import Heartbeat
from sampleforge.api.status import format_eta

RunKey = tuple[str, str, str]  # (kind, namespace, name)


def run_key(kind: str, namespace: str, name: str) -> RunKey:
    return (str(kind), namespace, name)


@dataclass
class RunProgress:
    uid: str
    shards: dict[int, Heartbeat] = field(default_factory=dict)
    received_at: datetime | None = None

    def progress(self, kind: str) -> dict[str, Any]:
        beats = [self.shards[i] for i in sorted(self.shards)]
        if kind == Kind.FINE_TUNE_RUN and beats:
            beats = beats[:1]
        done = sum(b.done for b in beats)
        totals = [b.total for b in beats]
        expected = 1 if kind == Kind.FINE_TUNE_RUN else max((b.shards for b in beats), default=1)
        out: dict[str, Any] = {"done": done}
        rates = [b.rate for b in beats if b.rate is not None]
        rate = sum(rates) if rates else None
        if rate is not None:
            out["rate"] = round(rate, 3)
        # A total is only meaningful once every shard has reported one.
        if len(beats) >= expected and all(t is not None for t in totals):
            total = sum(t for t in totals if t is not None)
            out["total"] = total
            if total > 0:
                out["percent"] = min(100, int(100 * done / total))
                if rate:
                    eta = max(0.0, (total - done) / rate)
                    out["etaSeconds"] = int(eta)
                    out["eta"] = format_eta(eta)
        if self.received_at is not None:
            out["lastHeartbeatTime"] = self.received_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        stages = [b.message for b in beats if b.message]
        if stages:
            out["stage"] = stages[0] if len(stages) == 1 or len(set(stages)) == 1 \
                else f"{stages[0]} (+{len(beats) - 1} more shard(s))"
        return out

    def results(self, kind: str) -> dict[str, Any] | None:
        beats = [self.shards[i] for i in sorted(self.shards)]
        if kind == Kind.FINE_TUNE_RUN:
            latest = next((b.finetune for b in beats if b.finetune is not None), None)
            return latest.model_dump(mode="json", by_alias=True, exclude_none=True) if latest else None
        parts = [b.augmentation for b in beats if b.augmentation is not None]
        if not parts:
            return None
        summed: dict[str, Any] = {}
        for name in ("samples_in", "samples_out", "rejected_rows"):
            values = [getattr(p, name) for p in parts if getattr(p, name) is not None]
            if values:
                summed[name] = sum(values)
        per_augmenter: Counter[str] = Counter()
        filtered: Counter[str] = Counter()
        for p in parts:
            per_augmenter.update(p.per_augmenter)
            filtered.update(p.filtered)
        camel = {"samples_in": "samplesIn", "samples_out": "samplesOut", "rejected_rows": "rejectedRows"}
        out = {camel[k]: v for k, v in summed.items()}
        if per_augmenter:
            out["perAugmenter"] = dict(sorted(per_augmenter.items()))
        if filtered:
            out["filtered"] = dict(sorted(filtered.items()))
        return out


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

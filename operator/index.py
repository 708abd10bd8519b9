"""What the operator's watches have seen of each run's children, and who to wake when it changes.

kopf delivers every event of the Jobs and Pods the operator manages (selected by label); they land
here keyed by the owning run's uid. The per-run monitors read this cache instead of polling the
API server, and sleep until a child changes, a heartbeat arrives, or their resync interval passes.
This is what keeps 2,000 idle runs cheap: no API reads at all while nothing happens.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sampleforge.api.constants import LABEL_RUN_UID


@dataclass
class RunChildren:
    job: dict[str, Any] | None = None
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    wake: asyncio.Event | None = None


class ChildIndex:
    """Latest Job and Pods per run uid. Used from the event loop only (kopf handlers are async)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunChildren] = {}

    def _entry(self, uid: str) -> RunChildren:
        entry = self._runs.get(uid)
        if entry is None:
            entry = self._runs[uid] = RunChildren()
        return entry

    def on_job_event(self, event_type: str, job: dict[str, Any]) -> None:
        uid = (job.get("metadata", {}).get("labels") or {}).get(LABEL_RUN_UID)
        if not uid:
            return
        entry = self._entry(uid)
        entry.job = None if event_type == "DELETED" else job
        self.wake(uid)

    def on_pod_event(self, event_type: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_RUN_UID)
        if not uid:
            return
        entry = self._entry(uid)
        name = pod["metadata"]["name"]
        if event_type == "DELETED":
            entry.pods.pop(name, None)
        else:
            entry.pods[name] = pod
        self.wake(uid)

    def job(self, uid: str) -> dict[str, Any] | None:
        entry = self._runs.get(uid)
        return entry.job if entry else None

    def pods(self, uid: str) -> list[dict[str, Any]]:
        entry = self._runs.get(uid)
        return [entry.pods[name] for name in sorted(entry.pods)] if entry else []

    def pod_belongs_to(self, namespace: str, pod_name: str, uid: str) -> bool:
        entry = self._runs.get(uid)
        pod = entry.pods.get(pod_name) if entry else None
        return pod is not None and pod["metadata"].get("namespace") == namespace

    def wake_event(self, uid: str) -> asyncio.Event:
        entry = self._entry(uid)
        if entry.wake is None:
            entry.wake = asyncio.Event()
        return entry.wake

    def wake(self, uid: str) -> None:
        entry = self._runs.get(uid)
        if entry is not None and entry.wake is not None:
            entry.wake.set()

    def forget(self, uid: str) -> None:
        self._runs.pop(uid, None)

    def __len__(self) -> int:
        return len(self._runs)

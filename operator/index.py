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


def _slim(obj: dict[str, Any], drop_template: bool) -> dict[str, Any]:
    """What the monitors read of a Job or Pod: its metadata without ``managedFields`` and, for a
    Job, its spec without the pod template (containers, environment, volumes). Those are most of
    the object and nothing here reads them; with thousands of runs they were most of the
    operator's memory."""
    slim = dict(obj)
    meta = slim.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        slim["metadata"] = {k: v for k, v in meta.items() if k != "managedFields"}
    spec = slim.get("spec")
    if drop_template and isinstance(spec, dict) and "template" in spec:
        slim["spec"] = {k: v for k, v in spec.items() if k != "template"}
    return slim


@dataclass
class RunChildren:
    job: dict[str, Any] | None = None
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    wake: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None


def controller_uid(obj: dict[str, Any]) -> str | None:
    """uid of the object's managing controller (the ownerReference with ``controller: true``)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class ChildIndex:
    """Latest Job and Pods per run uid. Written from the event loop only (the watch handlers are async)."""

    def __init__(self) -> None:
        self._runs: dict[str, RunChildren] = {}

    def _entry(self, uid: str) -> RunChildren:
        entry = self._runs.get(uid)
        if entry is None:
            entry = self._runs[uid] = RunChildren()
        return entry

    def on_job_event(self, event_type: str, job: dict[str, Any]) -> None:
        uid = (job.get("metadata", {}).get("labels") or {}).get(LABEL_RUN_UID)
        if not uid or (event_type == "DELETED" and uid not in self._runs):
            return  # a deletion of a run already forgotten must not bring an empty record back
        entry = self._entry(uid)
        entry.job = None if event_type == "DELETED" else _slim(job, drop_template=True)
        self.wake(uid)

    def on_pod_event(self, event_type: str, pod: dict[str, Any]) -> None:
        uid = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_RUN_UID)
        if not uid or (event_type == "DELETED" and uid not in self._runs):
            return
        entry = self._entry(uid)
        name = pod["metadata"]["name"]
        if event_type == "DELETED":
            entry.pods.pop(name, None)
        else:
            entry.pods[name] = _slim(pod, drop_template=False)
        self.wake(uid)

    def job(self, uid: str) -> dict[str, Any] | None:
        entry = self._runs.get(uid)
        return entry.job if entry else None

    def pods(self, uid: str) -> list[dict[str, Any]]:
        entry = self._runs.get(uid)
        return [entry.pods[name] for name in sorted(entry.pods)] if entry else []

    def knows(self, uid: str, pod_name: str) -> bool:
        """Whether the watch has delivered this pod (and a Job) for the run yet."""
        entry = self._runs.get(uid)
        return entry is not None and entry.job is not None and pod_name in entry.pods

    def pod_belongs_to(self, namespace: str, pod_name: str, uid: str) -> bool:
        """Whether the Pod was created by the run's own Job: its controller is that Job, whose
        controller is the run. Labels say nothing here: anyone who may create a Pod may copy
        them, and a Pod so labelled would otherwise report (and forge) the run's results."""
        entry = self._runs.get(uid)
        pod = entry.pods.get(pod_name) if entry else None
        if entry is None or pod is None or entry.job is None or pod["metadata"].get("namespace") != namespace:
            return False
        job_meta = entry.job["metadata"]
        return (controller_uid(pod) == job_meta.get("uid") and controller_uid(entry.job) == uid
                and job_meta.get("namespace") == namespace)

    def wake_event(self, uid: str) -> asyncio.Event:
        entry = self._entry(uid)
        if entry.wake is None:
            entry.wake = asyncio.Event()
            entry.loop = asyncio.get_running_loop()
        return entry.wake

    def wake(self, uid: str) -> None:
        """Wake the run's monitor; safe from kopf's handler threads too (reconcile runs in one)."""
        entry = self._runs.get(uid)
        if entry is None or entry.wake is None or entry.loop is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is entry.loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            entry.wake.set()
        elif not entry.loop.is_closed():
            entry.loop.call_soon_threadsafe(entry.wake.set)

    def forget(self, uid: str) -> None:
        self._runs.pop(uid, None)

    def __len__(self) -> int:
        return len(self._runs)

"""What the operator's watches have seen of each run's children, and who to wake when it changes.

kopf delivers every event of the Jobs and Pods the operator manages (selected by label); they land
here keyed by the owning run's uid. The per-run monitors read this cache instead of polling the
API server, and sleep until a child changes, a heartbeat arrives, or their resync interval passes.
This is what keeps 2,000 idle runs cheap: no API reads at all while nothing happens.

A sharded AugmentationRun has a Job per step (:mod:`.steps`), one after the other: the index keeps
them all, and what the monitors read as "the run's Job" is the latest step's, with only
that Job's Pods (a finished analysis pod says nothing about the shards). A Job deleted after it
completed (``ttlSecondsAfterFinished``) is kept as last seen: that its step is done is what lets
the run go on to the next step rather than make it again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sampleforge.api.constants import LABEL_RUN_UID, STEPS

from .steps import step_of


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


def _completed(job: dict[str, Any]) -> bool:
    return any(c.get("type") == "Complete" and c.get("status") == "True"
               for c in (job.get("status") or {}).get("conditions") or [])


def _step_rank(job: dict[str, Any]) -> int:
    """Order of a run's Jobs: a one-Job run's Job (no step) first, then the steps in order."""
    step = step_of(job)
    return -1 if step is None else STEPS.index(step)


@dataclass
class RunChildren:
    #: The run's Jobs by name (one per step for a sharded run, else one).
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    wake: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def job(self) -> dict[str, Any] | None:
        """The latest step's Job: the one the run is at."""
        return max(self.jobs.values(), key=_step_rank, default=None)


def controller_uid(obj: dict[str, Any]) -> str | None:
    """uid of the object's managing controller (the ownerReference with ``controller: true``)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class ChildIndex:
    """Latest Jobs and Pods per run uid. Written from the event loop only (the watch handlers are async)."""

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
        name = str(job["metadata"].get("name"))
        if event_type == "DELETED" and not _completed(job):
            entry.jobs.pop(name, None)
        else:
            entry.jobs[name] = _slim(job, drop_template=True)
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

    def steps(self, uid: str) -> list[str]:
        """The steps (``LABEL_STEP`` values) of the run's Jobs the watch holds, in no order."""
        entry = self._runs.get(uid)
        return [str(step) for job in (entry.jobs.values() if entry else ()) if (step := step_of(job)) is not None]

    def pods(self, uid: str) -> list[dict[str, Any]]:
        """The Pods of the run's current Job (:meth:`job`) only."""
        entry = self._runs.get(uid)
        job = entry.job if entry else None
        if entry is None or job is None:
            return []
        job_uid = job["metadata"].get("uid")
        return [pod for _, pod in sorted(entry.pods.items()) if controller_uid(pod) == job_uid]

    def knows(self, uid: str, pod_name: str) -> bool:
        """Whether the watch has delivered this pod (and a Job) for the run yet."""
        entry = self._runs.get(uid)
        return entry is not None and bool(entry.jobs) and pod_name in entry.pods

    def pod_belongs_to(self, namespace: str, pod_name: str, uid: str) -> bool:
        """Whether the Pod was created by one of the run's own Jobs (any step's: the analysis and
        reduce pods send heartbeats too): its controller is that Job, whose controller is the run.
        Labels say nothing here: anyone who may create a Pod may copy them, and a Pod so labelled
        would otherwise report (and forge) the run's results."""
        entry = self._runs.get(uid)
        pod = entry.pods.get(pod_name) if entry else None
        if entry is None or pod is None or pod["metadata"].get("namespace") != namespace:
            return False
        owner = controller_uid(pod)
        return owner is not None and any(
            owner == job["metadata"].get("uid") and controller_uid(job) == uid
            and job["metadata"].get("namespace") == namespace for job in entry.jobs.values())

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

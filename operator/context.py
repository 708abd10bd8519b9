"""Everything a handler needs, built once at startup and handed to kopf as its memo.

Passing one small typed object (rather than module globals or twenty arguments) keeps handlers
testable and lets two operators run in one process in tests without sharing state.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sampleforge.operator.eventcache import FailedCreateListings
from sampleforge.operator.index import ChildIndex
from sampleforge.operator.kube import Kube
from sampleforge.operator.lifecycle import Observation
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.progress import ProgressStore
from sampleforge.operator.secretcache import SecretKeyCache
from sampleforge.operator.settings import Settings

#: FailedCreate Event listings in flight at once. Each may take seconds on a busy API server; with
#: hundreds of Jobs waiting for pods they took every thread the monitors share and held up the
#: status writes of every other run.
EVENT_LISTINGS = 4


@dataclass
class OperatorContext:
    settings: Settings
    kube: Kube
    metrics: OperatorMetrics
    children: ChildIndex = field(default_factory=ChildIndex)
    progress: ProgressStore = field(default_factory=ProgressStore)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: run uid -> what reconcile found before the run could have a Job (waiting for its upstream, a
    #: missing Secret, an invalid spec): the run's monitor, the one writer of status, reports it.
    preflight: dict[str, Observation] = field(default_factory=dict)
    #: (kind, namespace, name) -> phase, for the runs-by-phase gauge and transition counting.
    phases: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: Set once kopf has started handling resources: this replica leads (readiness, heartbeats).
    serving: bool = False
    #: time.monotonic() of this replica's last successful read of the leader Lease: a standby that
    #: can read it can take over (readiness). None until the first read.
    lease_seen_at: float | None = None
    #: Set when the process is on its way out: no replica is ready while it shuts down.
    stopping: bool = False
    #: False once a watch has been seen lagging the API server (liveness).
    watching: bool = True
    #: run uid -> the resourceVersion the operator's watch last delivered.
    watch_seen: dict[str, str] = field(default_factory=dict)
    #: Bounds the monitors' FailedCreate Event listings (see EVENT_LISTINGS).
    event_listings: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(EVENT_LISTINGS))
    #: Each namespace's FailedCreate Events of Jobs, listed once for all its monitors (:mod:`.eventcache`).
    failed_creates: FailedCreateListings = field(default_factory=FailedCreateListings)
    #: The keys of the Secrets runs name, remembered for a few seconds (see :mod:`.secretcache`).
    secret_keys: SecretKeyCache = field(default_factory=SecretKeyCache)

"""kopf's own settings, and the watch-health check that drives the liveness probe."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from sampleforge.api import Kind
from sampleforge.api.constants import ANNOTATION_PREFIX, FINALIZER
from sampleforge.operator.diffbase import DigestDiffBaseStorage
from sampleforge.operator.handlers._common import ctx_of
from sampleforge.operator.kube import API_THREADS, KubeError
from sampleforge.operator.watchcheck import WatchLagTracker

log = logging.getLogger(__name__)
#: kopf's workers for the synchronous handlers (reconcile); the rest of API_THREADS serve the monitors.
HANDLER_THREADS = 16


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's state goes into annotations under our prefix: the status schema is structural, so
    # anything kopf wrote under status.kopf would be pruned by the API server.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    # Digests only, never a copy of the spec (see sampleforge.operator.diffbase): a large spec would
    # otherwise push the annotations past 256 KiB and make every patch of the run fail.
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.finalizer = FINALIZER
    # Leadership is ours (a Lease), not kopf's peering: one replica runs handlers at all.
    settings.peering.standalone = True
    # The resources and namespaces are known; scanning would need list on CRDs and namespaces
    # (not granted by the chart) and delays a namespaced operator's start by retries.
    settings.scanning.disabled = True
    # Restart watches regularly: a stream that silently stops is the failure that bites kopf
    # operators; the server-side timeout bounds how long one can hang unnoticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.execution.max_workers = HANDLER_THREADS
    # The monitors' API calls (status writes, Event listings) go through the loop's default
    # executor, which is min(32, CPUs + 4) threads: 6 on a 2-core node serialised the status
    # writes of a burst of new runs behind each other.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=API_THREADS - HANDLER_THREADS, thread_name_prefix="sampleforge-api"))
    # kopf posts its own log lines of this level and above as Events of the run. At INFO that was
    # two Events per new run ("Handler ... succeeded", "Creation is processed"), two more API
    # writes per run in a burst, queued with the Jobs; the operator's own Events (created Job,
    # phase changes) go through kopf.event and are posted whatever this level.
    settings.posting.level = logging.WARNING
    settings.networking.error_backoffs = [1, 2, 5, 10, 30]
    ctx = ctx_of(memo)
    memo["watch_task"] = asyncio.create_task(_watch_health_loop(ctx_of(memo)))
    ctx.serving = True
    ctx.metrics.watch_healthy.set(1)


@kopf.on.cleanup()
async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("watch_task")
    if task is not None:
        task.cancel()


async def _watch_health_loop(ctx: Any) -> None:
    tracker = WatchLagTracker(stale_after=ctx.settings.watch_stale_seconds)
    interval = max(5.0, ctx.settings.watch_stale_seconds / 4)
    namespaces = ctx.settings.namespaces or (None,)
    while True:
        await asyncio.sleep(interval)
        try:
            listed: dict[str, str] = {}
            for kind in Kind:
                for namespace in namespaces:
                    for item in await asyncio.to_thread(ctx.kube.list_runs, kind, namespace):
                        meta = item["metadata"]
                        listed[meta["uid"]] = meta["resourceVersion"]
        except KubeError as err:
            log.warning("watch health check could not list runs", extra={"error": str(err)})
            continue
        ctx.watching = tracker.update(listed, ctx.watch_seen, asyncio.get_running_loop().time())
        ctx.metrics.watch_healthy.set(1 if ctx.watching else 0)
        if not ctx.watching:
            log.error("watches lag the API server", extra={"lagging": tracker.lagging()})

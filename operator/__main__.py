"""``sampleforge-operator``: serve probes and metrics, win the leader Lease, then run kopf.

The HTTP server starts first so that standby replicas answer their probes: a standby is ready while
it can read the Lease (it can take over), so every healthy replica counts as available. kopf only
starts handling resources on the replica that holds the Lease, which then labels its own Pod as
the leader's (the heartbeat Service selects that label), and stops when it loses it — Kubernetes
then restarts that replica as a standby. On a clean stop the leader takes its label off and
releases the Lease, so a standby takes over within about a second.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import kopf

from sampleforge.api.logs import setup_logging
from sampleforge.operator import handlers  # noqa: F401 - registers the handlers with kopf
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Kube, load_api_client
from sampleforge.operator.leader import LeaderElector
from sampleforge.operator.leaderlabel import LeaderPodLabel
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.server import start_server
from sampleforge.operator.settings import Settings

log = logging.getLogger("sampleforge.operator")


async def _mark_when_serving(ctx: OperatorContext, label: LeaderPodLabel, previous_holder: str | None) -> None:
    """Label this Pod as the leader's once kopf serves: a heartbeat that arrived earlier would find
    no watch cache to check its sender against."""
    while not ctx.serving:
        await asyncio.sleep(0.2)
    await label.mark(previous_holder)


async def run(settings: Settings) -> int:
    ctx = OperatorContext(settings=settings, kube=Kube(load_api_client()), metrics=OperatorMetrics())
    # Only a replica that takes part in leader election needs the label: a lone operator is the
    # only replica behind the Service (the chart then selects no label).
    label = LeaderPodLabel(ctx.kube, settings.pod_namespace,
                           settings.pod_name if settings.leader_election else "")
    await label.unmark()  # a restarted container must not keep the label it had as leader
    runner = await start_server(ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lost = asyncio.Event()
    keeper: asyncio.Task[None] | None = None
    marking: asyncio.Task[None] | None = None
    elector: LeaderElector | None = None
    try:
        if settings.leader_election:
            elector = LeaderElector(ctx.kube.api, settings.pod_namespace, settings.lease_name, settings.identity,
                                    settings.lease_duration_seconds, on_contact=lambda: _seen_lease(ctx))
            acquiring = asyncio.create_task(elector.acquire())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                acquiring.cancel()
                return 0
            stopping.cancel()
            keeper = asyncio.create_task(elector.keep(lost))
            marking = asyncio.create_task(_mark_when_serving(ctx, label, elector.previous_holder))
        ctx.metrics.leader.set(1)
        stop_flag: asyncio.Future[None] = loop.create_future()

        async def relay() -> None:
            waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if lost.is_set():
                # Stop acting at once, before the Lease can expire and a standby take over: no
                # status write, no heartbeat accepted, not ready; kopf's own shutdown follows.
                ctx.serving = False
            if not stop_flag.done():
                stop_flag.set_result(None)

        relay_task = asyncio.create_task(relay())
        await kopf.operator(
            clusterwide=not settings.namespaces,
            namespaces=list(settings.namespaces),
            memo=kopf.Memo(ctx=ctx),
            standalone=True,
            stop_flag=stop_flag,
        )
        relay_task.cancel()
        return 1 if lost.is_set() else 0
    finally:
        ctx.stopping = True
        ctx.serving = False
        ctx.metrics.leader.set(0)
        for task in (marking, keeper):
            if task is not None:
                task.cancel()
        await _step_down(label, elector, lost.is_set())
        await runner.cleanup()


def _seen_lease(ctx: OperatorContext) -> None:
    ctx.lease_seen_at = time.monotonic()


async def _step_down(label: LeaderPodLabel, elector: LeaderElector | None, lost: bool) -> None:
    """Label off first, then the Lease: the next leader must never share the label with us."""
    await label.unmark()
    if elector is not None and not lost:
        await asyncio.to_thread(elector.release)


def main() -> int:
    settings = Settings.from_env()
    setup_logging()
    log.info("starting", extra={"namespaces": list(settings.namespaces) or "all", "port": settings.http_port,
                                "leader_election": settings.leader_election})
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())

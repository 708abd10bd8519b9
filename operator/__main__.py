"""``sampleforge-operator``: serve probes and metrics, win the leader Lease, then run kopf.

The HTTP server starts first so that standby replicas answer their liveness probe (and report not
ready); kopf only starts handling resources on the replica that holds the Lease, and stops when it
loses it — Kubernetes then restarts that replica as a standby.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import kopf

from sampleforge.api.logs import setup_logging
from sampleforge.operator import handlers  # noqa: F401 - registers the handlers with kopf
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Kube, load_api_client
from sampleforge.operator.leader import LeaderElector
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.server import start_server
from sampleforge.operator.settings import Settings

log = logging.getLogger("sampleforge.operator")


async def run(settings: Settings) -> int:
    ctx = OperatorContext(settings=settings, kube=Kube(load_api_client()), metrics=OperatorMetrics())
    runner = await start_server(ctx)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lost = asyncio.Event()
    keeper: asyncio.Task[None] | None = None
    try:
        if settings.leader_election:
            elector = LeaderElector(ctx.kube.api, settings.pod_namespace, settings.lease_name, settings.pod_name,
                                    settings.lease_duration_seconds)
            acquiring = asyncio.create_task(elector.acquire())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                acquiring.cancel()
                return 0
            stopping.cancel()
            keeper = asyncio.create_task(elector.keep(lost))
        ctx.metrics.leader.set(1)
        stop_flag: asyncio.Future[None] = loop.create_future()

        async def relay() -> None:
            waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(lost.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
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
        ctx.serving = False
        ctx.metrics.leader.set(0)
        if keeper is not None:
            keeper.cancel()
        await runner.cleanup()


def main() -> int:
    settings = Settings.from_env()
    setup_logging()
    log.info("starting", extra={"namespaces": list(settings.namespaces) or "all", "port": settings.http_port,
                                "leader_election": settings.leader_election})
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())

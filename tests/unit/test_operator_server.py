"""The operator's HTTP surface before any API call: probes, metrics, and heartbeat requests that
must be refused before a token is ever reviewed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from sampleforge.operator.context import OperatorContext
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.server import HEARTBEAT_PATH, build_app
from sampleforge.operator.settings import Settings


def _ctx() -> OperatorContext:
    # No Kube client: none of these requests may reach the API server.
    return OperatorContext(settings=Settings(leader_election=False), kube=None, metrics=OperatorMetrics())  # type: ignore[arg-type]


def _serve(ctx: OperatorContext, check: Callable[[ClientSession, str], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with TestServer(build_app(ctx)) as server, ClientSession() as session:
            return await check(session, str(server.make_url("")))

    return asyncio.run(go())


class TestProbes:
    def test_readiness_follows_serving_and_liveness_follows_watches(self) -> None:
        ctx = _ctx()

        async def check(session: ClientSession, base: str) -> list[int]:
            codes = []
            for path in ("/readyz", "/healthz"):
                async with session.get(base + path) as response:
                    codes.append(response.status)
            ctx.serving, ctx.watching = True, False
            for path in ("/readyz", "/healthz"):
                async with session.get(base + path) as response:
                    codes.append(response.status)
            return codes

        assert _serve(ctx, check) == [503, 200, 200, 500]

    def test_metrics_are_prometheus_text(self) -> None:
        ctx = _ctx()
        ctx.metrics.jobs_created.labels(kind="AugmentationRun").inc()

        async def check(session: ClientSession, base: str) -> str:
            async with session.get(base + "/metrics") as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                return await response.text()

        assert 'sampleforge_jobs_created_total{kind="AugmentationRun"} 1.0' in _serve(ctx, check)


class TestHeartbeatRejections:
    def test_no_token_is_401_and_a_bad_body_is_400(self) -> None:
        ctx = _ctx()

        async def check(session: ClientSession, base: str) -> tuple[int, int]:
            async with session.post(base + HEARTBEAT_PATH, json={"done": 1}) as no_token:
                first = no_token.status
            async with session.post(base + HEARTBEAT_PATH, json={"done": -1},
                                    headers={"Authorization": "Bearer abc"}) as bad_body:
                second = bad_body.status
            return first, second

        assert _serve(ctx, check) == (401, 400)
        samples = {s.labels["result"]: s.value for m in ctx.metrics.registry.collect()
                   if m.name == "sampleforge_heartbeats" for s in m.samples if s.name.endswith("_total")}
        assert samples == {"unauthenticated": 1.0, "invalid": 1.0}

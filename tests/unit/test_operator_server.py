"""The operator's HTTP surface before any API call: probes, metrics, and heartbeat requests that
must be refused before a token is ever reviewed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from sampleforge.operator.context import OperatorContext
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.server import HEARTBEAT_PATH, build_app, readiness
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

    def test_a_standby_is_ready_while_it_can_read_the_lease(self) -> None:
        """Readiness means healthy, not leading: a 2-replica Deployment is fully available."""
        ctx = OperatorContext(settings=Settings(leader_election=True, lease_duration_seconds=15), kube=None,  # type: ignore[arg-type]
                              metrics=OperatorMetrics())
        ready, why = readiness(ctx, now=100.0)
        assert not ready and "never" in why and "sampleforge-system/sampleforge-operator" in why
        ctx.lease_seen_at = 90.0
        assert readiness(ctx, now=100.0) == (True, "ok: standby, following the leader Lease")
        ready, why = readiness(ctx, now=90.0 + 31)  # two lease durations without a read
        assert not ready and "31s ago" in why
        ctx.serving = True
        assert readiness(ctx, now=1000.0) == (True, "ok: leader, handling runs")
        ctx.stopping = True
        assert readiness(ctx, now=1000.0) == (False, "shutting down")

    def test_readyz_answers_with_the_reason(self) -> None:
        ctx = OperatorContext(settings=Settings(leader_election=True), kube=None,  # type: ignore[arg-type]
                              metrics=OperatorMetrics())
        ctx.lease_seen_at = time.monotonic()

        async def check(session: ClientSession, base: str) -> tuple[int, str]:
            async with session.get(base + "/readyz") as response:
                return response.status, await response.text()

        assert _serve(ctx, check) == (200, "ok: standby, following the leader Lease\n")

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


    def test_a_standby_refuses_heartbeats_with_503_before_any_token_review(self) -> None:
        """The heartbeat Service routes to the leader's label; during a failover a beat may still
        reach a standby, which keeps no progress: 503 (the sender retries), no TokenReview."""
        ctx = _ctx()  # kube=None: a TokenReview would raise
        beat = {"kind": "AugmentationRun", "namespace": "ns", "name": "r", "uid": "u1", "shard": 0, "shards": 1,
                "done": 1, "total": 10, "sentAt": "2026-11-28T12:00:00Z"}

        async def check(session: ClientSession, base: str) -> tuple[int, Any]:
            async with session.post(base + HEARTBEAT_PATH, json=beat, headers={"Authorization": "Bearer abc"}) as resp:
                return resp.status, await resp.json()

        status, body = _serve(ctx, check)
        assert status == 503 and "not the leader" in body["error"]

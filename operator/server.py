"""The operator's HTTP server: probes, metrics, and the heartbeat endpoint the run pods call.

Heartbeats are authenticated with the pod's projected ServiceAccount token, bound to the
``sampleforge.io/heartbeat`` audience: the API server's TokenReview says which ServiceAccount and
which Pod sent it, and the Pod must be one of the run's own (from the watch cache). A token stolen
from another workload, or one minted for the API server's audience, is refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from sampleforge.api import jobenv
from sampleforge.api.heartbeat import Heartbeat
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import KubeError

log = logging.getLogger(__name__)
HEARTBEAT_PATH = "/v1alpha1/heartbeats"
_POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
_TOKEN_CACHE_SECONDS = 60.0


class _TokenCache:
    """TokenReview results for a minute: a pod heartbeating every 10 s costs one review a minute."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, dict[str, Any] | None]] = {}

    def get(self, token: str) -> tuple[bool, dict[str, Any] | None]:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._entries.get(key)
        if hit and time.monotonic() - hit[0] < _TOKEN_CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def put(self, token: str, user: dict[str, Any] | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[hashlib.sha256(token.encode()).hexdigest()] = (time.monotonic(), user)


def readiness(ctx: OperatorContext, now: float) -> tuple[bool, str]:
    """Ready means healthy: the leader once it serves, a standby while it can read the leader
    Lease (so it can take over). Heartbeats find the leader by its Pod label, not by readiness, so
    every healthy replica is ready and a 2-replica Deployment is fully available.

    ``now`` is time.monotonic(); a standby that has not read the Lease for two lease durations
    (it tries every third of one) cannot reach the API server and would not notice a dead leader.
    """
    if ctx.stopping:
        return False, "shutting down"
    if ctx.serving:
        return True, "ok: leader, handling runs"
    settings = ctx.settings
    if not settings.leader_election:
        return False, "starting: not handling runs yet"
    seen = ctx.lease_seen_at
    window = 2.0 * settings.lease_duration_seconds
    if seen is not None and now - seen <= window:
        return True, "ok: standby, following the leader Lease"
    last = "never" if seen is None else f"{now - seen:.0f}s ago"
    return False, (f"standby cannot read the leader Lease {settings.pod_namespace}/{settings.lease_name} "
                   f"(last read {last}); check its access to the API server")


def build_app(ctx: OperatorContext) -> web.Application:
    tokens = _TokenCache()

    async def healthz(_: web.Request) -> web.Response:
        if not ctx.watching:
            return web.Response(status=500, text="watches lag the API server; restart me\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        ready, why = readiness(ctx, time.monotonic())
        return web.Response(status=200 if ready else 503, text=f"{why}\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(ctx.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def heartbeat(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer "):].strip() if header.startswith("Bearer ") else ""
        if not token:
            ctx.metrics.heartbeats.labels(kind="unknown", result="unauthenticated").inc()
            return web.json_response({"error": "missing bearer token"}, status=401)
        try:
            beat = Heartbeat.model_validate(await request.json())
        except (ValueError, ValidationError) as err:
            ctx.metrics.heartbeats.labels(kind="unknown", result="invalid").inc()
            return web.json_response({"error": f"invalid heartbeat: {err}"}, status=400)

        if not ctx.serving:
            # A standby keeps no progress; the heartbeat Service routes to the leader's Pod label,
            # so this is a moment of failover: the sender retries on its next beat.
            ctx.metrics.heartbeats.labels(kind=beat.kind, result="not_leader").inc()
            return web.json_response({"error": "this replica is not the leader; retry"}, status=503)
        cached, user = tokens.get(token)
        if not cached:
            try:
                user = await asyncio.to_thread(ctx.kube.review_token, token, jobenv.HEARTBEAT_AUDIENCE)
            except KubeError as err:
                log.warning("token review failed", extra={"error": str(err)})
                return web.json_response({"error": "cannot verify the token now; retry"}, status=503)
            tokens.put(token, user)
        if user is None:
            ctx.metrics.heartbeats.labels(kind=beat.kind, result="unauthenticated").inc()
            return web.json_response({"error": f"token not valid for audience {jobenv.HEARTBEAT_AUDIENCE}"},
                                     status=401)
        username = str(user.get("username", ""))
        pod_names = (user.get("extra") or {}).get(_POD_NAME_EXTRA) or []
        in_namespace = username.startswith(f"system:serviceaccount:{beat.namespace}:")
        if in_namespace and pod_names and not ctx.children.knows(beat.uid, pod_names[0]):
            # Not yet in the watch cache (an operator that has just started, a pod created a moment
            # ago): neither proven the run's nor refused; the sender retries on its next beat.
            ctx.metrics.heartbeats.labels(kind=beat.kind, result="unknown_pod").inc()
            return web.json_response({"error": f"pod {pod_names[0]} is not known yet; retry"}, status=503)
        if not in_namespace or not pod_names or not ctx.children.pod_belongs_to(beat.namespace, pod_names[0],
                                                                                   beat.uid):
            ctx.metrics.heartbeats.labels(kind=beat.kind, result="forbidden").inc()
            return web.json_response({"error": f"{username} (pod {pod_names[:1]}) is not a pod of "
                                               f"{beat.kind} {beat.namespace}/{beat.name}"}, status=403)
        ctx.progress.record(beat, datetime.now(UTC))
        ctx.children.wake(beat.uid)
        ctx.metrics.heartbeats.labels(kind=beat.kind, result="accepted").inc()
        return web.json_response({"accepted": True}, status=202)

    app = web.Application(client_max_size=256 * 1024)
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics),
                    web.post(HEARTBEAT_PATH, heartbeat)])
    return app


async def start_server(ctx: OperatorContext) -> web.AppRunner:
    runner = web.AppRunner(build_app(ctx), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, ctx.settings.http_host, ctx.settings.http_port)
    await site.start()
    return runner

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
        self._entries: dict[str, tuple[float, dict | None]] = {}

    def get(self, token: str) -> tuple[bool, dict | None]:
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._entries.get(key)
        if hit and time.monotonic() - hit[0] < _TOKEN_CACHE_SECONDS:
            return True, hit[1]
        return False, None

    def put(self, token: str, user: dict | None) -> None:
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[hashlib.sha256(token.encode()).hexdigest()] = (time.monotonic(), user)


def build_app(ctx: OperatorContext) -> web.Application:
    tokens = _TokenCache()

    async def healthz(_: web.Request) -> web.Response:
        if not ctx.watching:
            return web.Response(status=500, text="watches lag the API server; restart me\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if ctx.serving else web.Response(status=503, text="not serving\n")

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

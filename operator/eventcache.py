"""One listing of a namespace's FailedCreate Events answers every run's monitor there for a few seconds.

Each monitor whose Job has no pods lists that Job's FailedCreate Events (:mod:`.podcreate`). With
hundreds of such Jobs in one namespace (a quota that blocks them all, or the benchmark's testbed,
which has no Job controller) that was hundreds of listings, each a filter over every Event of the
namespace in the API server's watch cache: in a burst of 500 new runs the handler threads spent as
long waiting on these listings as on creating the Jobs, and the API server's CPU went to them. Here
a namespace's FailedCreate Events of Jobs are listed once per ``ttl`` seconds, one listing at a time
per namespace (monitors that come due meanwhile wait for it), and each monitor takes its own Job's.
A failed listing is not remembered: the next monitor that comes due lists again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

#: How long one listing of a namespace's FailedCreate Events answers for every Job there.
LISTING_TTL_SECONDS = 5.0

Events = list[dict[str, Any]]


class FailedCreateListings:
    """namespace -> its Jobs' FailedCreate Events as last listed. Used from the event loop only."""

    def __init__(self, ttl: float = LISTING_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._listed: dict[str, tuple[float, Events]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def for_job(self, namespace: str, job_uid: str, list_namespace: Callable[[str], Awaitable[Events]]) -> Events:
        """The FailedCreate Events of Job ``job_uid``, from a listing of its namespace at most ``ttl``
        seconds old; ``list_namespace`` lists them (its errors propagate)."""
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            entry = self._listed.get(namespace)
            if entry is None or self._clock() - entry[0] >= self.ttl:
                entry = (self._clock(), await list_namespace(namespace))
                self._listed[namespace] = entry
                self._prune()
        return [e for e in entry[1] if (e.get("involvedObject") or {}).get("uid") == job_uid]

    def _prune(self) -> None:
        """Drop listings past their ttl, so namespaces no longer listed do not keep their Events."""
        now = self._clock()
        for namespace in [ns for ns, (at, _) in self._listed.items() if now - at >= self.ttl]:
            del self._listed[namespace]

"""A few seconds' memory of which keys the runs' Secrets hold, for the check before a Job is made.

Every new run names the same few Secrets (its namespace's storage credentials, a hub token), and
the check read each of them again: under a burst of 500 runs that was one API round trip in three
on the way from apply to Job, taken while the handler threads queued behind each other. A Secret
that holds the keys is remembered for ``ttl`` seconds, so a burst reads it once per namespace and
interval. A missing Secret or key is never remembered: the run waits for it, and must start as
soon as the Secret is created. A Secret deleted meanwhile is noticed ``ttl`` seconds late at most,
and its pods would fail to start in any case.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: How long a Secret found with its keys is trusted without reading it again.
SECRET_TTL_SECONDS = 5.0


class SecretKeyCache:
    """(namespace, name) -> the Secret's keys, read at most once per ``ttl`` while it exists.
    Shared by kopf's handler threads, hence the lock."""

    def __init__(self, ttl: float = SECRET_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._found: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}

    def keys(self, namespace: str, name: str, read: Callable[[str, str], set[str] | None]) -> set[str] | None:
        """The Secret's keys (None when it does not exist), from memory when read recently."""
        now = self._clock()
        with self._lock:
            entry = self._found.get((namespace, name))
        if entry is not None and now - entry[0] < self.ttl:
            return set(entry[1])
        have = read(namespace, name)
        with self._lock:
            if have:
                self._found[(namespace, name)] = (now, frozenset(have))
            else:
                self._found.pop((namespace, name), None)
            self._prune(now)
        return have

    def _prune(self, now: float) -> None:
        """Drop expired entries (called with the lock held), so Secrets of namespaces no longer in
        use do not stay in memory."""
        for key in [k for k, (at, _) in self._found.items() if now - at >= self.ttl]:
            del self._found[key]

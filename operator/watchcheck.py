"""Is the operator still watching? Compare what a fresh LIST says with what the watches delivered.

A watch stream can stop delivering without an error (the failure kopf users know best). Every
check lists the runs and compares each one's resourceVersion with the last one the watch handed
to the operator. An object that stays ahead of the watch for longer than ``stale_after`` means the
watch is dead, and the liveness probe then fails so Kubernetes restarts the operator.
"""

from __future__ import annotations


class WatchLagTracker:
    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self._behind_since: dict[str, float] = {}

    def update(self, listed: dict[str, str], seen: dict[str, str], now: float) -> bool:
        """``listed``/``seen``: uid -> resourceVersion. Returns True while the watches keep up."""
        for uid, version in listed.items():
            if seen.get(uid) == version:
                self._behind_since.pop(uid, None)
            else:
                self._behind_since.setdefault(uid, now)
        for uid in list(self._behind_since):
            if uid not in listed:
                del self._behind_since[uid]
        return not any(now - since > self.stale_after for since in self._behind_since.values())

    def lagging(self) -> list[str]:
        return sorted(self._behind_since)

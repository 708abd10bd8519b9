"""kopf handlers for both run kinds: the same thin registrations for each, handing off to the shared
bodies in :mod:`._common`.

Handler ids stay ``<kind>_<step>`` (``augmentationrun_reconcile``, ``finetunerun_monitor``, ...): kopf
keys its per-object progress annotations by them, so runs created by an earlier operator version
are picked up where they were.
"""

from __future__ import annotations

from typing import Any

import kopf

from sampleforge.api import GROUP, VERSION, Kind
from sampleforge.api.constants import PLURALS
from sampleforge.operator.handlers import _common
from sampleforge.operator.handlers._common import MONITOR_EXIT_SECONDS


def register(kind: Kind) -> None:
    """Register the reconcile, monitor, event and delete handlers of ``kind``."""
    plural, prefix = PLURALS[kind], str(kind).lower()

    @kopf.on.create(GROUP, VERSION, plural, id=f"{prefix}_reconcile")
    @kopf.on.resume(GROUP, VERSION, plural, id=f"{prefix}_reconcile")
    @kopf.on.update(GROUP, VERSION, plural, field="spec", id=f"{prefix}_reconcile")
    def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _common.reconcile_handler(kind, body, memo)

    @kopf.daemon(GROUP, VERSION, plural, id=f"{prefix}_monitor", cancellation_backoff=MONITOR_EXIT_SECONDS,
                 cancellation_timeout=5.0, when=_common.needs_monitor)
    async def monitor(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await _common.monitor_handler(kind, body, memo, stopped)

    # On the event loop, not in kopf's handler threads: it only updates in-memory maps, and kopf
    # processes a run's event (its finalizer patch, then reconcile) only after this has returned,
    # so under a burst every new run queued for a thread behind the reconciles waiting on the API.
    @kopf.on.event(GROUP, VERSION, plural, id=f"{prefix}_seen")
    async def seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
        _common.seen_handler(kind, dict(event), memo)

    @kopf.on.delete(GROUP, VERSION, plural, id=f"{prefix}_delete", optional=True)
    def delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        _common.delete_handler(kind, body, memo)


for _kind in Kind:
    register(_kind)

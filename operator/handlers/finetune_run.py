"""kopf handlers for finetuneruns: thin registrations that hand off to the shared bodies."""

from __future__ import annotations

from typing import Any

import kopf

from sampleforge.api import GROUP, VERSION, Kind
from sampleforge.operator.handlers import _common
from sampleforge.operator.handlers._common import MONITOR_EXIT_SECONDS

KIND = Kind.FINE_TUNE_RUN
PLURAL = "finetuneruns"


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def finetunerun_reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _common.reconcile_handler(KIND, body, memo)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_backoff=MONITOR_EXIT_SECONDS, cancellation_timeout=5.0,
             when=_common.needs_monitor)
async def finetunerun_monitor(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    await _common.monitor_handler(KIND, body, memo, stopped)


@kopf.on.event(GROUP, VERSION, PLURAL)
def finetunerun_seen(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    _common.seen_handler(KIND, dict(event), memo)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def finetunerun_delete(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _common.delete_handler(KIND, body, memo)

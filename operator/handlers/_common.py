"""The handler bodies both kinds share; the per-kind modules only register them."""

from __future__ import annotations

import time
from typing import Any

import kopf

from sampleforge.api import ConditionType, Kind, Phase, Reason
from sampleforge.api.constants import TERMINAL_PHASES
from sampleforge.api.status import RunStatus
from sampleforge.operator.conditions import find
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Transient
from sampleforge.operator.metrics import FAILED_RUN_WINDOW_SECONDS
from sampleforge.operator.monitor import monitor_run
from sampleforge.operator.progress import run_key
from sampleforge.operator.reconcile import reconcile
from sampleforge.operator.status import current_status, publish_phase_counts

#: How long kopf lets a run's monitor finish on its own once the run stops matching the daemon's
#: filter (it reached a terminal phase) before cancelling it: the monitor's last iteration, which
#: wrote that phase, still records the run's final metrics.
MONITOR_EXIT_SECONDS = 10.0


def needs_monitor(status: kopf.Status, **_: Any) -> bool:
    """A run has a monitor, the writer of its status, until it has finished."""
    return status.get("phase") not in TERMINAL_PHASES


def ctx_of(memo: kopf.Memo) -> OperatorContext:
    ctx = memo["ctx"]
    assert isinstance(ctx, OperatorContext)
    return ctx


def reconcile_handler(kind: Kind, body: kopf.Body, memo: kopf.Memo) -> None:
    ctx = ctx_of(memo)
    started = time.perf_counter()
    try:
        reconcile(ctx, kind, dict(body))
    except Transient as err:
        ctx.metrics.reconcile_errors.labels(kind=kind, reason="Transient").inc()
        raise kopf.TemporaryError(str(err), delay=5) from err
    except kopf.TemporaryError:
        raise
    except kopf.PermanentError:
        ctx.metrics.reconcile_errors.labels(kind=kind, reason="Permanent").inc()
        raise
    except Exception as err:
        ctx.metrics.reconcile_errors.labels(kind=kind, reason=type(err).__name__).inc()
        raise
    finally:
        ctx.metrics.reconcile_duration.labels(kind=kind).observe(time.perf_counter() - started)


async def monitor_handler(kind: Kind, body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped) -> None:
    await monitor_run(ctx_of(memo), kind, body, stopped)


def seen_handler(kind: Kind, event: dict[str, Any], memo: kopf.Memo) -> None:
    """Every event of a run: what the watch has seen (for the liveness check) and its phase."""
    ctx = ctx_of(memo)
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    drop_managed_fields(meta)
    uid: str = meta.get("uid") or ""
    key = (str(kind), meta.get("namespace", ""), meta.get("name", ""))
    if event.get("type") == "DELETED":
        ctx.watch_seen.pop(uid, None)
        ctx.phases.pop(key, None)
        # Gone for good: a finished run has no finalizer (its monitor has ended), so the delete
        # handler never runs for it; its per-run series and in-memory state go here.
        _forget(ctx, kind, meta)
    else:
        ctx.watch_seen[uid] = meta.get("resourceVersion", "")
        status = obj.get("status") or {}
        phase = status.get("phase")
        if phase:
            ctx.phases[key] = phase
        if phase == Phase.FAILED:
            _remember_failure(ctx, kind, meta, current_status(kind, obj))
    publish_phase_counts(ctx)


def drop_managed_fields(meta: dict[str, Any]) -> None:
    """Remove ``managedFields`` from a run's metadata as the watch delivered it, in place.

    kopf keeps the latest body of every run with a monitor, and that body is the very dict the
    watch delivered (this handler sees each event first). Those bodies were the largest holder in an
    allocation trace of 800 idle runs (20 of 64 MiB), and their managedFields (one entry per writer:
    the client that applied the run, kopf's annotations and finalizer, the status writes, each with
    a copy of every field it set) a large part of each; neither kopf nor the operator reads them."""
    if isinstance(meta, dict):
        meta.pop("managedFields", None)


def _remember_failure(ctx: OperatorContext, kind: Kind, meta: Any, status: RunStatus) -> None:
    """A failed run seen by this replica (after a restart or a change of leader) keeps its per-run
    failure series, so its alert does not resolve just because another process is leading now."""
    if status.completion_time is None:
        return
    at = status.completion_time.timestamp()
    if time.time() - at > FAILED_RUN_WINDOW_SECONDS:
        return
    ready = find(status.conditions, ConditionType.READY)
    reason = ready.reason if ready else str(Reason.FAILED)
    ctx.metrics.record_failure(str(kind), meta.get("namespace", ""), meta.get("name", ""), reason, at=at)


def delete_handler(kind: Kind, body: kopf.Body, memo: kopf.Memo) -> None:
    """The Job and its Pods go with the run by owner reference; here only in-memory state goes."""
    _forget(ctx_of(memo), kind, body["metadata"])


def _forget(ctx: OperatorContext, kind: Kind, meta: Any) -> None:
    ctx.metrics.forget_run(str(kind), meta["namespace"], meta["name"])
    ctx.progress.forget(run_key(kind, meta["namespace"], meta["name"]))
    ctx.children.forget(meta["uid"])

"""Watches of the Jobs and Pods the operator manages, feeding the per-run child index.

Only objects carrying the operator's managed-by label are watched, so the operator never sees (or
needs permissions for more than listing) other workloads' churn beyond that selector.
"""

from __future__ import annotations

from typing import Any

import kopf

from sampleforge.api.constants import LABEL_MANAGED_BY, MANAGED_BY_VALUE
from sampleforge.operator.handlers._common import ctx_of

_MANAGED = {LABEL_MANAGED_BY: MANAGED_BY_VALUE}


@kopf.on.event("batch", "v1", "jobs", labels=_MANAGED)
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    ctx_of(memo).children.on_job_event(str(event.get("type")), dict(event.get("object") or {}))


@kopf.on.event("", "v1", "pods", labels=_MANAGED)
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    ctx_of(memo).children.on_pod_event(str(event.get("type")), dict(event.get("object") or {}))

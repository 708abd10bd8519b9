"""Which spec fields changed since the Job was made, so that a change nobody applies is said.

A Job's pod template is immutable and a run's work is fixed when its Job starts: editing a running
run's resources, filters or parallelism changes nothing the pods do. GitOps tools read
``status.observedGeneration`` as "the operator has acted on this spec", so advancing it silently
would claim what did not happen. The Job therefore carries a short digest of each top-level spec
field it was rendered from; comparing them with today's spec names exactly the fields that were
ignored (a ``SpecChangeIgnored`` condition), while the fields applied live (``suspend``) are left
out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from sampleforge.api.constants import ANNOTATION_PREFIX

#: Annotation on the Job: {top-level spec field: digest} of the spec it was rendered from.
ANNOTATION_APPLIED_SPEC: Final = f"{ANNOTATION_PREFIX}/applied-spec"
#: Spec fields the operator applies to a live Job (spec.suspend: the Job's suspend flag).
LIVE_FIELDS: Final = frozenset({"suspend"})


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def field_digests(spec: Mapping[str, Any]) -> dict[str, str]:
    return {key: _digest(value) for key, value in sorted(spec.items()) if key not in LIVE_FIELDS}


def applied_spec_annotation(spec: Mapping[str, Any]) -> str:
    """The annotation's value for a Job rendered from ``spec``."""
    return json.dumps(field_digests(spec), sort_keys=True, separators=(",", ":"))


def ignored_fields(job: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> list[str]:
    """Top-level spec fields (``spec.x``) that differ from what ``job`` was rendered from.

    A Job without the annotation (made by an older operator) reports nothing: unknown is not
    changed."""
    annotations = ((job or {}).get("metadata") or {}).get("annotations") or {}
    raw = annotations.get(ANNOTATION_APPLIED_SPEC)
    if not raw:
        return []
    try:
        applied = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(applied, dict):
        return []
    now = field_digests(spec)
    return [f"spec.{key}" for key in sorted(set(applied) | set(now)) if applied.get(key) != now.get(key)]

"""kopf's record of the last handled state, kept as digests so it never carries a copy of the spec.

kopf decides whether a change is new by comparing an object's "essence" (spec, labels, annotations)
with the one it stored after the last successful handling, by default in full in an annotation.
That copy doubles the spec inside the object's metadata: a spec that is large but valid pushes the
annotations past the API server's 256 KiB limit, every patch kopf then makes (status, finalizer) is
refused with 422, and deleting the run hangs on its finalizer. Users' own annotations would be copied
the same way.

The handlers only need to know *that* the spec changed (``on.update(field="spec")``), never how, so
each top-level stanza of the essence is replaced by its SHA-256: a changed spec still differs at
``spec``, and the stored record stays a few hundred bytes whatever the spec's size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

import kopf

#: The one key of a digested stanza.
DIGEST_KEY: Final = "sha256"


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def digested(essence: Mapping[str, Any]) -> dict[str, Any]:
    """``essence`` with every top-level stanza replaced by ``{"sha256": <its digest>}``; stanzas that
    are digests already (read back from the annotation) are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in essence.items():
        if isinstance(value, Mapping) and set(value) == {DIGEST_KEY}:
            out[key] = dict(value)
        else:
            out[key] = {DIGEST_KEY: _digest(value)}
    return out


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """:class:`kopf.AnnotationsDiffBaseStorage` that stores (and compares) digests of the essence."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return cast(kopf.BodyEssence, digested(super().build(body=body, extra_fields=extra_fields)))

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        # A full essence stored by an earlier operator version is digested too, so that upgrading
        # is not mistaken for a change of every run's spec.
        stored = super().fetch(body=body)
        return None if stored is None else cast(kopf.BodyEssence, digested(stored))

"""Which MinIO buckets and prefixes each namespace's runs may read and write.

A run's pods reach MinIO with the credentials its own namespace's Secret holds, so isolation
between teams rests first on MinIO's policies for those credentials. Platforms that share one set
of credentials (or want a second line) can give the operator an allow-list per namespace (the
chart's ``storage.allowedPrefixes``): a run naming any ``s3://`` URI outside its namespace's
prefixes is refused before it gets a Job, so its pods never see such a URI. URIs are compared
after the API server has refused ``.``/``..`` segments, so a prefix cannot be escaped by an alias.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: The allow-list key that applies to every namespace without an entry of its own.
ANY_NAMESPACE = "*"


def parse(raw: str) -> dict[str, tuple[str, ...]]:
    """``{"namespace": ["s3://bucket/prefix/", ...], "*": [...]}`` from the operator's setting."""
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError as err:
        raise ValueError(f"SAMPLEFORGE_OPERATOR_STORAGE_ALLOW_LIST is not JSON: {err}") from err
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(p, str) and p.startswith("s3://") for p in v)
            for k, v in value.items()):
        raise ValueError('SAMPLEFORGE_OPERATOR_STORAGE_ALLOW_LIST must map namespaces (or "*") to lists of s3:// '
                         "prefixes")
    return {k: tuple(v) for k, v in value.items()}


def uris_in(spec: Any, path: str = "spec") -> Iterator[tuple[str, str]]:
    """Every ``s3://`` string in a (camelCase) spec, with the field path that holds it."""
    if isinstance(spec, Mapping):
        for key, value in spec.items():
            yield from uris_in(value, f"{path}.{key}")
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            yield from uris_in(value, f"{path}[{i}]")
    elif isinstance(spec, str) and spec.startswith("s3://"):
        yield path, spec


def _within(uri: str, prefix: str) -> bool:
    """``uri`` under ``prefix``, a bucket boundary or a ``/`` boundary being required: s3://data
    allows s3://data/x but not s3://database/."""
    if uri == prefix or prefix.endswith("/"):
        return uri.startswith(prefix)
    return uri.startswith(prefix + "/") or uri == prefix


def refused(allow: Mapping[str, Sequence[str]], namespace: str,
            uris: Iterator[tuple[str, str]] | list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (field, uri) pairs a namespace may not use; none when no allow-list is configured."""
    if not allow:
        return []
    prefixes = allow.get(namespace, allow.get(ANY_NAMESPACE, ()))
    return [(field, uri) for field, uri in uris if not any(_within(uri, p) for p in prefixes)]


def describe(allow: Mapping[str, Sequence[str]], namespace: str, bad: list[tuple[str, str]]) -> str:
    """The user-facing message: which field, which URI, and what the namespace may use."""
    prefixes = allow.get(namespace, allow.get(ANY_NAMESPACE, ()))
    where = ", ".join(f"{field} {uri}" for field, uri in bad)
    may = ", ".join(prefixes) if prefixes else "nothing (no entry for it and no \"*\" entry)"
    return (f"{where}: outside the storage prefixes namespace {namespace} may use ({may}); use a URI under one of "
            "them, or ask the platform team to extend the operator's storage.allowedPrefixes")

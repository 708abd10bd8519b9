"""Reusable constrained value types: URIs, names, quantities, metrics.

Two kinds of checks live here, on purpose:

* standard Kubernetes formats (object names, label values, Secret keys) use an OpenAPI ``pattern``:
  users already know the API server's wording for those;
* this project's own formats (s3:// URIs, model references, metric names, MinIO endpoints) use a
  :class:`~sampleforge.api._base.Rule` instead, so the error says what a valid value looks like
  rather than quoting a regular expression.

Every string and list is bounded: the API server estimates the cost of each CEL rule from these
bounds and refuses CRDs whose rules could be too expensive.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from typing import Annotated, Literal, TypeVar

from pydantic import AfterValidator, Field

from ._base import Rule, regex_check

# --- s3:// URIs -------------------------------------------------------------------------------

#: An s3:// URI: a valid bucket name (3-63 lowercase letters, digits, dots, hyphens) and a key.
S3_URI_PATTERN = "^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.*"
MAX_URI_LENGTH = 1024

_S3_RULE = Rule(
    cel=f"self.matches('{S3_URI_PATTERN}')",
    message="must be an s3:// URI such as s3://bucket/path/to/data.parquet "
    "(bucket: 3-63 lowercase letters, digits, dots or hyphens)",
    check=regex_check(S3_URI_PATTERN),
)
_PREFIX_RULE = Rule(
    cel="self.endsWith('/')",
    message="must end with '/': it names a folder (prefix) the run writes under, e.g. s3://bucket/path/",
    check=lambda v: isinstance(v, str) and v.endswith("/"),
)


_DOT_SEGMENT = re.compile(r"/[.][.]?(/|\Z)")  # the CEL rule below, with RE2's '$' spelt as Python's '\Z'


def _has_dot_segment(value: str) -> bool:
    return _DOT_SEGMENT.search(value) is not None


#: '.' and '..' mean nothing to S3: keys are literal strings, so ``s3://b/x/../y`` is neither
#: ``s3://b/y`` nor anything a user meant, MinIO refuses such names, and such an alias defeats the
#: overlap checks between inputs and outputs. The CEL regex finds a segment made only of one or two
#: dots ('/...' or '/.hidden' are ordinary names); the bucket cannot start with a dot, so only key
#: segments can match.
_NO_DOT_SEGMENTS_RULE = Rule(
    cel="!self.matches('/[.][.]?(/|$)')",
    message="must not contain '.' or '..' path segments: S3 keys are literal, so s3://bucket/a/../b is not "
    "s3://bucket/b; write the path without them",
    check=lambda v: isinstance(v, str) and not _has_dot_segment(v),
)

#: An object or a prefix in MinIO.
S3Uri = Annotated[str, Field(min_length=1, max_length=MAX_URI_LENGTH), _S3_RULE, _NO_DOT_SEGMENTS_RULE]
#: A prefix in MinIO that a run writes under; always ends with '/'.
S3Prefix = Annotated[
    str, Field(min_length=1, max_length=MAX_URI_LENGTH), _S3_RULE, _NO_DOT_SEGMENTS_RULE, _PREFIX_RULE
]


def normalized_s3_uri(uri: str) -> str:
    """``uri`` with '.' and '..' key segments resolved ('..' stops at the bucket), as a reader that
    resolved them would see it. The schema refuses such segments; normalising anyway keeps the
    overlap checks sound for values that never went through the schema."""
    head, sep, key = uri.partition("://")
    if not sep:
        return uri
    bucket, slash, path = key.partition("/")
    if not slash:
        return uri
    parts: list[str] = []
    segments = path.split("/")
    for segment in segments:
        if segment == "..":
            if parts:
                parts.pop()
        elif segment != ".":
            parts.append(segment)
    if segments[-1] in (".", "..") and (not parts or parts[-1] != ""):
        parts.append("")  # "a/.." names the folder a's parent: a prefix, so keep the trailing '/'
    return f"{head}://{bucket}/{'/'.join(parts)}"


def _as_prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def s3_locations_overlap(a: str, b: str) -> bool:
    """Whether one location lies under the other (or they are the same), each an object or a
    prefix ending in '/': an object ``x/f`` is compared as ``x/f/``, so ``x/f2/`` is not under it
    but ``x/`` holds it. Dot segments are resolved first (see :func:`normalized_s3_uri`)."""
    pa, pb = _as_prefix(normalized_s3_uri(a)), _as_prefix(normalized_s3_uri(b))
    return pa.startswith(pb) or pb.startswith(pa)


def s3_overlap_cel(a: str, b: str) -> str:
    """CEL for :func:`s3_locations_overlap` of the fields at ``a`` and ``b`` (CEL paths such as
    ``self.source.uri``). No normalisation: the schema already refuses dot segments."""

    def prefix(path: str) -> str:
        return f"({path}.endsWith('/') ? {path} : {path} + '/')"

    return f"({prefix(a)}.startsWith({prefix(b)}) || {prefix(b)}.startsWith({prefix(a)}))"

# --- models -----------------------------------------------------------------------------------

MODEL_REF_PATTERN = (
    "^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?)$"
)
#: A model: a hub id (``org/name`` or ``name``) or the s3:// URI of a model directory in MinIO.
ModelRef = Annotated[
    str,
    Field(min_length=1, max_length=MAX_URI_LENGTH),
    Rule(
        cel=f"self.matches('{MODEL_REF_PATTERN}')",
        message="must be a model hub id such as org/name, or the s3:// URI of a model directory "
        "such as s3://models/bert-base/",
        check=regex_check(MODEL_REF_PATTERN),
    ),
    _NO_DOT_SEGMENTS_RULE,
]

# --- metrics ----------------------------------------------------------------------------------

METRIC_PATTERN = (
    "^((ndcg|mrr|map)(@[1-9][0-9]{0,3})?|(recall|precision|hitRate)@[1-9][0-9]{0,3}"
    "|auc|accuracy|f1|macroF1|logLoss|mse|rmse|mae|pearson|spearman|loss)$"
)
#: Metrics where smaller is better; early stopping minimises these unless told otherwise.
LOWER_IS_BETTER = frozenset({"logLoss", "mse", "rmse", "mae", "loss"})
#: An evaluation metric name, e.g. ``ndcg@10``.
Metric = Annotated[
    str,
    Field(min_length=1, max_length=32),
    Rule(
        cel=f"self.matches('{METRIC_PATTERN}')",
        message="unknown metric; use ndcg@K, mrr, map, recall@K, precision@K, hitRate@K (K = 1..9999), "
        "auc, accuracy, f1, macroF1, logLoss, mse, rmse, mae, pearson, spearman or loss",
        check=regex_check(METRIC_PATTERN),
    ),
]

# --- Kubernetes names and values --------------------------------------------------------------

#: A Kubernetes object name (DNS-1123 subdomain): Secrets, ServiceAccounts, PriorityClasses, runs.
DNS_SUBDOMAIN_PATTERN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]

#: A label value (at most 63 characters, alphanumerics with ``-_.`` inside).
LABEL_VALUE_PATTERN = "^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE_PATTERN)]

#: A label or node-selector key (optional DNS prefix, then a name of at most 63 characters).
LABEL_KEY_PATTERN = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LabelKey = Annotated[str, Field(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN)]

#: A key inside a Secret's data.
SECRET_KEY_PATTERN = "^[-._a-zA-Z0-9]+$"
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=SECRET_KEY_PATTERN)]

#: A container image reference (no whitespace).
Image = Annotated[str, Field(min_length=1, max_length=512, pattern="^[^\\s]+$")]

#: A resource quantity such as ``8``, ``500m``, ``32Gi`` (non-negative, no exponent forms).
QUANTITY_PATTERN = "^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=32, pattern=QUANTITY_PATTERN)]

#: MinIO endpoint: ``host`` or ``host:port``, no scheme.
ENDPOINT_PATTERN = "^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$"
Endpoint = Annotated[
    str,
    Field(min_length=1, max_length=260),
    Rule(
        cel=f"self.matches('{ENDPOINT_PATTERN}')",
        message="must be host or host:port without a scheme, e.g. minio.data:9000; set secure: true for https",
        check=regex_check(ENDPOINT_PATTERN),
    ),
]

# --- data columns and labels ------------------------------------------------------------------

#: The name of a column in the dataset.
ColumnName = Annotated[str, Field(min_length=1, max_length=128)]

#: A label value in the data: an integer class/grade or a string class name.
DataLabel = Annotated[int, Field()] | Annotated[str, Field(min_length=1, max_length=64)]

T = TypeVar("T", bound=Hashable)


def _no_duplicates(what: str) -> Callable[[list[T]], list[T]]:
    def check(values: list[T]) -> list[T]:
        seen: set[T] = set()
        dupes = [v for v in values if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
        if dupes:
            raise ValueError(f"{what} lists {dupes[0]!r} twice; list each value once")
        return values

    return check


ColumnNames = Annotated[
    list[ColumnName],
    Field(max_length=64, json_schema_extra={"x-kubernetes-list-type": "set"}),
    AfterValidator(_no_duplicates("the column list")),
]
DenseFeatureNames = Annotated[
    list[ColumnName],
    Field(max_length=512, json_schema_extra={"x-kubernetes-list-type": "set"}),
    AfterValidator(_no_duplicates("the dense feature list")),
]
Metrics = Annotated[
    list[Metric],
    Field(max_length=16, json_schema_extra={"x-kubernetes-list-type": "set"}),
    AfterValidator(_no_duplicates("metrics")),
]
TextField = Literal["query", "item"]
TextFields = Annotated[
    list[TextField],
    Field(min_length=1, max_length=2, json_schema_extra={"x-kubernetes-list-type": "set"}),
    AfterValidator(_no_duplicates("fields")),
]


def unique_names(names: Sequence[str]) -> str | None:
    """The first name that occurs twice, or None."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None

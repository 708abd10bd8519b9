"""Cleaning source records into :class:`~.rows.RowBatch` es, as ``spec.preprocess`` declares.

The same code runs in the first pass over the whole source (:mod:`.knowledge`) and in each shard's
pass, so the statistics, pools and hashes learnt in the first pass describe exactly the rows the
augmenters later see.

* Texts (query, item, attributes): Unicode NFKC (full-width letters and digits, compatibility forms)
  and whitespace collapsing, each when enabled, then PII redaction when ``spec.filters.piiRedaction``
  is on. A row whose query or item is empty is set aside (``dropEmpty``) with the reason.
* Labels: a row without a label is set aside: every augmenter and the fine-tune job need one. The
  label type of the output (integer, float or string) is decided once over the whole source.
* Dense features: a missing or non-finite value sets the row aside (imputing would invent data the
  fine-tune job could not tell from real). Outlier clipping and normalisation apply the statistics
  fitted in the first pass (:class:`DenseStats`), which are written beside the output as JSON so
  training and serving can apply the same transform.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sampleforge.api.augmentation import Preprocess

from .pii import PiiRedactor
from .rows import ColumnRoles, RowBatch
from .source import RawBatch

__all__ = ["Cleaner", "DenseStats", "FeatureStats", "Reject", "clean_text", "fit_dense_stats"]


@dataclass(frozen=True)
class Reject:
    """A record set aside, with the reason; written to the shard's rejects file."""

    position: int
    source: str
    reason: str
    record: Any


def clean_text(value: Any, nfkc: bool = True, whitespace: bool = True) -> str:
    """``value`` as cleaned text ("" for None / NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = value if isinstance(value, str) else str(value)
    if nfkc and not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    if whitespace:
        text = " ".join(text.split())
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


# --- dense feature statistics -------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureStats:
    """Fitted statistics of one dense feature and the transform they define: clip to
    ``[clip_low, clip_high]``, then ``(x - center) / scale``."""

    name: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    clip_low: float
    clip_high: float
    center: float
    scale: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "mean": self.mean, "std": self.std, "min": self.min,
                "max": self.max, "clipLow": self.clip_low, "clipHigh": self.clip_high, "center": self.center,
                "scale": self.scale}


@dataclass(frozen=True)
class DenseStats:
    """Statistics of every dense feature, fitted on the whole source (the same in every shard)."""

    clip: dict[str, Any] | None
    normalization: str
    features: tuple[FeatureStats, ...]
    sample_rows: int

    def transform(self, values: NDArray[np.float64]) -> NDArray[np.float64]:
        """Rows x features, clipped and normalised."""
        low = np.array([f.clip_low for f in self.features])
        high = np.array([f.clip_high for f in self.features])
        center = np.array([f.center for f in self.features])
        scale = np.array([f.scale for f in self.features])
        out: NDArray[np.float64] = (np.clip(values, low, high) - center) / scale
        return out

    @property
    def is_identity(self) -> bool:
        return self.clip is None and self.normalization == "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "clipOutliers": self.clip,
            "denseNormalization": self.normalization,
            "transform": "x' = (clip(x, clipLow, clipHigh) - center) / scale",
            "quantilesFrom": f"a uniform sample of {self.sample_rows} source rows"
            if self.clip and self.clip.get("method") == "quantile" else None,
            "features": [f.to_json() for f in self.features],
        }


def fit_dense_stats(names: Sequence[str], options: Preprocess, count: int, total: NDArray[np.float64],
                    total_sq: NDArray[np.float64], low: NDArray[np.float64], high: NDArray[np.float64],
                    sample: NDArray[np.float64]) -> DenseStats:
    """Statistics from exact running sums over every row and a uniform row ``sample`` (rows x features).

    Mean, standard deviation, minimum and maximum of the raw values are exact. Quantile clip bounds,
    and the mean and deviation *after* clipping (what ``standard`` normalisation needs when clipping
    is on), come from the sample: exact for sources up to the sample size, a close estimate beyond.
    """
    n = max(count, 1)
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean * mean, 0.0))
    clip = options.clip_outliers
    if clip is None:
        lo, hi = np.full(len(names), -np.inf), np.full(len(names), np.inf)
    elif clip.method == "zscore":
        lo, hi = mean - clip.z * std, mean + clip.z * std
    else:
        if sample.shape[0]:
            lo, hi = np.quantile(sample, clip.lower, axis=0), np.quantile(sample, clip.upper, axis=0)
        else:
            lo, hi = low.copy(), high.copy()
    clipped_min, clipped_max = np.maximum(low, lo), np.minimum(high, hi)
    if clip is not None and sample.shape[0]:
        clipped = np.clip(sample, lo, hi)
        c_mean, c_std = clipped.mean(axis=0), clipped.std(axis=0)
    else:
        c_mean, c_std = mean, std
    features = []
    for j, name in enumerate(names):
        if options.dense_normalization == "standard":
            center, scale = float(c_mean[j]), float(c_std[j])
        elif options.dense_normalization == "minmax":
            center, scale = float(clipped_min[j]), float(clipped_max[j] - clipped_min[j])
        else:
            center, scale = 0.0, 1.0
        if not math.isfinite(scale) or scale <= 0.0:
            scale = 1.0  # a constant feature: centre it, never divide by zero
        features.append(FeatureStats(
            name=name, count=count, mean=float(mean[j]), std=float(std[j]),
            min=float(low[j]) if count else 0.0, max=float(high[j]) if count else 0.0,
            clip_low=float(lo[j]), clip_high=float(hi[j]), center=center, scale=scale))
    return DenseStats(clip.model_dump(by_alias=True) if clip is not None else None, options.dense_normalization,
                      tuple(features), int(sample.shape[0]))


# --- records -> rows ----------------------------------------------------------------------------


def label_kind(kinds: set[type]) -> str:
    """``int``, ``float`` or ``string``: the narrowest type that holds labels of the Python ``kinds`` seen."""
    if kinds <= {int, bool}:
        return "int"
    if kinds <= {int, bool, float}:
        return "float"
    return "string"


@dataclass
class Cleaner:
    """Turns :class:`~.source.RawBatch` es into :class:`~.rows.RowBatch` es plus rejects."""

    roles: ColumnRoles
    options: Preprocess
    redact_pii: bool
    #: Output label type; None in the first pass, which keeps labels as read to decide it.
    label_kind: str | None = None
    dense: DenseStats | None = None

    def clean(self, raw: RawBatch, redactor: PiiRedactor | None = None) -> tuple[RowBatch, list[Reject]]:
        """Column by column (list comprehensions, not a function call per cell): this runs on every
        row twice, in the first pass and in the shard's pass."""
        roles, opts = self.roles, self.options
        nfkc, ws = opts.normalize_unicode, opts.normalize_whitespace
        redact = redactor.redact if (redactor is not None and self.redact_pii) else None
        cols = raw.columns
        n = raw.size
        rejects: list[Reject] = [Reject(m.position, m.source, m.reason, m.record) for m in raw.malformed]
        queries = _clean_column(cols[roles.query], nfkc, ws)
        items = _clean_column(cols[roles.item], nfkc, ws)
        labels = [self._label(v) for v in cols[roles.label]]
        dense_columns = [_numbers(cols[name]) for name in roles.dense]
        reasons: list[str | None] = [None] * n
        for k in range(n):
            if opts.drop_empty and not queries[k]:
                reasons[k] = f"empty query ({roles.query})"
            elif opts.drop_empty and not items[k]:
                reasons[k] = f"empty item ({roles.item})"
            elif labels[k] is None:
                reasons[k] = f"no label ({roles.label})"
        for name, (_, finite) in zip(roles.dense, dense_columns, strict=True):
            if not finite.all():
                for k in np.flatnonzero(~finite).tolist():
                    if reasons[k] is None:
                        reasons[k] = f"dense feature {name} is missing or not a finite number"
        keep = [k for k in range(n) if reasons[k] is None]
        if len(keep) < n:
            for k in range(n):
                if reasons[k] is not None:
                    rejects.append(Reject(raw.first_row + k, raw.source, reasons[k],  # type: ignore[arg-type]
                                          {c: _jsonable(v[k]) for c, v in cols.items()}))
            queries = [queries[k] for k in keep]
            items = [items[k] for k in keep]
            labels = [labels[k] for k in keep]
        if redact is not None:
            queries = [redact(t) for t in queries]
            items = [redact(t) for t in items]
        columns: dict[str, list[Any]] = {}
        if roles.id:
            columns[roles.id] = [None if v is None else str(v) for v in _pick(cols[roles.id], keep, n)]
        columns[roles.query] = queries
        columns[roles.item] = items
        columns[roles.label] = labels
        for name in roles.attributes:
            values = _clean_column(_pick(cols[name], keep, n), nfkc, ws)
            if redact is not None:
                values = [redact(t) if t else t for t in values]
            columns[name] = [t or None for t in values]
        if roles.dense:
            matrix = np.column_stack([values[keep] for values, _ in dense_columns]) if keep else \
                np.zeros((0, len(roles.dense)))
            if self.dense is not None and not self.dense.is_identity:
                matrix = self.dense.transform(matrix)
            for j, name in enumerate(roles.dense):
                columns[name] = matrix[:, j].tolist()
        if roles.image:
            columns[roles.image] = [None if v in (None, "") else str(v) for v in _pick(cols[roles.image], keep, n)]
        row_ids = np.arange(raw.first_row, raw.first_row + n, dtype=np.int64)
        if len(keep) < n:
            row_ids = row_ids[keep] if keep else np.zeros(0, dtype=np.int64)
        return RowBatch(roles, row_ids, columns), rejects

    def _label(self, value: Any) -> Any:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, str):
            value = clean_text(value, self.options.normalize_unicode, True)
            if not value:
                return None
        kind = self.label_kind
        if kind is None:
            return value
        if kind == "string":
            return value if isinstance(value, str) else str(value)
        if kind == "int":
            return int(value)
        return float(value)


def _clean_column(values: Sequence[Any], nfkc: bool, whitespace: bool) -> list[str]:
    """:func:`clean_text` of every value of a column."""
    texts = [v if v.__class__ is str else clean_text(v, False, False) for v in values]
    if nfkc:
        texts = [t if t.isascii() else unicodedata.normalize("NFKC", t) for t in texts]
    if whitespace:
        texts = [" ".join(t.split()) for t in texts]
    return texts


def _pick(values: list[Any], keep: list[int], n: int) -> list[Any]:
    return values if len(keep) == n else [values[k] for k in keep]


def _numbers(values: Sequence[Any]) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """A column as floats, and which of them are finite numbers (None, NaN, inf and text are not)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        parsed = [_number(v) for v in values]
        array = np.asarray([np.nan if v is None else v for v in parsed], dtype=np.float64)
    array = array.reshape(len(values))
    return array, np.isfinite(array)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return float(value) if isinstance(value, bool) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

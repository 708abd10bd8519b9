"""Attribute-aware augmenters: they use the structured columns (brand, colour, size, model number, ...).

An attribute value is *mentioned* in a text when it occurs there case-insensitively and not inside
a longer Latin word or number ("red" in "red shoes", not in "bored"; Chinese values match anywhere,
since Chinese has no spaces).

* ``attributeDrop`` (label kept): query relaxation and sparse catalogues. It picks up to
  ``maxAttributes`` of the row's non-empty attributes; a picked value that the query mentions is
  removed from the query (the shopper asks for less, and the item still satisfies it), any other
  picked attribute is blanked in its column (the catalogue lacks it; the item is unchanged).
* ``attributeReorder`` (label kept): the attribute values a text mentions trade places ("nike red
  running shoes" -> "red nike running shoes"); a text mentioning a single value gets it moved to the
  other end. Word order in a shopping query carries no meaning, so the label stays true.
* ``attributeSwap`` (label from the spec): a hard negative. Only an attribute the *query mentions*
  is swapped, because only then does the swap make the item wrong for the query: swapping the brand
  of an item found by "running shoes" would label a relevant pair irrelevant. The new value is drawn
  from the values the first pass saw for that attribute (whole source), different from the old one
  and not mentioned in the query; it replaces the old value in the attribute column and in the item
  text where the item mentions it. Only rows labelled above the spec's label are swapped (a hard
  negative demotes; swapping an irrelevant pair's attribute would promote it to the spec's label).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from sampleforge.api.augmenters import AttributeDropAugmenter, AttributeReorderAugmenter, AttributeSwapAugmenter

from .dedup import norm_key
from .errors import ConfigError
from .labels import LabelError
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch

__all__ = ["AttributeDrop", "AttributeReorder", "AttributeSwap", "find_mention", "remove_span"]

_ATTEMPTS = 4


@lru_cache(maxsize=65536)
def _pattern(value: str) -> re.Pattern[str]:
    escaped = r"\s+".join(re.escape(part) for part in value.split())
    return re.compile(rf"(?<![0-9A-Za-z]){escaped}(?![0-9A-Za-z])", re.IGNORECASE)


def find_mention(text: str, value: str | None) -> tuple[int, int] | None:
    """Where ``text`` mentions ``value`` (first occurrence), or None."""
    if not value or not text or not value.strip():
        return None
    match = _pattern(value.strip()).search(text)
    return (match.start(), match.end()) if match else None


def remove_span(text: str, span: tuple[int, int]) -> str:
    """``text`` without ``span``, with the whitespace and separators left around it tidied."""
    head, tail = text[: span[0]].rstrip(), text[span[1] :].lstrip()
    head = head.rstrip(",;/|-·、，")
    joined = f"{head} {tail}" if head and tail and not (_is_han(head[-1]) and _is_han(tail[0])) else head + tail
    return " ".join(joined.split())


def _is_han(ch: str) -> bool:
    return "\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff"


def _mentions(text: str, values: dict[str, str | None]) -> list[tuple[int, int, str]]:
    """Non-overlapping mentions (start, end, attribute) in text order; longer values win overlaps."""
    found = []
    for name, value in values.items():
        span = find_mention(text, value)
        if span is not None:
            found.append((span[0], span[1], name))
    found.sort(key=lambda m: (m[0], -(m[1] - m[0])))
    kept: list[tuple[int, int, str]] = []
    for m in found:
        if not kept or m[0] >= kept[-1][1]:
            kept.append(m)
    return kept


class _AttributeAugmenter:
    label_rule = "keep"

    def __init__(self, name: str, attributes: list[str], per_row: int) -> None:
        self.name = name
        self.attributes = attributes
        self.per_row = per_row

    def _values(self, batch: RowBatch, i: int) -> dict[str, str | None]:
        return {a: batch.columns[a][i] for a in self.attributes}

    def _variant(self, batch: RowBatch, i: int, rng: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        per_row = plan.per_row or self.per_row
        rows: list[GeneratedRow] = []
        for i in plan.selected_indices():
            rng = plan.random.generator(int(batch.row_ids[i]))
            seen: list[dict[str, Any]] = []
            for _ in range(_ATTEMPTS * per_row):
                changes = self._variant(batch, i, rng)
                if changes is None:
                    break
                if changes and changes not in seen:
                    seen.append(changes)
                    rows.append(GeneratedRow(int(batch.row_ids[i]), changes, self.label_rule, len(seen) - 1))
                    if len(seen) == per_row:
                        break
        return rows


class AttributeDrop(_AttributeAugmenter):
    def __init__(self, name: str, attributes: list[str], per_row: int, max_attributes: int) -> None:
        super().__init__(name, attributes, per_row)
        self.max_attributes = max_attributes

    def _variant(self, batch: RowBatch, i: int, rng: Any) -> dict[str, Any] | None:
        values = {a: v for a, v in self._values(batch, i).items() if v}
        if not values:
            return None
        names = sorted(values)
        count = int(rng.integers(1, min(self.max_attributes, len(names)) + 1))
        picked = sorted(rng.choice(len(names), size=count, replace=False).tolist())
        roles = batch.roles
        query = batch.queries[i]
        changes: dict[str, Any] = {}
        for j in picked:
            name = names[j]
            span = find_mention(query, values[name])
            relaxed = remove_span(query, span) if span is not None else ""
            if relaxed:
                query = relaxed
                changes[roles.query] = query
            else:
                changes[name] = None
        return changes


class AttributeReorder(_AttributeAugmenter):
    def _reordered(self, text: str, values: dict[str, str | None], rng: Any) -> str | None:
        mentions = _mentions(text, values)
        if not mentions:
            return None
        if len(mentions) == 1:
            start, end, _ = mentions[0]
            rest = remove_span(text, (start, end))
            if not rest:
                return None
            value = text[start:end]
            moved = f"{rest} {value}" if start < len(text) - end else f"{value} {rest}"
            return moved if moved != text else None
        pieces = [text[s:e] for s, e, _ in mentions]
        order = list(range(len(pieces)))
        for _ in range(_ATTEMPTS):
            rng.shuffle(order)
            if order != sorted(order):
                break
        else:
            order = order[1:] + order[:1]
        out, pos = [], 0
        for (s, e, _), j in zip(mentions, order, strict=True):
            out.append(text[pos:s])
            out.append(pieces[j])
            pos = e
        out.append(text[pos:])
        result = "".join(out)
        return result if result != text else None

    def _variant(self, batch: RowBatch, i: int, rng: Any) -> dict[str, Any] | None:
        values = self._values(batch, i)
        roles = batch.roles
        changes: dict[str, Any] = {}
        query = self._reordered(batch.queries[i], values, rng)
        if query is not None:
            changes[roles.query] = query
        item = self._reordered(batch.items[i], values, rng)
        if item is not None:
            changes[roles.item] = item
        return changes or None


class AttributeSwap(_AttributeAugmenter):
    label_rule = "assign"

    def __init__(self, name: str, attributes: list[str], per_row: int, label: Any,
                 pools: dict[str, list[str]]) -> None:
        super().__init__(name, attributes, per_row)
        self.label = label
        self.pools = pools
        self._pool_keys = {a: [norm_key(v) for v in values] for a, values in pools.items()}

    def _demotes(self, label: Any) -> bool:
        """Whether giving ``label``'s row the spec's label makes it less relevant, which is what a
        hard negative is. Swapping an attribute of an already irrelevant pair would *raise* it to the
        spec's label (with graded labels 0/1/2 and label 1, a 0 would become 1), so such rows are
        left alone; unordered (string) labels are only skipped when already equal."""
        if label is None:
            return False
        try:
            return float(label) > float(self.label)
        except (TypeError, ValueError):
            return str(label) != str(self.label)

    def _variant(self, batch: RowBatch, i: int, rng: Any) -> dict[str, Any] | None:
        if not self._demotes(batch.labels[i]):
            return None
        query = batch.queries[i]
        values = self._values(batch, i)
        eligible = [a for a in self.attributes
                    if values[a] and len(self.pools.get(a, ())) > 1 and find_mention(query, values[a]) is not None]
        if not eligible:
            return None
        name = eligible[int(rng.integers(len(eligible)))]
        old = values[name] or ""
        old_key = norm_key(old)
        pool, keys = self.pools[name], self._pool_keys[name]
        for _ in range(_ATTEMPTS):
            j = int(rng.integers(len(pool)))
            if keys[j] != old_key and find_mention(query, pool[j]) is None:
                new = pool[j]
                break
        else:
            return {}
        roles = batch.roles
        changes: dict[str, Any] = {name: new, roles.label: self.label}
        item = batch.items[i]
        span = find_mention(item, old)
        if span is not None:
            changes[roles.item] = item[: span[0]] + new + item[span[1] :]
        return changes


def _attributes(entry: Any, build: BuildContext) -> list[str]:
    names = list(getattr(entry, "attributes", []) or build.roles.attributes)
    unknown = [a for a in names if a not in build.roles.attributes]
    if unknown:
        raise ConfigError(f"{build.field_path}.attributes names {unknown}, which are not in "
                          "spec.source.columns.attributes; add them there or fix the names")
    return names


@register_row_augmenter(AttributeDropAugmenter)
def _build_drop(entry: AttributeDropAugmenter, build: BuildContext) -> AttributeDrop:
    return AttributeDrop(entry.display_name(), _attributes(entry, build), entry.per_row, entry.max_attributes)


@register_row_augmenter(AttributeReorderAugmenter)
def _build_reorder(entry: AttributeReorderAugmenter, build: BuildContext) -> AttributeReorder:
    return AttributeReorder(entry.display_name(), _attributes(entry, build), entry.per_row)


@register_row_augmenter(AttributeSwapAugmenter, needs=("attributeValues",))
def _build_swap(entry: AttributeSwapAugmenter, build: BuildContext) -> AttributeSwap:
    try:
        label = build.labels.coerce(entry.label, f"{build.field_path}.label")
    except LabelError as err:
        raise ConfigError(str(err)) from err
    names = _attributes(entry, build)
    return AttributeSwap(entry.display_name(), names, entry.per_row, label,
                         {a: build.knowledge.attribute_values.get(a, []) for a in names})

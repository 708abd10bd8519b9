"""Adapter: the text-edit augmenters of :mod:`sampleforge.jobs.augment.text` as row augmenters.

The text augmenters work on lists of strings and key their randomness by ``first_row + i``; this
adapter feeds them the query and/or item column of each run of consecutive row ids (see
:meth:`~.rows.RowBatch.contiguous_runs`), with unselected rows blanked so they get nothing, and
turns their variants into :class:`~.protocol.GeneratedRow` s. Decisions made here:

* **One seed per augmenter name and field.** The text augmenters salt their streams with their type
  name only; two ``typo`` augmenters with different names, or the query and the item of one row,
  would otherwise get identical edits. The seed given to them is derived from
  ``(spec.seed, augmenter name, field)``.
* **Both fields in one row.** With ``fields: [query, item]`` variant ``k`` of a row edits the query
  (its k-th query variant) and the item (its k-th item variant) together; a field with fewer variants
  stays as in the source.
* **Protected values.** The row's attribute values (brand, model number, size, ...) are passed as
  protected phrases, so an edit never changes what the item *is* and the label stays true.
* **Lexicon.** ``synonym`` uses the user's lexicon from MinIO merged with the built-in English and
  Chinese e-commerce lexicons; ``randomInsert`` the built-in ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

from sampleforge.api.augmenters import (
    CharNoiseAugmenter,
    RandomDeleteAugmenter,
    RandomInsertAugmenter,
    RandomSwapAugmenter,
    SynonymAugmenter,
    TypoAugmenter,
)
from sampleforge.jobs.augment.text import (
    LexiconError,
    TextAugmenterProtocol,
    create_augmenter,
    default_lexicon,
    parse_lexicon,
)
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import S3Uri

from .errors import ConfigError
from .protocol import BatchPlan, GeneratedRow
from .registry import BuildContext, register_row_augmenter
from .rows import RowBatch

__all__ = ["TEXT_EDIT_TYPES", "TextEditAugmenter", "build_text_augmenter", "text_options"]

#: Spec types served by the text-edit package: their classes, and (read off them) their ``type`` values.
TextEditSpec = (SynonymAugmenter | RandomInsertAugmenter | RandomSwapAugmenter | RandomDeleteAugmenter
                | TypoAugmenter | CharNoiseAugmenter)
TEXT_EDIT_TYPES: tuple[str, ...] = tuple(
    get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(TextEditSpec))


def text_options(entry: Any) -> dict[str, Any]:
    """The text package's options for a spec entry: wordFraction -> alpha, charFraction -> charAlpha."""
    if entry.type in ("typo", "charNoise"):
        return {"charAlpha": float(entry.char_fraction)}
    return {"alpha": float(entry.word_fraction)}


class TextEditAugmenter:
    """Runs one text augmenter over the query and/or item text of selected rows (label kept)."""

    label_rule = "keep"

    def __init__(self, name: str, text: TextAugmenterProtocol, fields: Sequence[str]) -> None:
        self.name = name
        self.text = text
        self.fields = tuple(fields)

    def variants(self, batch: RowBatch, plan: BatchPlan, field: str, per_row: int,
                 selected: Sequence[bool] | None = None) -> list[list[str]]:
        """Up to ``per_row`` variants of ``field`` for each batch row (none for unselected rows)."""
        roles = batch.roles
        column = roles.query if field == "query" else roles.item
        texts = batch.columns[column]
        mask = plan.selected if selected is None else selected
        out: list[list[str]] = [[] for _ in range(len(batch))]
        seed = plan.random.derived_seed(field)
        for start, stop in batch.contiguous_runs(None):
            if not any(mask[start:stop]):
                continue
            run = [texts[i] if mask[i] else "" for i in range(start, stop)]
            protected = None
            if roles.attributes:
                protected = [[v for v in (batch.columns[a][i] for a in roles.attributes) if v] if mask[i] else []
                             for i in range(start, stop)]
            result = self.text.augment(run, seed=seed, n_per_text=per_row, first_row=int(batch.row_ids[start]),
                                       row_protected=protected)
            out[start:stop] = result.variants
        return out

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        per_row = plan.per_row or 1
        none: list[list[str]] = [[]] * len(batch)
        queries = self.variants(batch, plan, "query", per_row) if "query" in self.fields else none
        items = self.variants(batch, plan, "item", per_row) if "item" in self.fields else none
        roles = batch.roles
        rows: list[GeneratedRow] = []
        for i in plan.selected_indices():
            query_variants, item_variants = queries[i], items[i]
            for k in range(max(len(query_variants), len(item_variants))):
                changes: dict[str, Any] = {}
                if k < len(query_variants):
                    changes[roles.query] = query_variants[k]
                if k < len(item_variants):
                    changes[roles.item] = item_variants[k]
                rows.append(GeneratedRow(int(batch.row_ids[i]), changes, "keep", k))
        return rows


def build_text_augmenter(entry: Any, build: BuildContext, name: str | None = None) -> TextEditAugmenter:
    """A :class:`TextEditAugmenter` for a text-edit spec entry (``name`` overrides its display name)."""
    lexicon = None
    if entry.type == "synonym" and entry.lexicon:  # unset: the shipped lexicons alone
        lexicon = _user_lexicon(entry.lexicon, build)
    try:
        text = create_augmenter(entry.type, text_options(entry), lexicon=lexicon)
    except ValueError as err:
        raise ConfigError(f"{build.field_path}: {err}") from err
    return TextEditAugmenter(name or entry.display_name(), text, entry.fields)


def _user_lexicon(uri: str, build: BuildContext) -> Any:
    if build.store is None:
        raise ConfigError(f"{build.field_path}.lexicon is {uri} but no MinIO connection is configured")
    try:
        data = build.store.read_bytes(S3Uri.parse(uri))
    except StorageError as err:
        raise ConfigError(f"{build.field_path}.lexicon: {err}") from err
    try:
        user = parse_lexicon(data.decode("utf-8"), source=uri)
    except (LexiconError, UnicodeDecodeError) as err:
        raise ConfigError(f"{build.field_path}.lexicon {uri} is not a valid lexicon: {err}") from err
    return default_lexicon().merged(user)


def _build(entry: TextEditSpec, build: BuildContext) -> TextEditAugmenter:
    return build_text_augmenter(entry, build)


register_row_augmenter(SynonymAugmenter)(_build)
register_row_augmenter(RandomInsertAugmenter)(_build)
register_row_augmenter(RandomSwapAugmenter)(_build)
register_row_augmenter(RandomDeleteAugmenter)(_build)
register_row_augmenter(TypoAugmenter)(_build)
register_row_augmenter(CharNoiseAugmenter)(_build)

"""One batch of a shard's pass, from cleaned source rows to rows written, and the shard's counts.

For every batch, :meth:`BatchProcessor.process` keeps the source rows that stay (undersampling and
the leakage guard may remove some), runs every augmenter on the rows its budget selects, checks each
generated row against the row-augmenter protocol and its budget, redacts it, runs the filter chain
(llmJudge verdicts included) over the generated rows in source-row order, and writes the source rows
followed by the generated rows that survive. :class:`ShardCounts` counts all of it for the shard's marker and heartbeats.

With ``dedup_keys`` and exact dedup in the chain, every written row goes to the writer with its
exact-dedup key (the generated rows' as :class:`~.filters.ExactDedup` computed it, source rows'
:data:`~.output.NEVER_DUPLICATE`), which the reduce step uses to remove the generated rows that
repeat across shards (:mod:`.crossdedup`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import AugmentError
from .filters import Candidate, ExactDedup, Filter
from .judge import JUDGE_LABEL_RULE, LlmJudge
from .knowledge import DatasetKnowledge
from .leakage import LeakageGuard
from .output import NEVER_DUPLICATE, PartWriter, length_bin, stored_keys
from .pii import PiiRedactor
from .protocol import BatchPlan, GeneratedRow, RowAugmenter, SourceRowSelector
from .randomness import RowRandomness
from .rows import ColumnRoles, RowBatch

__all__ = ["UNUSABLE", "BatchProcessor", "ShardCounts"]

EXAMPLES_PER_AUGMENTER = 3
#: The manifest's filter name for rows an augmenter could not make (GeneratedRow.unusable): a
#: missing image, a language model's answer that was empty or lost the source's brand.
UNUSABLE = "notGenerated"
#: The kinds of change a generated row can have, in the order Candidate.changed lists them.
_CHANGED_ORDER = ("query", "item", "dense", "image", "label")


@dataclass
class ShardCounts:
    """Everything a shard counts while it processes its batches."""

    rows_read: int = 0
    rows_in: int = 0
    generated_kept: int = 0
    labels_before: Counter[str] = field(default_factory=Counter)
    labels_after: Counter[str] = field(default_factory=Counter)
    filtered: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    produced: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, dict[str, Counter[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    source_removed: Counter[str] = field(default_factory=Counter)
    in_eval: int = 0
    #: Source rows the leakage guard dropped, per reason.
    source_in_eval: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    example_rows: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Rows per text-length bin: ("before" | "after", "query" | "item") -> bin -> rows.
    lengths: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def count_lengths(self, when: str, row: dict[str, Any], roles: ColumnRoles) -> None:
        self.lengths[when, "query"][length_bin(row[roles.query])] += 1
        self.lengths[when, "item"][length_bin(row[roles.item])] += 1

    def drop(self, augmenter: str, filter_name: str, reason: str) -> None:
        """A generated row of ``augmenter`` that ``filter_name`` dropped for ``reason``."""
        self.filtered[filter_name][reason] += 1
        self.dropped[augmenter][filter_name][reason] += 1

    def text_lengths(self) -> dict[str, dict[str, dict[str, int]]]:
        found: dict[str, dict[str, dict[str, int]]] = {}
        for (when, text), bins in self.lengths.items():
            found.setdefault(when, {})[text] = dict(bins)
        return found

    def augmenters(self, names: list[str]) -> dict[str, Any]:
        return {n: {"produced": self.produced[n], "kept": self.kept[n],
                    "dropped": {f: dict(r) for f, r in self.dropped[n].items()},
                    "sourceRowsRemoved": self.source_removed[n]} for n in names}


def column_fields(roles: ColumnRoles) -> dict[str, str]:
    """What each mapped column is (``query``, ``item``, ``label``, ``dense``, ``image``, ``id``), for
    deciding which texts a generated row changed."""
    fields = {roles.query: "query", roles.item: "item", roles.label: "label",
              **dict.fromkeys(roles.attributes, "item"), **dict.fromkeys(roles.dense, "dense")}
    if roles.image:
        fields[roles.image] = "image"
    if roles.id:
        fields[roles.id] = "id"
    return fields


@dataclass
class BatchProcessor:
    """What a shard's pass holds for all its batches: the augmenters (with their randomness), the
    first pass's knowledge, the filter chain, the redactor, the part writer and the counts."""

    roles: ColumnRoles
    knowledge: DatasetKnowledge
    augmenters: list[tuple[Any, RowAugmenter]]
    filters: Sequence[Filter | LlmJudge]
    redactor: PiiRedactor
    writer: PartWriter
    seed: int
    #: ``spec.filters.piiRedaction``: redact the texts an augmenter changed.
    redact: bool
    counts: ShardCounts = field(default_factory=ShardCounts)
    #: Hand the writer each row's exact-dedup key, for the reduce step's cross-shard dedup; ignored
    #: when the chain has no exact dedup (``filters.dedup.method: none``), which then does not apply.
    dedup_keys: bool = False
    randomness: dict[str, RowRandomness] = field(init=False)
    fields: dict[str, str] = field(init=False)
    _exact: ExactDedup | None = field(init=False)

    def __post_init__(self) -> None:
        self.randomness = {a.name: RowRandomness(self.seed, a.name) for _, a in self.augmenters}
        self.fields = column_fields(self.roles)
        exact = next((f for f in self.filters if isinstance(f, ExactDedup)), None)
        self._exact = exact if self.dedup_keys else None

    @property
    def names(self) -> list[str]:
        """The augmenters' names, in spec order."""
        return [a.name for _, a in self.augmenters]

    @property
    def judges(self) -> list[LlmJudge]:
        return [a for _, a in self.augmenters if isinstance(a, LlmJudge)]

    def process(self, batch: RowBatch) -> None:
        """Write the batch's source rows that stay, then its generated rows that survive the filters."""
        counts, roles, labels = self.counts, self.roles, self.knowledge.labels
        plans = {a.name: self._plan(batch, a.name) for _, a in self.augmenters}
        source_rows = [batch.row(i) for i in range(len(batch))]
        out = self._source_rows(batch, source_rows, plans)
        alive = self._filter(self._candidates(batch, source_rows, plans))
        written = self.writer.rows_added
        for c in alive:
            counts.kept[c.augmenter] += 1
            counts.labels_after[labels.key(c.row[roles.label])] += 1
            if len(counts.examples[c.augmenter]) < EXAMPLES_PER_AUGMENTER:
                counts.examples[c.augmenter].append(self._example(c))
                counts.example_rows[c.augmenter].append(written + len(out))
            out.append(c.row)
        counts.generated_kept += len(alive)
        for row in out:
            counts.count_lengths("after", row, roles)
        if self._exact is None:
            self.writer.add(out)
        else:
            self.writer.add(out, self._keys(len(out) - len(alive), alive, self._exact))

    def marker_counts(self, rejected: int, reject_reasons: Mapping[str, int]) -> dict[str, Any]:
        """The shard marker's ``counts`` (summed over the shards into the manifest), with the source
        records set aside while cleaning, ``rejected`` in all, by reason."""
        counts, judges = self.counts, self.judges
        return {
            "rowsRead": counts.rows_read, "rowsIn": counts.rows_in, "generatedKept": counts.generated_kept,
            "rejectedRows": rejected, "rejectReasons": dict(reject_reasons),
            "augmenters": counts.augmenters(self.names),
            "filtered": {f: dict(r) for f, r in counts.filtered.items()},
            "redactions": dict(self.redactor.counts),
            "labelsBefore": dict(counts.labels_before), "labelsAfter": dict(counts.labels_after),
            "textLengths": counts.text_lengths(),
            "sourceRowsInEvalSplit": counts.in_eval,
            "sourceRowsDropped": dict(counts.source_in_eval),
            **({"judges": {j.name: j.counts() for j in judges}} if judges else {}),
        }

    def examples(self) -> list[dict[str, Any]]:
        """A few kept rows of each augmenter beside their source rows, in spec order (for the report)."""
        return [e for n in self.names for e in self.counts.examples.get(n, [])]

    def example_rows(self) -> list[int]:
        """Where each of :meth:`examples` was written: its position among the rows this shard wrote,
        part after part. The reduce step leaves out an example whose row it removed as a duplicate."""
        return [r for n in self.names for r in self.counts.example_rows.get(n, [])]

    @staticmethod
    def _keys(sources: int, alive: Sequence[Candidate], exact: ExactDedup) -> NDArray[np.uint64]:
        """The keys of the rows written: ``sources`` source rows, then the generated rows ``alive``.
        The generated rows' keys are computed again rather than kept from the dedup filter: it sees
        rows a later filter (nearDedup) may still drop, and hashing is cheap next to generating."""
        keys = np.full(sources + len(alive), NEVER_DUPLICATE, dtype=np.uint64)
        keys[sources:] = stored_keys(np.fromiter((exact.key(c) for c in alive), dtype=np.uint64, count=len(alive)))
        return keys

    def _plan(self, batch: RowBatch, name: str) -> BatchPlan:
        random = self.randomness[name]
        budget = self.knowledge.selection[name]
        limit = min(budget.fraction, budget.threshold)
        selected = random.uniform(batch.row_ids, "select") < limit
        return BatchPlan(selected, budget.per_row, random)

    def _source_rows(self, batch: RowBatch, source_rows: list[dict[str, Any]],
                     plans: dict[str, BatchPlan]) -> list[dict[str, Any]]:
        """The source rows that stay, with their provenance: those no augmenter that selects source
        rows (undersampling) removes and the leakage guard does not drop."""
        counts, roles, labels = self.counts, self.roles, self.knowledge.labels
        keep = np.ones(len(batch), dtype=bool)
        for _, aug in self.augmenters:
            if isinstance(aug, SourceRowSelector):
                stays = aug.keep_source_rows(batch, plans[aug.name])
                counts.source_removed[aug.name] += int((keep & ~stays).sum())
                keep &= stays
        guard = next((f for f in self.filters if isinstance(f, LeakageGuard)), None)
        # The leakage guard judges source rows as it judges generated ones: a source row that
        # leaks the evaluation split is dropped (and, in the filter, every row generated from it).
        leaks = guard.check_sources(source_rows, batch.row_ids.tolist()) if guard is not None \
            else [None] * len(source_rows)
        out = []
        for i, row in enumerate(source_rows):
            counts.labels_before[labels.key(row[roles.label])] += 1
            counts.count_lengths("before", row, roles)
            if leaks[i] is not None:
                counts.in_eval += 1
                if keep[i]:
                    keep[i] = False
                    counts.source_in_eval[str(leaks[i])] += 1
            if keep[i]:
                out.append({**row, "sf_origin": "source", "sf_augmenter": None,
                            "sf_source_row": int(batch.row_ids[i]), "sf_label_rule": None})
                counts.labels_after[labels.key(row[roles.label])] += 1
        counts.rows_in += len(out)
        return out

    def _candidates(self, batch: RowBatch, source_rows: list[dict[str, Any]],
                    plans: dict[str, BatchPlan]) -> list[Candidate]:
        """Every augmenter's generated rows that are within its budget and change something."""
        position = {int(r): i for i, r in enumerate(batch.row_ids.tolist())}
        candidates: list[Candidate] = []
        order = {name: k for k, name in enumerate(self.names)}
        for _, aug in self.augmenters:
            plan = plans[aug.name]
            if not plan.selected.any():
                continue
            made: Counter[int] = Counter()
            for generated in aug.augment(batch, plan):
                candidate = self._candidate(aug, generated, plan, position, source_rows, made)
                if candidate is not None:
                    candidates.append(candidate)
        # In source-row order (then spec order, then the augmenter's own): the order rows meet the
        # filters and are written in is then the same however the rows were cut into batches and
        # shards, so "the first of a duplicate" (the one dedup keeps, in a shard and across shards
        # in the reduce step) is the same row for any shard count.
        candidates.sort(key=lambda c: (c.source_row, order[c.augmenter]))
        return candidates

    def _filter(self, candidates: list[Candidate]) -> list[Candidate]:
        """The candidates that pass every filter of the chain, in order."""
        alive = candidates
        for flt in self.filters:
            if not alive:
                break
            if isinstance(flt, LlmJudge):
                alive = self._judge(flt, alive)
                continue
            reasons = flt.check(alive)
            survivors = []
            for c, reason in zip(alive, reasons, strict=True):
                if reason is None:
                    survivors.append(c)
                else:
                    self.counts.drop(c.augmenter, flt.name, reason)
            alive = survivors
        return alive

    def _judge(self, judge: LlmJudge, alive: list[Candidate]) -> list[Candidate]:
        """Apply an llmJudge's verdicts: provenance on every row it graded, then keep, drop or relabel."""
        label = self.roles.label
        survivors = []
        for c, verdict in zip(alive, judge.review(alive), strict=True):
            if verdict is None:
                survivors.append(c)
                continue
            grade = judge.grade_value(verdict.grade) if verdict.grade is not None else None
            c.row["sf_judge_label"] = grade
            c.row["sf_judge_agrees"] = verdict.agrees
            if verdict.action == "drop":
                self.counts.drop(c.augmenter, judge.name, verdict.reason or "judge")
                continue
            if verdict.action == "relabel":
                c.row[label] = grade
                c.row["sf_label_rule"] = JUDGE_LABEL_RULE
                c.label_rule = JUDGE_LABEL_RULE
                changed = set(c.changed) | {"label"} if grade != c.source[label] else set(c.changed) - {"label"}
                c.changed = tuple(f for f in _CHANGED_ORDER if f in changed)
            survivors.append(c)
        return survivors

    def _candidate(self, aug: RowAugmenter, generated: GeneratedRow, plan: BatchPlan, position: dict[int, int],
                   source_rows: list[dict[str, Any]], made: Counter[int]) -> Candidate | None:
        """Check a generated row against the protocol and its budget; merge, redact, stamp it."""
        roles, fields, counts = self.roles, self.fields, self.counts
        i = position.get(generated.source_row)
        if i is None:
            raise AugmentError(f"augmenter {aug.name} returned a row for source row {generated.source_row}, which is "
                               "not in the batch it was given (a bug in the augmenter)")
        if generated.unusable is not None:
            # The augmenter could not work on this source row (e.g. its image is missing): count it
            # where the manifest shows drops, so broken inputs are visible, and write nothing.
            counts.drop(aug.name, UNUSABLE, generated.unusable)
            return None
        changes = generated.changes
        if not changes.keys() <= fields.keys():
            raise AugmentError(f"augmenter {aug.name} changed columns {sorted(set(changes) - set(fields))} that are "
                               "not mapped in spec.source.columns (a bug in the augmenter)")
        source = source_rows[i]
        made[i] += 1
        if not plan.selected[i] or (plan.per_row is not None and made[i] > plan.per_row):
            counts.drop(aug.name, "budget", "over the augmenter's budget")
            return None
        counts.produced[aug.name] += 1
        row = {**source, **changes}
        changed: set[str] = set()
        for column, value in changes.items():
            if value != source[column]:
                kind = fields[column]
                if kind == "label" and generated.label_rule == "keep":
                    raise AugmentError(f"augmenter {aug.name} changed the label of a row whose label rule is 'keep'")
                if self.redact and kind in ("query", "item") and isinstance(value, str):
                    row[column] = self.redactor.redact(value)
                changed.add(kind)
        if not changed:
            counts.drop(aug.name, "unchanged", "identical to its source row")
            return None
        if roles.id:
            source_id = source[roles.id]
            row[roles.id] = None if source_id is None else f"{source_id}~{aug.name}~{generated.variant}"
        row["sf_origin"] = "generated"
        row["sf_augmenter"] = aug.name
        row["sf_source_row"] = generated.source_row
        row["sf_label_rule"] = generated.label_rule
        return Candidate(row, source, aug.name, generated.label_rule, generated.source_row, generated.variant,
                         tuple(f for f in _CHANGED_ORDER if f in changed))

    def _example(self, c: Candidate) -> dict[str, Any]:
        roles = self.roles
        pick: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: {
            "query": r[roles.query], "item": r[roles.item], "label": r[roles.label],
            **({"attributes": {a: r[a] for a in roles.attributes}} if roles.attributes else {})}
        return {"augmenter": c.augmenter, "sourceRow": c.source_row, "source": pick(c.source),
                "generated": pick(c.row)}

"""One batch of a shard's pass (BatchProcessor): what it writes, in what order, and what it counts.
No servers: the augmenters and filters are the real ones, the part writer a list."""

from __future__ import annotations

from typing import Any

import numpy as np

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment.catalog import build_augmenters, needs_of
from sampleforge.jobs.augment.filters import build_filters
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.pii import PiiRedactor
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.shardbatch import BatchProcessor, column_fields
from sampleforge.jobs.augment.source import RawBatch

ROLES = ColumnRoles(query="q", item="t", label="y", id="id")


class Rows:
    """Stands in for the PartWriter: keeps the rows in the order they are written."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    @property
    def rows_added(self) -> int:
        return len(self.rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        self.rows += rows


def _spec(augmenters: list[dict[str, Any]]) -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.jsonl", "columns": {"query": "q", "item": "t", "label": "y", "id": "id"}},
        "augmenters": augmenters, "filters": {"dedup": {"method": "exact"}},
        "output": {"uri": "s3://data/out/"}, "seed": 5})


def _source(n: int) -> dict[str, list[Any]]:
    return {"id": [f"r{i}" for i in range(n)], "q": [f"red running shoes size {i % 7}" for i in range(n)],
            "t": [f"Acme trail runner model {i} in red mesh" for i in range(n)], "y": [i % 2 for i in range(n)]}


def _processor(spec: AugmentationRunSpec, n: int) -> tuple[BatchProcessor, Rows, RowBatch, DatasetKnowledge]:
    columns = _source(n)
    knowledge = learn(iter([RawBatch(0, columns, n)]), [n], ROLES, spec, needs_of(spec))
    augmenters = build_augmenters(spec, roles=ROLES, labels=knowledge.labels, knowledge=knowledge,
                                         store=None, models=None)
    filters, _ = build_filters(spec.filters, ROLES, knowledge.labels, knowledge.source_pairs, None, None)  # type: ignore[arg-type]
    writer = Rows()
    processor = BatchProcessor(ROLES, knowledge, augmenters, filters, PiiRedactor(), writer,  # type: ignore[arg-type]
                               spec.seed, spec.filters.pii_redaction)
    batch, _ = Cleaner(ROLES, spec.preprocess, False, knowledge.labels.kind).clean(RawBatch(0, columns, n))
    return processor, writer, batch, knowledge


def test_source_rows_then_generated_rows_with_provenance_and_budgets() -> None:
    spec = _spec([{"type": "typo", "fields": ["query"], "fraction": 0.5, "perRow": 2},
                  {"type": "randomSwap", "fields": ["item"], "maxRows": 10}])
    processor, writer, batch, _ = _processor(spec, 60)
    processor.process(batch)
    rows, counts = writer.rows, processor.counts
    assert [r["sf_origin"] for r in rows[:60]] == ["source"] * 60
    assert [r["sf_source_row"] for r in rows[:60]] == list(range(60))
    generated = rows[60:]
    assert generated and all(r["sf_origin"] == "generated" for r in generated)
    assert counts.rows_in == 60 and counts.generated_kept == len(generated)
    per_source: dict[tuple[str, int], int] = {}
    for row in generated:
        key = (row["sf_augmenter"], row["sf_source_row"])
        per_source[key] = per_source.get(key, 0) + 1
        source = rows[row["sf_source_row"]]
        assert row["id"].startswith(f"{source['id']}~{row['sf_augmenter']}~") and row["y"] == source["y"]
    assert max(n for (name, _), n in per_source.items() if name == "typo") <= 2
    assert counts.kept["randomSwap"] <= 10  # maxRows over the whole source (here: this one batch)
    assert sum(counts.kept.values()) == len(generated)
    assert sum(counts.labels_after.values()) == len(rows) and sum(counts.labels_before.values()) == 60


def test_marker_counts_and_examples_add_up() -> None:
    spec = _spec([{"type": "randomDelete", "fields": ["item"], "fraction": 0.4}])
    processor, writer, batch, _ = _processor(spec, 40)
    processor.process(batch)
    marker = processor.marker_counts(2, {"invalid JSON": 2})
    assert marker["rejectedRows"] == 2 and marker["rejectReasons"] == {"invalid JSON": 2}
    assert marker["rowsIn"] + marker["generatedKept"] == len(writer.rows)
    name = "randomDelete"
    found = marker["augmenters"][name]
    dropped = sum(sum(r.values()) for r in found["dropped"].values())
    assert found["kept"] == marker["generatedKept"] and found["produced"] == found["kept"] + dropped
    assert sum(marker["labelsAfter"].values()) == len(writer.rows)
    assert sum(marker["textLengths"]["after"]["query"].values()) == len(writer.rows)
    examples = processor.examples()
    assert 0 < len(examples) <= 3 and all(e["augmenter"] == name for e in examples)


def test_each_augmenter_draws_its_own_selection() -> None:
    spec = _spec([{"type": "typo", "fraction": 0.5}, {"type": "charNoise", "fraction": 0.5}])
    processor, _, batch, _ = _processor(spec, 200)
    typo = processor._plan(batch, "typo").selected
    noise = processor._plan(batch, "charNoise").selected
    assert 60 < typo.sum() < 140 and 60 < noise.sum() < 140 and not np.array_equal(typo, noise)


def test_column_fields_say_what_each_mapped_column_is() -> None:
    roles = ColumnRoles(query="q", item="t", label="y", attributes=("brand",), dense=("price",), image="img", id="id")
    assert column_fields(roles) == {"q": "query", "t": "item", "y": "label", "brand": "item", "price": "dense",
                                    "img": "image", "id": "id"}

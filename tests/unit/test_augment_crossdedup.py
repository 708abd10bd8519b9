"""The reduce step's cross-shard exact dedup (crossdedup.py) and the keys objects shards write for it.

Shards are simulated with the real BatchProcessor, filter chain and PartWriter over the unit
LocalStore: the same batches go to N shard processors and, in the same order, to one processor,
whose output is what the reduced N shards must equal, row for row and count for count.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment.catalog import needs_of
from sampleforge.jobs.augment.crossdedup import (
    CrossDedupResult,
    apply_counts_delta,
    cross_shard_dedup,
    remove_replaced,
    rewritten_path,
)
from sampleforge.jobs.augment.filters import ExactDedup, build_filters
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.output import PartWriter, keys_path, output_schema, stored_keys
from sampleforge.jobs.augment.pii import PiiRedactor
from sampleforge.jobs.augment.preprocess import Cleaner
from sampleforge.jobs.augment.protocol import BatchPlan, GeneratedRow
from sampleforge.jobs.augment.rows import ColumnRoles, RowBatch
from sampleforge.jobs.augment.shardbatch import BatchProcessor
from sampleforge.jobs.augment.source import RawBatch
from sampleforge.jobs.common.storage import S3Uri

ROLES = ColumnRoles(query="q", item="t", label="y", id="id")
PREFIX = S3Uri.parse("s3://out/run/")
ROWS, BATCH, SHARDS = 600, 100, 3
PART_ROWS, GROUP_ROWS = 100, 50
#: The counts the reduce step changes (the rest it leaves as the shards counted them).
CHANGED = ("generatedKept", "augmenters", "filtered", "labelsAfter", "textLengths")


class Repeating:
    """An augmenter whose rows repeat every ``period`` source rows: duplicates within and across shards."""

    def __init__(self, name: str, period: int, relabel: bool) -> None:
        self.name, self.period, self.relabel = name, period, relabel
        self.label_rule = "assign" if relabel else "keep"

    def augment(self, batch: RowBatch, plan: BatchPlan) -> Sequence[GeneratedRow]:
        out = []
        for i in plan.selected_indices():
            row = int(batch.row_ids[i])
            changes: dict[str, Any] = {"q": f"cheap shoes {row % self.period}", "t": f"sneaker {row % 3}"}
            if self.relabel:
                changes["y"] = 1 - batch.labels[i]
            out.append(GeneratedRow(row, changes, self.label_rule))
        return out


def _spec(dedup: str = "exact", fmt: str = "parquet") -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/train.jsonl", "columns": {"query": "q", "item": "t", "label": "y", "id": "id"}},
        "augmenters": [{"type": "typo", "name": "a", "fields": ["query"], "fraction": 1.0},
                       {"type": "typo", "name": "b", "fields": ["query"], "fraction": 0.5}],
        "filters": {"dedup": {"method": dedup}}, "output": {"uri": str(PREFIX), "format": fmt}, "seed": 5})


def _source() -> dict[str, list[Any]]:
    # Source pairs repeat every 280 rows: equal source rows in different shards, which must all stay.
    return {"id": [f"r{i}" for i in range(ROWS)], "q": [f"red running shoes size {i % 7}" for i in range(ROWS)],
            "t": [f"Acme trail runner model {i % 40}" for i in range(ROWS)], "y": [i % 2 for i in range(ROWS)]}


def _batches(spec: AugmentationRunSpec) -> tuple[list[RowBatch], DatasetKnowledge]:
    columns = _source()
    knowledge = learn(iter([RawBatch(0, columns, ROWS)]), [ROWS], ROLES, spec, needs_of(spec))
    batch, _ = Cleaner(ROLES, spec.preprocess, False, knowledge.labels.kind).clean(RawBatch(0, columns, ROWS))
    return [batch.take(range(lo, lo + BATCH)) for lo in range(0, ROWS, BATCH)], knowledge


class Shard:
    """One shard's pass over some batches, written with the real PartWriter."""

    def __init__(self, store: Any, spec: AugmentationRunSpec, knowledge: DatasetKnowledge, index: int,
                 batches: Sequence[RowBatch], workdir: Path, dedup_keys: bool = True) -> None:
        filters, _ = build_filters(spec.filters, ROLES, knowledge.labels, knowledge.source_pairs, None, None)  # type: ignore[arg-type]
        augmenters = [(entry, Repeating(entry.name, period, relabel))
                      for entry, period, relabel in zip(spec.augmenters, (50, 30), (False, True), strict=True)]
        self.writer = PartWriter(store, PREFIX, index, spec.output.format, output_schema(ROLES, knowledge.labels.kind),
                                 workdir / f"shard-{index}", part_rows=PART_ROWS, group_rows=GROUP_ROWS)
        self.processor = BatchProcessor(ROLES, knowledge, augmenters, filters, PiiRedactor(),  # type: ignore[arg-type]
                                        self.writer, spec.seed, False, dedup_keys=dedup_keys)
        for batch in batches:
            self.processor.process(batch)
        self.files = self.writer.close()
        self.keys = self.writer.key_files
        self.counts = self.processor.marker_counts(0, {})


def _rows(store: Any, files: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for entry in files:
        data = store.objects[str(PREFIX.join(entry["path"]))]
        if entry["path"].endswith(".parquet"):
            out += pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            out += [json.loads(line) for line in data.splitlines()]
    return out


def _changed(counts: dict[str, Any]) -> dict[str, Any]:
    return {k: counts.get(k) for k in CHANGED}


def _summed(shards: Sequence[Shard], delta: dict[str, Any]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for shard in shards:
        apply_counts_delta(total, shard.counts)
    apply_counts_delta(total, delta)
    return total


class Run:
    """The same batches as three shards and as one; the three reduced."""

    def __init__(self, store: Any, tmp_path: Path, fmt: str = "parquet", partitions: int = 64) -> None:
        spec = _spec(fmt=fmt)
        self.fmt = fmt
        batches, self.knowledge = _batches(spec)
        per = len(batches) // SHARDS
        self.shards = [Shard(store, spec, self.knowledge, i, batches[i * per : (i + 1) * per], tmp_path)
                       for i in range(SHARDS)]
        self.single_store = type(store)()
        self.single = Shard(self.single_store, spec, self.knowledge, 0, batches, tmp_path / "one")
        self.store = store
        self.result = self.reduce(tmp_path / "reduce", partitions)

    def reduce(self, workdir: Path, partitions: int) -> CrossDedupResult:
        return cross_shard_dedup(self.store, PREFIX, [s.files for s in self.shards], [s.keys for s in self.shards],
                                 workdir, ROLES, self.knowledge.labels, partitions=partitions, group_rows=GROUP_ROWS)

    def reduced_rows(self) -> list[dict[str, Any]]:
        return [row for files in self.result.files for row in _rows(self.store, files)]


@pytest.fixture(params=["parquet", "jsonl"])
def run(request: pytest.FixtureRequest, local_store: Any, tmp_path: Path) -> Run:
    return Run(local_store, tmp_path, fmt=request.param)


def _ignoring_part_boundaries(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(sorted(r.items())) for r in rows]


def test_reduced_shards_equal_one_shard_row_for_row(run: Run) -> None:
    shard_rows = [row for s in run.shards for row in _rows(run.store, s.files)]
    reduced = run.reduced_rows()
    single = _rows(run.single_store, run.single.files)
    assert run.result.removed > 0 and len(shard_rows) - len(reduced) == run.result.removed
    assert _ignoring_part_boundaries(reduced) == _ignoring_part_boundaries(single)


def test_count_delta_makes_the_shards_counts_one_shards(run: Run) -> None:
    before = _summed(run.shards, {})
    after = _summed(run.shards, run.result.counts)
    assert _changed(before) != _changed(run.single.counts)
    assert _changed(after) == _changed(run.single.counts)
    assert after["filtered"]["dedup"]["duplicates a generated row"] > before["filtered"]["dedup"][
        "duplicates a generated row"]


def test_first_occurrence_kept_and_source_rows_never_removed(run: Run) -> None:
    reduced = run.reduced_rows()
    generated = [(r["q"], r["t"]) for r in reduced if r["sf_origin"] == "generated"]
    assert len(generated) == len(set(generated))
    assert [r for r in reduced if r["sf_origin"] == "source"] == [
        r for s in run.shards for r in _rows(run.store, s.files) if r["sf_origin"] == "source"]
    assert len({(r["q"], r["t"]) for r in reduced if r["sf_origin"] == "source"}) < ROWS  # equal source rows stay
    first: dict[tuple[str, str], int] = {}
    for r in (r for s in run.shards for r in _rows(run.store, s.files) if r["sf_origin"] == "generated"):
        first.setdefault((r["q"], r["t"]), r["sf_source_row"])
    assert {(r["q"], r["t"]): r["sf_source_row"] for r in reduced if r["sf_origin"] == "generated"} == first


def test_entries_match_uploads_and_originals_stay_until_removed(run: Run) -> None:
    originals = [e for s in run.shards for e in s.files]
    entries = [e for files in run.result.files for e in files]
    paths = [e["path"] for e in entries]
    emptied = [p for p in run.result.replaced if rewritten_path(p) not in paths]
    # In order, each part or its rewrite; a part that lost every row (here some of shard 1 and 2's
    # all-generated parts) is left out, as a part writer never writes an empty part.
    assert emptied and paths == [rewritten_path(o["path"]) if o["path"] in run.result.replaced else o["path"]
                                 for o in originals if o["path"] not in emptied]
    assert run.result.replaced and set(entries[0]) == set(originals[0])
    for entry in entries + originals:
        data = run.store.objects[str(PREFIX.join(entry["path"]))]
        assert len(data) == entry["size"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert sum(e["rows"] for e in entries) == len(run.reduced_rows())
    summary = run.result.summary()
    assert (summary["removed"], summary["partsRewritten"], summary["partitions"]) == (
        run.result.removed, len(run.result.replaced), 64)
    remove_replaced(run.store, PREFIX, run.result, [s.keys for s in run.shards])
    left = {k for k in run.store.objects if k.startswith(str(PREFIX))}
    assert left == {str(PREFIX.join(e["path"])) for e in entries}


def test_same_input_same_bytes_and_partition_count_does_not_matter(run: Run, tmp_path: Path) -> None:
    first = {e["path"]: run.store.objects[str(PREFIX.join(e["path"]))] for f in run.result.files for e in f}
    for partitions in (1, 7, 64):
        again = run.reduce(tmp_path / f"again-{partitions}", partitions)
        assert (again.files, again.counts, again.removed, again.replaced) == (
            run.result.files, run.result.counts, run.result.removed, run.result.replaced)
        assert {p: run.store.objects[str(PREFIX.join(p))] for p in first} == first


def test_rewritten_part_is_what_the_part_writer_writes_for_its_rows(run: Run, local_store: Any,
                                                                     tmp_path: Path) -> None:
    fmt = "parquet" if run.result.replaced[0].endswith(".parquet") else "jsonl"
    for entry in (e for f in run.result.files for e in f if e["path"].endswith(f"-dedup.{fmt}")):
        store = type(local_store)()
        writer = PartWriter(store, PREFIX, 0, fmt, output_schema(ROLES, run.knowledge.labels.kind), tmp_path / "w",
                            part_rows=PART_ROWS, group_rows=GROUP_ROWS)
        writer.add(_rows(run.store, [entry]))
        (direct,) = writer.close()
        assert (direct["size"], direct["sha256"], direct["rows"]) == (entry["size"], entry["sha256"], entry["rows"])


def test_keys_objects_line_up_with_parts(run: Run) -> None:
    shard = run.shards[1]
    exact = next(f for f in shard.processor.filters if isinstance(f, ExactDedup))
    assert [k["path"] for k in shard.keys] == [keys_path(f["path"]) for f in shard.files]
    for part, entry in zip(shard.files, shard.keys, strict=True):
        data = run.store.objects[str(PREFIX.join(entry["path"]))]
        assert entry["rows"] == part["rows"] and len(data) == 8 * part["rows"] == entry["size"]
        keys = np.frombuffer(data, dtype="<u8")
        rows = _rows(run.store, [part])
        for key, row in zip(keys.tolist(), rows, strict=True):
            if row["sf_origin"] == "source":
                assert key == 0
            else:
                assert key == int(stored_keys(np.asarray([exact.key(_candidate(row))], dtype=np.uint64))[0]) != 0


def _candidate(row: dict[str, Any]) -> Any:
    from sampleforge.jobs.augment.filters import Candidate

    return Candidate(row, row, row["sf_augmenter"], row["sf_label_rule"], row["sf_source_row"], 0, ("query", "item"))


def test_no_keys_without_exact_dedup_or_when_not_asked(local_store: Any, tmp_path: Path) -> None:
    spec = _spec(dedup="none")
    batches, knowledge = _batches(spec)
    assert Shard(local_store, spec, knowledge, 0, batches[:2], tmp_path).keys == []
    spec = _spec()
    assert Shard(local_store, spec, knowledge, 1, batches[:2], tmp_path, dedup_keys=False).keys == []
    assert not any("/_dedup/" in k for k in local_store.objects)


def test_part_writer_wants_keys_for_every_batch_or_none(local_store: Any, tmp_path: Path) -> None:
    writer = PartWriter(local_store, PREFIX, 0, "jsonl", output_schema(ROLES, "int"), tmp_path)
    row = {"id": "x", "q": "a", "t": "b", "y": 1, "sf_origin": "source", "sf_source_row": 0}
    writer.add([row], np.zeros(1, dtype=np.uint64))
    with pytest.raises(ValueError, match="every batch"):
        writer.add([row])
    with pytest.raises(ValueError, match="2 keys for 1 rows"):
        writer.add([row], np.zeros(2, dtype=np.uint64))
    assert [f["rows"] for f in writer.close()] == [k["rows"] for k in writer.key_files] == [1]


def test_a_stale_keys_object_is_an_error(run: Run, tmp_path: Path) -> None:
    entry = run.shards[0].keys[0]
    uri = str(PREFIX.join(entry["path"]))
    run.store.objects[uri] = run.store.objects[uri][:-8] + b"\x01" * 8
    with pytest.raises(ValueError, match="does not match its size or sha256"):
        run.reduce(tmp_path / "stale", 4)


def test_partitions_bound_memory(local_store: Any, tmp_path: Path) -> None:
    """200k generated keys over 64 partitions: no partition holds much more than 1/64 of them."""
    n, parts = 200_000, 4
    keys = np.random.default_rng(0).integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    files, key_files = [], []
    for j, chunk in enumerate(np.array_split(keys, parts)):
        data = chunk.astype("<u8").tobytes()
        path = f"data/part-00000-{j:05d}.parquet"
        local_store.write_bytes(PREFIX.join(keys_path(path)), data)
        files.append({"path": path, "size": 1, "sha256": "-", "rows": len(chunk)})
        key_files.append({"path": keys_path(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                          "rows": len(chunk)})
    result = cross_shard_dedup(local_store, PREFIX, [files], [key_files], tmp_path, ROLES, _spec_labels(),
                               partitions=64)
    assert result.removed == 0 and result.generated_rows == n and result.files == [files]
    assert result.max_partition_records <= n / 64 * 1.1
    assert result.bytes_read == 8 * n


def _spec_labels() -> Any:
    from sampleforge.jobs.augment.labels import Labels

    return Labels("int")


def test_examples_point_at_their_rows_and_the_reduce_knows_which_it_removed(run: Run) -> None:
    seen: set[tuple[str, str]] = set()
    removed_any = False
    for index, shard in enumerate(run.shards):
        rows = _rows(run.store, shard.files)
        examples, positions = shard.processor.examples(), shard.processor.example_rows()
        assert examples and len(examples) == len(positions)
        for example, position in zip(examples, positions, strict=True):
            assert (rows[position]["q"], rows[position]["t"]) == (example["generated"]["query"],
                                                                  example["generated"]["item"])
        # a generated row is removed when an earlier shard wrote a generated row with its texts
        expected = [(e["generated"]["query"], e["generated"]["item"]) in seen for e in examples]
        assert run.result.removed_rows(index, positions) == expected
        removed_any |= any(expected)
        seen |= {(r["q"], r["t"]) for r in rows if r["sf_origin"] == "generated"}
    assert removed_any

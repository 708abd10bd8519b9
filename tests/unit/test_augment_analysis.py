"""The analysis artifact: knowledge learnt from real QBQTC rows, committed and read back, field by field."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.jobs.augment.analysis import ANALYSIS_DIR, Analysis, read_analysis, write_analysis
from sampleforge.jobs.augment.dedup import HashSet
from sampleforge.jobs.augment.errors import SourceError
from sampleforge.jobs.augment.itempool import ItemPool, PoolItem
from sampleforge.jobs.augment.knowledge import DatasetKnowledge, learn
from sampleforge.jobs.augment.rows import ColumnRoles
from sampleforge.jobs.augment.source import RawBatch
from sampleforge.jobs.common.storage import S3Uri

QBQTC = Path(__file__).resolve().parents[3] / "shared" / "data" / "qbqtc" / "dev.json"
ALL_NEEDS = frozenset({"attributeValues", "sample", "itemPool"})
PREFIX = S3Uri.parse("s3://runs/out/")


def _qbqtc(n: int) -> list[dict[str, Any]]:
    if not QBQTC.exists():
        pytest.skip(f"the QBQTC copy {QBQTC} is not here (see shared/data/README.md)")
    with QBQTC.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(n), handle, strict=False)]


def _spec(columns: dict[str, Any], preprocess: dict[str, Any] | None = None) -> AugmentationRunSpec:
    return AugmentationRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"},
        "source": {"uri": "s3://data/qbqtc.jsonl", "columns": columns},
        "preprocess": preprocess or {},
        "augmenters": [{"type": "typo", "fraction": 0.5, "maxRows": 300},
                       {"type": "hardNegative", "name": "negatives", "fraction": 0.2},
                       {"type": "rebalance", "targetDistribution": {"0": 0.5, "1": 0.5}}],
        "output": {"uri": "s3://runs/out/"}, "seed": 3})


def _learn(columns: dict[str, list[Any]], roles: ColumnRoles, spec: AugmentationRunSpec,
           needs: frozenset[str] = ALL_NEEDS, batch_rows: int = 700) -> DatasetKnowledge:
    """The first pass over ``columns`` in batches, as two objects (offsets every 500 records of each)."""
    n = len(next(iter(columns.values())))
    batches = (RawBatch(start, {c: v[start:start + batch_rows] for c, v in columns.items()},
                        min(batch_rows, n - start), source="s3://data/qbqtc.jsonl")
               for start in range(0, n, batch_rows))
    half = n // 2
    offsets = [[(r, 100 * r + 7, 2 * r + 1) for r in range(0, half, 500)], [(r, 90 * r, r + 1) for r in range(0, n - half, 500)]]
    return learn(batches, [half, n - half], roles, spec, needs, object_offsets=offsets)


def _text_knowledge() -> DatasetKnowledge:
    """3,000 QBQTC rows: string labels ("0", "1", "2"), an id column, no dense features."""
    rows = _qbqtc(3000)
    columns = {"id": [r["id"] for r in rows], "query": [r["query"] for r in rows],
               "title": [r["title"] for r in rows], "label": [r["label"] for r in rows]}
    roles = ColumnRoles(query="query", item="title", label="label", id="id")
    return _learn(columns, roles, _spec({"item": "title", "id": "id"}))


def _rich_knowledge() -> DatasetKnowledge:
    """2,000 QBQTC rows with float labels, attributes (some missing), dense features, and an image column."""
    rows = _qbqtc(2000)
    rng = np.random.default_rng(4)
    n = len(rows)
    shops = ["京东", "淘宝", "天猫 旗舰店", "苏宁", None]
    columns: dict[str, list[Any]] = {
        "query": [r["query"] for r in rows], "title": [r["title"] for r in rows],
        "grade": [float(r["label"]) / 2 + 0.25 * (i % 2) for i, r in enumerate(rows)],
        "shop": [shops[i % len(shops)] for i in range(n)],
        "city": [None if i % 7 == 0 else f"城市{i % 31}" for i in range(n)],
        "price": (50 + 20 * rng.standard_normal(n)).tolist(), "clicks": rng.poisson(3, n).astype(float).tolist(),
        "picture": [None if i % 3 == 0 else f"s3://images/{i}.jpg" for i in range(n)],
    }
    roles = ColumnRoles(query="query", item="title", label="grade", attributes=("shop", "city"),
                        dense=("price", "clicks"), image="picture")
    spec = _spec({"item": "title", "label": "grade", "attributes": ["shop", "city"],
                  "denseFeatures": ["price", "clicks"], "image": "picture"},
                 {"clipOutliers": {"method": "quantile", "lower": 0.01, "upper": 0.99},
                  "denseNormalization": "standard"})
    return _learn(columns, roles, spec)


def _empty_knowledge() -> DatasetKnowledge:
    """No optional fact: no sample, no item pool, no attribute values, no dense features, no offsets."""
    rows = _qbqtc(500)
    columns = {"query": [r["query"] for r in rows], "item": [r["title"] for r in rows],
               "label": [int(r["label"]) for r in rows]}
    knowledge = learn(iter([RawBatch(0, columns, len(rows))]), [len(rows)], ColumnRoles("query", "item", "label"),
                      _spec({}), frozenset())
    assert knowledge.sample is None and not len(knowledge.item_pool) and knowledge.object_offsets == []
    return knowledge


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def assert_same_knowledge(read: DatasetKnowledge, learnt: DatasetKnowledge) -> None:
    assert read.object_rows == learnt.object_rows
    assert (read.total_rows, read.valid_rows, read.rejected_rows) == \
        (learnt.total_rows, learnt.valid_rows, learnt.rejected_rows)
    assert read.labels == learnt.labels and list(read.labels.counts) == list(learnt.labels.counts)
    if learnt.dense is None:
        assert read.dense is None
    else:
        assert read.dense is not None
        assert (read.dense.clip, read.dense.normalization, read.dense.sample_rows) == \
            (learnt.dense.clip, learnt.dense.normalization, learnt.dense.sample_rows)
        for mine, theirs in zip(read.dense.features, learnt.dense.features, strict=True):
            for name in ("name", "count", "mean", "std", "min", "max", "clip_low", "clip_high", "center", "scale"):
                assert _same_float(getattr(mine, name), getattr(theirs, name)) if isinstance(getattr(mine, name), float) \
                    else getattr(mine, name) == getattr(theirs, name), name
    assert read.attribute_values == learnt.attribute_values
    assert list(read.attribute_values) == list(learnt.attribute_values)
    assert read.item_pool.attributes == learnt.item_pool.attributes
    assert len(read.item_pool) == len(learnt.item_pool)
    assert read.item_pool.keys.tolist() == learnt.item_pool.keys.tolist()
    assert list(read.item_pool) == list(learnt.item_pool)  # PoolItem by PoolItem: row id, item, attributes, image
    assert list(read.item_pool.texts()) == list(learnt.item_pool.texts())
    assert len(read.source_pairs) == len(learnt.source_pairs)
    assert read.source_pairs.sorted_keys().tolist() == learnt.source_pairs.sorted_keys().tolist()
    if learnt.sample is None:
        assert read.sample is None
    else:
        assert read.sample is not None
        assert read.sample.roles == learnt.sample.roles
        assert read.sample.row_ids.dtype == np.int64
        assert read.sample.row_ids.tolist() == learnt.sample.row_ids.tolist()
        assert list(read.sample.columns) == list(learnt.sample.columns)
        for name, values in learnt.sample.columns.items():
            assert [type(v) for v in read.sample.columns[name]] == [type(v) for v in values], name
            assert read.sample.columns[name] == values, name
    assert read.selection == learnt.selection and list(read.selection) == list(learnt.selection)
    assert read.object_offsets == learnt.object_offsets
    assert all(isinstance(pair, tuple) for offsets in read.object_offsets for pair in offsets)
    assert read.seconds == learnt.seconds


def _artifact(store: Any, prefix: S3Uri = PREFIX) -> dict[str, bytes]:
    root = str(prefix.join(ANALYSIS_DIR, ""))
    return {key[len(root):]: data for key, data in store.objects.items() if key.startswith(root)}


def _round_trip(store: Any, knowledge: DatasetKnowledge, prepared: dict[str, bytes] | None = None) -> Analysis:
    index_uri = write_analysis(store, PREFIX, knowledge, "fp-1", prepared)
    assert str(index_uri) == "s3://runs/out/_analysis/index.json"
    found = read_analysis(store, PREFIX, "fp-1")
    assert found is not None
    return found


def test_qbqtc_knowledge_reads_back_exactly(local_store: Any) -> None:
    knowledge = _text_knowledge()
    assert knowledge.labels.kind == "string" and len(knowledge.item_pool) > 2500 and knowledge.sample is not None
    assert knowledge.selection["typo"].max_rows == 300 and knowledge.selection["typo"].threshold < 0.5
    found = _round_trip(local_store, knowledge, {"negatives": b"\x00faiss index\xff", "gan/v1": b""})
    assert_same_knowledge(found.knowledge, knowledge)
    assert found.prepared == {"negatives": b"\x00faiss index\xff", "gan/v1": b""}
    files = _artifact(local_store)
    assert sorted(files) == ["index.json", "items.arrow", "knowledge.json", "offsets.arrow", "pairs.u64",
                             "prepared/gan%2Fv1.bin", "prepared/negatives.bin", "sample.arrow"]
    assert found.bytes_read == sum(len(data) for data in files.values())
    index = json.loads(files["index.json"])
    assert found.index == index and index["fingerprint"] == "fp-1" and index["summary"] == knowledge.summary()
    assert {e["path"]: e["size"] for e in index["files"]} == \
        {path: len(data) for path, data in files.items() if path != "index.json"}
    # 8 bytes per source row of pair hashes, stored as they are
    assert len(files["pairs.u64"]) == 8 * len(knowledge.source_pairs)
    assert np.frombuffer(files["pairs.u64"], dtype="<u8").tolist() == knowledge.source_pairs.sorted_keys().tolist()


def test_rich_knowledge_reads_back_exactly(local_store: Any) -> None:
    knowledge = _rich_knowledge()
    assert knowledge.labels.kind == "float" and knowledge.dense is not None
    assert knowledge.dense.clip is not None and knowledge.attribute_values["shop"]
    assert any(p.image is None for p in knowledge.item_pool) and any(p.image for p in knowledge.item_pool)
    assert any(p.attributes["city"] is None for p in knowledge.item_pool)
    found = _round_trip(local_store, knowledge)
    assert_same_knowledge(found.knowledge, knowledge)
    assert found.prepared == {}
    sample = found.knowledge.sample
    assert sample is not None and all(type(v) is float for v in sample.columns["price"])


def test_empty_optional_facts_read_back(local_store: Any) -> None:
    knowledge = _empty_knowledge()
    found = _round_trip(local_store, knowledge)
    assert_same_knowledge(found.knowledge, knowledge)
    assert "sample.arrow" not in _artifact(local_store)


def test_hand_made_pool_and_mixed_sample_columns(local_store: Any) -> None:
    """What learn() rarely makes: a pool with every text null-able, and sample labels of mixed types."""
    items = [PoolItem(7, "靴子", {"brand": None}, None), PoolItem(3, "", {"brand": "Nike"}, "s3://i/3.png"),
             PoolItem(11, "boot \u00e9", {"brand": ""}, "")]
    knowledge = _empty_knowledge()
    knowledge.item_pool = ItemPool.of(items, [2**64 - 1, 5, 2**40], ("brand",))
    roles = ColumnRoles("q", "t", "y", id="id")
    knowledge.sample = _text_knowledge().sample
    assert knowledge.sample is not None
    base = knowledge.sample.take([0, 1, 2, 3])
    columns = {"id": [None, "a", "b", "c"], "q": ["q1", "q2", "q3", "q4"], "t": ["t", "t", "t", "t"],
               "y": [1, "1", 1.5, float("nan")]}
    knowledge.sample = type(base)(roles, base.row_ids, columns)
    knowledge.source_pairs = HashSet(np.asarray([9, 1, 2**63, 5], dtype=np.uint64))
    knowledge.source_pairs.add_new(np.asarray([4, 9], dtype=np.uint64))  # one key still among the recent
    found = _round_trip(local_store, knowledge).knowledge
    assert list(found.item_pool) == list(knowledge.item_pool) and found.item_pool.keys.tolist() == [5, 2**40, 2**64 - 1]
    assert found.source_pairs.sorted_keys().tolist() == [1, 4, 5, 9, 2**63]
    assert 4 in found.source_pairs and 6 not in found.source_pairs
    assert found.sample is not None
    labels = found.sample.columns["y"]
    assert [type(v) for v in labels] == [int, str, float, float] and labels[:3] == [1, "1", 1.5]
    assert math.isnan(labels[3])
    assert found.sample.columns["id"] == [None, "a", "b", "c"]


def test_same_knowledge_gives_the_same_bytes(local_store: Any) -> None:
    knowledge = _rich_knowledge()
    write_analysis(local_store, PREFIX, knowledge, "fp-1", {"gan": b"weights"})
    first = _artifact(local_store)
    other = S3Uri.parse("s3://runs/other/")
    write_analysis(local_store, other, knowledge, "fp-1", {"gan": b"weights"})
    assert _artifact(local_store, other) == first
    # read back and written again: the same files too (the pool is written in pool order, not the order it was built)
    found = read_analysis(local_store, PREFIX, "fp-1")
    assert found is not None
    third = S3Uri.parse("s3://runs/third/")
    write_analysis(local_store, third, found.knowledge, "fp-1", found.prepared)
    assert _artifact(local_store, third) == first
    # a second first pass over the same rows (another duration): the data files are the same
    again = _rich_knowledge()
    write_analysis(local_store, other, again, "fp-1", {"gan": b"weights"})
    second = _artifact(local_store, other)
    assert {p: d for p, d in second.items() if p != "index.json"} == {p: d for p, d in first.items() if p != "index.json"}


def test_no_index_or_another_fingerprint_means_analyse_again(local_store: Any) -> None:
    assert read_analysis(local_store, PREFIX, "fp-1") is None
    write_analysis(local_store, PREFIX, _empty_knowledge(), "fp-1")
    assert read_analysis(local_store, PREFIX, "fp-2") is None
    assert read_analysis(local_store, S3Uri.parse("s3://runs/out-2/"), "fp-1") is None
    assert read_analysis(local_store, PREFIX, "fp-1") is not None
    # a rewrite for another configuration replaces the index; the old fingerprint no longer reads
    write_analysis(local_store, PREFIX, _empty_knowledge(), "fp-2")
    assert read_analysis(local_store, PREFIX, "fp-1") is None and read_analysis(local_store, PREFIX, "fp-2") is not None


@pytest.mark.parametrize("path", ["knowledge.json", "pairs.u64", "items.arrow", "sample.arrow", "offsets.arrow",
                                  "prepared/gan.bin"])
@pytest.mark.parametrize("damage", ["missing", "changed", "truncated"])
def test_a_damaged_file_is_an_error_naming_it(local_store: Any, path: str, damage: str) -> None:
    write_analysis(local_store, PREFIX, _text_knowledge(), "fp-1", {"gan": b"state of the generator"})
    key = f"s3://runs/out/_analysis/{path}"
    data = local_store.objects[key]
    if damage == "missing":
        del local_store.objects[key]
    elif damage == "changed":
        local_store.objects[key] = bytes([data[0] ^ 1]) + data[1:]
    else:
        local_store.objects[key] = data[:-1]
    with pytest.raises(SourceError, match=rf"{key}.*delete the run's output prefix s3://runs/out/") as err:
        read_analysis(local_store, PREFIX, "fp-1")
    assert err.value.reason == "DatasetUnreadable"


def test_an_index_that_is_not_json_is_an_error(local_store: Any) -> None:
    write_analysis(local_store, PREFIX, _empty_knowledge(), "fp-1")
    local_store.objects["s3://runs/out/_analysis/index.json"] = b"{not json"
    with pytest.raises(SourceError, match=r"_analysis/index.json is not an analysis index"):
        read_analysis(local_store, PREFIX, "fp-1")

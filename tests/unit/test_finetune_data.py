"""Reading rows, splitting by query, reading labels, and batching: the fine-tune job's data path
without MinIO or a model."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard

from sampleforge.api.augmentation import Columns
from sampleforge.api.finetune import Task
from sampleforge.jobs.finetune.batches import BucketBatchSampler, Collator, PairDataset, Tokenized, make_loader
from sampleforge.jobs.finetune.data import Examples, Rejected, _read_columns, _to_examples, data_entries, split_by_query
from sampleforge.jobs.finetune.errors import DatasetError
from sampleforge.jobs.finetune.labels import LabelSpace


def columns(data: bytes, fmt: str) -> tuple[dict[str, list[object]], Rejected]:
    rejected = Rejected()
    return _read_columns(data, fmt, "s3://b/f", rejected), rejected


class TestReadingFiles:
    def test_the_three_formats_give_the_same_columns(self) -> None:
        rows = [{"q": "red shoes", "title": "Nike, \"Air\"\nmax", "label": 2}, {"q": "bag", "title": "tote", "label": 0}]
        jsonl = "\n".join(json.dumps(r) for r in rows).encode()
        text = io.StringIO()
        text.write('q,title,label\n"red shoes","Nike, ""Air""\nmax",2\nbag,tote,0\n')
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        for data, fmt in ((jsonl, "jsonl"), (text.getvalue().encode(), "csv"), (sink.getvalue(), "parquet")):
            cols, rejected = columns(data, fmt)
            assert cols["q"] == ["red shoes", "bag"] and cols["title"][0] == 'Nike, "Air"\nmax', fmt
            assert [str(v) for v in cols["label"]] == ["2", "0"] and rejected.count == 0

    def test_malformed_records_are_set_aside_with_the_reason(self) -> None:
        cols, rejected = columns(b'{"q": "a", "title": "b"}\n{not json\n[1, 2]\n', "jsonl")
        assert cols["q"] == ["a"]
        assert rejected.count == 2
        assert any(r.startswith("invalid JSON (line 2)") for r in rejected.reasons)
        _, rejected = columns(b"q,title\na,b\nc,d,e,f\n", "csv")
        assert rejected.reasons["malformed CSV row"] == 1


class TestCommittedManifests:
    def test_only_data_files_are_training_rows(self) -> None:
        manifest = {"format": "parquet", "files": [
            {"path": "part-00000.parquet"}, {"path": "shard-1/part-00001.parquet"},
            {"path": "rejected/part-0.jsonl"}, {"path": "rejected_rows.jsonl"}, {"path": "_stats/summary.json"},
            {"path": "stats.json"}, {"path": "part-00002"}]}
        assert [e["path"] for e in data_entries(manifest)] == [
            "part-00000.parquet", "shard-1/part-00001.parquet", "part-00002"]

    def test_an_explicit_role_wins(self) -> None:
        manifest = {"files": [{"path": "a.parquet", "role": "data"}, {"path": "b.parquet", "role": "rejected"}]}
        assert [e["path"] for e in data_entries(manifest)] == ["a.parquet"]


class TestRoles:
    def test_rows_lacking_something_are_rejected_and_attributes_appended(self) -> None:
        cols = {"q": ["red shoes", "", "bag", "hat"], "t": ["Air Max", "x", None, "cap"],
                "y": ["1", "0", "1", None], "brand": ["Nike", "a", "b", None], "price": [9.5, 1, 2, 3]}
        rejected = Rejected()
        spec = Columns(query="q", item="t", label="y", attributes=["brand"], dense_features=["price"])
        examples = _to_examples(cols, spec, "f", "data", need_label=True, rejected=rejected)
        assert examples.queries == ["red shoes"]
        assert examples.items == ["Air Max | brand: Nike"]
        assert examples.dense is not None and examples.dense.tolist() == [[9.5]]
        assert dict(rejected.reasons) == {"empty query (q)": 1, "empty item (t)": 1, "no label (y)": 1}

    def test_a_non_numeric_dense_feature_rejects_the_row(self) -> None:
        rejected = Rejected()
        spec = Columns(dense_features=["price"])
        cols = {"query": ["a", "b"], "item": ["x", "y"], "label": [1, 0], "price": ["12", "n/a"]}
        examples = _to_examples(cols, spec, "f", "data", need_label=True, rejected=rejected)
        assert len(examples) == 1 and rejected.reasons == {"dense feature price is missing or not a finite number": 1}

    def test_a_missing_column_names_the_spec_field(self) -> None:
        with pytest.raises(DatasetError, match=r"no column 'title' \(data.columns.item\).*Fix data.columns"):
            _to_examples({"query": ["a"], "label": [1]}, Columns(item="title"), "s3://b/f", "data", True, Rejected())


class TestSplitByQuery:
    def test_no_query_on_both_sides_and_roughly_the_fraction(self) -> None:
        queries = [f"q{i % 40}" for i in range(400)]
        train, evaluation = split_by_query(queries, 0.2, seed=3)
        assert set(train).isdisjoint(evaluation) and len(train) + len(evaluation) == 400
        assert {queries[i] for i in train}.isdisjoint({queries[i] for i in evaluation})
        assert 0.15 <= len(evaluation) / 400 <= 0.3

    def test_same_seed_same_split(self) -> None:
        queries = [f"q{i % 13}" for i in range(100)]
        a, b = split_by_query(queries, 0.3, 1), split_by_query(queries, 0.3, 1)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert not np.array_equal(a[1], split_by_query(queries, 0.3, 2)[1])

    def test_a_single_query_cannot_be_split(self) -> None:
        with pytest.raises(DatasetError, match="data.eval"):
            split_by_query(["q", "q"], 0.5, 0)


def examples(labels: list[object]) -> Examples:
    return Examples([f"q{i}" for i in range(len(labels))], [f"i{i}" for i in range(len(labels))], labels)


class TestLabels:
    def test_numeric_grades_are_ordered_classes(self) -> None:
        space = LabelSpace.learn(Task.RELEVANCE, ["2", 0, "1", 1.0])
        assert space.classes == ("0", "1", "2") and space.class_grades == (0.0, 1.0, 2.0)
        kept, targets = space.encode(examples(["2", 0, "7"]), rejected := Rejected(), "data.uri")
        assert targets.targets.tolist() == [2, 0] and targets.grades.tolist() == [2.0, 0.0]
        assert len(kept) == 2 and rejected.count == 1

    def test_esci_names_carry_the_kdd_cup_gains(self) -> None:
        space = LabelSpace.learn(Task.RELEVANCE, ["Exact", "Irrelevant", "Substitute", "Complement"])
        assert space.classes == ("Irrelevant", "Complement", "Substitute", "Exact")
        assert space.class_grades == (0.0, 0.01, 0.1, 1.0) and space.ordered

    def test_other_names_are_unordered(self) -> None:
        space = LabelSpace.learn(Task.RELEVANCE, ["shoes", "bags"])
        assert space.classes == ("bags", "shoes") and not space.ordered

    def test_one_class_is_not_a_classification(self) -> None:
        with pytest.raises(DatasetError, match="single value"):
            LabelSpace.learn(Task.RELEVANCE, ["1", "1"])

    def test_clicks_and_two_tower_positives(self) -> None:
        ctr = LabelSpace.learn(Task.CTR, None)
        _, targets = ctr.encode(examples(["1", "false", True, "2"]), rejected := Rejected(), "data.uri")
        assert targets.targets.tolist() == [1.0, 0.0, 1.0] and rejected.count == 1
        tower = LabelSpace.learn(Task.TWO_TOWER, None)
        _, targets = tower.encode(examples(["Exact", "I", "0.5"]), Rejected(), "data.uri")
        assert targets.grades.tolist() == [1.0, 0.0, 0.5]
        unlabelled = Examples(["q"], ["i"], None)
        _, targets = tower.encode(unlabelled, Rejected(), "data.uri")
        assert targets.grades.tolist() == [1.0]

    def test_round_trips_through_json(self) -> None:
        space = LabelSpace.learn(Task.RELEVANCE, ["E", "S", "I"])
        assert LabelSpace.from_json(json.loads(json.dumps(space.to_json()))) == space


class TestBatches:
    def test_bucketing_covers_every_row_once_and_groups_similar_lengths(self) -> None:
        lengths = np.random.default_rng(0).integers(4, 200, 1000)
        sampler = BucketBatchSampler(lengths, 16, seed=1, pool_batches=10)
        batches = sampler.batches()
        assert len(batches) == len(sampler) == 63
        assert sorted(i for b in batches for i in b) == list(range(1000))
        spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
        random_spread = np.mean([np.ptp(lengths[np.random.default_rng(i).choice(1000, 16)]) for i in range(50)])
        assert spread < random_spread / 3

    def test_order_depends_only_on_seed_and_epoch(self) -> None:
        lengths = np.arange(100)
        a, b = BucketBatchSampler(lengths, 8, seed=4), BucketBatchSampler(lengths, 8, seed=4)
        assert a.batches() == b.batches()
        b.set_epoch(1)
        assert a.batches() != b.batches()
        a.set_epoch(1)
        assert a.batches() == b.batches()

    @pytest.mark.parametrize("rows", [5, 26, 31, 333])
    @pytest.mark.parametrize("ranks", [2, 3])
    def test_sharding_across_ranks_loses_no_row(self, rows: int, ranks: int) -> None:
        # accelerate deals batches out to ranks and completes only a short *last* batch; a short
        # batch elsewhere would be dropped (31 rows on 2 ranks lost 7 rows before the fix).
        sampler = BucketBatchSampler(np.arange(rows) % 7 + 3, 4, seed=1, pool_batches=3)
        seen: set[int] = set()
        for rank in range(ranks):
            shard = BatchSamplerShard(sampler, num_processes=ranks, process_index=rank, even_batches=True)
            batches = list(shard)
            assert len(batches) == len(shard) == math.ceil(len(sampler) / ranks)
            seen |= {i for batch in batches for i in batch}
        assert seen == set(range(rows))

    def test_evaluation_order_is_longest_first(self) -> None:
        batches = BucketBatchSampler(np.asarray([3, 9, 1, 7]), 2, seed=0, shuffle=False).batches()
        assert batches == [[1, 3], [0, 2]]

    def test_collator_pads_to_the_longest_row_of_the_batch(self) -> None:
        tokens = Tokenized([np.asarray([101, 5, 102], np.int32), np.asarray([101, 102], np.int32)],
                           [np.asarray([0, 0, 1], np.int8), np.asarray([0, 1], np.int8)])
        dataset = PairDataset(tokens, np.asarray([1, 0]), np.asarray([[0.5], [1.5]], np.float32))
        batch = Collator(pad_token_id=0)([dataset[0], dataset[1]])
        assert batch["inputs"]["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
        assert batch["inputs"]["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
        assert batch["inputs"]["token_type_ids"].tolist() == [[0, 0, 1], [0, 1, 0]]
        assert batch["dense"].dtype == torch.float32 and batch["row"].tolist() == [0, 1]
        wide = Collator(pad_token_id=0, pad_to_multiple_of=8)([dataset[0]])
        assert wide["inputs"]["input_ids"].shape == (1, 8)

    def test_loader_iteration_leaves_the_global_rng_alone(self) -> None:
        tokens = Tokenized([np.asarray([1, 2], np.int32)] * 6, None)
        loader = make_loader(PairDataset(tokens, np.zeros(6), None), BucketBatchSampler(tokens.lengths, 2, 0),
                             Collator(0))
        torch.manual_seed(0)
        before = torch.get_rng_state()
        list(loader)
        assert torch.equal(before, torch.get_rng_state())

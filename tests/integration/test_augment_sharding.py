"""Sharding, resume and reproducibility, with the entry point run as one subprocess per shard, as the
Indexed Job runs it: shards cover every row once, a killed shard is redone on retry while finished
shards are skipped, the run commits once all have, and the same input, configuration and seed give
byte-identical parts (another seed does not)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_support import (
    generated,
    job_env,
    manifest,
    output_rows,
    part_bytes,
    put,
    qbqtc_lines,
    run_all_shards,
    spec,
    start_subprocess,
)

from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}
AUGMENTERS: list[dict[str, Any]] = [
    {"type": "randomSwap"},
    {"type": "randomDelete", "fraction": 0.5},
    {"type": "hardNegative", "perQuery": 1, "fraction": 0.2},
]


def _upload_two_objects(s3: Minio, bucket: str, rows_each: int) -> str:
    put(s3, bucket, "qbqtc/part-a.jsonl", b"\n".join(qbqtc_lines(rows_each)) + b"\n")
    put(s3, bucket, "qbqtc/part-b.jsonl", b"\n".join(qbqtc_lines(rows_each, start=rows_each)) + b"\n")
    put(s3, bucket, "qbqtc/_SUCCESS", b"")  # a marker file, skipped like Spark's
    return f"s3://{bucket}/qbqtc/"


def _wait_for_progress(log: Path, process: Any, timeout: float = 240.0) -> dict[str, Any]:
    """The first heartbeat of the shard pass that reports some, but not all, rows done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the shard ended before it could be killed:\n{log.read_text()[-3000:]}"
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"progress"' in line:
                beat = json.loads(line).get("heartbeat", {})
                if beat.get("total") and 0 < beat.get("done", 0) < beat["total"]:
                    return dict(beat)
        time.sleep(0.05)
    raise AssertionError(f"no mid-way progress within {timeout}s:\n{log.read_text()[-3000:]}")


def _comparable(found: dict[str, Any]) -> dict[str, Any]:
    keep = ("files", "rowsRead", "rowsIn", "rowsOut", "generatedRows", "rejectedRows", "augmenters", "filters",
            "labelDistribution", "firstPass", "seed", "shards", "codeVersion", "examples")
    return {k: found[k] for k in keep}


def test_three_shards_killed_shard_resumes_to_the_uninterrupted_output(testbed: Testbed, s3: Minio, bucket: str,
                                                                       tmp_path: Path) -> None:
    source = _upload_two_objects(s3, bucket, 4500)
    reference = spec(bucket, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out="uninterrupted/", parallelism=3)
    run_all_shards(testbed, reference, tmp_path / "cache-ref", shards=3)
    expected = manifest(s3, bucket, "uninterrupted/")

    resumed = spec(bucket, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out="resumed/", parallelism=3)
    logs = {i: tmp_path / f"shard-{i}.log" for i in range(3)}
    procs = {i: start_subprocess(job_env(testbed, resumed, tmp_path / f"cache-{i}", i, 3, heartbeat_interval=0.1),
                                 logs[i]) for i in range(3)}
    beat = _wait_for_progress(logs[1], procs[1])
    procs[1].kill()
    assert procs[1].wait(timeout=60) != 0
    for i in (0, 2):
        assert procs[i].wait(timeout=300) == 0, logs[i].read_text()[-3000:]
    assert beat["shard"] == 1 and beat["shards"] == 3

    # Shards 0 and 2 committed; shard 1 did not, so neither did the run.
    keys = {o.object_name for o in s3.list_objects(bucket, prefix="resumed/", recursive=True)}
    assert {"resumed/_shards/0.json", "resumed/_shards/2.json"} <= keys
    assert "resumed/_shards/1.json" not in keys and "resumed/manifest.json" not in keys
    assert "waiting for other shards" in logs[0].read_text() + logs[2].read_text()
    # Leftovers of the killed attempt (here: a half-written part) must not survive into the output.
    put(s3, bucket, "resumed/data/part-00001-00000.parquet", b"PAR1 half written")

    # The Job retries shard 1 (and, for good measure, shard 0 again: it must skip its work).
    retry = start_subprocess(job_env(testbed, resumed, tmp_path / "cache-1", 1, 3), tmp_path / "retry-1.log")
    assert retry.wait(timeout=300) == 0, (tmp_path / "retry-1.log").read_text()[-3000:]
    again = start_subprocess(job_env(testbed, resumed, tmp_path / "cache-0", 0, 3), tmp_path / "again-0.log")
    assert again.wait(timeout=300) == 0
    assert "already committed" in (tmp_path / "again-0.log").read_text()

    found = manifest(s3, bucket, "resumed/")
    assert _comparable(found) == _comparable(expected)
    assert part_bytes(s3, bucket, "resumed/") == part_bytes(s3, bucket, "uninterrupted/")
    rows = output_rows(s3, bucket, "resumed/")
    sources = [r["sf_source_row"] for r in rows if r["sf_origin"] == "source"]
    assert sorted(sources) == list(range(9000)), "every source row exactly once across the shards"
    assert [f["path"] for f in found["files"]] == [f"data/part-0000{i}-00000.parquet" for i in range(3)]
    assert [s["shard"] for s in found["timings"]["shards"]] == [0, 1, 2]
    assert [o["records"] for o in found["source"]["objects"]] == [4500, 4500]
    assert Counter(r["sf_augmenter"] for r in generated(rows)) == Counter(
        {name: info["kept"] for name, info in found["augmenters"].items() if info["kept"]})


def test_same_seed_same_bytes_other_seed_other_rows_and_shard_count_independence(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    uri = put(s3, bucket, "qbqtc/train.jsonl", b"\n".join(qbqtc_lines(900)) + b"\n")
    text_edits: list[dict[str, Any]] = [{"type": "randomSwap", "fields": ["query", "item"]},
                                        {"type": "randomDelete", "fraction": 0.5, "perRow": 2}]
    run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": COLUMNS}, text_edits, out="a/", seed=11),
                   tmp_path / "a")
    run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": COLUMNS}, text_edits, out="b/", seed=11),
                   tmp_path / "b")
    run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": COLUMNS}, text_edits, out="c/", seed=12),
                   tmp_path / "c")
    run_all_shards(testbed, spec(bucket, {"uri": uri, "columns": COLUMNS}, text_edits, out="d/", seed=11,
                                 parallelism=3), tmp_path / "d", shards=3)
    a, b, c = (part_bytes(s3, bucket, p) for p in ("a/", "b/", "c/"))
    assert a == b, "same input, configuration and seed must give byte-identical parts"
    assert a.keys() == c.keys() and a != c

    def edits(prefix: str) -> set[tuple[Any, ...]]:
        return {(r["sf_source_row"], r["sf_augmenter"], r["query"], r["title"])
                for r in generated(output_rows(s3, bucket, prefix))}

    seed_11, seed_12 = edits("a/"), edits("c/")
    assert len(seed_11 & seed_12) < 0.5 * len(seed_11), "another seed must give other edits"
    # A row's edits depend on (seed, augmenter, row), not on the shard it lands in.
    assert edits("d/") == seed_11

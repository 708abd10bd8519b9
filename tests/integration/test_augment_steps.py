"""A run of several shards as the operator runs it, each step a process of its own (the analysis, the
shards, the reduce), against a run of one shard on the same data:

* the output rows of 3 shards equal those of 1 shard, row for row (source rows and generated rows each
  in the same order), although shards generate the same rows (the source repeats itself in each
  shard's range): the reduce removed exactly the duplicates one shard's own dedup removes, and the
  manifests' counts agree;
* the analysis ran once: every shard read the committed analysis and about a third of the source
  bytes, never the whole source;
* a shard redone after a failure reads the analysis again and never changes it, and gives the same
  bytes; the reduce is idempotent when retried;
* a shards step with no analysis committed fails as a configuration error that says to run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_support import job_env, manifest, output_rows, put, qbqtc_lines, run_job, run_steps, spec

from sampleforge.api import jobenv
from sampleforge.api.constants import Step
from sampleforge.jobs.augment.source import CHECKPOINT_INTERVAL
from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

COLUMNS = {"query": "query", "item": "title", "label": "label", "id": "id"}
#: Short Chinese queries give random swaps and deletions few outcomes, so copies of a row in other
#: shards generate the same rows; hard negatives for the same query repeat too.
AUGMENTERS: list[dict[str, Any]] = [
    {"type": "randomSwap"},
    {"type": "randomDelete", "fraction": 0.5},
    {"type": "hardNegative", "perQuery": 1, "fraction": 0.5},
]
FILTERS = {"dedup": {"method": "exact"}}
COPIES = 3
ROWS = 120


def _source(s3: Minio, bucket: str) -> tuple[str, int]:
    """The same 120 QBQTC rows three times over (ids made unique), in two objects; the bytes in all.
    Each record carries 32 KiB of notes that no role reads: 11 MiB in all, so that a shard's ranged
    read (entered at checkpoints about 1 MiB apart) is visibly a third of the source."""
    lines = qbqtc_lines(ROWS)
    rows = []
    for copy in range(COPIES):
        for line in lines:
            record = json.loads(line)
            record["id"] = f"{record['id']}-{copy}"
            record["notes"] = "n" * 32768
            rows.append(json.dumps(record, ensure_ascii=False).encode())
    half = len(rows) // 2
    first, second = b"\n".join(rows[:half]) + b"\n", b"\n".join(rows[half:]) + b"\n"
    put(s3, bucket, "src/a.jsonl", first)
    put(s3, bucket, "src/b.jsonl", second)
    return f"s3://{bucket}/src/", len(first) + len(second)


def _step_env(testbed: Testbed, run_spec: dict[str, Any], cache: Path, step: Step, shard: int = 0,
              shards: int = 3) -> dict[str, str]:
    return job_env(testbed, run_spec, cache, shard, shards, step=step)


def _rows(s3: Minio, bucket: str, out: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The source rows and the generated rows written, each in the order written. A part holds a
    batch's source rows, then its generated rows; batches end at shard ends, so the two interleave
    differently for another shard count, but each stays in row order."""
    rows = output_rows(s3, bucket, out)
    return [r for r in rows if r["sf_origin"] == "source"], [r for r in rows if r["sf_origin"] != "source"]


def _marker(s3: Minio, bucket: str, out: str, shard: int) -> dict[str, Any]:
    return dict(json.loads(s3.get_object(bucket, f"{out}_shards/{shard}.json").read()))


def test_three_shards_in_steps_equal_one_shard_with_cross_shard_duplicates_removed(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    source, size = _source(s3, bucket)
    one = spec(bucket, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out="one/", filters=FILTERS)
    three = spec(bucket, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out="three/", filters=FILTERS)
    assert run_job(job_env(testbed, one, tmp_path / "one")) == 0
    run_steps(testbed, three, tmp_path / "three", shards=3)

    assert _rows(s3, bucket, "three/") == _rows(s3, bucket, "one/")
    m1, m3 = manifest(s3, bucket, "one/"), manifest(s3, bucket, "three/")
    assert m3["shards"] == 3
    assert m3["crossShardDedup"]["removed"] > 0, "the data must make shards generate the same rows"
    for key in ("rowsIn", "rowsOut", "generatedRows", "filters", "labelDistribution"):
        assert m3[key] == m1[key], key
    assert {n: a["kept"] for n, a in m3["augmenters"].items()} == {n: a["kept"] for n, a in m1["augmenters"].items()}
    # The manifest shows only examples that are in the output: none the reduce removed.
    written = {(r["query"], r["title"], r["sf_source_row"]) for r in output_rows(s3, bucket, "three/")
               if r["sf_origin"] == "generated"}
    shown = [(e["generated"]["query"], e["generated"]["item"], e["sourceRow"]) for e in m3["examples"]]
    assert shown and [e for e in shown if e not in written] == []
    assert len(shown) < sum(len(_marker(s3, bucket, "three/", i)["examples"]) for i in range(3))

    index = s3.get_object(bucket, "three/_analysis/index.json").read()
    artifact = len(index) + sum(int(f["size"]) for f in json.loads(index)["files"])
    for shard in range(3):
        read = _marker(s3, bucket, "three/", shard)["bytesRead"]
        assert read["analysis"] == artifact
        # Its third of the source, and at most a checkpoint interval on either side.
        assert read["source"] <= 1.1 * size / 3 + 2 * CHECKPOINT_INTERVAL, (shard, read, size)


def test_a_redone_shard_reuses_the_analysis_and_gives_the_same_bytes(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path) -> None:
    source, _ = _source(s3, bucket)
    run_spec = spec(bucket, {"uri": source, "columns": COLUMNS}, AUGMENTERS, out="out/", filters=FILTERS)
    cache = tmp_path / "cache"
    # A shards step before any analysis: a configuration error (exit 2) that names the step to run.
    assert run_job(_step_env(testbed, run_spec, cache, Step.SHARDS, 1)) == jobenv.EXIT_INVALID_CONFIG

    assert run_job(_step_env(testbed, run_spec, cache, Step.ANALYSIS)) == 0
    index = s3.stat_object(bucket, "out/_analysis/index.json")
    for shard in range(3):
        assert run_job(_step_env(testbed, run_spec, cache, Step.SHARDS, shard)) == 0
    before = {o.object_name: o.etag for o in s3.list_objects(bucket, "out/data/", recursive=True)}
    # Shard 1 failed after committing (its marker lost): redone, it reads the same analysis.
    s3.remove_object(bucket, "out/_shards/1.json")
    assert run_job(_step_env(testbed, run_spec, cache, Step.SHARDS, 1)) == 0
    assert s3.stat_object(bucket, "out/_analysis/index.json").last_modified == index.last_modified
    assert {o.object_name: o.etag for o in s3.list_objects(bucket, "out/data/", recursive=True)} == before
    # The analysis step again (a retried Job): nothing is redone.
    assert run_job(_step_env(testbed, run_spec, cache, Step.ANALYSIS)) == 0
    assert s3.stat_object(bucket, "out/_analysis/index.json").last_modified == index.last_modified

    assert run_job(_step_env(testbed, run_spec, cache, Step.REDUCE)) == 0
    committed = output_rows(s3, bucket, "out/")
    assert run_job(_step_env(testbed, run_spec, cache, Step.REDUCE)) == 0  # already committed: nothing to do
    assert output_rows(s3, bucket, "out/") == committed

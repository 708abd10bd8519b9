"""``llmJudge`` through the real job entry point, against a real model server and the real MinIO.

The judge is llama.cpp's OpenAI-compatible server (the ``llm_server`` fixture, SmolLM2-135M-Instruct,
demanding an API key); the data are real Walmart-Amazon product pairs (label 0/1: a numeric scale).
A 135M model grades poorly, so nothing here is about accuracy: the tests check the mechanics (what
was graded, kept, dropped and relabelled, the provenance columns, the manifest's counts) and their
consistency: the same seed asks the same questions, so filter mode drops exactly the rows relabel
mode relabels; a sharded run's manifest sums every shard's figures; a rerun is answered from the
generation cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_openai import openai_settings
from test_augment_support import (
    generated,
    job_env,
    manifest,
    output_rows,
    parquet_bytes,
    put,
    run_job,
    spec,
    walmart_rows,
)

from sampleforge.api import jobenv
from sampleforge.jobs.augment.grading import DISAGREES
from sampleforge.testbed import LlamaCppServer, Testbed

pytestmark = pytest.mark.integration

COLUMNS = {"query": "query", "item": "title", "label": "label", "attributes": ["brand"], "id": "pair_id"}


def _augmenters(server: LlamaCppServer, mode: str) -> list[dict[str, Any]]:
    return [{"type": "typo", "fraction": 0.5, "maxRows": 14, "charFraction": 0.1},
            {"type": "llmJudge", "mode": mode, "model": server.model, "engine": "openai", "maxNewTokens": 6,
             "openai": openai_settings(server)}]


def _run(testbed: Testbed, run_spec: dict[str, Any], cache: Path, key: str, shards: int = 1) -> None:
    for shard in range(shards):
        assert run_job(job_env(testbed, run_spec, cache / str(shard), shard, shards, llm_api_keys={1: key})) == 0


def _graded(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["pair_id"]: r for r in generated(rows, "typo") if r["sf_judge_label"] is not None}


@pytest.fixture
def pairs(s3: Minio, bucket: str) -> str:
    return put(s3, bucket, "walmart/pairs.parquet", parquet_bytes(walmart_rows("train", 40)))


def test_the_judge_filters_and_relabels_consistently_and_records_it(
        testbed: Testbed, llm_server: LlamaCppServer, s3: Minio, bucket: str, tmp_path: Path, pairs: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    key = str(llm_server.api_key)
    monkeypatch.setenv(jobenv.llm_api_key_env(1), key)
    source = {"uri": pairs, "columns": COLUMNS}
    # Filter mode, in two shards; relabel mode, in one: the same seed, so the same questions.
    _run(testbed, spec(bucket, source, _augmenters(llm_server, "filter"), out="filter/", parallelism=2),
         tmp_path / "filter", key, shards=2)
    _run(testbed, spec(bucket, source, _augmenters(llm_server, "relabel"), out="relabel/"), tmp_path / "relabel", key)

    filtered, relabelled = output_rows(s3, bucket, "filter/"), output_rows(s3, bucket, "relabel/")
    found = {"filter": manifest(s3, bucket, "filter/"), "relabel": manifest(s3, bucket, "relabel/")}
    counts = {mode: m["augmenters"]["llmJudge"]["judge"] for mode, m in found.items()}
    for mode, c in counts.items():
        # The built-in rubric's example turns make even this model answer with a grade, mostly.
        assert c["judged"] > 0 and c["asked"] == c["judged"] + sum(c["failed"].values()), (mode, c)
        assert c["judged"] == c["agreed"] + c["disagreed"] == sum(sum(r.values()) for r in c["confusion"].values())
        assert set(c["failed"]) <= {"no grade in the answer", "grade off the label scale", "empty answer"}, c
        assert c["agreementRate"] == (round(c["agreed"] / c["judged"], 4) if c["judged"] else None)
        summary = found[mode]["augmenters"]["llmJudge"]["summary"]
        assert summary["engine"] == "openai" and summary["mode"] == mode and summary["scale"] == ["0", "1"]
        assert summary["cache"]["misses"] == c["asked"] and summary["failed"] == {}, summary  # every shard counted
        assert 0 < summary["requests"] <= c["asked"]
    assert found["filter"]["augmenters"]["llmJudge"]["summary"]["shards"] == 2
    assert len(found["filter"]["augmenters"]["llmJudge"]["summary"]["loadSecondsPerShard"]) == 2
    assert found["filter"]["provenanceColumns"]["sf_judge_label"]

    # The same questions, the same answers: the modes differ only in what a disagreement does.
    assert {k: counts["filter"][k] for k in ("asked", "judged", "agreed", "disagreed", "failed", "confusion")} == \
        {k: counts["relabel"][k] for k in ("asked", "judged", "agreed", "disagreed", "failed", "confusion")}
    assert counts["filter"]["dropped"] == counts["filter"]["disagreed"] and counts["filter"]["relabelled"] == 0
    assert counts["relabel"]["relabelled"] == counts["relabel"]["disagreed"] and counts["relabel"]["dropped"] == 0
    assert found["filter"]["filters"].get("llmJudge", {}) == ({DISAGREES: counts["filter"]["dropped"]}
                                                              if counts["filter"]["dropped"] else {})
    typo = {mode: m["augmenters"]["typo"] for mode, m in found.items()}
    assert typo["filter"]["kept"] == typo["relabel"]["kept"] - counts["filter"]["dropped"]

    # Provenance: source rows are never graded; graded rows carry the grade (in the label's type) and
    # whether it agreed; filter mode keeps only agreements, relabel mode gives disagreements the grade.
    for rows in (filtered, relabelled):
        assert all(r["sf_judge_label"] is None and r["sf_judge_agrees"] is None
                   for r in rows if r["sf_origin"] == "source")
        assert all(isinstance(r["sf_judge_label"], int) for r in _graded(rows).values())
    kept = _graded(filtered)
    assert len(kept) == counts["filter"]["agreed"]
    assert all(r["sf_judge_agrees"] is True and r["label"] == r["sf_judge_label"] for r in kept.values())
    graded = _graded(relabelled)
    assert len(graded) == counts["relabel"]["judged"]
    moved = {k: r for k, r in graded.items() if r["sf_label_rule"] == "judge"}
    assert len(moved) == counts["relabel"]["relabelled"]
    assert all(r["sf_judge_agrees"] is False and r["label"] == r["sf_judge_label"] for r in moved.values())
    assert all(r["sf_judge_agrees"] is True for k, r in graded.items() if k not in moved)
    assert set(kept) == set(graded) - set(moved)  # the rows filter mode kept are relabel mode's agreements
    ungraded = [r for r in generated(relabelled, "typo") if r["sf_judge_label"] is None]
    assert len(ungraded) == sum(counts["relabel"]["failed"].values())
    assert all(r["sf_label_rule"] == "keep" and r["sf_judge_agrees"] is None for r in ungraded)  # never relabelled

    # A rerun (the spec edited before the run committed) asks the judge nothing: the cache answers.
    s3.remove_object(bucket, "relabel/manifest.json")
    again = spec(bucket, source, _augmenters(llm_server, "relabel"), out="relabel/")
    again["output"]["format"] = "jsonl"
    _run(testbed, again, tmp_path / "again", key)
    rerun = manifest(s3, bucket, "relabel/")["augmenters"]["llmJudge"]
    assert rerun["judge"] == found["relabel"]["augmenters"]["llmJudge"]["judge"]
    assert rerun["summary"]["cache"]["hits"] == counts["relabel"]["asked"] and rerun["summary"]["requests"] == 0

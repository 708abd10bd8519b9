"""A sharded run's manifest combines the engine figures of every shard (not shard 0's alone), and
carries an llmJudge's counts, agreement rate and kappa summed over shards."""

from __future__ import annotations

import copy
from typing import Any

from sampleforge.jobs.augment.commit import assemble_manifest, combine_engine_summaries
from sampleforge.jobs.augment.report import render_report

SHARED: dict[str, Any] = {
    "run": {"kind": "AugmentationRun", "name": "shoes", "namespace": "search-ml", "uid": "u"},
    "format": "parquet", "columns": {"query": "q", "item": "title", "label": "grade"},
    "augmenters": {"typo": {"type": "typo", "labelRule": "keep"}}, "filterNotes": {}, "evalSplit": None,
    "source": {"uri": "s3://d/train/", "format": None, "objects": []}, "firstPass": {"records": 10},
    "preprocess": None, "config": {"seed": 3}, "seed": 3, "sharding": "ranges",
    "codeVersion": {"package": "0.1.0", "sourceDigest": "abc", "pyarrow": "26"},
}


def _marker(shard: int) -> dict[str, Any]:
    return {
        "shard": shard, "shards": 2, "fingerprint": "fp", "configFingerprint": "cfp",
        "files": [{"path": f"data/part-{shard:05d}-00000.parquet", "size": 100, "sha256": "h", "rows": 9}],
        "rejects": None,
        "counts": {"rowsRead": 5, "rowsIn": 4, "generatedKept": 5, "rejectedRows": 0, "rejectReasons": {},
                   "augmenters": {"typo": {"produced": 1, "kept": 1, "dropped": {}, "sourceRowsRemoved": 0}},
                   "filtered": {}, "redactions": {}, "labelsBefore": {"0": 2, "2": 3}, "labelsAfter": {"0": 4, "2": 5},
                   "sourceRowsInEvalSplit": 0, "sourceRowsDropped": {}},
        "examples": [], "timings": {"totalSeconds": 1.0}, "shared": SHARED,
    }


def _openai(shard: int) -> dict[str, Any]:
    """One shard's openai engine summary, shaped as EngineStats.summary() (+ the cache's) writes it."""
    return {"engine": "openai", "model": "smollm2", "loadSeconds": 0.5 + shard, "generationSeconds": 10.0 + 10 * shard,
            "requests": 20 + shard, "generated": 19 + shard, "generatedPerSecond": round((19 + shard) / (10.0 + 10 * shard), 3),
            "httpAttempts": 22 + shard, "retries": shard, "failed": {"HTTP 500": 1} if shard == 0 else {"timeout": 2},
            "completionTokens": 100 * (shard + 1), "latencySeconds": {"p50": 0.4 + shard, "p99": 1.0 + shard},
            "cache": {"hits": 3 * shard, "misses": 20 + shard, "prefix": "s3://d/out/_cache/generation/"}}


def test_engine_figures_are_summed_over_shards() -> None:
    combined = combine_engine_summaries([_openai(0), _openai(1), _openai(2)])
    assert combined["engine"] == "openai" and combined["model"] == "smollm2" and combined["shards"] == 3
    assert combined["requests"] == 63 and combined["generated"] == 60 and combined["httpAttempts"] == 69
    assert combined["retries"] == 3 and combined["completionTokens"] == 600
    assert combined["failed"] == {"HTTP 500": 1, "timeout": 4}
    assert combined["generationSeconds"] == 60.0 and combined["generatedPerSecond"] == 1.0  # 60 rows / 60 s
    assert combined["loadSeconds"] == 2.5 and combined["loadSecondsPerShard"] == [0.5, 1.5, 2.5]
    assert combined["latencySeconds"] == {"p50": 2.4, "p99": 3.0}  # the worst shard's
    assert combined["cache"] == {"hits": 9, "misses": 63, "prefix": "s3://d/out/_cache/generation/", "shards": 3}
    # One shard: its own figures, unchanged.
    assert combine_engine_summaries([_openai(1)]) == _openai(1)


def test_backtranslation_reverse_engine_and_transformers_figures_combine_too() -> None:
    def transformers(shard: int) -> dict[str, Any]:
        return {"engine": "transformers", "model": "m", "loadSeconds": 26.0 + shard, "generationSeconds": 4.0,
                "requests": 8, "generated": 8, "generatedPerSecond": 2.0,
                "reverse": {"engine": "transformers", "model": "r", "loadSeconds": 3.0, "generationSeconds": 2.0,
                            "requests": 8, "generated": 8, "generatedPerSecond": 4.0}}

    combined = combine_engine_summaries([transformers(0), transformers(1)])
    assert combined["loadSeconds"] == 27.0 and combined["generated"] == 16 and combined["generatedPerSecond"] == 2.0
    assert combined["reverse"]["generated"] == 16 and combined["reverse"]["loadSecondsPerShard"] == [3.0, 3.0]


def _sharded_markers() -> list[dict[str, Any]]:
    shared = copy.deepcopy(SHARED)
    shared["augmenters"]["rewrite"] = {"type": "paraphrase", "labelRule": "keep", "summary": _openai(0)}
    shared["augmenters"]["judge"] = {"type": "llmJudge", "labelRule": "judge",
                                     "summary": {**_openai(0), "mode": "filter", "scale": ["0", "2", "10"]}}
    markers = []
    for shard in range(2):
        marker = _marker(shard)
        marker["shared"] = shared
        marker["counts"]["augmenters"]["rewrite"] = {"produced": 5, "kept": 4, "sourceRowsRemoved": 0,
                                                     "dropped": {"judge": {"judge disagrees with the label": 1}}}
        marker["counts"]["judges"] = {"judge": {
            "asked": 6, "judged": 5, "agreed": 4, "disagreed": 1, "dropped": 1, "relabelled": 0,
            "failed": {"no grade in the answer": 1},
            "confusion": {"2": {"2": 4, "0": 1}} if shard == 0 else {"0": {"0": 4}, "2": {"10": 1}}}}
        marker["engines"] = {"rewrite": _openai(shard), "judge": {**_openai(shard), "mode": "filter",
                                                                  "scale": ["0", "2", "10"]}}
        markers.append(marker)
    return markers


def test_the_manifest_of_a_sharded_run_combines_every_shard() -> None:
    manifest = assemble_manifest(_sharded_markers())
    rewrite = manifest["augmenters"]["rewrite"]["summary"]
    assert rewrite["requests"] == 41 and rewrite["generated"] == 39 and rewrite["shards"] == 2
    assert rewrite["loadSecondsPerShard"] == [0.5, 1.5] and rewrite["generatedPerSecond"] == 1.3
    judge = manifest["augmenters"]["judge"]
    assert judge["summary"]["mode"] == "filter" and judge["summary"]["scale"] == ["0", "2", "10"]
    assert judge["summary"]["requests"] == 41
    assert judge["judge"]["asked"] == 12 and judge["judge"]["judged"] == 10 and judge["judge"]["agreed"] == 8
    assert judge["judge"]["dropped"] == 2 and judge["judge"]["failed"] == {"no grade in the answer": 2}
    assert judge["judge"]["agreementRate"] == 0.8
    assert judge["judge"]["confusion"] == {"0": {"0": 4}, "2": {"0": 1, "10": 1, "2": 4}}
    assert judge["judge"]["cohensKappa"] is not None and 0 < judge["judge"]["cohensKappa"] < 1
    report = render_report(manifest)
    assert "### judge" in report and "- agreementRate: 0.8" in report


def test_markers_without_engine_figures_keep_shard_0s_summary() -> None:
    markers = _sharded_markers()
    del markers[1]["engines"]
    manifest = assemble_manifest(markers)
    assert manifest["augmenters"]["rewrite"]["summary"] == _openai(0)

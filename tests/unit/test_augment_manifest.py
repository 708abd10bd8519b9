"""Assembling the run's manifest from the shard markers, and the report rendered from it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sampleforge.jobs.augment.commit import assemble_manifest, digest
from sampleforge.jobs.augment.output import output_schema
from sampleforge.jobs.augment.report import render_report
from sampleforge.jobs.augment.rows import PROVENANCE_COLUMNS, ColumnRoles

SHARED: dict[str, Any] = {
    "run": {"kind": "AugmentationRun", "name": "shoes", "namespace": "search-ml", "uid": "u"},
    "format": "parquet",
    "columns": {"query": "q", "item": "title", "label": "grade"},
    "augmenters": {"typo": {"type": "typo", "labelRule": "keep"},
                   "negatives": {"type": "hardNegative", "labelRule": "assign"}},
    "filterNotes": {"labelConsistency": "skipped: no teacher model given"},
    "evalSplit": {"uri": "s3://d/eval.parquet", "rows": 50},
    "source": {"uri": "s3://d/train/", "format": None, "objects": [{"uri": "s3://d/train/a.parquet", "etag": "e1",
                                                                    "size": 10, "format": "parquet", "records": 7}]},
    "firstPass": {"records": 7}, "preprocess": None, "config": {"seed": 3}, "seed": 3, "sharding": "ranges",
    "codeVersion": {"package": "0.1.0", "sourceDigest": "abc", "pyarrow": "26"},
}


def _marker(shard: int, **counts: Any) -> dict[str, Any]:
    return {
        "shard": shard, "shards": 2, "fingerprint": "fp", "configFingerprint": "cfp",
        "files": [{"path": f"data/part-{shard:05d}-00000.parquet", "size": 100 + shard, "sha256": f"h{shard}",
                   "rows": counts["rows"]}],
        "rejects": {"path": f"rejects/shard-{shard:05d}.jsonl", "size": 5, "sha256": "r", "rows": counts["rejected"]}
        if counts["rejected"] else None,
        "counts": {
            "rowsRead": counts["read"], "rowsIn": counts["rows_in"], "generatedKept": counts["rows"] - counts["rows_in"],
            "rejectedRows": counts["rejected"], "rejectReasons": {"invalid JSON": counts["rejected"]},
            "augmenters": {"typo": {"produced": 4, "kept": 3, "dropped": {"dedup": {"duplicates a source row": 1}},
                                    "sourceRowsRemoved": 0},
                           "negatives": {"produced": 2, "kept": 2, "dropped": {}, "sourceRowsRemoved": 0}},
            "filtered": {"dedup": {"duplicates a source row": 1}},
            "redactions": {"email": shard},
            "labelsBefore": {"10": 1, "2": 2, "0": 1}, "labelsAfter": {"10": 1, "2": 4, "0": 3},
            "sourceRowsInEvalSplit": 1, "sourceRowsDropped": {"query in eval split": 1},
        },
        "examples": [{"augmenter": "typo", "sourceRow": shard, "source": {"query": "nike", "item": "Air | Max",
                                                                         "label": 2},
                      "generated": {"query": "nkie", "item": "Air | Max", "label": 2}}],
        "timings": {"firstPassSeconds": 1.0, "processSeconds": 2.0 + shard, "totalSeconds": 3.0 + shard},
        "shared": SHARED,
    }


def test_markers_are_summed_and_shared_facts_taken_once() -> None:
    when = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    manifest = assemble_manifest([_marker(0, rows=9, rows_in=4, read=5, rejected=1),
                                  _marker(1, rows=8, rows_in=3, read=3, rejected=0)], committed_at=when)
    assert manifest["committedAt"] == "2026-11-28T12:00:00+00:00"
    assert [f["path"] for f in manifest["files"]] == ["data/part-00000-00000.parquet", "data/part-00001-00000.parquet"]
    assert manifest["rowsOut"] == 17 and manifest["rowsIn"] == 7 and manifest["rowsRead"] == 8
    assert manifest["generatedRows"] == 10 and manifest["rejectedRows"] == 1
    assert manifest["rejects"] == {"rows": 1, "reasons": {"invalid JSON": 1},
                                   "files": [{"path": "rejects/shard-00000.jsonl", "size": 5, "sha256": "r",
                                              "rows": 1}]}
    assert manifest["augmenters"]["typo"] == {"type": "typo", "labelRule": "keep", "produced": 8, "kept": 6,
                                              "dropped": {"dedup": {"duplicates a source row": 2}},
                                              "sourceRowsRemoved": 0}
    assert manifest["filters"] == {"dedup": {"duplicates a source row": 2}}
    assert manifest["redactions"] == {"email": 1}
    # Numeric labels in numeric order (not "0", "10", "2").
    assert list(manifest["labelDistribution"]["before"]) == ["0", "2", "10"]
    assert manifest["labelDistribution"]["after"] == {"0": 6, "2": 8, "10": 2}
    assert manifest["evalSplit"] == {"uri": "s3://d/eval.parquet", "rows": 50, "sourceRowsInEvalSplit": 2,
                                     "sourceRowsDropped": {"query in eval split": 2}}
    assert manifest["timings"]["slowestShardSeconds"] == 4.0
    assert manifest["shards"] == 2 and manifest["seed"] == 3 and manifest["fingerprint"] == "fp"
    assert manifest["provenanceColumns"] == dict(PROVENANCE_COLUMNS)
    assert len(manifest["examples"]) == 2


def test_no_markers_no_manifest() -> None:
    with pytest.raises(ValueError):
        assemble_manifest([])


def test_report_shows_distribution_augmenters_filters_and_examples() -> None:
    manifest = assemble_manifest([_marker(0, rows=9, rows_in=4, read=5, rejected=1)])
    report = render_report(manifest)
    assert report.startswith("# Augmentation report: search-ml/shoes")
    assert "| 2 | 2 | 50.0 % | 4 | 50.0 % |" in report
    assert "| negatives | hardNegative | assign | 2 | 2 | – |" in report
    assert "| dedup | duplicates a source row | 1 |" in report
    assert "| typo | nike | Air \\| Max | nkie | Air \\| Max | 2 → 2 |" in report
    assert "labelConsistency: skipped" in report and "| invalid JSON | 1 |" in report
    assert "1 source rows match what it holds out, 1 of them dropped" in report
    assert "| query in eval split | 1 |" in report and "never filtered" not in report


def test_output_schema_and_digest() -> None:
    roles = ColumnRoles(query="q", item="t", label="y", attributes=("brand",), dense=("price",), image="img", id="id")
    schema = output_schema(roles, "int")
    assert schema.names == ["id", "q", "t", "y", "brand", "price", "img", *PROVENANCE_COLUMNS]
    assert str(schema.field("y").type) == "int64" and str(schema.field("price").type) == "double"
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1}) != digest({"a": [2, 1], "b": 1})


def test_an_augmenter_summary_reaches_the_manifest_and_report() -> None:
    shared = {**SHARED, "augmenters": {**SHARED["augmenters"], "synth": {
        "type": "gan", "labelRule": "condition",
        "summary": {"trainingSeconds": 1.5, "fidelity": {"classifierAuc": 0.5312,
                                                         "wasserstein1": {"perFeature": {f"f{i}": 0.1 for i in range(30)}}}}}}}
    marker = _marker(0, rows=9, rows_in=4, read=5, rejected=0)
    marker["shared"] = shared
    marker["counts"]["augmenters"]["synth"] = {"produced": 3, "kept": 2, "sourceRowsRemoved": 0,
                                               "dropped": {"notGenerated": {"image not found": 1}}}
    manifest = assemble_manifest([marker])
    synth = manifest["augmenters"]["synth"]
    assert synth["summary"]["fidelity"]["classifierAuc"] == 0.5312 and synth["kept"] == 2
    assert "summary" not in manifest["augmenters"]["typo"]
    report = render_report(manifest)
    assert "### synth" in report and "- classifierAuc: 0.5312" in report and "- trainingSeconds: 1.5" in report
    assert "- f19: 0.1" in report and "f20" not in report and "(10 more in manifest.json)" in report
    assert "| synth | gan | condition | 3 | 2 | notGenerated: 1 |" in report

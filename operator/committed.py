"""What a finished run committed to MinIO: the only source of a Succeeded run's results.

Heartbeats are progress reports, sent while the work goes on; they can arrive late, out of order or
not at all (the operator was down when the last shard finished). A run's final status is therefore
read from the objects its Job committed: ``manifest.json`` (the commit itself; an AugmentationRun's
counts) and, for a FineTuneRun, ``metrics.json`` beside it. What the status shows then equals what a
reader of the output finds.

The run's storage credentials are read from its Secret for this one read and dropped afterwards;
nothing here logs or returns them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error
from pydantic import ValidationError

from sampleforge.api import Kind, s3auth
from sampleforge.api.common import Storage
from sampleforge.api.manifest import CommittedCounts, describe
from sampleforge.api.status import AugmentationResults, FineTuneResults, RunOutputs

MANIFEST = "manifest.json"
METRICS = "metrics.json"
#: Objects this large are not a manifest or metrics file: refuse rather than load them.
MAX_DOCUMENT_BYTES = 32 * 1024 * 1024
#: S3 error codes that say the object or bucket is not there (as opposed to "try again").
_ABSENT = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject"})


class NotCommitted(Exception):
    """The Job finished but the object that commits its output is not there (or is not this run's)."""


class Unreachable(Exception):
    """MinIO could not be asked (down, refused the credentials, answered garbage): try again later."""


@dataclass(frozen=True)
class Committed:
    """A finished run's results, as committed: status.results and the progress totals."""

    results: AugmentationResults | FineTuneResults
    rows: int | None = None
    #: status.outputs entries for what the manifest vouches for (report, metrics, model card, rejects).
    outputs: RunOutputs = field(default_factory=RunOutputs)


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def storage_client(storage: Storage, access_key: str | None, secret_key: str | None, *, ca_pem: str | None = None,
                   timeout: float = 15.0) -> Minio:
    """A client with short timeouts and no retries of its own: the monitor decides when to retry.
    Without keys it signs in with the operator's own AWS chain (sampleforge.api.s3auth)."""
    return s3auth.client(storage, access_key, secret_key, http=s3auth.http_client(ca_pem, timeout=timeout))


def read_json(s3: Minio, uri: str) -> dict[str, Any]:
    """One committed JSON document; NotCommitted when absent, Unreachable when MinIO fails."""
    bucket, key = split_uri(uri)
    try:
        response = s3.get_object(bucket, key)
        try:
            data = response.read(MAX_DOCUMENT_BYTES + 1)
        finally:
            response.close()
            response.release_conn()
    except S3Error as err:
        if err.code in _ABSENT:
            raise NotCommitted(f"{uri} does not exist") from err
        raise Unreachable(f"reading {uri}: {err.code}: {err.message}") from err
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as err:
        raise Unreachable(f"reading {uri}: {type(err).__name__}: {err}") from err
    if len(data) > MAX_DOCUMENT_BYTES:
        raise NotCommitted(f"{uri} is larger than {MAX_DOCUMENT_BYTES} bytes: not a document this run wrote")
    try:
        document = json.loads(data)
    except ValueError as err:
        raise NotCommitted(f"{uri} is not valid JSON: {err}") from err
    if not isinstance(document, dict):
        raise NotCommitted(f"{uri} is not a JSON object")
    return document


#: The report a reader should open first: the HTML one where the run wrote it.
REPORTS = ("report.html", "report.md")


def _listed(entries: Any) -> set[str]:
    return {str(e["path"]) for e in entries or [] if isinstance(e, dict) and "path" in e}


def _report(prefix: str, listed: set[str]) -> str | None:
    name = next((name for name in REPORTS if name in listed), None)
    return prefix + name if name else None


def augmentation_counts(manifest: dict[str, Any]) -> CommittedCounts:
    """The part of an AugmentationRun's manifest its status shows; NotCommitted when it is malformed."""
    try:
        return CommittedCounts.model_validate(manifest)
    except ValidationError as err:
        raise NotCommitted(f"{MANIFEST} is not an augmentation manifest: {describe(err)}") from err


def augmentation_outputs(prefix: str, manifest: dict[str, Any]) -> RunOutputs:
    """Where an AugmentationRun's report and rejected rows are, as its manifest vouches for them."""
    counts = augmentation_counts(manifest)
    rejected = counts.rejects is not None and counts.rejects.rows > 0
    return RunOutputs(report_uri=_report(prefix, {a.path for a in counts.artifacts}),
                      rejected_rows_uri=prefix + "rejects/" if rejected else None)


def finetune_outputs(prefix: str, manifest: dict[str, Any]) -> RunOutputs:
    """Where a FineTuneRun's metrics, model card, report and rejected rows are (only what it committed)."""
    listed = _listed(manifest.get("files"))

    def committed(path: str) -> str | None:
        return prefix + path if path in listed else None

    return RunOutputs(metrics_uri=committed(METRICS), model_card_uri=committed("model/README.md"),
                      rejected_rows_uri=committed("rejected_rows.jsonl"), report_uri=_report(prefix, listed))


def augmentation_results(manifest: dict[str, Any]) -> Committed:
    """status.results of an AugmentationRun from its manifest (jobs/augment/commit.py writes it)."""
    counts = augmentation_counts(manifest)
    results = AugmentationResults(samples_in=counts.rows_in, samples_out=counts.rows_out,
                                  per_augmenter={name: a.kept for name, a in counts.augmenters.items()},
                                  filtered={name: _count(value) for name, value in counts.filters.items()},
                                  rejected_rows=counts.rejected_rows)
    return Committed(results, counts.rows_read)


def finetune_results(manifest: dict[str, Any], metrics: dict[str, Any]) -> Committed:
    """status.results of a FineTuneRun from metrics.json (jobs/finetune/recipe.py writes it): the
    metrics of the published model, which is the best one when earlyStopping.restoreBest is on."""
    final = {k: float(v) for k, v in (metrics.get("final") or manifest.get("metrics") or {}).items()
             if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
    best = metrics.get("best") or None
    rejected = metrics.get("rejectedRows")
    results: dict[str, Any] = {
        "step": metrics.get("step", manifest.get("step")),
        "epoch": metrics.get("epochs"),
        "loss": metrics.get("loss"),
        "latestMetrics": final,
        "bestMetric": ({"name": best["name"], "value": best["value"], "step": best["step"]}
                       if isinstance(best, dict) and {"name", "value", "step"} <= best.keys() else None),
        "rejectedRows": _count(rejected) if rejected is not None else None,
    }
    validated = FineTuneResults.model_validate({k: v for k, v in results.items() if v is not None})
    step = metrics.get("totalSteps") or metrics.get("step")
    return Committed(validated, int(step) if isinstance(step, int) else None)


def _count(value: Any) -> int:
    """A count, or the sum of a per-reason map of counts (both shapes exist in committed files)."""
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    return int(value)


def read_committed(kind: Kind, uid: str, output_uri: str, s3: Minio) -> Committed:
    """The committed results of the run with ``uid`` under ``output_uri``."""
    prefix = output_uri if output_uri.endswith("/") else output_uri + "/"
    manifest = read_json(s3, prefix + MANIFEST)
    if kind is Kind.AUGMENTATION_RUN:
        found = augmentation_results(manifest)
        return Committed(found.results, found.rows, augmentation_outputs(prefix, manifest))
    owner = (manifest.get("run") or {}).get("uid")
    if owner != uid:
        raise NotCommitted(f"{prefix}{MANIFEST} was committed by another run (uid {owner}), not this one")
    found = finetune_results(manifest, read_json(s3, prefix + METRICS))
    return Committed(found.results, found.rows, finetune_outputs(prefix, manifest))

"""Committing: what each shard's marker records, and how the markers become the run's manifest.

**Shard markers.** A shard that has uploaded its parts and rejects writes ``_shards/<i>.json`` with
their sizes, checksums and row counts, its counts, and the fingerprint of the configuration and code
it ran with. A retried Job skips a shard whose marker has the current fingerprint and whose parts
are all present. After writing its marker, a shard lists the markers; when all of them carry the
current fingerprint it assembles and writes ``manifest.json`` (the last shard to finish does this;
two shards finishing together both write equivalent manifests, which is harmless).

The manifest's sections that every shard learns identically (run, columns, augmenters, source
objects, first pass, configuration, code version) travel in each marker's ``shared`` section
(:func:`shared_section`) and are taken from shard 0's; counts are summed over the shards
(:func:`assemble_manifest`). :func:`commit_run` then writes ``preprocess.json``, ``report.md`` and
``report.html`` and, last, ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from sampleforge.api.augmentation import AugmentationRunSpec
from sampleforge.api.manifest import AugmentationManifest
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .crossdedup import CrossDedupResult, apply_counts_delta, cross_shard_dedup, remove_replaced
from .errors import AugmentError
from .grading import judge_rates
from .htmlreport import render_html_report
from .judge import JUDGE_COLUMNS, LlmJudge
from .knowledge import DatasetKnowledge
from .labels import Labels
from .leakage import EvalSplit
from .output import TEXT_LENGTH_EDGES
from .protocol import AugmenterSummary, RowAugmenter
from .report import render_report
from .rows import PROVENANCE_COLUMNS, ColumnRoles
from .source import SourceObject

log = logging.getLogger("sampleforge.jobs.augment")

__all__ = ["MARKER_DIR", "SHARDING", "Reduce", "assemble_manifest", "code_version", "combine_engine_summaries", "commit_run",
           "committed_manifest", "digest", "engine_summaries", "marker_uri", "read_markers", "shared_section"]

MARKER_DIR = "_shards"
SHARDING = ("contiguous row ranges: shard i of n takes the global row ids [i*N//n, (i+1)*N//n), N = well-formed "
            "records of the whole source counted in object-key order")


@dataclass(frozen=True)
class Reduce:
    """What the reduce step needs besides the markers: scratch space, and which columns are which."""

    workdir: Path
    roles: ColumnRoles


def marker_uri(prefix: S3Uri, shard: int) -> S3Uri:
    return prefix.join(f"{MARKER_DIR}/{shard}.json")


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The package version and a digest of this job's source files (and the Parquet writer version,
    which the bytes of the parts depend on)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".tsv") and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    try:
        package = importlib.metadata.version("sampleforge")
    except importlib.metadata.PackageNotFoundError:
        package = "unknown"
    return {"package": package, "sourceDigest": h.hexdigest(), "pyarrow": pa.__version__}


def shared_section(ctx: RunContext[AugmentationRunSpec], objects: list[SourceObject], knowledge: DatasetKnowledge,
                   augmenters: list[tuple[Any, RowAugmenter]], notes: dict[str, str],
                   split: EvalSplit | None) -> dict[str, Any]:
    """A marker's ``shared`` section: what every shard of the run knows identically."""
    spec = ctx.spec
    return {
        "run": {"kind": ctx.kind, "name": ctx.name, "namespace": ctx.namespace, "uid": ctx.uid},
        "format": spec.output.format,
        "columns": spec.source.columns.to_kube(),
        "augmenters": {a.name: _augmenter_info(entry, a) for entry, a in augmenters},
        "filterNotes": notes,
        "provenanceColumns": {**PROVENANCE_COLUMNS,
                              **(JUDGE_COLUMNS if any(isinstance(a, LlmJudge) for _, a in augmenters) else {})},
        "evalSplit": {"uri": split.uri, "rows": split.rows} if split is not None else None,
        "source": {"uri": spec.source.uri, "format": spec.source.format,
                   "objects": [{"uri": str(o.uri), "etag": o.etag, "size": o.size, "format": o.format,
                                "records": n} for o, n in zip(objects, knowledge.object_rows, strict=True)]},
        "firstPass": knowledge.summary(),
        "preprocess": {"statsFile": "preprocess.json", **knowledge.dense.to_json()} if knowledge.dense else None,
        "config": spec.to_kube(),
        "seed": spec.seed,
        "sharding": SHARDING,
        "codeVersion": code_version(),
    }


def _augmenter_info(entry: Any, augmenter: RowAugmenter) -> dict[str, Any]:
    """What the manifest says about an augmenter besides its counts: type, label rule, and its
    :class:`~.protocol.AugmenterSummary` when it has one."""
    info: dict[str, Any] = {"type": entry.type, "labelRule": augmenter.label_rule}
    if isinstance(augmenter, AugmenterSummary):
        info["summary"] = dict(augmenter.summary())
    return info


def engine_summaries(augmenters: list[tuple[Any, RowAugmenter]]) -> dict[str, Any]:
    """Each model-based augmenter's engine figures in this pod (load time, rate, requests, cache)."""
    out: dict[str, Any] = {}
    for _, augmenter in augmenters:
        if isinstance(augmenter, AugmenterSummary):
            summary = dict(augmenter.summary())
            if "engine" in summary:
                out[augmenter.name] = summary
    return out


def read_markers(store: ObjectStore, prefix: S3Uri) -> dict[int, dict[str, Any]]:
    """Shard markers under ``prefix`` by shard index."""
    found: dict[int, dict[str, Any]] = {}
    for uri, _, _ in store.list(prefix.join(MARKER_DIR + "/")):
        name = uri.name
        if name.endswith(".json") and name[:-5].isdigit():
            document = json.loads(store.read_bytes(uri))
            if isinstance(document, dict):
                found[int(name[:-5])] = document
    return found


def _add(total: dict[str, Any], part: Mapping[str, Any]) -> None:
    """Nested sum of count dictionaries."""
    for key, value in part.items():
        if isinstance(value, Mapping):
            _add(total.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value
        else:
            total.setdefault(key, value)


def _sorted(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (_sorted(v) if isinstance(v, Mapping) else v) for k, v in sorted(d.items())}


def _label_sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, math.inf, label)


def _latency(summaries: Sequence[Mapping[str, Any]], key: str) -> float | None:
    values = [float(s["latencySeconds"][key]) for s in summaries
              if isinstance(s.get("latencySeconds"), Mapping) and s["latencySeconds"].get(key) is not None]
    return max(values) if values else None


def combine_engine_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One engine summary for the run from each shard's (in shard order).

    Counts (requests, generated, HTTP attempts, retries, completion tokens, failures per reason, cache
    hits and misses) are summed; ``generationSeconds`` is the engine time of all shards together and
    ``generatedPerSecond`` the rate over it (what one pod generates per second: total generated /
    total generation seconds); ``loadSeconds`` is the slowest shard's, with every shard's in
    ``loadSecondsPerShard``; request latency percentiles cannot be merged from percentiles, so
    ``latencySeconds`` holds the worst shard's p50 and p99. Strings (engine, model, cache prefix) are
    shard 0's; anything else numeric is summed and nested mappings are combined the same way.
    """
    if not summaries:
        return {}
    if len(summaries) == 1:
        return dict(summaries[0])
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for s in summaries for k in s):
        values = [s[key] for s in summaries if key in s]
        if key == "loadSeconds":
            loads = [float(s.get("loadSeconds") or 0.0) for s in summaries]
            out[key] = round(max(loads), 3)
            out["loadSecondsPerShard"] = [round(v, 3) for v in loads]
        elif key == "generatedPerSecond":
            continue  # from the totals, below
        elif key == "latencySeconds":
            out[key] = {q: (round(v, 3) if (v := _latency(summaries, q)) is not None else None) for q in ("p50", "p99")}
        elif all(isinstance(v, Mapping) for v in values):
            out[key] = combine_engine_summaries([dict(v) for v in values]) if key in ("cache", "reverse") else \
                _sum_mappings(values)
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            total = sum(values)
            out[key] = round(total, 3) if isinstance(total, float) else total
        else:
            out[key] = values[0]
    if "generated" in out and "generationSeconds" in out:
        seconds = float(out["generationSeconds"])
        out["generatedPerSecond"] = round(out["generated"] / seconds, 3) if seconds > 0 else None
    out["shards"] = len(summaries)
    return out


def _sum_mappings(values: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for value in values:
        _add(total, value)
    return _sorted(total)


def assemble_manifest(markers: Sequence[Mapping[str, Any]], *, committed_at: datetime | None = None,
                      reduced: CrossDedupResult | None = None) -> dict[str, Any]:
    """The run's manifest from every shard's marker (in shard order).

    Per-shard counts are summed; what every shard learnt identically (first pass, configuration,
    source objects) is taken from shard 0's marker. Engine figures (``augmenters.<name>.summary`` of
    the model-based types) are combined over every shard (:func:`combine_engine_summaries`), and an
    llmJudge's counts get its agreement rate and kappa (``augmenters.<name>.judge``). ``files`` lists only data parts, which is what
    readers (the fine-tune job) load; everything else the manifest vouches for is in ``rejects`` and
    ``artifacts``. The document is validated as an :class:`~sampleforge.api.manifest.AugmentationManifest`
    (a field missing or malformed is an error here, not in a reader) and dumped from the model
    with exactly the keys it was given, so the bytes written are unchanged; the pipeline then lists
    its ``artifacts`` (reports, preprocess.json) in it and commits it.
    """
    if not markers:
        raise ValueError("no shard markers to assemble")
    first = markers[0]
    shared = first["shared"]
    totals: dict[str, Any] = {}
    for marker in markers:
        _add(totals, marker["counts"])
    if reduced is not None:
        apply_counts_delta(totals, reduced.counts)
    files = [f for shard in (reduced.files if reduced is not None else [m["files"] for m in markers]) for f in shard]
    rejects = [marker["rejects"] for marker in markers if marker.get("rejects")]
    labels_before = {k: totals.get("labelsBefore", {})[k]
                     for k in sorted(totals.get("labelsBefore", {}), key=_label_sort_key)}
    labels_after = {k: totals.get("labelsAfter", {})[k]
                    for k in sorted(totals.get("labelsAfter", {}), key=_label_sort_key)}
    augmenters = {}
    for name, info in shared["augmenters"].items():
        counts = totals.get("augmenters", {}).get(name, {})
        augmenters[name] = {**info, "produced": counts.get("produced", 0), "kept": counts.get("kept", 0),
                            "dropped": _sorted(counts.get("dropped", {})),
                            "sourceRowsRemoved": counts.get("sourceRowsRemoved", 0)}
        engines = [m.get("engines", {}).get(name) for m in markers]
        if "summary" in info and all(isinstance(e, Mapping) for e in engines):
            augmenters[name]["summary"] = combine_engine_summaries([dict(e) for e in engines if e is not None])
        judged = totals.get("judges", {}).get(name)
        if judged is not None:
            augmenters[name]["judge"] = judge_rates(judged)
    examples = [e for shard, marker in enumerate(markers) for e in _kept_examples(shard, marker, reduced)]
    manifest = {
        "apiVersion": "sampleforge.io/v1alpha1",
        "kind": "AugmentationOutput",
        "run": shared["run"],
        "committedAt": (committed_at or datetime.now(UTC)).isoformat(timespec="seconds"),
        "format": shared["format"],
        "columns": shared["columns"],
        "provenanceColumns": dict(shared.get("provenanceColumns") or PROVENANCE_COLUMNS),
        "files": files,
        "rowsRead": totals.get("rowsRead", 0),
        "rowsIn": totals.get("rowsIn", 0),
        "rowsOut": sum(int(f["rows"]) for f in files),
        "generatedRows": totals.get("generatedKept", 0),
        "rejectedRows": totals.get("rejectedRows", 0),
        "rejects": {"rows": sum(int(r["rows"]) for r in rejects),
                    "reasons": _sorted(totals.get("rejectReasons", {})), "files": rejects},
        "augmenters": augmenters,
        "filters": _sorted(totals.get("filtered", {})),
        "filterNotes": shared.get("filterNotes", {}),
        "redactions": _sorted(totals.get("redactions", {})),
        "labelDistribution": {"before": labels_before, "after": labels_after},
        # Rows per length of their query and item text (characters), in bins named by their lower edge:
        # the source rows read, and the rows written.
        "textLengths": {"unit": "characters", "edges": list(TEXT_LENGTH_EDGES),
                        **{when: {f: {k: n for k, n in sorted(counts.items(), key=lambda kv: int(kv[0]))}
                                  for f, counts in sorted(totals.get("textLengths", {}).get(when, {}).items())}
                           for when in ("before", "after")}},
        # sourceRowsInEvalSplit: source rows that leak what the split holds out; sourceRowsDropped: those
        # the guard dropped, per reason (a row undersampling removed first is not counted twice).
        "evalSplit": ({**shared["evalSplit"], "sourceRowsInEvalSplit": totals.get("sourceRowsInEvalSplit", 0),
                       "sourceRowsDropped": _sorted(totals.get("sourceRowsDropped", {}))}
                      if shared.get("evalSplit") else None),
        "source": shared["source"],
        "firstPass": shared["firstPass"],
        "preprocess": shared.get("preprocess"),
        "config": shared["config"],
        "seed": shared["seed"],
        "shards": len(markers),
        "sharding": shared["sharding"],
        "fingerprint": first["fingerprint"],
        "configFingerprint": first["configFingerprint"],
        "codeVersion": shared["codeVersion"],
        "timings": {"shards": [{"shard": m["shard"], **m.get("timings", {})} for m in markers],
                    "slowestShardSeconds": max(float(m.get("timings", {}).get("totalSeconds", 0.0))
                                               for m in markers)},
        **({"crossShardDedup": reduced.summary()} if reduced is not None else {}),
        "examples": examples,
        "artifacts": [],
    }
    return committed_manifest(manifest)


def committed_manifest(document: Mapping[str, Any]) -> dict[str, Any]:
    """``document`` checked against the manifest model and dumped from it: the same keys and values
    (so the same bytes once written), or a ValidationError naming what is missing or wrong."""
    return AugmentationManifest.model_validate(document).document()


def digest(document: Any) -> str:
    """sha256 of a JSON document in canonical form (sorted keys, no whitespace)."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _kept_examples(shard: int, marker: Mapping[str, Any], reduced: CrossDedupResult | None) -> list[Any]:
    """A shard's examples, less those whose row the reduce step removed: the manifest shows only
    rows that are in the output."""
    examples = list(marker.get("examples", []))
    rows = marker.get("exampleRows")
    if reduced is None or not examples or rows is None:
        return examples
    removed = reduced.removed_rows(shard, rows)
    return [e for e, gone in zip(examples, removed, strict=True) if not gone]


def commit_run(store: ObjectStore, prefix: S3Uri, shards: int, fp: str, reduce: Reduce | None = None) -> S3Uri | None:
    """Write the artifacts and the manifest if every shard's marker carries ``fp``; the manifest's
    URI, else None (a shard still to finish commits the run).

    With ``reduce`` (the reduce step of a run of several shards) every shard must have committed,
    and the generated rows that repeat across shards are removed first (:mod:`.crossdedup`): the
    manifest lists the rewritten parts and counts with the removed rows taken out; the parts they
    replaced and the shards' keys objects are deleted once the manifest is committed.
    """
    markers = read_markers(store, prefix)
    missing = [i for i in range(shards) if markers.get(i, {}).get("fingerprint") != fp]
    if missing:
        if reduce is not None:
            raise AugmentError(f"shard(s) {', '.join(map(str, missing))} of {shards} have not committed for this "
                               f"configuration (no marker under {prefix.join(MARKER_DIR)}, or one of another "
                               "configuration or code version); the reduce step runs after every shard has finished")
        return None
    ordered = [markers[i] for i in range(shards)]
    reduced = None
    if reduce is not None:
        labels = Labels(str(ordered[0]["shared"]["firstPass"]["labelType"]))
        reduced = cross_shard_dedup(store, prefix, [m["files"] for m in ordered],
                                    [m.get("dedupKeys", []) for m in ordered], reduce.workdir, reduce.roles, labels)
    manifest = assemble_manifest(ordered, reduced=reduced)
    artifacts = []
    if manifest.get("preprocess"):
        stats = {k: v for k, v in manifest["preprocess"].items() if k != "statsFile"}
        artifacts.append(_artifact(store, prefix, "preprocess.json", _canonical_json(stats), "application/json"))
    manifest["artifacts"] = artifacts
    report = render_report(manifest).encode("utf-8")
    artifacts.append(_artifact(store, prefix, "report.md", report, "text/markdown; charset=utf-8"))
    page = render_html_report(manifest).encode("utf-8")
    artifacts.append(_artifact(store, prefix, "report.html", page, "text/html; charset=utf-8"))
    uri = store.commit(prefix, committed_manifest(manifest))
    if reduced is not None:
        remove_replaced(store, prefix, reduced, [m.get("dedupKeys", []) for m in ordered])
    log.info("run committed", extra={"manifest": str(uri), "rows_out": manifest["rowsOut"],
                                     "parts": len(manifest["files"]),
                                     "cross_shard_duplicates": reduced.removed if reduced is not None else None})
    return uri


def _artifact(store: ObjectStore, prefix: S3Uri, rel: str, data: bytes, content_type: str) -> dict[str, Any]:
    store.write_bytes(prefix.join(rel), data, content_type)
    return {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _canonical_json(document: Any) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")

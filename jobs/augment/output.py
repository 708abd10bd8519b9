"""Writing a shard's rows, its commit marker, and the run's manifest.

Layout under ``spec.output.uri`` (every path in a manifest is relative to it)::

    data/part-<shard:05d>-<seq:05d>.parquet   rows (or .jsonl with output.format: jsonl)
    rejects/shard-<shard:05d>.jsonl           records set aside: {"position", "source", "reason", "record"}
    _shards/<shard>.json                      the shard's commit marker
    preprocess.json                           fitted dense-feature statistics (when there are dense features)
    report.md                                 the human-readable report
    report.html                               the same with plots (htmlreport.py)
    manifest.json                             written last: the run's commit

**Byte-identical parts.** Rows are written in a fixed order with fixed writer settings (zstd level 3,
dictionary encoding, format 2.6, data page v1, row groups of :data:`ROW_GROUP_ROWS`, parts of
:data:`PART_ROWS`); parts contain no timestamps, hostnames or paths. The same input, configuration,
seed and code therefore give the same bytes, which the manifest's sha256 values make checkable.

**Shard markers.** A shard that has uploaded its parts and rejects writes ``_shards/<i>.json`` with
their sizes, checksums and row counts, its counts, and the fingerprint of the configuration and code
it ran with. A retried Job skips a shard whose marker has the current fingerprint and whose parts
are all present. After writing its marker, a shard lists the markers; when all of them carry the
current fingerprint it assembles and writes ``manifest.json`` (the last shard to finish does this;
two shards finishing together both write equivalent manifests, which is harmless).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sampleforge.api.manifest import AugmentationManifest
from sampleforge.jobs.common.records import reason_class
from sampleforge.jobs.common.storage import ObjectStore, S3Uri, sha256_file

from .judge import judge_rates
from .preprocess import Reject
from .rows import PROVENANCE_COLUMNS, ColumnRoles

__all__ = ["PART_ROWS", "ROW_GROUP_ROWS", "TEXT_LENGTH_EDGES", "PartWriter", "RejectsWriter", "assemble_manifest", "combine_engine_summaries",
           "committed_manifest", "length_bin", "marker_uri", "output_schema", "read_markers"]

PART_ROWS = 1_000_000
ROW_GROUP_ROWS = 50_000
MARKER_DIR = "_shards"

_LABEL_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}

#: Lower edges of the text-length bins (characters) the manifest's ``textLengths`` counts rows in; fixed,
#: so that shards' counts add up.
TEXT_LENGTH_EDGES = (0, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400, 500, 750, 1000)


def length_bin(text: Any) -> str:
    """The ``textLengths`` bin of a text: the lower edge of its length's bin, as a string."""
    n = len(text) if isinstance(text, str) else 0
    return str(TEXT_LENGTH_EDGES[bisect.bisect_right(TEXT_LENGTH_EDGES, n) - 1])


def output_schema(roles: ColumnRoles, label_kind: str, judged: bool = False) -> pa.Schema:
    """Mapped columns under their source names, then the provenance columns (``judged``: with the
    llmJudge's, :data:`~.judge.JUDGE_COLUMNS`)."""
    fields = []
    if roles.id:
        fields.append(pa.field(roles.id, pa.string()))
    fields += [pa.field(roles.query, pa.string()), pa.field(roles.item, pa.string()),
               pa.field(roles.label, _LABEL_TYPES[label_kind])]
    fields += [pa.field(a, pa.string()) for a in roles.attributes]
    fields += [pa.field(d, pa.float64()) for d in roles.dense]
    if roles.image:
        fields.append(pa.field(roles.image, pa.string()))
    fields += [pa.field("sf_origin", pa.string(), nullable=False), pa.field("sf_augmenter", pa.string()),
               pa.field("sf_source_row", pa.int64(), nullable=False), pa.field("sf_label_rule", pa.string())]
    if judged:
        fields += [pa.field("sf_judge_label", _LABEL_TYPES[label_kind]), pa.field("sf_judge_agrees", pa.bool_())]
    return pa.schema(fields)


def marker_uri(prefix: S3Uri, shard: int) -> S3Uri:
    return prefix.join(f"{MARKER_DIR}/{shard}.json")


def _json_line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class PartWriter:
    """Writes rows to local part files in fixed-size row groups and uploads each finished part.

    Rows are turned into Arrow record batches as they arrive (compact, columnar), so what waits for
    the next row group costs a few bytes per value rather than a Python object per cell.
    """

    def __init__(self, store: ObjectStore, prefix: S3Uri, shard: int, fmt: str, schema: pa.Schema,
                 workdir: Path, part_rows: int = PART_ROWS, group_rows: int = ROW_GROUP_ROWS) -> None:
        if part_rows % group_rows:
            raise ValueError("part_rows must be a multiple of group_rows")
        self.store, self.prefix, self.shard, self.fmt, self.schema = store, prefix, shard, fmt, schema
        self.workdir = workdir
        self.part_rows, self.group_rows = part_rows, group_rows
        self.names = schema.names
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._seq = 0
        self._part_written = 0
        self._path: Path | None = None
        self._parquet: pq.ParquetWriter | None = None
        self._text: Any = None
        self.files: list[dict[str, Any]] = []
        workdir.mkdir(parents=True, exist_ok=True)

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if self.fmt != "parquet":
            self._write_lines(rows)
            return
        columns = [pa.array([row.get(name) for row in rows], type=field.type)
                   for name, field in zip(self.names, self.schema, strict=True)]
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._pending_rows += len(rows)
        while self._pending_rows >= self.group_rows:
            self._write_group(self.group_rows)

    def _open(self) -> None:
        ext = "parquet" if self.fmt == "parquet" else "jsonl"
        self._path = self.workdir / f"part-{self.shard:05d}-{self._seq:05d}.{ext}"
        if self.fmt == "parquet":
            self._parquet = pq.ParquetWriter(
                str(self._path), self.schema, compression="zstd", compression_level=3, use_dictionary=True,
                write_statistics=True, version="2.6", data_page_version="1.0", write_page_index=False,
                store_schema=True)
        else:
            self._text = self._path.open("w", encoding="utf-8", newline="\n")

    def _write_group(self, rows: int) -> None:
        """Write the first ``rows`` pending rows as one row group."""
        if self._path is None:
            self._open()
        assert self._parquet is not None
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        self._parquet.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        self._part_written += rows
        if self._part_written >= self.part_rows:
            self._finish_part()

    def _write_lines(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            if self._path is None:
                self._open()
            self._text.write(_json_line({name: row.get(name) for name in self.names}) + "\n")
            self._part_written += 1
            if self._part_written >= self.part_rows:
                self._finish_part()

    def _finish_part(self) -> None:
        if self._path is None:
            return
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._text is not None:
            self._text.close()
            self._text = None
        rel = f"data/{self._path.name}"
        content = "application/vnd.apache.parquet" if self.fmt == "parquet" else "application/x-ndjson"
        self.store.upload_file(self.prefix.join(rel), self._path, content_type=content)
        self.files.append({"path": rel, "size": self._path.stat().st_size, "sha256": sha256_file(self._path),
                           "rows": self._part_written})
        self._path.unlink()
        self._path = None
        self._seq += 1
        self._part_written = 0

    def close(self) -> list[dict[str, Any]]:
        """Write what is pending, upload the last part; the entries of every part, in order."""
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._finish_part()
        return self.files


class RejectsWriter:
    """The shard's rejects file (JSON lines, in row order within the shard)."""

    def __init__(self, store: ObjectStore, prefix: S3Uri, shard: int, workdir: Path) -> None:
        self.store, self.prefix = store, prefix
        self.rel = f"rejects/shard-{shard:05d}.jsonl"
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / f"rejects-{shard:05d}.jsonl"
        self._file = self.path.open("w", encoding="utf-8", newline="\n")
        self.reasons: Counter[str] = Counter()
        self.rows = 0

    def add(self, rejects: Sequence[Reject]) -> None:
        for r in rejects:
            self.reasons[_reason_class(r.reason)] += 1
            self.rows += 1
            record = {"position": r.position, "source": r.source, "reason": r.reason, "record": r.record}
            self._file.write(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n")

    def close(self) -> dict[str, Any] | None:
        self._file.close()
        if not self.rows:
            self.path.unlink()
            return None
        self.store.upload_file(self.prefix.join(self.rel), self.path, content_type="application/x-ndjson")
        entry = {"path": self.rel, "size": self.path.stat().st_size, "sha256": sha256_file(self.path),
                 "rows": self.rows}
        self.path.unlink()
        return entry


def _reason_class(reason: str) -> str:
    """A reason without its line number, so counts group ("invalid JSON (line 7): ..." -> "invalid JSON")."""
    parsed = reason_class(reason)
    return parsed if parsed != reason else reason.split(" (line ", 1)[0]


def clear_directory(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


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


def assemble_manifest(markers: Sequence[Mapping[str, Any]], *, committed_at: datetime | None = None) -> dict[str, Any]:
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
    files = [f for marker in markers for f in marker["files"]]
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
    examples = [e for marker in markers for e in marker.get("examples", [])]
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

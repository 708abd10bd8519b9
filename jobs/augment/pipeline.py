"""One shard of an AugmentationRun, from the committed state it finds to the commit it leaves.

Read top to bottom, :meth:`ShardJob.run` is the whole job:

1. **Plan.** Resolve the column roles, check every augmenter type is available, list the source
   objects (with their ETags) and compute two fingerprints: of the configuration (spec, source
   objects, shard count) and of the configuration plus the code. A committed ``manifest.json`` with
   the same configuration fingerprint means the run is done: exit at once. A committed manifest of
   another configuration is an error (the output prefix belongs to another run).
2. **Skip finished work.** If this shard's marker carries the current fingerprint and its parts are
   present, go straight to the commit step.
3. **First pass** over the whole source (:mod:`.knowledge`), identical in every shard.
4. **Build** the augmenters (:mod:`.catalog`) and filters (:mod:`.filters`).
5. **Shard pass** over the shard's row range (:mod:`.source`): clean each batch, keep its source rows,
   run every augmenter on it within its budget, redact and filter what they generate, and write.
6. **Commit the shard** (parts, rejects, marker), then **commit the run** if every shard has.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from minio.error import S3Error
from tqdm.auto import tqdm

from sampleforge.api.augmentation import AugmentationRunSpec, Columns
from sampleforge.api.constants import Reason
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.storage import ObjectStore, S3Uri, StorageError

from .catalog import build_augmenters, check_supported, needs_of
from .errors import AugmentError, ConfigError, SourceError
from .filters import Candidate, EvalSplit, Filter, LeakageGuard, build_filters, eval_split
from .htmlreport import render_html_report
from .judge import JUDGE_COLUMNS, JUDGE_LABEL_RULE, LlmJudge
from .knowledge import DatasetKnowledge, learn
from .modelcache import ModelCache
from .output import (
    PartWriter,
    RejectsWriter,
    assemble_manifest,
    clear_directory,
    committed_manifest,
    digest,
    length_bin,
    marker_uri,
    output_schema,
    read_markers,
)
from .pii import PiiRedactor
from .preprocess import Cleaner, clean_text
from .protocol import AugmenterSummary, BatchPlan, GeneratedRow, RowAugmenter, SourceRowSelector
from .randomness import RowRandomness
from .report import render_report
from .rows import PROVENANCE_COLUMNS, ColumnRoles, RowBatch
from .source import SourceObject, SourceReader, list_objects, shard_range

log = logging.getLogger("sampleforge.jobs.augment")

__all__ = ["BATCH_ROWS", "Outcome", "ShardJob", "code_version", "roles_of"]

BATCH_ROWS = 2048
EXAMPLES_PER_AUGMENTER = 3
#: The manifest's filter name for rows an augmenter could not make (GeneratedRow.unusable): a
#: missing image, a language model's answer that was empty or lost the source's brand.
UNUSABLE = "notGenerated"
#: The kinds of change a generated row can have, in the order Candidate.changed lists them.
_CHANGED_ORDER = ("query", "item", "dense", "image", "label")
SHARDING = ("contiguous row ranges: shard i of n takes the global row ids [i*N//n, (i+1)*N//n), N = well-formed "
            "records of the whole source counted in object-key order")


def roles_of(columns: Columns) -> ColumnRoles:
    """``spec.source.columns`` as roles; a column playing two roles or named like a provenance column
    is a configuration error."""
    roles = ColumnRoles(query=columns.query, item=columns.item, label=columns.label,
                        attributes=tuple(columns.attributes), dense=tuple(columns.dense_features),
                        image=columns.image, id=columns.id)
    seen: dict[str, str] = {}
    for path, name in roles.field_paths():
        if name in seen:
            raise ConfigError(f"{path} and {seen[name]} both name column {name!r}; a column has one role")
        if name in PROVENANCE_COLUMNS or name in JUDGE_COLUMNS:
            raise ConfigError(f"{path} is {name!r}, a name the job uses for its provenance columns; rename it")
        seen[name] = path
    return roles


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


@dataclass(frozen=True)
class Outcome:
    """How a shard's run ended: ``committed`` (this shard wrote the manifest), ``shardCommitted`` (others
    still to finish), or ``alreadyCommitted`` (nothing to do)."""

    state: str
    manifest_uri: str | None
    message: str


@dataclass
class _Counts:
    rows_read: int = 0
    rows_in: int = 0
    generated_kept: int = 0
    labels_before: Counter[str] = field(default_factory=Counter)
    labels_after: Counter[str] = field(default_factory=Counter)
    filtered: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    produced: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    dropped: dict[str, dict[str, Counter[str]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(Counter)))
    source_removed: Counter[str] = field(default_factory=Counter)
    in_eval: int = 0
    #: Source rows the leakage guard dropped, per reason.
    source_in_eval: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    #: Rows per text-length bin: ("before" | "after", "query" | "item") -> bin -> rows.
    lengths: dict[tuple[str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def count_lengths(self, when: str, row: dict[str, Any], roles: ColumnRoles) -> None:
        self.lengths[when, "query"][length_bin(row[roles.query])] += 1
        self.lengths[when, "item"][length_bin(row[roles.item])] += 1

    def text_lengths(self) -> dict[str, dict[str, dict[str, int]]]:
        found: dict[str, dict[str, dict[str, int]]] = {}
        for (when, text), bins in self.lengths.items():
            found.setdefault(when, {})[text] = dict(bins)
        return found

    def augmenters(self, names: list[str]) -> dict[str, Any]:
        return {n: {"produced": self.produced[n], "kept": self.kept[n],
                    "dropped": {f: dict(r) for f, r in self.dropped[n].items()},
                    "sourceRowsRemoved": self.source_removed[n]} for n in names}


class ShardJob:
    """Runs shard ``ctx.shard`` of the run described by ``ctx`` (see the module docstring)."""

    def __init__(self, ctx: RunContext[AugmentationRunSpec], store: ObjectStore, cache_dir: Path,
                 heartbeat: HeartbeatSender | None = None, show_progress: bool = True) -> None:
        self.ctx = ctx
        self.spec = ctx.spec
        self.store = store
        self.cache_dir = cache_dir
        self.heartbeat = heartbeat
        self.show_progress = show_progress
        self.prefix = S3Uri.parse(self.spec.output.uri)
        if not 0 <= ctx.shard < ctx.shards:
            raise ConfigError(f"shard {ctx.shard} does not exist: the run has {ctx.shards} shard(s) "
                              "(JOB_COMPLETION_INDEX must be below SAMPLEFORGE_SHARD_COUNT)")
        self.roles = roles_of(self.spec.source.columns)
        # What each mapped column is, for deciding which texts a generated row changed.
        self._fields = {self.roles.query: "query", self.roles.item: "item", self.roles.label: "label",
                        **dict.fromkeys(self.roles.attributes, "item"), **dict.fromkeys(self.roles.dense, "dense")}
        if self.roles.image:
            self._fields[self.roles.image] = "image"
        if self.roles.id:
            self._fields[self.roles.id] = "id"
        self._redact = self.spec.filters.pii_redaction

    # -- 1. plan ------------------------------------------------------------------------------

    def _fingerprints(self, objects: list[SourceObject]) -> tuple[str, str]:
        spec = self.spec
        config = {
            "source": spec.source.to_kube(), "preprocess": spec.preprocess.to_kube(),
            "augmenters": [a.to_kube() for a in spec.augmenters], "filters": spec.filters.to_kube(),
            "output": spec.output.to_kube(), "seed": spec.seed, "shards": self.ctx.shards,
            "objects": [[str(o.uri), o.etag, o.size] for o in objects],
        }
        config_fp = digest(config)
        return config_fp, digest({"config": config_fp, "code": code_version()})

    def run(self) -> Outcome:
        started = time.monotonic()
        check_supported(self.spec)
        self._check_output_bucket()
        objects = list_objects(self.store, self.spec.source.uri, self.spec.source.format, "spec.source")
        config_fp, fp = self._fingerprints(objects)
        committed = self.store.read_manifest(self.prefix)
        if committed is not None:
            if committed.get("configFingerprint") == config_fp:
                return Outcome("alreadyCommitted", str(self.prefix.join("manifest.json")),
                               "the run's output is already committed")
            raise ConfigError(f"spec.output.uri {self.spec.output.uri} already holds a committed output of another "
                              "configuration (different spec, source or shard count); write to a new output.uri")
        marker = self._finished_marker(fp)
        if marker is not None:
            log.info("shard already committed; skipping to the run commit", extra={"shard": self.ctx.shard})
        else:
            self._process(objects, config_fp, fp, started)
        manifest = self.try_commit(fp)
        if manifest is not None:
            return Outcome("committed", str(manifest), "every shard has committed; manifest written")
        return Outcome("shardCommitted", None, f"shard {self.ctx.shard} committed; waiting for other shards")

    def _check_output_bucket(self) -> None:
        try:
            exists = self.store.client.bucket_exists(self.prefix.bucket)
        except S3Error as err:
            raise StorageError(f"cannot check bucket {self.prefix.bucket!r} of spec.output.uri: {err.code}") from err
        if not exists:
            raise ConfigError(f"spec.output.uri {self.spec.output.uri}: bucket {self.prefix.bucket!r} does not exist; "
                              "create it or write to another bucket", Reason.BUCKET_NOT_FOUND)

    # -- 2. skip finished work ---------------------------------------------------------------------

    def _finished_marker(self, fp: str) -> dict[str, Any] | None:
        uri = marker_uri(self.prefix, self.ctx.shard)
        if not self.store.exists(uri):
            return None
        marker = json.loads(self.store.read_bytes(uri))
        if marker.get("fingerprint") != fp:
            log.info("shard marker of another configuration or code version; redoing the shard",
                     extra={"shard": self.ctx.shard})
            return None
        present = {u.key: size for u, size, _ in self.store.list(self.prefix)}
        entries = list(marker.get("files", [])) + ([marker["rejects"]] if marker.get("rejects") else [])
        for entry in entries:
            if present.get(self.prefix.join(entry["path"]).key) != entry["size"]:
                log.warning("a part listed by the shard marker is missing or changed; redoing the shard",
                            extra={"shard": self.ctx.shard, "part": entry["path"]})
                return None
        return dict(marker)

    # -- 3-5. first pass, build, shard pass ------------------------------------------------------------

    def _bar(self, total: int | None, desc: str) -> Any:
        interactive = sys.stderr.isatty()
        return tqdm(total=total, desc=desc, unit="rows", file=sys.stderr, disable=not self.show_progress,
                    mininterval=0.5 if interactive else 30.0, dynamic_ncols=interactive)

    def _first_pass(self, reader: SourceReader) -> DatasetKnowledge:
        object_rows: list[int] = []
        self._stage("first pass over the source")
        with self._bar(None, "first pass") as bar:
            knowledge = learn(reader.read_all(object_rows), object_rows, self.roles, self.spec,
                              needs_of(self.spec), progress=bar.update)
        _check_usable(self.spec.source.uri, knowledge)
        return knowledge

    def _eval_split(self) -> EvalSplit | None:
        uri = self.spec.filters.eval_split
        if uri is None:
            return None
        objects = list_objects(self.store, uri, None, "spec.filters.evalSplit")
        required = [("spec.source.columns.query (read from spec.filters.evalSplit)", self.roles.query),
                    ("spec.source.columns.item (read from spec.filters.evalSplit)", self.roles.item)]
        reader = SourceReader(self.store, objects, [self.roles.query, self.roles.item], required)
        redactor = PiiRedactor() if self.spec.filters.pii_redaction else None
        opts = self.spec.preprocess
        queries, items = [], []
        for raw in reader.read_all():
            for q, i in zip(raw.columns[self.roles.query], raw.columns[self.roles.item], strict=True):
                q = clean_text(q, opts.normalize_unicode, opts.normalize_whitespace)
                i = clean_text(i, opts.normalize_unicode, opts.normalize_whitespace)
                queries.append(redactor.redact(q) if redactor else q)
                items.append(redactor.redact(i) if redactor else i)
        dedup = self.spec.filters.dedup
        threshold, num_perm = (dedup.threshold, dedup.num_permutations) if dedup is not None and \
            dedup.method == "minhash" else (0.85, 128)
        return eval_split(uri, queries, items, threshold, num_perm, self.spec.filters.eval_split_match)

    def _process(self, objects: list[SourceObject], config_fp: str, fp: str, started: float) -> None:
        spec, roles, shard, shards = self.spec, self.roles, self.ctx.shard, self.ctx.shards
        reader = SourceReader(self.store, objects, roles.all, roles.field_paths(), BATCH_ROWS)
        knowledge = self._first_pass(reader)
        first_pass_seconds = time.monotonic() - started
        self._stage("loading models and building augmenters (the GAN trains here)")
        split = self._eval_split()
        models = ModelCache(self.store, self.cache_dir)
        augmenters = build_augmenters(spec, {"roles": roles, "labels": knowledge.labels, "knowledge": knowledge,
                                             "store": self.store, "models": models})
        filters, notes = build_filters(spec.filters, roles, knowledge.labels, knowledge.source_pairs, models, split)
        judges = [a for _, a in augmenters if isinstance(a, LlmJudge)]
        chain = _with_judges(filters, judges)
        lo, hi = shard_range(knowledge.total_rows, shard, shards)
        self._stage(f"augmenting rows {lo}-{hi} (shard {shard} of {shards})")
        log.info("shard pass", extra={"shard": shard, "shards": shards, "row_range": [lo, hi],
                                      "augmenters": [a.name for _, a in augmenters],
                                      "filters": [f.name for f in chain]})
        workdir = self.cache_dir / "augment" / fp[:16] / f"shard-{shard}"
        clear_directory(workdir)
        writer = PartWriter(self.store, self.prefix, shard, spec.output.format,
                            output_schema(roles, knowledge.labels.kind, judged=bool(judges)), workdir)
        rejects = RejectsWriter(self.store, self.prefix, shard, workdir)
        cleaner = Cleaner(roles, spec.preprocess, spec.filters.pii_redaction, knowledge.labels.kind, knowledge.dense)
        redactor = PiiRedactor()
        counts = _Counts()
        randomness = {a.name: RowRandomness(spec.seed, a.name) for _, a in augmenters}
        process_started = time.monotonic()
        with self._bar(hi - lo, f"shard {shard}/{shards}") as bar:
            for raw in reader.read_range(knowledge.object_rows, lo, hi, last=shard == shards - 1):
                batch, bad = cleaner.clean(raw, redactor)
                rejects.add(bad)
                counts.rows_read += raw.size
                if len(batch):
                    self._batch(batch, augmenters, randomness, knowledge, chain, redactor, writer, counts)
                bar.update(raw.size)
                self._beat(counts, rejects.rows, hi - lo, process_started)
        parts = writer.close()
        rejects_entry = rejects.close()
        names = [a.name for _, a in augmenters]
        marker = {
            "shard": shard, "shards": shards, "fingerprint": fp, "configFingerprint": config_fp,
            "rowRange": [lo, hi], "files": parts, "rejects": rejects_entry,
            "counts": {
                "rowsRead": counts.rows_read, "rowsIn": counts.rows_in, "generatedKept": counts.generated_kept,
                "rejectedRows": rejects.rows, "rejectReasons": dict(rejects.reasons),
                "augmenters": counts.augmenters(names),
                "filtered": {f: dict(r) for f, r in counts.filtered.items()},
                "redactions": dict(redactor.counts),
                "labelsBefore": dict(counts.labels_before), "labelsAfter": dict(counts.labels_after),
                "textLengths": counts.text_lengths(),
                "sourceRowsInEvalSplit": counts.in_eval,
                "sourceRowsDropped": dict(counts.source_in_eval),
                **({"judges": {j.name: j.counts() for j in judges}} if judges else {}),
            },
            "examples": [e for n in names for e in counts.examples.get(n, [])],
            # This pod's engine figures, which the manifest combines over every shard.
            "engines": _engine_summaries(augmenters),
            "timings": {"firstPassSeconds": round(first_pass_seconds, 3),
                        "processSeconds": round(time.monotonic() - process_started, 3),
                        "totalSeconds": round(time.monotonic() - started, 3)},
            "shared": self._shared(objects, knowledge, augmenters, notes, split),
        }
        self.store.write_json(marker_uri(self.prefix, shard), marker)
        if self.heartbeat is not None:
            self._beat(counts, rejects.rows, hi - lo, process_started)
            self.heartbeat.flush()
        clear_directory(workdir)
        log.info("shard committed", extra={"shard": shard, "parts": len(parts), "rows_out": sum(p["rows"] for p in parts),
                                           "rejected_rows": rejects.rows})

    def _shared(self, objects: list[SourceObject], knowledge: DatasetKnowledge,
                augmenters: list[tuple[Any, RowAugmenter]], notes: dict[str, str],
                split: EvalSplit | None) -> dict[str, Any]:
        spec = self.spec
        return {
            "run": {"kind": self.ctx.kind, "name": self.ctx.name, "namespace": self.ctx.namespace,
                    "uid": self.ctx.uid},
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

    def _plan(self, batch: RowBatch, knowledge: DatasetKnowledge, random: RowRandomness) -> BatchPlan:
        budget = knowledge.selection[random.name]
        limit = min(budget.fraction, budget.threshold)
        selected = random.uniform(batch.row_ids, "select") < limit
        return BatchPlan(selected, budget.per_row, random)

    def _batch(self, batch: RowBatch, augmenters: list[tuple[Any, RowAugmenter]],
               randomness: dict[str, RowRandomness], knowledge: DatasetKnowledge,
               filters: Sequence[Filter | LlmJudge],
               redactor: PiiRedactor, writer: PartWriter, counts: _Counts) -> None:
        roles, labels = self.roles, knowledge.labels
        plans = {a.name: self._plan(batch, knowledge, randomness[a.name]) for _, a in augmenters}
        keep = np.ones(len(batch), dtype=bool)
        for _, aug in augmenters:
            if isinstance(aug, SourceRowSelector):
                stays = aug.keep_source_rows(batch, plans[aug.name])
                counts.source_removed[aug.name] += int((keep & ~stays).sum())
                keep &= stays
        source_rows = [batch.row(i) for i in range(len(batch))]
        guard = next((f for f in filters if isinstance(f, LeakageGuard)), None)
        # The leakage guard judges source rows as it judges generated ones: a source row that
        # leaks the evaluation split is dropped (and, in the filter, every row generated from it).
        leaks = guard.check_sources(source_rows, batch.row_ids.tolist()) if guard is not None \
            else [None] * len(source_rows)
        out = []
        for i, row in enumerate(source_rows):
            counts.labels_before[labels.key(row[roles.label])] += 1
            counts.count_lengths("before", row, roles)
            if leaks[i] is not None:
                counts.in_eval += 1
                if keep[i]:
                    keep[i] = False
                    counts.source_in_eval[str(leaks[i])] += 1
            if keep[i]:
                out.append({**row, "sf_origin": "source", "sf_augmenter": None,
                            "sf_source_row": int(batch.row_ids[i]), "sf_label_rule": None})
                counts.labels_after[labels.key(row[roles.label])] += 1
        counts.rows_in += len(out)
        position = {int(r): i for i, r in enumerate(batch.row_ids.tolist())}
        candidates: list[Candidate] = []
        for _, aug in augmenters:
            plan = plans[aug.name]
            if not plan.selected.any():
                continue
            made: Counter[int] = Counter()
            for generated in aug.augment(batch, plan):
                candidate = self._candidate(aug, generated, plan, position, source_rows, made, redactor, counts)
                if candidate is not None:
                    candidates.append(candidate)
        alive = candidates
        for flt in filters:
            if not alive:
                break
            if isinstance(flt, LlmJudge):
                alive = self._judge(flt, alive, counts)
                continue
            reasons = flt.check(alive)
            survivors = []
            for c, reason in zip(alive, reasons, strict=True):
                if reason is None:
                    survivors.append(c)
                else:
                    counts.filtered[flt.name][reason] += 1
                    counts.dropped[c.augmenter][flt.name][reason] += 1
            alive = survivors
        for c in alive:
            counts.kept[c.augmenter] += 1
            counts.labels_after[labels.key(c.row[roles.label])] += 1
            if len(counts.examples[c.augmenter]) < EXAMPLES_PER_AUGMENTER:
                counts.examples[c.augmenter].append(self._example(c))
            out.append(c.row)
        counts.generated_kept += len(alive)
        for row in out:
            counts.count_lengths("after", row, roles)
        writer.add(out)

    def _judge(self, judge: LlmJudge, alive: list[Candidate], counts: _Counts) -> list[Candidate]:
        """Apply an llmJudge's verdicts: provenance on every row it graded, then keep, drop or relabel."""
        label = self.roles.label
        survivors = []
        for c, verdict in zip(alive, judge.review(alive), strict=True):
            if verdict is None:
                survivors.append(c)
                continue
            grade = judge.grade_value(verdict.grade) if verdict.grade is not None else None
            c.row["sf_judge_label"] = grade
            c.row["sf_judge_agrees"] = verdict.agrees
            if verdict.action == "drop":
                reason = verdict.reason or "judge"
                counts.filtered[judge.name][reason] += 1
                counts.dropped[c.augmenter][judge.name][reason] += 1
                continue
            if verdict.action == "relabel":
                c.row[label] = grade
                c.row["sf_label_rule"] = JUDGE_LABEL_RULE
                c.label_rule = JUDGE_LABEL_RULE
                changed = set(c.changed) | {"label"} if grade != c.source[label] else set(c.changed) - {"label"}
                c.changed = tuple(f for f in _CHANGED_ORDER if f in changed)
            survivors.append(c)
        return survivors

    def _candidate(self, aug: RowAugmenter, generated: GeneratedRow, plan: BatchPlan, position: dict[int, int],
                   source_rows: list[dict[str, Any]], made: Counter[int], redactor: PiiRedactor,
                   counts: _Counts) -> Candidate | None:
        """Check a generated row against the protocol and its budget; merge, redact, stamp it."""
        roles, fields = self.roles, self._fields
        i = position.get(generated.source_row)
        if i is None:
            raise AugmentError(f"augmenter {aug.name} returned a row for source row {generated.source_row}, which is "
                               "not in the batch it was given (a bug in the augmenter)")
        if generated.unusable is not None:
            # The augmenter could not work on this source row (e.g. its image is missing): count it
            # where the manifest shows drops, so broken inputs are visible, and write nothing.
            counts.filtered[UNUSABLE][generated.unusable] += 1
            counts.dropped[aug.name][UNUSABLE][generated.unusable] += 1
            return None
        changes = generated.changes
        if not changes.keys() <= fields.keys():
            raise AugmentError(f"augmenter {aug.name} changed columns {sorted(set(changes) - set(fields))} that are "
                               "not mapped in spec.source.columns (a bug in the augmenter)")
        source = source_rows[i]
        made[i] += 1
        if not plan.selected[i] or (plan.per_row is not None and made[i] > plan.per_row):
            counts.filtered["budget"]["over the augmenter's budget"] += 1
            counts.dropped[aug.name]["budget"]["over the augmenter's budget"] += 1
            return None
        counts.produced[aug.name] += 1
        row = {**source, **changes}
        changed: set[str] = set()
        for column, value in changes.items():
            if value != source[column]:
                field = fields[column]
                if field == "label" and generated.label_rule == "keep":
                    raise AugmentError(f"augmenter {aug.name} changed the label of a row whose label rule is 'keep'")
                if self._redact and field in ("query", "item") and isinstance(value, str):
                    row[column] = redactor.redact(value)
                changed.add(field)
        if not changed:
            counts.filtered["unchanged"]["identical to its source row"] += 1
            counts.dropped[aug.name]["unchanged"]["identical to its source row"] += 1
            return None
        if roles.id:
            source_id = source[roles.id]
            row[roles.id] = None if source_id is None else f"{source_id}~{aug.name}~{generated.variant}"
        row["sf_origin"] = "generated"
        row["sf_augmenter"] = aug.name
        row["sf_source_row"] = generated.source_row
        row["sf_label_rule"] = generated.label_rule
        return Candidate(row, source, aug.name, generated.label_rule, generated.source_row, generated.variant,
                         tuple(f for f in _CHANGED_ORDER if f in changed))

    def _example(self, c: Candidate) -> dict[str, Any]:
        roles = self.roles
        pick: Callable[[dict[str, Any]], dict[str, Any]] = lambda r: {
            "query": r[roles.query], "item": r[roles.item], "label": r[roles.label],
            **({"attributes": {a: r[a] for a in roles.attributes}} if roles.attributes else {})}
        return {"augmenter": c.augmenter, "sourceRow": c.source_row, "source": pick(c.source),
                "generated": pick(c.row)}

    def _stage(self, message: str) -> None:
        """What the shard does now; the sender repeats it as a keep-alive through long silent steps."""
        if self.heartbeat is not None:
            self.heartbeat.stage(message)

    def _beat(self, counts: _Counts, rejected: int, total: int, started: float) -> None:
        if self.heartbeat is None:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        filtered = {name: sum(r.values()) for name, r in counts.filtered.items()}
        self.heartbeat.update(
            done=min(counts.rows_read, total), total=total, rate=counts.rows_read / elapsed,
            augmentation={"samplesIn": counts.rows_in, "samplesOut": counts.rows_in + counts.generated_kept,
                          "perAugmenter": dict(counts.kept), "filtered": filtered, "rejectedRows": rejected})

    # -- 6. commit the run ---------------------------------------------------------------------------

    def try_commit(self, fp: str) -> S3Uri | None:
        """Write the manifest if every shard's marker carries ``fp``; the manifest's URI, else None."""
        markers = read_markers(self.store, self.prefix)
        shards = self.ctx.shards
        if any(markers.get(i, {}).get("fingerprint") != fp for i in range(shards)):
            return None
        manifest = assemble_manifest([markers[i] for i in range(shards)])
        artifacts = []
        if manifest.get("preprocess"):
            stats = {k: v for k, v in manifest["preprocess"].items() if k != "statsFile"}
            artifacts.append(self._artifact("preprocess.json", _canonical_json(stats), "application/json"))
        manifest["artifacts"] = artifacts
        report = render_report(manifest).encode("utf-8")
        artifacts.append(self._artifact("report.md", report, "text/markdown; charset=utf-8"))
        page = render_html_report(manifest).encode("utf-8")
        artifacts.append(self._artifact("report.html", page, "text/html; charset=utf-8"))
        uri = self.store.commit(self.prefix, committed_manifest(manifest))
        log.info("run committed", extra={"manifest": str(uri), "rows_out": manifest["rowsOut"],
                                         "parts": len(manifest["files"])})
        return uri

    def _artifact(self, rel: str, data: bytes, content_type: str) -> dict[str, Any]:
        self.store.write_bytes(self.prefix.join(rel), data, content_type)
        return {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _check_usable(uri: str, knowledge: DatasetKnowledge) -> None:
    """A source without a single usable row is unreadable as a dataset: augmenting it would commit an
    empty output and call the run a success, which a FineTuneRun on it would only find out later."""
    if knowledge.total_rows == 0:
        raise SourceError(f"spec.source.uri {uri} holds no rows (the file is empty, or every data file under "
                          "the prefix is); upload the data, or point spec.source.uri at a file that has rows")
    if knowledge.valid_rows == 0:
        raise SourceError(f"none of the {knowledge.total_rows} rows of spec.source.uri {uri} is usable: every one "
                          "was set aside while cleaning (malformed, or empty query or item text); check the data "
                          "and spec.source.columns")


def _with_judges(filters: list[Filter], judges: list[LlmJudge]) -> list[Filter | LlmJudge]:
    """The filter chain with the judges (in spec order) before dedup: after the cheap filters, so a
    row they drop costs no request, and before dedup, which remembers the rows it keeps."""
    at = next((i for i, f in enumerate(filters) if f.name in ("dedup", "nearDedup")), len(filters))
    return [*filters[:at], *judges, *filters[at:]]


def _engine_summaries(augmenters: list[tuple[Any, RowAugmenter]]) -> dict[str, Any]:
    """Each model-based augmenter's engine figures in this pod (load time, rate, requests, cache)."""
    out: dict[str, Any] = {}
    for _, augmenter in augmenters:
        if isinstance(augmenter, AugmenterSummary):
            summary = dict(augmenter.summary())
            if "engine" in summary:
                out[augmenter.name] = summary
    return out


def _augmenter_info(entry: Any, augmenter: RowAugmenter) -> dict[str, Any]:
    """What the manifest says about an augmenter besides its counts: type, label rule, and its
    :class:`~.protocol.AugmenterSummary` when it has one."""
    info: dict[str, Any] = {"type": entry.type, "labelRule": augmenter.label_rule}
    if isinstance(augmenter, AugmenterSummary):
        info["summary"] = dict(augmenter.summary())
    return info


def _canonical_json(document: Any) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8")

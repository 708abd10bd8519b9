"""One step of an AugmentationRun, from the committed state it finds to the commit it leaves.

A run of several shards is three steps, each a Job the operator starts once the one before has
succeeded (``SAMPLEFORGE_STEP``, :class:`~sampleforge.api.constants.Step`); a run of one shard, or
a pod started without a step, does all three in one process:

* **analysis** (one pod): the first pass over the whole source (:mod:`.knowledge`), committed under
  ``_analysis/`` (:mod:`.analysis`). It runs once: a shard that fails and is retried reads it again,
  never recomputes it.
* **shards** (the Indexed Job): each shard reads the analysis and only its own row range of the
  source (ranged reads, :mod:`.source`), augments, filters and writes its parts and its marker.
* **reduce** (one pod): removes the exact duplicates that different shards generated, reading only
  the shards' dedup keys and rewriting only the parts that lose rows (:mod:`.crossdedup`), then
  commits the manifest (:mod:`.commit`).

Read top to bottom, :meth:`ShardJob.run` is the whole job:

1. **Plan.** Resolve the column roles, check every augmenter type is available, list the source
   objects (with their ETags) and compute two fingerprints: of the configuration (spec, source
   objects, shard count) and of the configuration plus the code. A committed ``manifest.json`` with
   the same configuration fingerprint means the run is done: exit at once. A committed manifest of
   another configuration is an error (the output prefix belongs to another run).
2. **Skip finished work.** An analysis, or a shard marker, with the current fingerprint (and its
   files present) is not redone.
3. **First pass** over the whole source, or the committed analysis of it.
4. **Build** the augmenters (:mod:`.catalog`) and filters (:mod:`.filters`).
5. **Shard pass** over the shard's row range (:mod:`.source`): clean each batch, keep its source rows,
   run every augmenter on it within its budget, redact and filter what they generate, and write
   (:class:`~.shardbatch.BatchProcessor`).
6. **Commit the shard** (parts, dedup keys, rejects, marker), then **reduce and commit the run** once
   every shard has (:mod:`.commit`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sampleforge.api import jobenv
from sampleforge.api.augmentation import AugmentationRunSpec, Columns
from sampleforge.api.constants import Reason, Step
from sampleforge.api.status import AugmentationResults
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .analysis import ANALYSIS_DIR, Analysis, read_analysis, read_analysis_index, write_analysis
from .catalog import build_augmenters, check_supported, needs_of, prepare_states
from .commit import Reduce, code_version, commit_run, digest, engine_summaries, marker_uri, shared_section
from .errors import ConfigError, SourceError
from .filters import Filter, build_filters
from .judge import JUDGE_COLUMNS, LlmJudge
from .knowledge import DatasetKnowledge, learn
from .leakage import EvalSplit, eval_split
from .modelcache import ModelCache
from .output import PartWriter, RejectsWriter, clear_directory, output_schema
from .pii import PiiRedactor
from .preprocess import Cleaner, clean_text
from .rows import PROVENANCE_COLUMNS, ColumnRoles
from .shardbatch import BatchProcessor, ShardCounts
from .source import Checkpoint, SourceObject, SourceReader, list_objects, shard_range

log = logging.getLogger("sampleforge.jobs.augment")

__all__ = ["BATCH_ROWS", "Outcome", "ShardJob", "roles_of"]

BATCH_ROWS = 2048


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


@dataclass(frozen=True)
class Outcome:
    """How a step ended: ``committed`` (this pod wrote the manifest), ``shardCommitted`` (others still to
    finish, or the reduce step to come), ``analysed`` (the analysis is committed), or
    ``alreadyCommitted`` (nothing to do)."""

    state: str
    manifest_uri: str | None
    message: str


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

    def run(self, step: Step | None = None) -> Outcome:
        """Carry out ``step`` of the run (all of them when None; see the module docstring)."""
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
        if step is Step.ANALYSIS:
            return self._analyse(objects, fp)
        if step is Step.REDUCE:
            return self._reduce_and_commit(fp, required=True)
        if self._finished_marker(fp) is not None:
            log.info("shard already committed; skipping to the run commit", extra={"shard": self.ctx.shard})
        else:
            reader = self._reader(objects)
            if step is Step.SHARDS:
                analysis = self._committed_analysis(fp)
                knowledge, prepared, analysis_bytes = analysis.knowledge, analysis.prepared, analysis.bytes_read
            else:
                knowledge, prepared, analysis_bytes = self._first_pass(reader), None, 0
            self._process(reader, objects, knowledge, prepared, config_fp, fp, started, analysis_bytes,
                          dedup_keys=step is Step.SHARDS)
        if step is Step.SHARDS:
            return Outcome("shardCommitted", None, f"shard {self.ctx.shard} of {self.ctx.shards} committed")
        return self._reduce_and_commit(fp, required=False)

    def _reader(self, objects: list[SourceObject]) -> SourceReader:
        return SourceReader(self.store, objects, self.roles.all, self.roles.field_paths(), BATCH_ROWS)

    def _reduce_and_commit(self, fp: str, required: bool) -> Outcome:
        """Commit the run if every shard has. As the reduce step (``required``), every shard must have,
        and the duplicates that different shards generated are removed first; shards run without a
        step commit as they always did, the last one to finish writing the manifest."""
        if required:
            self._stage(f"removing duplicates across {self.ctx.shards} shards and committing")
        workdir = self.cache_dir / "augment" / fp[:16] / "reduce"
        manifest = commit_run(self.store, self.prefix, self.ctx.shards, fp,
                              reduce=Reduce(workdir, self.roles) if required else None)
        if self.heartbeat is not None:
            self.heartbeat.flush()
        if manifest is not None:
            return Outcome("committed", str(manifest), "every shard has committed; manifest written")
        return Outcome("shardCommitted", None, f"shard {self.ctx.shard} committed; waiting for other shards")

    def _check_output_bucket(self) -> None:
        try:
            exists = self.store.bucket_exists(self.prefix.bucket)
        except StorageError as err:
            raise StorageError(f"spec.output.uri {self.spec.output.uri}: {err}", transient=err.transient) from err
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
        entries = [*marker.get("files", []), *marker.get("dedupKeys", []),
                   *([marker["rejects"]] if marker.get("rejects") else [])]
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
        object_offsets: list[list[Checkpoint]] = []
        self._stage("first pass over the source")
        with self._bar(None, "first pass") as bar:
            knowledge = learn(reader.read_all(object_rows, object_offsets), object_rows, self.roles, self.spec,
                              needs_of(self.spec), progress=bar.update, object_offsets=object_offsets)
        _check_usable(self.spec.source.uri, knowledge)
        return knowledge

    # -- the analysis step, and what the shards read of it ---------------------------------------------

    def _analyse(self, objects: list[SourceObject], fp: str) -> Outcome:
        """The first pass, once for the whole run, committed for the shards (unless it already is)."""
        index = self.prefix.join(ANALYSIS_DIR, "index.json")
        if read_analysis_index(self.store, self.prefix, fp) is not None:
            return Outcome("analysed", str(index), "the source is already analysed for this configuration")
        reader = self._reader(objects)
        knowledge = self._first_pass(reader)
        self._stage("training and indexing on the whole source (the GAN, retrieval indexes)")
        prepared = prepare_states(self.spec, roles=self.roles, labels=knowledge.labels, knowledge=knowledge,
                                  store=self.store, models=ModelCache(self.store, self.cache_dir))
        self._stage("committing the analysis")
        uri = write_analysis(self.store, self.prefix, knowledge, fp, prepared)
        if self.heartbeat is not None:
            self.heartbeat.flush()
        return Outcome("analysed", str(uri),
                       f"analysed {knowledge.total_rows} source rows ({knowledge.valid_rows} usable) in "
                       f"{knowledge.seconds:.1f} s, reading {reader.bytes_read} bytes; committed {uri}")

    def _committed_analysis(self, fp: str) -> Analysis:
        self._stage("reading the analysis")
        analysis = read_analysis(self.store, self.prefix, fp)
        if analysis is None:
            raise ConfigError(f"{self.prefix.join(ANALYSIS_DIR)} holds no analysis of this configuration: the shards "
                              "step reads what the analysis step committed. Run the analysis step first "
                              f"({jobenv.STEP}={Step.ANALYSIS.value}); the operator runs the steps in order")
        return analysis

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

    def _process(self, reader: SourceReader, objects: list[SourceObject], knowledge: DatasetKnowledge,
                 prepared: Mapping[str, bytes] | None, config_fp: str, fp: str, started: float,
                 analysis_bytes: int, dedup_keys: bool) -> None:
        spec, roles, shard, shards = self.spec, self.roles, self.ctx.shard, self.ctx.shards
        first_pass_seconds = time.monotonic() - started
        trains = "" if prepared is not None else " (the GAN trains here)"
        self._stage(f"loading models and building augmenters{trains}")
        split = self._eval_split()
        models = ModelCache(self.store, self.cache_dir)
        augmenters = build_augmenters(spec, roles=roles, labels=knowledge.labels, knowledge=knowledge,
                                      store=self.store, models=models, prepared=prepared)
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
        redactor = PiiRedactor()
        cleaner = Cleaner(roles, spec.preprocess, spec.filters.pii_redaction, knowledge.labels.kind, knowledge.dense)
        processor = BatchProcessor(roles, knowledge, augmenters, chain, redactor, writer, spec.seed,
                                   spec.filters.pii_redaction, dedup_keys=dedup_keys)
        counts = processor.counts
        process_started = time.monotonic()
        with self._bar(hi - lo, f"shard {shard}/{shards}") as bar:
            for raw in reader.read_range(knowledge.object_rows, lo, hi, last=shard == shards - 1,
                                         object_offsets=knowledge.object_offsets):
                batch, bad = cleaner.clean(raw, redactor)
                rejects.add(bad)
                counts.rows_read += raw.size
                if len(batch):
                    processor.process(batch)
                bar.update(raw.size)
                self._beat(counts, rejects.rows, hi - lo, process_started)
        parts = writer.close()
        rejects_entry = rejects.close()
        marker = {
            "shard": shard, "shards": shards, "fingerprint": fp, "configFingerprint": config_fp,
            "rowRange": [lo, hi], "files": parts, "rejects": rejects_entry,
            # The exact-dedup key of every row of each part, for the reduce step (shards step only).
            "dedupKeys": writer.key_files,
            "counts": processor.marker_counts(rejects.rows, rejects.reasons),
            "examples": processor.examples(),
            "exampleRows": processor.example_rows(),
            # This pod's engine figures, which the manifest combines over every shard.
            "engines": engine_summaries(augmenters),
            # What this pod fetched: the source (the first pass, or only its range after an analysis
            # step) and the analysis artifact.
            "bytesRead": {"source": reader.bytes_read, "analysis": analysis_bytes},
            "timings": {"firstPassSeconds": round(first_pass_seconds, 3),
                        "processSeconds": round(time.monotonic() - process_started, 3),
                        "totalSeconds": round(time.monotonic() - started, 3)},
            "shared": shared_section(self.ctx, objects, knowledge, augmenters, notes, split),
        }
        self.store.write_json(marker_uri(self.prefix, shard), marker)
        if self.heartbeat is not None:
            self._beat(counts, rejects.rows, hi - lo, process_started)
            self.heartbeat.flush()
        clear_directory(workdir)
        log.info("shard committed", extra={"shard": shard, "parts": len(parts), "rows_out": sum(p["rows"] for p in parts),
                                           "rejected_rows": rejects.rows})

    def _stage(self, message: str) -> None:
        """What the shard does now; the sender repeats it as a keep-alive through long silent steps."""
        if self.heartbeat is not None:
            self.heartbeat.stage(message)

    def _beat(self, counts: ShardCounts, rejected: int, total: int, started: float) -> None:
        if self.heartbeat is None:
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        filtered = {name: sum(r.values()) for name, r in counts.filtered.items()}
        self.heartbeat.update(
            done=min(counts.rows_read, total), total=total, rate=counts.rows_read / elapsed,
            augmentation=AugmentationResults(samples_in=counts.rows_in,
                                             samples_out=counts.rows_in + counts.generated_kept,
                                             per_augmenter=dict(counts.kept), filtered=filtered,
                                             rejected_rows=rejected))


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

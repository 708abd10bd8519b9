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
   run every augmenter on it within its budget, redact and filter what they generate, and write
   (:class:`~.shardbatch.BatchProcessor`).
6. **Commit the shard** (parts, rejects, marker), then **commit the run** if every shard has
   (:mod:`.commit`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sampleforge.api.augmentation import AugmentationRunSpec, Columns
from sampleforge.api.constants import Reason
from sampleforge.api.status import AugmentationResults
from sampleforge.jobs.common.context import RunContext
from sampleforge.jobs.common.heartbeat import HeartbeatSender
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.storage import ObjectStore, S3Uri

from .catalog import build_augmenters, check_supported, needs_of
from .commit import code_version, commit_run, digest, engine_summaries, marker_uri, shared_section
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
from .source import SourceObject, SourceReader, list_objects, shard_range

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
    """How a shard's run ended: ``committed`` (this shard wrote the manifest), ``shardCommitted`` (others
    still to finish), or ``alreadyCommitted`` (nothing to do)."""

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
        manifest = commit_run(self.store, self.prefix, self.ctx.shards, fp)
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
        augmenters = build_augmenters(spec, roles=roles, labels=knowledge.labels, knowledge=knowledge,
                                             store=self.store, models=models)
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
                                   spec.filters.pii_redaction)
        counts = processor.counts
        process_started = time.monotonic()
        with self._bar(hi - lo, f"shard {shard}/{shards}") as bar:
            for raw in reader.read_range(knowledge.object_rows, lo, hi, last=shard == shards - 1):
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
            "counts": processor.marker_counts(rejects.rows, rejects.reasons),
            "examples": processor.examples(),
            # This pod's engine figures, which the manifest combines over every shard.
            "engines": engine_summaries(augmenters),
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

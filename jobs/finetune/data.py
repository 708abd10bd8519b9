"""Reading training and evaluation rows from MinIO: one file, a prefix of files, or a committed
output (an AugmentationRun's, or any prefix with a ``manifest.json``).

Two rules shape this module:

* A committed prefix is read only through its manifest: the files it lists, each checked against
  the size and sha256 recorded there, so leftovers of a failed attempt are never trained on.
* Bad rows (no query, no item text, no label, a non-numeric dense feature, unparseable JSON or CSV,
  bytes that are not UTF-8) are counted per reason and set aside, never silently dropped, never
  decoded with replacement characters and never fatal; a dataset with no usable row at all is an
  error that names the spec field. JSONL and CSV are parsed by :mod:`sampleforge.jobs.common.records`,
  the code the augmentation job reads its source with, so both jobs agree on what a row is.
* Rows that carry an augmentation run's provenance (``sf_origin``, ``sf_source_row``) keep it, so
  that the evaluation split can follow lineage (:func:`split_by_query`).

Files are read one at a time, streamed (:mod:`.ingest`), into Arrow files under the run's data
directory, which every process then memory-maps (:mod:`.examples`): a process holds a batch of
rows at a time, never the dataset. The processes of a pod share that directory and split the files
between them (:class:`.team.Team`), so each downloads and parses only its share; parts are named by
what they hold, so a restarted pod reuses the ones already made. Tokenising and batching live in
:mod:`.tokens` and :mod:`.batches`, the split by query in :mod:`.split`, and what a label means
for each task in :mod:`.labels`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
from pydantic import ValidationError

from sampleforge.api.augmentation import Columns
from sampleforge.api.manifest import CommittedData, OutputFile, describe
from sampleforge.jobs.common.formats import SUFFIX_FORMATS, format_of
from sampleforge.jobs.common.outage import StorageError
from sampleforge.jobs.common.records import CsvHeaderError
from sampleforge.jobs.common.storage import MANIFEST_NAME, ObjectStore, S3Uri, content_matches

from .errors import DatasetError
from .examples import Examples, RowStore
from .ingest import ingest
from .mapped import MappedFile, Scratch, release_heap
from .rejected import Rejected
from .team import PartFailed, Team

__all__ = ["SUFFIX_FORMATS", "Dataset", "Examples", "Rejected", "committed_data", "data_formats", "read_committed",
           "read_dataset"]

#: Changes when what a rows file holds changes, so files of an older layout are not reused.
ROWS_LAYOUT: Final = 1


@dataclass(frozen=True)
class Dataset:
    """What was read from one place, and from where."""

    examples: Examples
    rejected: Rejected
    uri: str
    files: list[str]
    columns: Columns
    #: The committed manifest, when the data came from one (an AugmentationRun's output): as written
    #: (for the model card), and the part this job reads, validated.
    manifest: dict[str, Any] | None = None
    committed: CommittedData | None = None


@dataclass(frozen=True)
class _Source:
    """One file to read: where, in which format, what identifies its content (sha256 from a
    manifest, else the ETag), and the size and sha256 it must have (committed data only)."""

    uri: S3Uri
    format: str
    identity: str
    expected: OutputFile | None = None


# --- places -> Dataset ------------------------------------------------------------------------


def _part_name(source: _Source, columns: Columns, field_name: str, need_label: bool) -> str:
    described = json.dumps([ROWS_LAYOUT, str(source.uri), source.format, source.identity,
                            columns.model_dump(mode="json", by_alias=True), field_name, need_label])
    return "rows-" + hashlib.sha256(described.encode()).hexdigest()[:32]


def _read_part(store: ObjectStore, source: _Source, columns: Columns, field_name: str, need_label: bool,
               rows_path: Path, done: Path) -> None:
    """Download one file, check it against its manifest entry, and read it into ``rows_path``;
    ``done`` (what was read and set aside) is written last."""
    with tempfile.TemporaryDirectory(prefix=".download-", dir=rows_path.parent) as scratch:
        local = Path(scratch) / "data"
        try:
            store.download_file(source.uri, local)
        except StorageError as err:
            raise DatasetError(f"{field_name}: {err}") from err
        entry = source.expected
        if entry is not None and not content_matches(local, entry.size, entry.sha256):
            raise DatasetError(f"{source.uri} does not match the size or sha256 in its manifest ({field_name}): the "
                               "committed output was changed afterwards; rerun the run that produced it")
        try:
            read = ingest(local, source.format, columns, str(source.uri), field_name, need_label, rows_path)
        except (pa.ArrowInvalid, CsvHeaderError, OSError) as err:
            raise DatasetError(f"{source.uri} is not a readable {source.format} file ({field_name}): {err}") from err
    staging = done.with_name(f".{done.name}.{os.getpid()}.tmp")
    staging.write_text(json.dumps(read))
    os.replace(staging, done)


def _read_all(store: ObjectStore, sources: list[_Source], columns: Columns, field_name: str, need_label: bool,
              directory: Path | None, team: Team | None) -> tuple[Examples, Rejected]:
    """Every file into a rows file under ``directory`` (a temporary one when None), this process's
    share of them, then all of them mapped as one store, in file order."""
    keep = None
    if directory is None:
        keep = Scratch("sampleforge-rows-")
        directory, team = keep.path, None
    directory.mkdir(parents=True, exist_ok=True)
    names = [_part_name(s, columns, field_name, need_label) for s in sources]
    done = [directory / f"{name}.json" for name in names]

    def build(number: int, path: Path) -> None:
        _read_part(store, sources[number], columns, field_name, need_label,
                   directory / f"{names[number]}.arrow", path)

    try:
        (team or Team()).make(done, build)
    except PartFailed as err:
        raise DatasetError(str(err)) from (StorageError(str(err), transient=True) if err.transient else None)
    rejected = Rejected()
    read = [json.loads(path.read_text()) for path in done]
    for part in read:
        rejected.extend(Rejected.from_json(part["rejected"]))
    store_ = RowStore([MappedFile(directory / f"{name}.arrow") for name in names],
                      labelled=all(p["labelled"] for p in read), traced=any(p["traced"] for p in read),
                      dense_width=len(columns.dense_features), keep=keep)
    release_heap()
    return Examples.view(store_), rejected


def committed_data(manifest: dict[str, Any], prefix: S3Uri, field_name: str) -> CommittedData:
    """The part of a committed manifest this job reads, validated; a DatasetError naming each
    missing or malformed key otherwise."""
    try:
        return CommittedData.model_validate(manifest)
    except ValidationError as err:
        raise DatasetError(f"the manifest under {prefix} is not a usable augmentation manifest ({field_name}): "
                           f"{describe(err)}; it was not written by sampleforge or was changed afterwards: rerun "
                           "the run that produced it") from err


def data_formats(committed: CommittedData, prefix: S3Uri, field_name: str) -> list[str]:
    """The format of each file the manifest lists: all of them are data parts (the manifest lists
    rejects and reports elsewhere). The manifest's ``format``, else the file's suffix."""
    formats = []
    for entry in committed.files:
        fmt = format_of(entry.path, committed.format)
        if fmt is None:
            raise DatasetError(f"the manifest under {prefix} lists {entry.path} as data, but declares no format and "
                               f"the name does not end in {', '.join(SUFFIX_FORMATS)} ({field_name})")
        formats.append(fmt)
    return formats


def read_committed(store: ObjectStore, prefix: S3Uri, field_name: str, need_label: bool,
                   columns: Columns | None = None, directory: Path | None = None, team: Team | None = None) -> Dataset:
    """Read exactly the files a committed manifest lists, each checked against the size and sha256
    recorded there. Column roles come from the manifest's ``columns`` (camelCase, as in the
    AugmentationRun spec) unless ``columns`` is given. The rows go to ``directory`` (see
    :func:`_read_all`)."""
    try:
        manifest = store.read_manifest(prefix)
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err
    if manifest is None:
        raise DatasetError(f"{prefix} has no {MANIFEST_NAME} ({field_name}): its output was never committed; wait "
                           "for the run that writes it to succeed, or point at a committed output")
    committed = committed_data(manifest, prefix, field_name)
    formats = data_formats(committed, prefix, field_name)
    if columns is None:
        columns = committed.columns or Columns()
    uris = [prefix.join(e.path) for e in committed.files]
    sources = [_Source(uri, fmt, f"sha256:{entry.sha256}:{entry.size}", entry)
               for uri, fmt, entry in zip(uris, formats, committed.files, strict=True)]
    examples, rejected = _read_all(store, sources, columns, field_name, need_label, directory, team)
    dataset = Dataset(examples, rejected, str(prefix), [str(u) for u in uris], columns, manifest, committed)
    return _checked(dataset, field_name)


def read_dataset(store: ObjectStore, uri: str, fmt: str | None, columns: Columns | None, field_name: str,
                 need_label: bool, directory: Path | None = None, team: Team | None = None) -> Dataset:
    """Read ``uri``: one file, or every data file under a prefix ending in '/'. A prefix with a
    manifest is read as a committed output (only what the manifest lists). The rows go to
    ``directory`` (see :func:`_read_all`)."""
    location = S3Uri.parse(uri)
    columns = columns or Columns()
    if uri.endswith("/"):
        if _exists(store, location.join(MANIFEST_NAME), field_name):
            return read_committed(store, location, field_name, need_label, columns, directory, team)
        listed = [(u, etag) for u, _, etag in _listing(store, location, field_name)
                  if not any(part.startswith(("_", ".")) for part in u.key[len(location.key):].split("/"))]
        sources = [_Source(u, f, f"etag:{etag}") for u, etag in listed if (f := format_of(u.key, fmt))]
        if not sources:
            raise DatasetError(f"no .jsonl, .csv or .parquet files under {uri} ({field_name}); check the URI")
    else:
        detected = format_of(location.key, fmt)
        if detected is None:
            raise DatasetError(f"cannot tell the format of {uri}; set {field_name.rsplit('.', 1)[0]}.format "
                               "(jsonl, csv or parquet)")
        if not _exists(store, location, field_name):
            raise DatasetError(f"{uri} does not exist ({field_name}); check the URI and that the upload finished")
        try:
            sources = [_Source(location, detected, f"etag:{store.etag(location)}")]
        except StorageError as err:
            raise DatasetError(f"{field_name}: {err}") from err
    examples, rejected = _read_all(store, sources, columns, field_name, need_label, directory, team)
    return _checked(Dataset(examples, rejected, uri, [str(s.uri) for s in sources], columns), field_name)


def _exists(store: ObjectStore, uri: S3Uri, field_name: str) -> bool:
    try:
        return bool(store.exists(uri))
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err


def _listing(store: ObjectStore, prefix: S3Uri, field_name: str) -> list[tuple[S3Uri, int, str]]:
    try:
        return list(store.list(prefix))
    except StorageError as err:
        raise DatasetError(f"{field_name}: {err}") from err


def _checked(dataset: Dataset, field_name: str) -> Dataset:
    if len(dataset.examples) == 0:
        reasons = ", ".join(f"{r} ({n})" for r, n in dataset.rejected.reasons.most_common(3)) or "the files are empty"
        raise DatasetError(f"no usable rows in {dataset.uri} ({field_name}): {reasons}")
    return dataset

"""``report``: the run's human-readable outputs, read from MinIO as the run committed them.

Readers trust an output prefix only once its ``manifest.json`` exists (the jobs write it last), so
nothing is shown from a run that has not committed: a half-written report would mislead. What is
read, under the run's output prefix (``status.outputs.uri``, else ``spec.output.uri``):

* AugmentationRun: ``report.md`` (jobs/augment/report.py), and ``report.html`` when published;
* FineTuneRun: the model card ``model/README.md`` and ``metrics.json`` (jobs/finetune/publish.py),
  and ``report.html`` when published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from rich.console import RenderableType
from rich.table import Table

from sampleforge.api import Kind

from .kube import Cluster, UserError, phase_of, storage_client
from .views import format_number

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
MODEL_CARD = "model/README.md"
METRICS = "metrics.json"
MANIFEST = "manifest.json"


@dataclass
class Report:
    """What was found: markdown documents (URI, text), an HTML report, a metrics table."""

    markdown: list[tuple[str, str]] = field(default_factory=list)
    html: bytes | None = None
    html_uri: str | None = None
    metrics: RenderableType | None = None
    metrics_uri: str | None = None


def output_prefix(run: dict[str, Any]) -> str:
    outputs = (run.get("status") or {}).get("outputs") or {}
    uri = outputs.get("uri") or ((run.get("spec") or {}).get("output") or {}).get("uri")
    if not uri:
        raise UserError(f"{run['metadata']['name']} has no spec.output.uri")
    return str(uri) if str(uri).endswith("/") else f"{uri}/"


def split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class _Reader:
    """Reads objects under one prefix, turning S3 and network errors into what to do about them."""

    def __init__(self, s3: Any, prefix: str, endpoint: str, run: str) -> None:
        self.s3, self.prefix, self.endpoint, self.run = s3, prefix, endpoint, run

    def get(self, rel: str) -> bytes | None:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        bucket, key = split_uri(self.prefix + rel)
        try:
            response = self.s3.get_object(bucket, key)
        except S3Error as error:
            if error.code == "NoSuchKey":
                return None
            if error.code == "NoSuchBucket":
                raise UserError(f"bucket {bucket!r} of {self.run}'s output does not exist on {self.endpoint}") from None
            if error.code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise UserError(f"MinIO at {self.endpoint} refused {self.run}'s credentials Secret for "
                                f"s3://{bucket}/{key}: {error.code}") from None
            raise UserError(f"cannot read s3://{bucket}/{key} from {self.endpoint}: {error.code} {error.message}"
                            ) from None
        except (HTTPError, OSError) as error:
            raise UserError(f"cannot reach MinIO at {self.endpoint} ({type(error).__name__}); from outside the "
                            "cluster, port-forward to it and pass --s3-endpoint localhost:PORT") from None
        try:
            return bytes(response.read())
        finally:
            response.close()
            response.release_conn()


def metrics_table(metrics: dict[str, Any]) -> Table:
    """metrics.json's final and best evaluation, the figures people look for first."""
    table = Table(title="metrics.json", title_justify="left")
    table.add_column("Metric")
    table.add_column("Final", justify="right")
    final = metrics.get("final") or {}
    for name, value in final.items():
        table.add_row(name, format_number(value) if isinstance(value, int | float) else str(value))
    best = metrics.get("best")
    if isinstance(best, dict) and best.get("name"):
        table.caption = f"best {best['name']} = {format_number(best.get('value'))} at step {best.get('step')}"
    return table


def fetch_report(cluster: Cluster, kind: Kind, run: dict[str, Any], want_html: bool = False,
                 endpoint: str | None = None) -> Report:
    name = f"{kind.value} {run['metadata']['name']}"
    prefix = output_prefix(run)
    s3 = storage_client(cluster, kind, run, endpoint)
    reader = _Reader(s3, prefix, endpoint or (run.get("spec") or {}).get("storage", {}).get("endpoint", "?"), name)
    if reader.get(MANIFEST) is None:
        raise UserError(f"{name} has not committed its output yet ({prefix}{MANIFEST} does not exist; phase "
                        f"{phase_of(run) or 'Pending'}): its report is published with the commit")
    found = Report()
    if want_html:
        found.html = reader.get(REPORT_HTML)
        if found.html is None:
            raise UserError(f"{name} has no HTML report published yet ({prefix}{REPORT_HTML} does not exist); "
                            "`kubectl sampleforge report` without --html shows the markdown one")
        found.html_uri = prefix + REPORT_HTML
        return found
    documents = [REPORT_MD] if kind == Kind.AUGMENTATION_RUN else [MODEL_CARD]
    for rel in documents:
        data = reader.get(rel)
        if data is not None:
            found.markdown.append((prefix + rel, data.decode("utf-8", errors="replace")))
    if kind == Kind.FINE_TUNE_RUN:
        data = reader.get(METRICS)
        if data is not None:
            found.metrics = metrics_table(json.loads(data))
            found.metrics_uri = prefix + METRICS
    if not found.markdown and found.metrics is None:
        raise UserError(f"{name} committed its output but published no report ({', '.join(prefix + d for d in documents)}"
                        " missing)")
    return found

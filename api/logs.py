"""Structured logs for pods and the operator: one JSON object a line, and never a secret.

Log collectors (Loki, Cloud Logging, Elasticsearch) parse one JSON object per line without
configuration. Anything that looks like a credential is masked at the formatter, the last place
a secret could slip through, whatever the caller passed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import Any

from sampleforge.api import jobenv

_SECRET_ENV = (jobenv.S3_ACCESS_KEY, jobenv.S3_SECRET_KEY, jobenv.HUB_TOKEN, *jobenv.AWS_SECRET_ENV)
_TOKENISH = re.compile(r"(?i)(secret|token|password|authorization)([\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)")
# LogRecord attributes, plus kopf's extras that would dump its whole settings object into each line.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"settings", "k8s_skip"}


def _secrets() -> list[str]:
    names = [*_SECRET_ENV, *(n for n in os.environ if n.startswith(jobenv.LLM_API_KEY_PREFIX))]
    return [v for v in (os.environ.get(name, "") for name in names) if len(v) >= 4]


def redact(text: str) -> str:
    """Mask the values of the credentials in the environment and key=value pairs that look secret."""
    for value in _secrets():
        text = text.replace(value, "***")
    return _TOKENISH.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


def setup_logging(level: str | None = None) -> None:
    """JSON lines on stderr for the whole process; call once at the job's entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or os.environ.get("SAMPLEFORGE_LOG_LEVEL", "INFO"))

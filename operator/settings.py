"""The operator's settings: read from the environment once at startup, each with a default.

One frozen object is passed to everything that needs configuration (rendering, the heartbeat
endpoint, the monitors), so a test can build one directly and nothing reads ``os.environ`` later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sampleforge.api.common import Storage
from sampleforge.api.constants import GPU_TYPE_NODE_LABEL

from . import allowlist

_PREFIX = "SAMPLEFORGE_OPERATOR_"
#: Leader-election identity of an operator that runs outside a Pod (no POD_NAME).
LOCAL_IDENTITY = "sampleforge-operator-local"


@dataclass(frozen=True)
class Settings:
    #: Image for run pods when a run sets no spec.image.
    job_image: str = "ghcr.io/sampleforge/sampleforge-job:0.1.0"
    #: Namespaces to watch (comma-separated); empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    #: Namespace the operator runs in (its leader-election Lease lives there).
    pod_namespace: str = "sampleforge-system"
    #: This replica's Pod (the downward API's POD_NAME): its leader-election identity, and the Pod
    #: the leader labels so that the heartbeat Service routes to it. Empty outside a cluster: the
    #: identity is then ``LOCAL_IDENTITY`` and no Pod is labelled.
    pod_name: str = ""
    #: Take part in leader election (several replicas, one active). Off for a single local process.
    leader_election: bool = True
    lease_name: str = "sampleforge-operator"
    lease_duration_seconds: int = 15
    #: Port of the operator's HTTP server: /healthz, /readyz, /metrics and the heartbeat endpoint.
    http_port: int = 8080
    http_host: str = "0.0.0.0"
    #: URL the run pods POST heartbeats to (the operator's Service, or 127.0.0.1 for a local operator).
    heartbeat_url: str = "http://sampleforge-operator.sampleforge-system.svc:8080/v1alpha1/heartbeats"
    #: How often pods send heartbeats; the operator writes a run's status at most once per
    #: ``status_min_interval_seconds`` whatever the pods send.
    heartbeat_interval_seconds: int = 10
    status_min_interval_seconds: float = 5.0
    #: Re-check each live run at least this often even when nothing changed (heartbeat timeouts).
    resync_seconds: float = 30.0
    #: Node label that spec.resources.gpuType is matched against.
    gpu_type_label: str = GPU_TYPE_NODE_LABEL
    #: Tolerate the usual taint of GPU node pools on pods that ask for GPUs.
    tolerate_gpu_taint: bool = True
    #: Port for torch.distributed rendezvous on multi-node FineTuneRuns.
    rendezvous_port: int = 29500
    #: A watch that lags the API server this long marks the operator unhealthy (liveness fails).
    watch_stale_seconds: float = 120.0
    #: A Job that has had no live pods this long gets its FailedCreate Events listed (why the Job
    #: controller cannot create its pods), then again at most this often until it has pods.
    pod_create_check_seconds: float = 10.0
    log_format: str = "json"
    extra_job_env: Mapping[str, str] = field(default_factory=dict)
    #: namespace (or "*") -> the s3:// prefixes its runs may use; empty: no restriction (see allowlist).
    storage_allow_list: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: The storage of runs that set no spec.storage (chart value defaultStorage; JSON in camelCase).
    default_storage: Storage | None = None

    @property
    def identity(self) -> str:
        """Who this replica is in the leader Lease: its Pod's name, or a fixed local name (a
        restarted local operator then takes its own Lease back at once)."""
        return self.pod_name or LOCAL_IDENTITY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """``SAMPLEFORGE_OPERATOR_<FIELD>`` overrides each field, e.g. ``..._JOB_IMAGE``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is None:
                continue
            default = getattr(cls, f.name, None)
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            elif isinstance(default, tuple):
                values[f.name] = tuple(s.strip() for s in raw.split(",") if s.strip())
            elif f.name == "storage_allow_list":
                values[f.name] = allowlist.parse(raw)
            elif f.name == "default_storage":
                values[f.name] = _default_storage(raw)
            elif f.name == "extra_job_env":
                values[f.name] = dict(kv.split("=", 1) for kv in raw.split(",") if "=" in kv)
            else:
                values[f.name] = raw
        if "pod_namespace" not in values and env.get("POD_NAMESPACE"):
            values["pod_namespace"] = env["POD_NAMESPACE"]
        if "pod_name" not in values and env.get("POD_NAME"):
            values["pod_name"] = env["POD_NAME"]
        return cls(**values)


def _default_storage(raw: str) -> Storage | None:
    """The chart's defaultStorage, validated like a run's spec.storage (``{}``: none)."""
    try:
        document = json.loads(raw) if raw.strip() else {}
        return Storage.model_validate(document) if document else None
    except ValueError as err:
        raise ValueError(f"{_PREFIX}DEFAULT_STORAGE (the chart value defaultStorage) is not a valid spec.storage: "
                         f"{err}") from err

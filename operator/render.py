"""Rendering: a run (its identity and spec) → the Kubernetes objects that carry it out, as dicts.

Everything here is a pure function: no API calls, no clock, no randomness. The same run and
settings always give equal dicts (and byte-equal JSON), which is what makes creation idempotent:
the Job's name is derived from the run's name, so an operator that restarts mid-reconcile, or an
event delivered twice, renders the same Job again, and the API server's 409 Conflict says it
exists already. Names are never taken from time or chance.

What a run becomes:

* **AugmentationRun** with ``spec.parallelism`` 1 → one Indexed Job with one pod, which does the
  whole run in-process (``SAMPLEFORGE_STEP`` unset). With parallelism > 1 → three Jobs, one per
  :class:`~sampleforge.api.constants.Step`, made one after the other (:mod:`.steps`; the monitor
  makes the next once the previous has succeeded): the **analysis** Job (one pod, NonIndexed, a
  first pass over the whole source), the **shards** Job (Indexed, one pod per shard:
  ``completions = parallelism = spec.parallelism``; each pod finds its shard in
  ``JOB_COMPLETION_INDEX``, set by Kubernetes) and the **reduce** Job (one pod, NonIndexed, no
  GPU: cross-shard dedup and the manifest). Every step's pods get the shard count in ``SHARD_COUNT``
  and their step in ``SAMPLEFORGE_STEP``; the Jobs and pods carry it in ``LABEL_STEP``. The
  shards Job keeps the name a one-Job run's Job has (:func:`job_name`); the other two get
  ``-analysis`` / ``-reduce`` after it.
* **FineTuneRun** with one node → a plain Job with one pod. With ``distribution.nodes > 1`` → an
  Indexed Job with one pod per node plus a headless Service (:func:`render_headless_service`):
  Indexed Job pods get the hostname ``<job>-<index>``, and with ``subdomain`` = the Service's name
  rank 0 is resolvable as ``<job>-0.<service>.<namespace>.svc``, which is ``MASTER_ADDR``. The node
  rank is the completion index.

Both are owned by the run (``controller: true``), so deleting the run deletes the Job, its pods and
the Service through garbage collection, with no finalizer needed. The pod itself (environment,
resources, volumes, scheduling, security) is built in :mod:`._render_pod`.

Label propagation (decided here, documented in :data:`NOT_PROPAGATED_PREFIXES`): a run's own
labels are copied to its Job and pods, because users select by them (``kubectl get pods -l
team=search``), except bookkeeping labels that belong to the tool that manages the run itself.
Copying those would make that tool claim the Job: Argo CD tracks what it owns by
``app.kubernetes.io/instance`` and prunes or flags "extraneous" objects carrying it; ``kubectl
apply --prune`` with ApplySets deletes whatever carries ``applyset.kubernetes.io/part-of``.

Over 400 lines on purpose: the names, labels, owner references and the Job skeleton must
be read together to see that rendering is idempotent; the pod itself already lives apart.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Final

from sampleforge.api import AugmentationRunSpec, FineTuneRunSpec, Kind
from sampleforge.api.constants import (
    ANNOTATION_PREFIX,
    API_VERSION,
    GROUP,
    KUEUE_QUEUE_LABEL,
    LABEL_MANAGED_BY,
    LABEL_RUN_KIND,
    LABEL_RUN_NAME,
    LABEL_RUN_UID,
    LABEL_STEP,
    MANAGED_BY_VALUE,
    Step,
)
from sampleforge.api.jobenv import EXIT_NOT_RETRYABLE

from ._render_pod import CONTAINER_NAME, RENDEZVOUS_PORT_NAME, SPEC_FILENAME, pod_template
from .runobject import RunObject, RunSpec, StorageUnset, Topology
from .settings import Settings
from .specdrift import ANNOTATION_APPLIED_SPEC, applied_spec_annotation
from .steps import run_steps

__all__ = [
    "ANNOTATION_RUN_GENERATION",
    "MAX_JOB_NAME_LENGTH",
    "NOT_PROPAGATED_KEYS",
    "NOT_PROPAGATED_PREFIXES",
    "POD_ONLY_FIELDS",
    "RunObject",
    "StorageUnset",
    "Topology",
    "child_labels",
    "job_name",
    "job_suspended",
    "owner_reference",
    "pod_failure_policy",
    "propagated_labels",
    "render_headless_service",
    "render_job",
    "render_spec_config_map",
    "run_label_value",
    "run_steps_of",
    "selector_labels",
    "service_name",
    "shard_count",
    "spec_config_map_name",
    "topology",
]

# --- names -----------------------------------------------------------------------------------

_JOB_SUFFIX: Final[dict[Kind, str]] = {Kind.AUGMENTATION_RUN: "-aug", Kind.FINE_TUNE_RUN: "-ft"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL: Final = 63
_HASH_LENGTH: Final = 8

#: Longest Job name rendered. Pods of an Indexed Job get the hostname ``<job>-<index>``, which must
#: be a DNS-1123 label (at most 63 characters; the Job controller does not shorten it), and an
#: index has at most 3 digits (spec.parallelism <= 1000, distribution.nodes <= 64). The Job
#: controller also copies the name into the pods' ``batch.kubernetes.io/job-name`` label.
MAX_JOB_NAME_LENGTH: Final = _MAX_LABEL - len("-999")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LENGTH]


#: Suffix of a step's Job after the kind's: the shards Job has none, so its name is the one a
#: one-Job run's Job has (``status.jobName`` of runs made before steps existed does not change).
_STEP_SUFFIX: Final[dict[Step, str]] = {Step.ANALYSIS: "-analysis", Step.SHARDS: "", Step.REDUCE: "-reduce"}


def job_name(kind: Kind | str, run_name: str, step: Step | None = None) -> str:
    """The Job's name: ``<run-name>-aug`` or ``<run-name>-ft``, derived from the run's name only;
    a sharded AugmentationRun's analysis and reduce Jobs (``step``) get ``-analysis`` / ``-reduce``
    after it, its shards Job none.

    A run name is a DNS-1123 *subdomain* (up to 253 characters, dots allowed) but the Job name must
    work as a DNS-1123 *label* (see :data:`MAX_JOB_NAME_LENGTH`; a one-pod step's Job, which is not
    Indexed and so has no ``-<index>`` hostname, may use all 63 characters). Names that do not fit
    are shortened, dots become dashes, and 8 hex digits of the full name's SHA-256 keep two long
    names with a common prefix apart: ``<first part>-<hash>-aug``. The uid is deliberately not part
    of the name: the name must be computable from what a user sees, and a recreated run is told
    apart from its predecessor by the ``LABEL_RUN_UID`` label and the owner reference instead.
    """
    step_suffix = _STEP_SUFFIX[step] if step is not None else ""
    suffix = _JOB_SUFFIX[Kind(kind)] + step_suffix
    longest = _MAX_LABEL if step_suffix else MAX_JOB_NAME_LENGTH
    plain = run_name + suffix
    if len(plain) <= longest and _DNS_LABEL.match(plain):
        return plain
    room = longest - len(suffix) - _HASH_LENGTH - 1
    stem = re.sub(r"[^a-z0-9-]", "-", run_name.lower())[:room].strip("-")
    return f"{stem}-{_digest(run_name)}{suffix}" if stem else f"x{_digest(run_name)}{suffix}"


def service_name(job: str) -> str:
    """The headless Service (and pod subdomain) of a multi-node Job: the Job's own name.

    A Service name must be a DNS-1035 label, which may not start with a digit; a Job named
    ``2026q4-ranker-ft`` gets the Service ``sf-2026q4-ranker-ft`` (still at most 63 characters).
    """
    return job if _DNS_1035_LABEL.match(job) else f"sf-{job}"


def run_label_value(run_name: str) -> str:
    """The run's name as a label value (``LABEL_RUN_NAME``).

    Label values are at most 63 characters while run names may have 253; longer names are cut
    and get a hash suffix, as in :func:`job_name`. Select children by :func:`selector_labels`
    (the uid) when the exact run matters.
    """
    if len(run_name) <= _MAX_LABEL:
        return run_name
    return f"{run_name[: _MAX_LABEL - _HASH_LENGTH - 1].rstrip('-.')}-{_digest(run_name)}"


# --- labels, annotations, ownership ----------------------------------------------------------

#: Recommended Kubernetes labels the operator sets on every child (values: see below).
LABEL_APP_NAME: Final = "app.kubernetes.io/name"
LABEL_APP_COMPONENT: Final = "app.kubernetes.io/component"
APP_NAME: Final = "sampleforge"
_COMPONENT: Final[dict[Kind, str]] = {Kind.AUGMENTATION_RUN: "augmentation", Kind.FINE_TUNE_RUN: "finetune"}

#: Annotation on the Job: the run's metadata.generation it was rendered from.
ANNOTATION_RUN_GENERATION: Final = f"{ANNOTATION_PREFIX}/run-generation"

#: Run label keys never copied to children: Argo CD's default tracking label (it would adopt or
#: prune the Job), and the Job controller's own pod labels (a user value would clash with the
#: selector the API server generates).
NOT_PROPAGATED_KEYS: Final = frozenset({"app.kubernetes.io/instance", "controller-uid", "job-name"})
#: Run label prefixes never copied to children: the operator's own keys (it sets them itself),
#: GitOps and kubectl bookkeeping (Argo CD, Flux, kubectl ApplySets), Kueue (the queue comes from
#: spec.queueName only, and Kueue's pod integration would manage labelled pods on its own) and the
#: Job controller's ``batch.kubernetes.io/`` labels.
NOT_PROPAGATED_PREFIXES: Final = (
    f"{GROUP}/",
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
    "helm.toolkit.fluxcd.io/",
    "applyset.kubernetes.io/",
    "kubectl.kubernetes.io/",
    "kueue.x-k8s.io/",
    "batch.kubernetes.io/",
)


def propagated_labels(run: RunObject) -> dict[str, str]:
    """The run's own labels that its children carry too (see the module docstring)."""
    return {
        k: v
        for k, v in sorted(run.labels.items())
        if k not in NOT_PROPAGATED_KEYS and not k.startswith(NOT_PROPAGATED_PREFIXES)
    }


def selector_labels(run: RunObject) -> dict[str, str]:
    """Labels that select exactly this run's children (pods, Job, Service), never a predecessor's."""
    return {LABEL_RUN_KIND: run.kind.value, LABEL_RUN_UID: run.uid}


def child_labels(run: RunObject) -> dict[str, str]:
    """Labels of every child (Job, pod template, Service): propagated ones, then the operator's,
    which win on a clash. Keys sorted, so the rendered dict does not depend on input order."""
    labels = propagated_labels(run)
    labels.update(selector_labels(run))
    labels.update({
        LABEL_RUN_NAME: run_label_value(run.name),
        LABEL_MANAGED_BY: MANAGED_BY_VALUE,
        LABEL_APP_NAME: APP_NAME,
        LABEL_APP_COMPONENT: _COMPONENT[run.kind],
    })
    return dict(sorted(labels.items()))


def owner_reference(run: RunObject) -> dict[str, Any]:
    """The controller owner reference to the run: garbage collection deletes the child with it.

    ``blockOwnerDeletion`` makes foreground deletion of the run wait for the Job; the operator's
    RBAC therefore needs ``update`` on ``<plural>/finalizers`` (OwnerReferencesPermissionEnforcement).
    """
    return {
        "apiVersion": API_VERSION,
        "kind": run.kind.value,
        "name": run.name,
        "uid": run.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- the Job ---------------------------------------------------------------------------------


def shard_count(run: RunObject) -> int:
    """An AugmentationRun's shards (``spec.parallelism``); 1 for a FineTuneRun."""
    return run.spec.parallelism if isinstance(run.spec, AugmentationRunSpec) else 1


def run_steps_of(run: RunObject) -> tuple[Step, ...]:
    """The run's steps in order (:func:`.steps.run_steps`); empty when one Job does all the work."""
    return run_steps(run.kind, shard_count(run))


def topology(run: RunObject, step: Step | None = None) -> Topology:
    """How many pods the run's Job (of ``step``, for a run that has steps) has, whether it is
    Indexed, GPUs per pod, and the rendezvous Service of a multi-node FineTuneRun."""
    spec = run.spec
    if isinstance(spec, AugmentationRunSpec):
        gpus = spec.resources.gpus if spec.resources.gpus is not None else 0
        if step is Step.ANALYSIS:
            # One pod over all of the source; with the run's GPUs (it may train the GAN and embed the
            # catalog for a retrieval index).
            return Topology(pods=1, indexed=False, gpus_per_pod=gpus, service=None)
        if step is Step.REDUCE:
            # One pod over the shards' dedup keys and parts: hashing, sorting and copying, no GPU, so
            # it holds none of the run's (and asks for no GPU node or GPU type).
            return Topology(pods=1, indexed=False, gpus_per_pod=0, service=None)
        # Always Indexed, even with one shard: the job code then has a single way to find its shard.
        return Topology(pods=spec.parallelism, indexed=True, gpus_per_pod=gpus, service=None)
    nodes = spec.distribution.nodes
    service = service_name(job_name(run.kind, run.name)) if nodes > 1 else None
    return Topology(pods=nodes, indexed=nodes > 1, gpus_per_pod=spec.gpus_per_pod(), service=service)


def job_suspended(spec: RunSpec) -> bool:
    """``Job.spec.suspend`` at creation: the run's ``suspend``, or true when a Kueue queue is named.

    Kueue admits a Job by unsuspending it, so a queued Job is created suspended (as Kueue's own
    examples do); otherwise its pods could start before Kueue's webhook or admission. The caller
    must then leave resuming to Kueue: when a queued run is resumed (``suspend: false``) the
    operator does not patch the Job's ``suspend`` itself.
    """
    return spec.suspend or spec.queue_name is not None


def pod_failure_policy() -> dict[str, Any]:
    """What a failed pod means, evaluated before ``backoffLimit`` counts it.

    * the exit codes of :data:`~sampleforge.api.jobenv.EXIT_NOT_RETRYABLE` (2 invalid configuration,
      3 model unavailable, 4 data unreadable): a retry would fail the same way, so the Job fails at
      once (FailJob);
    * a pod with the ``DisruptionTarget`` condition (preemption by a higher priority, eviction,
      node drain, taint manager) is retried without counting against ``backoffLimit`` (Ignore): a
      fine-tune checkpoints on SIGTERM and resumes.
    * anything else, including :data:`~sampleforge.api.jobenv.EXIT_TERMINATED` (143) without a
      disruption condition, is an ordinary failure counted against ``backoffLimit``.
    """
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": list(EXIT_NOT_RETRYABLE)},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _check_input(run: RunObject, input_uri: str | None) -> None:
    spec = run.spec
    upstream = spec.data.from_augmentation_run if isinstance(spec, FineTuneRunSpec) else None
    if upstream is not None and input_uri is None:
        raise ValueError(
            f"{run.kind} {run.namespace}/{run.name} trains on AugmentationRun {upstream!r} "
            "(spec.data.fromAugmentationRun): pass that run's committed output as input_uri"
        )
    if upstream is None and input_uri is not None:
        raise ValueError(
            f"{run.kind} {run.namespace}/{run.name} names no upstream AugmentationRun; input_uri must be None"
        )


def _check_step(run: RunObject, step: Step | None) -> Step | None:
    """``step`` for a run that has steps (None: its shards Job, the one named like a one-Job run's);
    ValueError for a step of a run that has none."""
    steps = run_steps_of(run)
    if step is not None and step not in steps:
        raise ValueError(f"{run.kind} {run.namespace}/{run.name} has no step {step!r}: only an AugmentationRun "
                         "with spec.parallelism > 1 runs in steps")
    return step if step is not None or not steps else Step.SHARDS


def render_job(run: RunObject, settings: Settings, input_uri: str | None = None,
               step: Step | None = None) -> dict[str, Any]:
    """The run's batch/v1 Job; for a run with steps (:func:`run_steps_of`), the Job of ``step``
    (None: the shards Job).

    ``input_uri`` is the committed output prefix of the AugmentationRun a FineTuneRun trains on
    (``spec.data.fromAugmentationRun``): required for exactly those runs, ValueError otherwise,
    so a Job can never be created that trains on nothing.

    Every step's Job gets the run's pod spec, but the reduce Job asks for no GPU (nor the GPU type):
    it only hashes, sorts and copies rows (:func:`topology`).
    """
    _check_input(run, input_uri)
    step = _check_step(run, step)
    spec = run.spec
    topo = topology(run, step)
    name = job_name(run.kind, run.name, step)
    if topo.indexed and len(f"{name}-{topo.pods - 1}") > _MAX_LABEL:  # guards MAX_JOB_NAME_LENGTH
        raise ValueError(f"pod hostname {name}-{topo.pods - 1} would exceed {_MAX_LABEL} characters")

    labels = child_labels(run)
    if step is not None:
        labels = dict(sorted({**labels, LABEL_STEP: step.value}.items()))
    job_labels = dict(labels)
    if spec.queue_name is not None:
        # On the Job only: Kueue's Job integration reads it there; on pods it would make Kueue's
        # pod integration (when enabled) try to manage each pod on its own.
        job_labels[KUEUE_QUEUE_LABEL] = spec.queue_name

    job_spec: dict[str, Any] = {
        "suspend": job_suspended(spec),
        "completions": topo.pods,
        "parallelism": topo.pods,
        "completionMode": "Indexed" if topo.indexed else "NonIndexed",
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        # Start a replacement only once the failed pod is gone: two pods with the same hostname
        # (rank 0 and its replacement) must never be in the rendezvous Service at once. This is
        # also the only value allowed with a podFailurePolicy.
        "podReplacementPolicy": "Failed",
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    job_spec["template"] = pod_template(
        run,
        settings,
        job=name,
        topo=topo,
        labels=labels,
        spec_config_map=spec_config_map_name(run),
        input_uri=input_uri,
        step=step,
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": run.namespace,
            "labels": dict(sorted(job_labels.items())),
            "annotations": {ANNOTATION_RUN_GENERATION: str(run.generation),
                            ANNOTATION_APPLIED_SPEC: applied_spec_annotation(run.raw_spec)},
            "ownerReferences": [owner_reference(run)],
        },
        "spec": job_spec,
    }


#: The key of the spec ConfigMap that holds the spec (the file name in the pods).
SPEC_KEY: Final = SPEC_FILENAME


#: Spec fields that only the operator uses, on the pod itself, and that the pods' copy leaves out:
#: ``affinity`` is a core/v1 Affinity passed through unchanged, the one field whose size the schema
#: cannot bound; left out, the copy's size is bounded by the schema (well under a ConfigMap's 1 MiB).
POD_ONLY_FIELDS: Final = ("affinity",)


def spec_json(run: RunObject) -> str:
    """The spec the pods read: as the API server stores it but for :data:`POD_ONLY_FIELDS`, compact,
    keys sorted (so its digest is stable)."""
    spec = {k: v for k, v in run.raw_spec.items() if k not in POD_ONLY_FIELDS}
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_config_map_name(run: RunObject) -> str:
    """``<job>-spec-<digest>``: 8 hex digits of SHA-256 over the run's uid and :func:`spec_json`.

    Derived, never random, so a reconcile that runs twice renders the same name; and different for
    another content, so a Job recreated after an edit of the spec reads the spec it was rendered
    from, never a stale one, and a recreated run of the same name never shares its predecessor's.
    """
    return f"{job_name(run.kind, run.name)}-spec-{_digest(run.uid + chr(0) + spec_json(run))}"


def render_spec_config_map(run: RunObject) -> dict[str, Any]:
    """The ConfigMap that carries the run's spec to its pods, mounted read-only at the path in
    ``RUN_SPEC_FILE``.

    A file, not an environment variable: Linux refuses to start a process with any environment
    string above 128 KiB (and the API server's admission bounds keep the spec well under the
    ConfigMap's 1 MiB). Immutable, as the Job that mounts it: the kubelet need not watch it. Owned
    by the run, so it goes with it; the operator creates it before the Job.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": spec_config_map_name(run),
            "namespace": run.namespace,
            "labels": child_labels(run),
            "ownerReferences": [owner_reference(run)],
        },
        "immutable": True,
        "data": {SPEC_KEY: spec_json(run)},
    }


def render_headless_service(run: RunObject, settings: Settings) -> dict[str, Any] | None:
    """The headless Service that gives a multi-node FineTuneRun's pods stable DNS names; None for
    every other run.

    ``publishNotReadyAddresses``: the pods have no readiness probe that means anything for
    rendezvous, and rank 0 must be resolvable as soon as it has an IP, not when it is "ready".
    Created before the Job by the caller so the name resolves by the time pods start.
    """
    topo = topology(run)
    if topo.service is None:
        return None
    port = settings.rendezvous_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": topo.service,
            "namespace": run.namespace,
            "labels": child_labels(run),
            "ownerReferences": [owner_reference(run)],
        },
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(run),
            "publishNotReadyAddresses": True,
            "ports": [{"name": RENDEZVOUS_PORT_NAME, "port": port, "targetPort": port, "protocol": "TCP"}],
        },
    }

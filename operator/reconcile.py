"""Bring one run's children in line with its spec: check what can only be checked at run time,
then make sure its Job (and, for multi-node training, its headless Service) exists. For a run in
steps (:mod:`.steps`) that is the Job of the step it is at, never an earlier one: the monitor makes
each later step's Job (:func:`ensure_job`) once the one before has succeeded.

Idempotent by construction: the Job's name comes from the run, creation treats "already exists" as
success, and a second call changes nothing. So kopf may call this twice, and an operator restarted
half-way never makes a second Job.

It does not write a live run's status: what it finds before a Job can exist (waiting for an
upstream run, a missing Secret, a spec the API server refused) goes to the run's monitor as a note,
and the monitor, the one writer of a live run's status, reports it. Only an edit of a finished run,
whose monitor has ended, is recorded here.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from pydantic import ValidationError

from sampleforge.api import FineTuneRunSpec, Kind, Phase, Reason
from sampleforge.api.constants import TERMINAL_PHASES, Step
from sampleforge.api.status import RunOutputs
from sampleforge.operator import allowlist
from sampleforge.operator import status as run_status
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.kube import Forbidden, Invalid
from sampleforge.operator.lifecycle import Observation
from sampleforge.operator.render import (
    RunObject,
    StorageUnset,
    render_headless_service,
    render_job,
    render_spec_config_map,
    shard_count,
)
from sampleforge.operator.specdrift import ignored_fields
from sampleforge.operator.steps import resume_step

log = logging.getLogger(__name__)

UPSTREAM_RETRY_SECONDS = 10
SECRET_RETRY_SECONDS = 30


def _report(ctx: OperatorContext, body: dict[str, Any], obs: Observation) -> None:
    """Leave ``obs`` for the run's monitor and wake it."""
    uid = body["metadata"]["uid"]
    ctx.preflight[uid] = obs
    ctx.children.wake(uid)


def outputs_for(kind: Kind, run: RunObject) -> RunOutputs:
    """Where the run writes, known from its spec before anything is committed."""
    uri = str(run.spec.output.uri)
    return RunOutputs(uri=uri, manifest_uri=f"{uri}manifest.json",
                      model_uri=f"{uri}model/" if kind is Kind.FINE_TUNE_RUN else None)


def upstream_input(ctx: OperatorContext, body: dict[str, Any], run: RunObject) -> str | None:
    """For a FineTuneRun fed by an AugmentationRun: that run's committed output, or wait/fail."""
    spec = run.spec
    upstream_name = getattr(getattr(spec, "data", None), "from_augmentation_run", None)
    if not upstream_name:
        return None
    upstream = ctx.kube.get_run(Kind.AUGMENTATION_RUN, run.namespace, upstream_name)
    if upstream is None:
        _report(ctx, body, Observation(
            Phase.WAITING, Reason.UPSTREAM_NOT_FOUND,
            f"AugmentationRun {upstream_name} (spec.data.fromAugmentationRun) does not exist in namespace "
            f"{run.namespace}; create it or fix the name"))
        raise kopf.TemporaryError(f"upstream AugmentationRun {upstream_name} not found", delay=UPSTREAM_RETRY_SECONDS)
    phase = (upstream.get("status") or {}).get("phase")
    if phase == Phase.FAILED:
        _report(ctx, body, Observation(
            Phase.FAILED, Reason.UPSTREAM_FAILED,
            f"AugmentationRun {upstream_name} (spec.data.fromAugmentationRun) failed; fix and rerun it, then "
            "create a new FineTuneRun"))
        return None
    if phase != Phase.SUCCEEDED:
        _report(ctx, body, Observation(
            Phase.WAITING, Reason.WAITING_FOR_UPSTREAM,
            f"waiting for AugmentationRun {upstream_name} to succeed (it is {phase or 'Pending'})"))
        raise kopf.TemporaryError(f"upstream AugmentationRun {upstream_name} is {phase}",
                                  delay=UPSTREAM_RETRY_SECONDS)
    outputs = (upstream.get("status") or {}).get("outputs") or {}
    uri = outputs.get("uri") or str(upstream["spec"]["output"]["uri"])
    return str(uri)


def check_secrets(ctx: OperatorContext, kind: Kind, body: dict[str, Any], run: RunObject) -> None:
    """A missing Secret is a condition with a reason and a slow retry, never a crash loop."""
    storage = run.storage
    wanted: dict[str, set[str]] = {}
    if storage.credentials_secret is not None:
        wanted[storage.credentials_secret] = {storage.access_key_key(), storage.secret_key_key()}
    hub = run.spec.hub_token
    if hub is not None:
        wanted.setdefault(hub.name, set()).add(hub.key)
    for augmenter in getattr(run.spec, "augmenters", ()):  # openai engines' API keys
        key_ref = getattr(getattr(augmenter, "openai", None), "api_key_secret", None)
        if key_ref is not None:
            wanted.setdefault(key_ref.name, set()).add(key_ref.key)
    for secret, keys in wanted.items():
        try:
            have = ctx.secret_keys.keys(run.namespace, secret, ctx.kube.get_secret_keys)
        except Forbidden as err:
            _report(ctx, body, Observation(
                Phase.PENDING, Reason.SECRET_NOT_FOUND,
                f"the operator may not read Secret {secret} in namespace {run.namespace}: grant it get on secrets "
                "there (chart: rbac.clusterWideSecretAccess or watchNamespaces)"))
            raise kopf.TemporaryError(f"forbidden to read Secret {secret}", delay=SECRET_RETRY_SECONDS) from err
        missing = sorted(keys - (have or set()))
        if have is None or missing:
            what = (f"Secret {secret} not found in namespace {run.namespace}" if have is None
                    else f"Secret {secret} has no key(s) {', '.join(missing)}")
            _report(ctx, body, Observation(
                Phase.PENDING, Reason.SECRET_NOT_FOUND,
                f"{what} (spec.storage.credentialsSecret / spec.hubToken / spec.augmenters[].openai.apiKeySecret); create it — the run starts by itself"))
            raise kopf.TemporaryError(what, delay=SECRET_RETRY_SECONDS)


def check_storage_prefixes(ctx: OperatorContext, body: dict[str, Any], run: RunObject, input_uri: str | None) -> None:
    """Every s3:// URI the run would hand its pods must be inside its namespace's allow-list."""
    allow = ctx.settings.storage_allow_list
    uris = list(allowlist.uris_in(body.get("spec") or {}))
    if input_uri:
        uris.append(("spec.data.fromAugmentationRun (its output)", input_uri))
    bad = allowlist.refused(allow, run.namespace, uris)
    if bad:
        message = allowlist.describe(allow, run.namespace, bad)
        _report(ctx, body, Observation(Phase.FAILED, Reason.INVALID_SPEC, message))
        raise kopf.PermanentError(message)


def reconcile(ctx: OperatorContext, kind: Kind, body: dict[str, Any]) -> None:
    status = body.get("status") or {}
    uid = body["metadata"]["uid"]
    if status.get("phase") in TERMINAL_PHASES:
        if status.get("observedGeneration") != body["metadata"].get("generation"):
            job = ctx.children.job(uid)
            ignored = ignored_fields(job, body.get("spec") or {}) if job else []
            run_status.record_finished_edit(ctx, kind, body, ignored)
        return
    try:
        run = RunObject.from_body({**body, "kind": str(kind)}, ctx.settings.default_storage)
    except ValidationError as err:
        _report(ctx, body, Observation(Phase.FAILED, Reason.INVALID_SPEC, f"invalid spec: {err}"))
        raise kopf.PermanentError(f"invalid spec: {err}") from err
    except StorageUnset as err:
        _report(ctx, body, Observation(Phase.FAILED, Reason.INVALID_SPEC, str(err)))
        raise kopf.PermanentError(str(err)) from err

    input_uri = upstream_input(ctx, body, run) if kind is Kind.FINE_TUNE_RUN else None
    if isinstance(run.spec, FineTuneRunSpec) and run.spec.data.from_augmentation_run and input_uri is None:
        return  # upstream failed: reported above
    check_storage_prefixes(ctx, body, run, input_uri)
    check_secrets(ctx, kind, body, run)

    service = render_headless_service(run, ctx.settings)
    if service is not None:
        ctx.kube.ensure_service(service)
    step = resume_step(kind, shard_count(run), ctx.children.steps(uid), status.get("stage"))
    try:
        job = ensure_job(ctx, kind, body, run, step, input_uri)
    except Invalid as err:
        # A pass-through field (affinity, tolerations, nodeSelector, resources) that the schema let
        # through but the Job's own validation refuses: retrying would be refused again.
        _report(ctx, body, Observation(Phase.FAILED, Reason.INVALID_SPEC, refused_message(err)))
        raise kopf.PermanentError(f"Job refused: {err.detail}") from err
    ctx.preflight.pop(uid, None)
    job_name = job["metadata"]["name"]
    suspend = bool(run.spec.suspend)
    job_is_suspended = bool((job.get("spec") or {}).get("suspend"))
    # A queued run's Job is resumed by Kueue when it admits it, never by the operator.
    if job_is_suspended != suspend and (suspend or run.spec.queue_name is None):
        ctx.kube.set_job_suspend(run.namespace, job_name, suspend)
        kopf.event(run_status.kopf_body(body), type="Normal", reason=Reason.SUSPENDED if suspend else Reason.RESUMED,
                   message=f"{'suspended' if suspend else 'resumed'} Job {job_name}")
    ctx.children.wake(uid)


def refused_message(err: Invalid) -> str:
    """The run's message when the API server refuses its Job."""
    return (f"the API server refused the run's Job: {err.detail}; fix the spec field it names (affinity, "
            "tolerations, nodeSelector, resources) and create the run again")


def ensure_job(ctx: OperatorContext, kind: Kind, body: dict[str, Any], run: RunObject, step: Step | None,
               input_uri: str | None = None) -> dict[str, Any]:
    """Make sure the run's Job (of ``step``, for a run in steps) exists, its spec ConfigMap first;
    a Job made here is counted and announced. Returns the Job; the API server's refusals
    (:class:`~sampleforge.operator.kube.Invalid` among them) are counted and raised."""
    ctx.kube.ensure_config_map(render_spec_config_map(run))  # the spec the Job's pods read, made first
    try:
        job, created = ctx.kube.ensure_job(render_job(run, ctx.settings, input_uri=input_uri, step=step))
    except Exception:
        ctx.metrics.job_create_errors.labels(kind=kind).inc()
        raise
    job_name = job["metadata"]["name"]
    if created:
        ctx.metrics.jobs_created.labels(kind=kind).inc()
        message = f"created Job {job_name}" if step is None else f"created Job {job_name} for step {step}"
        kopf.event(run_status.kopf_body(body), type="Normal", reason=Reason.JOB_CREATED, message=message)
        log.info("job created", extra={"kind": str(kind), "namespace": run.namespace, "run": run.name,
                                       "job": job_name, "step": str(step or "")})
    return job

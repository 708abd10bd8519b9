"""The operator's only door to the Kubernetes API (besides kopf's own watches).

HTTP failures become a small hierarchy of our own, with the original ApiException kept as the
cause, so handlers say what they mean ("already exists", "not found", "try again") instead of
comparing status codes, and every call site shares one idea of which errors are transient.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from sampleforge.api.constants import GROUP, LABEL_RUN_UID, PLURALS, VERSION, Kind


class KubeError(RuntimeError):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Forbidden(KubeError):
    pass


class Transient(KubeError):
    """Worth retrying: the server is busy, restarting, or could not be reached."""


def _translate(err: ApiException, what: str) -> KubeError:
    status = int(err.status or 0)
    reason = err.reason or ""
    cls: type[KubeError] = {404: NotFound, 409: Conflict, 403: Forbidden}.get(status, KubeError)
    if status == 0 or status == 429 or status >= 500:
        cls = Transient
    error = cls(f"{what}: {status} {reason}", status)
    error.__cause__ = err
    return error


def load_api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)

    # -- runs --------------------------------------------------------------------------------

    def get_run(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind], name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading {kind} {namespace}/{name}") from err

    def list_runs(self, kind: Kind, namespace: str | None = None) -> list[dict[str, Any]]:
        try:
            if namespace:
                body = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[kind])
            else:
                body = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind])
        except ApiException as err:
            raise _translate(err, f"listing {PLURALS[kind]}") from err
        return list(body.get("items", []))

    def patch_run_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURALS[kind], name,
                                                              {"status": status})
        except ApiException as err:
            raise _translate(err, f"writing the status of {kind} {namespace}/{name}") from err

    # -- children ----------------------------------------------------------------------------

    def ensure_job(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the Job, or return the one already there (created by an earlier reconcile or an
        operator that restarted mid-way). Returns (job, created)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            created = self.batch.create_namespaced_job(namespace, job)
            return self.api.sanitize_for_serialization(created), True
        except ApiException as err:
            if err.status != 409:
                raise _translate(err, f"creating Job {namespace}/{name}") from err
        existing = self.get_job(namespace, name)
        if existing is None:  # deleted between the conflict and the read: the next reconcile creates it
            raise Transient(f"Job {namespace}/{name} vanished while being read back")
        want_uid = job["metadata"]["labels"].get(LABEL_RUN_UID)
        have_uid = (existing["metadata"].get("labels") or {}).get(LABEL_RUN_UID)
        if want_uid and have_uid != want_uid:
            raise Conflict(f"Job {namespace}/{name} exists but belongs to another run (uid {have_uid}); "
                           "delete it or rename the run", 409)
        return existing, False

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.api.sanitize_for_serialization(self.batch.read_namespaced_job(name, namespace)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading Job {namespace}/{name}") from err

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        try:
            self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})
        except ApiException as err:
            raise _translate(err, f"{'suspending' if suspend else 'resuming'} Job {namespace}/{name}") from err

    def ensure_service(self, service: dict[str, Any]) -> None:
        namespace = service["metadata"]["namespace"]
        try:
            self.core.create_namespaced_service(namespace, service)
        except ApiException as err:
            if err.status != 409:
                raise _translate(err, f"creating Service {namespace}/{service['metadata']['name']}") from err

    def ensure_config_map(self, config_map: dict[str, Any]) -> None:
        """Create the ConfigMap, or accept the one already there: a run's spec ConfigMap is named
        after its content and the run's uid, so one of that name holds the same data, unless it
        carries another run's uid (someone else's object), which is refused like a foreign Job."""
        meta = config_map["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            self.core.create_namespaced_config_map(namespace, config_map, _request_timeout=30)
            return
        except ApiException as err:
            if err.status != 409:
                raise _translate(err, f"creating ConfigMap {namespace}/{name}") from err
        try:
            existing = self.core.read_namespaced_config_map(name, namespace, _request_timeout=30)
        except ApiException as err:
            if err.status == 404:  # deleted between the conflict and the read: the next reconcile creates it
                raise Transient(f"ConfigMap {namespace}/{name} vanished while being read back") from err
            raise _translate(err, f"reading ConfigMap {namespace}/{name}") from err
        want_uid = (meta.get("labels") or {}).get(LABEL_RUN_UID)
        have_uid = (existing.metadata.labels or {}).get(LABEL_RUN_UID)
        if want_uid and have_uid != want_uid:
            raise Conflict(f"ConfigMap {namespace}/{name} exists but belongs to another run (uid {have_uid}); "
                           "delete it or rename the run", 409)

    def get_secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys a Secret holds (never its values), or None when it does not exist."""
        try:
            secret = self.core.read_namespaced_secret(name, namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise _translate(err, f"reading Secret {namespace}/{name}") from err
        return set((secret.data or {}).keys()) | set((secret.string_data or {}).keys())

    def list_job_events(self, namespace: str, job_uid: str, reason: str) -> list[dict[str, Any]]:
        """The Events with ``reason`` recorded on one Job, selected by the server (field selector
        on the Job's uid and the reason), so the answer is a handful of objects however busy the
        namespace is."""
        try:
            events = self.core.list_namespaced_event(
                namespace, field_selector=f"involvedObject.uid={job_uid},reason={reason}", _request_timeout=15)
        except ApiException as err:
            raise _translate(err, f"listing the {reason} Events of Job uid {job_uid} in namespace {namespace}") \
                from err
        return [dict(e) for e in self.api.sanitize_for_serialization(events).get("items", [])]

    # -- the leader label on the operator's own Pod ---------------------------------------------

    def set_pod_label(self, namespace: str, name: str, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one label of a Pod: a merge patch of that label alone."""
        try:
            self.core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {key: value}}},
                                           _request_timeout=10)
        except ApiException as err:
            action = f"labelling Pod {namespace}/{name} {key}={value}" if value is not None \
                else f"removing label {key} from Pod {namespace}/{name}"
            raise _translate(err, action) from err

    # -- authentication of heartbeats ----------------------------------------------------------

    def review_token(self, token: str, audience: str) -> dict[str, Any] | None:
        """The authenticated user of a ServiceAccount token bound to ``audience``, or None."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}}
        try:
            result = self.auth.create_token_review(review)
        except ApiException as err:
            raise _translate(err, "reviewing a heartbeat token") from err
        status = result.status
        if not status or not status.authenticated or audience not in (status.audiences or []):
            return None
        return dict(self.api.sanitize_for_serialization(status.user))

"""The operator's only door to the Kubernetes API (besides kopf's own watches).

HTTP failures become a small hierarchy of our own, with the original ApiException kept as the
cause, so handlers say what they mean ("already exists", "not found", "try again") instead of
comparing status codes, and every call site shares one idea of which errors are transient.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3 import Retry
from urllib3.exceptions import HTTPError

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


class Invalid(KubeError):
    """The API server refused the object (422): ``detail`` is its message, which names the field."""

    def __init__(self, message: str, status: int = 422, detail: str = "") -> None:
        super().__init__(message, status)
        self.detail = detail or message


#: Seconds any one API call may take. Without a bound, a call to an API server whose etcd has
#: stopped hangs for ever, and with it whatever waits on it (a status write, a leader's renewal).
REQUEST_TIMEOUT = 30.0
#: Threads that call the API at once: kopf's handler workers and the event loop's default executor
#: (the monitors' status writes), with room for the leader's renewals and the HTTP server's checks.
API_THREADS = 32
#: Kept-alive connections to the API server: one per thread that may be calling it.
API_CONNECTIONS = API_THREADS + 8


def _server_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason or "")
    except (ValueError, AttributeError):
        return str(err.reason or "")


def _translate(err: ApiException, what: str) -> KubeError:
    status = int(err.status or 0)
    reason = err.reason or ""
    if status == 422:
        detail = _server_message(err)
        error: KubeError = Invalid(f"{what}: 422 {detail}", status, detail)
    else:
        cls: type[KubeError] = {404: NotFound, 409: Conflict, 403: Forbidden}.get(status, KubeError)
        if status == 0 or status == 429 or status >= 500:
            cls = Transient
        error = cls(f"{what}: {status} {reason}", status)
    error.__cause__ = err
    return error


def _unreachable(err: Exception, what: str) -> Transient:
    """No answer at all (refused, reset, timed out): always worth retrying."""
    error = Transient(f"{what}: {type(err).__name__}: {err}", 0)
    error.__cause__ = err
    return error


def load_api_client() -> client.ApiClient:
    """In a pod, its ServiceAccount; elsewhere $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    # urllib3's default of 3 retries would stretch every call's timeout fourfold; a refused or
    # dropped connection is retried once here, and everything else by the caller's own policy.
    configuration.retries = Retry(total=1, connect=1, read=0, redirect=0, status=0)
    # urllib3 keeps 5 connections per CPU by default (10 here): under a burst the handler and
    # monitor threads outnumber them, and every call beyond the pool opened, and threw away, a TLS
    # connection of its own.
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return client.ApiClient(configuration)


def _json_object(what: str, answer: object) -> dict[str, Any]:
    """The answer of a custom-objects call: the API server's JSON object, which the client types as
    ``object`` (it has no model for our kinds)."""
    if not isinstance(answer, dict):
        raise KubeError(f"{what}: expected a JSON object, got {type(answer).__name__}")
    return answer


T = TypeVar("T")


#: Content types of the request bodies the operator sends.
JSON, MERGE_PATCH = "application/json", "application/merge-patch+json"


def _path(*parts: str) -> str:
    """An API path from its segments, each quoted (names come from users' runs)."""
    return "/" + "/".join(quote(part, safe="") for part in parts)


def _namespaced(group_version: str, namespace: str, plural: str, name: str | None = None) -> str:
    """The path of a namespaced collection (or one object in it); ``group_version`` is "v1" for the
    core group, else "<group>/<version>"."""
    prefix = ("api", "v1") if group_version == "v1" else ("apis", *group_version.split("/"))
    return _path(*prefix, "namespaces", namespace, plural, *((name,) if name else ()))


class Kube:
    """The calls the operator makes. Runs go through the custom-objects API, everything else
    (Jobs, ConfigMaps, Secrets, Services, Events, Pods) through :meth:`_request`, as JSON.

    Not through the client's CoreV1Api and BatchV1Api: importing their modules imports every model
    they could return (some 270 modules of pydantic models), about 80 MiB: the operator with no
    runs was 161 MiB resident with them, 87 MiB without, for a dozen calls whose answers it reads
    as JSON anyway."""

    def __init__(self, api: client.ApiClient, timeout: float = REQUEST_TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)

    def _request(self, what: str, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
                 content_type: str = JSON, timeout: float | None = None) -> dict[str, Any]:
        """One REST call, bounded in time, answered as the API server's JSON object; its failures
        translated as :meth:`_call`'s are."""
        headers = {"Accept": JSON, **({"Content-Type": content_type} if body is not None else {})}
        request = self.api.param_serialize(method=method, resource_path=path, query_params=query or [],
                                           header_params=headers, body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*request, _request_timeout=timeout or self.timeout)
            data: bytes = response.response.data  # urllib3's response: reads the body once
        except ApiException as err:
            raise _translate(err, what) from err
        except (HTTPError, OSError) as err:
            raise _unreachable(err, what) from err
        text = data.decode("utf-8") if data else ""
        if not 200 <= response.status <= 299:
            refused = ApiException(http_resp=response, body=text)
            raise _translate(refused, what) from refused
        return _json_object(what, json.loads(text)) if text else {}

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call, bounded in time, its failures translated (see the module docstring)."""
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            raise _translate(err, what) from err
        except (HTTPError, OSError) as err:
            raise _unreachable(err, what) from err

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    # -- runs --------------------------------------------------------------------------------

    def get_run(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"reading {kind} {namespace}/{name}"
        try:
            return dict(_json_object(what, self._call(what, self.custom.get_namespaced_custom_object,
                                                      GROUP, VERSION, namespace, PLURALS[kind], name)))
        except NotFound:
            return None

    def list_runs(self, kind: Kind, namespace: str | None = None) -> list[dict[str, Any]]:
        what = f"listing {PLURALS[kind]}"
        if namespace:
            body = self._call(what, self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace,
                              PLURALS[kind])
        else:
            body = self._call(what, self.custom.list_cluster_custom_object, GROUP, VERSION, PLURALS[kind])
        return list(_json_object(what, body).get("items", []))

    def patch_run_status(self, kind: Kind, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(f"writing the status of {kind} {namespace}/{name}",
                   self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURALS[kind], name,
                   {"status": status})

    # -- children ----------------------------------------------------------------------------

    def ensure_job(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the Job, or return the one already there (created by an earlier reconcile or an
        operator that restarted mid-way). Returns (job, created)."""
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        try:
            return self._request(f"creating Job {namespace}/{name}", "POST",
                                 _namespaced("batch/v1", namespace, "jobs"), job), True
        except Conflict:
            pass
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
            return self._request(f"reading Job {namespace}/{name}", "GET", _namespaced("batch/v1", namespace, "jobs", name))
        except NotFound:
            return None

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self._request(f"{'suspending' if suspend else 'resuming'} Job {namespace}/{name}", "PATCH",
                      _namespaced("batch/v1", namespace, "jobs", name), {"spec": {"suspend": suspend}},
                      content_type=MERGE_PATCH)

    def ensure_service(self, service: dict[str, Any]) -> None:
        namespace = service["metadata"]["namespace"]
        try:
            self._request(f"creating Service {namespace}/{service['metadata']['name']}", "POST",
                          _namespaced("v1", namespace, "services"), service)
        except Conflict:
            pass

    def ensure_config_map(self, config_map: dict[str, Any]) -> None:
        """Create the ConfigMap, or accept the one already there: a run's spec ConfigMap is named
        after its content and the run's uid, so one of that name holds the same data, unless it
        carries another run's uid (someone else's object), which is refused like a foreign Job."""
        meta = config_map["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            self._request(f"creating ConfigMap {namespace}/{name}", "POST", _namespaced("v1", namespace, "configmaps"),
                          config_map)
            return
        except Conflict:
            pass
        try:
            existing = self._request(f"reading ConfigMap {namespace}/{name}", "GET",
                                     _namespaced("v1", namespace, "configmaps", name))
        except NotFound as err:  # deleted between the conflict and the read: the next reconcile creates it
            raise Transient(f"ConfigMap {namespace}/{name} vanished while being read back") from err
        want_uid = (meta.get("labels") or {}).get(LABEL_RUN_UID)
        have_uid = ((existing.get("metadata") or {}).get("labels") or {}).get(LABEL_RUN_UID)
        if want_uid and have_uid != want_uid:
            raise Conflict(f"ConfigMap {namespace}/{name} exists but belongs to another run (uid {have_uid}); "
                           "delete it or rename the run", 409)

    def get_secret_keys(self, namespace: str, name: str) -> set[str] | None:
        """The keys a Secret holds (never its values), or None when it does not exist."""
        secret = self._read_secret(namespace, name)
        if secret is None:
            return None
        return set(secret.get("data") or {}) | set(secret.get("stringData") or {})

    def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request(f"reading Secret {namespace}/{name}", "GET", _namespaced("v1", namespace, "secrets", name))
        except NotFound:
            return None

    def read_secret_values(self, namespace: str, name: str, keys: Iterable[str]) -> dict[str, str] | None:
        """The values of ``keys`` in a Secret (those present), or None when it does not exist.

        Used only to read a finished run's committed results with the run's own storage
        credentials; the caller drops them after that one read and never logs them."""
        secret = self._read_secret(namespace, name)
        if secret is None:
            return None
        data = secret.get("data") or {}
        return {key: base64.b64decode(data[key]).decode() for key in keys if key in data}

    def read_config_map_value(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a ConfigMap (a run's spec.storage.caBundle), or None when either is missing."""
        try:
            config_map = self._request(f"reading ConfigMap {namespace}/{name}", "GET",
                                       _namespaced("v1", namespace, "configmaps", name))
        except NotFound:
            return None
        value = (config_map.get("data") or {}).get(key)
        return str(value) if value is not None else None

    def list_job_events(self, namespace: str, reason: str) -> list[dict[str, Any]]:
        """The Events with ``reason`` recorded on any Job of the namespace, selected by the server
        (field selector on the involved object's kind and the reason), so the answer is those
        Events alone however busy the namespace is; the caller picks each Job's by its uid (one
        listing serves every Job of the namespace: :mod:`.eventcache`). Read from the API server's
        watch cache (``resourceVersion=0``): without it each listing read every Event of the
        namespace from etcd."""
        events = self._request(f"listing the {reason} Events of Jobs in namespace {namespace}", "GET",
                               _namespaced("v1", namespace, "events"), timeout=15,
                               query=[("fieldSelector", f"involvedObject.kind=Job,reason={reason}"),
                                      ("resourceVersion", "0")])
        return [dict(e) for e in events.get("items") or []]

    # -- the leader label on the operator's own Pod ---------------------------------------------

    def set_pod_label(self, namespace: str, name: str, key: str, value: str | None) -> None:
        """Set (or, with None, remove) one label of a Pod: a merge patch of that label alone."""
        action = f"labelling Pod {namespace}/{name} {key}={value}" if value is not None \
            else f"removing label {key} from Pod {namespace}/{name}"
        self._request(action, "PATCH", _namespaced("v1", namespace, "pods", name),
                      {"metadata": {"labels": {key: value}}}, content_type=MERGE_PATCH, timeout=10)

    # -- authentication of heartbeats ----------------------------------------------------------

    def review_token(self, token: str, audience: str) -> dict[str, Any] | None:
        """The authenticated user of a ServiceAccount token bound to ``audience``, or None."""
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": token, "audiences": [audience]}}
        result = self._call("reviewing a heartbeat token", self.auth.create_token_review, review)
        status = result.status
        if not status or not status.authenticated or audience not in (status.audiences or []):
            return None
        return self._plain(status.user)

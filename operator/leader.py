"""Leader election on a coordination.k8s.io Lease: several replicas, one active.

The rules are client-go's: a replica takes the Lease when it is free or its holder has not renewed
it within ``leaseDurationSeconds``; every write carries the resourceVersion it read, so two replicas
racing for an expired Lease cannot both win; the holder renews every third of the duration. A
leader that cannot renew in time stops itself (and is restarted by Kubernetes) rather than risk two
active operators. A leader that stops cleanly releases the Lease (client-go's ReleaseOnCancel), so
a standby takes over in about a second instead of a whole lease duration.

Every successful read of the Lease is reported through ``on_contact``: a standby that can read it
can take over, which is what its readiness probe reports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

#: What one Lease call can fail with: an answer from the API server, or none at all.
LeaseError = (ApiException, HTTPError, OSError)

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _resource_version(lease: client.V1Lease) -> str | None:
    """The version a write must match (a Lease read from the API server always has one)."""
    return lease.metadata.resource_version if lease.metadata is not None else None


class LeaderElector:
    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str, duration: int,
                 on_contact: Callable[[], None] | None = None) -> None:
        # A client (and connection pool) of its own: in the one the handlers share, a busy leader's
        # connections are discarded as the pool overflows, and each renewal would pay a new TLS
        # handshake on a loaded machine.
        self.coordination = client.CoordinationV1Api(client.ApiClient(api.configuration))
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = duration
        self.on_contact = on_contact
        #: Who held the Lease before this replica took it over (None: nobody, or this replica).
        self.previous_holder: str | None = None
        #: Lease calls get threads of their own: in the loop's default executor they would queue
        #: behind every run monitor's status write, and a busy leader (100 runs at once) would miss
        #: its renew deadline and step down for nothing. Two, so one hung call cannot block the next.
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="leader-lease")

    def _lease_body(self, acquire_time: str, transitions: int, resource_version: str | None,
                    **spec: Any) -> client.V1Lease:
        """The Lease this replica writes (``spec`` overrides fields of its spec, by their wire names)."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if resource_version:
            metadata["resourceVersion"] = resource_version
        return client.V1Lease.model_validate({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                     "acquireTime": acquire_time, "renewTime": _fmt(_now()), "leaseTransitions": transitions,
                     **spec},
        })

    @property
    def call_timeout(self) -> float:
        """Seconds one Lease call may take: a third of the lease, so that a renewal that hangs
        (etcd stopped behind a live API server) is given up while there is time to step down."""
        return max(1.0, self.duration / 3)

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this replica holds the Lease afterwards."""
        timeout = self.call_timeout
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=timeout)
        except ApiException as err:
            if err.status != 404:
                raise
            try:
                self.coordination.create_namespaced_lease(self.namespace, self._lease_body(_fmt(_now()), 0, None),
                                                          _request_timeout=timeout)
                self._contact()
                return True
            except ApiException as create_err:
                if create_err.status == 409:
                    return False
                raise
        self._contact()
        spec = lease.spec or client.V1LeaseSpec()  # a Lease without a spec is free to take
        holder = spec.holder_identity
        renewed = spec.renew_time
        duration = spec.lease_duration_seconds or self.duration
        expired = renewed is None or renewed + timedelta(seconds=duration) < _now()
        if holder != self.identity and not expired:
            return False
        ours = holder == self.identity
        acquire = _fmt(spec.acquire_time) if ours and spec.acquire_time else _fmt(_now())
        transitions = (spec.lease_transitions or 0) + (0 if ours else 1)
        try:
            self.coordination.replace_namespaced_lease(
                self.name, self.namespace, self._lease_body(acquire, transitions, _resource_version(lease)),
                _request_timeout=timeout)
        except ApiException as err:
            if err.status == 409:  # someone else wrote it first
                return False
            raise
        if not ours:
            self.previous_holder = holder or None
        return True

    def _contact(self) -> None:
        if self.on_contact is not None:
            self.on_contact()

    def release(self) -> bool:
        """Give the Lease up (only if this replica still holds it): a standby may take it a second
        later. True when released."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if lease.spec is None or lease.spec.holder_identity != self.identity:
                return False
            body = self._lease_body(_fmt(_now()), lease.spec.lease_transitions or 0, _resource_version(lease),
                                    holderIdentity=None, leaseDurationSeconds=1)
            self.coordination.replace_namespaced_lease(self.name, self.namespace, body, _request_timeout=5)
        except LeaseError as err:
            log.warning("could not release the leader Lease; a standby takes it when it expires",
                        extra={"error": str(err), "lease": f"{self.namespace}/{self.name}"})
            return False
        log.info("released the leader Lease", extra={"lease": f"{self.namespace}/{self.name}"})
        return True

    async def acquire(self) -> None:
        """Wait until this replica is the leader."""
        retry = max(1.0, self.duration / 3)
        while True:
            try:
                if await asyncio.get_running_loop().run_in_executor(self._executor, self.try_acquire_or_renew):
                    log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}",
                                                     "identity": self.identity})
                    return
            except LeaseError as err:
                log.warning("leader election failed; retrying",
                            extra={"status": getattr(err, "status", None), "error": str(err)})
            await asyncio.sleep(retry)

    async def keep(self, lost: asyncio.Event) -> None:
        """Renew until no renewal has succeeded for two thirds of the lease duration (client-go's
        renew deadline); then set ``lost``. Each attempt is bounded by that deadline too, so a call
        that hangs cannot keep a leader acting after its Lease has expired."""
        loop = asyncio.get_running_loop()
        period = max(1.0, self.duration / 3)
        renew_deadline = self.duration * 2 / 3
        last_ok = loop.time()
        while not lost.is_set():
            await asyncio.sleep(period)
            left = last_ok + renew_deadline - loop.time()
            try:
                ok = await asyncio.wait_for(loop.run_in_executor(self._executor, self.try_acquire_or_renew),
                                            timeout=max(0.1, left))
            except (TimeoutError, *LeaseError):
                ok = False
            now = loop.time()
            if ok:
                last_ok = now
            elif now - last_ok >= renew_deadline:
                log.error("lost the leader Lease; stopping", extra={"identity": self.identity})
                lost.set()

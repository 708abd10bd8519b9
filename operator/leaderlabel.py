"""The leader label on the operator's own Pod: how heartbeats find the one replica that leads.

Every healthy replica reports ready (so a 2-replica Deployment is fully available and rollouts
finish), but heartbeats must reach the leader: it alone keeps the runs' progress in memory. The
leader therefore labels its own Pod ``sampleforge.io/leader=true`` and the chart's heartbeat
Service selects that label. The label must never sit on two running replicas for long:

* a new leader labels itself once it serves, and takes the label off the Lease's previous holder
  (a leader that was killed could not do it itself);
* a replica that stops (or loses the Lease) takes its own label off on the way out;
* a replica that starts takes its own label off first: a container restarted in the same Pod
  would otherwise inherit its old label while it is only a standby.

A Pod that is not running is not a ready endpoint, so a label left on a dead replica routes
nothing. Outside a cluster (no POD_NAME) there is no Pod to label and all of this is a no-op.
"""

from __future__ import annotations

import asyncio
import logging

from urllib3.exceptions import HTTPError

from sampleforge.api.constants import LABEL_LEADER, LEADER_VALUE
from sampleforge.operator.kube import Forbidden, Kube, KubeError, NotFound

log = logging.getLogger(__name__)
#: Seconds between attempts to label the leader's Pod while the API server does not answer.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0)


class LeaderPodLabel:
    def __init__(self, kube: Kube, namespace: str, pod_name: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.pod_name = pod_name

    @property
    def enabled(self) -> bool:
        return bool(self.pod_name)

    async def _set(self, pod_name: str, value: str | None) -> None:
        await asyncio.to_thread(self.kube.set_pod_label, self.namespace, pod_name, LABEL_LEADER, value)

    async def mark(self, previous_holder: str | None) -> bool:
        """Label this replica's Pod as the leader's, retrying while the API server does not answer;
        then unlabel the previous holder's Pod. True once this Pod carries the label."""
        if not self.enabled:
            log.warning("POD_NAME is not set, so no Pod is labelled as the leader; the chart's heartbeat Service "
                        "selects that label (set POD_NAME and POD_NAMESPACE from the downward API, as the chart "
                        "does; an operator run outside a cluster needs neither)")
            return False
        attempt = 0
        while True:
            try:
                await self._set(self.pod_name, LEADER_VALUE)
                break
            except NotFound:
                log.warning("cannot label this replica's Pod as the leader: Pod not found; check POD_NAME and "
                            "POD_NAMESPACE (the downward API sets them in the chart's Deployment)",
                            extra={"pod": f"{self.namespace}/{self.pod_name}"})
                return False
            except Forbidden as err:
                log.error("not allowed to label this replica's Pod as the leader, so heartbeats reach no replica; "
                          "grant patch on pods in the operator's namespace (the chart's leader-election Role does)",
                          extra={"pod": f"{self.namespace}/{self.pod_name}", "error": str(err)})
                return False
            except (KubeError, HTTPError, OSError) as err:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                attempt += 1
                log.warning("could not label this replica's Pod as the leader; retrying",
                            extra={"pod": f"{self.namespace}/{self.pod_name}", "error": str(err), "in": delay})
                await asyncio.sleep(delay)
        log.info("labelled this replica's Pod as the leader", extra={"pod": f"{self.namespace}/{self.pod_name}",
                                                                      "label": f"{LABEL_LEADER}={LEADER_VALUE}"})
        if previous_holder and previous_holder != self.pod_name:
            await self._unlabel(previous_holder, "the previous leader's Pod")
        return True

    async def unmark(self) -> None:
        """Take the label off this replica's own Pod (at start, on losing the Lease, at shutdown)."""
        if self.enabled:
            await self._unlabel(self.pod_name, "this replica's Pod")

    async def _unlabel(self, pod_name: str, what: str) -> None:
        """One best-effort attempt: a Pod that is gone carries no label."""
        try:
            await self._set(pod_name, None)
        except NotFound:
            return
        except (KubeError, HTTPError, OSError) as err:
            log.warning(f"could not take the leader label off {what}", extra={
                "pod": f"{self.namespace}/{pod_name}", "label": LABEL_LEADER, "error": str(err)})

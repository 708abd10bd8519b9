"""The operator run as its own process against a testbed, exactly as its container runs it.

Tests that kill and restart the operator, the demo and the benchmarks all start it through here.
It is configured only through the environment its Deployment would set (``SAMPLEFORGE_OPERATOR_*``),
so nothing in the operator knows it is being tested.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from sampleforge.testbed._health import http_ok
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

OPERATOR_NAMESPACE = "sampleforge-system"


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log_path: Path, identity: str = "operator-0",
                 settings: Mapping[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update({
            "KUBECONFIG": str(kubeconfig),
            "POD_NAMESPACE": OPERATOR_NAMESPACE,
            "POD_NAME": identity,
            "SAMPLEFORGE_OPERATOR_HTTP_HOST": "127.0.0.1",
            "SAMPLEFORGE_OPERATOR_HTTP_PORT": str(self.port),
            "SAMPLEFORGE_OPERATOR_HEARTBEAT_URL": f"{self.url}/v1alpha1/heartbeats",
        })
        env.update(settings or {})
        self.process = ManagedProcess(f"sampleforge-operator[{identity}]",
                                      [sys.executable, "-m", "sampleforge.operator"], log_path, env=env)

    def start(self, wait_ready: bool = True, timeout: float = 60.0) -> OperatorProcess:
        self.process.start()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready: healthy, as a standby that follows the Lease or as the leader."""
        self.process.wait_ready(lambda: http_ok(f"{self.url}/readyz"), timeout, "ready (/readyz)")

    def wait_leading(self, timeout: float = 60.0) -> None:
        """Leading: holding the Lease and handling runs (what /readyz says on the leader)."""
        self.process.wait_ready(self.leading, timeout, "the leader (/readyz)")

    def leading(self) -> bool:
        """/readyz says this replica leads ("ok: leader, ..."; a standby's "ok: standby, following
        the leader Lease" does not count)."""
        ready, why = self.readiness()
        return ready and why.startswith("ok: leader")

    def readiness(self) -> tuple[bool, str]:
        """What /readyz answers: (ready, why); (False, the error) when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:  # loopback only
                return response.status == 200, response.read().decode().strip()
        except urllib.error.HTTPError as err:
            return False, err.read().decode().strip()
        except OSError as err:
            return False, str(err)

    def stop(self, grace: float = 10.0) -> None:
        self.process.stop(grace=grace)

    def kill(self) -> None:
        """SIGKILL, no goodbye: what an OOM kill or a node loss does to the operator."""
        self.process.kill()

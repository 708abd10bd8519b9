"""The Secret check before a Job is made reads each Secret once per few seconds, never remembers
a missing one, and the reconcile path goes through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from sampleforge.api import Kind
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.reconcile import reconcile
from sampleforge.operator.secretcache import SecretKeyCache
from sampleforge.operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]


class Reads:
    """A fake API: the Secrets it holds, and how often each was read."""

    def __init__(self, secrets: dict[tuple[str, str], set[str]]) -> None:
        self.secrets = secrets
        self.calls: list[tuple[str, str]] = []

    def __call__(self, namespace: str, name: str) -> set[str] | None:
        self.calls.append((namespace, name))
        keys = self.secrets.get((namespace, name))
        return set(keys) if keys is not None else None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_found_secret_is_read_once_within_the_ttl_then_again() -> None:
    clock, reads = Clock(), Reads({("ns", "creds"): {"accessKey", "secretKey"}})
    cache = SecretKeyCache(ttl=5.0, clock=clock)
    for _ in range(50):
        assert cache.keys("ns", "creds", reads) == {"accessKey", "secretKey"}
    assert reads.calls == [("ns", "creds")]
    clock.now += 5.0
    assert cache.keys("ns", "creds", reads) == {"accessKey", "secretKey"}
    assert len(reads.calls) == 2


def test_a_missing_secret_is_read_every_time_so_a_new_one_is_seen_at_once() -> None:
    clock, reads = Clock(), Reads({})
    cache = SecretKeyCache(ttl=5.0, clock=clock)
    assert cache.keys("ns", "creds", reads) is None
    assert cache.keys("ns", "creds", reads) is None
    reads.secrets[("ns", "creds")] = {"accessKey"}
    assert cache.keys("ns", "creds", reads) == {"accessKey"}
    assert len(reads.calls) == 3


def test_a_secret_found_gone_is_forgotten_and_namespaces_do_not_share() -> None:
    clock, reads = Clock(), Reads({("a", "creds"): {"k"}, ("b", "creds"): {"other"}})
    cache = SecretKeyCache(ttl=5.0, clock=clock)
    assert cache.keys("a", "creds", reads) == {"k"}
    assert cache.keys("b", "creds", reads) == {"other"}
    del reads.secrets[("a", "creds")]
    clock.now += 6.0
    assert cache.keys("a", "creds", reads) is None
    assert cache.keys("a", "creds", reads) is None
    assert reads.calls.count(("a", "creds")) == 3


def test_the_returned_keys_are_a_copy() -> None:
    cache = SecretKeyCache(ttl=5.0, clock=Clock())
    reads = Reads({("ns", "creds"): {"k"}})
    cache.keys("ns", "creds", reads).add("forged")
    assert cache.keys("ns", "creds", reads) == {"k"}


def test_expired_entries_are_dropped() -> None:
    clock = Clock()
    cache = SecretKeyCache(ttl=5.0, clock=clock)
    cache.keys("a", "creds", Reads({("a", "creds"): {"k"}}))
    clock.now += 10.0
    cache.keys("b", "creds", Reads({("b", "creds"): {"k"}}))
    assert list(cache._found) == [("b", "creds")]


class CountingKube:
    """The API server's answers reconcile needs, counting the Secret reads."""

    def __init__(self) -> None:
        self.secret_reads = 0
        self.jobs: dict[str, dict[str, Any]] = {}

    def get_secret_keys(self, namespace: str, name: str) -> set[str]:
        self.secret_reads += 1
        return {"accessKey", "secretKey"}

    def ensure_config_map(self, config_map: dict[str, Any]) -> None:
        pass

    def ensure_job(self, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        made = {**job, "metadata": {**job["metadata"], "uid": f"job-{len(self.jobs)}"}}
        self.jobs[job["metadata"]["name"]] = made
        return made, True


def test_a_burst_of_runs_in_one_namespace_reads_its_secret_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "event", lambda *args, **kwargs: None)  # no event loop of kopf's here
    kube = CountingKube()
    ctx = OperatorContext(settings=Settings(leader_election=False), kube=kube,  # type: ignore[arg-type]
                          metrics=OperatorMetrics(), serving=True)
    example = yaml.safe_load((REPO / "examples" / "augmentationrun.yaml").read_text())
    for i in range(20):
        doc = {**example, "metadata": {"name": f"run-{i}", "namespace": "search-ml", "uid": f"uid-{i}",
                                       "generation": 1},
               "spec": {**example["spec"], "parallelism": 1}, "status": {}}
        reconcile(ctx, Kind.AUGMENTATION_RUN, doc)
    assert len(kube.jobs) == 20
    assert kube.secret_reads == 1

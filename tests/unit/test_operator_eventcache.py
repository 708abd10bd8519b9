"""One listing of a namespace's FailedCreate Events answers all its monitors for a few seconds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sampleforge.operator.eventcache import FailedCreateListings


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def event(job_uid: str, message: str) -> dict[str, Any]:
    return {"involvedObject": {"kind": "Job", "uid": job_uid}, "reason": "FailedCreate", "message": message}


class Lister:
    """A namespace's Events as the API server lists them, slowly, counting the listings."""

    def __init__(self, events: dict[str, list[dict[str, Any]]]) -> None:
        self.events = events
        self.listings: list[str] = []

    async def __call__(self, namespace: str) -> list[dict[str, Any]]:
        self.listings.append(namespace)
        await asyncio.sleep(0.01)
        return list(self.events.get(namespace, []))


def test_many_monitors_due_at_once_share_one_listing_and_get_their_own_jobs_events() -> None:
    lister = Lister({"a": [event("j1", "quota"), event("j2", "webhook")], "b": [event("j9", "psa")]})
    cache = FailedCreateListings(ttl=5.0, clock=Clock())

    async def all_due() -> list[list[dict[str, Any]]]:
        return list(await asyncio.gather(*[cache.for_job("a", uid, lister) for uid in ("j1", "j2", "j3") * 50],
                                         cache.for_job("b", "j9", lister)))

    found = asyncio.run(all_due())
    assert sorted(lister.listings) == ["a", "b"]
    assert [e["message"] for e in found[0]] == ["quota"] and [e["message"] for e in found[1]] == ["webhook"]
    assert found[2] == [] and [e["message"] for e in found[-1]] == ["psa"]


def test_a_listing_older_than_the_ttl_is_made_again() -> None:
    clock, lister = Clock(), Lister({"a": []})
    cache = FailedCreateListings(ttl=5.0, clock=clock)
    assert asyncio.run(cache.for_job("a", "j1", lister)) == []
    lister.events["a"] = [event("j1", "quota")]
    clock.now += 4.9
    assert asyncio.run(cache.for_job("a", "j1", lister)) == []
    clock.now += 0.1
    assert [e["message"] for e in asyncio.run(cache.for_job("a", "j1", lister))] == ["quota"]
    assert lister.listings == ["a", "a"]


def test_a_failed_listing_is_not_remembered() -> None:
    cache = FailedCreateListings(ttl=5.0, clock=Clock())
    calls: list[str] = []

    async def refused(namespace: str) -> list[dict[str, Any]]:
        calls.append(namespace)
        raise OSError("connection reset")

    with pytest.raises(OSError):
        asyncio.run(cache.for_job("a", "j1", refused))
    lister = Lister({"a": [event("j1", "quota")]})
    assert [e["message"] for e in asyncio.run(cache.for_job("a", "j1", lister))] == ["quota"]
    assert calls == ["a"] and lister.listings == ["a"]

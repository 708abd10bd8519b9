"""A run's Events against the real API server: a long failure message with non-ASCII text (the
phase arrow, a pod's message in another language) is cut so that the server accepts the Event, as
kopf posts it (with ``eventTime``, which makes the server count the message in bytes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from sampleforge.operator.status import EVENT_MESSAGE_LIMIT, event_message


def post(kube_api: client.ApiClient, namespace: str, message: str) -> None:
    """An Event shaped as kopf's ``post_event`` sends it."""
    now = datetime.now(UTC).isoformat()
    body: dict[str, Any] = {
        "metadata": {"namespace": namespace, "generateName": "sampleforge-test-"},
        "action": "Action?", "type": "Warning", "reason": "BackoffLimitExceeded", "message": message,
        "reportingComponent": "sampleforge", "reportingInstance": "sampleforge-test",
        "source": {"component": "sampleforge"},
        "involvedObject": {"apiVersion": "sampleforge.io/v1alpha1", "kind": "AugmentationRun", "name": "r",
                           "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"},
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": now,
    }
    client.CoreV1Api(kube_api).create_namespaced_event(namespace, body, _request_timeout=30)


LONG = "AugmentationRun r: Running → Failed (pod r-0-x: " + "训练数据不可读 → " * 200 + ")"


def test_a_long_multibyte_failure_message_is_accepted_once_cut(kube_api: client.ApiClient, namespace: str) -> None:
    assert len(LONG) > EVENT_MESSAGE_LIMIT
    post(kube_api, namespace, event_message(LONG))
    events = client.CoreV1Api(kube_api).list_namespaced_event(namespace, _request_timeout=30).items
    assert any(e.message and e.message.endswith("…") for e in events)


def test_the_server_counts_bytes_so_a_cut_by_characters_would_be_refused(kube_api: client.ApiClient,
                                                                         namespace: str) -> None:
    """What the cut guards against: 1024 characters of this text are about 3 KiB, and refused."""
    by_characters = LONG[:EVENT_MESSAGE_LIMIT]
    with pytest.raises(ApiException) as refused:
        post(kube_api, namespace, by_characters)
    assert refused.value.status == 422 and "message" in str(refused.value.body)

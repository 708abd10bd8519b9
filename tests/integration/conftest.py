"""Fixtures the operator test modules share. Each module that uses ``ns`` defines its own
module-scoped ``operator_proc`` (its settings and log file, :func:`operator_helpers.running_operator`);
pytest resolves that name from the requesting test's module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from operator_helpers import create_credentials, stored_example

from sampleforge.testbed import Testbed
from sampleforge.testbed._operator import OperatorProcess


@pytest.fixture
def ns(operator_proc: OperatorProcess, kube_api: client.ApiClient, namespace: str, testbed: Testbed) -> str:
    """A fresh namespace with the runs' storage Secret, watched by the module's operator."""
    create_credentials(kube_api, namespace, testbed.minio)
    return namespace


@pytest.fixture
def stored(testbed: Testbed) -> Callable[..., dict[str, Any]]:
    """An example run whose output goes to a fresh prefix of the testbed's MinIO."""
    return lambda name, **spec: stored_example(testbed.minio, name, **spec)

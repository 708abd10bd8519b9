"""Where the testbed's binaries live, and which versions they must be.

The pins come from ``hack/testbed-versions.toml``, the same file the installer builds from, so the
library and the installer can never disagree about what "the pinned release" is.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO_ROOT / "hack" / "testbed-versions.toml"

#: Every binary the full testbed starts or the tests call.
ALL_BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
    "kwok", "minio", "helm", "prometheus", "promtool", "lua5.1", "lua5.4",
)


def cache_dir() -> Path:
    """The cache shared by the installer, the tests and CI: outside the repository on purpose."""
    return Path(os.environ.get("SAMPLEFORGE_CACHE", Path.home() / ".cache" / "sampleforge"))


def bin_dir() -> Path:
    return cache_dir() / "bin"


@cache
def pinned_versions() -> dict[str, Any]:
    return tomllib.loads(VERSIONS_FILE.read_text())


def kubernetes_version() -> str:
    return str(pinned_versions()["kubernetes"]["version"])


def binary(name: str) -> Path:
    """Path of a testbed binary from the cache only: never whatever else is on PATH, so the tests
    run exactly the pinned builds."""
    candidate = bin_dir() / name
    if not candidate.exists():
        raise FileNotFoundError(
            f"testbed binary {name!r} not found in {bin_dir()}; run `make testbed` "
            f"(python3 hack/install_testbed.py) to build it"
        )
    return candidate


def missing_binaries(names: tuple[str, ...] = ALL_BINARIES) -> list[str]:
    missing = []
    for name in names:
        try:
            binary(name)
        except FileNotFoundError:
            missing.append(name)
    return missing

"""The local testbed: real etcd, kube-apiserver, controllers, kwok GPU nodes and MinIO.

llama.cpp's OpenAI-compatible server too, for the openai generation engine.

Development and test tooling only: the operator never imports it. Used by the pytest fixtures, the
demo and the benchmarks alike; :mod:`.localrun` runs either job outside Kubernetes with the
environment its pod would get.
"""

from sampleforge.testbed._errors import TestbedError
from sampleforge.testbed._kueue import KUEUE_GROUP, KUEUE_VERSION, kueue_missing
from sampleforge.testbed._kwok import (
    EXIT_CODE_ANNOTATION,
    GPU_RESOURCE,
    GPU_TAINT,
    HOLD_KEY,
    IMAGE_PULL_ERROR_LABEL,
)
from sampleforge.testbed._llamacpp import LlamaCppServer, llamacpp_missing, start_llamacpp
from sampleforge.testbed._paths import ALL_BINARIES, binary, kubernetes_version, missing_binaries
from sampleforge.testbed._testbed import Testbed, TestbedOptions

__all__ = [
    "ALL_BINARIES", "EXIT_CODE_ANNOTATION", "GPU_RESOURCE", "GPU_TAINT", "HOLD_KEY", "IMAGE_PULL_ERROR_LABEL",
    "KUEUE_GROUP", "KUEUE_VERSION", "LlamaCppServer", "Testbed", "TestbedError", "TestbedOptions", "binary",
    "kubernetes_version", "kueue_missing", "llamacpp_missing", "missing_binaries", "start_llamacpp",
]

"""The ``vllm`` engine through the real job entry point, in a pod that cannot run it.

Where no GPU is lent (CI, these machines), a run that selects ``engine: vllm`` must fail at once with
a do-not-retry exit code and a message naming ``spec.augmenters[i].engine``, before any model is
fetched and without committing anything: what a pod of the plain job image, or one without a GPU,
does. The import attempt and the CUDA query are real. Generation with vLLM itself needs a GPU:
bench/gpu/bench_generation_gpu.sh runs it on one.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_support import esci_csv, job_env, put, run_job, spec

from sampleforge.api import jobenv
from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

ESCI_COLUMNS = {"query": "query", "item": "product_title", "label": "esci_label", "id": "example_id"}


def can_run_vllm() -> bool:
    import torch

    return importlib.util.find_spec("vllm") is not None and bool(torch.cuda.is_available())


@pytest.mark.skipif(can_run_vllm(), reason="vLLM and a CUDA device are present: the engine would run")
def test_a_vllm_run_in_a_pod_that_cannot_run_it_fails_at_once_naming_the_field(
        testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    uri = put(s3, bucket, "esci/esci.csv", esci_csv())
    augmenters: list[dict[str, Any]] = [
        {"type": "typo", "fraction": 0.5},
        {"type": "doc2query", "model": f"s3://{bucket}/models/absent/", "engine": "vllm", "maxRows": 2},
    ]
    run_spec = {**spec(bucket, {"uri": uri, "columns": ESCI_COLUMNS}, augmenters), "resources": {"gpus": 1}}
    capsys.readouterr()
    code = run_job(job_env(testbed, run_spec, tmp_path))
    err = capsys.readouterr().err
    assert code == jobenv.EXIT_INVALID_CONFIG, err[-3000:]
    done = [json.loads(line) for line in err.splitlines() if '"finished"' in line][-1]
    assert done["reason"] == "InvalidSpec", done
    assert done["detail"].startswith("spec.augmenters[1].engine is vllm"), done
    missing = importlib.util.find_spec("vllm") is None
    assert ("vLLM cannot be imported" if missing else "needs a CUDA GPU") in done["detail"], done
    # Nothing was fetched or committed: the model directory does not even exist.
    assert not (tmp_path / "models").exists()
    assert not any(o.object_name.endswith("manifest.json") for o in s3.list_objects(bucket, "out/", recursive=True))

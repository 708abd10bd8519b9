#!/usr/bin/env bash
# LLM generation on a GPU machine: the job's vllm engine against its transformers engine on the same
# prompts and model (bench_generation_gpu.py says how), in one prepared run of a few minutes.
#
#   bash bench/gpu/bench_generation_gpu.sh            # from the repository root
#
# What it needs on the machine: a CUDA GPU, a Python with torch, transformers and tokenizers, and for
# the vllm side vLLM itself (the Dockerfile's job-vllm image has all of it; without vLLM the
# transformers side is still measured and the JSON says why vllm was skipped). No network: the job's
# own Python dependencies that such a machine may lack (pydantic, minio and theirs) are installed from
# wheels in .whl/ when present (bash bench/gpu/wheels.sh fetches them beforehand, where PyPI is
# reachable; the device tool carries the folder), the repository is put on the path through a
# temporary `sampleforge` namespace folder, and the model (random weights, SmolLM2-360M's shape) is
# built locally. Results go to $OUT (the device tool's output folder) when set, else bench/results/:
# generation-gpu.json and generation-gpu.log.
#
# SAMPLEFORGE_GPU_BENCH_ALLOW_CPU=1 runs it on a CPU with a tiny model and a few rows, only to check
# the script.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
RESULTS="${OUT:-$REPO/bench/results}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$RESULTS"
# Python runs from the scratch folder: in the repository root, its operator/ folder would shadow the
# standard library's operator module.
cd "$WORK"

# The job's pure-Python dependencies, from carried wheels, when the machine lacks them.
if ! "$PYTHON" -c "import pydantic, minio" 2>/dev/null; then
  if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
      "$REPO"/.whl/*.whl
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
# sampleforge.api and sampleforge.jobs without installing anything (what `pip install -e .` maps).
mkdir -p "$WORK/path/sampleforge"
ln -s "$REPO/api" "$WORK/path/sampleforge/api"
ln -s "$REPO/jobs" "$WORK/path/sampleforge/jobs"
export PYTHONPATH="$WORK/path${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1

"$PYTHON" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "tokenizers", "pydantic", "minio", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (the jobs extra; pydantic and minio: bash bench/gpu/wheels.sh)")
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")
      + f", vllm {'present' if importlib.util.find_spec('vllm') else 'absent'}")
PY

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  SIZE=()
elif [[ "${SAMPLEFORGE_GPU_BENCH_ALLOW_CPU:-}" == 1 ]]; then
  echo "no GPU: checking the script with a tiny model and a few rows on the CPU"
  SIZE=(--shape tiny --rows 24 --warmup 4 --max-new-tokens 8 --batch-size 8 --max-batch-tokens 1024)
else
  echo "no CUDA GPU visible; this script measures GPU generation (set SAMPLEFORGE_GPU_BENCH_ALLOW_CPU=1 to test it)" >&2
  exit 2
fi

set -o pipefail
timeout 450 "$PYTHON" "$REPO/bench/gpu/bench_generation_gpu.py" "${SIZE[@]}" --work "$WORK" --output "$RESULTS" "$@" \
  2>&1 | tee "$RESULTS/generation-gpu.log"

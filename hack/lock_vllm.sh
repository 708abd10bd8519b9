#!/usr/bin/env bash
# Regenerates constraints-vllm.txt, the lock of the Dockerfile's job-vllm target (the job image with
# vLLM, for augmenters with engine: vllm).
#
# Why a second lock: vLLM pins torch exactly (vllm 0.33.0: torch==2.14.0) and caps transformers
# (<5.21) and, through mistral-common, numpy (<2.4), while constraints.txt, the lock of every other
# image and of development, has torch 2.15.0, transformers 5.24.0 and numpy 2.4.6. vLLM's pins win in
# the vLLM image only: its torch (and the CUDA wheels that come with it), transformers and numpy
# are what vLLM was built and tested against; every other package keeps the version of
# constraints.txt (the resolution is constrained by it), so the job code runs on the same stack
# except those three. pyproject.toml's ranges (torch>=2.13, transformers>=5.20, numpy>=2.3) admit
# both locks. tests/unit/test_dockerfile.py checks that the two locks agree outside VLLM_OWN.
#
#   bash hack/lock_vllm.sh        # from anywhere; needs uv (the bootstrap's venv has it) and PyPI
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV="${UV:-$(command -v uv || echo "$(python3 "$REPO/hack/checkout_env.py" venv)/bin/uv")}"  # else this checkout's venv's
VLLM_VERSION="0.33.0"
# Packages whose version vLLM decides (keep in step with VLLM_OWN in tests/unit/test_dockerfile.py).
VLLM_OWN='^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+|transformers|numpy)=='
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

grep -E '^[A-Za-z0-9]' "$REPO/constraints.txt" | grep -v -E "$VLLM_OWN" > "$WORK/base.txt"
echo "vllm==$VLLM_VERSION" > "$WORK/vllm.in"
cp "$REPO/pyproject.toml" "$WORK/"
cd "$WORK"
# The job image's Python (3.11.7) on x86-64 Linux (the CUDA base image is glibc 2.39).
"$UV" pip compile pyproject.toml vllm.in --extra jobs -c base.txt --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28 --no-header --no-annotate -o lock.txt
{
  echo "# The lock of the Dockerfile's job-vllm target: constraints.txt's versions, except the packages vLLM"
  echo "# $VLLM_VERSION pins (torch, its CUDA wheels, triton, transformers, numpy). Made by hack/lock_vllm.sh."
  cat lock.txt
} > "$REPO/constraints-vllm.txt"
echo "wrote $REPO/constraints-vllm.txt ($(grep -c '==' "$REPO/constraints-vllm.txt") pins)"

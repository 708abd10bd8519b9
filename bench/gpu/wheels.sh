#!/usr/bin/env bash
# Fetches, where PyPI is reachable, the wheels of the job's pure-Python dependencies that a bare GPU
# machine may lack (pydantic, minio and what they import), for CPython 3.12 on x86-64 Linux, into
# .whl/ at the repository root (git ignores it through .git/info/exclude). The bench/gpu scripts
# install them from there with no network. Versions: those of constraints.txt.
#
#   bash bench/gpu/wheels.sh [PYTHON_VERSION]     # default 3.12, the GPU machine's Python
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${1:-3.12}"
PIP=(python3 -m pip)
grep -qx '/.whl/' "$REPO/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$REPO/.git/info/exclude"
mkdir -p "$REPO/.whl"
pin() { grep -i -m1 "^$1==" "$REPO/constraints.txt" | tr -d ' '; }
for name in pydantic pydantic-core annotated-types typing-inspection minio pycryptodome argon2-cffi \
            argon2-cffi-bindings cffi pycparser; do
  spec="$(pin "$name")"
  [[ -n "$spec" ]] || { echo "$name is not in constraints.txt" >&2; exit 1; }
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_24_x86_64 -d "$REPO/.whl" "$spec"
done
ls -la "$REPO/.whl"

#!/usr/bin/env python3
"""Build llama.cpp's OpenAI-compatible server once, pinned, into the cache outside the repository.

The `openai` generation engine is tested and benchmarked against a real serving engine, not a stand-in.
The registries serve `llama-cpp-python` only as an sdist, so installing it compiles llama.cpp with
cmake; on a 2-core machine that takes many minutes. It therefore gets its own virtual environment
(``$SAMPLEFORGE_CACHE/llamacpp/venv``, kept apart from the project's so neither pins the other's
dependencies) and a stamp recording exactly what produced it (pinned version, extras, cmake flags,
Python version); a stamp that still matches means nothing is rebuilt and the step takes a second.

Only the standard library is used here, like hack/install_testbed.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONS_FILE = REPO / "hack" / "testbed-versions.toml"

# CPU only, and portable across x86-64 machines with AVX2 (GGML_NATIVE=OFF still enables AVX/AVX2/FMA/
# F16C): the cache may be reused by CI on a sibling machine, where a -march=native build could SIGILL.
# Tests, examples, tools and libcurl are not needed by the server and only cost compile time.
CMAKE_FLAGS = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_METAL=OFF",
    "-DGGML_VULKAN=OFF",
    "-DGGML_BLAS=OFF",
    "-DGGML_OPENMP=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
)


def cache_dir() -> Path:
    return Path(os.environ.get("SAMPLEFORGE_CACHE", Path.home() / ".cache" / "sampleforge"))


def pins() -> dict:
    return tomllib.loads(VERSIONS_FILE.read_text())["llamacpp"]


def fingerprint(pin: dict, python: str) -> str:
    digest = hashlib.sha256()
    for part in (pin["package"], pin["version"], ",".join(pin.get("extras", [])), python, *CMAKE_FLAGS):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def host_python() -> str:
    """The interpreter the server venv is made from: this one, which hack/bootstrap.sh also makes the
    checkouts' environments from, so the server and the project share one Python."""
    return sys.executable


def python_version(python: str) -> str:
    return subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> None:
    """Run a long build with its output in a log file and a heartbeat line, so a slow compile reads as
    progress rather than a hang."""
    started = time.monotonic()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(60):
            print(f"      still compiling llama.cpp ({time.monotonic() - started:.0f}s; log: {log})", flush=True)

    threading.Thread(target=beat, daemon=True).start()
    try:
        with log.open("w") as out:
            rc = subprocess.run(cmd, check=False, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    finally:
        stop.set()
    if rc != 0:
        tail = log.read_text().splitlines()[-40:]
        raise SystemExit(f"building llama-cpp-python failed (exit {rc}); full log: {log}\n" + "\n".join(tail))


def install(force: bool = False) -> str:
    pin = pins()
    root = cache_dir()
    home = root / "llamacpp"
    venv = home / "venv"
    stamps, logs = root / "stamps", root / "logs"
    for d in (home, stamps, logs):
        d.mkdir(parents=True, exist_ok=True)
    stamp = stamps / "llama-cpp-server.json"
    python = host_python()
    fp = fingerprint(pin, python_version(python))
    if (not force and (venv / "bin" / "python").exists() and stamp.exists()
            and json.loads(stamp.read_text()).get("fingerprint") == fp):
        return "cached"
    # Build into a fresh directory and swap it in last: an interrupted compile never leaves a venv
    # that looks finished, and the stamp is written only after the swap. A build that finished but
    # was not swapped in (interrupted at the very end) is kept rather than compiled again.
    building = home / "venv.building"
    if force or not _imports(building, pin["version"]):
        _build(building, python, pin, logs)
    # The venv's scripts carry absolute shebangs (we only ever run `python -m`, which does not care).
    shutil.rmtree(venv, ignore_errors=True)
    building.rename(venv)
    if not _imports(venv, pin["version"]):
        raise SystemExit(f"llama-cpp-python {pin['version']} does not import from {venv} after the build")
    stamp.write_text(json.dumps({"version": pin["version"], "fingerprint": fp}, indent=1))
    return "built"


def _imports(venv: Path, version: str) -> bool:
    """Whether the venv's llama_cpp is the pinned version and its server imports. Run from the
    venv's own directory: the repository root holds a folder named operator/, which would shadow the
    standard library's module of that name for a `python -c` started there."""
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    check = "import llama_cpp, llama_cpp.server.app; print(llama_cpp.__version__)"
    done = subprocess.run([str(python), "-c", check], cwd=venv, capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.strip() == version


def _build(building: Path, python: str, pin: dict, logs: Path) -> None:
    shutil.rmtree(building, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(building)], check=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = " ".join(CMAKE_FLAGS)
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(max(1, min(os.cpu_count() or 1, 2)))
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    extras = f"[{','.join(pin['extras'])}]" if pin.get("extras") else ""
    requirement = f"{pin['package']}{extras}=={pin['version']}"
    # The uv that hack/bootstrap.sh shares between checkouts, else one on PATH, else pip.
    uv = os.environ.get("SAMPLEFORGE_UV") or shutil.which("uv")
    if uv and Path(uv).exists():
        cmd = [str(uv), "pip", "install", "--python", str(building / "bin" / "python"), "--no-cache",
               "-v", requirement]
    else:
        cmd = [str(building / "bin" / "pip"), "install", "--no-cache-dir", "--disable-pip-version-check",
               "-v", requirement]
    run_logged(cmd, env, logs / "llama-cpp-server.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamp matches")
    args = parser.parse_args(argv)
    pin = pins()
    print(f"llama.cpp server ({pin['package']} {pin['version']}, CPU) → {cache_dir() / 'llamacpp' / 'venv'}",
          flush=True)
    t0 = time.monotonic()
    status = install(force=args.force)
    print(f"      {status} in {time.monotonic() - t0:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

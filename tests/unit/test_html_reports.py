"""The charts and pages of the jobs' ``report.html``: well-formed SVG whatever the data say, user
text escaped everywhere, one chart per section that has data, nothing loaded from outside."""

from __future__ import annotations

import html.parser
import math
import re
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from sampleforge.jobs.augment.commit import assemble_manifest
from sampleforge.jobs.augment.htmlreport import render_html_report, word_diff
from sampleforge.jobs.augment.output import TEXT_LENGTH_EDGES, length_bin
from sampleforge.jobs.common import svg
from sampleforge.jobs.common.htmlpage import CHECK_SCRIPT, page

SVG = "{http://www.w3.org/2000/svg}"
EVIL = '<script>alert("x")</script>&\x01'


def _svgs(document: str) -> list[ET.Element]:
    """Every <svg> element of a page, parsed as XML (raises if one is not well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", document, flags=re.DOTALL)]


def _plots(document: str) -> dict[str, ET.Element]:
    found = re.findall(r'<figure class="plot" data-plot="([^"]+)">(<svg\b.*?</svg>)', document, flags=re.DOTALL)
    return {name: ET.fromstring(body) for name, body in found}


def _drawn(element: ET.Element) -> int:
    return sum(1 for e in element.iter() if e.tag in (f"{SVG}rect", f"{SVG}polyline", f"{SVG}circle"))


class _Scripts(html.parser.HTMLParser):
    """Collects the page's script elements, external references and event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.references: list[str] = []
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_script = tag == "script"
        for name, value in attrs:
            if name in ("src", "href") or (value and "://" in value and name != "xmlns" and name != "content"):
                self.references.append(f"{tag} {name}={value}")
            if name.startswith("on"):
                self.handlers.append(f"{tag} {name}")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts.append(data)


def _check_page(document: str) -> _Scripts:
    parser = _Scripts()
    parser.feed(document)
    assert parser.scripts == [CHECK_SCRIPT], "the page runs exactly its own check script"
    assert not parser.references, parser.references
    assert not parser.handlers, parser.handlers
    assert "default-src 'none'" in document
    return parser


class TestSvg:
    def test_every_chart_is_well_formed_and_escapes_its_text(self) -> None:
        charts = [
            svg.grouped_bars(EVIL, [EVIL, "b"], [svg.Series(EVIL, [3, 4]), svg.Series("after", [5, float("nan")])]),
            svg.stacked_bars(EVIL, ["a", EVIL], [svg.Series("kept", [1, 2]), svg.Series(EVIL, [0, 7])]),
            svg.histogram(EVIL, [EVIL, "10-19"], [svg.Series(EVIL, [1, 2])], x_label=EVIL),
            svg.line_chart(EVIL, [svg.Line(EVIL, [(1, 0.5), (2, math.inf), (3, 0.25)])], y_label=EVIL,
                           markers=[(2, EVIL)]),
        ]
        for chart in charts:
            root = ET.fromstring(chart)
            assert root.tag == f"{SVG}svg" and _drawn(root) > 0
            assert "<script" not in chart and "\x01" not in chart
            assert any(EVIL.replace("\x01", "") == (e.text or "") for e in root.iter(f"{SVG}title"))

    def test_bars_are_proportional_and_carry_their_values(self) -> None:
        root = ET.fromstring(svg.grouped_bars("t", ["a", "b"], [svg.Series("n", [10, 5])]))
        bars = [e for e in root.iter(f"{SVG}rect") if e.find(f"{SVG}title") is not None]
        widths = [float(b.get("width", 0)) for b in bars]
        assert widths[0] == pytest.approx(2 * widths[1], rel=0.02)
        assert [b.find(f"{SVG}title").text for b in bars] == ["a · n: 10", "b · n: 5"]  # type: ignore[union-attr]

    def test_a_chart_without_data_says_so(self) -> None:
        assert "nothing to show" in svg.grouped_bars("t", [], [])
        assert "no finite values" in svg.line_chart("t", [svg.Line("loss", [(1, float("nan"))])])

    def test_all_zero_values_draw_on_a_unit_axis_instead_of_failing(self) -> None:
        """An augmenter that kept no rows must not fail the run when its report is drawn."""
        for chart in (svg.grouped_bars("t", ["kept"], [svg.Series("hardNegative", [0])]),
                      svg.stacked_bars("t", ["a", "b"], [svg.Series("x", [0, 0]), svg.Series("y", [0, 0])]),
                      svg.histogram("t", ["0-10", "10-20"], [svg.Series("query", [0, 0])])):
            root = ET.fromstring(chart)  # drawn, and well-formed
            assert root.get("aria-label") == "t" and ">0</text>" in chart  # an axis from 0

    def test_nice_ticks(self) -> None:
        assert svg.nice_ticks(0, 1300) == [0, 500, 1000, 1500]
        assert svg.nice_ticks(0.61, 0.93)[0] <= 0.61 and svg.nice_ticks(0.61, 0.93)[-1] >= 0.93
        flat = svg.nice_ticks(5, 5)
        assert len(flat) >= 2 and flat[0] <= 5 <= flat[-1]
        assert svg.fmt(1234.0) == "1,234" and svg.fmt(0.123456) == "0.1235"


class TestPage:
    def test_title_and_body_are_escaped_and_only_the_check_script_runs(self) -> None:
        document = page(EVIL, ["<p>ok</p>"])
        _check_page(document)
        assert "<title>&lt;script&gt;" in document

    def test_the_policy_pins_the_check_script_by_hash(self) -> None:
        import base64
        import hashlib

        digest = base64.b64encode(hashlib.sha256(CHECK_SCRIPT.encode()).digest()).decode()
        assert f"script-src 'sha256-{digest}'" in page("t", [])


def _manifest(**extra: Any) -> dict[str, Any]:
    shared = {
        "run": {"kind": "AugmentationRun", "name": "shoes", "namespace": EVIL, "uid": "u"},
        "format": "parquet", "columns": {"query": "q", "item": "t", "label": "y"},
        "augmenters": {"typo": {"type": "typo", "labelRule": "keep"},
                       EVIL: {"type": "gan", "labelRule": "condition", "summary": {
                           "trainingSeconds": 1.5, "note": EVIL,
                           "fidelity": {"rows": 100, "classifierAuc": 0.55,
                                        "wasserstein1": {"perFeature": {"price": 0.1, EVIL: 0.3}},
                                        "ks": {"perFeature": {"price": 0.05, EVIL: 0.2}},
                                        "correlationDiff": {"meanAbs": 0.02, "frobenius": 0.04}}}}},
        "filterNotes": {"similarity": EVIL}, "evalSplit": {"uri": EVIL, "rows": 5},
        "source": {"uri": EVIL, "format": None, "objects": []}, "firstPass": {}, "preprocess": None,
        "config": {}, "seed": 1, "sharding": "ranges", "codeVersion": {},
    }
    marker = {
        "shard": 0, "shards": 1, "fingerprint": "f", "configFingerprint": "c",
        "files": [{"path": "data/p.parquet", "size": 1, "sha256": "h", "rows": 12}], "rejects": None,
        "counts": {
            "rowsRead": 9, "rowsIn": 8, "generatedKept": 4, "rejectedRows": 1, "rejectReasons": {EVIL: 1},
            "augmenters": {"typo": {"produced": 5, "kept": 3, "dropped": {"dedup": {"dup": 2}}, "sourceRowsRemoved": 0},
                           EVIL: {"produced": 1, "kept": 1, "dropped": {}, "sourceRowsRemoved": 0}},
            "filtered": {"dedup": {EVIL: 2}}, "redactions": {"email": 1},
            "labelsBefore": {EVIL: 3, "1": 5}, "labelsAfter": {EVIL: 5, "1": 7},
            "textLengths": {"before": {"query": {"10": 8}, "item": {"40": 6, "100": 2}},
                            "after": {"query": {"5": 1, "10": 11}, "item": {"40": 9, "100": 3}}},
            "sourceRowsInEvalSplit": 0, "sourceRowsDropped": {},
        },
        "examples": [{"augmenter": "typo", "sourceRow": 0,
                      "source": {"query": "red shoes", "item": EVIL, "label": "1", "attributes": {"brand": "Nike"}},
                      "generated": {"query": "red shoos", "item": EVIL + " x", "label": "0",
                                    "attributes": {"brand": "<b>Adidas</b>"}}}],
        "timings": {}, "shared": shared, **extra,
    }
    return assemble_manifest([marker])


class TestAugmentationReport:
    def test_length_bins_are_fixed_and_add_up_across_shards(self) -> None:
        assert length_bin("") == "0" and length_bin("abcd") == "0" and length_bin("abcde") == "5"
        assert length_bin("x" * 5000) == str(TEXT_LENGTH_EDGES[-1]) and length_bin(None) == "0"
        manifest = _manifest()
        assert manifest["textLengths"]["after"]["item"] == {"40": 9, "100": 3}
        assert manifest["textLengths"]["edges"] == list(TEXT_LENGTH_EDGES)

    def test_every_section_has_its_plot_and_every_plot_is_svg(self) -> None:
        document = render_html_report(_manifest())
        _check_page(document)
        plots = _plots(document)
        assert set(plots) == {"labels", "augmenters", "filters", "length-query", "length-item",
                              svg.esc(f"fidelity-{EVIL}")}
        assert all(_drawn(p) > 0 for p in plots.values())
        assert len(_svgs(document)) == len(plots)
        for heading in ("Label distribution", "Augmenters", "Filters", "Text lengths", "GAN fidelity", "Examples",
                        "Records set aside"):
            assert f"<h2>{heading}</h2>" in document

    def test_user_text_is_escaped_everywhere(self) -> None:
        document = render_html_report(_manifest())
        parser = _check_page(document)
        assert EVIL not in document and "<b>Adidas</b>" not in document and "\x01" not in document
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in document
        assert "&lt;b&gt;Adidas&lt;/b&gt;" in document
        assert len(parser.scripts) == 1

    def test_without_gan_or_lengths_those_sections_are_left_out(self) -> None:
        manifest = _manifest()
        manifest.pop("textLengths")
        del manifest["augmenters"][EVIL]
        document = render_html_report(manifest)
        assert "GAN fidelity" not in document and "Text lengths" not in document
        assert set(_plots(document)) == {"labels", "augmenters", "filters"}

    def test_word_diff_marks_only_what_changed(self) -> None:
        assert word_diff("red running shoes", "red runnign shoes") == ("red <del>running</del> shoes",
                                                                       "red <ins>runnign</ins> shoes")
        assert word_diff("跑步鞋 男", "运动鞋 男") == ("<del>跑步</del>鞋 男", "<ins>运动</ins>鞋 男")
        assert word_diff("a <b>", "a <i>") == ("a &lt;<del>b</del>&gt;", "a &lt;<ins>i</ins>&gt;")
        assert word_diff(None, "new") == ("", "<ins>new</ins>")


def _finetune(**results: Any) -> str:
    from sampleforge.api.finetune import FineTuneRunSpec
    from sampleforge.jobs.finetune.htmlreport import render_html_report as render_finetune

    spec = FineTuneRunSpec.model_validate({
        "storage": {"endpoint": "minio:9000", "credentialsSecret": "s"}, "model": "s3://models/minilm/",
        "task": "relevance", "data": {"uri": "s3://data/train.jsonl"}, "output": {"uri": "s3://models/out/"}})
    history = [{"step": s, "metrics": {"ndcg@10": 0.5 + s / 100, "auc": 0.6, "loss": 1.0 - s / 50, "mse": 4.0}}
               for s in (10, 20)]
    document: dict[str, Any] = {
        "final": history[-1]["metrics"], "step": 20, "totalSteps": 20, "epochs": 1.0, "history": history,
        "best": {"name": "ndcg@10", "value": 0.7, "step": 20}, "publishedStep": 20, "trainingSeconds": 3.0,
        "lossCurve": [[5, 1.2], [10, 0.9], [15, None], [20, 0.7]], "samplesSeen": 160,
        "calibration": {"objective": "macroF1", "calibrated": {"macroF1": 0.6}, "uncalibrated": {"macroF1": 0.5}},
        **results}
    data = {"train": {"uri": EVIL, "rows": 80}, "eval": {"uri": "s3://data/eval.jsonl", "rows": 20},
            "rejectedRows": 1, "rejected": {EVIL: 1}}
    return render_finetune(spec, {"name": EVIL, "namespace": "search-ml"}, data, document, 2)


class TestFineTuneReport:
    def test_loss_metric_curves_comparison_and_calibration_are_plotted(self) -> None:
        document = _finetune()
        _check_page(document)
        plots = _plots(document)
        assert set(plots) == {"loss", "metrics", "metric-mse", "final", "calibration"}
        assert all(_drawn(p) > 0 for p in plots.values())
        loss = plots["loss"]
        assert len(loss.findall(f"{SVG}polyline")) == 2  # training loss (3 finite points) and evaluation loss
        names = {e.text for e in loss.iter(f"{SVG}text")}
        assert {"training loss", "evaluation loss"} <= names
        assert "first evaluation (step 10)" in document and "+0.1000" in document

    def test_user_text_is_escaped(self) -> None:
        document = _finetune()
        _check_page(document)
        assert EVIL not in document and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in document

    def test_a_run_without_a_loss_curve_or_history_still_renders(self) -> None:
        document = _finetune(lossCurve=[], history=[], calibration=None)
        _check_page(document)
        assert "has no training loss curve" in document
        assert set(_plots(document)) == {"loss", "final"}


def test_the_loss_curve_keeps_one_mean_per_interval_and_survives_a_checkpoint() -> None:
    import torch

    from sampleforge.jobs.finetune.training import LossCurve, TrainingState

    state = TrainingState()
    curve = LossCurve(total_steps=10, points=4)  # a point every 3 steps
    for step in range(1, 8):
        state.step = step
        curve.add(state, torch.tensor(float(step)))
    curve.flush(state)
    assert state.loss_curve == [[3, 2.0], [6, 5.0], [7, 7.0]]
    restored = TrainingState()
    restored.load_state_dict(state.state_dict())
    assert restored.loss_curve == state.loss_curve
    old = TrainingState()
    old.load_state_dict({k: v for k, v in state.state_dict().items() if k != "loss_curve"})  # an older checkpoint
    assert old.loss_curve == []
    state.step = 8
    curve.add(state, torch.tensor(float("nan")))
    curve.flush(state)
    assert state.loss_curve[-1] == [8, None]

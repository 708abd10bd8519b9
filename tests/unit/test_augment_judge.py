"""llmJudge's pure parts: the label scale, the rubric prompt, parsing the model's answer, the keep /
drop / relabel decision, its counts and kappa, and the spec's rules for it.

The engine here is a scripted one (answers chosen by the test), because what is tested is what the
judge does with answers; the judge against a real model server runs in
tests/integration/test_augment_judge.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from sampleforge.api import AugmentationRunSpec
from sampleforge.jobs.augment.engines import EngineStats, Failed, GenerationSettings
from sampleforge.jobs.augment.errors import ConfigError
from sampleforge.jobs.augment.filters import Candidate
from sampleforge.jobs.augment.grading import (
    DISAGREES,
    EMPTY,
    MAX_SCALE,
    NO_GRADE,
    OFF_SCALE,
    Scale,
    cohens_kappa,
    decide,
    judge_rates,
    label_scale,
    parse_grade,
    render_rubric,
)
from sampleforge.jobs.augment.judge import DEFAULT_RUBRIC, LlmJudge
from sampleforge.jobs.augment.labels import Labels
from sampleforge.jobs.augment.output import output_schema
from sampleforge.jobs.augment.pipeline import _with_judges
from sampleforge.jobs.augment.randomness import RowRandomness
from sampleforge.jobs.augment.rows import ColumnRoles

GRADES = Scale(("0", "1", "2"), numeric=True)
ESCI = Scale(("Complement", "Exact", "Irrelevant", "Substitute"), numeric=False)
ROLES = ColumnRoles(query="q", item="title", label="grade", attributes=("brand",))


# --- the scale ------------------------------------------------------------------------------------


def test_the_scale_is_the_source_labels_lowest_first_plus_assigned_ones() -> None:
    assert label_scale(Labels("int", {"2": 1, "10": 4, "0": 9})) == Scale(("0", "2", "10"), True)
    assert label_scale(Labels("int", {"1": 3}), assigned=[0]).labels == ("0", "1")
    assert label_scale(Labels("float", {"1.0": 3, "0.5": 1})).labels == ("0.5", "1.0")
    assert label_scale(Labels("string", {"Exact": 1, "irrelevant": 2, "Substitute": 1})) == \
        Scale(("Exact", "irrelevant", "Substitute"), False)
    # CSV sources read numbers as strings: still a numeric scale, in numeric order.
    assert label_scale(Labels("string", {"2": 1, "10": 1, "1": 1})) == Scale(("1", "2", "10"), True)


def test_a_score_is_not_a_scale_and_an_unusable_assigned_label_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=f"at most {MAX_SCALE} labels"):
        label_scale(Labels("float", {str(i / 100): 1 for i in range(MAX_SCALE + 1)}), field_path="spec.augmenters[1]")
    with pytest.raises(ConfigError, match="labels are numbers"):
        label_scale(Labels("int", {"1": 1}), assigned=["Irrelevant"])
    with pytest.raises(ConfigError, match="no labelled rows"):
        label_scale(Labels("int", {}))


def test_the_scale_reads_as_the_prompt_describes_it() -> None:
    assert GRADES.describe() == "Grade on this scale: 0, 1 or 2, from 0 (not relevant) to 2 (fully relevant)."
    assert ESCI.describe() == "Grade with one of these labels: Complement, Exact, Irrelevant, Substitute."


def test_the_rubric_is_filled_in_literally() -> None:
    text = render_rubric(DEFAULT_RUBRIC, "nike shoes", "Air Max 90 (brand: Nike)", GRADES)
    assert "Query: nike shoes\nProduct: Air Max 90 (brand: Nike)" in text and "0, 1 or 2" in text
    assert "{" not in text
    # Braces elsewhere stay; a query that holds a placeholder stays text.
    custom = render_rubric('{"q": "{query}", "i": "{item}"} {labels}', "{item}", "x", ESCI)
    assert custom == '{"q": "{item}", "i": "x"} ' + ESCI.describe()


# --- parsing the answer ---------------------------------------------------------------------------


@pytest.mark.parametrize(("answer", "expected"), [
    ("2", ("2", None)),
    ("Grade: 1", ("1", None)),
    ("1.", ("1", None)),
    ("**0**", ("0", None)),
    ("2.0 (fully relevant)", ("2", None)),
    ("On a scale of 0 to 2, I would give it 1.", ("1", None)),
    ("1/2", ("1", None)),
    ("1 out of 2", ("1", None)),
    ("The grade is 0-2: 2", ("2", None)),
    ("１", ("1", None)),  # full-width digit
    ("3", (None, OFF_SCALE)),
    ("1.5", (None, OFF_SCALE)),
    ("relevant", (None, NO_GRADE)),
    ("  \n", (None, EMPTY)),
    ("", (None, EMPTY)),
])
def test_numeric_answers(answer: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_grade(answer, GRADES) == expected


@pytest.mark.parametrize(("answer", "expected"), [
    ("Exact", ("Exact", None)),
    ("exact.", ("Exact", None)),
    ("It is IRRELEVANT to the query", ("Irrelevant", None)),
    ("Substitute or maybe Exact", ("Substitute", None)),  # the first the answer names
    ("relevant", (None, NO_GRADE)),  # not a word of the scale ("irrelevant" is another word)
    ("exactly", (None, NO_GRADE)),
])
def test_label_answers(answer: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_grade(answer, ESCI) == expected


def test_a_longer_label_wins_over_one_it_contains_and_float_labels_match_numbers() -> None:
    matching = Scale(("match", "no match"), False)
    assert parse_grade("No match.", matching) == ("no match", None)
    assert parse_grade("match", matching) == ("match", None)
    assert parse_grade("1", Scale(("0.0", "1.0"), True)) == ("1.0", None)


# --- the decision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("grade", "failure", "mode", "on_failure", "action", "reason"), [
    ("1", None, "filter", "keep", "keep", None),
    ("1", None, "relabel", "keep", "keep", None),
    ("0", None, "filter", "keep", "drop", DISAGREES),
    ("0", None, "relabel", "keep", "relabel", None),
    (None, OFF_SCALE, "relabel", "keep", "keep", None),  # never relabelled without a grade
    (None, OFF_SCALE, "filter", "keep", "keep", None),
    (None, NO_GRADE, "relabel", "drop", "drop", f"no grade: {NO_GRADE}"),
    (None, "request failed: timeout", "filter", "drop", "drop", "no grade: request failed: timeout"),
])
def test_keep_drop_or_relabel(grade: str | None, failure: str | None, mode: str, on_failure: str, action: str,
                              reason: str | None) -> None:
    verdict = decide("1", grade, failure, mode, on_failure)
    assert (verdict.action, verdict.reason) == (action, reason)
    assert verdict.agrees == (None if grade is None else grade == "1")
    assert verdict.failure == failure


def test_cohens_kappa_and_rates() -> None:
    # The textbook example: 50 items, raters agree on 20 yes and 15 no: po = 0.7, pe = 0.5, kappa = 0.4.
    confusion = {"yes": {"yes": 20, "no": 5}, "no": {"yes": 10, "no": 15}}
    assert cohens_kappa(confusion) == pytest.approx(0.4)
    assert cohens_kappa({}) is None
    assert cohens_kappa({"1": {"1": 7}}) is None  # one label only: chance agreement is 1
    assert cohens_kappa({"1": {"0": 3}, "0": {"1": 3}}) == pytest.approx(-1.0)
    rates = judge_rates({"asked": 52, "judged": 50, "agreed": 35, "disagreed": 15, "dropped": 15, "relabelled": 0,
                         "failed": {NO_GRADE: 2}, "confusion": confusion})
    assert rates["agreementRate"] == 0.7 and rates["cohensKappa"] == 0.4
    assert rates["confusion"] == {"no": {"no": 15, "yes": 10}, "yes": {"no": 5, "yes": 20}}
    assert judge_rates({"asked": 1, "judged": 0, "agreed": 0, "failed": {EMPTY: 1}})["agreementRate"] is None


# --- the judge on candidate rows ------------------------------------------------------------------


class ScriptedEngine:
    """Answers each request from ``script`` (keyed by the pair's query) and records what it was asked."""

    kind = "chat"

    def __init__(self, script: dict[str, str | Failed]) -> None:
        self.script = script
        self.stats = EngineStats("openai", "judge-model")
        self.asked: list[tuple[Any, int]] = []

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> tuple[tuple[str, str], ...]:
        turns = [turn for user, answer in shots for turn in (("user", user), ("assistant", answer))]
        return (*turns, ("user", prompt))

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: Any) -> list[str | Failed]:
        self.asked += list(zip(inputs, seeds, strict=True))
        out: list[str | Failed] = []
        for messages in inputs:
            prompt = messages[-1][1]
            query = prompt.split("Query: ", 1)[1].split("\n", 1)[0] if "Query: " in prompt else "q"
            out.append(self.script[query])
        return out


def _candidate(query: str, grade: int, augmenter: str = "doc2query", source_row: int = 0,
               variant: int = 0) -> Candidate:
    source = {"q": "src", "title": "Air Max 90", "grade": grade, "brand": "Nike"}
    row = {**source, "q": query, "sf_origin": "generated", "sf_augmenter": augmenter, "sf_source_row": source_row,
           "sf_label_rule": "keep"}
    return Candidate(row, source, augmenter, "keep", source_row, variant, ("query",))


def _judge(engine: ScriptedEngine, mode: str = "filter", on_failure: str = "keep", fraction: float = 1.0,
           judged: frozenset[str] = frozenset({"doc2query"}), seed: int = 7, rubric: str = DEFAULT_RUBRIC,
           scale: Scale = GRADES) -> LlmJudge:
    return LlmJudge("llmJudge", engine, GenerationSettings(4, 8, 0.0), scale, Labels("int", {"0": 1, "1": 1, "2": 1}),
                    ROLES, RowRandomness(seed, "llmJudge"), mode=mode, on_failure=on_failure, judged=judged,
                    fraction=fraction, rubric=rubric)


def test_the_judge_grades_only_rows_of_the_augmenters_it_judges() -> None:
    engine = ScriptedEngine({"agree": "Grade: 2", "disagree": "0", "junk": "I cannot tell",
                             "down": Failed("timeout")})
    judge = _judge(engine)
    candidates = [_candidate("agree", 2), _candidate("disagree", 2, source_row=1), _candidate("junk", 1, source_row=2),
                  _candidate("down", 0, source_row=3), _candidate("agree", 2, augmenter="typo", source_row=4)]
    verdicts = judge.review(candidates)
    assert [v.action if v else None for v in verdicts] == ["keep", "drop", "keep", "keep", None]
    assert [v.grade if v else None for v in verdicts] == ["2", "0", None, None, None]
    assert len(engine.asked) == 4
    prompt = engine.asked[0][0][-1][1]
    assert "Query: agree\nProduct: Air Max 90 (brand: Nike)" in prompt and "0, 1 or 2" in prompt
    counts = judge.counts()
    assert counts == {"asked": 4, "judged": 2, "agreed": 1, "disagreed": 1, "dropped": 1, "relabelled": 0,
                      "failed": {NO_GRADE: 1, "request failed: timeout": 1},
                      "confusion": {"2": {"0": 1, "2": 1}}}
    assert judge.grade_value("2") == 2


def test_a_chat_model_sees_one_example_of_each_end_of_a_numeric_scale_with_the_built_in_rubric() -> None:
    engine = ScriptedEngine({"q": "2"})
    _judge(engine).review([_candidate("q", 2)])
    turns = engine.asked[0][0]
    assert [role for role, _ in turns] == ["user", "assistant", "user", "assistant", "user"]
    assert [turns[1][1], turns[3][1]] == ["0", "2"]  # the irrelevant example first, then the relevant one
    assert "Frying Pan" in turns[0][1] and "Query: q\n" in turns[4][1]
    for judge in (_judge(engine, rubric="Pair: {query} / {item}. {labels}"), _judge(engine, scale=ESCI)):
        engine.asked.clear()
        judge.review([_candidate("q", 2)])
        assert len(engine.asked[0][0]) == 1  # a spec's rubric, or a scale of names: no examples


def test_relabel_mode_relabels_disagreements_and_never_a_row_without_a_grade() -> None:
    judge = _judge(ScriptedEngine({"a": "1", "b": "2", "c": "eleven"}), mode="relabel")
    verdicts = judge.review([_candidate("a", 2), _candidate("b", 2, source_row=1), _candidate("c", 0, source_row=2)])
    assert [(v.action, v.grade, v.agrees) for v in verdicts if v] == [("relabel", "1", False), ("keep", "2", True),
                                                                       ("keep", None, None)]
    assert judge.counts()["relabelled"] == 1 and judge.counts()["dropped"] == 0


def test_on_failure_drop_drops_rows_without_a_grade() -> None:
    judge = _judge(ScriptedEngine({"a": "", "b": Failed("HTTP 500")}), on_failure="drop")
    verdicts = judge.review([_candidate("a", 2), _candidate("b", 2, source_row=1)])
    assert [(v.action, v.reason) for v in verdicts if v] == [("drop", f"no grade: {EMPTY}"),
                                                              ("drop", "no grade: request failed: HTTP 500")]


def test_seeds_are_keyed_by_row_so_the_same_seed_asks_the_same_questions() -> None:
    def asked(seed: int, order: list[int]) -> dict[tuple[int, int], int]:
        engine = ScriptedEngine({"q": "1"})
        rows = [_candidate("q", 1, source_row=r, variant=v) for r, v in [(3, 0), (3, 1), (8, 0)]]
        _judge(engine, seed=seed).review([rows[i] for i in order])
        return {(rows[i].source_row, rows[i].variant): s for i, (_, s) in zip(order, engine.asked, strict=True)}

    first = asked(7, [0, 1, 2])
    assert first == asked(7, [2, 0, 1])  # batch order does not matter
    assert len(set(first.values())) == 3  # each (row, variant) its own seed
    assert asked(8, [0, 1, 2]) != first


def test_fraction_selects_source_rows_deterministically() -> None:
    engine = ScriptedEngine({"q": "1"})
    judge = _judge(engine, fraction=0.5)
    candidates = [_candidate("q", 1, source_row=r) for r in range(200)]
    graded = judge.graded(candidates)
    assert 60 < len(graded) < 140 and graded == _judge(ScriptedEngine({}), fraction=0.5).graded(candidates)
    verdicts = judge.review(candidates)
    assert [k for k, v in enumerate(verdicts) if v is not None] == graded


def test_the_judge_runs_after_the_quality_filters_and_before_dedup() -> None:
    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

    chain = [Named(n) for n in ("length", "evalSplit", "similarity", "dedup", "nearDedup")]
    judges = [_judge(ScriptedEngine({}))]
    assert [f.name for f in _with_judges(chain, judges)] == ["length", "evalSplit", "similarity", "llmJudge", "dedup",
                                                               "nearDedup"]  # type: ignore[arg-type]
    assert [f.name for f in _with_judges(chain[:2], judges)] == ["length", "evalSplit", "llmJudge"]  # type: ignore[arg-type]


def test_a_run_with_a_judge_writes_its_provenance_columns_in_the_label_type() -> None:
    plain = output_schema(ROLES, "int")
    judged = output_schema(ROLES, "int", judged=True)
    assert judged.names == [*plain.names, "sf_judge_label", "sf_judge_agrees"]
    assert str(judged.field("sf_judge_label").type) == "int64" and str(judged.field("sf_judge_agrees").type) == "bool"
    assert str(output_schema(ROLES, "string", judged=True).field("sf_judge_label").type) == "string"


# --- the spec -------------------------------------------------------------------------------------

BASE: dict[str, Any] = {"storage": {"endpoint": "minio.data:9000", "credentialsSecret": "minio"},
                        "source": {"uri": "s3://datasets/train.parquet"}, "output": {"uri": "s3://datasets/out/"}}
DOC2QUERY = {"type": "doc2query", "model": "smollm2", "engine": "openai", "openai": {"endpoint": "http://llm:8000/v1"}}


def test_the_spec_takes_a_judge_with_the_engine_block_and_defaults() -> None:
    judge = {"type": "llmJudge", "model": "smollm2", "engine": "openai", "mode": "relabel", "judged": ["doc2query"],
             "openai": {"endpoint": "http://llm:8000/v1", "apiKeySecret": {"name": "llm", "key": "apiKey"},
                        "maxRequests": 100}}
    spec = AugmentationRunSpec.model_validate({**BASE, "augmenters": [DOC2QUERY, judge]})
    entry = spec.augmenters[1]
    assert entry.type == "llmJudge" and entry.mode == "relabel" and entry.on_failure == "keep"  # type: ignore[union-attr]
    assert (entry.temperature, entry.max_new_tokens, entry.rubric) == (0.0, 8, None)  # type: ignore[union-attr]
    assert spec.augmenters[1].to_kube()["judged"] == ["doc2query"]


@pytest.mark.parametrize(("augmenters", "message"), [
    ([{"type": "llmJudge", "model": "m"}], "this run has none"),
    ([DOC2QUERY, {"type": "llmJudge", "model": "m", "judged": ["paraphrase"]}], "judged may only name"),
    ([DOC2QUERY, {"type": "llmJudge", "name": "j2", "model": "m"}, {"type": "llmJudge", "model": "m", "judged": ["j2"]}],
     "judged may only name"),
    ([DOC2QUERY, {"type": "llmJudge", "model": "m", "maxRows": 5}], "maxRows does not apply to llmJudge"),
    ([DOC2QUERY, {"type": "llmJudge", "model": "m", "rubric": "Grade {query}"}], "placeholders {query} and {item}"),
    ([DOC2QUERY, {"type": "llmJudge", "model": "m", "engine": "openai"}], "openai is required"),
    ([DOC2QUERY, {"type": "llmJudge", "model": "m", "mode": "vote"}], "mode"),
    ([{**DOC2QUERY, "mode": "filter"}], "mode applies only when type is llmJudge"),
])
def test_the_spec_rejects_what_cannot_work(augmenters: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AugmentationRunSpec.model_validate({**BASE, "augmenters": augmenters})

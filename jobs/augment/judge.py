"""``llmJudge``: a language model grades generated (query, item) pairs on the run's label scale.

LLM-labelled samples: the judge asks a model, with a rubric prompt, which label of the run's scale a
generated pair deserves, then keeps the row (the grade agrees with its label), drops it (``mode:
filter``) or gives it the grade as its label (``mode: relabel``, label rule ``judge``). It adds no rows
of its own: it is an augmenter entry (so it has the generation augmenters' engine block, API key
Secret, budget, seed and generation cache) that the pipeline runs as a step of the filter chain.

Decisions, and why:

* **Where it runs.** After the cheap quality filters (length, charset, leakage guard, similarity,
  label consistency) and before dedup: a row those filters drop costs no request, and dedup must see
  the judge's drops before it remembers a row. It grades the rows of the augmenters named in
  ``judged`` (every augmenter that is not a judge when empty); source rows are never graded.
* **Grading** (:mod:`.grading`): the scale is the source's labels plus those the spec's augmenters
  assign; an answer's grade is the first label of the scale it names, and an answer without one is a
  failure with a reason, counted, and never a relabelling.
* **Determinism.** Each request's seed is the source row's key mixed with the generating augmenter's
  name and the row's variant (:func:`~.generation.request_seed`), so the same seed asks the same
  questions whatever the shard or batch; ``temperature: 0`` (the default) decodes greedily.
* **Provenance.** Every output row of a run with a judge carries ``sf_judge_label`` (the grade, in the
  label's type; null when not graded or no grade came back) and ``sf_judge_agrees`` (whether it equals
  the label the row had when it was graded); with several judges, the last one that graded the row.
  The manifest's ``augmenters.<name>.judge`` holds the counts (asked, judged, agreed, dropped,
  relabelled, failures per reason), the agreement rate, Cohen's kappa of the grades against the
  labels, and the confusion matrix (label -> grade -> rows), summed over shards.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sampleforge.api.augmenters import LlmJudgeAugmenter

from .engines import EngineStats, Failed, GenerationSettings
from .filters import Candidate
from .gencache import CachedGenerator
from .generation import _generator, request_seed
from .grading import NO_GRADE, Scale, Verdict, decide, label_scale, pair_item_text, parse_grade, render_rubric
from .labels import Labels
from .protocol import BatchPlan, GeneratedRow
from .randomness import RowRandomness
from .registry import BuildContext, register_row_augmenter
from .rows import ColumnRoles, RowBatch

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_RUBRIC", "JUDGE_COLUMNS", "JUDGE_LABEL_RULE", "JudgeEngine", "LlmJudge"]

#: The label rule of a row the judge relabelled.
JUDGE_LABEL_RULE = "judge"
#: Provenance columns a run with a judge adds to every output row.
JUDGE_COLUMNS: Mapping[str, str] = {
    "sf_judge_label": "the label an llmJudge graded the row with, in the label's type; null for rows no judge "
    "graded (source rows, rows of augmenters it does not judge or did not select) and rows it gave no grade",
    "sf_judge_agrees": "whether that grade equals the label the row had when it was graded (false and label rule "
    "judge: the row was relabelled); null when there is no grade",
}

DEFAULT_RUBRIC = (
    "You grade search results for an online shop. How relevant is the product to the shopper's search "
    "query?\n\nQuery: {query}\nProduct: {item}\n\n{labels}\nReply with only the grade."
)
#: Worked examples a chat model sees before the pair, with the built-in rubric on a numeric scale:
#: (query, item, which end of the scale). One of each end, the irrelevant one first: a small instruct
#: model then answers with a grade instead of a sentence, and not always with the last one it saw.
DEFAULT_EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("running shoes men", "Stainless Steel Frying Pan, 10 inch (brand: Tramontina)", "lowest"),
    ("running shoes men", "Nike Men's Revolution 6 Running Shoe, Black/White (brand: Nike)", "highest"),
)


# --- the augmenter ------------------------------------------------------------------------------------


class JudgeEngine(Protocol):
    """What the judge needs of an engine: any of :data:`~.generation.Generator` (transformers, vllm,
    openai, behind the generation cache or not)."""

    @property
    def kind(self) -> str: ...

    @property
    def stats(self) -> EngineStats: ...

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> Any: ...

    def generate(self, inputs: Sequence[Any], seeds: Sequence[int], settings: Any) -> Sequence[Any]: ...


class LlmJudge:
    """Grades candidate rows (:meth:`review`); adds no rows of its own (:meth:`augment`)."""

    label_rule = JUDGE_LABEL_RULE

    def __init__(self, name: str, generator: JudgeEngine, settings: GenerationSettings, scale: Scale, labels: Labels,
                 roles: ColumnRoles, random: RowRandomness, *, mode: str, on_failure: str, judged: frozenset[str],
                 fraction: float, rubric: str) -> None:
        self.name = name
        self.generator = generator
        self.settings = settings
        self.scale = scale
        self.labels = labels
        self.roles = roles
        self.random = random
        self.mode = mode
        self.on_failure = on_failure
        self.judged = judged
        self.fraction = fraction
        self.rubric = rubric
        self.asked = 0
        self.agreed = 0
        self.dropped = 0
        self.relabelled = 0
        self.failed: Counter[str] = Counter()
        self.confusion: dict[str, Counter[str]] = {}

    def augment(self, batch: RowBatch, plan: BatchPlan) -> list[GeneratedRow]:
        return []

    def graded(self, candidates: Sequence[Candidate]) -> list[int]:
        """Positions of the rows this judge grades: its augmenter is judged and its source row is selected
        (``fraction``, drawn as the pipeline draws every augmenter's rows)."""
        judged = [k for k, c in enumerate(candidates) if c.augmenter in self.judged]
        if self.fraction >= 1.0 or not judged:
            return judged
        draws = self.random.uniform([candidates[k].source_row for k in judged], "select")
        return [k for k, draw in zip(judged, draws.tolist(), strict=True) if draw < self.fraction]

    def model_input(self, candidate: Candidate) -> Any:
        row = candidate.row
        return self.pair_input(str(row.get(self.roles.query) or ""), pair_item_text(row, self.roles))

    def pair_input(self, query: str, item: str) -> Any:
        """What the engine is asked about one pair: the rubric filled in, as the engine's kind wants it."""
        prompt = render_rubric(self.rubric, query, item, self.scale)
        if self.generator.kind == "plain":
            return prompt + "\nGrade:"
        if self.generator.kind == "seq2seq":
            return prompt
        return self.generator.format(prompt, self.shots)

    @property
    def shots(self) -> tuple[tuple[str, str], ...]:
        """Example turns (rubric filled in, grade) shown to a chat model: with the built-in rubric on a
        numeric scale only (a spec's rubric says everything the user wants the model to see, and the
        ends of a scale of names mean nothing the job knows)."""
        if self.rubric != DEFAULT_RUBRIC or not self.scale.numeric or len(self.scale.labels) < 2:
            return ()
        ends = {"lowest": self.scale.labels[0], "highest": self.scale.labels[-1]}
        return tuple((render_rubric(self.rubric, query, item, self.scale), ends[end])
                     for query, item, end in DEFAULT_EXAMPLES)

    def seed(self, candidate: Candidate) -> int:
        return request_seed(self.random.row_key(candidate.source_row), "judge", candidate.augmenter, candidate.variant)

    def review(self, candidates: Sequence[Candidate]) -> list[Verdict | None]:
        """A verdict per candidate (None: not graded by this judge)."""
        started = time.monotonic()
        picked = self.graded(candidates)
        out: list[Verdict | None] = [None] * len(candidates)
        if not picked:
            return out
        inputs = [self.model_input(candidates[k]) for k in picked]
        seeds = [self.seed(candidates[k]) for k in picked]
        answers = self.generator.generate(inputs, seeds, self.settings)
        for k, answer in zip(picked, answers, strict=True):
            label = self.labels.key(candidates[k].row[self.roles.label])
            grade: str | None
            failure: str | None
            if isinstance(answer, Failed):
                grade, failure = None, f"request failed: {answer.reason}"
            else:
                grade, failure = parse_grade(str(answer), self.scale)
            verdict = decide(label, grade, failure, self.mode, self.on_failure)
            self._count(verdict)
            out[k] = verdict
        seconds = time.monotonic() - started
        log.info("judged", extra={"augmenter": self.name, "rows": len(picked), "seconds": round(seconds, 3),
                                  "agreed": self.agreed, "failed": dict(self.failed),
                                  "rows_per_second": round(len(picked) / seconds, 2) if seconds > 0 else None})
        return out

    def _count(self, verdict: Verdict) -> None:
        self.asked += 1
        if verdict.grade is None:
            self.failed[verdict.failure or NO_GRADE] += 1
        else:
            self.confusion.setdefault(verdict.label, Counter())[verdict.grade] += 1
            self.agreed += bool(verdict.agrees)
        self.dropped += verdict.action == "drop"
        self.relabelled += verdict.action == "relabel"

    def grade_value(self, grade: str) -> Any:
        """A grade in the source's label type."""
        return self.labels.coerce(grade, self.name)

    def counts(self) -> dict[str, Any]:
        """This pod's counts (summed over shards into the manifest)."""
        failures = sum(self.failed.values())
        return {"asked": self.asked, "judged": self.asked - failures, "agreed": self.agreed,
                "disagreed": self.asked - failures - self.agreed, "dropped": self.dropped,
                "relabelled": self.relabelled, "failed": dict(sorted(self.failed.items())),
                "confusion": {label: dict(sorted(row.items())) for label, row in sorted(self.confusion.items())}}

    def summary(self) -> dict[str, Any]:
        """The engine's figures (load time, rate, requests, failures, cache), like the generation types'."""
        out = self.generator.stats.summary()
        if isinstance(self.generator, CachedGenerator):
            out["cache"] = self.generator.summary()
        out["mode"] = self.mode
        out["scale"] = list(self.scale.labels)
        return out


def _assigned_labels(build: BuildContext) -> list[Any]:
    return [getattr(entry, "label", None) for entry in build.spec.augmenters
            if getattr(entry, "label", None) is not None]


@register_row_augmenter(LlmJudgeAugmenter)
def _build_llm_judge(entry: LlmJudgeAugmenter, build: BuildContext) -> LlmJudge:
    scale = label_scale(build.labels, _assigned_labels(build), build.field_path)
    judged = frozenset(entry.judged) if entry.judged else frozenset(
        a.display_name() for a in build.spec.augmenters if a.type != "llmJudge")
    generator = _generator(entry, build, entry.model, "model")
    settings = GenerationSettings(batch_size=int(entry.batch_size), max_new_tokens=int(entry.max_new_tokens),
                                  temperature=float(entry.temperature))
    name = entry.display_name()
    log.info("judge ready", extra={"augmenter": name, "mode": entry.mode, "scale": list(scale.labels),
                                   "judged": sorted(judged)})
    return LlmJudge(name, generator, settings, scale, build.labels, build.roles,
                    RowRandomness(build.spec.seed, name), mode=entry.mode, on_failure=entry.on_failure,
                    judged=judged, fraction=float(entry.fraction), rubric=entry.rubric or DEFAULT_RUBRIC)

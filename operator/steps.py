"""The steps of a sharded AugmentationRun: which Jobs a run has, which one it is at, which comes next.

A run with ``spec.parallelism`` > 1 runs as three Jobs, one after the other (:class:`Step`): the
analysis (one pod, a first pass over the whole source), the shards (the Indexed Job, one pod per
shard) and the reduce (one pod, cross-shard dedup and the manifest). Any other run has no steps:
its one Job does everything. Pure functions of what they are given, so every branch is tested
without a server; :mod:`.reconcile` and :mod:`.monitor` decide when to ask.

A run never goes back a step: the step to make sure of is the latest one that any evidence names
(a Job of the run the watch has delivered, or ``status.stage``), never the first not yet seen, so
an earlier step's Job deleted by its ``ttlSecondsAfterFinished`` is not made again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sampleforge.api.constants import LABEL_STEP, STEPS, Kind, Step

__all__ = ["describe", "next_step", "resume_step", "run_steps", "step_of", "step_position"]


def run_steps(kind: Kind | str, parallelism: int) -> tuple[Step, ...]:
    """The run's steps in order; empty for a run whose one Job does all the work."""
    return STEPS if Kind(kind) is Kind.AUGMENTATION_RUN and parallelism > 1 else ()


def _as_step(value: object) -> Step | None:
    try:
        return Step(str(value)) if value else None
    except ValueError:
        return None  # a label or status someone edited by hand says nothing


def step_of(job: Mapping[str, Any] | None) -> Step | None:
    """The step a Job of the operator's runs (its ``LABEL_STEP`` label); None for a one-Job run's."""
    labels = ((job or {}).get("metadata") or {}).get("labels") or {}
    return _as_step(labels.get(LABEL_STEP))


def step_position(step: Step) -> int:
    """1 for the first step: what "step 1 of 3" says."""
    return STEPS.index(step) + 1


def next_step(kind: Kind | str, parallelism: int, current: Step | None, job_succeeded: bool) -> Step | None:
    """The step whose Job is made once ``current``'s Job has succeeded; None while it has not, after
    the last step (the run is then done once its committed output is read) and for one-Job runs."""
    steps = run_steps(kind, parallelism)
    if not job_succeeded or current is None or current not in steps:
        return None
    later = steps[steps.index(current) + 1:]
    return later[0] if later else None


def resume_step(kind: Kind | str, parallelism: int, seen: Iterable[object], recorded: object) -> Step | None:
    """The step whose Job reconcile makes sure of: the latest of the steps of the Jobs the watch
    holds for the run (``seen``) and the one its status records (``recorded``: ``status.stage``),
    the first step when neither names one; None for a one-Job run."""
    steps = run_steps(kind, parallelism)
    if not steps:
        return None
    known = [s for s in (_as_step(v) for v in (*seen, recorded)) if s is not None]
    return max(known, key=steps.index, default=steps[0])


def describe(step: Step, parallelism: int, job: str) -> str:
    """What the run is doing in ``step``, for its conditions: "step 2 of 3: 4 shards (Job x-aug)"."""
    doing = {
        Step.ANALYSIS: "analysing the source",
        Step.SHARDS: f"{parallelism} shards",
        Step.REDUCE: "removing cross-shard duplicates and committing",
    }[step]
    return f"step {step_position(step)} of {len(STEPS)}: {doing} (Job {job})"

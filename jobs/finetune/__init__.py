"""The fine-tune job (``python -m sampleforge.jobs.finetune``): what a FineTuneRun's pods execute.

Read it in this order: :mod:`.entrypoint` (environment in, exit code out) → :mod:`.recipe`
(setup / train / save_checkpoint / publish / cleanup, top to bottom) → the components it picks by
name from the spec: :mod:`.data` (reading datasets), :mod:`.labels` (what a label means per task),
:mod:`.batches` (tokenising, bucketing, padding), :mod:`.modeling` (models per task and method),
:mod:`.model_source` (hub id or s3:// directory), :mod:`.evaluate` and :mod:`.metrics`,
:mod:`.checkpoint` (commit, keep, resume), :mod:`.publish` (model, metrics, model card) and
:mod:`.progress` (heartbeats, progress bar).
"""

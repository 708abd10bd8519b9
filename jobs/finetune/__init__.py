"""The fine-tune job (``python -m sampleforge.jobs.finetune``): what a FineTuneRun's pods execute.

Read it in this order: :mod:`.entrypoint` (environment in, exit code out; :mod:`.errors` lists the
codes) → :mod:`.launch` (one process per GPU through torchrun, when there is more than one) →
:mod:`.recipe` (setup / train / save_checkpoint / publish / cleanup, top to bottom) → the
components it picks by name from the spec: :mod:`.inputs` (which data and model), :mod:`.data`
(reading datasets), :mod:`.labels` (what a label means per task), :mod:`.batches` (tokenising,
bucketing, padding), :mod:`.model_source` (hub id or s3:// directory), :mod:`.modeling` (models
per task and method), :mod:`.training` (optimizer, schedule, early stopping, SIGTERM flag),
:mod:`.evaluate` and :mod:`.metrics`, :mod:`.checkpoint` (commit, keep, resume), :mod:`.publish`
(model, metrics, model card), :mod:`.progress` (heartbeats, progress bar). :mod:`.published`
loads a published model back.
"""

"""The sampleforge operator (``sampleforge.operator``): kopf handlers that turn AugmentationRun and
FineTuneRun resources into batch/v1 Jobs and report their progress.

Imported as ``sampleforge.operator`` only: a top-level ``operator`` would shadow the standard library.
"""

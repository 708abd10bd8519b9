"""Sample augmentation for the AugmentationRun job.

Sub-packages hold one family of augmenters each; :mod:`sampleforge.jobs.augment.text` is the
pure-Python text-edit family (EDA edits and shopper noise) that needs no model and no GPU.
"""

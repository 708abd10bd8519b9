"""Text-edit augmenters for query and item text: EDA word edits and shopper noise, English and Chinese.

Pure Python (plus numpy for random streams and jieba for Chinese words), deterministic per
``(seed, row index)`` and fast enough to run on the CPU cores of a job pod beside the GPU work.
Typical use in the job::

    aug = create_augmenter("synonym", {"alpha": 0.2}, lexicon=parse_lexicon(tsv_text, source=uri))
    result = aug.augment(queries, seed=spec_seed, n_per_text=2, first_row=shard_offset)
    result.variants    # list[list[str]], one list per input row
    result.missing     # variants that could not be made (reported, never padded with copies)
"""

from sampleforge.jobs.augment.text.base import (
    AugmentResult,
    BlindEditParams,
    EditParams,
    TextAugmenter,
)
from sampleforge.jobs.augment.text.interface import TextAugmenterProtocol
from sampleforge.jobs.augment.text.keyboard import keyboard_neighbours
from sampleforge.jobs.augment.text.lexicon import (
    Lexicon,
    LexiconError,
    builtin_lexicon,
    default_lexicon,
    parse_lexicon,
)
from sampleforge.jobs.augment.text.noise import (
    CHAR_NOISE_ACTIONS,
    CharNoise,
    CharNoiseParams,
    KeyboardTypo,
    TypoParams,
)
from sampleforge.jobs.augment.text.registry import AUGMENTER_TYPES, PARAMS_TYPES, create_augmenter, option_names
from sampleforge.jobs.augment.text.tokens import Doc, contains_han, render, tokenize
from sampleforge.jobs.augment.text.word import (
    RandomDeletion,
    RandomInsertion,
    RandomSwap,
    SynonymParams,
    SynonymReplacement,
    WordEditParams,
)

__all__ = [
    "AUGMENTER_TYPES",
    "CHAR_NOISE_ACTIONS",
    "PARAMS_TYPES",
    "AugmentResult",
    "BlindEditParams",
    "CharNoise",
    "CharNoiseParams",
    "Doc",
    "EditParams",
    "KeyboardTypo",
    "Lexicon",
    "LexiconError",
    "RandomDeletion",
    "RandomInsertion",
    "RandomSwap",
    "SynonymParams",
    "SynonymReplacement",
    "TextAugmenter",
    "TextAugmenterProtocol",
    "TypoParams",
    "WordEditParams",
    "builtin_lexicon",
    "contains_han",
    "create_augmenter",
    "default_lexicon",
    "keyboard_neighbours",
    "option_names",
    "parse_lexicon",
    "render",
    "tokenize",
]

"""The nlpaug baseline of the quality benchmark: EDA-style edits (random word swap and deletion, plus
keyboard typos for English) applied to rows drawn uniformly from the training slice, labels kept,
exactly ``budget`` new rows.

nlpaug's WordNet synonym replacement (the S of EDA) needs NLTK data that cannot be fetched offline,
so the two EDA operations that need no resource are used, with EDA's edit rate alpha = 0.1 (at least
one word). The language is the dataset's declared language (quality_data.DataSplits.language), never
guessed from its name. Chinese (``zh``) text is segmented with jieba (nlpaug splits on whitespace by default, which would
treat a whole Chinese query as one word) and joined back without spaces.
"""

from __future__ import annotations

import logging
import random
import warnings
from typing import Any

ALPHA = 0.1


def _augmenters(language: str, seed: int) -> list[tuple[str, Any]]:
    import nlpaug.augmenter.char as nac
    import nlpaug.augmenter.word as naw
    import numpy as np

    random.seed(seed)  # nlpaug draws from the global generators
    chinese = language.split("-")[0] == "zh"
    np.random.seed(seed)
    if chinese:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import jieba
        jieba.setLogLevel(logging.WARNING)

        def tokenize(text: str) -> list[str]:
            return [t for t in jieba.lcut(text) if t.strip()]

        def join(tokens: list[str]) -> str:
            return "".join(tokens)

        kwargs: dict[str, Any] = {"tokenizer": tokenize, "reverse_tokenizer": join}
    else:
        kwargs = {}
    found: list[tuple[str, Any]] = [
        ("swap", naw.RandomWordAug(action="swap", aug_p=ALPHA, aug_min=1, **kwargs)),
        ("delete", naw.RandomWordAug(action="delete", aug_p=ALPHA, aug_min=1, **kwargs)),
    ]
    if language.split("-")[0] == "en":  # an English keyboard's neighbours
        found.append(("keyboard", nac.KeyboardAug(aug_word_p=ALPHA, aug_char_p=ALPHA, aug_word_min=1,
                                                  include_special_char=False, include_upper_case=False)))
    return found


def _apply(augmenter: Any, text: str) -> str:
    if not text:
        return text
    out = augmenter.augment(text)
    out = out[0] if isinstance(out, list) else out
    return out if isinstance(out, str) and out.strip() else text


def nlpaug_rows(rows: list[dict[str, Any]], budget: int, *, seed: int, language: str) -> list[dict[str, Any]]:
    """``budget`` new rows: a uniformly drawn source row, one EDA operation on its query and item
    (title) text; attributes and label copied."""
    augmenters = _augmenters(language, seed)
    rng = random.Random(seed)
    out = []
    for _ in range(budget):
        source = rows[rng.randrange(len(rows))]
        _, augmenter = augmenters[rng.randrange(len(augmenters))]
        new = dict(source)
        new["query"] = _apply(augmenter, source["query"])
        new["title"] = _apply(augmenter, source["title"])
        out.append(new)
    return out

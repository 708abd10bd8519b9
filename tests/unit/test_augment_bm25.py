"""The BM25 index: its tokens, that it ranks like the textbook formula, and reproducible ties."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from sampleforge.jobs.augment.bm25 import BM25Index, bm25_tokens


def test_tokens_for_english_chinese_and_mixed_text() -> None:
    assert bm25_tokens("Nike AIR Max 90") == ["nike", "air", "max", "90"]
    assert bm25_tokens("跑步鞋") == ["跑步", "步鞋"]
    assert bm25_tokens("耐克 鞋") == ["耐克", "鞋"]
    assert bm25_tokens("ＮＩＫＥ跑鞋size10") == ["nike", "跑鞋", "size10"]
    assert bm25_tokens("") == []


def _reference_scores(docs: list[str], query: str, k1: float = 1.2, b: float = 0.75) -> list[float]:
    tokenized = [bm25_tokens(d) for d in docs]
    n = len(docs)
    avg = sum(len(t) for t in tokenized) / n
    df = Counter(term for t in tokenized for term in set(t))
    scores = []
    for tokens in tokenized:
        tf = Counter(tokens)
        score = 0.0
        for term in dict.fromkeys(bm25_tokens(query)):
            if term in tf:
                idf = math.log(1 + (n - df[term] + 0.5) / (df[term] + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + k1 * (1 - b + b * len(tokens) / avg))
        scores.append(score)
    return scores


def test_scores_equal_the_textbook_formula_on_random_documents() -> None:
    rng = random.Random(3)
    vocabulary = ["nike", "adidas", "shoes", "running", "red", "blue", "socks", "size", "10", "跑步", "鞋"]
    docs = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 12))) for _ in range(200)]
    index = BM25Index(docs)
    for query in ("nike running shoes", "red socks size 10", "跑步 鞋", "unknown words"):
        assert index.scores(query).tolist() == pytest.approx(_reference_scores(docs, query))


def test_ranking_prefers_rare_terms_and_breaks_ties_by_position() -> None:
    docs = ["red shoes", "blue shoes", "red shoes", "nike air max red", "socks"]
    index = BM25Index(docs)
    top = index.top("red shoes", 5)
    assert [d for d, _ in top][:2] == [0, 2]  # identical documents: lower index first
    assert top[0][1] == top[1][1]
    assert 4 not in [d for d, _ in top]  # no shared term, no result
    assert index.top("nike", 3) == [(3, pytest.approx(index.scores("nike")[3]))]
    assert index.top("", 3) == [] and index.top("red", 0) == []


def test_top_k_is_the_head_of_the_full_ranking() -> None:
    rng = random.Random(5)
    docs = [" ".join(rng.choices(["a", "b", "c", "d", "e", "f"], k=rng.randint(1, 6))) for _ in range(300)]
    index = BM25Index(docs)
    full = index.top("a b", 300)
    for k in (1, 5, 17, 60):
        assert index.top("a b", k) == full[:k]
    assert all(s1 >= s2 for (_, s1), (_, s2) in itertools.pairwise(full))

"""The job's numpy metrics agree with scikit-learn and with cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from sampleforge.jobs.finetune import metrics as m


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


class TestClassification:
    def test_accuracy_and_macro_f1_match_sklearn(self, rng: np.random.Generator) -> None:
        for _ in range(20):
            t = rng.integers(0, 4, 200)
            p = np.where(rng.random(200) < 0.6, t, rng.integers(0, 4, 200))
            assert m.accuracy(t, p) == pytest.approx(skm.accuracy_score(t, p))
            assert m.macro_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="macro"))

    def test_macro_f1_counts_a_class_only_predicted(self) -> None:
        # class 2 never occurs in the truth: its F1 is 0 and it still pulls the mean down
        t, p = [0, 0, 1, 1], [0, 2, 1, 1]
        assert m.macro_f1(t, p) == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
        assert m.macro_f1(t, p) == pytest.approx(skm.f1_score(t, p, average="macro", zero_division=0))

    def test_binary_f1_matches_sklearn(self, rng: np.random.Generator) -> None:
        t, p = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
        assert m.binary_f1(t, p) == pytest.approx(skm.f1_score(t, p))

    def test_roc_auc_matches_sklearn_with_and_without_ties(self, rng: np.random.Generator) -> None:
        for _ in range(20):
            t = rng.integers(0, 2, 150)
            s = rng.normal(size=150) + t
            assert m.roc_auc(t, s) == pytest.approx(skm.roc_auc_score(t, s))
            tied = np.round(s)  # many ties
            assert m.roc_auc(t, tied) == pytest.approx(skm.roc_auc_score(t, tied))

    def test_roc_auc_by_hand(self) -> None:
        # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5/4
        assert m.roc_auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]) == pytest.approx(0.875)
        assert math.isnan(m.roc_auc([1, 1], [0.2, 0.3]))

    def test_log_loss_matches_sklearn(self, rng: np.random.Generator) -> None:
        t = rng.integers(0, 2, 100)
        p = rng.random(100)
        assert m.log_loss(t, p) == pytest.approx(skm.log_loss(t, p))
        t3 = rng.integers(0, 3, 100)
        p3 = rng.dirichlet([1, 1, 1], 100)
        assert m.log_loss(t3, p3) == pytest.approx(skm.log_loss(t3, p3, labels=[0, 1, 2]))


class TestRegression:
    def test_errors_and_correlations(self, rng: np.random.Generator) -> None:
        t, p = rng.normal(size=50), rng.normal(size=50)
        assert m.mse(t, p) == pytest.approx(skm.mean_squared_error(t, p))
        assert m.rmse(t, p) == pytest.approx(math.sqrt(skm.mean_squared_error(t, p)))
        assert m.mae(t, p) == pytest.approx(skm.mean_absolute_error(t, p))
        assert m.pearson(t, p) == pytest.approx(stats.pearsonr(t, p).statistic)
        tied = np.round(t)
        assert m.spearman(tied, p) == pytest.approx(stats.spearmanr(tied, p).statistic)

    def test_constant_input_has_no_correlation(self) -> None:
        assert math.isnan(m.pearson([1, 1, 1], [1, 2, 3]))


def _sklearn_ndcg_per_query(q: np.ndarray, g: np.ndarray, s: np.ndarray, k: int) -> float:
    values = []
    for query in np.unique(q):
        rows = q == query
        if g[rows].max() <= 0:
            continue
        if rows.sum() == 1:
            continue  # a single candidate ranks first whatever the model does: not counted
        values.append(skm.ndcg_score([g[rows]], [s[rows]], k=k))
    return float(np.mean(values))


class TestRanking:
    def test_ndcg_matches_sklearn_per_query(self, rng: np.random.Generator) -> None:
        q = rng.integers(0, 30, 400)
        g = rng.integers(0, 4, 400).astype(float)
        s = rng.normal(size=400)
        for k in (1, 3, 10):
            got = m.ranking_metrics(q, g, s, [f"ndcg@{k}"])[f"ndcg@{k}"]
            assert got == pytest.approx(_sklearn_ndcg_per_query(q, g, s, k))

    def test_single_candidate_queries_do_not_inflate_ndcg_or_mrr(self, rng: np.random.Generator) -> None:
        # 6 multi-candidate queries ranked by a bad model (relevant items last), then 200 one-title
        # queries that any model "ranks" perfectly: averaging over all of them would report ~0.97.
        multi_q = np.repeat(np.arange(6), 5)
        multi_g = np.tile([2.0, 1.0, 0.0, 0.0, 0.0], 6)
        multi_s = np.tile([0.1, 0.2, 0.7, 0.8, 0.9], 6)
        single_q = np.arange(100, 300)
        q = np.concatenate([multi_q, single_q, [400, 400]])  # query 400: two candidates, none relevant
        g = np.concatenate([multi_g, rng.integers(1, 3, 200).astype(float), [0.0, 0.0]])
        s = np.concatenate([multi_s, rng.normal(size=200), [0.3, 0.2]])
        got = m.ranking_metrics(q, g, s, ["ndcg@5", "mrr", "ndcg@3"])
        for k in (3, 5):
            expected = np.mean([skm.ndcg_score([multi_g[multi_q == i]], [multi_s[multi_q == i]], k=k) for i in range(6)])
            assert got[f"ndcg@{k}"] == pytest.approx(expected)
            assert got[f"ndcg@{k}"] == pytest.approx(_sklearn_ndcg_per_query(q, g, s, k))
        assert got["ndcg@5"] < 0.6
        assert got["mrr"] == pytest.approx(1 / 4)  # the first relevant item is 4th in every counted query
        coverage = m.ranking_coverage(q, g)
        assert coverage == m.RankingCoverage(queries=6, single_candidate=200, no_relevant=1)
        assert coverage.to_json() == {"rankingQueries": 6,
                                      "rankingQueriesSkipped": {"singleCandidate": 200, "noRelevant": 1}}

    def test_only_single_candidate_queries_give_no_ranking_metric(self) -> None:
        got = m.ranking_metrics(["a", "b"], [1, 2], [0.3, 0.9], ["ndcg@10", "mrr"])
        assert math.isnan(got["ndcg@10"]) and math.isnan(got["mrr"])
        assert m.ranking_coverage(["a", "b"], [1, 2]).queries == 0
        assert m.retrieval_coverage([[1.0, 0.0], [0.0, 0.0]]) == m.RankingCoverage(1, 0, 1)

    def test_full_ndcg_and_average_precision_match_sklearn(self, rng: np.random.Generator) -> None:
        g = rng.integers(0, 3, (12, 40)).astype(float)
        s = rng.normal(size=(12, 40))
        got = m.retrieval_metrics(s, g, ["ndcg", "map"])
        assert got["ndcg"] == pytest.approx(np.mean([skm.ndcg_score([gr], [sr]) for gr, sr in zip(g, s)]))
        assert got["map"] == pytest.approx(np.mean([skm.average_precision_score(gr > 0, sr) for gr, sr in zip(g, s)]))

    def test_hand_computed_query(self) -> None:
        # one query, scores rank the items d, b, a, c; grades a=3, b=0, c=1, d=0
        q = ["q"] * 4
        grades = [3, 0, 1, 0]
        scores = [0.5, 0.8, 0.1, 0.9]
        got = m.ranking_metrics(q, grades, scores, ["ndcg@3", "mrr", "recall@2", "recall@3", "precision@3",
                                                    "hitRate@2", "hitRate@3", "map"])
        dcg3 = 0 / math.log2(2) + 0 / math.log2(3) + 3 / math.log2(4)
        idcg3 = 3 / math.log2(2) + 1 / math.log2(3)
        assert got["ndcg@3"] == pytest.approx(dcg3 / idcg3)
        assert got["mrr"] == pytest.approx(1 / 3)
        assert got["recall@2"] == 0.0
        assert got["recall@3"] == pytest.approx(0.5)
        assert got["precision@3"] == pytest.approx(1 / 3)
        assert got["hitRate@2"] == 0.0 and got["hitRate@3"] == 1.0
        # relevant at ranks 3 and 4: AP = (1/3 + 2/4) / 2
        assert got["map"] == pytest.approx((1 / 3 + 2 / 4) / 2)

    def test_queries_without_relevant_items_are_left_out(self) -> None:
        got = m.ranking_metrics(["a", "a", "b", "b"], [1, 0, 0, 0], [0.9, 0.1, 0.5, 0.4], ["mrr", "ndcg@10"])
        assert got == {"mrr": 1.0, "ndcg@10": 1.0}
        nothing = m.ranking_metrics(["a"], [0], [0.3], ["mrr"])
        assert math.isnan(nothing["mrr"])

    def test_ties_keep_input_order(self) -> None:
        # equal scores: the first row ranks first, so the relevant second row is at rank 2
        assert m.ranking_metrics(["q", "q"], [0, 1], [0.5, 0.5], ["mrr"])["mrr"] == pytest.approx(0.5)

    def test_map_at_k_divides_by_min_k_and_relevant(self) -> None:
        # ranked grades 1, 0, 1, 1 with k=2: one hit at rank 1 -> 1 / min(2, 3)
        got = m.retrieval_metrics([[4.0, 3.0, 2.0, 1.0]], [[1, 0, 1, 1]], ["map@2"])
        assert got["map@2"] == pytest.approx(0.5)

    def test_retrieval_matches_grouped_form(self, rng: np.random.Generator) -> None:
        g = rng.integers(0, 2, (8, 25)).astype(float)
        s = rng.normal(size=(8, 25))
        names = ["ndcg@5", "mrr", "recall@10", "precision@5"]
        flat = m.ranking_metrics(np.repeat(np.arange(8), 25), g.ravel(), s.ravel(), names)
        assert m.retrieval_metrics(s, g, names) == pytest.approx(flat)

    def test_metric_names(self) -> None:
        assert m.MetricName.parse("ndcg@10") == m.MetricName("ndcg", 10)
        assert m.MetricName.parse("macroF1") == m.MetricName("macroF1", None)
        assert m.MetricName.parse("hitRate@5").is_ranking and not m.MetricName.parse("auc").is_ranking
        with pytest.raises(ValueError):
            m.MetricName.parse("ndcg@")

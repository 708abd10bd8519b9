"""The per-namespace storage allow-list: which spec fields' URIs a namespace may use. No servers."""

from __future__ import annotations

from types import SimpleNamespace

import kopf
import pytest

from sampleforge.api import Phase, Reason
from sampleforge.operator.allowlist import describe, parse, refused, uris_in
from sampleforge.operator.context import OperatorContext
from sampleforge.operator.metrics import OperatorMetrics
from sampleforge.operator.reconcile import check_storage_prefixes
from sampleforge.operator.settings import Settings

SPEC = {"source": {"uri": "s3://datasets/search/train.parquet"},
        "augmenters": [{"type": "synonym", "lexicon": "s3://datasets/lexicons/shoes.tsv"},
                       {"type": "paraphrase", "model": "s3://models/qwen/"}],
        "output": {"uri": "s3://datasets/search/augmented/"}, "parallelism": 2}
ALLOW = parse('{"search-ml": ["s3://datasets/search/", "s3://models"], "*": ["s3://scratch/"]}')


def test_every_uri_of_the_spec_is_found_with_its_field() -> None:
    assert sorted(uris_in(SPEC)) == [
        ("spec.augmenters[0].lexicon", "s3://datasets/lexicons/shoes.tsv"),
        ("spec.augmenters[1].model", "s3://models/qwen/"),
        ("spec.output.uri", "s3://datasets/search/augmented/"),
        ("spec.source.uri", "s3://datasets/search/train.parquet"),
    ]


def test_a_uri_outside_the_namespaces_prefixes_is_refused_by_field() -> None:
    bad = refused(ALLOW, "search-ml", uris_in(SPEC))
    assert bad == [("spec.augmenters[0].lexicon", "s3://datasets/lexicons/shoes.tsv")]
    message = describe(ALLOW, "search-ml", bad)
    assert "spec.augmenters[0].lexicon" in message and "s3://datasets/search/" in message


def test_a_prefix_without_a_slash_ends_at_a_boundary() -> None:
    assert refused(ALLOW, "search-ml", [("f", "s3://models/x")]) == []
    assert refused(ALLOW, "search-ml", [("f", "s3://modelsx/y")]) == [("f", "s3://modelsx/y")]


def test_other_namespaces_get_the_star_entry_and_no_list_means_no_limit() -> None:
    assert refused(ALLOW, "recsys", [("f", "s3://scratch/a")]) == []
    assert refused(ALLOW, "recsys", [("f", "s3://datasets/search/a")]) != []
    assert refused({"search-ml": ("s3://a/",)}, "recsys", [("f", "s3://a/x")]) != [], "unlisted: nothing allowed"
    assert refused({}, "any", uris_in(SPEC)) == []


@pytest.mark.parametrize("raw", ["[1]", '{"ns": "s3://a/"}', '{"ns": ["http://a/"]}', "{not json"])
def test_a_malformed_setting_is_refused_at_startup(raw: str) -> None:
    with pytest.raises(ValueError, match="SAMPLEFORGE_OPERATOR_STORAGE_ALLOW_LIST"):
        parse(raw)


def test_an_upstream_runs_output_outside_the_list_fails_the_run_naming_the_field() -> None:
    """A FineTuneRun reads its AugmentationRun's committed output: that prefix is checked too, so a
    run cannot reach another team's data by chaining onto a run whose output is elsewhere."""
    ctx = OperatorContext(settings=Settings(leader_election=False, storage_allow_list=ALLOW), kube=None,  # type: ignore[arg-type]
                          metrics=OperatorMetrics())
    body = {"metadata": {"name": "ranker", "namespace": "search-ml", "uid": "u-ft", "generation": 1},
            "spec": {"data": {"fromAugmentationRun": "aug"}, "output": {"uri": "s3://datasets/search/models/r/"}}}
    run = SimpleNamespace(namespace="search-ml")
    check_storage_prefixes(ctx, body, run, "s3://datasets/search/augmented/")  # type: ignore[arg-type]  # inside
    with pytest.raises(kopf.PermanentError, match=r"spec\.data\.fromAugmentationRun"):
        check_storage_prefixes(ctx, body, run, "s3://other-team/augmented/")  # type: ignore[arg-type]
    note = ctx.preflight["u-ft"]
    assert (note.phase, note.reason) == (Phase.FAILED, Reason.INVALID_SPEC) and "s3://other-team/" in note.message

"""Synonym lexicons: the shipped ones are usable, and a user's TSV fails loudly and precisely."""

from __future__ import annotations

from collections import Counter

import pytest

from sampleforge.jobs.augment.text.lexicon import (
    LEXICON_DIR,
    Lexicon,
    LexiconError,
    builtin_lexicon,
    default_lexicon,
    normalize_term,
    parse_lexicon,
)
from sampleforge.jobs.augment.text.tokens import contains_han


class TestParsing:
    def test_groups_comments_and_multiword_terms(self) -> None:
        text = (
            "# shoes lexicon\n"
            "sneakers\ttrainers\ttennis shoes\n"
            "\n"
            "  # indented comment\n"
            "cheap\taffordable\t# trailing comment\n"
        )
        lex = parse_lexicon(text, source="shoes.tsv")
        assert lex.groups == (("sneakers", "trainers", "tennis shoes"), ("cheap", "affordable"))
        assert lex.synonyms("sneakers") == ("trainers", "tennis shoes")
        assert lex.synonyms("Tennis  Shoes") == ("sneakers", "trainers")
        assert lex.synonyms("boots") == ()
        assert "cheap" in lex and "boots" not in lex

    def test_bom_crlf_and_blank_trailing_columns(self) -> None:
        lex = parse_lexicon("\ufeffsofa\tcouch\t\r\nfridge\trefrigerator\r\n")
        assert lex.groups == (("sofa", "couch"), ("fridge", "refrigerator"))

    def test_a_term_in_two_groups_gets_both_sets_of_synonyms(self) -> None:
        lex = parse_lexicon("tv\ttelevision\ntv\ttelly\n")
        assert set(lex.synonyms("tv")) == {"television", "telly"}
        assert lex.synonyms("telly") == ("tv",)

    def test_keys_are_normalised_like_text_spans(self) -> None:
        assert normalize_term("  Cell   Phone ") == "cell phone"
        assert normalize_term("T-Shirt") == "t-shirt"
        assert normalize_term("移动电话") == "移动电话"
        assert normalize_term("iPhone手机壳") == "iphone手机壳"
        assert normalize_term("shoes (men)") is None

    def test_merged_lexicon_keeps_both(self) -> None:
        merged = parse_lexicon("a1\tb1\n").merged(parse_lexicon("手机\t移动电话\n"))
        assert merged.synonyms("a1") == ("b1",) and merged.synonyms("手机") == ("移动电话",)


class TestParseErrors:
    @pytest.mark.parametrize(
        "text, line, fragment",
        [
            ("sofa\tcouch\nfridge\n", 2, "at least two terms, found 1"),
            ("# c\n\nsofa  couch  settee\n", 3, "separated by tabs"),
            ("sofa\t\tcouch\n", 1, "empty term in column 2"),
            ("sofa\tcouch\nTV\ttelevision\ttv\n", 2, "repeats 'TV'"),
            ("ok\tfine\n...\tdots\n", 2, "punctuation"),
            ("a\tb\nc\td\n手机 移动电话\n", 3, "separated by tabs"),
        ],
    )
    def test_error_names_source_and_line(self, text: str, line: int, fragment: str) -> None:
        with pytest.raises(LexiconError) as err:
            parse_lexicon(text, source="s3://lexicons/shoes.tsv")
        assert err.value.line == line
        assert f"s3://lexicons/shoes.tsv, line {line}:" in str(err.value)
        assert fragment in str(err.value)

    def test_lexicon_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            parse_lexicon("lonely\n")


class TestBuiltinLexicons:
    @pytest.mark.parametrize("lang", ["en", "zh"])
    def test_a_few_hundred_clean_groups(self, lang: str) -> None:
        lex = builtin_lexicon(lang)  # type: ignore[arg-type]
        assert len(lex) >= 250
        assert all(len(g) >= 2 for g in lex.groups)
        keys = Counter(normalize_term(t) for g in lex.groups for t in g)
        assert [k for k, n in keys.items() if n > 1] == [], "a term in two groups makes its synonyms ambiguous"
        raw = (LEXICON_DIR / f"{lang}_ecommerce.tsv").read_text(encoding="utf-8")
        assert "\t" in raw and "|" not in raw

    def test_english_examples(self) -> None:
        en = builtin_lexicon("en")
        assert {"affordable", "budget"} <= set(en.synonyms("cheap"))
        assert "mobile phone" in en.synonyms("cell phone")
        assert "grey" in en.synonyms("gray")
        assert "aluminium" in en.synonyms("aluminum")
        assert all(not contains_han(t) for g in en.groups for t in g)

    def test_chinese_examples(self) -> None:
        zh = builtin_lexicon("zh")
        assert "移动电话" in zh.synonyms("手机")
        assert {"实惠", "划算"} <= set(zh.synonyms("便宜"))
        assert all(contains_han(g[0]) or g[0].isascii() for g in zh.groups)
        assert sum(contains_han(t) for g in zh.groups for t in g) > 0.95 * sum(len(g) for g in zh.groups)

    def test_default_lexicon_covers_both_languages(self) -> None:
        lex = default_lexicon()
        assert isinstance(lex, Lexicon)
        assert lex.synonyms("cheap") and lex.synonyms("便宜")
        assert len(lex) == len(builtin_lexicon("en")) + len(builtin_lexicon("zh"))

    def test_unknown_language(self) -> None:
        with pytest.raises(ValueError, match="no built-in lexicon for language 'fr'"):
            builtin_lexicon("fr")  # type: ignore[arg-type]

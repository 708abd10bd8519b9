"""Tokenisation of shopping text: model numbers survive, Chinese is segmented, text round-trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sampleforge.jobs.augment.text.tokens import Doc, contains_han, render, tokenize


def shared_data() -> Path:
    """../shared/data beside the repository (or $SAMPLEFORGE_SHARED_DATA); skip when absent."""
    override = os.environ.get("SAMPLEFORGE_SHARED_DATA")
    path = Path(override) if override else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared research data not found at {path} (set SAMPLEFORGE_SHARED_DATA)")
    return path


def words(doc: Doc) -> list[str]:
    return [doc.tokens[i] for i in doc.words]


def assert_consistent(doc: Doc) -> None:
    """The invariants every augmenter relies on."""
    assert render(doc.tokens, doc.gaps, doc.tail) == doc.text
    assert doc.render(doc.tokens) == doc.text
    assert len(doc.gaps) == len(doc.tokens)
    assert all(doc.tokens), "no empty token"
    assert all(g == "" or g.isspace() for g in doc.gaps)
    assert all(doc.tokens[i][0].isalnum() or doc.tokens[i][-1].isalnum() for i in doc.words)
    assert list(doc.words) == sorted(set(doc.words))


class TestEnglish:
    @pytest.mark.parametrize(
        "text, expected",
        [
            ("sony wh-1000xm4 headphones", ["sony", "wh-1000xm4", "headphones"]),
            ("Sony WH-1000XM4, Black", ["Sony", "WH-1000XM4", "Black"]),
            ("MacBook Air 13.3in laptop (2020)", ["MacBook", "Air", "13.3in", "laptop", "2020"]),
            ("cloth diapers 8-35lbs, men's size", ["cloth", "diapers", "8-35lbs", "men's", "size"]),
            ("toner $19.99 - 2 pack!", ["toner", "$19.99", "2", "pack"]),
            ("usb-c to usb-a cable 3.3ft", ["usb-c", "to", "usb-a", "cable", "3.3ft"]),
        ],
    )
    def test_model_numbers_and_prices_stay_whole(self, text: str, expected: list[str]) -> None:
        doc = tokenize(text)
        assert words(doc) == expected
        assert_consistent(doc)

    def test_edge_punctuation_becomes_non_word_tokens(self) -> None:
        doc = tokenize("Diapers, 6 Pack (Jagger) & more...")
        assert doc.tokens == ["Diapers", ",", "6", "Pack", "(", "Jagger", ")", "&", "more", "..."]
        assert words(doc) == ["Diapers", "6", "Pack", "Jagger", "more"]
        assert doc.gaps[1] == "" and doc.gaps[4] == " " and doc.gaps[5] == ""

    def test_irregular_whitespace_round_trips(self) -> None:
        for text in ["  cheap\tcell  phone \n", "a\u3000b", "\tx", "x ", "", "   "]:
            assert_consistent(tokenize(text))

    def test_fast_and_general_paths_agree(self) -> None:
        """Single-spaced ASCII takes a shortcut; the same words with other spacing must tokenise alike."""
        for text in ["elite screens cinema235 85 diagonal", "Mama Koala, One Size (Jagger)", "a & b - c"]:
            fast = tokenize(text)
            general = tokenize(text.replace(" ", "  "))
            assert fast.tokens == general.tokens
            assert list(fast.words) == list(general.words)
            assert not general.simple
            assert general.render(general.tokens) == text.replace(" ", "  ")


class TestChinese:
    def test_han_detection_by_unicode_range(self) -> None:
        assert contains_han("小孩咳嗽感冒")
        assert contains_han("iPhone 13 手机壳")
        assert contains_han("\U00020000")  # CJK extension B
        assert not contains_han("iphone 13 case")
        assert not contains_han("ｉｐｈｏｎｅ")  # full-width Latin is not Chinese
        assert not contains_han("スマホ ケース")  # kana is not Han
        assert not contains_han("")

    def test_jieba_word_segmentation(self) -> None:
        assert words(tokenize("小孩咳嗽感冒")) == ["小孩", "咳嗽", "感冒"]
        assert words(tokenize("便宜实惠的运动鞋")) == ["便宜", "实惠", "的", "运动鞋"]

    def test_mixed_text_keeps_model_numbers_whole(self) -> None:
        doc = tokenize("索尼WH-1000XM4耳机 便宜")
        assert words(doc) == ["索尼", "WH-1000XM4", "耳机", "便宜"]
        assert doc.has_han
        assert doc.gaps == ["", "", "", " "]
        assert_consistent(doc)

    def test_chinese_punctuation_is_not_a_word(self) -> None:
        doc = tokenize("手机，便宜！")
        assert doc.tokens == ["手机", "，", "便宜", "！"]
        assert words(doc) == ["手机", "便宜"]

    def test_jieba_loads_only_for_chinese_text(self) -> None:
        code = (
            "import sys\n"
            "from sampleforge.jobs.augment.text.tokens import tokenize\n"
            "tokenize('Sony WH-1000XM4 wireless headphones, black')\n"
            "before = 'jieba' in sys.modules\n"
            "tokenize('索尼耳机')\n"
            "print(before, 'jieba' in sys.modules)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["False", "True"]


class TestRoundTripOnRealData:
    def test_every_row_of_the_shared_data_round_trips(self) -> None:
        data = shared_data()
        texts: list[str] = []
        with (data / "qbqtc" / "dev.json").open(encoding="utf-8") as f:
            for line in list(f)[:3000]:
                row = json.loads(line)
                texts += [row["query"], row["title"]]
        with (data / "walmart-amazon" / "train.txt").open(encoding="utf-8") as f:
            texts += [side for line in f for side in line.split("\t")[:2]]
        for text in texts:
            assert_consistent(tokenize(text))

    def test_generated_strings_round_trip(self) -> None:
        alphabet = list("ab Z9-.,()&$'\"\t\n手机壳，。（）") + ["  ", "\u3000", "ｉ"]
        rng = np.random.default_rng(7)
        for _ in range(5000):
            text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 16))))
            assert_consistent(tokenize(text))

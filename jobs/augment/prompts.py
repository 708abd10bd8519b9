"""Prompts for the model-based text generators, and cleaning what the models answer.

**Templates.** ``spec.augmenters[].promptTemplate`` must contain ``{text}`` (the API checks it); the
job replaces it with the row's text. Substitution is literal (``str.replace``, not ``str.format``),
so braces elsewhere in a template (JSON examples, few-shot blocks) stay as written. Back-translation
also fills ``{language}`` (the BCP 47 tag the step translates into, such as ``de`` or ``en``; what a
multilingual Marian model wants as ``>>{language}<< {text}``) and ``{languageName}`` (``German``,
``English``; what an instruct model understands). Each type has two built-in templates: an
instruction for models with a chat template (sent as the user turn, after one or two worked examples
as earlier turns) and a completion prompt that ends where the answer starts, for plain language
models. Seq2seq models get the text alone unless the spec gives a template (a doc2query-T5 or Marian
model expects nothing else). A spec template is sent as it is, without examples.

**Cleaning.** Small instruct models wrap their answer: ``Here is the rewritten query:``,
``Query: "..."``, a numbered list, an echo of the instruction, a second paragraph of explanation.
:func:`clean_output` keeps the first line that is an answer, without labels, list markers or quotes.
:func:`judge` then says why an answer is unusable (empty, identical to its source, an echo of the
input), so the augmenter can drop and count it rather than write a row that teaches nothing.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .engines import ModelInput

__all__ = [
    "DEFAULT_TEMPLATES",
    "MAX_SOURCE_CHARS",
    "Formats",
    "Prompt",
    "Templates",
    "clean_output",
    "judge",
    "language_name",
    "normalized",
    "render",
    "script_language",
]

#: Longest source text put into a prompt, in characters. Why a cap: a product description pasted as
#: a title would otherwise push the instruction out of a small model's context window.
MAX_SOURCE_CHARS = 2000


@dataclass(frozen=True)
class Templates:
    """The built-in prompts of one augmenter type and field: ``chat`` is the user turn of a chat
    model, ``plain`` a completion prompt for a model without a chat template. ``examples`` are
    (source text, answer) pairs that a chat model sees as earlier turns of the conversation: a small
    instruct model answers in the shown form far more often than from the instruction alone (with
    SmolLM2-135M, instead of repeating the instruction back)."""

    chat: str
    plain: str
    examples: tuple[tuple[str, str], ...] = ()


class Formats(Protocol):
    """An engine as a prompt sees it: it turns a rendered prompt, after example turns (rendered
    prompt, answer), into its model input."""

    def format(self, prompt: str, shots: Sequence[tuple[str, str]] = ()) -> ModelInput: ...


@dataclass(frozen=True)
class Prompt:
    """A template and the example conversation turns (source text, answer) shown before it."""

    template: str
    examples: tuple[tuple[str, str], ...] = ()

    def model_input(self, generator: Formats, text: str, language: str | None = None) -> ModelInput:
        shots = [(render(self.template, source, language), answer) for source, answer in self.examples]
        return generator.format(render(self.template, text, language), shots)

    def instruction(self, language: str | None = None) -> str:
        """The prompt without the source text: a line of the answer found in it is an echo."""
        return render(self.template, "", language)

    @property
    def echoes(self) -> tuple[str, ...]:
        """Texts of the examples: an answer that repeats one is copied, not generated."""
        return tuple(t for pair in self.examples for t in pair)


DEFAULT_TEMPLATES: dict[str, Templates] = {
    "paraphrase/query": Templates(
        chat="Rewrite the following product search query using different words but the same meaning. "
        "Reply with only the rewritten query.\n\n{text}",
        plain="Search query: {text}\nThe same search in other words:",
        examples=(("running shoes for men", "men's jogging sneakers"), ("cheap laptop", "budget notebook computer")),
    ),
    "paraphrase/item": Templates(
        chat="Rewrite the following product title using different words but the same meaning. Keep brand names, "
        "model numbers and sizes exactly as they are. Reply with only the rewritten title.\n\n{text}",
        plain="Product title: {text}\nThe same product title in other words:",
        examples=(("Nike Men's Revolution 6 Running Shoe, Black/White", "Nike Revolution 6 men's running sneaker"),),
    ),
    "doc2query": Templates(
        chat="Write a short search query that a shopper would type to find this product. "
        "Reply with only the query.\n\nProduct: {text}",
        plain="Product: {text}\nA shopper looking for this product searches for:",
        examples=(("Nike Men's Revolution 6 Running Shoe, Black/White", "nike running shoes men"),
                  ("Apple AirPods Pro (2nd Generation) Wireless Earbuds with MagSafe Case", "airpods pro")),
    ),
    "backTranslation": Templates(
        chat="Translate the following text into {languageName}. Reply with only the translation.\n\n{text}",
        plain="Text: {text}\nThe same text in {languageName}:",
    ),
}

_LANGUAGE_NAMES = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French", "hi": "Hindi",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "pl": "Polish",
    "pt": "Portuguese", "ru": "Russian", "sv": "Swedish", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian",
    "vi": "Vietnamese", "zh": "Chinese", "zh-Hans": "Simplified Chinese", "zh-Hant": "Traditional Chinese",
}


def language_name(tag: str) -> str:
    """The English name of a BCP 47 tag (the tag itself when it is not a common one)."""
    return _LANGUAGE_NAMES.get(tag) or _LANGUAGE_NAMES.get(tag.split("-")[0]) or tag


def script_language(text: str) -> str:
    """The language to translate *back* into, guessed from the source text's script.

    Why a guess: the spec names the pivot language only. Han without kana is Chinese, kana Japanese,
    Hangul Korean, Cyrillic Russian, Arabic script Arabic, Thai Thai; anything else (Latin) English.
    """
    counts = {"zh": 0, "ja": 0, "ko": 0, "ru": 0, "ar": 0, "th": 0}
    for char in text:
        code = ord(char)
        if 0x3040 <= code <= 0x30FF:
            counts["ja"] += 1
        elif 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
            counts["zh"] += 1
        elif 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF:
            counts["ko"] += 1
        elif 0x0400 <= code <= 0x04FF:
            counts["ru"] += 1
        elif 0x0600 <= code <= 0x06FF:
            counts["ar"] += 1
        elif 0x0E00 <= code <= 0x0E7F:
            counts["th"] += 1
    if counts["ja"]:
        return "ja"
    best = max(counts, key=lambda k: counts[k])
    return best if counts[best] else "en"


def render(template: str, text: str, language: str | None = None) -> str:
    """``template`` with ``{text}`` (and ``{language}`` / ``{languageName}`` when given) filled in."""
    out = template
    if language is not None:
        out = out.replace("{languageName}", language_name(language)).replace("{language}", language)
    return out.replace("{text}", text[:MAX_SOURCE_CHARS])


def normalized(text: str) -> str:
    """Case-, width- and punctuation-insensitive form: two texts equal here say the same thing."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", folded).split())


# A line's label, such as "Query:", "Rewritten query:", "Here is the translation:", "翻译：".
_LABEL_WORDS = (r"query|queries|search|paraphrase|paraphrased|rewrite|rewritten|answer|output|result|response|"
                r"translation|translated|title|product|assistant|here|sure|version|alternative|option")
_LABEL = re.compile(rf"^\s*(?P<label>[^\n:：]{{0,40}}?\b(?:{_LABEL_WORDS})\b[^\n:：]{{0,20}}?|"
                    r"[^\n:：]{0,8}?(?:查询|搜索|翻译|改写|答案|结果|标题)[^\n:：]{0,6}?)\s*[:：]\s*", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)、])\s+")
_QUOTES = "\"'`“”‘’「」『』«»„"
_TRAILING_STOPS = ".。!！"


def _strip_quotes(text: str) -> str:
    """Remove quote characters around the answer (models quote what they were asked to rewrite); a
    quote at one end only (the answer was cut by maxNewTokens) goes too unless it pairs with one inside."""
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    if text[:1] in _QUOTES and not any(c in _QUOTES for c in text[1:]):
        text = text[1:].strip()
    if text[-1:] in _QUOTES and not any(c in _QUOTES for c in text[:-1]):
        text = text[:-1].strip()
    return text


def _clean_line(line: str) -> str:
    text = _LIST_MARKER.sub("", line.strip())
    for _ in range(2):  # "Sure! Here is the query: Query: ..." has two labels
        match = _LABEL.match(text)
        if match is None:
            break
        text = text[match.end():]
    text = _strip_quotes(text.strip())
    return text.strip()


def clean_output(output: str, source: str, instruction: str = "") -> str:
    """The answer in a model's ``output``: its first useful line, cleaned ('' when there is none).

    A line is skipped when it is empty, ends with a colon (a preamble such as "Here are some
    options:"), or repeats part of the ``instruction`` (the prompt without the source text). A
    trailing full stop is dropped unless the ``source`` ends with one (queries and titles do not).
    """
    echo = normalized(instruction)
    for line in output.splitlines():
        raw = line.strip()
        if not raw or raw.endswith((":", "：")):
            continue
        text = _clean_line(raw)
        key = normalized(text)
        if not key or (echo and f" {key} " in f" {echo} "):
            continue
        if text[-1:] in _TRAILING_STOPS and source.strip()[-1:] not in _TRAILING_STOPS:
            text = text.rstrip(_TRAILING_STOPS).rstrip()
        return text
    return ""


def judge(text: str, source: str, echoes: Sequence[str] = ()) -> str | None:
    """Why a cleaned answer is unusable (a reason to count), or None when it is a usable one.
    ``echoes`` are texts the model was shown (the item it read, the answers of prompt examples):
    repeating one is not an answer."""
    key = normalized(text)
    if not key:
        return "empty output"
    if key == normalized(source):
        return "identical to the source text"
    if any(key == normalized(echo) for echo in echoes):
        return "echo of the model input"
    return None

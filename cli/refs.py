"""What a user types to name a run: ``NAME``, ``KIND/NAME`` or ``SHORTNAME/NAME``.

The accepted kind spellings are exactly the ones the CRDs declare (singular, plural, short names,
and ``plural.group``), so whatever works with ``kubectl get`` works here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sampleforge.api.constants import GROUP, PLURALS, SHORT_NAMES, Kind


class RefError(ValueError):
    """A run reference that cannot name a run; the message says what would."""


def _kind_spellings() -> dict[str, Kind]:
    names: dict[str, Kind] = {}
    for kind in Kind:
        spellings = {kind.value.lower(), PLURALS[kind], f"{PLURALS[kind]}.{GROUP}", f"{kind.value.lower()}.{GROUP}",
                     *SHORT_NAMES[kind]}
        names.update(dict.fromkeys(spellings, kind))
    return names


KIND_SPELLINGS: dict[str, Kind] = _kind_spellings()


@dataclass(frozen=True)
class RunRef:
    """A run's name, and its kind when the user said which."""

    name: str
    kind: Kind | None = None

    def __str__(self) -> str:
        return f"{self.kind.value.lower()}/{self.name}" if self.kind else self.name


def parse_ref(text: str) -> RunRef:
    """``shoes`` → any kind named shoes; ``ftr/shoes`` → the FineTuneRun shoes."""
    text = text.strip()
    if not text:
        raise RefError("a run name is empty; give NAME, augmentationrun/NAME or finetunerun/NAME")
    if "/" not in text:
        return RunRef(text)
    kind_text, _, name = text.partition("/")
    if not name or "/" in name:
        raise RefError(f"{text!r} is not KIND/NAME; give NAME, augmentationrun/NAME or finetunerun/NAME")
    kind = KIND_SPELLINGS.get(kind_text.lower())
    if kind is None:
        known = ", ".join(sorted(KIND_SPELLINGS))
        raise RefError(f"{kind_text!r} in {text!r} is not a sampleforge kind; use one of: {known}")
    return RunRef(name, kind)

"""The structural type the job codes against, kept apart from the implementation.

The augmenters' hot modules (:mod:`.tokens`, :mod:`.rng`, :mod:`.base`, :mod:`.word`, :mod:`.noise`)
are plain, fully annotated Python that mypyc can compile; a ``runtime_checkable`` Protocol cannot be
compiled, so it lives here.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from sampleforge.jobs.augment.text.base import AugmentResult

__all__ = ["TextAugmenterProtocol"]


@runtime_checkable
class TextAugmenterProtocol(Protocol):
    """What the job needs from a text augmenter: a name and a deterministic batch call."""

    @property
    def name(self) -> str:
        """The augmenter type name (the CR enum value, e.g. ``typo``)."""
        ...

    def augment(
        self,
        texts: Sequence[str],
        *,
        seed: int,
        n_per_text: int = 1,
        first_row: int = 0,
        protected: Collection[str] = (),
        row_protected: Sequence[Collection[str]] | None = None,
    ) -> AugmentResult: ...

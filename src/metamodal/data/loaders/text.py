"""Text loader: inline text -> token ids long ``[B, L]`` with a vocabulary fitted on meta-train.

Tokenisation is pluggable through the `tokenizers` registry (name -> ``callable(str) ->
list[str]``); the default ``"words"`` tokenizer NFKC-normalises and lower-cases the text, then
splits it into words (runs of Unicode letters, digits and underscores, with inner apostrophes
kept: ``"don't"``) and single punctuation marks. A pretrained tokenizer registers itself with
``@tokenizers.register("name")`` and is picked with the ``tokenizer`` option.

Ids: 0 is padding, 1 is unknown, and the vocabulary's words follow from 2 in order of
decreasing meta-train count, ties broken alphabetically, so the vocabulary is deterministic.

A text that is present but yields no token (e.g. only spaces) is present, with the single token
"unknown" (length 1): the sample did provide the modality, and encoders never see a length 0.
Calling `TextLoader.decode` before `TextLoader.fit` is allowed: the vocabulary is then empty and
every token is unknown (`TextLoader.is_fitted` tells).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._numeric import check_count
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.errors import DatasetError
from metamodal.registry import Registry

PAD_ID = 0
"""Token id of padding."""
UNKNOWN_ID = 1
"""Token id of any token not in the vocabulary."""
FIRST_WORD_ID = 2
"""Token id of the most frequent vocabulary word."""

tokenizers: Registry[list[str]] = Registry("tokenizer")
"""Tokenizers by name (``callable(str) -> list[str]``):
``tokenizers.get("words")("Hello, world")`` is ``["hello", ",", "world"]``."""

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*|[^\w\s]")
_SPACES = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).lower()


@tokenizers.register("words")
def word_tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of ``text`` (the default tokenizer).

    Example:
        >>> word_tokens("Don't PANIC, it's 42!")
        ["don't", 'panic', ',', "it's", '42', '!']
    """
    return _WORD.findall(_normalise(text))


@tokenizers.register("chars")
def char_tokens(text: str) -> list[str]:
    """Lower-cased characters of ``text``, each run of white space as one ``" "``.

    Example:
        >>> char_tokens(" Ab  c")
        ['a', 'b', ' ', 'c']
    """
    return list(_SPACES.sub(" ", _normalise(text)).strip())


MAX_LENGTH = 100_000
"""The largest ``max_length``: tokens kept per text."""

MAX_VOCAB = 10_000_000
"""The largest ``max_vocab``."""


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    maximum = {"max_length": MAX_LENGTH, "max_vocab": MAX_VOCAB}.get(name, 2**31 - 1)
    return check_count("text", name, value, minimum, maximum)


@loaders.register("text")
class TextLoader(ModalityLoader):
    """Tokenises inline text and maps tokens to ids from a meta-train vocabulary.

    Args:
        tokenizer: name in `tokenizers` (default ``"words"``; also ``"chars"``).
        max_vocab: most words kept (ids 0 and 1 not counted), default 5000.
        min_count: fewest meta-train occurrences for a word to be kept, default 1.
        max_length: tokens kept per text (the rest is cut), default 32.

    Fitted state: ``vocab_``, the kept words in id order (``vocab_[k]`` has id ``k + 2``).

    Example:
        >>> ctx = DecodeContext(".", "samples.csv", [1, 2, 3], "caption")
        >>> loader = TextLoader()
        >>> loader.fit(["a red bird", "a bird", None], ctx)
        >>> loader.vocab_
        ['a', 'bird', 'red']
        >>> batch = loader.decode(["red fish", None, "a bird a"], ctx)
        >>> batch.values.tolist(), batch.lengths.tolist(), batch.present.tolist()
        ([[4, 1, 0], [0, 0, 0], [2, 3, 2]], [2, 0, 3], [True, False, True])
    """

    kind: ClassVar[str] = "text"

    def __init__(
        self,
        *,
        tokenizer: str = "words",
        max_vocab: int = 5000,
        min_count: int = 1,
        max_length: int = 32,
    ) -> None:
        self.tokenizer = tokenizer
        self._tokenize: Callable[[str], list[str]] = tokenizers.get(tokenizer)
        self.max_vocab = _positive_int("max_vocab", max_vocab, minimum=0)
        self.min_count = _positive_int("min_count", min_count)
        self.max_length = _positive_int("max_length", max_length)
        self.vocab_: list[str] = []
        self.fitted_ = False
        self._ids: dict[str, int] = {}

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` (or `from_state` of a fitted loader) has run."""
        return self.fitted_

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Build the vocabulary from meta-train texts (``None`` cells skipped).

        Words seen at least ``min_count`` times are sorted by (-count, word) and the first
        ``max_vocab`` kept. Every token of a text counts, also those past ``max_length``.
        """
        counts: Counter[str] = Counter()
        for i, cell in enumerate(cells):
            text = self._text(i, cell, context)
            if text is not None:
                counts.update(self._tokenize(text))
        ranked = sorted((item for item in counts.items() if item[1] >= self.min_count),
                        key=lambda item: (-item[1], item[0]))
        self._set_vocab([word for word, _ in ranked[: self.max_vocab]])
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Token ids long ``[B, L]`` (``L`` = longest text in the batch, at least 1), lengths
        long ``[B]`` (0 for absent samples) and ``present`` bool ``[B]``."""
        flat: list[int] = []
        lengths = np.zeros(len(cells), dtype=np.int64)
        present = np.zeros(len(cells), dtype=bool)
        lookup = self._ids.get
        for i, cell in enumerate(cells):
            text = self._text(i, cell, context)
            if text is None:
                continue
            ids = [lookup(token, UNKNOWN_ID) for token in self._tokenize(text)[: self.max_length]]
            if not ids:
                ids = [UNKNOWN_ID]
            flat.extend(ids)
            lengths[i] = len(ids)
            present[i] = True
        width = max(1, int(lengths.max(initial=0)))
        values = np.zeros((len(cells), width), dtype=np.int64)
        if flat:
            rows = np.repeat(np.arange(len(cells)), lengths)
            starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
            values[rows, np.arange(len(flat)) - starts] = flat
        return ModalityBatch(torch.from_numpy(values), torch.from_numpy(present),
                             torch.from_numpy(lengths))

    def input_info(self) -> dict[str, Any]:
        """``{"vocab_size": words + 2, "max_length": max_length}``."""
        return {"vocab_size": len(self.vocab_) + FIRST_WORD_ID, "max_length": self.max_length}

    def state_dict(self) -> dict[str, Any]:
        """Options and the vocabulary as JSON-able data."""
        return {
            "kind": self.kind,
            "options": {"tokenizer": self.tokenizer, "max_vocab": self.max_vocab,
                        "min_count": self.min_count, "max_length": self.max_length},
            "fitted": self.fitted_,
            "vocab": list(self.vocab_),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TextLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        loader._set_vocab([str(word) for word in state["vocab"]])
        loader.fitted_ = bool(state["fitted"])
        return loader

    def _set_vocab(self, words: list[str]) -> None:
        self.vocab_ = words
        self._ids = {word: k + FIRST_WORD_ID for k, word in enumerate(words)}

    @staticmethod
    def _text(i: int, cell: Cell, context: DecodeContext) -> str | None:
        if cell is None or isinstance(cell, str):
            return cell
        context.report(DatasetError(
            f"text cell holds a {type(cell).__name__}, not a string",
            file=context.table_file, row=context.rows[i], column=context.column,
            fix="store the text itself in the cell",
        ))
        return None

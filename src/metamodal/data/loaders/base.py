"""The interface every modality loader implements, and its registry (one loader per kind)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from metamodal.data.batch import ModalityBatch
from metamodal.errors import DatasetError
from metamodal.registry import Registry

Cell = str | None | list[str | None]
"""One sample's raw value of a modality: ``None`` when missing; for text the text itself, for
image / audio / sequence a path relative to the dataset root; for tabular the list of its
columns' cells (each ``str`` or ``None``)."""


@dataclass
class DecodeContext:
    """Where cells come from, so that problems can name file, row and column.

    Args:
        root: directory that relative media paths are resolved against.
        table_file: name of the sample table (for messages), e.g. ``samples.csv``.
        rows: 1-based data row of each cell in the table (same length as the cells).
        column: the column (or, for tabular, the modality name) being decoded.
        problems: when given, a decoding problem is appended here and the cell is treated as
            missing instead of raising; ``metamodal inspect`` uses this to list every problem.
        allow_outside: media paths may lead outside ``root`` (``allow_outside_paths = true``
            in ``dataset.toml``); refused by default.
        noun: what the column's files hold, for messages (``"image"``, ...).

    Example:
        >>> ctx = DecodeContext(Path("data"), "samples.csv", [1, 2], "photo", problems=[])
        >>> ctx.report(DatasetError("cannot decode", file="a.png", row=2, column="photo"))
        >>> [str(p) for p in ctx.problems]
        ['a.png, row 2, column photo: cannot decode']
    """

    root: Path
    table_file: str
    rows: Sequence[int]
    column: str
    problems: list[DatasetError] | None = field(default=None)
    allow_outside: bool = False
    noun: str = "media"

    def report(self, error: DatasetError) -> None:
        """Raise ``error``, or record it when collecting problems."""
        if self.problems is None:
            raise error
        self.problems.append(error)


class ModalityLoader(ABC):
    """Decodes one modality's cells into a padded tensor batch, once.

    A loader is built from options (the extra keys of the modality's table in
    ``dataset.toml`` or of the run config), ``fit`` on meta-train cells (vocabulary,
    normalisation statistics), then ``decode`` turns any cells into a `ModalityBatch`.
    ``state_dict`` / ``from_state`` round-trip everything (options + fitted state) as JSON-able
    data so that a run directory can decode new samples exactly as in training.

    Example:
        >>> ctx = DecodeContext(Path("."), "samples.csv", [1, 2], "caption")
        >>> loader = loaders.create("text", max_length=4)
        >>> loader.fit(["a cat", "a dog"], ctx)
        >>> loader.decode(["a cat", None], ctx).values.tolist()
        [[2, 3], [0, 0]]
        >>> type(loader).from_state(loader.state_dict()).vocab_ == loader.vocab_
        True
    """

    kind: ClassVar[str]

    @abstractmethod
    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn state from meta-train cells (missing cells are ``None`` and are skipped)."""

    @abstractmethod
    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Decode ``cells`` (``B`` of them) into a `ModalityBatch` of size B."""

    @abstractmethod
    def input_info(self) -> dict[str, Any]:
        """What an encoder needs to know about the decoded tensors (e.g. ``channels``)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Options and fitted state, JSON-serialisable."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> ModalityLoader:
        """Rebuild a fitted loader from `state_dict`'s output."""


loaders: Registry[ModalityLoader] = Registry("modality kind")
"""Loader classes by modality kind: ``loaders.create("image", size=32)``."""

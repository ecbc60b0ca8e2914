"""Sequence loader: ``.npy`` / ``.csv`` files of ``T`` steps x ``D`` features -> ``[B, T, D]``.

A ``.npy`` file holds a numeric array ``[T, D]`` (a 1-D ``[T]`` array is ``[T, 1]``); it is
loaded without pickle. A ``.csv`` file holds one step a row, comma-separated numbers; a first
row with any non-numeric cell is a header and skipped. Every sequence of a modality must have
the same ``D``; NaN or infinite values are errors. Sequences longer than ``max_length`` keep
their first ``max_length`` steps; ``lengths`` holds each sample's step count and steps past it
are zeros.

With ``normalize`` (the default) each feature is standardised with its mean and standard
deviation over every step of the meta-train sequences (after the cut to ``max_length``).
Calling `SequenceLoader.decode` before `SequenceLoader.fit` is allowed and uses identity
normalisation (`SequenceLoader.is_fitted` tells the two apart).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._media import (
    DecodeFailure,
    file_not_found,
    in_chunks,
    read_media,
    report_failure,
)
from metamodal.data.loaders._numeric import (
    MAX_INPUT,
    StandardisingState,
    check_count,
    check_normalize,
    is_number,
    mean_and_std,
    warn_identity,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders

SUFFIXES = (".npy", ".csv")
"""File types the sequence loader reads."""

MAX_LENGTH = 1_000_000
"""The largest ``max_length``: steps kept per sequence."""

_CHUNK = 1024  # sequences decoded at once while fitting (bounds memory)
_FIX = "replace it with a valid .npy array [T, D] or .csv of numbers, or leave the cell empty"


def read_sequence_file(path: Path) -> np.ndarray:
    """Read one ``.npy`` or ``.csv`` sequence file as float32 ``[T, D]``.

    Args:
        path: the file.

    Returns:
        float32 ``[T, D]`` with ``T >= 1`` and ``D >= 1``, all values finite. NaN / infinite
        values are located by step (0-based, ``.npy``) or line (1-based, ``.csv``).

    Raises:
        ValueError: the file is unusable; the message says why and where (step / line).
        OSError: the file cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "s.csv"
        >>> _ = path.write_text("x,y\\n1,2\\n3,4\\n")
        >>> read_sequence_file(path).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    suffix = path.suffix.lower()
    lines: list[int] = []
    if suffix == ".npy":
        array = _read_npy(path)
    elif suffix == ".csv":
        array, lines = _read_csv(path)
    else:
        raise ValueError(f"unsupported sequence file type {path.suffix!r} (use .npy or .csv)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"sequence is empty (shape {list(array.shape)})")
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        step, feature = (int(v) for v in np.argwhere(~finite)[0])
        where = f"line {lines[step]}" if suffix == ".csv" else f"step {step}"
        raise ValueError(f"sequence holds NaN or infinite values (first at {where}, "
                         f"feature {feature}; values beyond float32 range count as infinite)")
    return array


def _check_npy_size(path: Path) -> None:
    """Refuse a ``.npy`` file whose header claims more data than the file holds, before
    ``np.load`` allocates it (a 100-byte file may claim hundreds of GiB). Headers of other
    versions than 1.0 and 2.0 are left to ``np.load``."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                return
            shape, _, dtype = read(handle)
        except ValueError:
            return  # np.load says what is wrong
        held = path.stat().st_size - handle.tell()
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > held:
        raise ValueError(f"the .npy header claims shape {list(shape)} of {dtype} "
                         f"({claimed:,} bytes), and the file holds {held:,} bytes of data")


def _read_npy(path: Path) -> np.ndarray:
    _check_npy_size(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"not a numeric .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise ValueError("not a single .npy array")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"array has non-numeric dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"array must be [T] or [T, D], got shape {list(array.shape)}")
    return array


def _read_csv(path: Path) -> tuple[np.ndarray, list[int]]:
    """Numbers of a CSV file ``[T, D]`` and the 1-based file line of each of its ``T`` rows
    (blank lines and a header row are skipped)."""
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    rows, lines = [], []
    for row in reader:
        if any(cell.strip() for cell in row):
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise ValueError("CSV file has no rows")
    header = not all(is_number(cell) for cell in rows[0])
    body, lines = (rows[1:], lines[1:]) if header else (rows, lines)
    width = len(rows[0])
    for line, row in zip(lines, body, strict=True):
        if len(row) != width:
            raise ValueError(f"line {line} has {len(row)} values, expected {width}")
    for line, row in zip(lines, body, strict=True):
        for column, cell in enumerate(row):
            if not is_number(cell):
                raise ValueError(f"line {line}, value {column + 1} is not a number: {cell!r}")
    stripped = [[cell.strip() for cell in row] for row in body]
    return np.array(stripped, dtype=str).astype(np.float64).reshape(len(body), width), lines


@loaders.register("sequence")
class SequenceLoader(StandardisingState, ModalityLoader):
    """Decodes ``.npy`` / ``.csv`` sequence files into float ``[B, T, D]`` with lengths.

    Args:
        max_length: steps kept per sequence (the rest is cut), default 256.
        normalize: standardise each feature with meta-train statistics (default True).

    Fitted state: ``features_`` (``D``, from the meta-train files), and ``mean_`` / ``std_``
    (one float per feature, None without ``normalize``).

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> np.save(root / "a.npy", np.arange(6.0).reshape(3, 2))
        >>> loader = SequenceLoader(normalize=False)
        >>> batch = loader.decode(["a.npy", None], DecodeContext(root, "s.csv", [1, 2], "track"))
        >>> batch.values.shape, batch.lengths.tolist(), batch.present.tolist()
        (torch.Size([2, 3, 2]), [3, 0], [True, False])
    """

    kind: ClassVar[str] = "sequence"

    def __init__(self, *, max_length: int = 256, normalize: bool = True) -> None:
        self.max_length = check_count("sequence", "max_length", max_length, 1, MAX_LENGTH)
        self.normalize = check_normalize("sequence", normalize)
        self.features_: int | None = None
        self._clear_statistics()

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn ``D`` and each feature's mean / std over every meta-train step."""
        features: int | None = None
        first: str | None = None
        total: Tensor | None = None
        squares: Tensor | None = None
        count = 0
        for part, sub in in_chunks(cells, context, _CHUNK):
            arrays = self._read_arrays(part, sub, features, first)
            for cell, array in zip(part, arrays, strict=True):
                if array is None:
                    continue
                if features is None:
                    features, first = array.shape[1], str(cell)
                    total = torch.zeros(features, dtype=torch.float64)
                    squares = torch.zeros(features, dtype=torch.float64)
                assert total is not None and squares is not None
                kept = torch.from_numpy(array[: self.max_length]).to(torch.float64)
                total += kept.sum(dim=0)
                squares += kept.square().sum(dim=0)
                count += kept.shape[0]
        self.features_ = features
        if self.normalize:
            if total is None or squares is None:
                warn_identity("sequences", "sequence", context.column)
                self.mean_, self.std_ = None, None
            else:
                self.mean_, self.std_ = mean_and_std(total, squares, count)
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Sequences float ``[B, T, D]`` (``T`` = longest kept in the batch, at least 1),
        ``lengths`` long ``[B]`` steps (0 when absent), ``present`` bool ``[B]``.

        Missing or unreadable files, NaN / infinite values and a ``D`` different from the
        fitted one (or, before fitting, from the batch's first file) are `DatasetError` naming
        the file, row and column.
        """
        arrays = self._read_arrays(cells, context, self.features_, None)
        lengths = torch.tensor([0 if a is None else min(a.shape[0], self.max_length)
                                for a in arrays], dtype=torch.long)
        present = lengths > 0
        found = next((a.shape[1] for a in arrays if a is not None), None)
        features = self.features_ or found or 1
        longest = int(lengths.max()) if len(cells) else 0
        values = torch.zeros(len(cells), max(1, longest), features)
        for i, array in enumerate(arrays):
            if array is not None:
                values[i, : lengths[i]] = torch.from_numpy(array[: self.max_length])
        if self.normalize and self.mean_ is not None and self.std_ is not None:
            mean = torch.tensor(self.mean_, dtype=torch.float32)
            std = torch.tensor(self.std_, dtype=torch.float32)
            valid = torch.arange(values.shape[1]).view(1, -1, 1) < lengths.view(-1, 1, 1)
            values = (values - mean) / std * valid
        far = ~(values.abs() <= MAX_INPUT)  # NaN counts as far
        for i in torch.nonzero(far.flatten(1).any(1)).flatten().tolist():
            step, feature = (int(v) for v in torch.nonzero(far[i])[0])
            seen = (" once standardised with the meta-train mean and std"
                    if self.normalize and self.mean_ is not None else "")
            report_failure(DecodeFailure(
                f"sequence value at step {step}, feature {feature} is "
                f"{float(values[i, step, feature]):g}{seen}: beyond ±{MAX_INPUT:,.0f}, "
                "which overflows the network's float32 arithmetic",
                fix="write the sequence in the units the model was trained on"), cells[i], i,
                context)
            values[i], lengths[i], present[i] = 0.0, 0, False
        return ModalityBatch(values, present, lengths)

    def input_info(self) -> dict[str, Any]:
        """``{"features": D (None before fit), "max_length": max_length}``."""
        return {"features": self.features_, "max_length": self.max_length}

    def state_dict(self) -> dict[str, Any]:
        """Options and fitted state as JSON-able data."""
        return {
            "kind": self.kind,
            "options": {"max_length": self.max_length, "normalize": self.normalize},
            **self._statistics_state(),
            "features": self.features_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SequenceLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        features = state["features"]
        if features is not None and (not isinstance(features, int) or features < 1):
            raise ValueError(f"features must be a positive count, got {features!r}")
        loader._restore_statistics(state, features)
        loader.features_ = features
        return loader

    # -- decoding -------------------------------------------------------------------------

    def _read_arrays(
        self,
        cells: Sequence[Cell],
        context: DecodeContext,
        features: int | None,
        first: str | None,
    ) -> list[np.ndarray | None]:
        """Each cell's float32 ``[T, D]`` array, or None when absent or reported as a problem.

        ``features`` is the ``D`` every array must have (None: the first array's), ``first``
        the file it came from (None: it was fitted)."""
        arrays: list[np.ndarray | None] = [None] * len(cells)
        for i, cell, array in read_media(cells, context, self._read_file):
            if features is None:
                features, first = array.shape[1], str(cell)
            elif array.shape[1] != features:
                where = f"file {first}" if first is not None else "the meta-train sequences"
                report_failure(DecodeFailure(
                    f"sequence has {array.shape[1]} features per step but {where} "
                    f"has {features}",
                    fix=f"give every sequence of this modality {features} features",
                ), cell, i, context)
                continue
            arrays[i] = array
        return arrays

    @staticmethod
    def _read_file(path: Path, root: Path | str) -> np.ndarray:
        if not path.exists():
            raise file_not_found("sequence", root)
        try:
            return read_sequence_file(path)
        except Exception as exc:  # NumPy / csv raise several types for corrupt files
            raise DecodeFailure(f"cannot read sequence: {exc}", _FIX) from exc

"""Tabular loader: numeric columns of the sample table -> float ``[B, F]``, standardised.

A sample's cell is the list of its ``F`` columns' values (strings, ``None`` when empty). Values
are parsed as floats. A sample lacks the modality only when **all** its columns are empty; a
partly empty row is present and each empty value is imputed with that column's meta-train mean,
which is 0 after standardising. A value that is not a number, or is NaN / infinite, is a
`DatasetError` naming the table file, the row and the exact column.

With ``normalize`` (the default) each column is standardised with its meta-train mean and
(population) standard deviation over the non-empty values; a constant column keeps std 1.
Calling `TabularLoader.decode` before `TabularLoader.fit` is allowed and uses identity
normalisation with 0 imputed (`TabularLoader.is_fitted` tells the two apart).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._numeric import (
    MAX_INPUT,
    StandardisingState,
    check_normalize,
    is_number,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.errors import ConfigError, DatasetError

_MIN_STD = 1e-12


@loaders.register("tabular")
class TabularLoader(StandardisingState, ModalityLoader):
    """Parses numeric columns into standardised float ``[B, F]`` rows.

    Args:
        columns: the ``F`` column names, in cell order (the preprocessor passes the schema's
            ``columns``); used in error messages and to check each cell's length. Default None:
            ``F`` is taken from the first cell and columns are named ``<modality> value k``.
        normalize: standardise each column with meta-train mean / std (default True). Without
            it, empty values are still imputed with the meta-train mean.

    Fitted state: ``features_`` (``F``), ``mean_`` and ``std_`` (one float per column).

    Example:
        >>> ctx = DecodeContext(".", "samples.csv", [1, 2, 3], "measurements")
        >>> loader = TabularLoader(columns=["wingspan_cm", "weight_g"])
        >>> loader.fit([["10", "1"], ["20", "3"], None], ctx)
        >>> batch = loader.decode([["20", None], [None, None], ["10", "1"]], ctx)
        >>> batch.values.tolist(), batch.present.tolist()
        ([[1.0, 0.0], [0.0, 0.0], [-1.0, -1.0]], [True, False, True])
    """

    kind: ClassVar[str] = "tabular"

    def __init__(self, *, columns: Sequence[str] | None = None, normalize: bool = True) -> None:
        if columns is not None and (
            isinstance(columns, str) or not all(isinstance(c, str) for c in columns)
        ):
            raise ConfigError(f"tabular columns must be a list of column names, got {columns!r}",
                              fix='set columns = ["a", "b"]')
        self.columns = None if columns is None else list(columns)
        self.normalize = check_normalize("tabular", normalize)
        self.features_: int | None = None if columns is None else len(columns)
        self._clear_statistics()

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn each column's mean / std over the non-empty meta-train values."""
        values, present = self._parse(cells, context)
        rows = values[present]
        known = ~np.isnan(rows)
        counts = known.sum(axis=0)
        filled = np.where(known, rows, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, filled.sum(axis=0) / counts, 0.0)
            spread = np.where(known, rows - mean, 0.0)
            std = np.sqrt(np.where(counts > 0, np.square(spread).sum(axis=0) / counts, 1.0))
        std = np.where(std < _MIN_STD, 1.0, std)
        if (counts == 0).any():
            empty = [self._column_name(j, context) for j in np.flatnonzero(counts == 0)]
            warnings.warn(f"no meta-train values in tabular columns {empty}; they are imputed "
                          "with 0", stacklevel=2)
        self.features_ = values.shape[1]
        self.mean_ = mean.tolist()
        self.std_ = std.tolist()
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Rows float ``[B, F]`` (empty values imputed, absent rows zeros) and ``present``."""
        values, present = self._parse(cells, context)
        if self.mean_ is not None and self.std_ is not None:
            mean = np.asarray(self.mean_)
            values = np.where(np.isnan(values), mean, values)
            if self.normalize:
                values = (values - mean) / np.asarray(self.std_)
        values = np.where(np.isnan(values) | ~present[:, None], 0.0, values)
        with np.errstate(over="ignore"):
            out = values.astype(np.float32)
        for i, j in zip(*np.nonzero(~(np.abs(out) <= MAX_INPUT)), strict=True):
            context.report(DatasetError(
                f"value is beyond ±{MAX_INPUT:,.0f} once standardised with the meta-train mean "
                "and std, which overflows the network's float32 arithmetic",
                file=context.table_file, row=context.rows[i],
                column=self._column_name(j, context),
                fix="write the value in the units the model was trained on"))
            present[i] = False
        out[~present] = 0.0
        return ModalityBatch(torch.from_numpy(out), torch.from_numpy(present), None)

    def input_info(self) -> dict[str, Any]:
        """``{"features": F}`` (None while unknown: no ``columns`` and not fitted)."""
        return {"features": self.features_}

    def state_dict(self) -> dict[str, Any]:
        """Options and fitted statistics as JSON-able data."""
        return {
            "kind": self.kind,
            "options": {"columns": self.columns, "normalize": self.normalize},
            **self._statistics_state(),
            "features": self.features_,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TabularLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        features = state["features"]
        if features is not None and (not isinstance(features, int) or features < 1):
            raise ValueError(f"features must be a positive count, got {features!r}")
        loader._restore_statistics(state, features)
        loader.features_ = features
        return loader

    # -- parsing --------------------------------------------------------------------------

    def _column_name(self, j: int, context: DecodeContext) -> str:
        if self.columns is not None and j < len(self.columns):
            return self.columns[j]
        return f"{context.column} value {j + 1}"

    def _parse(self, cells: Sequence[Cell], context: DecodeContext) -> tuple[np.ndarray,
                                                                             np.ndarray]:
        """Raw floats ``[B, F]`` (NaN where empty) and ``present`` ``[B]``."""
        width = self.features_
        if width is None:
            width = next((1 if isinstance(c, str) else len(c) for c in cells if c is not None), 0)
        present = np.zeros(len(cells), dtype=bool)
        where: list[tuple[int, int]] = []
        texts: list[str] = []
        for i, cell in enumerate(cells):
            entries = [cell] if isinstance(cell, str) else cell
            if entries is None:
                continue
            if len(entries) != width:
                context.report(DatasetError(
                    f"tabular sample has {len(entries)} values, expected {width}",
                    file=context.table_file, row=context.rows[i], column=context.column,
                    fix="give every sample a value (or an empty cell) for each column",
                ))
                continue
            for j, entry in enumerate(entries):
                if entry is not None and entry.strip():
                    where.append((i, j))
                    texts.append(entry)
                    present[i] = True
        values = np.full((len(cells), width), np.nan)
        if not texts:
            return values, present
        good = np.array([is_number(text) for text in texts], dtype=bool)
        parsed = np.full(len(texts), np.nan)
        parsed[good] = np.array([text.strip() for text in texts], dtype=str)[good].astype(
            np.float64)
        finite = np.isfinite(parsed)
        position = np.asarray(where, dtype=np.int64)
        values[position[:, 0], position[:, 1]] = np.where(good & finite, parsed, np.nan)
        for k in np.flatnonzero(~(good & finite)):
            i, j = where[k]
            problem = "is not a number" if not good[k] else "is NaN or infinite"
            context.report(DatasetError(
                f"value {texts[k]!r} {problem}",
                file=context.table_file, row=context.rows[i],
                column=self._column_name(j, context),
                fix="write a finite number, or leave the cell empty when the value is unknown",
            ))
            present[i] = False
            values[i] = np.nan
        return values, present

"""Samples given in memory, read against a known schema: a list of dicts or a pandas DataFrame
becomes a `MultimodalDataset`, and labels given as a sequence (``y``) are checked.

This is how `metamodal.classifier.FewShotClassifier` takes scikit-learn style input. The
rules:

* **Columns** are the schema's: ``id`` (optional; rows are numbered ``1..N`` without it), the
  label and group columns (ignored when labels come as ``y``), and each modality's column (a
  tabular modality's columns). Any other column is a `ModalityError` naming it: a misspelt
  modality column must not pass silently as a missing modality.
* **Cells** are text, numbers or paths (`str`, `int`, `float`, `bool`, `os.PathLike`, NumPy
  scalars), as in a sample table. Missing is ``None``, an empty string or a key a dict lacks;
  in a DataFrame also pandas' missing markers (NaN, ``pd.NA``, ``NaT``), since pandas stores
  every missing value of a string or float column as NaN. In a list of dicts a float NaN is a
  `DatasetError` naming row and column, like a NaN in a ``.jsonl`` table: it is not silently
  taken as missing.
* **Media paths** (image, audio, sequence files) are relative to ``media_root``, the
  directory the caller names; a path that leads out of it (``../``, an absolute path elsewhere,
  a symbolic link pointing out) is refused when decoded. Without ``media_root`` a media cell is
  a `DatasetError`: no directory is guessed.
* **Rows** are numbered from 1 in the order given (a DataFrame's position, not its index) and
  errors name them; the table's name in messages is ``X (list of dicts)`` or
  ``X (DataFrame)``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from metamodal.data.dataset import (
    ID_COLUMN,
    MultimodalDataset,
    check_table,
    label_problems,
)
from metamodal.data.kinds import modality_kind
from metamodal.data.schema import DatasetSchema
from metamodal.data.table import SampleTable, normalise_cell
from metamodal.errors import ConfigError, DatasetError, ModalityError

Label = str | int
"""A class label given in ``y``: a string or an integer (one type for all samples)."""

_CELL_TYPES = (str, bool, int, float, os.PathLike, np.generic)


def is_dataframe(value: Any) -> bool:
    """True when ``value`` is a pandas DataFrame (without importing pandas).

    Example:
        >>> is_dataframe([{"id": "a"}])
        False
    """
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


RECORDS_SOURCE = "X (list of dicts)"
"""How messages name samples given as a list of dicts (the table they are read as)."""


def records_dataset(
    records: Any,
    schema: DatasetSchema,
    *,
    media_root: str | Path | None = None,
    decoded: Sequence[str] | None = None,
) -> MultimodalDataset:
    """In-memory samples as a dataset with ``schema`` (see the module docstring for the rules).

    Args:
        records: a list (or tuple) of dicts, one per sample, or a pandas DataFrame, one row per
            sample; keys / columns are column names of ``schema``.
        schema: the schema the samples follow (a run's training schema).
        media_root: the directory media paths are relative to; paths never leave it.
        decoded: the modalities that will be decoded (default: all of the schema's); media
            paths of the others are not read, so they need no ``media_root``.

    Raises:
        DatasetError: not a list of dicts or a DataFrame, no samples, a cell of another type,
            a NaN cell in a list of dicts, a duplicate or empty id, a media path without
            ``media_root``, or a ``media_root`` that is not a directory.
        ModalityError: a column that is not one of the schema's.

    Example:
        >>> from metamodal.data.schema import ModalitySpec
        >>> spec = ModalitySpec("note", "text", "note")
        >>> schema = DatasetSchema("toy", "y", modalities={"note": spec})
        >>> ds = records_dataset([{"note": "hello"}, {"note": None}], schema)
        >>> ds.ids, ds.cells("note"), ds.table.file
        (['1', '2'], ['hello', None], 'X (list of dicts)')
        >>> records_dataset([{"note": "hi", "colour": "red"}], schema)
        Traceback (most recent call last):
        ...
        metamodal.errors.ModalityError: X (list of dicts), row 1, column colour: ...
    """
    if is_dataframe(records):
        source = "X (DataFrame)"
        columns, n_rows = _frame_columns(records, source)
    elif isinstance(records, Sequence) and not isinstance(records, str | bytes):
        source = RECORDS_SOURCE
        columns, n_rows = _record_columns(records, source)
    else:
        raise DatasetError(
            f"samples given as {type(records).__name__} cannot be read",
            file="X",
            fix="give a list of dicts (one per sample), a pandas DataFrame, a sample table or "
            "dataset directory path, or a MultimodalDataset",
        )
    _check_known_columns(columns, schema, source)
    if ID_COLUMN not in columns:
        columns = {ID_COLUMN: [str(row) for row in range(1, n_rows + 1)], **columns}
    table = SampleTable(source, columns, n_rows)
    problems = check_table(table, schema, require_label=False, require_group=False,
                           require_modalities=False)
    if problems:
        raise problems[0]
    if media_root is None:
        root = Path(".")
        _refuse_media_cells(table, schema, decoded)
    else:
        if not isinstance(media_root, str | os.PathLike):
            raise ConfigError(f"media_root must be a directory path, got "
                              f"{type(media_root).__name__} {media_root!r}",
                              column="media_root", fix="give the directory that the samples' "
                              "media paths are relative to, e.g. media_root='data'")
        root = Path(media_root)
        if not root.is_dir():
            raise DatasetError("media_root is not a directory", file=root,
                               fix="name the directory that the samples' media paths are "
                               "relative to")
    # paths given in memory never leave the directory the caller named, whatever the
    # training dataset allowed
    return MultimodalDataset(root, replace(schema, allow_outside_paths=False), table)


def checked_labels(values: Any, size: int, *, column: str = "y") -> list[Label]:
    """The labels of ``values``, one per sample, checked: strings or integers, one type for
    all, none empty, NaN or None, no two spellings of one label (`label_problems`);
    `DatasetError` naming the row and ``column`` otherwise.

    Args:
        values: a sequence of labels (a list, tuple, NumPy array or pandas Series).
        size: the number of samples the labels belong to.
        column: the name given in errors (``y``, ``classes``).

    Example:
        >>> checked_labels(np.array([3, 1]), 2)
        [3, 1]
        >>> checked_labels(["heron", float("nan")], 2)
        Traceback (most recent call last):
        ...
        metamodal.errors.DatasetError: row 2, column y: the label is NaN; ...
    """
    fix = "give one label per sample, in the samples' order: strings or integers"
    if isinstance(values, str | bytes | Mapping) or not hasattr(values, "__iter__"):
        raise DatasetError(f"{column} must be a sequence of labels, not "
                           f"{type(values).__name__}", column=column, fix=fix)
    labels = values.tolist() if hasattr(values, "tolist") else list(values)
    if len(labels) != size:
        raise DatasetError(f"{size} samples but {len(labels)} labels", column=column,
                           row=min(size, len(labels)) + 1, fix=fix)
    kind: type | None = None
    for row, label in enumerate(labels, start=1):
        if isinstance(label, np.generic):
            label = labels[row - 1] = label.item()
        if isinstance(label, bool) or not isinstance(label, str | int):
            what = ("NaN" if isinstance(label, float) and math.isnan(label)
                    else "missing" if label is None else f"a {type(label).__name__}")
            raise DatasetError(f"the label is {what}; labels are strings or integers",
                               row=row, column=column, fix=fix)
        if isinstance(label, str) and not label.strip():
            raise DatasetError("empty label", row=row, column=column, fix=fix)
        if kind is None:
            kind = type(label)
        elif type(label) is not kind:
            raise DatasetError(f"labels mix {kind.__name__} and {type(label).__name__}",
                               row=row, column=column, fix="give every label as a string, "
                               "or every label as an integer")
    problems = label_problems(labels, column=column)
    if problems:
        raise problems[0]
    return labels


def _record_columns(records: Sequence[Any], source: str) -> tuple[dict[str, list], int]:
    """Columns of a list of dicts, in order of first appearance; absent keys are missing."""
    columns: dict[str, list[str | None]] = {}
    for row, record in enumerate(records, start=1):
        if not isinstance(record, Mapping):
            raise DatasetError(f"a sample is a {type(record).__name__}, not a dict",
                               file=source, row=row,
                               fix="give one dict per sample: column name -> cell")
        for key, value in record.items():
            if not isinstance(key, str):
                raise DatasetError(f"column name {key!r} is not a string", file=source,
                                   row=row, fix="name columns as the run's dataset does")
            cells = columns.setdefault(key, [None] * (row - 1))
            cells.append(_cell(value, source, row, key, frame=False))
        for cells in columns.values():
            if len(cells) < row:
                cells.append(None)
    return columns, len(records)


def _frame_columns(frame: Any, source: str) -> tuple[dict[str, list], int]:
    """Columns of a DataFrame; pandas' missing markers are missing cells."""
    names = list(frame.columns)
    for name in names:
        if not isinstance(name, str):
            raise DatasetError(f"column name {name!r} is not a string", file=source,
                               fix="name columns as the run's dataset does")
    if len(set(names)) < len(names):
        raise DatasetError("the DataFrame has duplicate column names", file=source,
                           fix="give each column once")
    columns = {
        name: [_cell(value, source, row, name, frame=True)
               for row, value in enumerate(frame[name].tolist(), start=1)]
        for name in names
    }
    return columns, len(frame)


def _cell(value: Any, source: str, row: int, column: str, *, frame: bool) -> str | None:
    """One in-memory cell as ``str`` or ``None`` (missing)."""
    if value is None:
        return None
    if frame and _pandas_missing(value):
        return None
    if not isinstance(value, _CELL_TYPES):
        raise DatasetError(f"the cell holds a {type(value).__name__}", file=source, row=row,
                           column=column, fix="give text, a number, or a media path relative "
                           "to media_root (None for a missing cell)")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, float) and math.isnan(value):
        raise DatasetError("the cell is NaN", file=source, row=row, column=column,
                           fix="give None (or leave the key out) for a missing cell")
    return normalise_cell(value)


def _pandas_missing(value: Any) -> bool:
    pandas = sys.modules.get("pandas")
    if pandas is None or not pandas.api.types.is_scalar(value):
        return False
    return bool(pandas.isna(value))


def _check_known_columns(columns: Mapping[str, list], schema: DatasetSchema,
                         source: str) -> None:
    """A column that is not the schema's is a `ModalityError` naming it and its first row."""
    known = [ID_COLUMN, *schema.label_columns, *([schema.group] if schema.group else [])]
    known += [c for spec in schema.modalities.values() for c in spec.source_columns()]
    for name, cells in columns.items():
        if name not in known:
            first = next((row for row, cell in enumerate(cells, start=1) if cell is not None),
                         None)
            raise ModalityError(
                "not a column of the run's dataset (a modality the model never saw?)",
                file=source, row=first, column=name,
                fix=f"use the columns {', '.join(known)}, or leave this one out")


def _refuse_media_cells(table: SampleTable, schema: DatasetSchema,
                        decoded: Sequence[str] | None) -> None:
    """Without ``media_root`` a media path has no directory to be read from."""
    for spec in schema.modalities.values():
        if not modality_kind(spec.kind).media or (decoded is not None
                                                  and spec.name not in decoded):
            continue
        for column in spec.source_columns():
            cells = table.columns.get(column) or []
            row = next((r for r, cell in enumerate(cells, start=1) if cell is not None), None)
            if row is not None:
                raise DatasetError(
                    f"a {spec.kind} path, but no directory to read it from", file=table.file,
                    row=row, column=column,
                    fix="pass media_root=DIR, the directory the media paths are relative "
                    "to")

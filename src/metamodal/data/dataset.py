"""A multimodal dataset: its schema, its sample table, ids, labels, groups and raw cells.

`load_dataset` reads a dataset directory (``dataset.toml`` + ``samples.*`` + media files) and
validates it; `load_sample_table` reads a support / query table given at prediction time
against a known schema. Nothing is decoded here: `metamodal.data.preprocess` turns the cells
into tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path

from metamodal.data.kinds import modality_kind
from metamodal.data.loaders.base import Cell, DecodeContext
from metamodal.data.loading import build_loader
from metamodal.data.paths import PathRefused, check_regular_file, resolve_inside
from metamodal.data.schema import SCHEMA_FILE, DatasetSchema, ModalitySpec, load_schema
from metamodal.data.splits import SPLITS_FILE
from metamodal.data.table import TABLE_SUFFIXES, SampleTable, read_samples
from metamodal.errors import ConfigError, DatasetError, ModalityError, UnknownNameError
from metamodal.io import sha256_file

ID_COLUMN = "id"
"""The column holding each sample's unique id."""

SAMPLE_FILES = tuple(f"samples{suffix}" for suffix in TABLE_SUFFIXES)
"""Default sample-table names, searched in this order when the schema names none."""


class MultimodalDataset:
    """Samples of a dataset: ids, labels, groups and the raw cells of every modality.

    The constructor does not validate; use `load_dataset` or `load_sample_table`, which do.

    Args:
        root: directory that relative media paths are resolved against.
        schema: the dataset's schema.
        table: the sample table.
        indices: 0-based table rows this dataset holds (default: all, in order).

    Attributes:
        ids: sample ids, one per sample.
        labels: class label per sample; ``None`` only for unlabelled rows of a table read with
            ``load_sample_table(..., require_label=False)``.
        groups: group per sample when the schema declares a group column, else ``None``.
        classes: sorted unique labels.

    Example:
        >>> from metamodal.data.schema import ModalitySpec
        >>> schema = DatasetSchema("toy", "y", modalities={"t": ModalitySpec("t", "text", "t")})
        >>> table = SampleTable("s.csv", {"id": ["a", "b"], "y": ["P", "Q"], "t": ["hi", None]}, 2)
        >>> ds = MultimodalDataset(".", schema, table)
        >>> ds.cells("t"), ds.rows(), ds.classes
        (['hi', None], [1, 2], ['P', 'Q'])
    """

    def __init__(
        self,
        root: str | Path,
        schema: DatasetSchema,
        table: SampleTable,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.root = Path(root)
        self.schema = schema
        self.table = table
        self._indices = list(range(table.n_rows)) if indices is None else list(indices)
        self.ids: list[str] = [cell or "" for cell in self._column(ID_COLUMN)]
        self.labels: list[str | None] = self._column(schema.label)
        self.groups: list[str | None] | None = (
            self._column(schema.group)
            if schema.group is not None and schema.group in table.columns
            else None
        )
        self.classes: list[str] = sorted({label for label in self.labels if label is not None})

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        return (
            f"MultimodalDataset({self.schema.name!r}, samples={len(self)}, "
            f"classes={len(self.classes)}, modalities={list(self.schema.modalities)})"
        )

    @property
    def modalities(self) -> list[str]:
        """Modality names, in schema order."""
        return list(self.schema.modalities)

    def label_values(self, column: str) -> list[str | None]:
        """Each sample's value of the label column ``column`` (one of
        ``schema.label_columns``; the first gives `labels`)."""
        if column not in self.schema.label_columns:
            raise UnknownNameError(
                f"unknown label column {column!r}",
                fix=f"use one of: {', '.join(self.schema.label_columns)}",
            )
        return self._column(column)

    def rows(self) -> list[int]:
        """1-based row of each sample in the sample table (for error messages)."""
        return [index + 1 for index in self._indices]

    def cells(self, modality: str, columns: Sequence[str] | None = None) -> list[Cell]:
        """One raw cell per sample for ``modality``: ``None`` where missing; a tabular
        modality gives the list of its columns' cells (``None`` when all are empty).

        Args:
            modality: the modality's name.
            columns: a tabular modality's columns in the order a fitted loader expects them;
                used when they are the same columns as this dataset's schema lists (in any
                order), so that values are matched by column name, not by position.
        """
        spec = self._spec(modality)
        if spec.columns is None:
            return self._column(str(spec.column))
        names = spec.columns
        if columns is not None and sorted(columns) == sorted(names):
            names = list(columns)
        columns = [self._column(name) for name in names]
        cells: list[Cell] = []
        for values in zip(*columns, strict=True):
            cells.append(None if all(v is None for v in values) else list(values))
        return cells

    def media_files(self) -> set[Path]:
        """The media files the samples' cells name (of every modality whose cells are paths),
        resolved: the files decoding them reads.

        Example:
            >>> schema = DatasetSchema("toy", "y", modalities={
            ...     "photo": ModalitySpec("photo", "image", "photo")})
            >>> table = SampleTable("samples.csv", {"id": ["a", "b"], "y": ["x", "x"],
            ...                                     "photo": ["a.png", None]}, 2)
            >>> [p.name for p in MultimodalDataset(Path("d"), schema, table).media_files()]
            ['a.png']
        """
        return {(self.root / cell).resolve() for name, spec in self.schema.modalities.items()
                if modality_kind(spec.kind).media
                for cell in self.cells(name) if isinstance(cell, str)}

    def context(self, modality: str, problems: list[DatasetError] | None = None) -> DecodeContext:
        """The `DecodeContext` for decoding ``modality``'s cells (rows, column, root)."""
        spec = self._spec(modality)
        return DecodeContext(
            root=self.root,
            table_file=self.table.file,
            rows=self.rows(),
            column=spec.column if spec.column is not None else modality,
            problems=problems,
            allow_outside=self.schema.allow_outside_paths,
            noun=spec.kind,
        )

    def subset(self, indices: Sequence[int]) -> MultimodalDataset:
        """The samples at positions ``indices`` of this dataset, as a new dataset."""
        return MultimodalDataset(
            self.root, self.schema, self.table, [self._indices[i] for i in indices]
        )

    def _spec(self, modality: str) -> ModalitySpec:
        if modality not in self.schema.modalities:
            raise UnknownNameError(
                f"unknown modality {modality!r}",
                fix=f"use one of: {', '.join(self.schema.modalities)}",
            )
        return self.schema.modalities[modality]

    def _column(self, name: str) -> list[str | None]:
        """This dataset's cells of a table column; all ``None`` when the table lacks it."""
        column = self.table.columns.get(name)
        if column is None:
            return [None] * len(self._indices)
        return [column[i] for i in self._indices]


def load_dataset(path: str | Path) -> MultimodalDataset:
    """Read and validate a dataset directory.

    Checks: the schema (see `load_schema`); the sample table (the schema's ``samples`` or the
    first of ``samples.csv|jsonl|parquet``) has at least one row, an ``id`` column with unique
    non-empty ids, the label column with a label in every row, the group column (when
    declared) with a group in every row and one group per class, and every modality column;
    each modality's loader accepts its options. Empty modality cells are missing modalities,
    which is normal. Media files are checked when decoded.

    Args:
        path: the dataset directory (or its ``dataset.toml``).

    Raises:
        DatasetError: the first problem found; ``metamodal inspect`` lists all of them.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "dataset.toml").write_text(
        ...     'label = "y"\\n[modalities.note]\\nkind = "text"\\ncolumn = "note"\\n')
        >>> _ = (d / "samples.csv").write_text("id,y,note\\na,P,hello\\nb,Q,hi\\n")
        >>> ds = load_dataset(d)
        >>> ds.ids, ds.labels, ds.cells("note")
        (['a', 'b'], ['P', 'Q'], ['hello', 'hi'])
    """
    root = dataset_root(path)
    schema = load_schema(root)
    table = read_samples(samples_path(root, schema))
    schema = usable_labels(schema, table, root / SCHEMA_FILE)
    problems = check_table(table, schema, schema_file=root / SCHEMA_FILE)
    if problems:
        raise problems[0]
    for spec in schema.modalities.values():
        build_loader(spec, root / SCHEMA_FILE)
    return MultimodalDataset(root, schema, table)


def load_sample_table(
    path: str | Path, schema: DatasetSchema, require_label: bool = True
) -> MultimodalDataset:
    """Read a support or query table given at prediction time, against a known schema.

    Media paths are relative to the table's directory. A modality column the table lacks is
    treated as missing for every sample (with a warning); a table with none of them is an
    error. The group column is not needed.

    Args:
        path: a ``.csv``, ``.jsonl`` or ``.parquet`` table with an ``id`` column.
        schema: the schema the model was trained with.
        require_label: when False, the label column may be absent or empty (queries).

    Raises:
        DatasetError: the first problem found.

    Example:
        >>> import tempfile
        >>> from metamodal.data.schema import ModalitySpec
        >>> f = Path(tempfile.mkdtemp()) / "query.csv"
        >>> _ = f.write_text("id,note\\nq1,hello\\n")
        >>> spec = ModalitySpec("note", "text", "note")
        >>> schema = DatasetSchema("toy", "y", modalities={"note": spec})
        >>> load_sample_table(f, schema, require_label=False).labels
        [None]
    """
    path = Path(path)
    table = read_samples(path)
    problems = check_table(
        table, schema, require_label=require_label, require_group=False, require_modalities=False
    )
    if problems:
        raise problems[0]
    wanted = [c for spec in schema.modalities.values() for c in spec.source_columns()]
    absent = [c for c in wanted if c not in table.columns]
    if len(absent) == len(wanted):
        raise ModalityError(
            "the table has none of the modality columns",
            file=table.file,
            fix=f"add at least one of: {', '.join(wanted)}",
        )
    if absent:
        warnings.warn(
            f"{table.file}: no column {absent}; those modalities are missing for every sample",
            stacklevel=2,
        )
    return MultimodalDataset(path.parent, schema, table)


def dataset_root(path: str | Path) -> Path:
    """The dataset directory of ``path`` (a directory, or its ``dataset.toml``).

    Example:
        >>> dataset_root("my-dataset").name
        'my-dataset'
    """
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"a dataset directory is a path, not a {type(path).__name__}",
                          column="data", fix="give the dataset directory's path")
    path = Path(path)
    return path.parent if path.name == SCHEMA_FILE and path.is_file() else path


def samples_path(root: Path, schema: DatasetSchema) -> Path:
    """The sample table of a dataset: the schema's ``samples``, else the first default name.

    Raises:
        DatasetError: the named table does not exist, or no default table is there.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = (root / "samples.jsonl").write_text('{"id": "a"}\\n')
        >>> samples_path(root, DatasetSchema("toy", "y")).name
        'samples.jsonl'
    """
    if schema.samples is not None:
        try:
            path = resolve_inside(root, schema.samples, allow_outside=schema.allow_outside_paths)
            check_regular_file(path, "sample table")
        except FileNotFoundError:
            raise DatasetError(
                f"the sample table {schema.samples!r} named by `samples` does not exist",
                file=str(root / SCHEMA_FILE),
                column="samples",
                fix="correct `samples` (a path relative to the dataset directory)",
            ) from None
        except PathRefused as refused:
            raise DatasetError(f"`samples` = {schema.samples[:200]!r}: {refused.message}",
                               file=str(root / SCHEMA_FILE), column="samples",
                               fix=refused.fix) from None
        return path
    for name in SAMPLE_FILES:
        if (root / name).exists():
            return root / name
    raise DatasetError(
        "no sample table found",
        file=str(root),
        fix=f"add one of {', '.join(SAMPLE_FILES)} or set `samples` in {SCHEMA_FILE}",
    )


def dataset_digest(path: str | Path) -> str:
    """A hash of the files that define a dataset directory: ``dataset.toml``, its sample table
    and ``splits.toml`` where there is one. The directory's own path is not part of it (the
    same dataset copied, or mounted elsewhere on another machine, has the same digest); media
    files are not read (one replaced under the same name keeps it).

    Raises:
        DatasetError: no readable ``dataset.toml`` or sample table.

    Example:
        >>> import shutil, tempfile
        >>> root = Path(tempfile.mkdtemp()) / "toy"
        >>> root.mkdir()
        >>> _ = (root / "dataset.toml").write_text(
        ...     'label = "y"\\n[modalities.t]\\nkind = "text"\\ncolumn = "t"\\n')
        >>> _ = (root / "samples.csv").write_text("id,y,t\\na,x,hello\\n")
        >>> copy = shutil.copytree(root, root.parent / "elsewhere")
        >>> dataset_digest(root) == dataset_digest(copy)
        True
        >>> _ = (copy / "samples.csv").write_text("id,y,t\\na,x,bye\\n")
        >>> dataset_digest(root) == dataset_digest(copy)
        False
    """
    root = dataset_root(path)
    digest = hashlib.sha256()
    for role, file in (("schema", root / SCHEMA_FILE),
                       ("samples", samples_path(root, load_schema(root))),
                       ("splits", root / SPLITS_FILE)):
        try:
            check_regular_file(file, role)
            digest.update(f"{role}\0{sha256_file(file)}\0".encode())
        except FileNotFoundError:  # only splits.toml may be missing: the others were read
            pass
        except (PathRefused, OSError) as error:
            reason = error.message if isinstance(error, PathRefused) else error.strerror
            raise DatasetError(f"the {role} file cannot be read ({reason})", file=file,
                               fix=f"make {file.name} a readable regular file") from None
    return digest.hexdigest()


def usable_labels(schema: DatasetSchema, table: SampleTable,
                  schema_file: str | Path) -> DatasetSchema:
    """``schema`` without the further label columns (``labels`` after the first) that the
    sample table lacks, each with a warning naming it: the table stays usable for the main
    label, and training on a dropped task is refused as an unknown task."""
    lacking = [c for c in schema.label_columns[1:] if c not in table.columns]
    for column in lacking:
        warnings.warn(f"{schema_file}: `labels` names the column {column!r}, which the sample "
                      f"table lacks; it is not a task of this dataset (add the column, or "
                      f"remove it from `labels`)", stacklevel=3)
    if not lacking:
        return schema
    kept = [c for c in schema.label_columns if c not in lacking]
    return dataclasses.replace(schema, labels=kept if len(kept) > 1 else [])


def check_table(
    table: SampleTable,
    schema: DatasetSchema,
    *,
    require_label: bool = True,
    require_group: bool = True,
    require_modalities: bool = True,
    schema_file: str | Path = SCHEMA_FILE,
) -> list[DatasetError]:
    """Every problem of a sample table against its schema (empty list when fine).

    Args:
        table: the sample table.
        schema: the dataset schema.
        require_label: the label column must exist with a label in every row.
        require_group: a declared group column must exist, fill every row, and give each
            class one group (splits are made by group, so a class in two groups would leak).
        require_modalities: every modality column must exist.
        schema_file: the ``dataset.toml`` to name when a column its ``labels`` lists is
            not in the table.

    Example:
        >>> schema = DatasetSchema("toy", "y")
        >>> t = SampleTable("s.csv", {"id": ["a", "a"], "y": ["P", None]}, 2)
        >>> [(p.row, p.column, p.message) for p in check_table(t, schema)]
        [(2, 'id', "duplicate id 'a' (also in row 1)"), (2, 'y', 'empty label')]
    """
    problems: list[DatasetError] = []
    file = table.file

    def absent(column: str, what: str) -> bool:
        if column in table.columns:
            return False
        problems.append(
            DatasetError(
                f"{what} column not found",
                file=file,
                column=column,
                fix=f"add the column (the table has: {', '.join(table.columns)})",
            )
        )
        return True

    if table.n_rows == 0:
        problems.append(
            DatasetError(
                "the table has no samples",
                file=file,
                fix="add one row per sample (below the header line of a .csv)",
            )
        )
    if not absent(ID_COLUMN, "the id"):
        first_row: dict[str, int] = {}
        for row, sample_id in enumerate(table.columns[ID_COLUMN], start=1):
            if sample_id is None:
                problems.append(
                    DatasetError(
                        "empty id",
                        file=file,
                        row=row,
                        column=ID_COLUMN,
                        fix="give every sample a unique id",
                    )
                )
            elif has_control_characters(sample_id):
                problems.append(
                    DatasetError(
                        f"id {sample_id!r} holds a control character",
                        file=file,
                        row=row,
                        column=ID_COLUMN,
                        fix="write ids of printable characters",
                    )
                )
            elif sample_id in first_row:
                problems.append(
                    DatasetError(
                        f"duplicate id {sample_id!r} (also in row {first_row[sample_id]})",
                        file=file,
                        row=row,
                        column=ID_COLUMN,
                        fix="give every sample a unique id",
                    )
                )
            else:
                first_row[sample_id] = row
    if require_label and not absent(schema.label, "the label"):
        for row, label in enumerate(table.columns[schema.label], start=1):
            if label is None:
                problems.append(
                    DatasetError(
                        "empty label",
                        file=file,
                        row=row,
                        column=schema.label,
                        fix=f"give every sample its class in column {schema.label}",
                    )
                )
    if require_label:
        for column in schema.label_columns[1:]:
            if column not in table.columns:
                continue  # a further label the table lacks is dropped (`usable_labels`)
            problems += [
                DatasetError("empty label", file=file, row=row, column=column,
                             fix=f"give every sample its class in column {column}")
                for row, value in enumerate(table.columns[column], start=1) if value is None]
        problems += [problem for column in schema.label_columns if column in table.columns
                     for problem in label_problems(table.columns[column], column=column,
                                                   file=file)]
    if require_group and schema.group is not None and not absent(schema.group, "the group"):
        problems += _check_groups(table, schema.label, schema.group)
    if require_modalities:
        for spec in schema.modalities.values():
            for column in spec.source_columns():
                absent(column, f"modality {spec.name!r}:")
        problems += _rows_without_modality(table, schema)
    return problems


def plain_spelling(label: str) -> str:
    """``label`` stripped, in Unicode NFC and without invisible (format) characters such as
    zero-width spaces: the spelling that labels of one class share (`lookalike_labels`).

    Example:
        >>> plain_spelling(" cafe\u0301\u200b ") == "caf\u00e9"
        True
    """
    return "".join(c for c in unicodedata.normalize("NFC", label.strip())
                   if unicodedata.category(c) != "Cf")


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional embeddings, overrides and isolates: they reorder what a terminal or a page
shows after them (the "Trojan source" spoof)."""


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a character that controls how text is shown rather than being
    shown: a control character (NUL, a newline, an escape, ...), a line or paragraph
    separator, or a bidirectional override, embedding or isolate.

    Example:
        >>> [has_control_characters(t) for t in ("cat", "\x1b[2Jcat", "abc\u202edcba")]
        [False, True, True]
    """
    return any(c in _BIDI_CONTROLS or unicodedata.category(c) in ("Cc", "Zl", "Zp")
               for c in text)


def label_problems(labels: Sequence[object], *, column: str,
                   file: str | None = None) -> list[DatasetError]:
    """Labels no class can be named by: one holding a control character (an escape would
    reach the terminal of every verb that prints the classes, a newline break its tables),
    or one that differs from an earlier label only in surrounding spaces, invisible (format)
    characters or Unicode normal form (``"cat"``, ``"cat "``, ``"cat\u200b"``; ``"é"``
    composed or not), which would be two classes of one: a `DatasetError` at the first row
    (1-based) of each such spelling. Labels that are not strings (None, integers) are passed
    over.

    Example:
        >>> [(p.row, p.message[:34]) for p in label_problems(["cat", 1, "cat "], column="y")]
        [(3, "label 'cat ' differs from 'cat' (r")]
    """
    first: dict[str, tuple[str, int]] = {}
    problems, seen = [], set()
    for row, label in enumerate(labels, start=1):
        if not isinstance(label, str) or label in seen:
            continue
        seen.add(label)
        key = plain_spelling(label)
        if not key:
            problems.append(DatasetError(
                f"label {label!r} is only spaces or invisible characters", file=file,
                row=row, column=column, fix="name each class with visible characters"))
            continue
        if key not in first:
            first[key] = (label, row)
            if has_control_characters(label):
                problems.append(DatasetError(
                    f"label {label!r} holds a control character", file=file, row=row,
                    column=column, fix="name each class with printable characters"))
            continue
        other, other_row = first[key]
        problems.append(DatasetError(
            f"label {label!r} differs from {other!r} (row {other_row}) only in surrounding "
            "spaces, invisible characters or Unicode normal form", file=file, row=row,
            column=column,
            fix="spell each class one way (the two would be two classes)"))
    return problems


def _rows_without_modality(table: SampleTable, schema: DatasetSchema) -> list[DatasetError]:
    """A row whose every modality cell is empty cannot be embedded: a problem per row."""
    columns = [c for spec in schema.modalities.values() for c in spec.source_columns()
               if c in table.columns]
    if not columns:
        return []
    return [
        DatasetError("the sample carries no modality (every modality cell is empty)",
                     file=table.file, row=row,
                     fix=f"fill at least one of {', '.join(columns)}, or remove the row")
        for row, values in enumerate(zip(*(table.columns[c] for c in columns), strict=True),
                                     start=1)
        if all(v is None for v in values)
    ]


def _check_groups(table: SampleTable, label: str, group: str) -> list[DatasetError]:
    """Group cells are filled, and each class lies in one group."""
    problems: list[DatasetError] = []
    labels = table.columns.get(label, [None] * table.n_rows)
    seen: dict[str, tuple[str, int]] = {}
    for row, (cls, grp) in enumerate(zip(labels, table.columns[group], strict=True), start=1):
        if grp is None:
            problems.append(
                DatasetError(
                    "empty group",
                    file=table.file,
                    row=row,
                    column=group,
                    fix=f"give every sample the group of its class in column {group}",
                )
            )
        elif has_control_characters(grp):
            problems.append(DatasetError(f"group {grp!r} holds a control character",
                                         file=table.file, row=row, column=group,
                                         fix="name each group with printable characters"))
        elif cls is not None:
            first = seen.setdefault(cls, (grp, row))
            if first[0] != grp:
                problems.append(
                    DatasetError(
                        f"class {cls!r} is in group {grp!r} here but in {first[0]!r} "
                        f"in row {first[1]}",
                        file=table.file,
                        row=row,
                        column=group,
                        fix="give all samples of a class the same group",
                    )
                )
    return problems

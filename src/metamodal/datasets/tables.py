"""The ``table`` importer: a CSV / JSON-lines / Parquet table whose columns the user names by
role (text, numbers, and paths of image, audio, sequence or video files)."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from metamodal.data.kinds import modality_kind
from metamodal.data.paths import PathRefused, resolve_inside
from metamodal.data.table import TABLE_SUFFIXES
from metamodal.datasets._archives import (
    archive_stem,
    safe_member_parts,
    scratch_folder,
    unpack_archive,
)
from metamodal.datasets._output import check_target, holdout_split, staged_directory
from metamodal.datasets._sources import MAX_FILE_BYTES, SourceFile, is_noise
from metamodal.datasets.common import ImportResult, few, write_dataset
from metamodal.datasets.common import progress as progress_bar
from metamodal.errors import ConfigError, DatasetError, LocatedError

__all__ = ["MEDIA_ROLES", "import_table"]

MEDIA_ROLES = ("image", "audio", "sequence", "video")
"""The roles of columns holding file paths: each is a modality kind, whose importer hints
(`metamodal.data.kinds.ModalityKind.suffixes`) say which files it takes."""


def _import_archive(source: Path, out: str | Path, member: str | None, root: str | Path | None,
                    name: str | None, options: dict[str, Any]) -> ImportResult:
    """`import_table` of the table inside the archive ``source``: unpacked beside ``out``,
    imported from there, errors naming ``ARCHIVE:MEMBER``."""
    check_target(Path(out), bool(options["overwrite"]))  # before the archive is unpacked
    table_parts = _inside("table", member) if member is not None else None
    root_parts = _inside("root", str(root)) if root is not None else None
    with ExitStack() as stack:
        folder = scratch_folder(stack, Path(out).absolute().parent)
        try:
            unpack_archive(source, folder, max_file_bytes=options["max_file_bytes"],
                           progress=bool(options["progress"]))
            table = folder.joinpath(*(table_parts or _only_table(folder, source)))
            if not table.is_file():
                raise DatasetError(f"the archive holds no file {member!r}", file=source,
                                   column="table", fix="give the table's path in the archive "
                                   f"({few(_tables(folder), 10) or 'it holds no table'})")
            base = folder.joinpath(*root_parts) if root_parts is not None else None
            return import_table(table, out, root=base, name=name or archive_stem(source),
                                **options)
        except LocatedError as error:
            _name_members(error, folder, source)
            raise


def _inside(key: str, value: str) -> tuple[str, ...]:
    """The path components of ``value``, an option (``table``, ``root``) naming a path
    inside an archive; a `ConfigError` keyed ``key`` for one that leads out of it."""
    try:
        return safe_member_parts(value)
    except DatasetError:
        example = "shop/items.csv" if key == "table" else "shop"
        raise ConfigError(f"{value!r} is not a path inside the archive", column=key,
                          fix=f"give --{key} as a relative path the archive lists, without "
                          f"'..' (e.g. {example})") from None


def _only_table(folder: Path, source: Path) -> tuple[str, ...]:
    """The path components of the table nearest the root of the unpacked archive ``folder``
    (a sequence's ``.csv`` files lie deeper); a `DatasetError` where there is none, or two
    as near."""
    tables = _tables(folder)
    nearest = [t for t in tables if t.count("/") == min(t.count("/") for t in tables)]
    if len(nearest) == 1:
        return tuple(nearest[0].split("/"))
    raise DatasetError(
        f"the archive holds {len(nearest)} tables ({few(nearest, 10)})" if tables
        else f"the archive holds no table ({', '.join(TABLE_SUFFIXES)})",
        file=source, column="table",
        fix="say which with --table PATH (its path in the archive)" if tables
        else "give an archive that holds the table, or the table itself")


def _roles(label: str, group: str | None, id_column: str | None,
           by_role: dict[str, list[str]]) -> dict[str, str]:
    """Column -> its role (``label``, ``group``, ``id`` or a modality's), checked.

    Raises:
        ConfigError: no modality column, a column named twice, a modality column ``id``.
    """
    if not any(by_role.values()):
        raise ConfigError(
            "no modality column named",
            column="text",
            fix="name the columns by role: --text COL, --numeric COL, --image COL, --audio COL "
            "--sequence COL or --video COL (comma-separated lists)",
        )
    roles: dict[str, str] = {}
    singles = {"label": [label], "group": [group] if group else [],
               "id": [id_column] if id_column else []}
    for role, names in {**singles, **by_role}.items():
        for column in names:
            if column in roles:
                raise ConfigError(f"column {column!r} named twice (as {roles[column]} and "
                                  f"{role})", column=column, fix="give each column one role")
            roles[column] = role
    if "id" in roles and roles["id"] != "id":
        raise ConfigError("a modality column may not be named 'id'", column="id",
                          fix="rename that column, or name it as the id column with --id id")
    return roles


def _tables(folder: Path) -> list[str]:
    """The files of a table's type below ``folder`` (not operating-system noise such as
    ``__MACOSX/._items.csv``), as sorted ``/``-paths."""
    found = (p.relative_to(folder) for p in folder.rglob("*")
             if p.suffix.lower() in TABLE_SUFFIXES and p.is_file())
    return sorted(p.as_posix() for p in found if not any(is_noise(part) for part in p.parts))


def _name_members(error: LocatedError, folder: Path, archive: Path) -> None:
    """Let ``error`` name the places inside ``folder`` (an unpacked ``archive``) as
    ``ARCHIVE:MEMBER`` rather than by the temporary folder's paths."""
    def named(text: str) -> str:
        for prefix in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
            text = text.replace(prefix + os.sep, f"{archive}:").replace(prefix, str(archive))
        return text

    error.file = named(error.file) if error.file is not None else None
    error.message = named(error.message)
    error.fix = named(error.fix) if error.fix is not None else None


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return slug or "column"


def _columns(values: Sequence[str] | str | None, role: str) -> list[str]:
    """The column names given for ``role``: a comma-separated string or a list of them."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{role} must name columns (a string or a list of strings), got "
                          f"{values!r}", column=role, fix=f'e.g. {role}="title,summary"')
    return [c.strip() for v in values for c in v.split(",") if c.strip()]


def import_table(
    source: str | Path,
    out: str | Path,
    *,
    label: str,
    id_column: str | None = None,
    group: str | None = None,
    text: Sequence[str] | str | None = None,
    numeric: Sequence[str] | str | None = None,
    image: Sequence[str] | str | None = None,
    audio: Sequence[str] | str | None = None,
    sequence: Sequence[str] | str | None = None,
    video: Sequence[str] | str | None = None,
    root: str | Path | None = None,
    allow_missing_files: bool = False,
    name: str | None = None,
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
    table_in_archive: str | None = None,
) -> ImportResult:
    """Import a table (CSV, JSON lines or Parquet) whose columns the user names by role.

    Each ``text`` column becomes a text modality, each ``image`` / ``audio`` / ``sequence`` /
    ``video`` column a modality of that kind (its files copied to ``OUT/media/COLUMN/...``), and the
    ``numeric`` columns together one tabular modality named ``numeric``. Other columns are left
    out. An empty cell is a missing modality (normal). File paths are relative to ``root``
    (default: the table's folder); a path that leads out of it is refused.

    ``source`` may also be a zip or tar archive holding the table and its files (a dataset as
    it is often published): it is unpacked beside ``out`` for the import (bounded and checked
    as the folder importers' archives are), the table is its table file nearest its root (or
    ``table_in_archive``), ``root`` is a folder inside the archive, and errors name places as
    ``ARCHIVE:MEMBER``.

    Args:
        source: the table (``.csv``, ``.jsonl`` or ``.parquet``; Parquet needs pyarrow), or an
            archive holding it (`metamodal.datasets._archives.ARCHIVE_SUFFIXES`).
        out: the dataset directory to write.
        label: the column holding the class label.
        id_column: the column of unique sample ids (default: ``id`` if the table has one, else
            ``row1``, ``row2``, ...).
        group: a column grouping classes (splits are then made by group).
        text, numeric, image, audio, sequence, video: column names, as lists or
            comma-separated; a media column's files must have its kind's suffixes
            (`metamodal.data.kinds.ModalityKind.suffixes`).
        root: the folder file paths are relative to (default: the table's folder).
        allow_missing_files: a path to a missing file becomes an empty cell (with a warning)
            instead of an error.
        name: the dataset's name (default: the table's file stem).
        val_groups, test_groups: groups (labels without ``group``) held out in ``splits.toml``.
        overwrite: replace an existing dataset at ``out``.
        progress: show a progress bar while copying.
        max_file_bytes: the largest file copied.
        table_in_archive: the table's path inside an archive ``source`` (default: its file of
            a table's type nearest its root).

    Returns:
        an `ImportResult`.

    Raises:
        DatasetError: a named column is absent; an empty or duplicate id; an empty label; a
            number that does not parse; a path out of ``root``, to a missing file or of the
            wrong type; no samples; an archive without one table (or without
            ``table_in_archive``).
        ConfigError: no modality column named, a column named twice, ``out`` not writable.

    Example:
        >>> import tempfile
        >>> src = Path(tempfile.mkdtemp()) / "notes.csv"
        >>> _ = src.write_text("species,note,length\\nfox,red fur,60\\nowl,,30\\n")
        >>> r = import_table(src, src.parent / "ds", label="species", text="note",
        ...                  numeric="length")
        >>> r.samples, r.modalities
        (2, {'note': 'text', 'numeric': 'tabular'})
    """
    from metamodal.data.table import read_samples

    source = Path(source)
    by_role = {role: _columns(value, role) for role, value in (
        ("text", text), ("numeric", numeric), ("image", image), ("audio", audio),
        ("sequence", sequence), ("video", video))}
    _roles(label, group, id_column, by_role)  # before a table (or an archive) is read
    if archive_stem(source) is not None and not source.is_dir():
        options = dict(label=label, id_column=id_column, group=group, text=text,
                       numeric=numeric, image=image, audio=audio, sequence=sequence,
                       video=video, allow_missing_files=allow_missing_files,
                       val_groups=val_groups, test_groups=test_groups, overwrite=overwrite,
                       progress=progress, max_file_bytes=max_file_bytes)
        return _import_archive(source, out, table_in_archive, root, name, options)
    if table_in_archive is not None:
        raise ConfigError("table_in_archive names the table inside an archive, and the source "
                          "is not one", file=source, column="table",
                          fix="leave --table out, or give the archive as the source")
    table = read_samples(source)
    file = str(source)
    if id_column is None and "id" in table.columns:
        id_column = "id"
    roles = _roles(label, group, id_column, by_role)
    for column in roles:
        if column not in table.columns:
            raise DatasetError("column not found", file=file, column=column,
                               fix=f"use one of the table's columns: "
                               f"{few(list(table.columns), 20)}")
    if table.n_rows == 0:
        raise DatasetError("the table has no samples", file=file, fix="add one row per sample")

    if id_column is not None:
        ids = table.column(id_column)
        first: dict[str, int] = {}
        for row, sample_id in enumerate(ids, start=1):
            if sample_id is None:
                raise DatasetError("empty id", file=file, row=row, column=id_column,
                                   fix="give every sample a unique id, or name no id column to "
                                   "number the rows")
            if sample_id in first:
                raise DatasetError(f"duplicate id {sample_id!r} (also in row {first[sample_id]})",
                                   file=file, row=row, column=id_column,
                                   fix="give every sample a unique id")
            first[sample_id] = row
        id_cells: list[str] = [str(i) for i in ids]
    else:
        width = len(str(table.n_rows))
        id_cells = [f"row{r:0{width}d}" for r in range(1, table.n_rows + 1)]
    labels = table.column(label)
    for row, value in enumerate(labels, start=1):
        if value is None:
            raise DatasetError("empty label", file=file, row=row, column=label,
                               fix="give every sample its class, or drop the row")
    groups = table.column(group) if group else None
    if groups is not None:
        owner: dict[str, str] = {}
        for row, (value, lab) in enumerate(zip(groups, labels, strict=True), start=1):
            if value is None:
                raise DatasetError("empty group", file=file, row=row, column=group,
                                   fix="give every sample the group of its class")
            if owner.setdefault(str(lab), value) != value:
                raise DatasetError(f"class {lab!r} is in two groups ({owner[str(lab)]!r} and "
                                   f"{value!r})", file=file, row=row, column=group,
                                   fix="give each class one group")
    for column in by_role["numeric"]:
        for row, value in enumerate(table.column(column), start=1):
            if value is None:
                continue
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DatasetError(f"not a finite number: {value!r}", file=file, row=row,
                                   column=column,
                                   fix="write a number, or leave the cell empty (missing)")

    base = Path(root) if root is not None else source.parent
    if not base.is_dir():
        raise ConfigError("the root of the file paths is not a folder", file=base,
                          column="root", fix="pass --root with the folder the paths start from")
    inside = base.resolve()
    copies: dict[str, tuple[str, Path, int]] = {}  # by destination: a file per column folder
    file_cells: dict[str, list[str | None]] = {}
    missing = 0
    folders: dict[str, str] = {}
    for kind in MEDIA_ROLES:
        suffixes = modality_kind(kind).suffixes
        for column in by_role[kind]:
            folder = _slug(column)
            while folder in folders.values():
                folder += "_"
            folders[column] = folder
            cells: list[str | None] = []
            for row, cell in enumerate(table.column(column), start=1):
                if cell is None:
                    cells.append(None)
                    continue
                try:  # a NUL, an over-long name or path: refused as such, before the OS sees it
                    target = resolve_inside(base, cell, allow_outside=True).resolve()
                    found = target.is_file()
                except PathRefused as refused:
                    raise DatasetError(refused.message, file=file, row=row, column=column,
                                       fix=refused.fix) from None
                except (OSError, RuntimeError) as error:  # RuntimeError: a loop of links
                    raise DatasetError("the path cannot be examined "
                                       f"({getattr(error, 'strerror', None) or error})",
                                       file=file, row=row, column=column,
                                       fix="correct the path") from None
                if not target.is_relative_to(inside):
                    raise DatasetError(
                        f"path {cell!r} leads out of the source folder {inside}",
                        file=file, row=row, column=column,
                        fix="put the file under the table's folder, or pass --root with a "
                        "folder that holds every file")
                if not found:
                    if allow_missing_files:
                        missing += 1
                        cells.append(None)
                        continue
                    raise DatasetError(
                        f"{kind} file not found (paths are relative to {inside})",
                        file=file, row=row, column=column,
                        fix="correct the path, leave the cell empty (a missing modality), or "
                        "pass --allow-missing-files")
                if target.suffix.lower() not in suffixes:
                    raise DatasetError(
                        f"{cell!r} is not {'an' if kind[0] in 'aeiou' else 'a'} {kind} file "
                        f"(type {target.suffix or 'none'})",
                        file=file, row=row, column=column,
                        fix=f"use files of type {', '.join(suffixes)}, or name the "
                        "column with its right role")
                size = target.stat().st_size
                if size > max_file_bytes:
                    raise DatasetError(f"file larger than {max_file_bytes} bytes", file=file,
                                       row=row, column=column, fix="leave the file out")
                relative = target.relative_to(inside).as_posix()
                dest = f"media/{folder}/{relative}"
                copies.setdefault(dest, (dest, target, size))
                cells.append(dest)
            file_cells[column] = cells
    if missing:
        warnings.warn(f"{missing} path(s) to missing files left as empty cells", stacklevel=2)

    header = ["id", label, *([group] if group else [])]
    columns: list[list[str | None]] = [list(id_cells), list(labels)]
    if groups is not None:
        columns.append(list(groups))
    modalities: dict[str, dict[str, Any]] = {}
    for column in by_role["text"]:
        header.append(column)
        columns.append(table.column(column))
        modalities[column] = {"kind": "text", "column": column}
    if by_role["numeric"]:
        header += by_role["numeric"]
        columns += [table.column(c) for c in by_role["numeric"]]
        tabular = "numeric"
        while tabular in modalities or any(tabular in by_role[k] for k in MEDIA_ROLES):
            tabular += "_"
        modalities[tabular] = {"kind": "tabular", "columns": by_role["numeric"]}
    for kind in MEDIA_ROLES:
        for column in by_role[kind]:
            header.append(column)
            columns.append(file_cells[column])
            modalities[column] = {"kind": kind, "column": column}
    rows = [list(row) for row in zip(*columns, strict=True)]
    units = sorted(set(groups) if groups is not None else {str(v) for v in labels})
    splits = holdout_split(units, val_groups, test_groups, what="group" if group else "class")
    schema: dict[str, Any] = {"name": name or source.stem, "label": label}
    if group:
        schema["group"] = group
    schema["samples"] = "samples.csv"
    schema["modalities"] = modalities
    jobs = list(copies.values())
    with staged_directory(out, overwrite) as tmp:
        for dest, target, _ in progress_bar(jobs, progress, "copy files"):
            SourceFile((target.name,), str(target), target.stat().st_size,
                       path=target).copy_to(tmp / dest, max_file_bytes)
        write_dataset(tmp, header, rows, schema, splits)
    left_out = [c for c in table.columns if c not in roles]
    notes = []
    if left_out:
        notes.append(f"columns left out (no role named): {few(left_out, 10)}")
    if missing:
        notes.append(f"{missing} path(s) to missing files left empty")
    return ImportResult(Path(out), len(rows), len(set(labels)),
                        len(set(groups)) if groups is not None else None,
                        {m: spec["kind"] for m, spec in modalities.items()}, notes=notes)

"""Importers for common data layouts: they write a dataset directory in metamodal's format.

``metamodal import LAYOUT SOURCE OUT`` reads data laid out the way users usually keep it and
writes ``OUT/dataset.toml``, ``OUT/samples.csv``, the media files (copied below ``OUT``, so the
dataset stands alone) and, when held-out groups are named, ``OUT/splits.toml``:

- ``imagefolder`` / ``audiofolder``: one folder per class (``SOURCE/CLASS/FILE``), optionally
  with a group level above it (``SOURCE/GROUP/CLASS/FILE``: splits are then made by group), as
  torchvision's ``ImageFolder`` reads them. Files below a class folder at any depth belong to
  it. A class folder holding files of another type is an error (or skipped with
  ``skip_other``).
- ``table``: a CSV / JSON-lines / Parquet table with a label column, where the user names which
  columns are text, numbers, and paths of image, audio or sequence files (relative to the
  table's folder or ``root``; a path leading out of it is refused).
- ``omniglot``: the official Omniglot archives, see `metamodal.datasets.omniglot`.

Every importer reads its source safely (`metamodal.datasets._sources`: no path out of the
source, no symlink out of it, bounded sizes, operating-system noise skipped), builds the whole
dataset in a temporary directory and moves it into place only when complete; a non-empty
``OUT`` is replaced only with ``overwrite`` and only when it holds a dataset. Bad input raises a
`DatasetError` (or `ConfigError` for a bad argument) naming the file, row and column with a fix.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.datasets._output import (
    holdout_split,
    staged_directory,
    write_samples_csv,
    write_schema,
)
from metamodal.datasets._sources import MAX_FILE_BYTES, SourceFile, walk_folder
from metamodal.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""File types an ``imagefolder`` class folder (or an image column) may hold."""

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")
"""File types an ``audiofolder`` class folder (or an audio column) may hold (soundfile's)."""

SEQUENCE_SUFFIXES = (".npy", ".csv")
"""File types a sequence column may name."""

SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES, "sequence": SEQUENCE_SUFFIXES}
MEDIA_FOLDERS = {"image": "images", "audio": "audio", "sequence": "sequences"}

LAYOUTS = ("imagefolder", "audiofolder", "table", "omniglot")
"""Layouts `import_dataset` knows."""


@dataclass
class ImportResult:
    """What an importer wrote.

    Args:
        path: the dataset directory.
        samples: number of samples (rows of ``samples.csv``).
        classes: number of classes.
        groups: number of groups, or ``None`` without a group column.
        modalities: modality name -> kind.
        episodes: the episode file written beside the dataset, if any (Omniglot ``all_runs``).
        notes: what else the user should know (skipped files, extra datasets written).

    Example:
        >>> print(ImportResult(Path("out"), 40, 2, None, {"image": "image"}).summary())
        imported 40 samples of 2 classes into out (modalities: image (image))
    """

    path: Path
    samples: int
    classes: int
    groups: int | None
    modalities: dict[str, str]
    episodes: Path | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The `summary`."""
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the dataset directory, the counts and the modalities."""
        values = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}

    def summary(self) -> str:
        """One paragraph for the command line."""
        groups = f" in {self.groups} groups" if self.groups is not None else ""
        kinds = ", ".join(f"{name} ({kind})" for name, kind in self.modalities.items())
        lines = [f"imported {self.samples} samples of {self.classes} classes{groups} into "
                 f"{self.path} (modalities: {kinds})"]
        if self.episodes is not None:
            lines.append(f"episode file: {self.episodes}")
        lines += self.notes
        return "\n".join(lines)


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in list(items)[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def _progress(items: Sequence[Any], enabled: bool, desc: str) -> Any:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", delay=1.0, leave=False)


def _image_options(image_size: int | None, channels: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"invalid image size {image_size!r}", column="image_size",
                              fix="give a positive number of pixels, e.g. 28")
        options["size"] = image_size
    if channels is not None:
        if channels not in (1, 3):
            raise ConfigError(f"invalid channels {channels!r}", column="channels",
                              fix="use 1 (grayscale) or 3 (RGB)")
        options["channels"] = channels
    return options


# ----------------------------------------------------------------------------- class folders


@dataclass
class _ClassFolder:
    label: str
    group: str | None
    parts: tuple[str, ...]
    files: list[SourceFile] = field(default_factory=list)
    other: list[SourceFile] = field(default_factory=list)


def _class_folders(
    source: Path, files: list[SourceFile], group_level: bool | None
) -> tuple[list[_ClassFolder], bool]:
    """Sort the files of a folder source into class folders; returns them and whether a
    group level was used."""
    loose = [f for f in files if len(f.parts) == 1]
    if loose:
        warnings.warn(f"skipped {len(loose)} file(s) at the top of {source}, outside any class "
                      f"folder: {_few([f.name for f in loose])}", stacklevel=3)
    nested = [f for f in files if len(f.parts) > 1]
    if group_level is None:
        holds_files = {f.parts[0] for f in nested if len(f.parts) == 2}
        tops = sorted({f.parts[0] for f in nested})
        folders_only = [t for t in tops if t not in holds_files]
        if holds_files and folders_only:
            raise DatasetError(
                "some top-level folders hold files (classes), others only folders (groups of "
                f"classes): {_few(sorted(holds_files))} vs {_few(folders_only)}",
                file=source,
                fix="use one level throughout: SOURCE/CLASS/FILE or SOURCE/GROUP/CLASS/FILE, "
                "or say which with --group-level yes|no",
            )
        group_level = bool(tops) and not holds_files
    classes: dict[tuple[str, ...], _ClassFolder] = {}
    for f in nested:
        if group_level:
            if len(f.parts) < 3:
                raise DatasetError(
                    "file in a group folder, outside any class folder",
                    file=f.origin,
                    fix="move it into a class folder (SOURCE/GROUP/CLASS/FILE) or out of SOURCE",
                )
            key, group = f.parts[:2], f.parts[0]
        else:
            key, group = f.parts[:1], None
        folder = classes.get(key)
        if folder is None:
            folder = classes[key] = _ClassFolder(key[-1], group, key)
        folder.files.append(f)
    if group_level:  # class names that repeat across groups are qualified by their group
        names = [c.label for c in classes.values()]
        if len(set(names)) < len(names):
            for c in classes.values():
                c.label = f"{c.group}/{c.label}"
    return list(classes.values()), group_level


def import_folder(
    source: str | Path,
    out: str | Path,
    *,
    kind: str = "image",
    group_level: bool | None = None,
    skip_other: bool = False,
    name: str | None = None,
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    image_size: int | None = None,
    channels: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImportResult:
    """Import one folder per class (``imagefolder`` / ``audiofolder``) as a dataset directory.

    ``SOURCE/CLASS/FILE`` gives the label ``CLASS``; ``SOURCE/GROUP/CLASS/FILE`` gives the label
    ``CLASS`` (``GROUP/CLASS`` when class names repeat across groups) and the group ``GROUP``.
    The level is detected (folders holding files are classes) unless ``group_level`` says.
    Files are copied to ``OUT/images/...`` (or ``OUT/audio/...``) under their relative path,
    which is also the sample's id. Files at the top of ``SOURCE`` and empty class folders are
    skipped with a warning.

    Args:
        source: the folder.
        out: the dataset directory to write (must not exist or be empty, unless
            ``overwrite`` and it holds a dataset).
        kind: ``image`` or ``audio``.
        group_level: True: ``SOURCE/GROUP/CLASS``; False: ``SOURCE/CLASS``; None: detect.
        skip_other: leave out files of other types instead of raising.
        name: the dataset's name (default: the source folder's name).
        val_groups, test_groups: groups (labels, without a group level) to hold out for
            meta-validation and meta-test; given, they are written to ``splits.toml``.
        image_size, channels: image loader options written to ``dataset.toml``.
        overwrite: replace an existing dataset at ``out``.
        progress: show a progress bar while copying.
        max_file_bytes: the largest file copied.

    Returns:
        an `ImportResult`.

    Raises:
        DatasetError: no class folder with files of the kind; a class folder with files of
            other types (without ``skip_other``); mixed levels; an unreadable or too large file.
        ConfigError: ``out`` may not be written; an unknown held-out group.

    Example:
        >>> import tempfile
        >>> src = Path(tempfile.mkdtemp())
        >>> for label in ("cat", "dog"):
        ...     (src / label).mkdir()
        ...     for i in range(3):
        ...         _ = (src / label / f"{i}.png").write_bytes(b"not decoded here")
        >>> result = import_folder(src, Path(tempfile.mkdtemp()) / "pets")
        >>> result.samples, result.classes, (result.path / "images/dog/2.png").is_file()
        (6, 2, True)
    """
    if kind not in ("image", "audio"):
        raise ConfigError(f"unknown kind {kind!r}", column="kind", fix="use image or audio")
    source = Path(source)
    options = _image_options(image_size, channels) if kind == "image" else {}
    files = list(walk_folder(source))
    classes, grouped = _class_folders(source, files, group_level)
    suffixes = SUFFIXES[kind]
    for c in classes:
        c.other = [f for f in c.files if f.suffix not in suffixes]
        c.files = [f for f in c.files if f.suffix in suffixes]
        if c.other and not skip_other:
            types = sorted({f.suffix or "(no suffix)" for f in c.other})
            raise DatasetError(
                f"class folder holds files that are not {kind}s (mixed file types): "
                f"{len(c.other)} of type {', '.join(types)} ({_few([f.name for f in c.other])})",
                file=source.joinpath(*c.parts),
                fix=f"move files that are not {kind}s ({', '.join(suffixes)}) out of the class "
                "folders, or pass --skip-other-files to leave them out",
            )
    skipped = sum(len(c.other) for c in classes)
    empty = [c for c in classes if not c.files]
    if empty:
        warnings.warn(f"skipped {len(empty)} class folder(s) without {kind} files: "
                      f"{_few(['/'.join(c.parts) for c in empty])}", stacklevel=2)
    classes = [c for c in classes if c.files]
    if not classes:
        layout = "SOURCE/GROUP/CLASS/FILE" if grouped else "SOURCE/CLASS/FILE"
        raise DatasetError(
            f"no classes found: no class folder holds {kind} files ({', '.join(suffixes)})",
            file=source,
            fix=f"lay the data out as one folder per class ({layout}), or use "
            "`metamodal import table` for a table of file paths",
        )
    folder = MEDIA_FOLDERS[kind]
    rows: list[list[str | None]] = []
    jobs: list[tuple[SourceFile, tuple[str, ...]]] = []
    for c in classes:
        for f in c.files:
            sample_id = "/".join(f.parts)
            rows.append([sample_id, c.label, *([c.group] if grouped else []),
                         f"{folder}/{sample_id}"])
            jobs.append((f, f.parts))
    units = sorted({c.group for c in classes} if grouped else {c.label for c in classes})
    splits = holdout_split(units, val_groups, test_groups,
                           what="group" if grouped else "class")
    schema: dict[str, Any] = {"name": name or source.resolve().name, "label": "label"}
    if grouped:
        schema["group"] = "group"
    schema["samples"] = "samples.csv"
    schema["modalities"] = {kind: {"kind": kind, "column": kind, **options}}
    header = ["id", "label", *(["group"] if grouped else []), kind]
    with staged_directory(out, overwrite) as tmp:
        for f, parts in _progress(jobs, progress, f"copy {kind}s"):
            f.copy_to(tmp.joinpath(folder, *parts), max_file_bytes)
        _finish(tmp, header, rows, schema, splits)
    notes = [f"skipped {skipped} file(s) of other types"] if skipped else []
    return ImportResult(Path(out), len(rows), len(classes),
                        len({c.group for c in classes}) if grouped else None,
                        {kind: kind}, notes=notes)


def _finish(tmp: Path, header: list[str], rows: list[list[str | None]], schema: dict[str, Any],
            splits: dict[str, list[str]] | None) -> None:
    write_samples_csv(tmp / "samples.csv", header, rows)
    if splits is not None:
        import tomli_w

        (tmp / "splits.toml").write_text(tomli_w.dumps(splits), encoding="utf-8")
    write_schema(tmp / "dataset.toml", schema)


def import_imagefolder(source: str | Path, out: str | Path, **options: Any) -> ImportResult:
    """`import_folder` with ``kind="image"``: one folder of images per class.

    Example:
        >>> import_imagefolder("photos", "photos-ds")  # doctest: +SKIP
    """
    return import_folder(source, out, kind="image", **options)


def import_audiofolder(source: str | Path, out: str | Path, **options: Any) -> ImportResult:
    """`import_folder` with ``kind="audio"``: one folder of WAV / FLAC / OGG files per class.

    Example:
        >>> import_audiofolder("calls", "calls-ds")  # doctest: +SKIP
    """
    return import_folder(source, out, kind="audio", **options)


# ----------------------------------------------------------------------------- tables


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")
    return slug or "column"


def _columns(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
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
    root: str | Path | None = None,
    allow_missing_files: bool = False,
    name: str | None = None,
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    overwrite: bool = False,
    progress: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImportResult:
    """Import a table (CSV, JSON lines or Parquet) whose columns the user names by role.

    Each ``text`` column becomes a text modality, each ``image`` / ``audio`` / ``sequence``
    column a modality of that kind (its files copied to ``OUT/media/COLUMN/...``), and the
    ``numeric`` columns together one tabular modality named ``numeric``. Other columns are left
    out. An empty cell is a missing modality (normal). File paths are relative to ``root``
    (default: the table's folder); a path that leads out of it is refused.

    Args:
        source: the table (``.csv``, ``.jsonl`` or ``.parquet``; Parquet needs pyarrow).
        out: the dataset directory to write.
        label: the column holding the class label.
        id_column: the column of unique sample ids (default: ``id`` if the table has one, else
            ``row1``, ``row2``, ...).
        group: a column grouping classes (splits are then made by group).
        text, numeric, image, audio, sequence: column names, as lists or comma-separated.
        root: the folder file paths are relative to (default: the table's folder).
        allow_missing_files: a path to a missing file becomes an empty cell (with a warning)
            instead of an error.
        name: the dataset's name (default: the table's file stem).
        val_groups, test_groups: groups (labels without ``group``) held out in ``splits.toml``.
        overwrite: replace an existing dataset at ``out``.
        progress: show a progress bar while copying.
        max_file_bytes: the largest file copied.

    Returns:
        an `ImportResult`.

    Raises:
        DatasetError: a named column is absent; an empty or duplicate id; an empty label; a
            number that does not parse; a path out of ``root``, to a missing file or of the
            wrong type; no samples.
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
    table = read_samples(source)
    file = str(source)
    roles: dict[str, str] = {}
    by_role = {"text": _columns(text), "numeric": _columns(numeric), "image": _columns(image),
               "audio": _columns(audio), "sequence": _columns(sequence)}
    if not any(by_role.values()):
        raise ConfigError(
            "no modality column named",
            column="text",
            fix="name the columns by role: --text COL, --numeric COL, --image COL, --audio COL "
            "or --sequence COL (comma-separated lists)",
        )
    if id_column is None and "id" in table.columns:
        id_column = "id"
    singles = {"label": [label], "group": [group] if group else [],
               "id": [id_column] if id_column else []}
    for role, names in {**singles, **by_role}.items():
        for column in names:
            if column in roles:
                raise ConfigError(f"column {column!r} named twice (as {roles[column]} and "
                                  f"{role})", column=column, fix="give each column one role")
            roles[column] = role
            if column not in table.columns:
                raise DatasetError("column not found", file=file, column=column,
                                   fix=f"use one of the table's columns: "
                                   f"{_few(list(table.columns), 20)}")
    if "id" in roles and roles["id"] != "id":
        raise ConfigError("a modality column may not be named 'id'", column="id",
                          fix="rename that column, or name it as the id column with --id id")
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
    copies: dict[Path, tuple[str, Path, int]] = {}
    file_cells: dict[str, list[str | None]] = {}
    missing = 0
    folders: dict[str, str] = {}
    for kind in ("image", "audio", "sequence"):
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
                target = (base / cell).resolve()
                if not target.is_relative_to(inside):
                    raise DatasetError(
                        f"path {cell!r} leads out of the source folder {inside}",
                        file=file, row=row, column=column,
                        fix="put the file under the table's folder, or pass --root with a "
                        "folder that holds every file")
                if not target.is_file():
                    if allow_missing_files:
                        missing += 1
                        cells.append(None)
                        continue
                    raise DatasetError(
                        f"{kind} file not found (paths are relative to {inside})",
                        file=file, row=row, column=column,
                        fix="correct the path, leave the cell empty (a missing modality), or "
                        "pass --allow-missing-files")
                if target.suffix.lower() not in SUFFIXES[kind]:
                    raise DatasetError(
                        f"{cell!r} is not a {kind} file (type {target.suffix or 'none'})",
                        file=file, row=row, column=column,
                        fix=f"use files of type {', '.join(SUFFIXES[kind])}, or name the "
                        "column with its right role")
                size = target.stat().st_size
                if size > max_file_bytes:
                    raise DatasetError(f"file larger than {max_file_bytes} bytes", file=file,
                                       row=row, column=column, fix="leave the file out")
                relative = target.relative_to(inside).as_posix()
                dest = f"media/{folder}/{relative}"
                copies.setdefault(target, (dest, target, size))
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
        while tabular in modalities or tabular in by_role["image"] + by_role["audio"] + \
                by_role["sequence"]:
            tabular += "_"
        modalities[tabular] = {"kind": "tabular", "columns": by_role["numeric"]}
    for kind in ("image", "audio", "sequence"):
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
        for dest, target, _ in _progress(jobs, progress, "copy files"):
            SourceFile((target.name,), str(target), target.stat().st_size,
                       path=target).copy_to(tmp / dest, max_file_bytes)
        _finish(tmp, header, rows, schema, splits)
    left_out = [c for c in table.columns if c not in roles]
    notes = []
    if left_out:
        notes.append(f"columns left out (no role named): {_few(left_out, 10)}")
    if missing:
        notes.append(f"{missing} path(s) to missing files left empty")
    return ImportResult(Path(out), len(rows), len(set(labels)),
                        len(set(groups)) if groups is not None else None,
                        {m: spec["kind"] for m, spec in modalities.items()}, notes=notes)


# ----------------------------------------------------------------------------- dispatch


def _omniglot(source: str | Path, out: str | Path, **options: Any) -> ImportResult:
    from metamodal.datasets.omniglot import import_omniglot

    return import_omniglot(source, out, **options)


_IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "imagefolder": import_imagefolder,
    "audiofolder": import_audiofolder,
    "table": import_table,
    "omniglot": _omniglot,
}


def import_dataset(layout: str, source: str | Path, out: str | Path,
                   **options: Any) -> ImportResult:
    """Import ``source`` laid out as ``layout`` (one of `LAYOUTS`) into the dataset ``out``.

    ``options`` are those of the layout's importer (`import_folder`, `import_table`,
    `metamodal.datasets.omniglot.import_omniglot`).

    Raises:
        ConfigError: an unknown layout.

    Example:
        >>> import_dataset("imagefolder", "photos", "photos-ds")  # doctest: +SKIP
    """
    if layout not in _IMPORTERS:
        raise ConfigError(f"unknown layout {layout!r}", column="layout",
                          fix=f"use one of: {', '.join(LAYOUTS)}")
    return _IMPORTERS[layout](source, out, **options)

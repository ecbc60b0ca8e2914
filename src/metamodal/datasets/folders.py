"""Importers of one folder per class: ``imagefolder``, ``audiofolder``, ``videofolder``.

``SOURCE/CLASS/FILE`` (or ``SOURCE/GROUP/CLASS/FILE``, splits then made by group), as
torchvision's ``ImageFolder`` reads them; ``SOURCE`` is a folder, or a zip or tar archive of
one. Which files a kind takes and where they are copied come from the kind's importer hints
(`metamodal.data.kinds.ModalityKind.suffixes` and ``media_folder``), so any media kind with
hints can be imported this way.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.data.kinds import kinds, modality_kind
from metamodal.data.loaders._media import in_chunks
from metamodal.data.loaders.base import DecodeContext, ModalityLoader
from metamodal.datasets._archives import archive_stem, source_files
from metamodal.datasets._output import check_target, holdout_split, staged_directory
from metamodal.datasets._sources import MAX_FILE_BYTES, SourceFile
from metamodal.datasets.common import ImportResult, few, image_options, write_dataset
from metamodal.datasets.common import progress as progress_bar
from metamodal.errors import ConfigError, DatasetError

__all__ = ["folder_kinds", "import_audiofolder", "import_folder", "import_imagefolder",
           "import_videofolder"]


def folder_kinds() -> list[str]:
    """The kinds `import_folder` can import: media kinds with file suffixes and a media
    folder among their importer hints.

    Example:
        >>> folder_kinds()
        ['audio', 'image', 'sequence', 'video']
    """
    return [name for name in kinds.names()
            if kinds.get(name).media and kinds.get(name).suffixes and kinds.get(name).media_folder]


@dataclass
class _ClassFolder:
    label: str
    group: str | None
    parts: tuple[str, ...]
    files: list[SourceFile] = field(default_factory=list)
    other: list[SourceFile] = field(default_factory=list)


def _folder_of(file: SourceFile, parts: tuple[str, ...]) -> str:
    """Where the class folder ``parts`` holding ``file`` is, as its origin names places: a
    path, or ``archive.zip:top/CLASS`` in an archive (whose top folder may have been taken
    for its root)."""
    return file.origin.rsplit("/", len(file.parts) - len(parts))[0]


def _keep_kind(classes: list[_ClassFolder], kind: str, suffixes: Sequence[str],
               skip_other: bool) -> int:
    """Keep the files of ``kind`` (``suffixes``) in each class folder, the others in its
    ``other``; a `DatasetError` for a folder holding others unless ``skip_other``; a warning
    naming the folders left without files. Returns how many files were left out."""
    for c in classes:
        c.other = [f for f in c.files if f.suffix not in suffixes]
        c.files = [f for f in c.files if f.suffix in suffixes]
        if c.other and not skip_other:
            types = sorted({f.suffix or "(no suffix)" for f in c.other})
            raise DatasetError(
                f"class folder holds files that are not {kind}s (mixed file types): "
                f"{len(c.other)} of type {', '.join(types)} ({few([f.name for f in c.other])})",
                file=_folder_of(c.files[0] if c.files else c.other[0], c.parts),
                fix=f"move files that are not {kind}s ({', '.join(suffixes)}) out of the class "
                "folders, or pass --skip-other-files to leave them out",
            )
    empty = [c for c in classes if not c.files]
    if empty:
        warnings.warn(f"skipped {len(empty)} class folder(s) without {kind} files: "
                      f"{few(['/'.join(c.parts) for c in empty])}", stacklevel=4)
    return sum(len(c.other) for c in classes)


def _source_name(source: Path) -> str:
    """A dataset's default name: its source folder's, or its archive's without the suffix."""
    return (archive_stem(source) if source.is_file() else None) or source.resolve().name


def _class_folders(
    source: Path, files: list[SourceFile], group_level: bool | None
) -> tuple[list[_ClassFolder], bool]:
    """Sort the files of a folder source into class folders; returns them and whether a
    group level was used."""
    loose = [f for f in files if len(f.parts) == 1]
    if loose:
        warnings.warn(f"skipped {len(loose)} file(s) at the top of {source}, outside any class "
                      f"folder: {few([f.name for f in loose])}", stacklevel=3)
    nested = [f for f in files if len(f.parts) > 1]
    if group_level is None:
        holds_files = {f.parts[0] for f in nested if len(f.parts) == 2}
        tops = sorted({f.parts[0] for f in nested})
        folders_only = [t for t in tops if t not in holds_files]
        if holds_files and folders_only:
            raise DatasetError(
                "some top-level folders hold files (classes), others only folders (groups of "
                f"classes): {few(sorted(holds_files))} vs {few(folders_only)}",
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
    loader_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
    skip_bad_files: bool = False,
    keep_top_folder: bool = False,
) -> ImportResult:
    """Import one folder per class (``imagefolder`` / ``audiofolder`` / ``videofolder``) as a
    dataset directory.

    ``SOURCE/CLASS/FILE`` gives the label ``CLASS``; ``SOURCE/GROUP/CLASS/FILE`` gives the label
    ``CLASS`` (``GROUP/CLASS`` when class names repeat across groups) and the group ``GROUP``.
    The level is detected (folders holding files are classes) unless ``group_level`` says.
    Files are copied to the kind's media folder (``OUT/images/...``, ``OUT/audio/...``,
    ``OUT/videos/...``: `ModalityKind.media_folder`) under their relative path, which is also
    the sample's id; the file types taken are the kind's `ModalityKind.suffixes`. Files at the
    top of ``SOURCE`` and empty class folders are skipped with a warning. Every copy is decoded
    once by the kind's loader: a file it cannot read (corrupt, empty, truncated) is an error,
    or left out with ``skip_bad_files``.

    Args:
        source: the folder, or a zip or tar archive of it (`ARCHIVE_SUFFIXES`; an archive
            whose files lie below one folder reads as that folder).
        out: the dataset directory to write (must not exist or be empty, unless
            ``overwrite`` and it holds a dataset).
        kind: a media kind with importer hints (`folder_kinds`): ``image``, ``audio``,
            ``video``, ...
        group_level: True: ``SOURCE/GROUP/CLASS``; False: ``SOURCE/CLASS``; None: detect.
        skip_other: leave out files of other types instead of raising.
        name: the dataset's name (default: the source folder's or archive's name).
        val_groups, test_groups: groups (labels, without a group level) to hold out for
            meta-validation and meta-test; given, they are written to ``splits.toml``.
        image_size, channels: image / video loader options written to ``dataset.toml``
            (for kinds whose `ModalityKind.import_options` take them).
        loader_options: other options of the kind's loader written to ``dataset.toml``
            (e.g. ``{"frames": 16}`` for videos); checked by building the loader.
        overwrite: replace an existing dataset at ``out``.
        progress: show a progress bar while copying.
        max_file_bytes: the largest file copied.
        skip_bad_files: leave out files the kind's loader cannot read instead of raising.
        keep_top_folder: an archive whose files lie below one folder reads as that folder
            unless this is set (then the folder is a class, or a group of classes).

    Returns:
        an `ImportResult`.

    Raises:
        DatasetError: no class folder with files of the kind; a class folder with files of
            other types (without ``skip_other``); mixed levels; an unreadable or too large file;
            a file the kind's loader cannot decode (without ``skip_bad_files``).
        ConfigError: ``out`` may not be written; an unknown held-out group.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> src = Path(tempfile.mkdtemp())
        >>> for label in ("cat", "dog"):
        ...     (src / label).mkdir()
        ...     for i in range(3):
        ...         Image.new("L", (4, 4)).save(src / label / f"{i}.png")
        >>> _ = (src / "dog" / "3.png").write_bytes(b"not an image")
        >>> result = import_folder(src, Path(tempfile.mkdtemp()) / "pets", skip_bad_files=True)
        >>> result.samples, result.classes, (result.path / "images/dog/2.png").is_file()
        (6, 2, True)
        >>> result.notes
        ['skipped 1 file(s) that cannot be read as images']
    """
    known = folder_kinds()
    if kind not in known:
        raise ConfigError(f"unknown kind {kind!r}", column="kind",
                          fix=f"use {', '.join(known[:-1])} or {known[-1]}")
    hints = modality_kind(kind)
    source = Path(source)
    options = ({k: v for k, v in image_options(image_size, channels).items()
                if k in hints.import_options} if hints.import_options else {})
    options.update(loader_options or {})
    if options:
        hints.create_loader(**options)  # a ConfigError names the option the loader refuses
    check_target(Path(out), overwrite)  # before an archive is read
    with ExitStack() as stack:  # an archive open, a tar's scratch folder, until the end
        files, top = source_files(source, stack, scratch=Path(out).absolute().parent,
                                  max_file_bytes=max_file_bytes, keep_top_folder=keep_top_folder,
                                  progress=progress)
        classes, grouped = _class_folders(source, files, group_level)
        skipped = _keep_kind(classes, kind, hints.suffixes, skip_other)
        classes = [c for c in classes if c.files]
        if not classes:
            layout = "SOURCE/GROUP/CLASS/FILE" if grouped else "SOURCE/CLASS/FILE"
            raise DatasetError(
                f"no classes found: no class folder holds {kind} files "
                f"({', '.join(hints.suffixes)})", file=source,
                fix=f"lay the data out as one folder per class ({layout}), or use "
                "`metamodal import table` for a table of file paths",
            )
        folder = str(hints.media_folder)
        jobs = [(c, f) for c in classes for f in c.files]

        def units(kept: list[_ClassFolder]) -> list[str]:
            return sorted({c.group for c in kept} if grouped else {c.label for c in kept})

        what = "group" if grouped else "class"
        holdout_split(units(classes), val_groups, test_groups, what=what)  # before any copy
        schema: dict[str, Any] = {"name": name or _source_name(source), "label": "label"}
        if grouped:
            schema["group"] = "group"
        schema["samples"] = "samples.csv"
        schema["modalities"] = {kind: {"kind": kind, "column": kind, **options}}
        header = ["id", "label", *(["group"] if grouped else []), kind]
        with staged_directory(out, overwrite) as tmp:
            for _, f in progress_bar(jobs, progress, f"copy {kind}s"):
                f.copy_to(tmp.joinpath(folder, *f.parts), max_file_bytes)
            cells = [f"{folder}/{'/'.join(f.parts)}" for _, f in jobs]
            bad = _undecodable(tmp, cells, hints.create_loader(**options), kind, progress)
            if bad and not skip_bad_files:
                first = min(bad)
                origin = jobs[first][1].origin
                said = bad[first].message.replace(str(tmp / cells[first]), origin)  # not the copy
                raise DatasetError(
                    f"{len(bad)} file(s) cannot be read as {kind}s "
                    f"({few([jobs[k][1].origin for k in sorted(bad)])}); the first: {said}",
                    file=origin,
                    fix="replace or remove them, or pass --skip-bad-files to leave them out")
            for k in bad:
                tmp.joinpath(folder, *jobs[k][1].parts).unlink()
            jobs = [job for k, job in enumerate(jobs) if k not in bad]
            kept = list({id(c): c for c, _ in jobs}.values())
            if not kept:
                raise DatasetError(f"no file can be read as {kind}s", file=source,
                                   fix=f"check that the files are {kind}s")
            rows = [["/".join(f.parts), c.label, *([c.group] if grouped else []),
                     f"{folder}/{'/'.join(f.parts)}"] for c, f in jobs]
            splits = holdout_split(units(kept), val_groups, test_groups, what=what)
            write_dataset(tmp, header, rows, schema, splits)
        notes = [f"skipped {skipped} file(s) of other types"] if skipped else []
        if top is not None:
            notes.insert(0, f"read the archive's top folder {top}/ as its root "
                            "(--keep-top-folder keeps it)")
        if bad:
            notes.append(f"skipped {len(bad)} file(s) that cannot be read as {kind}s")
        return ImportResult(Path(out), len(rows), len(kept),
                            len({c.group for c in kept}) if grouped else None,
                            {kind: kind}, notes=notes)


CHECK_CHUNK = 256
"""Files decoded at a time when an import checks that its copies can be read."""


def _undecodable(root: Path, cells: list[str], loader: ModalityLoader, kind: str,
                 progress: bool) -> dict[int, DatasetError]:
    """The files among ``cells`` (paths below ``root``) that ``loader`` cannot decode: their
    position -> the loader's error, decoded `CHECK_CHUNK` at a time."""
    problems: list[DatasetError] = []
    context = DecodeContext(root, "", list(range(len(cells))), kind, problems, noun=kind)
    chunks = list(in_chunks(cells, context, CHECK_CHUNK))
    for part, sub in progress_bar(chunks, progress, f"check {kind}s"):
        loader.decode(part, sub)
    return {int(problem.row): problem for problem in problems}


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


def import_videofolder(source: str | Path, out: str | Path, *, frames: int | None = None,
                       **options: Any) -> ImportResult:
    """`import_folder` with ``kind="video"``: one folder of MP4 / WebM / AVI / MKV / MOV ...
    files per class.

    Args:
        source, out: as `import_folder`.
        frames: frames the video loader samples per video (written to ``dataset.toml``;
            default: the loader's, 8).
        **options: the other options of `import_folder` (``image_size`` and ``channels``
            set the frames' size and colour).

    Example:
        >>> import_videofolder("clips", "clips-ds", frames=16)  # doctest: +SKIP
    """
    extra = dict(options.pop("loader_options", None) or {})
    if frames is not None:
        extra["frames"] = frames
    return import_folder(source, out, kind="video", loader_options=extra, **options)

"""Safe reading of import sources' files: folders (and what archives hold, `_archives`),
never a path out of them.

Importers see a source as a list of `SourceFile` objects, each with safe path components
relative to the source's root, whether the source is a folder on disk or an archive
(`metamodal.datasets._archives`). The rules that keep an import inside its source:

- a folder is walked without following directory symlinks; a file symlink is followed only when
  its target lies inside the source; others are skipped with a warning;
- every file is bounded in size (the bound is checked while reading, not taken from a
  header);
- a file name that is not valid UTF-8 is refused;
- operating-system noise is skipped: ``__MACOSX/``, ``.DS_Store``, AppleDouble ``._*`` files,
  ``Thumbs.db``, ``desktop.ini`` and other hidden (dot) files.
"""

from __future__ import annotations

import errno
import lzma
import os
import shutil
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from metamodal.errors import DatasetError, OutputError

MAX_FILE_BYTES = 1 << 31
"""Largest single file an importer reads or copies (2 GiB)."""

MAX_DEPTH = 64
"""Deepest folder nesting walked below a source root."""

_NOISE_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_COPY_CHUNK = 1 << 20


def is_noise(name: str) -> bool:
    """Whether a file or folder name is operating-system noise (skipped by every importer).

    Example:
        >>> [is_noise(n) for n in ["__MACOSX", ".DS_Store", "._0108_01.png", "0108_01.png"]]
        [True, True, True, False]
    """
    return name in _NOISE_NAMES or name.startswith(".")


def check_utf8(name: str, where: str | Path | None) -> None:
    """Refuse a file name that is not valid UTF-8 (the operating system hands such names over
    with surrogates, which no table can hold).

    Raises:
        DatasetError: naming ``where`` (the folder or archive) and the name, escaped.

    Example:
        >>> check_utf8("caf\u00e9.png", "photos")
        >>> check_utf8(os.fsdecode(b"caf\\xe9.png"), "photos")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metamodal.errors.DatasetError: photos: file name 'caf\\udce9.png' is not valid UTF-8 ...
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DatasetError(f"file name {name!r} is not valid UTF-8", file=where,
                           fix="rename it (in UTF-8), or leave it out of the source") from None


@dataclass(frozen=True)
class SourceFile:
    """One file of an import source: a file in a folder, or a member of a zip archive.

    Args:
        parts: path components relative to the source's root (safe: no ``..``, not absolute).
        origin: where it comes from, for messages (a path, or ``archive.zip:member``).
        size: size in bytes (for a zip member: as its header says; reads check it).
        path: the file on disk (folder sources).
        archive: the open archive (zip sources).
        member: the member's name in the archive (zip sources).
    """

    parts: tuple[str, ...]
    origin: str
    size: int
    path: Path | None = None
    archive: zipfile.ZipFile | None = None
    member: str | None = None

    @property
    def name(self) -> str:
        """The file name (last component)."""
        return self.parts[-1]

    @property
    def suffix(self) -> str:
        """The lower-case suffix, e.g. ``.png``."""
        return PurePosixPath(self.name).suffix.lower()

    @property
    def stem(self) -> str:
        """The file name without its suffix."""
        return PurePosixPath(self.name).stem

    def _too_big(self, limit: int) -> DatasetError:
        return DatasetError(
            f"file larger than the import limit of {limit} bytes",
            file=self.origin,
            fix="leave the file out of the source, or raise max_file_bytes",
        )

    def read_bytes(self, limit: int = MAX_FILE_BYTES) -> bytes:
        """The whole content, at most ``limit`` bytes (else a `DatasetError`)."""
        if self.size > limit:
            raise self._too_big(limit)
        try:
            if self.archive is not None:
                with self.archive.open(str(self.member)) as handle:
                    data = handle.read(limit + 1)
            else:
                with open(str(self.path), "rb") as handle:
                    data = handle.read(limit + 1)
        except READ_ERRORS as err:
            raise self._unreadable(err) from None
        if len(data) > limit:
            raise self._too_big(limit)
        return data

    def copy_to(self, dest: Path, limit: int = MAX_FILE_BYTES) -> None:
        """Copy the content to ``dest`` (parents created), at most ``limit`` bytes.

        Raises:
            DatasetError: the file is too large, unreadable, or has the name of a folder.
            OutputError: ``dest`` cannot be written (a full disk, no permission).
        """
        if self.size > limit:
            raise self._too_big(limit)
        make_parent(dest, self.origin)
        try:
            if self.archive is None:
                try:
                    shutil.copyfile(str(self.path), dest)
                except OSError as err:
                    if err.errno in _WRITE_ERRNOS:
                        raise unwritable(dest, err) from None
                    raise
                if dest.stat().st_size > limit:  # it grew while we looked
                    dest.unlink()
                    raise self._too_big(limit)
                return
            with self.archive.open(str(self.member)) as src:
                copy_bounded(src, dest, limit, self._too_big)
        except READ_ERRORS as err:
            raise self._unreadable(err) from None

    def _unreadable(self, err: BaseException) -> DatasetError:
        if isinstance(err, NotImplementedError):  # zipfile: Deflate64, Implode, ...
            return DatasetError(f"cannot read file: {err}", file=self.origin,
                                fix="pack the archive again with the usual compression "
                                "(deflate: `zip -r`, or a tar archive)")
        return DatasetError(f"cannot read file: {err}", file=self.origin,
                            fix="check that the file (or archive) is intact")


READ_ERRORS = (OSError, zipfile.BadZipFile, RuntimeError, EOFError, zlib.error,
                lzma.LZMAError)
"""What reading a file or an archive member raises when it is damaged (zipfile raises
``NotImplementedError``, a ``RuntimeError``, for a compression it lacks)."""

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EFBIG}
"""Errors of writing a copy: the output's fault, not the source's."""


def unwritable(dest: Path, err: OSError) -> OutputError:
    """The `OutputError` of a copy that cannot be written."""
    return OutputError(
        f"cannot write ({err.strerror or err})", file=dest,
        fix="free space (or get permission) where the dataset is written: an import needs "
        "room for a copy of every file, and an unpacked archive's files twice while it runs")


def make_parent(dest: Path, origin: str) -> None:
    """Create ``dest``'s folders; a `DatasetError` naming ``origin`` where a file of the source
    has the name of a folder there (or the reverse), or the path is too long; an
    `OutputError` where the folders cannot be written."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder of that name exists", str(dest))
    except OSError as err:
        if err.errno in _WRITE_ERRNOS:
            raise unwritable(dest.parent, err) from None
        raise DatasetError(
            f"cannot be written to the output ({err.strerror}): a file of the source has "
            "the name of a folder there, or the path is too long", file=origin,
            fix="rename the file or leave it out of the source") from None


def copy_bounded(src: BinaryIO, dest: Path, limit: int,
                  too_big: Callable[[int], DatasetError]) -> None:
    """Copy the stream ``src`` to the file ``dest``, refusing more than ``limit`` bytes; what
    reading raises propagates, an error of writing is an `OutputError`."""
    written = 0
    try:
        out = open(dest, "wb")  # noqa: SIM115 - closed below, its errors told apart
    except OSError as err:
        raise unwritable(dest, err) from None
    try:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise too_big(limit)
            try:
                out.write(chunk)
            except OSError as err:
                raise unwritable(dest, err) from None
    finally:
        try:
            out.close()
        except OSError as err:
            raise unwritable(dest, err) from None


def walk_folder(root: str | Path, *, max_depth: int = MAX_DEPTH) -> Iterator[SourceFile]:
    """Every regular file below ``root``, in sorted order, never leaving ``root``.

    Directory symlinks are never followed; file symlinks only when their target lies inside
    ``root``; noise files (`is_noise`) are skipped. Skipped links are reported in one warning
    at the end.

    Raises:
        DatasetError: ``root`` is not a readable directory, nests deeper than ``max_depth``, or
            holds a name that is not valid UTF-8.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "cat").mkdir(); _ = (root / "cat" / "a.png").write_bytes(b"x")
        >>> _ = (root / ".DS_Store").write_bytes(b"")
        >>> [f.parts for f in walk_folder(root)]
        [('cat', 'a.png')]
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("not a directory", file=root, fix="give an existing folder")
    inside = root.resolve()
    skipped: list[str] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> Iterator[SourceFile]:
        if len(parts) > max_depth:
            raise DatasetError(f"folders nest deeper than {max_depth} levels", file=folder,
                               fix="flatten the source folder")
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            raise DatasetError(f"cannot list folder: {err}", file=folder,
                               fix="check the folder's permissions") from None
        for entry in entries:
            if is_noise(entry.name):
                continue
            check_utf8(entry.name, folder)
            path = Path(entry.path)
            here = (*parts, entry.name)
            if entry.is_symlink():
                try:
                    target = path.resolve()
                except (OSError, RuntimeError):  # a loop of links
                    target = path
                if target.is_dir() or not target.is_file() or not target.is_relative_to(inside):
                    skipped.append(str(path))
                    continue
                yield SourceFile(here, str(path), target.stat().st_size, path=target)
            elif entry.is_dir(follow_symlinks=False):
                yield from walk(path, here)
            elif entry.is_file(follow_symlinks=False):
                yield SourceFile(here, str(path), entry.stat(follow_symlinks=False).st_size,
                                 path=path)

    yield from walk(root, ())
    if skipped:
        warnings.warn(
            f"skipped {len(skipped)} symlink(s) that lead out of {root}, to a folder or nowhere: "
            + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )

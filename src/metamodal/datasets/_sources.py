"""Safe reading of import sources: folders and zip archives, never a path out of them.

Importers see a source as a list of `SourceFile` objects, each with safe path components
relative to the source's root, whether the source is a folder on disk or a zip archive read in
place. The rules that keep an import inside its source:

- a folder is walked without following directory symlinks; a file symlink is followed only when
  its target lies inside the source; others are skipped with a warning;
- a zip member whose name is absolute, holds a ``..`` component, a backslash, a drive letter or a
  NUL is rejected (a "zip slip"); symlink members are skipped;
- every file is bounded in size (the bound is checked while reading, not taken from the
  archive's header), and so is the total of an archive;
- operating-system noise is skipped: ``__MACOSX/``, ``.DS_Store``, AppleDouble ``._*`` files,
  ``Thumbs.db``, ``desktop.ini`` and other hidden (dot) files.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metamodal.errors import DatasetError
from metamodal.io import publish_directory

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 31
"""Largest single file an importer reads or copies (2 GiB)."""

MAX_ARCHIVE_BYTES = 1 << 35
"""Largest total uncompressed size of one archive (32 GiB)."""

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


def safe_member_parts(name: str, archive: str | Path | None = None) -> tuple[str, ...]:
    """The path components of a zip member name, refusing any that could leave the archive.

    Empty and ``.`` components are dropped (``a//./b`` is ``a/b``).

    Raises:
        DatasetError: the name is absolute, has a drive letter, a ``..`` component, a
            backslash or a NUL character.

    Example:
        >>> safe_member_parts("images/Greek//./a.png")
        ('images', 'Greek', 'a.png')
        >>> safe_member_parts("../../etc/passwd")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metamodal.errors.DatasetError: unsafe archive member name '../../etc/passwd' ...
    """
    bad = (
        name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or (len(name) >= 2 and name[1] == ":")
        or any(part == ".." for part in name.split("/"))
    )
    if bad:
        raise DatasetError(
            f"unsafe archive member name {name!r} (absolute, or leading out of the archive)",
            file=archive,
            fix="use an archive whose members are relative paths without '..'; refusing to "
            "extract it",
        )
    return tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))


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
        except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
            raise DatasetError(f"cannot read file: {err}", file=self.origin,
                               fix="check that the file (or archive) is intact") from None
        if len(data) > limit:
            raise self._too_big(limit)
        return data

    def copy_to(self, dest: Path, limit: int = MAX_FILE_BYTES) -> None:
        """Copy the content to ``dest`` (parents created), at most ``limit`` bytes."""
        if self.size > limit:
            raise self._too_big(limit)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder of that name exists", str(dest))
        except OSError as err:  # a member that is a file and a folder, a name too long
            raise DatasetError(
                f"cannot be written to the output ({err.strerror}): a file of the source has "
                "the name of a folder there, or the path is too long", file=self.origin,
                fix="rename the file or leave it out of the source") from None
        try:
            if self.archive is None:
                shutil.copyfile(str(self.path), dest)
                if dest.stat().st_size > limit:  # it grew while we looked
                    dest.unlink()
                    raise self._too_big(limit)
                return
            written = 0
            with self.archive.open(str(self.member)) as src, open(dest, "wb") as out:
                while chunk := src.read(_COPY_CHUNK):
                    written += len(chunk)
                    if written > limit:
                        raise self._too_big(limit)
                    out.write(chunk)
        except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
            raise DatasetError(f"cannot read file: {err}", file=self.origin,
                               fix="check that the file (or archive) is intact") from None


def walk_folder(root: str | Path, *, max_depth: int = MAX_DEPTH) -> Iterator[SourceFile]:
    """Every regular file below ``root``, in sorted order, never leaving ``root``.

    Directory symlinks are never followed; file symlinks only when their target lies inside
    ``root``; noise files (`is_noise`) are skipped. Skipped links are reported in one warning
    at the end.

    Raises:
        DatasetError: ``root`` is not a readable directory, or nests deeper than ``max_depth``.

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
            path = Path(entry.path)
            here = (*parts, entry.name)
            if entry.is_symlink():
                target = path.resolve()
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
            f"skipped {len(skipped)} symlink(s) that lead out of {root} or to a folder: "
            + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
            stacklevel=2,
        )


def open_zip(path: str | Path) -> zipfile.ZipFile:
    """Open a zip archive, or raise a `DatasetError` naming it."""
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise DatasetError(f"not a readable zip archive: {err}", file=path,
                           fix="download the archive again (it may be incomplete)") from None


def zip_files(
    archive: zipfile.ZipFile,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
) -> list[SourceFile]:
    """Every regular member of an open zip archive, in name order, checked for safety.

    Noise members (`is_noise` on any component) and symlink members are skipped.

    Raises:
        DatasetError: a member has an unsafe name (`safe_member_parts`), is encrypted, is
            larger than ``max_file_bytes``, or the total exceeds ``max_total_bytes``.

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> with zipfile.ZipFile(buffer, "w") as z:
        ...     z.writestr("set/a/b.png", b"x"); z.writestr("__MACOSX/set/._b.png", b"")
        >>> [f.parts for f in zip_files(zipfile.ZipFile(buffer))]
        [('set', 'a', 'b.png')]
    """
    label = archive.filename or "archive"
    files: list[SourceFile] = []
    total = 0
    symlinks = 0
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        parts = safe_member_parts(info.filename, label)
        if info.is_dir() or not parts or any(is_noise(p) for p in parts):
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            symlinks += 1
            continue
        origin = f"{label}:{info.filename}"
        if info.flag_bits & 0x1:
            raise DatasetError("encrypted archive member", file=origin,
                               fix="use an archive without a password")
        if info.file_size > max_file_bytes:
            raise DatasetError(f"member larger than the import limit of {max_file_bytes} bytes",
                               file=origin, fix="leave it out of the archive")
        total += info.file_size
        if total > max_total_bytes:
            raise DatasetError(
                f"archive holds more than {max_total_bytes} bytes uncompressed",
                file=label, fix="split the archive, or raise max_total_bytes",
            )
        files.append(SourceFile(parts, origin, info.file_size, archive=archive,
                                member=info.filename))
    if symlinks:
        warnings.warn(f"skipped {symlinks} symlink member(s) of {label}", stacklevel=2)
    return files


def extract_zip(
    path: str | Path,
    dest: str | Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
) -> Path:
    """Unpack a zip archive into the new directory ``dest``, safely and atomically.

    Members are written below ``dest`` only (see `zip_files`: unsafe names are refused, noise
    and symlinks skipped, sizes bounded), into a temporary directory renamed to ``dest`` once
    complete. When the archive holds a single top-level folder, that folder becomes ``dest``
    (``images_background.zip`` -> ``dest/Alphabet/...``, not ``dest/images_background/...``).

    Raises:
        DatasetError: the archive is unreadable or unsafe; ``dest`` already exists.

    Example:
        >>> import io, tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "a.zip", "w") as z:
        ...     z.writestr("a/x/1.txt", "hi")
        >>> (extract_zip(tmp / "a.zip", tmp / "a") / "x" / "1.txt").read_text()
        'hi'
    """
    dest = Path(dest)
    if dest.exists():
        raise DatasetError("already exists", file=dest, fix="remove it or extract elsewhere")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open_zip(path) as archive:
        files = zip_files(archive, max_file_bytes=max_file_bytes,
                          max_total_bytes=max_total_bytes)
        tops = {f.parts[0] for f in files}
        strip = len(tops) == 1 and all(len(f.parts) > 1 for f in files)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for f in files:
                f.copy_to(tmp.joinpath(*(f.parts[1:] if strip else f.parts)), max_file_bytes)
            publish_directory(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("unpacked %s (%d files) into %s", path, len(files), dest)
    return dest

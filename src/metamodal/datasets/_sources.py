"""Safe reading of import sources: folders, zip and tar archives, never a path out of them.

Importers see a source as a list of `SourceFile` objects, each with safe path components
relative to the source's root, whether the source is a folder on disk, a zip archive read in
place or a tar archive (plain, gzip, bzip2 or xz) unpacked in one pass into a scratch folder
(`source_files`). The rules that keep an import inside its source:

- a folder is walked without following directory symlinks; a file symlink is followed only when
  its target lies inside the source; others are skipped with a warning;
- an archive member whose name is absolute, holds a ``..`` component, a backslash, a drive
  letter or a NUL is rejected (a "zip slip"); symlink, hard-link and device members are
  skipped;
- every file is bounded in size (the bound is checked while reading, not taken from the
  archive's header), and so is the total of an archive;
- operating-system noise is skipped: ``__MACOSX/``, ``.DS_Store``, AppleDouble ``._*`` files,
  ``Thumbs.db``, ``desktop.ini`` and other hidden (dot) files.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from metamodal.errors import DatasetError
from metamodal.io import publish_directory

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 31
"""Largest single file an importer reads or copies (2 GiB)."""

MAX_ARCHIVE_BYTES = 1 << 35
"""Largest total uncompressed size of one archive (32 GiB)."""

MAX_DEPTH = 64
"""Deepest folder nesting walked below a source root."""

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
"""File names read as tar archives (compression detected from the content)."""

ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)
"""File names `source_files` reads as archives."""

_NOISE_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
_COPY_CHUNK = 1 << 20
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


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
        _make_parent(dest, self.origin)
        try:
            if self.archive is None:
                shutil.copyfile(str(self.path), dest)
                if dest.stat().st_size > limit:  # it grew while we looked
                    dest.unlink()
                    raise self._too_big(limit)
                return
            with self.archive.open(str(self.member)) as src:
                _copy_bounded(src, dest, limit, self._too_big)
        except (OSError, zipfile.BadZipFile, RuntimeError, EOFError) as err:
            raise DatasetError(f"cannot read file: {err}", file=self.origin,
                               fix="check that the file (or archive) is intact") from None


def _make_parent(dest: Path, origin: str) -> None:
    """Create ``dest``'s folders; a `DatasetError` naming ``origin`` where a file of the source
    has the name of a folder there (or the reverse), or the path is too long."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.is_dir():
            raise IsADirectoryError(errno.EISDIR, "a folder of that name exists", str(dest))
    except OSError as err:
        raise DatasetError(
            f"cannot be written to the output ({err.strerror}): a file of the source has "
            "the name of a folder there, or the path is too long", file=origin,
            fix="rename the file or leave it out of the source") from None


def _copy_bounded(src: BinaryIO, dest: Path, limit: int,
                  too_big: Callable[[int], DatasetError]) -> None:
    """Copy the stream ``src`` to the file ``dest``, refusing more than ``limit`` bytes."""
    written = 0
    with open(dest, "wb") as out:
        while chunk := src.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise too_big(limit)
            out.write(chunk)


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
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for f in strip_single_top(files):
                f.copy_to(tmp.joinpath(*f.parts), max_file_bytes)
            publish_directory(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("unpacked %s (%d files) into %s", path, len(files), dest)
    return dest


def strip_single_top(files: list[SourceFile]) -> list[SourceFile]:
    """The files with their common top-level folder removed, when they all lie below one
    (an archive of ``pets/cat/1.png`` ... reads as ``cat/1.png`` ...); else unchanged.

    Example:
        >>> files = [SourceFile(("pets", "cat", "1.png"), "a.zip:pets/cat/1.png", 1)]
        >>> [f.parts for f in strip_single_top(files)]
        [('cat', '1.png')]
    """
    if len({f.parts[0] for f in files}) != 1 or any(len(f.parts) < 2 for f in files):
        return files
    return [dataclasses.replace(f, parts=f.parts[1:]) for f in files]


def archive_stem(path: str | Path) -> str | None:
    """The name of an archive without its suffix (``pets.tar.gz`` -> ``pets``); None for a
    name that is not an archive's (`ARCHIVE_SUFFIXES`).

    Example:
        >>> archive_stem("data/pets.tar.gz"), archive_stem("pets.ZIP"), archive_stem("pets")
        ('pets', 'pets', None)
    """
    name = Path(path).name
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


class _StrictTarInfo(tarfile.TarInfo):
    """A tar header that is damaged after the first member is an error (`tarfile` would take
    it for the archive's end and drop every member after it, silently)."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:  # noqa: D102
        try:
            return super().fromtarfile(archive)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as err:
            raise tarfile.ReadError(f"damaged header at byte {archive.offset}: {err}") from None


def tar_files(
    path: str | Path,
    dest: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
) -> list[SourceFile]:
    """Unpack the regular members of a tar archive (plain, gzip, bzip2 or xz) below the
    existing folder ``dest`` in one pass over the archive, and list them, in name order.

    A compressed tar can only be read front to back, so its members are written where they lie
    rather than read when an importer reaches them. The rules are `zip_files`': unsafe names
    refused, noise skipped, links, devices and FIFOs skipped (one warning), every member and
    the total bounded (while reading). A name given twice keeps its last member, as ``tar -x``
    does.

    Raises:
        DatasetError: the archive is unreadable or damaged (naming the member reached), or a
            member is unsafe or too large.

    Example:
        >>> import io, tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with tarfile.open(tmp / "a.tar.gz", "w:gz") as tar:
        ...     info = tarfile.TarInfo("set/a/b.png"); info.size = 2
        ...     tar.addfile(info, io.BytesIO(b"hi"))
        >>> files = tar_files(tmp / "a.tar.gz", tmp)
        >>> [(f.parts, f.origin.endswith("a.tar.gz:set/a/b.png")) for f in files]
        [(('set', 'a', 'b.png'), True)]
        >>> files[0].read_bytes()
        b'hi'
    """
    label = str(path)
    files: dict[tuple[str, ...], SourceFile] = {}
    total = 0
    skipped = 0
    member = ""
    try:
        with tarfile.open(path, "r:*", tarinfo=_StrictTarInfo) as tar:
            for info in tar:  # headers and content in the order they lie
                member = info.name
                parts = safe_member_parts(info.name, label)
                if info.isdir() or not parts or any(is_noise(p) for p in parts):
                    continue
                if not info.isreg():
                    skipped += 1
                    continue
                origin = f"{label}:{info.name}"
                if info.size > max_file_bytes:
                    raise DatasetError(
                        f"member larger than the import limit of {max_file_bytes} bytes",
                        file=origin, fix="leave it out of the archive")
                total += info.size
                if total > max_total_bytes:
                    raise DatasetError(
                        f"archive holds more than {max_total_bytes} bytes uncompressed",
                        file=label, fix="split the archive, or raise max_total_bytes")
                target = dest.joinpath(*parts)
                _make_parent(target, origin)
                handle = tar.extractfile(info)
                if handle is None:  # pragma: no cover - isreg() members always have content
                    continue
                with handle:
                    _copy_bounded(handle, target, max_file_bytes,
                                  lambda limit, o=origin: DatasetError(
                                      f"member larger than the import limit of {limit} bytes",
                                      file=o, fix="leave it out of the archive"))
                files[parts] = SourceFile(parts, origin, info.size, path=target)
    except _TAR_ERRORS as err:
        said = (f"damaged after {len(files)} file(s), the last member read {member!r}: {err}"
                if member else "not a readable tar archive (plain, gzip, bzip2 or xz)")
        raise DatasetError(
            said, file=label,
            fix="download or pack the archive again (it may be incomplete or damaged)",
        ) from None
    if skipped:
        warnings.warn(f"skipped {skipped} link, device or FIFO member(s) of {label}",
                      stacklevel=2)
    return [files[parts] for parts in sorted(files)]


def source_files(
    source: str | Path,
    stack: ExitStack,
    *,
    scratch: str | Path,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
) -> list[SourceFile]:
    """The files of an import source: a folder (`walk_folder`), a zip archive read in place
    (`zip_files`) or a tar archive unpacked into a temporary folder made in ``scratch``
    (`tar_files`). An archive whose files all lie below one folder reads as that folder
    (`strip_single_top`). The archive stays open, and the temporary folder exists, until
    ``stack`` closes.

    Raises:
        DatasetError: ``source`` does not exist, is neither a folder nor a regular file, is
            a file that is not an archive (`ARCHIVE_SUFFIXES`), or is unreadable or unsafe.

    Example:
        >>> import io, tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "pets.zip", "w") as z:
        ...     z.writestr("pets/cat/1.png", b"x"); z.writestr("pets/dog/1.png", b"y")
        >>> with ExitStack() as stack:
        ...     [f.parts for f in source_files(tmp / "pets.zip", stack, scratch=tmp)]
        [('cat', '1.png'), ('dog', '1.png')]
    """
    source = Path(source)
    if source.is_dir():
        return list(walk_folder(source))
    if not source.exists():
        raise DatasetError("source not found", file=source,
                           fix="give an existing folder or archive")
    if not source.is_file():  # reading a FIFO would wait for a writer forever
        raise DatasetError("neither a folder nor a regular file (a FIFO, device or socket)",
                           file=source, fix="give a folder or an archive file")
    if archive_stem(source) is None:
        raise DatasetError(
            "neither a folder nor an archive", file=source,
            fix=f"give a folder, or an archive ({', '.join(ARCHIVE_SUFFIXES)})")
    if source.name.lower().endswith(".zip"):
        archive = stack.enter_context(open_zip(source))
        files = zip_files(archive, max_file_bytes=max_file_bytes, max_total_bytes=max_total_bytes)
    else:
        scratch_dir = Path(tempfile.mkdtemp(prefix=".unpack-", dir=scratch))
        stack.callback(shutil.rmtree, scratch_dir, ignore_errors=True)
        files = tar_files(source, scratch_dir, max_file_bytes=max_file_bytes,
                          max_total_bytes=max_total_bytes)
    return strip_single_top(files)

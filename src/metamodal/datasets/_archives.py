"""Zip and tar archives as import sources, read safely: never a path out of them, never a
silently shorter archive.

`source_files` gives the files of any source (a folder, a zip archive read in place, a tar
archive unpacked in one pass into a scratch folder) as `metamodal.datasets._sources.SourceFile`
objects; `unpack_archive` unpacks one whole (for a table naming its files); `extract_zip`
unpacks one into a new directory (`download`). The rules:

- a member whose name is absolute, holds a ``..`` component, a backslash, a drive letter or a
  NUL is rejected (a "zip slip"); a link member to another member reads as a copy of it (no
  link is ever made on disk), other links, device and FIFO members are skipped;
- every member is bounded in size (while it is read), and so is the total of an archive;
- a damaged archive is an error, never a silently shorter one (the tar and zip readers stop
  at the damage);
- operating-system noise is skipped, as in folders.
"""

from __future__ import annotations

import dataclasses
import logging
import lzma
import shutil
import stat
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm.auto import tqdm

from metamodal.datasets._sources import (
    MAX_FILE_BYTES,
    READ_ERRORS,
    SourceFile,
    check_utf8,
    copy_bounded,
    is_noise,
    make_parent,
    unwritable,
    walk_folder,
)
from metamodal.errors import DatasetError, OutputError
from metamodal.io import publish_directory

log = logging.getLogger(__name__)

MAX_ARCHIVE_BYTES = 1 << 35
"""Largest total uncompressed size of one archive (32 GiB)."""

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
"""File names read as tar archives (compression detected from the content)."""

ARCHIVE_SUFFIXES = (".zip", *TAR_SUFFIXES)
"""File names `source_files` reads as archives."""


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
        metamodal.errors.DatasetError: unsafe archive member name '../../etc/passwd': a '..' ...
    """
    why = ("absolute" if name.startswith("/") else
           "a NUL character in it" if "\x00" in name else
           "a backslash in it (a zip made on Windows, or names in an encoding other than "
           "UTF-8?)" if "\\" in name else
           "a drive letter" if len(name) >= 2 and name[1] == ":" else
           "a '..' component, leading out of the archive"
           if any(part == ".." for part in name.split("/")) else None)
    if why is not None:
        raise DatasetError(
            f"unsafe archive member name {name!r}: {why}",
            file=archive,
            fix="use an archive whose members are relative paths without '..', backslashes or "
            "drive letters; refusing to extract it",
        )
    check_utf8(name, archive)
    return tuple(part for part in PurePosixPath(name).parts if part not in ("", "."))


def open_zip(path: str | Path) -> zipfile.ZipFile:
    """Open a zip archive whose directory lists every member it declares, or raise a
    `DatasetError` naming it (`zipfile` stops reading a damaged directory early, silently)."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile, ValueError) as err:  # ValueError: a name not UTF-8
        raise DatasetError(f"not a readable zip archive: {err}{_misnamed(path, 'zip')}",
                           file=path,
                           fix="download the archive again (it may be incomplete)") from None
    declared = _declared_members(archive)
    if declared is not None and declared != len(archive.infolist()):
        archive.close()
        raise DatasetError(
            f"damaged zip archive: its directory declares {declared} members, "
            f"{len(archive.infolist())} could be read", file=path,
            fix="download or pack the archive again")
    return archive


def _misnamed(path: str | Path, named: str) -> str:
    """``"; it is a tar archive: name it .tar"`` (or zip) where ``path``, named as the other
    kind, is one; else empty."""
    try:
        if named == "tar" and zipfile.is_zipfile(path):
            return "; it is a zip archive: name it .zip"
        if named == "zip" and tarfile.is_tarfile(path):
            return "; it is a tar archive: name it .tar (or .tar.gz, ...)"
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        pass
    return ""


def _declared_members(archive: zipfile.ZipFile) -> int | None:
    """The member count the archive's end record declares (None where it cannot be read)."""
    find = getattr(zipfile, "_EndRecData", None)  # the reader zipfile itself uses
    if find is None or archive.fp is None:
        return None
    try:
        record = find(archive.fp)
    except (OSError, ValueError):
        return None
    return int(record[zipfile._ECD_ENTRIES_TOTAL]) if record else None


def zip_files(
    archive: zipfile.ZipFile,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    skip_noise: bool = True,
) -> list[SourceFile]:
    """Every regular member of an open zip archive, in the order of their path components
    (a folder's), checked for safety. A path given twice (also as ``a//b`` and ``a/b``) keeps
    its last member, as ``unzip`` and ``tar -x`` do.

    Noise members (`is_noise` on any component) are skipped unless not ``skip_noise``. A
    symbolic link to another member (by the Unix mode a zip made on Unix records) reads as
    that member; other links, FIFO and device members are skipped, with one warning.

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
    budget = _Budget(label, max_file_bytes, max_total_bytes)
    files: dict[tuple[str, ...], SourceFile] = {}
    links: dict[tuple[str, ...], tuple[tuple[str, ...] | None, str]] = {}
    skipped: list[str] = []
    for info in archive.infolist():  # in the archive's order: the last of a path wins
        parts = safe_member_parts(info.filename, label)
        if info.is_dir() or not parts or (skip_noise and any(is_noise(p) for p in parts)):
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix mode recorded
        if kind == stat.S_IFDIR:
            continue
        origin = f"{label}:{info.filename}"
        if kind == stat.S_IFLNK and info.file_size <= _MAX_LINK_BYTES:
            try:
                target = archive.read(info).decode("utf-8")
            except (*READ_ERRORS, UnicodeDecodeError):
                target = "/"  # unreadable: leads nowhere
            files.pop(parts, None)  # the last member of a path wins, link or not
            links[parts] = (_link_target(parts, target, hard=False), origin)
            continue
        if kind not in (0, stat.S_IFREG):
            skipped.append(info.filename)
            continue
        if info.flag_bits & 0x1:
            raise DatasetError("encrypted archive member", file=origin,
                               fix="use an archive without a password")
        budget.take(info.file_size, origin)
        links.pop(parts, None)
        files[parts] = SourceFile(parts, origin, info.file_size, archive=archive,
                                  member=info.filename)
    for parts, origin in _follow_links(links, files):  # each a copy: counted again
        budget.take(files[parts].size, origin)
        files[parts] = dataclasses.replace(files[parts], origin=origin)
    skipped += [origin.removeprefix(f"{label}:") for _, origin in links.values()]
    _warn_skipped(skipped, label)
    return [files[parts] for parts in sorted(files)]


@dataclasses.dataclass
class _Budget:
    """What an archive may hold: each member at most ``per_file`` bytes, all of them
    ``total`` (as their headers say; reads are bounded again as they go)."""

    label: str
    per_file: int
    total: int
    used: int = 0

    def too_big(self, origin: str) -> DatasetError:
        """The error of a member larger than ``per_file``."""
        return DatasetError(f"member larger than the import limit of {self.per_file} bytes",
                            file=origin, fix="leave it out of the archive")

    def take(self, size: int, origin: str) -> None:
        """Count a member of ``size`` bytes, or raise a `DatasetError` past a bound."""
        if size > self.per_file:
            raise self.too_big(origin)
        self.used += size
        if self.used > self.total:
            raise DatasetError(f"archive holds more than {self.total} bytes uncompressed",
                               file=self.label, fix="split the archive, or raise max_total_bytes")


_MAX_LINK_BYTES = 4096
"""Longest symbolic-link target read from a zip member."""


def _follow_links(links: dict[tuple[str, ...], tuple[tuple[str, ...] | None, str]],
                  files: dict[tuple[str, ...], SourceFile]) -> list[tuple[tuple[str, ...], str]]:
    """Give each link (its parts -> its target's parts and its origin) whose target is in
    ``files`` (or is another such link) its target's entry in ``files`` under its own parts;
    removes those from ``links`` (what stays leads nowhere in the archive). Returns
    ``(parts, origin)`` of the links followed."""
    followed: list[tuple[tuple[str, ...], str]] = []
    while found := [parts for parts, (target, _) in links.items() if target in files]:
        for parts in found:
            target, origin = links.pop(parts)
            files[parts] = dataclasses.replace(files[target],  # type: ignore[index]
                                               parts=parts)
            followed.append((parts, origin))
    return followed


def _warn_skipped(members: list[str], label: str) -> None:
    """One warning naming the link, device and FIFO members skipped in archive ``label``."""
    if members:
        warnings.warn(f"skipped {len(members)} link, device or FIFO member(s) of {label}: "
                      + ", ".join(members[:5]) + (" ..." if len(members) > 5 else ""),
                      stacklevel=3)


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
            for f in strip_single_top(files)[0]:
                f.copy_to(tmp.joinpath(*f.parts), max_file_bytes)
            publish_directory(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("unpacked %s (%d files) into %s", path, len(files), dest)
    return dest


def strip_single_top(files: list[SourceFile]) -> tuple[list[SourceFile], str | None]:
    """The files with their common top-level folder removed, when every file in a folder lies
    below one (an archive of ``pets/cat/1.png`` ... reads as ``cat/1.png`` ...; files at the
    very top, a README say, stay where they are), and that folder's name (None: unchanged).

    Example:
        >>> files = [SourceFile(("pets", "cat", "1.png"), "a.zip:pets/cat/1.png", 1),
        ...          SourceFile(("README",), "a.zip:README", 1)]
        >>> stripped, top = strip_single_top(files)
        >>> [f.parts for f in stripped], top
        ([('cat', '1.png'), ('README',)], 'pets')
    """
    tops = {f.parts[0] for f in files if len(f.parts) > 1}
    if len(tops) != 1 or any(f.parts == (*tops,) for f in files):
        return files, None
    return [dataclasses.replace(f, parts=f.parts[1:]) if len(f.parts) > 1 else f
            for f in files], tops.pop()


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
    """A tar header that is damaged, or missing, after the first member is an error (`tarfile`
    would take it for the archive's end and drop every member after it, silently)."""

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:  # noqa: D102
        try:
            return super().fromtarfile(archive)
        except (tarfile.InvalidHeaderError, tarfile.TruncatedHeaderError) as err:
            raise tarfile.ReadError(f"damaged header at byte {archive.offset}: {err}") from None
        except tarfile.EmptyHeaderError:
            if archive.offset == 0:
                raise
            raise tarfile.ReadError("the archive ends without its end-of-archive marker (cut "
                                    "short?)") from None


def tar_files(
    path: str | Path,
    dest: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    skip_noise: bool = True,
    progress: bool = False,
) -> list[SourceFile]:
    """Unpack the regular members of a tar archive (plain, gzip, bzip2 or xz) below the
    existing folder ``dest`` in one pass over the archive, and list them, in the order of
    their path components.

    A compressed tar can only be read front to back, so its members are written where they lie
    rather than read when an importer reaches them. The rules are `zip_files`': unsafe names
    refused, noise skipped (with ``skip_noise``), every member and the total bounded (while
    reading). A hard or symbolic link to a regular member of the archive is a copy of it (as a
    folder's link that stays inside it is followed); other links, devices and FIFOs are
    skipped, with one warning. A name given twice keeps its last member, as ``tar -x`` does.
    No link is ever made on disk. With ``progress``, a bar follows the archive's bytes read.

    Raises:
        DatasetError: the archive is unreadable, damaged or cut short (naming the last member
            read), or a member is unsafe or too large.
        OutputError: ``dest`` cannot be written (a full disk, no permission).

    Example:
        >>> import io, tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with tarfile.open(tmp / "a.tar.gz", "w:gz") as tar:
        ...     info = tarfile.TarInfo("set/a/b.png"); info.size = 2
        ...     tar.addfile(info, io.BytesIO(b"hi"))
        ...     link = tarfile.TarInfo("set/a/c.png"); link.type = tarfile.SYMTYPE
        ...     link.linkname = "b.png"; tar.addfile(link)
        >>> files = tar_files(tmp / "a.tar.gz", tmp)
        >>> [(f.parts, f.origin.endswith(f"a.tar.gz:{'/'.join(f.parts)}")) for f in files]
        [(('set', 'a', 'b.png'), True), (('set', 'a', 'c.png'), True)]
        >>> files[1].read_bytes()
        b'hi'
    """
    label = str(path)
    files: dict[tuple[str, ...], SourceFile] = {}
    links: dict[tuple[str, ...], tuple[tuple[str, ...] | None, str]] = {}
    skipped: list[str] = []
    budget = _Budget(label, max_file_bytes, max_total_bytes)
    member = ""
    try:
        with open(path, "rb") as raw, tqdm(total=Path(path).stat().st_size, unit="B",
                                           unit_scale=True, desc="unpack", leave=False,
                                           delay=1.0, disable=not progress) as bar, \
                tarfile.open(fileobj=_Counted(raw, bar), mode="r:*",
                             tarinfo=_StrictTarInfo) as tar:
            for info in tar:  # headers and content in the order they lie
                member = info.name
                parts = safe_member_parts(info.name, label)
                if info.isdir() or not parts or (skip_noise and any(is_noise(p) for p in parts)):
                    continue
                origin = f"{label}:{info.name}"
                if info.islnk() or info.issym():
                    if files.pop(parts, None) is not None:  # the last member of a path wins
                        dest.joinpath(*parts).unlink()
                    links[parts] = (_link_target(parts, info.linkname, hard=info.islnk()),
                                    origin)
                    continue
                if not info.isreg():
                    skipped.append(info.name)
                    continue
                budget.take(info.size, origin)
                links.pop(parts, None)
                target = dest.joinpath(*parts)
                handle = tar.extractfile(info)
                if handle is None:  # pragma: no cover - isreg() members always have content
                    continue
                with handle, _named(origin):
                    make_parent(target, origin)
                    copy_bounded(handle, target, max_file_bytes,
                                 lambda limit, o=origin: budget.too_big(o))
                files[parts] = SourceFile(parts, origin, info.size, path=target)
            if _another_archive_follows(tar):
                raise DatasetError(
                    "holds another archive after its end-of-archive marker (archives joined "
                    "with `cat`), which tar would leave out", file=label,
                    fix="unpack each and import the folder, or pack them as one archive")
    except (tarfile.TarError, *READ_ERRORS) as err:
        said = (f"damaged after {len(files)} file(s), the last member read {member!r}: {err}"
                if member else "not a readable tar archive (plain, gzip, bzip2 or xz)"
                + _misnamed(path, "tar"))
        raise DatasetError(
            said, file=label,
            fix="download or pack the archive again (it may be incomplete or damaged)",
        ) from None
    for parts, origin in _follow_links(links, files):  # copies, on disk: no link is made
        original = files[parts]
        budget.take(original.size, origin)
        with _named(origin):
            original.copy_to(dest.joinpath(*parts), max_file_bytes)
        files[parts] = SourceFile(parts, origin, original.size, path=dest.joinpath(*parts))
    _warn_skipped([*skipped, *(origin.removeprefix(f"{label}:") for _, origin in links.values())],
                  label)
    return [files[parts] for parts in sorted(files)]


class _Counted:
    """A binary file whose position, as it is read, moves a progress bar (how far into a
    compressed tar archive its reader is)."""

    mode = "rb"

    def __init__(self, raw: BinaryIO, bar: Any) -> None:
        self.raw, self.bar, self.name = raw, bar, getattr(raw, "name", None)

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if not self.bar.disable and (ahead := self.raw.tell() - self.bar.n) > 0:
            try:
                self.bar.update(ahead)
            except (OSError, ValueError):  # the bar's stream is gone (a closed pipe, a full disk)
                self.bar.disable = True
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True


@contextmanager
def _named(origin: str) -> Iterator[None]:
    """Let an `OutputError` of writing a member's unpacked copy name the member
    (``ARCHIVE:MEMBER``), not the temporary folder it was written in."""
    try:
        yield
    except OutputError as error:
        error.file = origin
        raise


def _another_archive_follows(tar: tarfile.TarFile, limit: int = 1 << 24) -> bool:
    """Whether, after the end-of-archive marker ``tar`` stopped at, the stream holds another
    archive's header within ``limit`` bytes (zeros padding the last record are fine; data
    that is no tar header, or unreadable, is left alone, as tar does)."""
    assert tar.fileobj is not None
    for _ in range(limit // tarfile.BLOCKSIZE):
        try:
            block = tar.fileobj.read(tarfile.BLOCKSIZE)
        except (tarfile.TarError, *READ_ERRORS):
            return False
        if len(block) < tarfile.BLOCKSIZE:
            return False
        if block.count(0) == tarfile.BLOCKSIZE:
            continue
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return False
        return True
    return False


def _link_target(parts: tuple[str, ...], linkname: str, *,
                 hard: bool) -> tuple[str, ...] | None:
    """The path components of the member a link member ``parts`` names (a hard link from the
    archive's root, a symbolic one from its own folder), or None when it leads out of the
    archive.

    Example:
        >>> _link_target(("a", "b", "l.png"), "../c/x.png", hard=False)
        ('a', 'c', 'x.png')
        >>> _link_target(("a", "b", "l.png"), "/etc/passwd", hard=False) is None
        True
    """
    if linkname.startswith("/"):
        return None
    resolved = [] if hard else list(parts[:-1])
    for part in linkname.split("/"):
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
        elif part not in ("", "."):
            resolved.append(part)
    return tuple(resolved) or None


def source_files(
    source: str | Path,
    stack: ExitStack,
    *,
    scratch: str | Path,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    keep_top_folder: bool = False,
    progress: bool = False,
) -> tuple[list[SourceFile], str | None]:
    """The files of an import source: a folder (`walk_folder`), a zip archive read in place
    (`zip_files`) or a tar archive unpacked into a temporary folder made beside ``scratch``
    (in its nearest existing folder: nothing is created for it). An archive whose files all
    lie below one folder reads as that folder (`strip_single_top`), unless
    ``keep_top_folder``. The archive stays open, and the temporary folder exists, until
    ``stack`` closes. ``progress``: a bar while a tar archive is unpacked.

    Returns:
        the files, and the name of the archive's top folder taken for its root (or None).

    Raises:
        DatasetError: ``source`` does not exist, is neither a folder nor a regular file, is
            a file that is not an archive (`ARCHIVE_SUFFIXES`), or is unreadable or unsafe.
        OutputError: the temporary folder cannot be written.

    Example:
        >>> import io, tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "pets.zip", "w") as z:
        ...     z.writestr("pets/cat/1.png", b"x"); z.writestr("pets/dog/1.png", b"y")
        >>> with ExitStack() as stack:
        ...     files, top = source_files(tmp / "pets.zip", stack, scratch=tmp)
        ...     [f.parts for f in files], top
        ([('cat', '1.png'), ('dog', '1.png')], 'pets')
    """
    source = Path(source)
    if source.is_dir():
        return list(walk_folder(source)), None
    check_archive(source)
    if source.name.lower().endswith(".zip"):
        archive = stack.enter_context(open_zip(source))
        files = zip_files(archive, max_file_bytes=max_file_bytes, max_total_bytes=max_total_bytes)
    else:
        files = tar_files(source, scratch_folder(stack, scratch), max_file_bytes=max_file_bytes,
                          max_total_bytes=max_total_bytes, progress=progress)
    return (files, None) if keep_top_folder else strip_single_top(files)


def check_archive(source: Path) -> None:
    """Refuse a source that is not a regular file named as an archive (`ARCHIVE_SUFFIXES`).

    Raises:
        DatasetError: naming ``source``.
    """
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


def unpack_archive(
    source: str | Path,
    dest: Path,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_total_bytes: int = MAX_ARCHIVE_BYTES,
    progress: bool = False,
) -> None:
    """Unpack a zip or tar archive as it is (no top folder taken away, hidden files kept: a
    table may name them) into the existing folder ``dest`` (`scratch_folder`), by
    `source_files`' rules otherwise; ``progress``: a bar while a tar archive is unpacked.

    Raises:
        DatasetError: as `source_files`.
        OutputError: ``dest`` cannot be written.

    Example:
        >>> import tempfile
        >>> tmp = Path(tempfile.mkdtemp())
        >>> with zipfile.ZipFile(tmp / "shop.zip", "w") as z:
        ...     z.writestr("shop/items.csv", "a,b\\n")
        >>> with ExitStack() as stack:
        ...     folder = scratch_folder(stack, tmp)
        ...     unpack_archive(tmp / "shop.zip", folder)
        ...     (folder / "shop/items.csv").is_file()
        True
    """
    source = Path(source)
    check_archive(source)
    bounds = {"max_file_bytes": max_file_bytes, "max_total_bytes": max_total_bytes,
              "skip_noise": False}
    if source.name.lower().endswith(".zip"):
        with open_zip(source) as archive:
            for f in zip_files(archive, **bounds):
                f.copy_to(dest.joinpath(*f.parts), max_file_bytes)
    else:
        tar_files(source, dest, progress=progress, **bounds)


def scratch_folder(stack: ExitStack, near: str | Path) -> Path:
    """A new temporary folder in the nearest existing folder of ``near`` (nothing is created
    for it), removed when ``stack`` closes."""
    beside = Path(near).absolute()
    while not beside.is_dir() and beside != beside.parent:
        beside = beside.parent
    try:
        folder = Path(tempfile.mkdtemp(prefix=".unpack-", dir=beside))
    except OSError as err:
        raise unwritable(beside, err) from None
    stack.callback(shutil.rmtree, folder, ignore_errors=True)
    return folder

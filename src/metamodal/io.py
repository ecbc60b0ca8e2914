"""Atomic file writes (a reader never sees a half-written checkpoint, cache or report),
output directories and files' SHA-256; a place that cannot be written is an `OutputError`
naming it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metamodal.errors import ConfigError, OutputError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, then rename.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0666 & ~umask``).
    A directory, device, FIFO or socket at ``path`` is an `OutputError` (the rename would
    replace it: ``--out /dev/null`` run as root replaced the system's ``/dev/null``).

    Args:
        path: the destination file.
        write: a function that writes the whole content to the temporary path it is given.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = atomic_write(p, lambda tmp: tmp.write_text("hi"))
        >>> p.read_text()
        'hi'
    """
    path = Path(path)
    check_file_target(path)
    make_directory(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _unwritable(path, error) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise _unwritable(path, error) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def check_file_target(path: str | Path) -> None:
    """`OutputError` when ``path`` holds something a written file must not replace: a
    directory, a device, a FIFO or a socket (a rename into place would replace it)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a directory, where a file is to be written", file=path,
                          fix="give the path of a file (inside that directory, say)")
    if path.exists() and not path.is_file():
        raise OutputError("is not a regular file (a device, a FIFO or a socket), where a file "
                          "is to be written", file=path, fix="give the path of a file")


def make_directory(path: str | Path, *, key: str | None = None) -> Path:
    """``mkdir -p path``; `OutputError` where it cannot be made (a file in its place or in a
    parent's, named as the file; no permission), keyed ``key`` (the setting that gave it).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> make_directory(root / "a" / "b").is_dir()
        True
        >>> _ = (root / "f").write_text("x")
        >>> make_directory(root / "f" / "b")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metamodal.errors.OutputError: .../f: is a file, where a directory is needed (...)
    """
    path = Path(path)
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise OutputError("is a file, where a directory is needed", file=blocking, column=key,
                          fix="give a path that has no file in a directory's place (a new "
                          "name, say)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as error:  # ValueError: a NUL character
        raise OutputError(f"cannot be made a directory ({_reason(error)})", file=path,
                          column=key, fix="give a directory path whose parents are "
                          "directories you may write to") from None
    return path


def file_in_the_way(path: str | Path) -> Path | None:
    """``path`` or the nearest of its parents that exists and is not a directory (so that no
    directory can be made at ``path``), or None (also where the file system cannot tell).

    Example:
        >>> file_in_the_way("/dev/null/state"), file_in_the_way("/tmp/new/state")
        (PosixPath('/dev/null'), None)
    """
    path = Path(path)
    try:
        return next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    except (OSError, ValueError):  # unreadable, a NUL character: making it says so
        return None


def _reason(error: OSError | ValueError) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _unwritable(path: Path, error: OSError) -> OutputError:
    return OutputError(f"cannot be written ({_reason(error)})", file=path,
                       fix="give a file path in a directory you may write to, with room")


def publish_directory(tmp: str | Path, dest: str | Path) -> Path:
    """Move a fully written temporary directory into place as ``dest`` in one rename, with
    the permissions a plain ``mkdir`` would give (``0777 & ~umask``; `tempfile.mkdtemp`
    makes 0700). ``tmp`` must be on the same file system (e.g. made in ``dest``'s parent).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> staged = Path(tempfile.mkdtemp(dir=root))
        >>> publish_directory(staged, root / "ready").is_dir(), staged.exists()
        (True, False)
    """
    tmp, dest = Path(tmp), Path(dest)
    tmp.chmod(0o777 & ~_umask())
    os.replace(tmp, dest)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


class ParseError(ValueError):
    """Text that is not valid TOML / JSON, is nested too deeply, or holds an integer longer
    than Python converts; the message says which. Callers turn it into a typed error naming
    their file."""


def loads_toml(text: str) -> dict[str, Any]:
    """Parse TOML text; every failure is a `ParseError` (never a `RecursionError`).

    Example:
        >>> loads_toml('a = 1')
        {'a': 1}
        >>> loads_toml('a = ' + '[' * 5000 + ']' * 5000)
        Traceback (most recent call last):
        ...
        metamodal.io.ParseError: not valid TOML: nested too deeply
    """
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ParseError("not valid TOML: nested too deeply") from None
    except ValueError as exc:  # a decode error, or an integer beyond Python's digit limit
        raise ParseError(f"not valid TOML: {exc}") from None


def loads_json(text: str) -> Any:
    """Parse JSON text; every failure is a `ParseError` (never a `RecursionError`).

    Example:
        >>> loads_json('{"a": [1, 2]}')
        {'a': [1, 2]}
        >>> try:
        ...     loads_json('9' * 5000)
        ... except ParseError as error:
        ...     print(str(error)[:33])
        not valid JSON: Exceeds the limit
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ParseError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # a decode error, or an integer beyond Python's digit limit
        raise ParseError(f"not valid JSON: {exc}") from None


def resolved(path: str | Path, key: str | None = None) -> Path:
    """``path`` made absolute, its symbolic links followed (`pathlib.Path.resolve`): for any
    path a user gives, where Python would raise a raw ``RuntimeError`` on a loop of links.

    Raises:
        ConfigError: keyed ``key``, for a loop of symbolic links on the way.

    Example:
        >>> resolved("/tmp/../tmp/x").as_posix()
        '/tmp/x'
    """
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as err:  # a loop of links
        raise ConfigError(f"cannot be resolved ({err})", file=path, column=key,
                          fix="give a path without a loop of symbolic links") from None


def followed(path: str | Path) -> Path:
    """``path``, or where it leads when it is itself a symbolic link: an output directory
    reached through a link is written (and replaced) where it lies, and the link kept.

    Raises:
        OutputError: the link is part of a loop of links.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "run").mkdir(); (root / "latest").symlink_to("run")
        >>> followed(root / "latest") == (root / "run").resolve(), followed(root / "new").name
        (True, 'new')
    """
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a loop of links
        raise OutputError(f"is a symbolic link that leads nowhere ({err})", file=path,
                          fix="give the directory itself, or mend the link") from None


def replace_directory(new: str | Path, dest: str | Path) -> Path:
    """Put the fully written directory ``new`` in place of the directory ``dest``.

    ``dest`` is renamed aside, ``new`` renamed into place (`publish_directory`), and only then
    is the old one deleted; if the second rename fails the old directory is put back. ``new``
    must be on the same file system (e.g. made in ``dest``'s parent), and ``dest`` not a
    symbolic link (`followed` gives where it leads).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "run").mkdir(); _ = (root / "run" / "a").write_text("old")
        >>> new = Path(tempfile.mkdtemp(dir=root)); _ = (new / "a").write_text("new")
        >>> (replace_directory(new, root / "run") / "a").read_text()
        'new'
        >>> [p.name for p in root.iterdir()]
        ['run']
    """
    new, dest = Path(new), Path(dest)
    aside = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.rmdir(aside)
    os.replace(dest, aside)
    try:
        publish_directory(new, dest)
    except BaseException:
        os.replace(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return dest


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file, read in 1 MiB blocks.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a"
        >>> _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

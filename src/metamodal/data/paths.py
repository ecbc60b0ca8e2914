"""Where a dataset's files may be: inside its directory, regular files, of sane length.

Every media path of a sample table and the ``samples`` table named in ``dataset.toml`` is
resolved with `resolve_inside` (``../``, an absolute path or a symbolic link leading out of
the dataset directory is refused unless ``dataset.toml`` sets ``allow_outside_paths = true``)
and checked with `check_regular_file` before it is opened, so that a FIFO, a device or a
directory is refused without being opened (opening a FIFO would block). The dataset's own
files (``dataset.toml``, ``splits.toml``, ``descriptions.toml``) are checked the same way by
`check_own_file`, always.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_PATH_CHARS = 4096
"""The longest path (in characters) a cell may hold: the Linux ``PATH_MAX``."""

MAX_NAME_BYTES = 255
"""The longest file or directory name (UTF-8 bytes) of a path: ``NAME_MAX``."""

OUTSIDE_KEY = "allow_outside_paths"
"""The ``dataset.toml`` key that lets paths lead out of the dataset directory."""


class PathRefused(Exception):
    """A path that is not used; carries the message and a fix for the caller's typed error."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def resolve_inside(root: str | Path, relative: str, *, allow_outside: bool = False) -> Path:
    """``root / relative``, refused when it is too long or resolves outside ``root``.

    Args:
        root: the dataset directory (or the folder of a support / query table).
        relative: the path as written in the table or schema.
        allow_outside: accept a path that resolves outside ``root`` (``../``, an absolute
            path, a symbolic link pointing out).

    Raises:
        PathRefused: the path is longer than `MAX_PATH_CHARS`, has a name longer than
            `MAX_NAME_BYTES`, holds a NUL character, or leads outside ``root``.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> resolve_inside(root, "img/a.png").name
        'a.png'
        >>> resolve_inside(root, "../secret.png")
        Traceback (most recent call last):
        ...
        metamodal.data.paths.PathRefused: the path leads outside the dataset directory
    """
    text = str(relative)
    if len(text) > MAX_PATH_CHARS:
        raise PathRefused(f"the path is {len(text)} characters long (at most {MAX_PATH_CHARS})",
                          "shorten the path, or leave the cell empty")
    if "\x00" in text:
        raise PathRefused("the path holds a NUL character", "correct the path")
    if any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES
           for part in Path(text).parts):
        raise PathRefused(f"a name in the path is longer than {MAX_NAME_BYTES} bytes",
                          "shorten the file or folder name")
    path = Path(root) / text
    if not allow_outside:
        base = os.path.realpath(root)
        real = os.path.realpath(path)
        if real != base and not real.startswith(base.rstrip(os.sep) + os.sep):
            raise PathRefused(
                "the path leads outside the dataset directory",
                "move the file into the directory paths are read from (the dataset directory, "
                f"or a classifier's media_root); for a dataset, {OUTSIDE_KEY} = true in "
                "dataset.toml allows paths outside it")
    return path


def check_regular_file(path: str | Path, noun: str = "file") -> None:
    """Refuse ``path`` unless it is a regular file, without opening it.

    Args:
        path: the file.
        noun: what it should hold, for the message (``"image"``, ``"sample table"``).

    Raises:
        FileNotFoundError: nothing is at ``path``.
        PathRefused: it is a directory, a FIFO, a device or a socket, or cannot be examined.

    Example:
        >>> import tempfile
        >>> check_regular_file(tempfile.mkdtemp(), "image")
        Traceback (most recent call last):
        ...
        metamodal.data.paths.PathRefused: the image path is a directory, not a file
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as exc:  # a loop of links, a name too long for the file system, ...
        raise PathRefused(f"cannot examine the {noun} path ({exc.strerror})",
                          "correct the path") from None
    if stat.S_ISREG(mode):
        return
    what = ("a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise PathRefused(f"the {noun} path is {what}, not a file",
                      f"point it at a regular {noun} file")


def read_small_text(path: str | Path, noun: str, max_bytes: int) -> str:
    """The UTF-8 text of the regular file ``path`` (a settings file: a config, a search
    space), refused unopened when it is not a regular file (`check_regular_file`) or holds
    more than ``max_bytes``.

    Raises:
        FileNotFoundError: nothing is at ``path``.
        PathRefused: a directory, a FIFO, a device, or over ``max_bytes``.
        OSError, UnicodeDecodeError: it cannot be read as UTF-8 text.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "c.toml"
        >>> _ = path.write_text("steps = 10\\n")
        >>> read_small_text(path, "config", 1 << 20)
        'steps = 10\\n'
        >>> read_small_text(path, "config", 4)
        Traceback (most recent call last):
        ...
        metamodal.data.paths.PathRefused: the config file is over 4 bytes
    """
    check_regular_file(path, noun)
    if os.stat(path).st_size > max_bytes:
        raise PathRefused(f"the {noun} file is over {max_bytes:,} bytes",
                          f"give a {noun} file of at most {max_bytes:,} bytes")
    return Path(path).read_text(encoding="utf-8")


def check_own_file(root: str | Path, name: str) -> None:
    """Refuse the dataset's own file ``root / name`` (``dataset.toml``, ``splits.toml``,
    ``descriptions.toml``) when it is a symbolic link leading out of ``root`` (its content,
    echoed by error messages, is not the dataset's) or is not a regular file; nothing there
    is fine (the caller says whether that is).

    Raises:
        PathRefused: the message and fix for the caller's typed error.

    Example:
        >>> import tempfile
        >>> check_own_file(tempfile.mkdtemp(), "splits.toml")  # none: fine
    """
    try:
        resolve_inside(root, name)
    except PathRefused:
        raise PathRefused(f"{name} is a link that leads outside its directory {root}",
                          f"put the file itself in {root}, in place of the link") from None
    try:
        check_regular_file(Path(root) / name, name)
    except FileNotFoundError:
        return

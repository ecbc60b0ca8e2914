"""Atomic file writes: a reader never sees a half-written checkpoint, cache or report."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, then rename.

    The file gets the permissions a plain ``open(path, "w")`` would give (``0666 & ~umask``).

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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

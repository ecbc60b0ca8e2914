"""Writing a dataset directory all at once: into a temporary directory, then into place.

Generators and importers build the whole dataset in a temporary directory beside (or inside) the
output and move it into place only when it is complete, so an interrupted run never leaves a
half-written directory that looks like a dataset. A non-empty output is replaced only when asked
to (``overwrite``) and only when it already holds a dataset (a ``dataset.toml``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from metamodal.errors import ConfigError

SCHEMA_NAME = "dataset.toml"


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an empty directory or (with overwrite) a dataset.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty directory without ``overwrite``, or a
            non-empty directory that holds no ``dataset.toml``.

    Example:
        >>> import tempfile
        >>> check_target(Path(tempfile.mkdtemp()), overwrite=False)  # empty: fine
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError("exists and is not a directory", file=out,
                          fix="choose another output path")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError("output directory exists and is not empty", file=out,
                          fix="pass overwrite=True (--overwrite) or choose a new directory")
    if not (out / SCHEMA_NAME).is_file():
        raise ConfigError("refusing to overwrite a directory that holds no dataset.toml",
                          file=out, fix="choose a new directory or empty this one yourself")


def move_into(tmp: Path, out: Path) -> None:
    """Replace the content of directory ``out`` by that of ``tmp`` (a directory inside it),
    moving ``dataset.toml`` last so that a half-moved directory is not taken for a dataset."""
    for entry in out.iterdir():
        if entry != tmp:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for entry in sorted(tmp.iterdir(), key=lambda path: path.name == SCHEMA_NAME):
        os.replace(entry, out / entry.name)
    tmp.rmdir()


@contextmanager
def staged_directory(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary directory to fill; on success it becomes ``out``, on failure it is removed.

    An existing directory ``out`` (possibly ``.``) is kept and its content replaced; a new one
    is renamed into place whole, with the permissions ``mkdir`` would give.

    Args:
        out: the output directory.
        overwrite: replace an existing dataset directory at ``out``.

    Raises:
        ConfigError: ``out`` may not be written (see `check_target`).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "ds"
        >>> with staged_directory(out) as tmp:
        ...     _ = (tmp / "dataset.toml").write_text('label = "y"\\n')
        >>> sorted(p.name for p in out.iterdir())
        ['dataset.toml']
    """
    out = Path(out)
    check_target(out, overwrite)
    existing = out.is_dir()
    if not existing:
        out.parent.mkdir(parents=True, exist_ok=True)
    name = Path(os.path.abspath(out)).name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out if existing else out.parent))
    try:
        yield tmp
        if existing:
            move_into(tmp, out)
        else:
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

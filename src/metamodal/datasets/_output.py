"""Writing a dataset directory all at once: into a temporary directory, then into place.

Generators and importers build the whole dataset in a temporary directory beside (or inside) the
output and move it into place only when it is complete, so an interrupted run never leaves a
half-written directory that looks like a dataset. A non-empty output is replaced only when asked
to (``overwrite``) and only when it already holds a dataset (a ``dataset.toml``); then only the
dataset's own entries are replaced (`move_into`): the user's other files and folders stay.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from metamodal.data.table import TABLE_SUFFIXES
from metamodal.errors import ConfigError, LocatedError, OutputError
from metamodal.io import followed, make_directory, publish_directory

SCHEMA_NAME = "dataset.toml"
OLD_DATASET_FILES = frozenset({SCHEMA_NAME, "splits.toml", "descriptions.toml",
                               *(f"samples{suffix}" for suffix in TABLE_SUFFIXES)})
"""The entries of an old dataset that an overwrite removes even when the new one does not
write them (a stale sample table of another format would be read instead of the new one, a
stale split or class descriptions would name the old classes)."""


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write over anything but an empty directory or (with overwrite) a dataset.

    Raises:
        ConfigError: ``out`` is a file, or a non-empty directory without ``overwrite``, or a
            non-empty directory that holds no ``dataset.toml``, or is or lies inside a run
            directory (which training it again replaces whole, with the dataset).

    Example:
        >>> import tempfile
        >>> check_target(Path(tempfile.mkdtemp()), overwrite=False)  # empty: fine
    """
    from metamodal.runs.directory import check_not_inside_run

    out = followed(out)
    check_not_inside_run(out, "out", itself=True)
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError("exists and is not a directory", file=out,
                          fix="choose another output path")
    if not any(out.iterdir()):
        return
    if not (out / SCHEMA_NAME).is_file():
        raise ConfigError("output directory exists, is not empty and holds no dataset.toml "
                          "(only a dataset directory is ever overwritten)", file=out,
                          fix="choose a new directory or empty this one yourself")
    if not overwrite:
        raise ConfigError("output directory exists and is not empty (it holds a dataset)",
                          file=out,
                          fix="pass overwrite=True (--overwrite) or choose a new directory")


def move_into(tmp: Path, out: Path) -> None:
    """Replace the dataset in directory ``out`` by the one in ``tmp`` (a directory inside it):
    the old entries it replaces (those of the new one's names, and `OLD_DATASET_FILES`) are
    moved aside (``dataset.toml`` first), the new ones in (``dataset.toml`` last), so that a
    half-moved directory is never taken for a dataset; only then are the old ones deleted.
    Every other entry (the user's notes, a ``.git``, runs) stays. If a move fails, every entry
    is moved back: ``out`` is as it was."""
    aside = Path(tempfile.mkdtemp(prefix=".old-", dir=out))
    new = sorted((e.name for e in tmp.iterdir()), key=lambda name: name == SCHEMA_NAME)
    replaced = set(new) | OLD_DATASET_FILES
    old = sorted((e.name for e in out.iterdir() if e not in (tmp, aside) and e.name in replaced),
                 key=lambda name: name != SCHEMA_NAME)
    moved_aside: list[str] = []
    moved_in: list[str] = []
    try:
        for name in old:
            os.replace(out / name, aside / name)
            moved_aside.append(name)
        for name in new:
            os.replace(tmp / name, out / name)
            moved_in.append(name)
    except BaseException:
        for name in reversed(moved_in):
            os.replace(out / name, tmp / name)
        for name in reversed(moved_aside):
            os.replace(aside / name, out / name)
        aside.rmdir()
        raise
    tmp.rmdir()
    shutil.rmtree(aside, ignore_errors=True)


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)
"""The errors of a write that the disk refuses (full, over a quota or a size limit,
read-only): the output cannot be written, whatever the input."""


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
        OutputError: the disk refuses the writes (full, read-only, a quota).

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "ds"
        >>> with staged_directory(out) as tmp:
        ...     _ = (tmp / "dataset.toml").write_text('label = "y"\\n')
        >>> sorted(p.name for p in out.iterdir())
        ['dataset.toml']
    """
    out = followed(out)  # a dataset behind a link is written there, the link kept
    check_target(out, overwrite)
    existing = out.is_dir()
    if not existing:
        make_directory(out.parent)
    name = Path(os.path.abspath(out)).name
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out if existing else out.parent))
    except OSError as err:
        raise OutputError(f"cannot write there ({err.strerror or err})", file=out,
                          fix="choose an output directory you may write to") from None
    try:
        yield tmp
        if existing:
            move_into(tmp, out)
        else:
            publish_directory(tmp, out)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno not in _NO_ROOM:
            raise
        raise OutputError(f"cannot be written ({err.strerror or err})", file=out,
                          fix="free space on its disk, or choose another output directory"
                          ) from None
    except LocatedError as err:  # named in the staging folder, gone once it is read
        shutil.rmtree(tmp, ignore_errors=True)
        named, staging = Path(os.path.abspath(err.file or "/")), Path(os.path.abspath(tmp))
        if err.file is not None and named.is_relative_to(staging):
            err.file = str(out / named.relative_to(staging))
            err.args = (str(err),)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_samples_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a sample table as UTF-8 CSV (``None`` cells empty), ``\\n`` line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow(["" if cell is None else cell for cell in row])
    path.write_text(buffer.getvalue(), encoding="utf-8")


def write_schema(path: Path, schema: dict[str, Any]) -> None:
    """Write a ``dataset.toml`` from plain data (keys as in `metamodal.data.schema`)."""
    import tomli_w

    path.write_text(tomli_w.dumps(schema), encoding="utf-8")


def holdout_split(
    units: Iterable[str],
    val: Sequence[str] = (),
    test: Sequence[str] = (),
    *,
    what: str = "group",
) -> dict[str, list[str]] | None:
    """A ``splits.toml`` mapping that holds ``val`` and ``test`` out and trains on the rest.

    Args:
        units: every group of the dataset (or every label when it has no group column).
        val: the units of meta-validation.
        test: the units of meta-test.
        what: the name of a unit in messages (``group`` or ``class``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (sorted), or ``None`` when neither
        ``val`` nor ``test`` is given (the dataset then gets no ``splits.toml``).

    Raises:
        ConfigError: a unit is unknown, in both ``val`` and ``test``, or nothing is left to
            train on.

    Example:
        >>> holdout_split(["Greek", "Latin", "Tagalog"], val=["Tagalog"])
        {'train': ['Greek', 'Latin'], 'val': ['Tagalog'], 'test': []}
    """
    if not val and not test:
        return None
    known = sorted(set(units))
    for flag, names in (("val", val), ("test", test)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"unknown {what}(s) for {flag}: {', '.join(unknown)}",
                column=f"{flag}_groups",
                fix=f"choose among: {', '.join(known[:30])}" + (" ..." if len(known) > 30 else ""),
            )
    both = sorted(set(val) & set(test))
    if both:
        raise ConfigError(f"{what}(s) both in val and test: {', '.join(both)}",
                          column="test_groups", fix="put each in one split only")
    train = [u for u in known if u not in set(val) | set(test)]
    if not train:
        raise ConfigError(f"no {what} left for meta-training", column="val_groups",
                          fix="hold out fewer groups for val and test")
    return {"train": train, "val": sorted(set(val)), "test": sorted(set(test))}

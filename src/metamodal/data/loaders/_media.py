"""Reading the media files a modality's cells name, shared by the file-based loaders.

The image, audio and sequence loaders resolve each cell against ``DecodeContext.root``, read
the file with their own reader and turn a failure into a `DatasetError` naming the file, the
row and the column, reported through `DecodeContext.report` (raised, or collected for
``metamodal inspect``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from metamodal.data.loaders.base import Cell, DecodeContext
from metamodal.data.paths import PathRefused, check_regular_file, resolve_inside
from metamodal.errors import DatasetError

T = TypeVar("T")


class DecodeFailure(Exception):
    """A file that cannot be used; carries the message and fix for the `DatasetError`."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix


def file_not_found(noun: str, root: Path | str) -> DecodeFailure:
    """The failure for a cell naming a file that does not exist.

    Args:
        noun: what the file holds (``"image"``, ``"audio"``, ``"sequence"``).
        root: the directory paths are relative to (named in the message).

    Example:
        >>> file_not_found("audio", "data").message
        'audio file not found (paths are relative to data)'
    """
    return DecodeFailure(
        f"{noun} file not found (paths are relative to {root})",
        f"check the path, or leave the cell empty if the sample has no {noun}",
    )


def in_chunks(
    cells: Sequence[Cell], context: DecodeContext, size: int
) -> Iterator[tuple[Sequence[Cell], DecodeContext]]:
    """Split ``cells`` into runs of at most ``size``, each with the context of its rows.

    Loaders fit on chunks so that decoding a large dataset keeps a bounded amount in memory.

    Example:
        >>> ctx = DecodeContext(".", "samples.csv", [1, 2, 3], "photo")
        >>> [(list(part), sub.rows) for part, sub in in_chunks(["a", None, "c"], ctx, 2)]
        [(['a', None], [1, 2]), (['c'], [3])]
    """
    for start in range(0, len(cells), size):
        stop = min(start + size, len(cells))
        yield cells[start:stop], dataclasses.replace(context, rows=context.rows[start:stop])


def report_failure(
    failure: DecodeFailure, cell: Cell, index: int, context: DecodeContext
) -> None:
    """Report ``failure`` of cell number ``index`` as a `DatasetError` naming the file, and
    the row and column of the table that names it (the message names the table too).

    The error keeps the failure's cause (``__cause__``), and is raised or collected by
    ``context.report``.

    Example:
        >>> ctx = DecodeContext(Path("d"), "query.csv", [4], "photo", problems=[])
        >>> report_failure(DecodeFailure("cannot decode", "replace it"), "a.png", 0, ctx)
        >>> str(ctx.problems[0])
        'a.png, row 4, column photo: cannot decode (the path is in query.csv) (fix: replace it)'
    """
    where = f" (the path is in {context.table_file})" if context.table_file else ""
    error = DatasetError(failure.message + where, file=str(cell), row=context.rows[index],
                         column=context.column, fix=failure.fix)
    error.__cause__ = failure.__cause__
    context.report(error)


def _checked_path(context: DecodeContext, cell: str) -> Path:
    """The cell's file, checked before anything opens it: inside the root (unless the
    dataset allows outside paths), not too long, a regular file (or absent, which the
    reader reports in its own words)."""
    try:
        path = resolve_inside(context.root, cell, allow_outside=context.allow_outside)
        check_regular_file(path, context.noun)
    except FileNotFoundError:
        return Path(context.root) / cell
    except PathRefused as refused:
        raise DecodeFailure(refused.message, refused.fix) from None
    return path


def read_media(
    cells: Sequence[Cell],
    context: DecodeContext,
    read: Callable[[Path, Path | str], T],
) -> Iterator[tuple[int, Cell, T]]:
    """Read each non-empty cell's file; yield ``(index, cell, content)`` for those that worked.

    ``read(path, root)`` gets the cell resolved against ``context.root`` and the root itself
    (for its messages), only after `metamodal.data.paths` has checked that the path stays
    inside the root and names a regular file; a `DecodeFailure` it raises is reported with
    `report_failure` and that cell is skipped. Files are read lazily, one per step of the iteration.

    Args:
        cells: relative paths or ``None``, ``B`` of them.
        context: where the cells come from.
        read: the loader's reader of one file.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (root / "a.txt").write_text("hi")
        >>> ctx = DecodeContext(root, "samples.csv", [1, 2, 3], "note", problems=[])
        >>> def read(path, root):
        ...     if not path.exists():
        ...         raise file_not_found("note", root)
        ...     return path.read_text()
        >>> [(i, text) for i, _, text in read_media(["a.txt", None, "b.txt"], ctx, read)]
        [(0, 'hi')]
        >>> [(e.row, e.file) for e in ctx.problems]
        [(3, 'b.txt')]
    """
    for index, cell in enumerate(cells):
        if cell is None:
            continue
        try:
            path = _checked_path(context, str(cell))
            content = read(path, context.root)
        except DecodeFailure as failure:
            report_failure(failure, cell, index, context)
            continue
        yield index, cell, content

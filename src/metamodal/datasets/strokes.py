"""Omniglot pen-stroke files: parse the published ``x,y,t`` text into arrays ``[T, 4]``.

The stroke files of Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept
learning through probabilistic program induction") list strokes as ``START`` / ``BREAK`` lines
followed by ``x,y,t`` lines; `metamodal.datasets.omniglot` imports them with these parsers.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from metamodal.datasets._sources import SourceFile
from metamodal.errors import DatasetError

__all__ = ["MAX_STROKE_BYTES", "STROKE_FEATURES", "parse_stroke_bytes", "parse_strokes",
           "read_stroke_file"]

STROKE_FEATURES = ("x", "y", "t", "pen_down")
"""The columns of an imported stroke array ``[T, 4]``."""

MAX_STROKE_BYTES = 16 << 20
"""Largest stroke file read (the official ones are under 20 KB)."""

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude a stroke coordinate may have: the points are stored as float32."""
_FIX_STROKES = ("a stroke file holds START / BREAK lines, each followed by 'x,y,t' lines; "
                "replace the file from the official archive")


def parse_strokes(text: str, file: str | Path | None = None) -> np.ndarray:
    """Parse an Omniglot stroke file into one array of pen positions.

    The file lists strokes; each begins with a line ``START`` (the first) or ``BREAK`` (the pen
    was lifted), followed by lines ``x,y,t``: position in pixels of the 105x105 frame (``y`` as
    published: negative downwards; Lake's code negates it to get image rows) and time in
    milliseconds. Blank lines and a final ``BREAK`` are ignored; a point before any ``START``
    starts a stroke.

    Args:
        text: the file's content.
        file: the file's name, for error messages.

    Returns:
        float32 ``[T, 4]``: ``x, y, t`` and a pen-down-start flag, 1 on the first point of
        each stroke and 0 elsewhere (`STROKE_FEATURES`).

    Raises:
        DatasetError: a line is neither START, BREAK nor three finite numbers that float32
            holds (named by its 1-based line number), or the file has no point.

    Example:
        >>> parse_strokes("START\\n1,-2,0\\n2,-3,15\\nBREAK\\n5,-5,900\\nBREAK\\n").tolist()
        [[1.0, -2.0, 0.0, 1.0], [2.0, -3.0, 15.0, 0.0], [5.0, -5.0, 900.0, 1.0]]
    """
    points: list[tuple[float, float, float, float]] = []
    start = True
    for line_no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.upper() in ("START", "BREAK"):
            start = True
            continue
        fields = line.split(",")
        try:
            x, y, t = (float(v) for v in fields) if len(fields) == 3 else (math.nan,) * 3
        except ValueError:
            x = y = t = math.nan
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in (x, y, t)):
            raise DatasetError(f"line {line_no}: expected START, BREAK or 'x,y,t' with three "
                               f"finite numbers (float32: at most {FLOAT32_MAX:.3g} in size), "
                               f"got {line[:40]!r}", file=file, row=line_no, fix=_FIX_STROKES)
        points.append((x, y, t, 1.0 if start else 0.0))
        start = False
    if not points:
        raise DatasetError("stroke file holds no point", file=file, fix=_FIX_STROKES)
    return np.asarray(points, dtype=np.float32)


def read_stroke_file(source: SourceFile | str | Path) -> np.ndarray:
    """Read and parse one stroke file (a path, or a file of an import source).

    Raises:
        DatasetError: the file cannot be read, is not UTF-8 text or does not parse
            (`parse_strokes`).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "0108_01.txt"
        >>> _ = path.write_text("START\\n1,2,0\\n3,4,5\\nBREAK\\n")
        >>> read_stroke_file(path).shape
        (2, 4)
    """
    if not isinstance(source, SourceFile):
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as err:
            raise DatasetError(f"cannot read stroke file: {err}", file=path,
                               fix="check the path") from None
        source = SourceFile((path.name,), str(path), size, path=path)
    return parse_stroke_bytes(source.read_bytes(MAX_STROKE_BYTES), source.origin)


def parse_stroke_bytes(data: bytes, origin: str) -> np.ndarray:
    """`parse_strokes` of a stroke file's bytes (UTF-8 text, a BOM allowed).

    Example:
        >>> parse_stroke_bytes(b"START\\n1,2,0\\n", "a.txt").shape
        (1, 4)
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"unreadable stroke file: not UTF-8 text ({err.reason} at byte "
                           f"{err.start})", file=origin, fix=_FIX_STROKES) from None
    return parse_strokes(text, file=origin)

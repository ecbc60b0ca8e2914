"""Read a sample table (``.csv``, ``.jsonl`` or ``.parquet``) into columns of text cells.

Every cell is normalised to ``str`` or ``None``: empty or blank strings and nulls (and keys a
JSON line lacks) become ``None``, which means *missing*; numbers and booleans become their text
(``3``, ``0.5``, ``true``); a float NaN stays ``"nan"`` so that a loader can report it rather
than silently treat it as missing. Rows are numbered from 1 over data rows (a CSV header is not
a row; blank lines, also those holding only white space, are skipped and not counted).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamodal.data.paths import PathRefused, check_regular_file
from metamodal.errors import DatasetError

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
"""Sample-table formats, in the order a dataset directory is searched for ``samples.*``."""


@dataclass
class SampleTable:
    """A sample table: column name -> one cell per row, each ``str`` or ``None`` (missing).

    Args:
        file: the file it was read from (named in error messages).
        columns: column name -> cells, every list ``n_rows`` long, in file column order.
        n_rows: number of data rows.

    Example:
        >>> t = SampleTable("samples.csv", {"id": ["a", "b"], "note": ["hi", None]}, 2)
        >>> t.column("note")
        ['hi', None]
    """

    file: str
    columns: dict[str, list[str | None]]
    n_rows: int

    def column(self, name: str) -> list[str | None]:
        """The cells of column ``name``; `DatasetError` naming the columns when absent."""
        if name not in self.columns:
            raise DatasetError(
                "column not found",
                file=self.file,
                column=name,
                fix=f"add the column or use one of: {', '.join(self.columns)}",
            )
        return self.columns[name]


def read_samples(path: str | Path) -> SampleTable:
    """Read a ``.csv`` (with header), ``.jsonl`` (one object per line) or ``.parquet`` table.

    Args:
        path: the table file.

    Returns:
        the table with every cell ``str`` or ``None``.

    Raises:
        DatasetError: the file is missing, has an unknown suffix, is not UTF-8, a CSV row has
            the wrong number of fields, a JSON line is invalid or not an object, or pyarrow
            is missing for ``.parquet``.

    Example:
        >>> import tempfile
        >>> f = Path(tempfile.mkdtemp()) / "samples.csv"
        >>> _ = f.write_text("id,label,size\\na,cat,3\\nb,,4\\n")
        >>> read_samples(f).columns["label"]
        ['cat', None]
    """
    path = Path(path)
    file = str(path)
    try:
        check_regular_file(path, "sample table")
    except FileNotFoundError:
        raise DatasetError("sample table not found", file=file,
                           fix="create it or correct its path") from None
    except PathRefused as refused:
        raise DatasetError(refused.message, file=file, fix=refused.fix) from None
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix not in TABLE_SUFFIXES:
        raise DatasetError(
            f"unsupported sample-table format {suffix!r}",
            file=file,
            fix=f"use one of: {', '.join(TABLE_SUFFIXES)}",
        )
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"not UTF-8 text ({exc})", file=file, fix="save the table as UTF-8"
        ) from None
    return _read_csv(text, file) if suffix == ".csv" else _read_jsonl(text, file)


def normalise_cell(value: Any) -> str | None:
    """One cell as ``str`` or ``None`` (see the module docstring for the rules).

    Example:
        >>> [normalise_cell(v) for v in ["x", "  ", None, 3, 0.5, True, float("nan")]]
        ['x', None, None, '3', '0.5', 'true', 'nan']
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return normalise_cell(value.decode("utf-8", errors="replace"))
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _read_csv(text: str, file: str) -> SampleTable:
    """Parse CSV text with a header line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((line for line in reader if not _blank_line(line)), None)
        if header is None:
            raise DatasetError(
                "the table is empty (no header line)",
                file=file,
                fix="start with a header line such as `id,label,...`",
            )
        header = [name.strip() for name in header]
        _check_header(header, file)
        cells: list[list[str | None]] = [[] for _ in header]
        n_rows = 0
        for fields in reader:
            if _blank_line(fields):
                continue
            n_rows += 1
            if len(fields) != len(header):
                raise DatasetError(
                    f"has {len(fields)} fields but the header has {len(header)}",
                    file=file,
                    row=n_rows,
                    fix="quote cells that contain commas and give every row one field "
                    "per header column",
                )
            for column, value in zip(cells, fields, strict=True):
                column.append(normalise_cell(value))
    except csv.Error as exc:
        raise DatasetError(
            f"malformed CSV near line {reader.line_num}: {exc}",
            file=file,
            fix="check the quoting of that line",
        ) from None
    return SampleTable(file, dict(zip(header, cells, strict=True)), n_rows)


def _blank_line(fields: list[str]) -> bool:
    """Whether a parsed CSV line is blank: empty, or white space only (no delimiter)."""
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _check_header(header: list[str], file: str) -> None:
    """Header names must be non-empty and unique."""
    for position, name in enumerate(header, start=1):
        if not name.strip():
            raise DatasetError(
                f"header column {position} has no name",
                file=file,
                fix="give every header column a name",
            )
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DatasetError(
            f"header names columns twice: {duplicated}",
            file=file,
            column=duplicated[0],
            fix="rename the duplicated columns",
        )


def _read_jsonl(text: str, file: str) -> SampleTable:
    """Parse JSON lines; columns are the union of keys, in order of first appearance."""
    records: list[dict[str, Any]] = []
    # split on "\n" only: str.splitlines would also split on U+2028, which JSON strings may hold
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        row = len(records) + 1
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            detail = (f"{exc.msg}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                      else "nested too deeply" if isinstance(exc, RecursionError) else str(exc))
            raise DatasetError(
                f"line {line_number} is not valid JSON ({detail})",
                file=file,
                row=row,
                fix="write one JSON object per line",
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(
                f"line {line_number} is a JSON {type(record).__name__}, not an object",
                file=file,
                row=row,
                fix='write one object per line, e.g. {"id": "a", "label": "cat"}',
            )
        records.append(record)
    names = list(dict.fromkeys(key for record in records for key in record))
    columns = {name: [normalise_cell(record.get(name)) for record in records] for name in names}
    return SampleTable(file, columns, len(records))


def _read_parquet(path: Path) -> SampleTable:
    """Read a parquet file with pyarrow (imported only here)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "reading .parquet needs pyarrow, which is not installed",
            file=str(path),
            fix="pip install 'metamodal[parquet]' (or convert the table to .csv / .jsonl)",
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(
            f"cannot read parquet: {exc}", file=str(path), fix="rewrite the file"
        ) from None
    columns = {
        name: [normalise_cell(value) for value in table.column(name).to_pylist()]
        for name in table.column_names
    }
    return SampleTable(str(path), columns, table.num_rows)

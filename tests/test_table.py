"""Tests of sample-table reading: CSV, JSON lines, parquet, cell normalisation, errors."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamodal.data.table import SampleTable, normalise_cell, read_samples
from metamodal.errors import DatasetError


def test_csv_cells_rows_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_text('id, label ,note\n1,cat,"a, b"\n\n2,dog,\n3,,"two\nlines"\n4,cat,  \n')
    table = read_samples(path)
    assert table.file == str(path) and table.n_rows == 4
    assert list(table.columns) == ["id", "label", "note"]  # header names are stripped
    assert table.columns["label"] == ["cat", "dog", None, "cat"]
    assert table.columns["note"] == ["a, b", None, "two\nlines", None]


def test_csv_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_bytes("id,label\n1,a\n".encode("utf-8-sig"))
    assert list(read_samples(path).columns) == ["id", "label"]


def test_csv_lines_of_white_space_are_blank(tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    path.write_bytes(b"  \r\nid,label\r\n1,a\r\n \t \r\n2,b\r\n   \r\n")
    table = read_samples(path)
    assert table.n_rows == 2 and table.columns == {"id": ["1", "2"], "label": ["a", "b"]}
    path.write_text("id,label\n1,a\n,\n")  # a line of empty cells is a row, not blank
    assert read_samples(path).columns["id"] == ["1", None]


@pytest.mark.parametrize(
    ("content", "match", "row"),
    [
        ("", "no header", None),
        ("id,label\n1,a\n2,b,extra\n", "3 fields but the header has 2", 2),
        ("id,id\n1,2\n", "twice", None),
        ("id,,x\n1,2,3\n", "header column 2 has no name", None),
    ],
)
def test_csv_errors_name_file_and_row(
    tmp_path: Path, content: str, match: str, row: int | None
) -> None:
    path = tmp_path / "samples.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=match) as info:
        read_samples(path)
    assert info.value.file == str(path) and info.value.row == row


def test_not_utf8_missing_and_unknown_suffix(tmp_path: Path) -> None:
    bad = tmp_path / "samples.csv"
    bad.write_bytes(b"id,label\n1,\xff\n")
    with pytest.raises(DatasetError, match="UTF-8"):
        read_samples(bad)
    with pytest.raises(DatasetError, match="not found") as info:
        read_samples(tmp_path / "nope.csv")
    assert info.value.file == str(tmp_path / "nope.csv")
    (tmp_path / "samples.xlsx").write_text("x")
    with pytest.raises(DatasetError, match=r"\.csv, \.jsonl, \.parquet"):
        read_samples(tmp_path / "samples.xlsx")


def test_jsonl_normalises_values(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    lines = [
        {"id": 1, "label": "cat", "x": 0.5, "flag": True},
        {"id": 2, "label": None, "x": float("nan"), "extra": [1, 2]},
        {"id": "3", "label": "", "x": 7},
    ]
    path.write_text(
        "\n".join(json.dumps(line) for line in lines[:2]) + "\n\n" + json.dumps(lines[2])
    )
    table = read_samples(path)
    assert table.n_rows == 3
    assert list(table.columns) == ["id", "label", "x", "flag", "extra"]
    assert table.columns["id"] == ["1", "2", "3"]
    assert table.columns["label"] == ["cat", None, None]
    assert table.columns["x"] == ["0.5", "nan", "7"]
    assert table.columns["flag"] == ["true", None, None]
    assert table.columns["extra"] == [None, "[1, 2]", None]


def test_jsonl_keeps_line_separator_characters_inside_strings(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"id": "a", "t": "x\u2028y"}, ensure_ascii=False) + "\r\n")
    assert read_samples(path).columns["t"] == ["x\u2028y"]


def test_jsonl_bad_line_names_line_and_row(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b",\n')
    with pytest.raises(DatasetError, match="line 3 is not valid JSON") as info:
        read_samples(path)
    assert info.value.row == 2 and info.value.file == str(path)
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match="line 2 is a JSON list"):
        read_samples(path)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "samples.parquet"
    data = {"id": ["a", "b"], "label": ["x", None], "n": [1, None], "f": [0.25, float("nan")]}
    pq.write_table(pa.table(data), path)
    table = read_samples(path)
    assert table.n_rows == 2
    assert table.columns == {
        "id": ["a", "b"],
        "label": ["x", None],
        "n": ["1", None],
        "f": ["0.25", "nan"],
    }


def test_parquet_corrupt_and_without_pyarrow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "samples.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="cannot read parquet"):
        read_samples(path)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import now fails
    with pytest.raises(DatasetError, match="pyarrow") as info:
        read_samples(path)
    assert "metamodal[parquet]" in str(info.value.fix)


def test_normalise_cell() -> None:
    assert normalise_cell("  x ") == "  x "
    assert normalise_cell("\t") is None
    assert normalise_cell(False) == "false"
    assert normalise_cell(10**20) == str(10**20)
    assert normalise_cell(float("inf")) == "inf"
    assert normalise_cell(b"hi") == "hi"
    assert normalise_cell({"a": 1}) == '{"a": 1}'


def test_column_lookup() -> None:
    table = SampleTable("s.csv", {"id": ["a"]}, 1)
    assert table.column("id") == ["a"]
    with pytest.raises(DatasetError, match="column not found") as info:
        table.column("label")
    assert info.value.column == "label" and "id" in str(info.value.fix)


cell_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(st.lists(cell_text, min_size=3, max_size=3), max_size=8))
def test_csv_round_trip_of_arbitrary_text(tmp_path: Path, rows: list[list[str]]) -> None:
    path = tmp_path / "samples.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "label", "note"])
        writer.writerows(rows)
    table = read_samples(path)
    assert table.n_rows == len(rows)
    for position, name in enumerate(["id", "label", "note"]):
        expected = [row[position] if row[position].strip() else None for row in rows]
        assert table.columns[name] == expected

"""Tests of dataset loading and validation: ids, labels, groups, columns, sample tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metamodal.data.dataset import (
    MultimodalDataset,
    check_table,
    load_dataset,
    load_sample_table,
)
from metamodal.data.schema import load_schema
from metamodal.data.table import SampleTable
from metamodal.errors import DatasetError, ModalityError, UnknownNameError

SCHEMA = """
label = "label"
group = "family"

[modalities.note]
kind = "text"
column = "note"

[modalities.photo]
kind = "image"
column = "photo"

[modalities.size]
kind = "tabular"
columns = ["w", "h"]
"""

ROWS = [
    "id,label,family,note,photo,w,h",
    "a,cat,felid,soft,a.png,1,2",
    "b,cat,felid,,b.png,,",
    "c,dog,canid,loud,,3,",
    "d,fox,canid,red,d.png,4,5",
]


def make(tmp_path: Path, rows: list[str] = ROWS, schema: str = SCHEMA) -> Path:
    (tmp_path / "dataset.toml").write_text(schema)
    (tmp_path / "samples.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def dataset_error(root: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    assert info.value.fix
    return info.value


def test_load_dataset_fields(tmp_path: Path) -> None:
    ds = load_dataset(make(tmp_path))
    assert len(ds) == 4 and ds.root == tmp_path
    assert ds.ids == ["a", "b", "c", "d"]
    assert ds.labels == ["cat", "cat", "dog", "fox"]
    assert ds.groups == ["felid", "felid", "canid", "canid"]
    assert ds.classes == ["cat", "dog", "fox"]
    assert ds.modalities == ["note", "photo", "size"]
    assert ds.rows() == [1, 2, 3, 4]
    assert ds.cells("note") == ["soft", None, "loud", "red"]
    assert ds.cells("photo") == ["a.png", "b.png", None, "d.png"]
    assert ds.cells("size") == [["1", "2"], None, ["3", None], ["4", "5"]]
    assert "samples=4" in repr(ds)


def test_subset_and_context(tmp_path: Path) -> None:
    ds = load_dataset(make(tmp_path))
    sub = ds.subset([3, 1])
    assert sub.ids == ["d", "b"] and sub.rows() == [4, 2] and sub.classes == ["cat", "fox"]
    assert sub.subset([1]).ids == ["b"] and sub.subset([1]).rows() == [2]
    ctx = sub.context("photo")
    assert (ctx.root, ctx.table_file, list(ctx.rows), ctx.column) == (
        tmp_path,
        str(tmp_path / "samples.csv"),
        [4, 2],
        "photo",
    )
    assert sub.context("size", problems=[]).column == "size"
    with pytest.raises(UnknownNameError, match="note, photo, size"):
        ds.cells("sound")


def test_dataset_toml_path_and_no_group(tmp_path: Path) -> None:
    schema = SCHEMA.replace('group = "family"\n', "")
    ds = load_dataset(make(tmp_path, schema=schema) / "dataset.toml")
    assert ds.groups is None and ds.root == tmp_path


def test_samples_resolution(tmp_path: Path) -> None:
    make(tmp_path)
    records = [
        {"id": "z", "label": "cat", "family": "felid", "note": "x", "photo": None, "w": 1, "h": 2}
    ]
    (tmp_path / "samples.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert load_dataset(tmp_path).ids == ["a", "b", "c", "d"]  # samples.csv comes first
    (tmp_path / "samples.csv").unlink()
    ds = load_dataset(tmp_path)
    assert ds.ids == ["z"] and ds.cells("size") == [["1", "2"]]
    (tmp_path / "dataset.toml").write_text('samples = "other.csv"\n' + SCHEMA)
    error = dataset_error(tmp_path)
    assert error.column == "samples" and error.file == str(tmp_path / "dataset.toml")
    (tmp_path / "samples.jsonl").rename(tmp_path / "other.jsonl")
    (tmp_path / "dataset.toml").write_text(SCHEMA)
    error = dataset_error(tmp_path)
    assert "no sample table" in error.message and error.file == str(tmp_path)


def test_missing_id_column(tmp_path: Path) -> None:
    rows = [row.split(",", 1)[1] for row in ROWS]
    error = dataset_error(make(tmp_path, rows))
    assert error.column == "id" and error.file == str(tmp_path / "samples.csv")


def test_table_without_samples(tmp_path: Path) -> None:
    error = dataset_error(make(tmp_path, ROWS[:1]))  # a header line only
    assert error.message == "the table has no samples"
    assert error.file == str(tmp_path / "samples.csv")
    query = tmp_path / "query.csv"
    query.write_text(ROWS[0] + "\n")
    with pytest.raises(DatasetError, match="no samples"):
        load_sample_table(query, load_schema(tmp_path), require_label=False)


@pytest.mark.parametrize(
    ("modality", "option", "words"),
    [
        ("photo", "size = -3", "size"),
        ("photo", "colour = true", "colour"),
        ("note", 'tokenizer = "bpe"', "bpe"),  # an unknown name, not only a bad value
    ],
)
def test_loader_options_are_checked_naming_dataset_toml(
    tmp_path: Path, modality: str, option: str, words: str
) -> None:
    line = f'column = "{modality}"'
    error = dataset_error(make(tmp_path, schema=SCHEMA.replace(line, f"{line}\n{option}")))
    assert error.file == str(tmp_path / "dataset.toml")
    assert error.column == f"modalities.{modality}" and words in error.message


def test_empty_id(tmp_path: Path) -> None:
    rows = [*ROWS[:3], ",dog,canid,x,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column, error.message) == (3, "id", "empty id")


def test_duplicate_id_names_both_rows(tmp_path: Path) -> None:
    rows = [*ROWS, "b,dog,canid,x,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column) == (5, "id")
    assert "duplicate id 'b'" in error.message and "row 2" in error.message


@pytest.mark.parametrize("spelling", ["cat ", " cat", "cat\t", "cat\u200b", "\ufeffcat"])
def test_labels_that_differ_only_in_surrounding_spaces_are_refused(tmp_path: Path,
                                                                    spelling: str) -> None:
    """'cat ' beside 'cat' made two classes of one without a word."""
    error = dataset_error(make(tmp_path, [*ROWS, f'e,"{spelling}",felid,x,,,']))
    assert (error.row, error.column) == (5, "label") and "'cat'" in error.message


@pytest.mark.parametrize("label", ["\x1b[2Jcat", "ca\x07t", "\x1b]0;title\x07",
                                   "abc\u202edcba", "line\u2028two"])
def test_a_label_id_or_group_with_a_control_character_is_refused(tmp_path: Path,
                                                                 label: str) -> None:
    """An escape in a label, id or group reached the terminal of every verb that prints them
    (`predict` cleared the screen, set its title; a right-to-left override reordered the
    line), and `inspect` found no problem."""
    error = dataset_error(make(tmp_path, [*ROWS, f'e,"{label}",felid,x,,,']))
    assert (error.row, error.column) == (5, "label") and "control character" in error.message
    error = dataset_error(make(tmp_path, [*ROWS, f'"{label}",cat,felid,x,,,']))
    assert (error.row, error.column) == (5, "id") and "control character" in error.message
    error = dataset_error(make(tmp_path, [*ROWS, f'e,lynx,"{label}",x,,,']))
    assert (error.row, error.column) == (5, "family") and "control character" in error.message


def test_a_label_of_invisible_characters_only_is_refused(tmp_path: Path) -> None:
    error = dataset_error(make(tmp_path, [*ROWS, 'e,"\u200b\u200b",felid,x,,,']))
    assert (error.row, error.column) == (5, "label") and "invisible" in error.message


def test_labels_in_two_unicode_normal_forms_are_refused(tmp_path: Path) -> None:
    rows = [*ROWS, "e,caf\u00e9,felid,x,,,", "f,cafe\u0301,felid,y,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column) == (6, "label") and "normal form" in error.message


def test_empty_label_and_missing_label_column(tmp_path: Path) -> None:
    rows = [*ROWS[:2], "b,,felid,x,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column, error.message) == (2, "label", "empty label")
    rows = [row.replace(",label,", ",kind,") for row in ROWS]
    error = dataset_error(make(tmp_path, rows))
    assert error.column == "label" and error.row is None and "not found" in error.message


def test_group_problems(tmp_path: Path) -> None:
    rows = [row.replace(",family,", ",fam,") for row in ROWS]
    assert dataset_error(make(tmp_path, rows)).column == "family"
    rows = [*ROWS[:2], "b,cat,,x,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column, error.message) == (2, "family", "empty group")
    rows = [*ROWS, "e,cat,canid,x,,,"]
    error = dataset_error(make(tmp_path, rows))
    assert (error.row, error.column) == (5, "family")
    assert "'cat'" in error.message and "row 1" in error.message


def test_absent_modality_column(tmp_path: Path) -> None:
    rows = [row.rsplit(",", 1)[0] for row in ROWS]  # drop column h
    error = dataset_error(make(tmp_path, rows))
    assert error.column == "h" and "'size'" in error.message


def test_check_table_lists_every_problem(tmp_path: Path) -> None:
    schema = load_schema(make(tmp_path))
    table = SampleTable(
        "s.csv",
        {
            "id": ["a", "a", None],
            "label": ["x", None, "y"],
            "note": ["hi", "hi", None],
            "photo": [None] * 3,
            "w": [None] * 3,
        },
        3,
    )
    found = [(p.row, p.column) for p in check_table(table, schema)]
    assert found == [(2, "id"), (3, "id"), (2, "label"), (None, "family"), (None, "h"), (3, None)]
    assert "no modality" in check_table(table, schema)[-1].message
    relaxed = check_table(
        table, schema, require_label=False, require_group=False, require_modalities=False
    )
    assert [(p.row, p.column) for p in relaxed] == [(2, "id"), (3, "id")]


def test_missing_modalities_are_not_errors(tmp_path: Path) -> None:
    rows = [ROWS[0], "a,cat,felid,,a.png,,"]
    ds = load_dataset(make(tmp_path, rows))
    assert ds.cells("note") == [None] and ds.cells("size") == [None]
    # but a sample needs at least one modality
    error = dataset_error(make(tmp_path, [ROWS[0], "a,cat,felid,,,,"]))
    assert error.row == 1 and "no modality" in error.message


def test_load_sample_table_for_prediction(tmp_path: Path) -> None:
    schema = load_schema(make(tmp_path))
    query_dir = tmp_path / "queries"
    query_dir.mkdir()
    query = query_dir / "query.csv"
    query.write_text("id,note,photo,w,h\nq1,hi,q.png,1,2\nq2,,,,\n")
    ds = load_sample_table(query, schema, require_label=False)
    assert ds.root == query_dir and ds.ids == ["q1", "q2"]
    assert ds.labels == [None, None] and ds.classes == [] and ds.groups is None
    assert ds.cells("photo") == ["q.png", None]
    with pytest.raises(DatasetError, match="label column not found") as info:
        load_sample_table(query, schema)
    assert info.value.file == str(query)
    support = query_dir / "support.csv"
    support.write_text("id,label,note\ns1,cat,hi\ns2,,x\n")
    with pytest.raises(DatasetError, match="empty label") as info:
        load_sample_table(support, schema)
    assert info.value.row == 2


def test_load_sample_table_missing_modality_columns(tmp_path: Path) -> None:
    schema = load_schema(make(tmp_path))
    path = tmp_path / "support.csv"
    path.write_text("id,label,note\ns1,cat,hi\n")
    with pytest.warns(UserWarning, match="photo"):
        ds = load_sample_table(path, schema)
    assert ds.cells("photo") == [None] and ds.cells("size") == [None]
    assert ds.cells("note") == ["hi"]
    path.write_text("id,label\ns1,cat\n")
    with pytest.raises(ModalityError, match="none of the modality columns"):
        load_sample_table(path, schema)


def test_constructor_does_not_validate(tmp_path: Path) -> None:
    schema = load_schema(make(tmp_path))
    table = SampleTable("s.csv", {"label": ["x", None]}, 2)
    ds = MultimodalDataset(tmp_path, schema, table)
    assert ds.ids == ["", ""] and ds.labels == ["x", None] and ds.groups is None

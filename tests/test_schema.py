"""Tests of dataset.toml parsing: valid schemas, every kind of error, round trips."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metamodal.data.schema import (
    DatasetSchema,
    ModalitySpec,
    load_schema,
    read_schema,
    valid_kinds,
)
from metamodal.errors import DatasetError

FULL = """
name = "field-guide"
label = "species"
group = "family"
samples = "table.jsonl"

[modalities.image]
kind = "image"
column = "photo"
size = 16

[modalities.caption]
kind = "text"
column = "caption"

[modalities.sound]
kind = "audio"
column = "sound"

[modalities.track]
kind = "sequence"
column = "track"

[modalities.measurements]
kind = "tabular"
columns = ["wingspan_cm", "weight_g"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "dataset.toml").write_text(text)
    return tmp_path


def schema_error(tmp_path: Path, text: str) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        load_schema(write(tmp_path, text))
    assert info.value.file is not None and info.value.file.endswith("dataset.toml")
    assert info.value.fix
    return info.value


def test_full_schema_parses_every_field(tmp_path: Path) -> None:
    schema = load_schema(write(tmp_path, FULL))
    assert (schema.name, schema.label, schema.group, schema.samples) == (
        "field-guide",
        "species",
        "family",
        "table.jsonl",
    )
    assert list(schema.modalities) == ["image", "caption", "sound", "track", "measurements"]
    image = schema.modalities["image"]
    assert (image.kind, image.column, image.columns, image.options) == (
        "image",
        "photo",
        None,
        {"size": 16},
    )
    tab = schema.modalities["measurements"]
    assert tab.columns == ["wingspan_cm", "weight_g"] and tab.column is None
    assert tab.source_columns() == ["wingspan_cm", "weight_g"]
    assert image.source_columns() == ["photo"]


def test_name_defaults_to_directory_and_toml_path_is_accepted(tmp_path: Path) -> None:
    root = tmp_path / "my-set"
    root.mkdir()
    write(root, 'label = "y"\n[modalities.t]\nkind = "text"\ncolumn = "t"\n')
    assert load_schema(root).name == "my-set"
    assert load_schema(root / "dataset.toml").name == "my-set"


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    windows, plain = tmp_path / "windows", tmp_path / "plain"
    windows.mkdir()
    plain.mkdir()
    (windows / "dataset.toml").write_bytes(FULL.replace("\n", "\r\n").encode("utf-8-sig"))
    assert load_schema(windows) == load_schema(write(plain, FULL))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as info:
        load_schema(tmp_path)
    assert info.value.file == str(tmp_path / "dataset.toml")


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    error = schema_error(tmp_path, 'label = "y"\nname = \n')
    assert "line 2" in str(error) and "not valid TOML" in str(error)


def test_missing_label(tmp_path: Path) -> None:
    error = schema_error(tmp_path, '[modalities.t]\nkind = "text"\ncolumn = "t"\n')
    assert error.column == "label" and "label" in error.message


def test_no_modalities(tmp_path: Path) -> None:
    error = schema_error(tmp_path, 'label = "y"\n')
    assert error.column == "modalities"


def test_unknown_kind_lists_valid_kinds(tmp_path: Path) -> None:
    error = schema_error(tmp_path, 'label = "y"\n[modalities.v]\nkind = "hologram"\ncolumn = "v"\n')
    assert error.column == "modalities.v.kind" and "'hologram'" in error.message
    for kind in ("image", "text", "audio", "sequence", "tabular"):
        assert kind in str(error.fix)
    assert set(valid_kinds()) >= {"image", "text", "audio", "sequence", "tabular"}


@pytest.mark.parametrize(
    ("table", "column"),
    [
        ('kind = "image"', "modalities.m.column"),
        ('kind = "tabular"', "modalities.m.columns"),
        ('kind = "tabular"\ncolumns = []', "modalities.m.columns"),
        ('kind = "tabular"\ncolumns = ["a", 3]', "modalities.m.columns"),
        ('kind = "tabular"\ncolumns = ["a", "a"]', "modalities.m.columns"),
        ('kind = "tabular"\ncolumn = "a"', "modalities.m.column"),
        ('kind = "image"\ncolumns = ["a"]', "modalities.m.columns"),
        ('kind = "text"\ncolumn = 5', "modalities.m.column"),
        ('kind = "text"\ncolumn = "y"', "modalities.m.column"),
        ("column = 'a'", "modalities.m.kind"),
    ],
)
def test_bad_modality_table(tmp_path: Path, table: str, column: str) -> None:
    error = schema_error(tmp_path, f'label = "y"\n[modalities.m]\n{table}\n')
    assert error.column == column


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ('label = 3\n[modalities.t]\nkind = "text"\ncolumn = "t"\n', "label"),
        ('label = "y"\ngroup = ""\n[modalities.t]\nkind = "text"\ncolumn = "t"\n', "group"),
        ('label = "y"\nsamples = 1\n[modalities.t]\nkind = "text"\ncolumn = "t"\n', "samples"),
        ('label = "y"\nmodalities = 3\n', "modalities"),
        ('label = "y"\n[modalities]\nt = 3\n', "modalities.t"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, column: str) -> None:
    assert schema_error(tmp_path, text).column == column


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_bytes(b'label = "\xff"\n')
    with pytest.raises(DatasetError, match="UTF-8"):
        load_schema(tmp_path)


def test_unknown_top_level_key_warns(tmp_path: Path) -> None:
    text = 'label = "y"\nlable = "z"\n[modalities.t]\nkind = "text"\ncolumn = "t"\n'
    with pytest.warns(UserWarning, match="lable"):
        load_schema(write(tmp_path, text))


def test_read_schema_collects_every_problem(tmp_path: Path) -> None:
    text = (
        'label = "y"\n[modalities.a]\nkind = "hologram"\ncolumn = "a"\n'
        '[modalities.b]\nkind = "image"\n[modalities.c]\nkind = "text"\ncolumn = "c"\n'
    )
    problems: list[DatasetError] = []
    schema = read_schema(write(tmp_path, text), problems)
    assert [p.column for p in problems] == ["modalities.a.kind", "modalities.b.column"]
    assert schema is not None and list(schema.modalities) == ["c"]


def test_to_dict_from_dict_round_trip(tmp_path: Path) -> None:
    schema = load_schema(write(tmp_path, FULL))
    data = schema.to_dict()
    assert DatasetSchema.from_dict(data) == schema
    assert data["modalities"]["image"] == {"kind": "image", "column": "photo", "size": 16}
    assert "group" not in DatasetSchema("n", "y", modalities=schema.modalities).to_dict()


def test_from_dict_validates() -> None:
    with pytest.raises(DatasetError, match="label"):
        DatasetSchema.from_dict({"modalities": {"t": {"kind": "text", "column": "t"}}})


def test_modality_spec_from_dict() -> None:
    spec = ModalitySpec.from_dict("f", {"kind": "tabular", "columns": ["a"], "scale": True})
    assert spec == ModalitySpec("f", "tabular", columns=["a"], options={"scale": True})
    assert ModalitySpec.from_dict("f", spec.to_dict()) == spec
    with pytest.raises(DatasetError, match="kind"):
        ModalitySpec.from_dict("f", {"kind": "nope", "column": "a"})


# -- property tests -------------------------------------------------------------------------

names = st.text(string.ascii_letters + string.digits + "_- .é", min_size=1, max_size=12).filter(
    lambda s: s.strip() != ""
)
option_values = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(max_size=8),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=3),
)


@st.composite
def modality_tables(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(["image", "text", "audio", "sequence", "tabular"]))
    table: dict = {"kind": kind}
    if kind == "tabular":
        table["columns"] = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    else:
        table["column"] = draw(names)
    keys = st.text(string.ascii_lowercase + "_", min_size=1, max_size=8).filter(
        lambda k: k not in ("kind", "column", "columns")
    )
    table.update(draw(st.dictionaries(keys, option_values, max_size=3)))
    return table


@st.composite
def schema_dicts(draw: st.DrawFn) -> dict:
    label = draw(names)
    data: dict = {"name": draw(names), "label": label}
    if draw(st.booleans()):
        data["group"] = draw(names)
    if draw(st.booleans()):
        data["samples"] = draw(names)
    modalities = draw(st.dictionaries(names, modality_tables(), min_size=1, max_size=4))
    for table in modalities.values():  # a modality may not read the label column
        if table.get("column") == label:
            table["column"] = label + "_x"
        if label in table.get("columns", []):
            table["columns"] = [c for c in table["columns"] if c != label] or [label + "_x"]
    data["modalities"] = modalities
    return data


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=schema_dicts())
def test_generated_schemas_round_trip_through_toml(tmp_path: Path, data: dict) -> None:
    (tmp_path / "dataset.toml").write_text(tomli_w.dumps(data))
    schema = load_schema(tmp_path)
    assert schema.to_dict() == data
    assert DatasetSchema.from_dict(schema.to_dict()) == schema

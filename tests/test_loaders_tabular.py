"""Tests of the tabular loader: parsing, standardising, imputation, errors, state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metamodal.data.loaders import DecodeContext, TabularLoader, loaders
from metamodal.errors import ConfigError, DatasetError

COLUMNS = ["wingspan_cm", "weight_g", "beak_mm"]


def context(n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(Path("."), "samples.csv", list(range(1, n + 1)), "measurements",
                         problems)


def test_registered_under_kind() -> None:
    assert isinstance(loaders.create("tabular", columns=COLUMNS), TabularLoader)


def test_standardises_with_meta_train_mean_and_std() -> None:
    loader = TabularLoader(columns=COLUMNS)
    loader.fit([["1", "10", "5"], ["3", "30", "5"], None, [" 5 ", None, "5"]], context(4))
    assert loader.mean_ == pytest.approx([3.0, 20.0, 5.0])
    assert loader.std_ == pytest.approx([(8 / 3) ** 0.5, 10.0, 1.0])  # constant column: std 1
    batch = loader.decode([["5", "40", "7"], ["3", "20", "5"]], context(2))
    assert batch.values.dtype == torch.float32 and batch.lengths is None
    assert batch.values[0].tolist() == pytest.approx([2 / (8 / 3) ** 0.5, 2.0, 2.0])
    assert batch.values[1].tolist() == [0.0, 0.0, 0.0]


def test_partly_empty_rows_are_imputed_and_all_empty_rows_missing() -> None:
    loader = TabularLoader(columns=COLUMNS)
    loader.fit([["0", "0", "0"], ["2", "4", "6"]], context(2))
    batch = loader.decode([["2", None, "  "], [None, None, None], None, ["1e0", "2", "3"]],
                          context(4))
    assert batch.present.tolist() == [True, False, False, True]
    assert batch.values.tolist() == [[1.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3, [0.0] * 3]


def test_without_normalize_values_are_raw_and_empty_values_get_the_mean() -> None:
    loader = TabularLoader(columns=["a", "b"], normalize=False)
    loader.fit([["1", "10"], ["3", None]], context(2))
    assert loader.decode([["-2.5", None]], context(1)).values.tolist() == [[-2.5, 10.0]]
    # a spreadsheet's no-break space around a number (float() allowed it) is not refused
    assert loader.decode([["7\u00a0", " 1E+01 "]], context(1)).values.tolist() == [[7.0, 10.0]]


def test_bad_values_name_the_row_and_exact_column() -> None:
    loader = TabularLoader(columns=COLUMNS)
    for cell, column, message in [(["1", "heavy", "2"], "weight_g", "'heavy' is not a number"),
                                  (["1", "2", "nan"], "beak_mm", "is NaN or infinite"),
                                  (["-inf", "2", "3"], "wingspan_cm", "is NaN or infinite"),
                                  (["1,5", "2", "3"], "wingspan_cm", "not a number"),
                                  # Python's float() takes these; a data file does not mean them
                                  (["1_000", "2", "3"], "wingspan_cm", "not a number"),
                                  (["1", "\u0661\u0662", "3"], "weight_g", "not a number")]:
        # (white space around a number is not part of it: "7\u00a0" from a spreadsheet is 7)
        with pytest.raises(DatasetError, match=message) as info:
            loader.decode([["1", "2", "3"], cell], context(2))
        assert (info.value.file, info.value.row, info.value.column) == ("samples.csv", 2, column)
        assert info.value.fix


def test_problems_are_collected_and_bad_rows_treated_as_missing() -> None:
    problems: list[DatasetError] = []
    loader = TabularLoader(columns=COLUMNS)
    batch = loader.decode([["x", "2", "inf"], ["1", "2", "3"], ["1", "2"]],
                          context(3, problems))
    assert [(p.row, p.column) for p in problems] == [(3, "measurements"), (1, "wingspan_cm"),
                                                     (1, "beak_mm")]
    assert "2 values, expected 3" in str(problems[0])
    assert batch.present.tolist() == [False, True, False]
    assert batch.values[0].abs().sum() == 0


def test_without_column_names_width_comes_from_cells() -> None:
    loader = TabularLoader()
    assert loader.input_info() == {"features": None}
    loader.fit([None, ["1", "2"], ["3", "4"]], context(3))
    assert loader.input_info() == {"features": 2}
    with pytest.raises(DatasetError) as info:
        loader.decode([["1", "?"]], context(1))
    assert info.value.column == "measurements value 2"
    single = TabularLoader(columns=["x"])
    assert single.decode(["4"], context(1)).values.tolist() == [[4.0]]  # a bare string cell


def test_state_dict_round_trip_decodes_identically() -> None:
    loader = TabularLoader(columns=COLUMNS)
    loader.fit([["1", "2", "3"], ["4", None, "9"], ["0", "7", "1"]], context(3))
    again = TabularLoader.from_state(json.loads(json.dumps(loader.state_dict())))
    assert again.is_fitted and again.input_info() == {"features": 3}
    cells = [["2", None, "8"], None, ["0", "0", "0"]]
    first, second = loader.decode(cells, context(3)), again.decode(cells, context(3))
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.present, second.present)


def test_decode_before_fit_is_raw_with_zero_imputed() -> None:
    loader = TabularLoader(columns=["a", "b"])
    assert not loader.is_fitted
    assert loader.decode([["7", None]], context(1)).values.tolist() == [[7.0, 0.0]]


def test_fit_warns_about_columns_without_values() -> None:
    loader = TabularLoader(columns=["a", "b"])
    with pytest.warns(UserWarning, match=r"\['b'\]"):
        loader.fit([["1", None], ["2", None]], context(2))
    assert loader.mean_ == [1.5, 0.0] and loader.std_ == [0.5, 1.0]


@pytest.mark.parametrize("options", [{"columns": "a,b"}, {"columns": [1, 2]},
                                     {"normalize": None}])
def test_invalid_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError):
        TabularLoader(**options)


def test_a_finite_value_beyond_float32_once_standardised_is_a_problem_not_inf() -> None:
    problems: list[DatasetError] = []
    loader = TabularLoader(columns=COLUMNS)
    loader.fit([["1", "10", "5"], ["3", "30", "5"]], context(2))
    batch = loader.decode([["1e308", "20", "5"], ["2", "20", "5"], ["2", "1e20", "5"]],
                          context(3, problems))  # 1e20: finite in float32, too far for it
    assert [(p.row, p.column) for p in problems] == [(1, "wingspan_cm"), (3, "weight_g")]
    assert "float32" in str(problems[0])
    assert batch.present.tolist() == [False, True, False]
    assert torch.isfinite(batch.values).all() and batch.values[0].abs().sum() == 0

"""Tests of the sequence loader: .npy / .csv reading, padding, normalisation, errors, state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metamodal.data.loaders import DecodeContext, SequenceLoader, loaders
from metamodal.data.loaders.sequence import read_sequence_file
from metamodal.errors import ConfigError, DatasetError


def context(root: Path, n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(root, "samples.csv", list(range(1, n + 1)), "track", problems)


def test_registered_under_kind() -> None:
    assert isinstance(loaders.create("sequence", max_length=8), SequenceLoader)


def test_reads_npy_one_and_two_dimensional_and_csv_with_or_without_header(
    tmp_path: Path,
) -> None:
    np.save(tmp_path / "a.npy", np.array([[1, 2], [3, 4], [5, 6]], dtype=np.int16))
    np.save(tmp_path / "b.npy", np.array([7.5, 8.5]))
    (tmp_path / "c.csv").write_text("x,y\n9,10\n\n11, 12\n")
    (tmp_path / "d.CSV").write_text("\ufeff-1,2e1\n")
    assert read_sequence_file(tmp_path / "a.npy").tolist() == [[1, 2], [3, 4], [5, 6]]
    assert read_sequence_file(tmp_path / "b.npy").tolist() == [[7.5], [8.5]]
    assert read_sequence_file(tmp_path / "c.csv").tolist() == [[9, 10], [11, 12]]
    assert read_sequence_file(tmp_path / "d.CSV").tolist() == [[-1, 20]]
    assert read_sequence_file(tmp_path / "a.npy").dtype == np.float32


def test_padding_lengths_and_truncation(tmp_path: Path) -> None:
    np.save(tmp_path / "long.npy", np.arange(10.0).reshape(5, 2))
    (tmp_path / "short.csv").write_text("a,b\n1,2\n3,4\n")
    loader = SequenceLoader(max_length=4, normalize=False)
    batch = loader.decode(["short.csv", None, "long.npy"], context(tmp_path, 3))
    assert batch.values.shape == (3, 4, 2)
    assert batch.lengths.tolist() == [2, 0, 4]
    assert batch.present.tolist() == [True, False, True]
    assert batch.values[0].tolist() == [[1, 2], [3, 4], [0, 0], [0, 0]]
    assert batch.values[2].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert batch.values[1].abs().sum() == 0


def test_fit_standardises_each_feature_over_meta_train_steps(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[0.0, 5.0], [2.0, 5.0]]))
    np.save(tmp_path / "b.npy", np.array([[4.0, 5.0], [100.0, 7.0]]))  # step 2 cut away
    loader = SequenceLoader(max_length=1)
    loader.fit(["a.npy", None, "b.npy"], context(tmp_path, 3))
    assert loader.features_ == 2
    assert loader.mean_ == pytest.approx([2.0, 5.0])
    assert loader.std_ == pytest.approx([2.0, 1.0])  # constant feature keeps std 1
    loader = SequenceLoader()
    loader.fit(["a.npy", "b.npy"], context(tmp_path, 2))
    assert loader.mean_ == pytest.approx([26.5, 5.5])
    batch = loader.decode(["a.npy", "b.npy"], context(tmp_path, 2))
    values = batch.values.reshape(-1, 2)
    assert torch.allclose(values.mean(dim=0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(values.std(dim=0, unbiased=False), torch.ones(2), atol=1e-5)


def test_padding_stays_zero_after_normalising(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[3.0], [5.0], [7.0]]))
    np.save(tmp_path / "b.npy", np.array([[1.0]]))
    loader = SequenceLoader()
    loader.fit(["a.npy", "b.npy"], context(tmp_path, 2))
    batch = loader.decode(["b.npy", None], context(tmp_path, 2))
    assert batch.values.shape == (2, 1, 1)
    assert batch.values[0, 0, 0] == pytest.approx((1.0 - 4.0) / np.sqrt(5.0))
    wide = loader.decode(["b.npy", "a.npy"], context(tmp_path, 2))
    assert wide.values[0, 1:].abs().sum() == 0


def test_feature_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    np.save(tmp_path / "two.npy", np.zeros((3, 2)))
    np.save(tmp_path / "three.npy", np.zeros((3, 3)))
    loader = SequenceLoader()
    with pytest.raises(DatasetError, match=r"3 features per step but file two\.npy has 2") as info:
        loader.fit(["two.npy", "three.npy"], context(tmp_path, 2))
    assert (info.value.file, info.value.row, info.value.column) == ("three.npy", 2, "track")
    loader.fit(["two.npy"], context(tmp_path, 1))
    with pytest.raises(DatasetError, match="3 features per step but the meta-train"):
        loader.decode(["three.npy"], context(tmp_path, 1))


def _lying_npy(path: Path, shape: tuple[int, ...]) -> None:
    """A float32 .npy file whose header claims ``shape`` over 24 bytes of data."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(b"\0" * 24)


@pytest.mark.parametrize(("name", "write", "message"), [
    ("nan.npy", lambda p: np.save(p, np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, 0.0]])),
     "NaN or infinite .*step 2, feature 0"),
    ("inf.csv", lambda p: p.write_text("a,b\n1,2\n3,inf\n"), "NaN or infinite .*line 3, feature 1"),
    ("text.csv", lambda p: p.write_text("1,2\n3,x\n"), "line 2, value 2 is not a number"),
    ("underscore.csv", lambda p: p.write_text("1,2\n3,1_000\n"), "line 2, value 2 is not"),
    ("ragged.csv", lambda p: p.write_text("1,2\n3\n"), "line 2 has 1 values, expected 2"),
    # lines are those of the file, blank lines included
    ("gaps.csv", lambda p: p.write_text("a,b\n\n1,2\n \n3,nan\n"), "line 5, feature 1"),
    ("gaps_text.csv", lambda p: p.write_text("\n1,2\n\n3,x\n"), "line 4, value 2 is not"),
    ("gaps_ragged.csv", lambda p: p.write_text("1,2\n\n\n3\n"), "line 4 has 1 values"),
    ("cube.npy", lambda p: np.save(p, np.zeros((2, 2, 2))), r"\[T\] or \[T, D\]"),
    ("words.npy", lambda p: np.save(p, np.array(["a", "b"])), "non-numeric"),
    ("objects.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "numeric .npy"),
    ("garbage.npy", lambda p: p.write_bytes(b"\x00garbage"), "cannot read sequence"),
    ("empty.npy", lambda p: np.save(p, np.zeros((0, 3))), "empty"),
    # a header claiming 800 GB: refused before np.load allocates it
    ("claims.npy", lambda p: _lying_npy(p, (10**11, 2)), "claims shape"),
    ("header.csv", lambda p: p.write_text("a,b\n"), "empty"),
    ("track.txt", lambda p: p.write_text("1,2\n"), "unsupported sequence file type"),
    ("missing.npy", lambda p: None, "file not found"),
])
def test_bad_files_name_file_row_and_column(tmp_path: Path, name: str, write, message: str) -> None:
    write(tmp_path / name)
    with pytest.raises(DatasetError, match=message) as info:
        SequenceLoader().decode([None, name], context(tmp_path, 2))
    assert (info.value.file, info.value.row, info.value.column) == (name, 2, "track")


def test_problems_are_collected_and_samples_treated_as_missing(tmp_path: Path) -> None:
    np.save(tmp_path / "ok.npy", np.ones((2, 2)))
    (tmp_path / "bad.csv").write_text("1,2\nnope,3\n")
    problems: list[DatasetError] = []
    batch = SequenceLoader(normalize=False).decode(["bad.csv", "ok.npy", "gone.npy"],
                                                   context(tmp_path, 3, problems))
    assert [(p.file, p.row) for p in problems] == [("bad.csv", 1), ("gone.npy", 3)]
    assert batch.present.tolist() == [False, True, False]
    assert batch.lengths.tolist() == [0, 2, 0]


def test_a_finite_value_too_large_for_the_network_is_a_problem_not_nan(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[0.0, 5.0], [2.0, 7.0]]))
    np.save(tmp_path / "huge.npy", np.array([[1.0, 6.0], [3e38, 6.0]], dtype=np.float32))
    np.save(tmp_path / "far.npy", np.array([[1.0, 6.0], [1e7, 6.0]]))
    loader = SequenceLoader()
    loader.fit(["a.npy"], context(tmp_path, 1))  # mean [1, 6], std [1, 1]
    problems: list[DatasetError] = []
    batch = loader.decode(["huge.npy", "a.npy", "far.npy"], context(tmp_path, 3, problems))
    assert [(p.file, p.row, p.column) for p in problems] == [("huge.npy", 1, "track"),
                                                             ("far.npy", 3, "track")]
    assert "step 1, feature 0" in str(problems[0]) and "standardised" in str(problems[0])
    assert batch.present.tolist() == [False, True, False]
    assert batch.lengths.tolist() == [0, 2, 0]
    assert torch.isfinite(batch.values).all() and batch.values[[0, 2]].abs().sum() == 0
    unnormalised: list[DatasetError] = []  # the bound holds for the values as given, too
    SequenceLoader(normalize=False).decode(["far.npy"], context(tmp_path, 1, unnormalised))
    assert len(unnormalised) == 1 and "standardised" not in str(unnormalised[0])


def test_state_dict_round_trip_decodes_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for k in range(3):
        np.save(tmp_path / f"{k}.npy", rng.normal(size=(4 + k, 3)))
    names = [f"{k}.npy" for k in range(3)]
    loader = SequenceLoader(max_length=5)
    loader.fit(names, context(tmp_path, 3))
    again = SequenceLoader.from_state(json.loads(json.dumps(loader.state_dict())))
    assert again.is_fitted and again.input_info() == {"features": 3, "max_length": 5}
    first = loader.decode([*names, None], context(tmp_path, 4))
    second = again.decode([*names, None], context(tmp_path, 4))
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.lengths, second.lengths)


def test_decode_before_fit_is_unnormalised(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([[3.0, 4.0]]))
    loader = SequenceLoader()
    assert not loader.is_fitted and loader.input_info()["features"] is None
    assert loader.decode(["a.npy"], context(tmp_path, 1)).values.tolist() == [[[3.0, 4.0]]]


@pytest.mark.parametrize("options", [{"max_length": 0}, {"max_length": "5"},
                                     {"normalize": 1}])
def test_invalid_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError):
        SequenceLoader(**options)

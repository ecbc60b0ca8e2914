"""Class splits: disjointness, determinism, order independence and splits.toml errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metamodal.data.splits import ClassSplit, load_split, split_classes
from metamodal.errors import ConfigError, DatasetError

labels_strategy = st.lists(
    st.text(alphabet="abcdefghij", min_size=1, max_size=3), min_size=1, max_size=40
)


def _all(split: ClassSplit) -> list[str]:
    return split.train + split.val + split.test


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, seed=st.integers(0, 2**32), data=st.data())
def test_seeded_split_covers_every_class_once_and_ignores_row_order(
    labels: list[str], seed: int, data: st.DataObject
) -> None:
    split = split_classes(labels, seed=seed)
    assert sorted(_all(split)) == sorted(set(labels))
    assert len(_all(split)) == len(set(_all(split)))
    for part in (split.train, split.val, split.test):
        assert part == sorted(part)
    shuffled = data.draw(st.permutations(labels))
    assert split_classes(shuffled, seed=seed) == split


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(list("abcdefghijkl")),
            st.one_of(st.none(), st.sampled_from(["g1", "g2", "g3", "g4", "g5"])),
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 1000),
    data=st.data(),
)
def test_grouped_split_keeps_groups_whole(
    rows: list[tuple[str, str | None]], seed: int, data: st.DataObject
) -> None:
    labels = [r[0] for r in rows]
    groups = [r[1] for r in rows]
    split = split_classes(labels, groups, seed=seed)
    assert sorted(_all(split)) == sorted(set(labels))
    where = split.assignment()
    for group in {g for g in groups if g is not None}:
        members = {label for label, g in rows if g == group}
        assert len({where[label] for label in members}) == 1, group
    shuffled = data.draw(st.permutations(rows))
    again = split_classes([r[0] for r in shuffled], [r[1] for r in shuffled], seed=seed)
    assert again == split


@pytest.mark.parametrize("n", [3, 5, 10, 50])
def test_every_split_is_non_empty_when_possible(n: int) -> None:
    split = split_classes([f"c{i}" for i in range(n)], seed=4)
    assert split.train and split.val and split.test


def test_two_classes_go_to_train_and_test() -> None:
    split = split_classes(["a", "b"], seed=0)
    assert len(split.train) == 1 and len(split.test) == 1 and split.val == []


def test_fractions_are_followed() -> None:
    split = split_classes([f"c{i:02d}" for i in range(100)], seed=1, fractions=(0.7, 0.1, 0.2))
    assert (len(split.train), len(split.val), len(split.test)) == (70, 10, 20)
    no_val = split_classes([f"c{i}" for i in range(10)], seed=1, fractions=(0.5, 0, 0.5))
    assert no_val.val == [] and len(no_val.train) == 5


def test_fractions_count_classes_not_groups() -> None:
    labels = [f"c{i:02d}" for i in range(40)]
    groups = [f"g{i // 4}" for i in range(40)]  # 10 groups of 4 classes
    split = split_classes(labels, groups, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (24, 8, 8)


def test_seed_changes_the_split() -> None:
    labels = [f"c{i}" for i in range(30)]
    splits = {tuple(split_classes(labels, seed=s).train) for s in range(5)}
    assert len(splits) > 1


def test_groups_sharing_a_class_are_kept_together() -> None:
    labels = ["a", "a", "b", "c", "d", "e", "f"]
    groups = ["g1", "g2", "g2", "g3", "g4", "g5", "g6"]
    for seed in range(10):
        where = split_classes(labels, groups, seed=seed).assignment()
        assert where["a"] == where["b"]


@pytest.mark.parametrize(
    "fractions", [(1.0, 0.0), (-0.1, 0.5, 0.6), (0, 0, 0), (float("nan"), 1, 1)]
)
def test_invalid_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ConfigError, match="fractions"):
        split_classes(["a", "b", "c"], fractions=fractions)


def test_negative_seed() -> None:
    with pytest.raises(ConfigError, match="seed"):
        split_classes(["a"], seed=-1)


def test_class_split_round_trip_and_unknown_key() -> None:
    split = ClassSplit(["a"], ["b"], ["c", "d"])
    assert ClassSplit.from_dict(split.to_dict()) == split
    assert split.of("test") == ["c", "d"]
    assert split.assignment() == {"a": "train", "b": "val", "c": "test", "d": "test"}
    with pytest.raises(ConfigError, match="unknown split"):
        ClassSplit.from_dict({"train": ["a"], "dev": ["b"]})


# --- splits.toml ----------------------------------------------------------------------------

LABELS = ["sparrow", "finch", "owl", "hawk", "eagle", "heron"]
GROUPS = ["passerine", "passerine", "owls", "raptors", "raptors", "waders"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "splits.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_splits_file_maps_groups_to_classes(tmp_path: Path) -> None:
    path = _write(tmp_path, 'train = ["passerine", "waders"]\nval = ["owls"]\ntest = ["raptors"]\n')
    split = split_classes(LABELS, GROUPS, splits_file=path)
    assert split == ClassSplit(["finch", "heron", "sparrow"], ["owl"], ["eagle", "hawk"])
    assert load_split(tmp_path, LABELS, GROUPS) == split


def test_splits_file_of_labels_without_groups(tmp_path: Path) -> None:
    path = _write(tmp_path, 'train = ["owl", "hawk"]\nval = ["eagle"]\ntest = ["heron"]\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = split_classes(LABELS, splits_file=path)
    assert split == ClassSplit(["hawk", "owl"], ["eagle"], ["heron"])
    assert any("finch" in str(w.message) and "sparrow" in str(w.message) for w in caught)


def test_splits_file_with_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    text = 'train = ["passerine", "waders"]\r\nval = ["owls"]\r\ntest = ["raptors"]\r\n'
    (tmp_path / "splits.toml").write_bytes(text.encode("utf-8-sig"))
    split = load_split(tmp_path, LABELS, GROUPS)
    assert split == ClassSplit(["finch", "heron", "sparrow"], ["owl"], ["eagle", "hawk"])


def test_load_split_without_file_is_seeded(tmp_path: Path) -> None:
    assert load_split(tmp_path, LABELS, GROUPS, seed=5) == split_classes(LABELS, GROUPS, seed=5)


def test_splits_file_unknown_group(tmp_path: Path) -> None:
    path = _write(tmp_path, 'train = ["passerine"]\nval = ["ducks"]\ntest = []\n')
    with pytest.raises(DatasetError) as info:
        split_classes(LABELS, GROUPS, splits_file=path)
    err = info.value
    assert err.file == str(path) and err.column == "val"
    assert "'ducks'" in err.message and "owls" in (err.fix or "")


def test_splits_file_group_in_two_splits(tmp_path: Path) -> None:
    path = _write(tmp_path, 'train = ["owls"]\nval = []\ntest = ["raptors", "owls"]\n')
    with pytest.raises(DatasetError, match="both train and test") as info:
        split_classes(LABELS, GROUPS, splits_file=path)
    assert info.value.column == "test"


def test_splits_file_class_under_two_groups(tmp_path: Path) -> None:
    labels = LABELS + ["owl"]
    groups = GROUPS + ["raptors"]  # "owl" appears under owls and raptors
    path = _write(tmp_path, 'train = ["owls"]\nval = []\ntest = ["raptors"]\n')
    with pytest.raises(DatasetError, match="class 'owl'") as info:
        split_classes(labels, groups, splits_file=path)
    assert info.value.column == "test"
    assert "'owls'" in str(info.value) and "'raptors'" in str(info.value)


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ('train = "owls"\n', "train"),
        ("train = [1, 2]\n", "train"),
        ('train = ["owls"]\ndev = ["raptors"]\n', "dev"),
        ("train = [\n", None),
    ],
)
def test_splits_file_malformed(tmp_path: Path, text: str, column: str | None) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DatasetError) as info:
        split_classes(LABELS, GROUPS, splits_file=path)
    assert info.value.file == str(path) and info.value.column == column
    assert info.value.fix


def test_splits_file_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        split_classes(LABELS, splits_file=tmp_path / "splits.toml")


def test_unlabelled_rows_are_ignored() -> None:
    split = split_classes(["a", None, "b", "c"], ["g1", "g2", "g2", "g3"], seed=0)
    assert sorted(_all(split)) == ["a", "b", "c"]

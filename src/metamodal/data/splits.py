"""Class-disjoint meta-train / meta-val / meta-test splits of a dataset's classes.

Few-shot learning is evaluated on classes never seen in meta-training, so a dataset's classes
are split three ways. The split is made either from a ``splits.toml`` file in the dataset
directory (``train = [...]``, ``val = [...]``, ``test = [...]``: group values, or labels when
the dataset has no group column) or, without one, deterministically from a seed.

When the dataset has a group column (e.g. ``family`` above ``species``) whole groups go to one
split, so that closely related classes never straddle meta-train and meta-test. A sample whose
group cell is empty makes its class a group of its own, named by its label.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metamodal.data.paths import PathRefused, check_own_file
from metamodal.errors import ConfigError, DatasetError
from metamodal.io import ParseError, loads_toml

SPLIT_NAMES = ("train", "val", "test")
SPLITS_FILE = "splits.toml"


@dataclass
class ClassSplit:
    """Class labels of the meta-train, meta-val and meta-test splits (pairwise disjoint).

    Args:
        train: labels of the meta-training classes, sorted.
        val: labels of the meta-validation classes, sorted.
        test: labels of the meta-test classes, sorted.

    Example:
        >>> s = ClassSplit(["a", "b"], ["c"], ["d"])
        >>> ClassSplit.from_dict(s.to_dict()) == s
        True
    """

    train: list[str]
    val: list[str]
    test: list[str]

    def to_dict(self) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}`` (for configs and run files)."""
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> ClassSplit:
        """Rebuild a split from `to_dict`'s output; a missing key is an empty split."""
        unknown = sorted(set(data) - set(SPLIT_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown split name(s) {', '.join(map(repr, unknown))}",
                fix="use only the keys train, val and test",
            )
        return cls(*(list(data.get(name, [])) for name in SPLIT_NAMES))

    def of(self, name: str) -> list[str]:
        """The classes of split ``name`` (``train``, ``val`` or ``test``)."""
        if name not in SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}", fix="use train, val or test")
        return getattr(self, name)

    def assignment(self) -> dict[str, str]:
        """Class label -> the name of its split."""
        return {label: name for name in SPLIT_NAMES for label in self.of(name)}


def split_classes(
    labels: Sequence[str | None],
    groups: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    splits_file: str | Path | None = None,
) -> ClassSplit:
    """Split a dataset's classes into class-disjoint train / val / test sets.

    With ``splits_file`` the file decides (see the module docstring); groups or classes it does
    not mention are left out of every split, with a warning. Without it, the units (groups when
    ``groups`` is given, else classes) are sorted, shuffled with ``seed`` and cut so that the
    number of *classes* in each split is as close as possible to ``fractions``; every split with
    a positive fraction gets at least one unit when there are enough units (train first, then
    test, then val). The result depends only on the set of (label, group) pairs, never on the
    order of the rows.

    Args:
        labels: the class label of every sample, ``N`` of them (``None`` ones are ignored).
        groups: the group value of every sample (``N``; ``None`` where the cell is empty), or
            ``None`` when the dataset has no group column.
        seed: seed of the split when there is no splits file.
        fractions: share of classes for (train, val, test); non-negative, summing to > 0.
        splits_file: path of a ``splits.toml``.

    Returns:
        A `ClassSplit` with sorted labels in each split.

    Raises:
        DatasetError: the splits file is unreadable, names an unknown group/label, puts a group
            in two splits, or puts a class in two splits through two of its groups.
        ConfigError: ``fractions`` or ``seed`` is invalid.

    Example:
        >>> split_classes(["a", "b", "c", "d", "e"], seed=0).train
        ['c', 'd', 'e']
        >>> s = split_classes(["a", "b", "c"], ["x", "x", "y"], seed=1)
        >>> sorted(s.train + s.val + s.test)
        ['a', 'b', 'c']
    """
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(groups)} group values")
    members = _group_members(labels, groups)
    if splits_file is not None:
        return _split_from_file(Path(splits_file), members, grouped=groups is not None)
    return _seeded_split(members, seed=seed, fractions=_check_fractions(fractions))


def seeded_splits(
    labels: Sequence[str | None],
    groups: Sequence[str | None] | None,
    seeds: Sequence[int],
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> Iterator[tuple[int, ClassSplit]]:
    """``(seed, split)`` for each of ``seeds``: the seeded split `split_classes` makes without
    a splits file, with the dataset's groups worked out once for all seeds.

    Example:
        >>> [s.train for _, s in seeded_splits(["a", "b", "c", "d", "e"], None, [0])]
        [['c', 'd', 'e']]
    """
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(groups)} group values")
    members = _group_members(labels, groups)
    checked = _check_fractions(fractions)
    for seed in seeds:
        yield seed, _seeded_split(members, seed=seed, fractions=checked)


def load_split(
    dataset_root: str | Path,
    labels: Sequence[str | None],
    groups: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
) -> ClassSplit:
    """The split of a dataset directory: its ``splits.toml`` if present, else a seeded one.

    Args:
        dataset_root: the dataset directory.
        labels: class label of every sample (``N``).
        groups: group value of every sample (``N``), or ``None`` without a group column.
        seed: seed of the split when the directory has no ``splits.toml``.
        fractions: share of classes for (train, val, test) when there is no file.

    Example:
        >>> import tempfile
        >>> load_split(tempfile.mkdtemp(), ["a", "b", "c"]).to_dict()
        {'train': ['c'], 'val': ['a'], 'test': ['b']}
    """
    path = Path(dataset_root) / SPLITS_FILE
    return split_classes(
        labels,
        groups,
        seed=seed,
        fractions=fractions,
        splits_file=path if path.exists() or path.is_symlink() else None,
    )


def _group_members(
    labels: Sequence[str | None], groups: Sequence[str | None] | None
) -> dict[str, set[str]]:
    """Group name -> its classes. Without groups (or for an empty group cell) the class is its
    own group, named by its label."""
    if groups is None:
        return {label: {label} for label in set(labels) if label is not None}
    members: dict[str, set[str]] = {}
    for label, group in set(zip(labels, groups, strict=True)):
        if label is not None:
            members.setdefault(label if group is None else group, set()).add(label)
    return members


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or any(not np.isfinite(f) or f < 0 for f in values) or sum(values) <= 0:
        raise ConfigError(
            f"invalid split fractions {tuple(fractions)!r}",
            fix="give three non-negative numbers for train, val and test, e.g. (0.6, 0.2, 0.2)",
        )
    total = sum(values)
    return values[0] / total, values[1] / total, values[2] / total


def _connected_units(members: Mapping[str, set[str]]) -> list[list[str]]:
    """Groups that share a class merged into one unit (so a class never straddles splits);
    each unit is its sorted list of classes, units sorted by their first class."""
    parent = {group: group for group in members}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    owner: dict[str, str] = {}
    for group in sorted(members):
        for label in sorted(members[group]):
            if label in owner:
                a, b = root(owner[label]), root(group)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                owner[label] = group
    units: dict[str, set[str]] = {}
    for group, classes in members.items():
        units.setdefault(root(group), set()).update(classes)
    return sorted((sorted(classes) for classes in units.values()), key=lambda u: u[0])


def _seeded_split(
    members: Mapping[str, set[str]], *, seed: int, fractions: tuple[float, float, float]
) -> ClassSplit:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"invalid seed {seed!r}", fix="use a non-negative integer seed")
    units = _connected_units(members)
    order = np.random.default_rng([int(seed), 0x5B11]).permutation(len(units))
    units = [units[i] for i in order]
    sizes = np.array([len(u) for u in units])
    cumulative = np.concatenate([[0], np.cumsum(sizes)])
    total = int(cumulative[-1])

    # At least one unit for each split with a positive fraction, while units last:
    # train first, then test, then val.
    minimum = [0, 0, 0]
    left = len(units)
    for k in (0, 2, 1):
        if fractions[k] > 0 and left > 0:
            minimum[k] = 1
            left -= 1

    bounds = [0]
    for k in range(3):
        start = bounds[-1]
        if k == 2:
            bounds.append(len(units))
        elif fractions[k] == 0:
            bounds.append(start)
        else:
            lo = start + minimum[k]
            hi = len(units) - sum(minimum[k + 1 :])
            target = sum(fractions[: k + 1]) * total
            candidates = np.arange(lo, hi + 1)
            bounds.append(int(candidates[np.argmin(np.abs(cumulative[candidates] - target))]))
    parts = [
        sorted(label for unit in units[bounds[k] : bounds[k + 1]] for label in unit)
        for k in range(3)
    ]
    return ClassSplit(*parts)


def _read_splits_file(path: Path) -> dict[str, list[str]]:
    try:
        check_own_file(path.parent, path.name)  # not a link out, nor a FIFO
        if not path.exists():
            raise FileNotFoundError(path)
        # utf-8-sig: a byte-order mark (Windows editors may write one) is not TOML syntax
        data = loads_toml(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise DatasetError(
            "splits file not found", file=path, fix="create it or leave the split to the seed"
        ) from None
    except PathRefused as refused:
        raise DatasetError(refused.message, file=path,
                           fix=f"{refused.fix}; or remove it to split by seed") from None
    except (ParseError, UnicodeDecodeError) as err:
        raise DatasetError(
            str(err) if isinstance(err, ParseError) else f"not valid TOML: {err}",
            file=path,
            fix='write three lists, e.g. train = ["a", "b"], val = ["c"], test = ["d"]',
        ) from None
    unknown = sorted(set(data) - set(SPLIT_NAMES))
    if unknown:
        raise DatasetError(
            f"unknown key(s) {', '.join(map(repr, unknown))}",
            file=path,
            column=unknown[0],
            fix="use only the keys train, val and test",
        )
    out: dict[str, list[str]] = {}
    for name in SPLIT_NAMES:
        value = data.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DatasetError(
                f"{name} must be a list of strings, got {value!r}",
                file=path,
                column=name,
                fix=f'write {name} = ["name1", "name2", ...]',
            )
        out[name] = value
    return out


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(x) for x in list(names)[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _split_from_file(path: Path, members: Mapping[str, set[str]], *, grouped: bool) -> ClassSplit:
    listed = _read_splits_file(path)
    what = "group" if grouped else "label"
    first_split: dict[str, str] = {}
    for name in SPLIT_NAMES:
        for unit in listed[name]:
            if unit not in members:
                close = sorted(members)
                raise DatasetError(
                    f"unknown {what} {unit!r} in {name}",
                    file=path,
                    column=name,
                    fix=f"use {what}s of the dataset, e.g. {_few(close)}",
                )
            previous = first_split.setdefault(unit, name)
            if previous != name:
                raise DatasetError(
                    f"{what} {unit!r} is in both {previous} and {name}",
                    file=path,
                    column=name,
                    fix=f"keep {unit!r} in one split only",
                )
    class_split: dict[str, tuple[str, str]] = {}
    for name in SPLIT_NAMES:
        for unit in listed[name]:
            for label in sorted(members[unit]):
                prior = class_split.setdefault(label, (name, unit))
                if prior[0] != name:
                    raise DatasetError(
                        f"class {label!r} is in {prior[0]} (through {what} {prior[1]!r}) and in "
                        f"{name} (through {what} {unit!r})",
                        file=path,
                        column=name,
                        fix=f"put {what}s {prior[1]!r} and {unit!r} in the same split, or give "
                        f"the samples of class {label!r} a single {what}",
                    )
    missing = sorted(set(members) - set(first_split))
    if missing:
        warnings.warn(
            f"{path}: {len(missing)} {what}(s) in no split, left out: {_few(missing)}",
            stacklevel=3,
        )
    parts = {name: sorted({label for u in listed[name] for label in members[u]}) for name in listed}
    return ClassSplit(parts["train"], parts["val"], parts["test"])

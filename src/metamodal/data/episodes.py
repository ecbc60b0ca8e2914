"""Few-shot episodes: a seeded episode sampler, class-size checks and fixed episode files.

An episode (task) has ``ways`` classes, ``shots`` support and ``queries`` query samples of each.
`EpisodeSampler` draws episode ``i`` as a pure function of ``(seed, i)``, so any episode can be
regenerated alone and training resumes exactly where it stopped. Episode files
(``episodes.jsonl``, one ``{"episode": name, "support": [ids], "query": [ids]}`` a line) fix an
evaluation protocol, e.g. the 20-way one-shot runs of Lake, Salakhutdinov & Tenenbaum (2015),
"Human-level concept learning through probabilistic program induction".

The episodic setting is that of Vinyals et al. (2016), "Matching Networks for One Shot
Learning".
"""

from __future__ import annotations

import json
import operator
import os
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from metamodal.data.batch import Episode, TensorStore
from metamodal.errors import ConfigError, DatasetError, InsufficientSamplesError
from metamodal.io import atomic_write

UNBOUNDED_EPISODES = 2**62
"""``len(EpisodeSampler(..., episodes=None))``: an endless stream for step-bounded training."""

_ARGSORT_LIMIT = 1024
"""Above this many keys in a row, the smallest are found with a partial sort first."""

ClassSizes = TensorStore | Mapping[str, Tensor | Sequence[int] | np.ndarray | int]
"""What `check_class_sizes` accepts: a store, class -> sample indices, or class -> count."""


def _few(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(str(x) for x in list(names)[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _check_counts(ways: int, shots: int, queries: int) -> None:
    for name, value, least in (("ways", ways, 1), ("shots", shots, 1), ("queries", queries, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
            raise ConfigError(
                f"invalid {name} {value!r}",
                column=name,
                fix=f"set {name} to an integer >= {least}",
            )


def _class_sizes(source: ClassSizes) -> dict[str, int]:
    if isinstance(source, TensorStore):
        labels, counts = np.unique(np.asarray(source.labels, dtype=str), return_counts=True)
        return {str(label): int(c) for label, c in zip(labels, counts, strict=True)}
    return {
        label: value if isinstance(value, int | np.integer) else len(value)
        for label, value in source.items()
    }


def check_class_sizes(
    source: ClassSizes,
    classes: Sequence[str],
    ways: int,
    shots: int,
    queries: int,
    *,
    strict: bool = False,
) -> list[str]:
    """Check that ``classes`` can yield ``ways``-way episodes of ``shots + queries`` per class.

    A class is *usable* when it has at least ``shots + queries`` samples. By default classes
    that are too small are skipped with a warning naming them, as long as at least ``ways``
    usable classes remain; with ``strict=True`` any class that is too small is an error.

    Args:
        source: a `TensorStore`, or class label -> sample indices (e.g.
            ``store.class_indices()``), or class label -> number of samples.
        classes: the class labels episodes may use (a class missing from ``source`` has 0).
        ways: classes per episode.
        shots: support samples per class.
        queries: query samples per class.
        strict: raise when any class is too small instead of skipping it.

    Returns:
        The usable classes, in the order of ``classes`` (duplicates removed).

    Raises:
        InsufficientSamplesError: fewer than ``ways`` usable classes (or, with ``strict``, any
            class too small); the message names the small classes, their sizes and the need.
        ConfigError: ``ways``, ``shots`` or ``queries`` is not a valid count.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     check_class_sizes({"a": 5, "b": 5, "c": 2}, ["a", "b", "c"], 2, 1, 3)
        ['a', 'b']
        >>> str(caught[0].message)
        'skipping 1 class(es) with fewer than 4 samples (shots 1 + queries 3): c (2)'
    """
    _check_counts(ways, shots, queries)
    need = shots + queries
    sizes = _class_sizes(source)
    classes = list(dict.fromkeys(classes))
    usable = [c for c in classes if sizes.get(c, 0) >= need]
    # Smallest first, so that a class absent from the data (a typo?) shows up front.
    small = sorted((c for c in classes if sizes.get(c, 0) < need), key=lambda c: sizes.get(c, 0))
    if len(usable) >= ways and not (strict and small):
        if small:
            warnings.warn(
                f"skipping {len(small)} class(es) with fewer than {need} samples "
                f"(shots {shots} + queries {queries}): "
                f"{_few([f'{c} ({sizes.get(c, 0)})' for c in small])}",
                stacklevel=2,
            )
        return usable
    small_text = _few([f"{c!r} has {sizes.get(c, 0)}" for c in small])
    if not small:
        raise InsufficientSamplesError(
            f"a {ways}-way episode needs {ways} classes, but this split has only "
            f"{len(classes)}",
            fix=f"use --ways {len(classes)} or fewer, or give the split more classes",
        )
    if len(usable) < ways:
        message = (
            f"only {len(usable)} of {len(classes)} classes have the {need} samples a "
            f"{ways}-way episode needs per class (shots {shots} + queries {queries}); "
            f"{len(small)} too small: {small_text}"
        )
    else:
        message = (
            f"{len(small)} class(es) have fewer than the {need} samples needed per class "
            f"(shots {shots} + queries {queries}): {small_text}"
        )
    raise InsufficientSamplesError(
        message,
        fix=f"use fewer shots, queries or ways (at most {len(usable)} ways at this size), "
        "or add samples to the small classes",
    )


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest keys along the last axis, in increasing key order."""
    n = keys.shape[-1]
    if n > _ARGSORT_LIMIT and k < n:
        part = np.argpartition(keys, k - 1, axis=-1)[..., :k]
        order = np.argsort(np.take_along_axis(keys, part, axis=-1), axis=-1)
        return np.take_along_axis(part, order, axis=-1)
    return np.argsort(keys, axis=-1)[..., :k]


class EpisodeSampler(Dataset[Episode]):
    """Map-style dataset of few-shot episodes; episode ``i`` is a pure function of (seed, i).

    Episode ``i`` picks ``ways`` distinct classes among the usable ``classes`` (see
    `check_class_sizes`: classes too small are skipped with a warning), then ``shots + queries``
    distinct samples of each, uniformly, from its own random stream: NumPy's PCG64 seeded with
    ``SeedSequence(seed)`` and advanced by ``i * 2**64`` draws. So ``sampler[i]`` is the same
    whatever was drawn before, in any process, which makes training resumable and episodes
    regenerable (for the same classes, class sizes and NumPy random streams). The support set is
    grouped by class (label ``k`` is ``classes[k]``, labels ``0..ways-1`` in order), and each
    set is cut from the store with one index operation per modality.

    Works with ``DataLoader(sampler, batch_size=None, num_workers=...)``: each item is one
    `Episode`.

    Args:
        store: every sample decoded once (``N`` samples).
        classes: class labels episodes may use (e.g. the meta-train split).
        ways: classes per episode.
        shots: support samples per class; support batches have ``B = ways * shots``.
        queries: query samples per class; query batches have ``B = ways * queries``.
        seed: the episode stream's seed (non-negative).
        episodes: the number of episodes, ``len(sampler)``; ``None`` means an endless stream,
            ``len`` is then `UNBOUNDED_EPISODES` (bound it by steps, never shuffle it).
        modalities: modalities to include in the batches (default: all of the store's).

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([str(i) for i in range(12)], ["a", "b", "c"] * 4,
        ...     {"x": ModalityBatch(torch.randn(12, 3), torch.ones(12, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> sampler = EpisodeSampler(store, ["a", "b", "c"], ways=2, shots=1, queries=2,
        ...                          episodes=10)
        >>> ep = sampler[3]
        >>> ep.support["x"].values.shape, ep.query_labels.tolist()
        (torch.Size([2, 3]), [0, 0, 1, 1])
        >>> sampler[3].support_ids == ep.support_ids
        True
    """

    def __init__(
        self,
        store: TensorStore,
        classes: Sequence[str],
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        episodes: int | None = None,
        modalities: Sequence[str] | None = None,
    ) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"invalid seed {seed!r}", column="seed", fix="use an integer >= 0")
        if episodes is not None and (
            isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 0
        ):
            raise ConfigError(
                f"invalid number of episodes {episodes!r}",
                column="episodes",
                fix="use an integer >= 0, or None for an endless stream",
            )
        if modalities is not None:
            unknown = [m for m in modalities if m not in store.modalities]
            if unknown:
                raise ConfigError(
                    f"unknown modalities {_few(unknown)}",
                    column="modalities",
                    fix=f"use modalities of the data: {', '.join(store.modalities)}",
                )
        self.store = store
        self.ways = int(ways)
        self.shots = int(shots)
        self.queries = int(queries)
        self.seed = int(seed)
        self.episodes = None if episodes is None else int(episodes)
        self.modalities = list(store.modalities) if modalities is None else list(modalities)

        # class -> sample indices in table order, built once with a stable sort.
        labels = np.asarray(store.labels, dtype=str)
        names, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)])
        sizes = {str(name): int(n) for name, n in zip(names, counts, strict=True)}
        self.classes: list[str] = check_class_sizes(sizes, classes, ways, shots, queries)
        position = {str(name): k for k, name in enumerate(names)}
        rows = [position[c] for c in self.classes]
        self._sizes = counts[rows].astype(np.int64)
        width = int(self._sizes.max()) if len(rows) else 0
        self._padded = np.zeros((len(rows), width), dtype=np.int64)
        for k, r in enumerate(rows):
            self._padded[k, : counts[r]] = order[starts[r] : starts[r + 1]]
        self._width = width
        self._balanced = bool(len(rows)) and int(self._sizes.min()) == width
        self._columns = np.arange(width)
        self._bits = np.random.PCG64(np.random.SeedSequence(self.seed))
        self._start_state = self._bits.state
        self._rng = np.random.Generator(self._bits)
        self._lock = threading.Lock()
        self._class_names = np.asarray(self.classes, dtype=object)
        self._ids = np.asarray(store.ids, dtype=object)
        self._support_labels = torch.arange(self.ways).repeat_interleave(self.shots)
        self._query_labels = torch.arange(self.ways).repeat_interleave(self.queries)

    def __len__(self) -> int:
        return UNBOUNDED_EPISODES if self.episodes is None else self.episodes

    def _position(self, i: int) -> int:
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"episode {i} out of range for {n} episodes")
        return i

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _pick(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Support rows ``[ways * shots]``, query rows ``[ways * queries]``, class positions.

        Episode ``i`` draws from PCG64 seeded with ``SeedSequence(seed)`` and advanced by
        ``i * 2**64`` draws (so episodes never share random numbers). ``ways`` classes and
        ``shots + queries`` samples of each are the smallest of uniform keys, in increasing
        order: a uniform ordered sample without replacement. On long rows a partial sort runs
        first; it gives the same result.
        """
        n_classes, ways, width = len(self.classes), self.ways, self._width
        with self._lock:  # one reusable generator, reset to episode i's stream
            self._bits.state = self._start_state
            self._bits.advance(i << 64)
            if self._balanced:
                draws = self._rng.random(n_classes + ways * width)
                class_keys = draws[:n_classes]
                keys = draws[n_classes:].reshape(ways, width)
                chosen = _smallest(class_keys, ways)
            else:
                class_keys = self._rng.random(n_classes)
                chosen = _smallest(class_keys, ways)
                sizes = self._sizes[chosen]
                width = int(sizes.max())
                keys = self._rng.random((ways, width))
                keys[self._columns[:width] >= sizes[:, None]] = np.inf
        picked = _smallest(keys, self.shots + self.queries)
        rows = self._padded[chosen[:, None], picked]
        return rows[:, : self.shots].ravel(), rows[:, self.shots :].ravel(), chosen

    def indices(self, i: int) -> tuple[Tensor, Tensor, list[str]]:
        """Episode ``i`` as store rows, without building batches (for precomputed embeddings).

        Returns:
            ``(support, query, classes)``: long ``[ways * shots]`` and ``[ways * queries]``
            row indices into the store, and the class of each label ``0..ways-1``.

        Example (``sampler`` as in the class example):
            ``s, q, c = sampler.indices(0); embeddings[s]`` is ``[ways * shots, dim]``.
        """
        support, query, chosen = self._pick(self._position(i))
        return (
            torch.from_numpy(support),
            torch.from_numpy(query),
            self._class_names[chosen].tolist(),
        )

    def __getitem__(self, i: int) -> Episode:
        i = self._position(i)
        support, query, chosen = self._pick(i)
        return Episode(
            support=self.store.batch(torch.from_numpy(support), self.modalities),
            query=self.store.batch(torch.from_numpy(query), self.modalities),
            support_labels=self._support_labels.clone(),
            query_labels=self._query_labels.clone(),
            classes=self._class_names[chosen].tolist(),
            support_ids=self._ids[support].tolist(),
            query_ids=self._ids[query].tolist(),
            name=str(i),
        )


def episodes_from_sampler(sampler: EpisodeSampler, n: int, start: int = 0) -> list[Episode]:
    """Episodes ``start .. start + n - 1`` of ``sampler`` (e.g. to write an episode file).

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([f"s{i}" for i in range(8)], ["a", "b"] * 4,
        ...     {"x": ModalityBatch(torch.zeros(8, 3), torch.ones(8, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> sampler = EpisodeSampler(store, ["a", "b"], ways=2, shots=1, queries=1)
        >>> [episode.name for episode in episodes_from_sampler(sampler, 3, start=10)]
        ['10', '11', '12']
    """
    return [sampler[i] for i in range(start, start + n)]


def _line_error(path: Path, line: int, column: str | None, message: str, fix: str) -> DatasetError:
    return DatasetError(f"line {line}: {message}", file=path, row=line, column=column, fix=fix)


def _parse_line(path: Path, line_no: int, text: str) -> tuple[str, list[str], list[str]]:
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        detail = (f"{err.msg} at character {err.pos + 1}" if isinstance(err, json.JSONDecodeError)
                  else "nested too deeply" if isinstance(err, RecursionError) else str(err))
        raise _line_error(
            path,
            line_no,
            None,
            f"not valid JSON ({detail})",
            'write one JSON object a line: {"episode": "e1", "support": [ids], "query": [ids]}',
        ) from None
    if not isinstance(record, dict):
        raise _line_error(
            path,
            line_no,
            None,
            f"expected a JSON object, got {type(record).__name__}",
            'write one JSON object a line: {"episode": "e1", "support": [ids], "query": [ids]}',
        )
    name = record.get("episode", str(line_no))
    if not isinstance(name, str | int) or isinstance(name, bool):
        raise _line_error(
            path,
            line_no,
            "episode",
            f"episode name {name!r} is not a string",
            'name the episode with a string, e.g. "episode": "run01"',
        )
    sets = []
    for column in ("support", "query"):
        ids = record.get(column)
        if not isinstance(ids, list) or not all(
            isinstance(x, str | int) and not isinstance(x, bool) for x in ids
        ):
            raise _line_error(
                path,
                line_no,
                column,
                f"{column} must be a list of sample ids, got {ids!r}",
                f'write "{column}": ["id1", "id2", ...] with ids of the dataset',
            )
        sets.append([str(x) for x in ids])
    return str(name), sets[0], sets[1]


def read_episode_file(
    path: str | Path, store: TensorStore, modalities: Sequence[str] | None = None
) -> list[Episode]:
    """Read a fixed evaluation protocol from an ``episodes.jsonl`` file.

    Each non-blank line is ``{"episode": name, "support": [ids], "query": [ids]}``; labels come
    from ``store``. An episode's classes are ordered by first appearance in its support set,
    its support set is grouped by class in that order (stable: file order within a class), its
    query set keeps file order.

    Args:
        path: the episode file.
        store: the samples the ids refer to.
        modalities: modalities to include in the batches (default: all).

    Returns:
        One `Episode` per line, ``name`` taken from ``"episode"`` (default: the line number).

    Raises:
        DatasetError: a line is not a JSON object of that shape, names an unknown id, repeats an
            id, has an empty support set, or has a query whose class is not in the support set;
            the error names the file, the line and the id.

    Example:
        >>> import tempfile
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([f"s{i}" for i in range(8)], ["a", "b"] * 4,
        ...     {"x": ModalityBatch(torch.zeros(8, 3), torch.ones(8, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> path = Path(tempfile.mkdtemp()) / "episodes.jsonl"
        >>> _ = path.write_text('{"episode": "run01", "support": ["s1", "s0"], "query": ["s2"]}\\n')
        >>> (episode,) = read_episode_file(path, store)
        >>> episode.classes, episode.support_ids, episode.query_labels.tolist()
        (['b', 'a'], ['s1', 's0'], [1])
    """
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (some Windows editors write one) is not part of line 1.
        # Split on "\n" only: str.splitlines would also split inside ids holding U+2028,
        # U+0085 and the like, which write_episode_file writes verbatim (ensure_ascii=False).
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(
            f"cannot read episode file: {err}", file=path, fix="give a readable UTF-8 .jsonl file"
        ) from None
    row_of = store.index_of()
    names = list(store.modalities) if modalities is None else list(modalities)
    episodes: list[Episode] = []
    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        name, support_ids, query_ids = _parse_line(path, line_no, text)
        if not support_ids:
            raise _line_error(
                path,
                line_no,
                "support",
                f"episode {name!r} has an empty support set",
                "give at least one support sample per class",
            )
        seen: dict[str, str] = {}
        for column, ids in (("support", support_ids), ("query", query_ids)):
            for sid in ids:
                if sid not in row_of:
                    raise _line_error(
                        path,
                        line_no,
                        column,
                        f"unknown sample id {sid!r} in {column}",
                        "use ids from the dataset's id column",
                    )
                if sid in seen:
                    raise _line_error(
                        path,
                        line_no,
                        column,
                        f"sample id {sid!r} appears twice (in {seen[sid]} and {column})",
                        "list each sample once per episode",
                    )
                seen[sid] = column
        support_rows = np.array([row_of[s] for s in support_ids], dtype=np.int64)
        query_rows = np.array([row_of[s] for s in query_ids], dtype=np.int64)
        classes = list(dict.fromkeys(store.labels[r] for r in support_rows))
        label_of = {c: k for k, c in enumerate(classes)}
        for sid, r in zip(query_ids, query_rows, strict=True):
            if store.labels[r] not in label_of:
                raise _line_error(
                    path,
                    line_no,
                    "query",
                    f"query sample {sid!r} is of class {store.labels[r]!r}, which has no "
                    "support sample",
                    f"add a support sample of class {store.labels[r]!r} or drop {sid!r}",
                )
        support_labels = np.array([label_of[store.labels[r]] for r in support_rows])
        query_labels = np.array([label_of[store.labels[r]] for r in query_rows], dtype=np.int64)
        grouped = np.argsort(support_labels, kind="stable")
        support_rows = support_rows[grouped]
        episodes.append(
            Episode(
                support=store.batch(torch.from_numpy(support_rows), names),
                query=store.batch(torch.from_numpy(query_rows), names),
                support_labels=torch.from_numpy(support_labels[grouped].astype(np.int64)),
                query_labels=torch.from_numpy(query_labels),
                classes=classes,
                support_ids=[support_ids[k] for k in grouped],
                query_ids=list(query_ids),
                name=name,
            )
        )
    if not episodes:
        raise DatasetError(
            "the episode file has no episodes",
            file=path,
            fix='write one {"episode": ..., "support": [...], "query": [...]} object a line',
        )
    return episodes


def write_episode_file(path: str | Path, episodes: Iterable[Episode | EpisodeIds]) -> Path:
    """Write episodes as an ``episodes.jsonl`` protocol file, atomically (temp file, rename).

    Args:
        path: where to write; a missing directory is created.
        episodes: the episodes (`Episode` or `EpisodeIds`: only names and ids are written);
            an episode without a name is named by its position.

    Returns:
        ``path`` as a `Path`.

    Example:
        >>> import tempfile
        >>> from metamodal.data.batch import ModalityBatch
        >>> store = TensorStore([f"s{i}" for i in range(8)], ["a", "b"] * 4,
        ...     {"x": ModalityBatch(torch.zeros(8, 3), torch.ones(8, dtype=torch.bool))},
        ...     {"x": "tabular"})
        >>> sampler = EpisodeSampler(store, ["a", "b"], ways=2, shots=1, queries=1)
        >>> path = write_episode_file(Path(tempfile.mkdtemp()) / "episodes.jsonl",
        ...                           episodes_from_sampler(sampler, 600))
        >>> back = read_episode_file(path, store)
        >>> len(back), back[7].support_ids == sampler[7].support_ids
        (600, True)
    """
    path = Path(path)
    lines = [
        json.dumps(
            {
                "episode": episode.name or str(k),
                "support": list(episode.support_ids),
                "query": list(episode.query_ids),
            },
            ensure_ascii=False,
        )
        for k, episode in enumerate(episodes)
    ]

    def write(temp: Path) -> None:
        with temp.open("w", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- protocols


@dataclass
class EpisodeIds:
    """An episode as sample ids only: what an episode file holds, before anything is decoded.

    Args:
        name: the episode's name (``run01``, ...).
        support_ids: ids of the support samples, grouped by class.
        query_ids: ids of the query samples.
        group: the group all its classes come from (within-group protocols), else ``None``;
            not written to the file.
        classes: the classes of the episode, in label order.

    Example:
        >>> EpisodeIds("run01", ["a1", "b1"], ["a2", "b2"]).query_ids
        ['a2', 'b2']
    """

    name: str
    support_ids: list[str]
    query_ids: list[str]
    group: str | None = None
    classes: list[str] = field(default_factory=list)


def _run_names(runs: int) -> list[str]:
    width = max(2, len(str(runs)))
    return [f"run{k + 1:0{width}d}" for k in range(runs)]


def _check_runs(runs: int) -> None:
    if isinstance(runs, bool) or not isinstance(runs, int | np.integer) or runs < 1:
        raise ConfigError(f"invalid number of runs {runs!r}", column="runs",
                          fix="ask for at least one run (episode)")


def protocol_episodes(
    ids: Sequence[str],
    labels: Sequence[str],
    *,
    ways: int,
    shots: int,
    queries: int,
    runs: int,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    groups: Sequence[str | None] | None = None,
    within: Sequence[str] | str | None = None,
) -> list[EpisodeIds]:
    """Episodes of a published protocol, as ids: N-way K-shot, optionally within one group.

    Without ``within``, these are the episodes ``0 .. runs - 1`` of an `EpisodeSampler` with
    this ``seed`` over ``classes`` (so, on a store whose samples come in the same order, the
    very episodes `metamodal.evaluate.evaluate` draws with that seed).

    With ``within``, every run draws all its classes from one group, as in the 20-way one-shot
    runs of Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through
    probabilistic program induction" (each run within one alphabet). ``within`` names the
    groups; run ``k`` uses the ``k % len(within)``-th, so 20 runs over 10 alphabets use each
    twice. ``"*"`` means every group that can supply a run (the others are skipped with a
    warning). Run ``k`` picks ``ways`` classes of its group and ``shots + queries`` distinct
    samples of each, uniformly, from NumPy's PCG64 seeded with ``(seed, k)``; support and query
    never share a sample.

    Args:
        ids: sample ids, ``N``.
        labels: class label of each sample, ``N``.
        ways: classes per run.
        shots: support samples per class.
        queries: query samples per class.
        runs: the number of runs (episodes).
        seed: the seed.
        classes: the classes runs may use (e.g. a split's); default: all.
        groups: group of each sample, ``N`` (needed by ``within``).
        within: group names, or ``"*"`` for all groups; ``None`` for episodes across groups.

    Returns:
        ``runs`` `EpisodeIds` named ``run01``, ``run02``, ... (wider numbers past 99).

    Raises:
        InsufficientSamplesError: a named group has fewer than ``ways`` classes of at least
            ``shots + queries`` samples (no group can, with ``"*"``), or the classes cannot
            supply the episodes; the message says what can.
        ConfigError: invalid counts, ``within`` without ``groups``, or an unknown group.

    Example:
        >>> ids = [f"{c}{i}" for c in "abcd" for i in range(3)]
        >>> labels = [i[0] for i in ids]
        >>> groups = ["G" if l in "ab" else "H" for l in labels]
        >>> runs = protocol_episodes(ids, labels, ways=2, shots=1, queries=1, runs=2,
        ...                          groups=groups, within=["G", "H"])
        >>> [(r.name, r.group, sorted(r.classes)) for r in runs]
        [('run01', 'G', ['a', 'b']), ('run02', 'H', ['c', 'd'])]
    """
    _check_counts(ways, shots, queries)
    _check_runs(runs)
    if len(ids) != len(labels):
        raise ConfigError(f"{len(ids)} ids but {len(labels)} labels",
                          fix="give one label per sample")
    allowed = list(dict.fromkeys(classes)) if classes is not None else sorted(set(labels))
    if within is None:
        store = TensorStore(list(ids), list(labels), {}, {})
        sampler = EpisodeSampler(store, allowed, ways, shots, queries, seed=seed)
        out = []
        for k, name in enumerate(_run_names(runs)):
            support, query, chosen = sampler.indices(k)
            out.append(EpisodeIds(name, [ids[i] for i in support.tolist()],
                                  [ids[i] for i in query.tolist()], classes=chosen))
        return out
    if groups is None:
        raise ConfigError("within-group runs need a group column", column="within",
                          fix="set `group` in dataset.toml, or drop --within")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"invalid seed {seed!r}", column="seed", fix="use an integer >= 0")
    need = shots + queries
    allowed_set = set(allowed)
    rows: dict[str, list[int]] = {}
    group_of: dict[str, str] = {}
    for i, (label, group) in enumerate(zip(labels, groups, strict=True)):
        if label in allowed_set:
            rows.setdefault(label, []).append(i)
            group_of.setdefault(label, label if group is None else group)
    members: dict[str, list[str]] = {}
    for label in sorted(rows):
        members.setdefault(group_of[label], []).append(label)
    usable = {g: [c for c in cs if len(rows[c]) >= need] for g, cs in members.items()}
    able = sorted(g for g, cs in usable.items() if len(cs) >= ways)

    def able_text() -> str:
        if not able:
            most = max((len(cs) for cs in usable.values()), default=0)
            return f"no group can; the largest has {most} usable classes"
        return "groups that can: " + _few([f"{g} ({len(usable[g])})" for g in able], 8)

    if isinstance(within, str) and within in ("*", "all"):
        chosen_groups = able
        skipped = sorted(set(members) - set(able))
        if not chosen_groups:
            raise InsufficientSamplesError(
                f"no group has {ways} classes of at least {need} samples (shots {shots} + "
                f"queries {queries}); {able_text()}",
                fix="use fewer ways, shots or queries",
            )
        if skipped:
            warnings.warn(f"skipping {len(skipped)} group(s) with fewer than {ways} usable "
                          f"classes: {_few([f'{g} ({len(usable[g])})' for g in skipped])}",
                          stacklevel=2)
    else:
        chosen_groups = [within] if isinstance(within, str) else list(within)
        if not chosen_groups:
            raise ConfigError("no group named", column="within",
                              fix="name groups, or pass '*' for every group")
        for g in chosen_groups:
            if g not in members:
                raise ConfigError(f"unknown group {g!r} (or none of its classes is allowed)",
                                  column="within",
                                  fix="choose among: " + _few(sorted(members), 12))
            if len(usable[g]) < ways:
                small = len(members[g]) - len(usable[g])
                detail = f" ({small} more with fewer than {need} samples)" if small else ""
                raise InsufficientSamplesError(
                    f"group {g!r} has {len(usable[g])} classes{detail}, but a {ways}-way run "
                    f"needs {ways}",
                    fix=f"use --ways {len(usable[g])} or fewer for {g!r}, or choose another "
                    f"group; {able_text()}",
                )
    out = []
    for k, name in enumerate(_run_names(runs)):
        group = chosen_groups[k % len(chosen_groups)]
        rng = np.random.default_rng([int(seed), k])
        candidates = usable[group]
        picked = [candidates[j] for j in rng.choice(len(candidates), ways, replace=False)]
        support, query = [], []
        for label in picked:
            members_rows = rows[label]
            chosen = rng.choice(len(members_rows), need, replace=False)
            support += [ids[members_rows[j]] for j in chosen[:shots]]
            query += [ids[members_rows[j]] for j in chosen[shots:]]
        out.append(EpisodeIds(name, support, query, group=group, classes=picked))
    return out

"""Few-shot episodes: a seeded episode sampler and class-size checks (the fixed episode files
of published protocols are in `metamodal.data.episode_files`).

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

import operator
import threading
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from metamodal.data.batch import Episode, TensorStore
from metamodal.errors import ConfigError, InsufficientSamplesError

UNBOUNDED_EPISODES = 2**62
"""``len(EpisodeSampler(..., episodes=None))``: an endless stream for step-bounded training."""

_ARGSORT_LIMIT = 1024
"""Above this many keys in a row, the smallest are found with a partial sort first."""

ClassSizes = TensorStore | Mapping[str, Tensor | Sequence[int] | np.ndarray | int]
"""What `check_class_sizes` accepts: a store, class -> sample indices, or class -> count."""


def few(names: Sequence[str], n: int = 5) -> str:
    """The first ``n`` names, and how many more there are.

    Example:
        >>> few(["a", "b", "c"], 2)
        'a, b and 1 more'
    """
    shown = ", ".join(str(x) for x in list(names)[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def check_counts(ways: int, shots: int, queries: int) -> None:
    """Raise `ConfigError` unless ways and shots are integers >= 1 and queries >= 0."""
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
    check_counts(ways, shots, queries)
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
                f"{few([f'{c} ({sizes.get(c, 0)})' for c in small])}",
                stacklevel=2,
            )
        return usable
    small_text = few([f"{c!r} has {sizes.get(c, 0)}" for c in small])
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
    largest = max((sizes.get(c, 0) for c in classes), default=0)
    fix = (f"use fewer shots, queries or ways (at most {len(usable)} ways at this size), "
           "or add samples to the small classes") if usable else (
        f"use fewer shots or queries: no class has {need} samples (the largest has "
        f"{largest}, so shots + queries <= {largest}), or add samples to the classes")
    raise InsufficientSamplesError(message, fix=fix)


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
                    f"unknown modalities {few(unknown)}",
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


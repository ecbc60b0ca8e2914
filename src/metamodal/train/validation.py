"""The shape of validation episodes: the training shape, or what the validation split supplies.

Training at 20 or 60 ways is common on Omniglot, but a validation split of whole held-out groups
may have fewer classes (one alphabet of 17 characters), or classes too small for the training
queries. Validation has its own ``val_ways`` / ``val_shots`` / ``val_queries``; each left at 0
follows training, lowered to what the split can supply, with a warning. A value set explicitly is
kept, and a split that cannot supply it is an error before training starts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from metamodal.config import TrainConfig
from metamodal.data.batch import TensorStore
from metamodal.data.episodes import check_class_sizes
from metamodal.errors import InsufficientSamplesError


def _usable(sizes: Sequence[int], need: int) -> int:
    return sum(size >= need for size in sizes)


def resolve_validation_shape(
    config: TrainConfig, store: TensorStore, classes: Sequence[str], *,
    file: str | Path | None = None, split: str = "val",
) -> tuple[int, int, int]:
    """The ``(ways, shots, queries)`` of validation episodes on ``classes``.

    Each of ``val_ways``, ``val_shots``, ``val_queries`` that is 0 in ``config`` follows the
    training value, lowered when the split cannot supply it: queries first (down to 1, so
    that the ``ways``-th largest class holds ``shots + queries`` samples), then shots (down to
    1), then ways (down to the number of classes large enough, at least 2). A lowered value is
    reported with a `UserWarning`. Explicit values are never changed.

    Args:
        config: the training configuration.
        store: the decoded samples (only labels are read).
        classes: the validation split's classes.
        file: where the split comes from (``splits.toml``, or the dataset directory), named
            in the error.
        split: the split's name, named in the error (as its key).

    Returns:
        ``(ways, shots, queries)`` that the split supplies.

    Raises:
        InsufficientSamplesError: even the lowered (or the explicit) shape cannot be supplied,
            e.g. a split with fewer than two usable classes; the message says what can.

    Example:
        >>> import warnings
        >>> store = TensorStore([str(i) for i in range(34)], [f"c{i % 17}" for i in range(34)],
        ...                     {}, {})
        >>> config = TrainConfig(ways=20, shots=1, queries=1)
        >>> with warnings.catch_warnings(record=True):
        ...     resolve_validation_shape(config, store, sorted(set(store.labels)))
        (17, 1, 1)
    """
    counts: dict[str, int] = {}
    for label in store.labels:
        counts[label] = counts.get(label, 0) + 1
    sizes = sorted((counts.get(c, 0) for c in dict.fromkeys(classes)), reverse=True)
    ways = config.val_ways or config.ways
    shots = config.val_shots or config.shots
    queries = config.val_queries or config.queries
    lowered: list[str] = []
    reach = min(ways, len(sizes))  # the classes a full-size episode would draw from
    if reach >= 1:
        largest = sizes[reach - 1]
        if not config.val_queries and shots + queries > largest:
            new = max(1, largest - shots)
            if new < queries:
                lowered.append(f"queries {queries} -> {new}")
                queries = new
        if not config.val_shots and shots + queries > largest:
            new = max(1, largest - queries)
            if new < shots:
                lowered.append(f"shots {shots} -> {new}")
                shots = new
    if not config.val_ways:
        usable = _usable(sizes, shots + queries)
        if usable < ways and usable >= 2:
            lowered.append(f"ways {ways} -> {usable}")
            ways = usable
    if lowered:
        warnings.warn(
            f"validation at {ways}-way {shots}-shot {queries}-query, lowered from training "
            f"({', '.join(lowered)}): the validation split has {len(sizes)} classes of "
            f"{sizes[-1] if sizes else 0}-{sizes[0] if sizes else 0} samples; set "
            "val_ways / val_shots / val_queries (--val-ways ...) to choose",
            stacklevel=2,
        )
    try:
        check_class_sizes(counts, list(classes), ways, shots, queries)
    except InsufficientSamplesError as error:
        raise InsufficientSamplesError(
            f"the validation split {split!r} cannot supply a {ways}-way {shots}-shot "
            f"{queries}-query episode: {error.message}", file=file, column=split,
            fix=f"choose the validation episodes with --val-ways (at least 2), --val-shots "
            f"and --val-queries, or move classes into the {split!r} split "
            "(splits.toml)") from None
    return ways, shots, queries

"""The shape of evaluation episodes: the protocol's default, or what the data supplies.

The literature's default shape is 5 ways and 15 queries per class, but a small dataset may
have fewer test classes (a dataset of 10 classes keeps 2 or 3 for testing) or classes too small
for 1 + 15 samples. Evaluation then takes the shape the data allows, as training's validation
does (`metamodal.train.validation.resolve_validation_shape`): the queries, and the ways, that
the user did not set are lowered to what the classes supply, with one warning. A value the user
set is kept, and data that cannot supply it is an error that says what it can supply.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from metamodal.data.batch import TensorStore
from metamodal.data.episodes import check_class_sizes
from metamodal.errors import ConfigError, InsufficientSamplesError

DEFAULT_WAYS = 5
"""Classes per evaluation episode when the user sets none."""

DEFAULT_QUERIES = 15
"""Query samples per class of an evaluation episode when the user sets none."""


def resolve_eval_shape(
    store: TensorStore,
    classes: Sequence[str],
    ways: int | None = None,
    shots: int = 1,
    queries: int | None = None,
    *,
    file: str | Path | None = None,
    split: str = "test",
) -> tuple[int, int, int]:
    """The ``(ways, shots, queries)`` of evaluation episodes drawn from ``classes``.

    ``None`` means "not set by the user": ``ways`` then defaults to `DEFAULT_WAYS` and
    ``queries`` to `DEFAULT_QUERIES`, and each is lowered when the classes cannot supply it:
    queries first (down to 1, so that the ``ways``-th largest class holds ``shots + queries``
    samples), then ways (down to the number of classes that large, at least 2). A lowered value
    is reported with one `UserWarning`. ``shots`` and every value the user set are never
    changed. When the default shape fits, it is returned as is (the usual 5-way 15-query
    protocol, so results of data that allows it do not move).

    Args:
        store: the decoded samples (only labels are read).
        classes: the classes episodes are drawn from (usually the test split).
        ways: classes per episode, or ``None`` when the user did not set it.
        shots: support samples per class.
        queries: query samples per class, or ``None`` when the user did not set it.
        file: where the classes come from (``splits.toml``, the dataset directory, the run's
            ``config.toml``), named in the error.
        split: the split's name, named in the error (as its key).

    Returns:
        ``(ways, shots, queries)`` that ``classes`` supply.

    Raises:
        InsufficientSamplesError: even the lowered (or the explicit) shape cannot be supplied,
            e.g. fewer than two classes hold ``shots + 1`` samples; the message says why.
        ConfigError: ``ways`` is below 2, ``shots`` or ``queries`` below 1.

    Example:
        >>> import warnings
        >>> store = TensorStore([str(i) for i in range(30)], [f"c{i % 3}" for i in range(30)],
        ...                     {}, {})
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     resolve_eval_shape(store, ["c0", "c1", "c2"])
        (3, 1, 9)
        >>> len(caught)
        1
        >>> resolve_eval_shape(store, ["c0", "c1", "c2"], ways=3, queries=4)
        (3, 1, 4)
    """
    if ways is not None and ways < 2:
        raise ConfigError(f"ways = {ways}: an episode of fewer than 2 classes has every query "
                          "right", column="ways", fix="use at least 2 ways")
    for label, value in (("shots", shots), ("queries", queries)):
        if value is not None and value < 1:
            raise ConfigError(f"{label} = {value} < 1", column=label,
                              fix=f"use at least one for {label}")
    counts: dict[str, int] = {}
    for label in store.labels:
        counts[label] = counts.get(label, 0) + 1
    wanted = list(dict.fromkeys(classes))
    sizes = sorted((counts.get(c, 0) for c in wanted), reverse=True)
    chosen_ways = DEFAULT_WAYS if ways is None else ways
    chosen_queries = DEFAULT_QUERIES if queries is None else queries
    lowered: list[str] = []
    reach = min(chosen_ways, len(sizes))  # the classes a full-size episode would draw from
    if queries is None and reach >= 1:
        largest = sizes[reach - 1]
        if shots + chosen_queries > largest:
            new = max(1, largest - shots)
            if new < chosen_queries:
                lowered.append(f"queries {chosen_queries} -> {new}")
                chosen_queries = new
    if ways is None:
        usable = sum(size >= shots + chosen_queries for size in sizes)
        if 2 <= usable < chosen_ways:
            lowered.append(f"ways {chosen_ways} -> {usable}")
            chosen_ways = usable
    if lowered:
        warnings.warn(
            f"evaluating {chosen_ways}-way {shots}-shot {chosen_queries}-query episodes, "
            f"lowered from the default ({', '.join(lowered)}) to what the data supplies: "
            f"the {split} split has {len(sizes)} classes of "
            f"{sizes[-1] if sizes else 0}-{sizes[0] if sizes else 0} samples; set ways and "
            "queries (--ways, --queries) to choose", stacklevel=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the sampler names skipped classes itself
            check_class_sizes(counts, wanted, chosen_ways, shots, chosen_queries)
    except InsufficientSamplesError as error:
        raise InsufficientSamplesError(
            f"the {split} split cannot supply a {chosen_ways}-way {shots}-shot "
            f"{chosen_queries}-query episode: {error.message}", file=file, column=split,
            fix="choose a shape the split supplies with ways (at least 2), shots and queries "
            "(--ways, --shots, --queries), or evaluate on data with more classes or more "
            "samples per class") from None
    return chosen_ways, shots, chosen_queries

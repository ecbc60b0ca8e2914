"""The episodes of an evaluation as store rows and labels: drawn by the seeded sampler, or read
from fixed episodes (an episode file), checked against the store."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from metamodal.data.batch import Episode, TensorStore
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import DatasetError


@dataclass
class EpisodePlan:
    """Episodes as store rows and labels (what the scoring loop consumes).

    Args:
        support: per episode, long ``[ways*shots]`` store rows of the support set.
        query: per episode, long ``[Q]`` store rows of the query set.
        support_labels: per episode, long labels in ``0..ways-1`` of the support rows.
        query_labels: per episode, long labels in ``0..ways-1`` of the query rows.
        ways: per episode, its number of classes.
        known_shape: ``(ways, shots, queries)`` when the episodes were drawn in that shape.

    Example:
        >>> plan = EpisodePlan([torch.tensor([0, 1])], [torch.tensor([2, 3])],
        ...                    [torch.tensor([0, 1])], [torch.tensor([0, 1])], [2])
        >>> plan.shape()
        (2, 1, 1)
    """

    support: list[Tensor]
    query: list[Tensor]
    support_labels: list[Tensor]
    query_labels: list[Tensor]
    ways: list[int]
    known_shape: tuple[int, int, int] | None = None

    def digest(self, store_size: int) -> str:
        """A fingerprint of the exact episodes (rows and labels) over a store of this size."""
        h = hashlib.sha1(str(store_size).encode())
        for parts in zip(
            self.support, self.support_labels, self.query, self.query_labels, strict=True
        ):
            for t in parts:
                h.update(t.to(torch.int64).numpy().tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def subset(self, indices: Sequence[int]) -> EpisodePlan:
        """The episodes at ``indices``, in that order (one process's share of a plan).

        Example:
            >>> plan = EpisodePlan([torch.tensor([0, 1])] * 3, [torch.tensor([2, 3])] * 3,
            ...                    [torch.tensor([0, 1])] * 3, [torch.tensor([0, 1])] * 3,
            ...                    [2, 2, 2])
            >>> len(plan.subset([0, 2]).ways)
            2
        """
        return EpisodePlan([self.support[i] for i in indices], [self.query[i] for i in indices],
                           [self.support_labels[i] for i in indices],
                           [self.query_labels[i] for i in indices],
                           [self.ways[i] for i in indices], self.known_shape)

    def shape(self) -> tuple[int | None, int | None, int | None]:
        """(ways, shots, queries) when every episode is balanced and alike, else None."""
        if self.known_shape is not None:
            return self.known_shape
        ways = set(self.ways)
        shots: set[int | None] = set()
        queries: set[int | None] = set()
        for w, sl, ql in zip(self.ways, self.support_labels, self.query_labels, strict=True):
            shots.add(_per_class(sl, w))
            queries.add(_per_class(ql, w))
        return _only(ways), _only(shots), _only(queries)


def _only(values: set[int | None]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def _per_class(labels: Tensor, ways: int) -> int | None:
    counts = torch.bincount(labels, minlength=ways)
    return int(counts[0]) if bool((counts == counts[0]).all()) else None


def sampled_episodes(
    store: TensorStore,
    classes: Sequence[str],
    ways: int,
    shots: int,
    queries: int,
    seed: int,
    episodes: int,
) -> EpisodePlan:
    """``episodes`` episodes drawn from ``classes`` by `EpisodeSampler` with ``seed``.

    Raises:
        InsufficientSamplesError: a class has fewer than ``shots + queries`` samples.

    Example:
        >>> store = TensorStore([str(i) for i in range(8)], ["a", "b"] * 4, {}, {})
        >>> plan = sampled_episodes(store, ["a", "b"], 2, 1, 2, seed=0, episodes=3)
        >>> len(plan.ways), plan.shape()
        (3, (2, 1, 2))
    """
    sampler = EpisodeSampler(store, list(classes), ways, shots, queries, seed, episodes)
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)
    plan = EpisodePlan([], [], [], [], [])
    for i in range(episodes):
        support, query, _ = sampler.indices(i)
        plan.support.append(torch.as_tensor(support, dtype=torch.long).cpu())
        plan.query.append(torch.as_tensor(query, dtype=torch.long).cpu())
        plan.support_labels.append(support_labels)
        plan.query_labels.append(query_labels)
        plan.ways.append(ways)
    plan.known_shape = (ways, shots, queries)
    return plan


def file_episodes(store: TensorStore, episodes: Sequence[Episode]) -> EpisodePlan:
    """Fixed ``episodes`` (e.g. from an episode file) as store rows, looked up by sample id.

    Raises:
        DatasetError: an episode names an id that ``store`` lacks, has labels that do not
            match its samples or fall outside ``0..ways-1``, has no query sample, or has one
            class; it names the episode file and line where the episode came from one.
    """
    index_of = store.index_of()
    plan = EpisodePlan([], [], [], [], [])
    for number, ep in enumerate(episodes):
        label = ep.name or str(number)
        where = {"file": ep.origin[0], "row": ep.origin[1]} if ep.origin else {}
        rows = []
        for ids in (ep.support_ids, ep.query_ids):
            unknown = [s for s in ids if s not in index_of]
            if unknown:
                raise DatasetError(
                    f"episode {label!r} names samples that are not in the data: "
                    f"{', '.join(map(str, unknown[:5]))}",
                    fix="evaluate on the dataset the episode file was written for", **where,
                )
            rows.append(torch.tensor([index_of[s] for s in ids], dtype=torch.long))
        s_lab = torch.as_tensor(ep.support_labels, dtype=torch.long).cpu()
        q_lab = torch.as_tensor(ep.query_labels, dtype=torch.long).cpu()
        ways = ep.ways
        if (
            s_lab.numel() != rows[0].numel()
            or q_lab.numel() != rows[1].numel()
            or (s_lab.numel() and (s_lab.min() < 0 or s_lab.max() >= ways))
            or (q_lab.numel() and (q_lab.min() < 0 or q_lab.max() >= ways))
        ):
            raise DatasetError(
                f"episode {label!r} has labels that do not match its samples or classes",
                fix="give one label in 0..ways-1 per support and query sample", **where,
            )
        if q_lab.numel() == 0:
            raise DatasetError(f"episode {label!r} has no query samples", column="query",
                               fix="give every episode a query set", **where)
        if ways < 2:
            raise DatasetError(
                f"episode {label!r} has one class: every query would be predicted as it, "
                "right whatever the model", column="support",
                fix="give every episode at least two classes", **where)
        plan.support.append(rows[0])
        plan.query.append(rows[1])
        plan.support_labels.append(s_lab)
        plan.query_labels.append(q_lab)
        plan.ways.append(ways)
    return plan



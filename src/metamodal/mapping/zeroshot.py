"""Zero-shot prediction from class descriptions: a linear map from a description's features
(its words, or its embedding in a description modality) to its class's prototype, fitted on
training classes; a new class is then recognised by the nearest mapped description (Lampert
et al. 2009; Romera-Paredes and Torr, 2015)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from metamodal.errors import ConfigError
from metamodal.learners.base import EpisodeContext
from metamodal.mapping.linear import ridge_map


def class_prototypes(z: Tensor, labels: Tensor, classes: int) -> Tensor:
    """Mean embedding ``[classes, D]`` of each class from ``z`` ``[N, D]`` and labels ``[N]``."""
    sums = z.new_zeros(classes, z.shape[1]).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=classes).clamp_min(1).unsqueeze(1)
    return sums / counts.to(z.dtype)


class DescriptionMap:
    """Maps a class description to the embedding of its class: ridge regression from the
    description's features to class prototypes.

    The features ``[C, F]`` are whatever describes a class: the bag of words of its text in
    ``descriptions.toml`` (`BagOfWords`), or the mean embedding of its samples in a description
    modality (a caption column).

    Args:
        alpha: ridge penalty.

    Fitted state: ``weight_`` ``[F, D]``, ``bias_`` ``[D]``.

    Example:
        >>> m = DescriptionMap(alpha=1e-3).fit(torch.eye(2), torch.tensor([[1.0, 0], [0, 1.0]]))
        >>> m.transform(torch.tensor([[1.0, 0.0]])).round().tolist()
        [[1.0, 0.0]]
    """

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = alpha

    def fit(self, features: Tensor, prototypes: Tensor) -> DescriptionMap:
        """Fit on one feature row ``[C, F]`` per row of ``prototypes`` ``[C, D]``."""
        if features.shape[0] != prototypes.shape[0] or features.shape[0] < 2:
            raise ConfigError("a description map needs one description per class and two or "
                              "more classes", fix="give descriptions of the training classes")
        self.weight_, self.bias_ = ridge_map(features.to(prototypes.dtype), prototypes,
                                             alpha=self.alpha)
        return self

    def transform(self, features: Tensor) -> Tensor:
        """Mapped descriptions ``[N, D]`` of features ``[N, F]``."""
        return features.to(self.weight_.dtype) @ self.weight_ + self.bias_


def fit_description_map(
    features: Tensor, z: Tensor, labels: Sequence[str], train_classes: Sequence[str], *,
    alpha: float = 1.0, folds: int = 5,
) -> tuple[DescriptionMap, Tensor]:
    """Fit a `DescriptionMap` on the training classes, and map their descriptions
    *cross-fitted*: each training class's semantic vector comes from a map fitted without it
    (``folds`` folds), so a learner trained on them sees the errors it will see on new classes.

    Args:
        features: ``[C, F]`` description features of ``train_classes``, in their order.
        z: ``[N, D]`` embeddings of training samples; labels: their class labels ``[N]``.
        train_classes: the classes to fit on.
        alpha: ridge penalty; folds: cross-fitting folds (>= 2).

    Returns:
        The map fitted on every training class, and ``[C, D]`` cross-fitted semantic vectors of
        ``train_classes`` in their order.
    """
    index = {c: k for k, c in enumerate(train_classes)}
    rows = [i for i, label in enumerate(labels) if label in index]
    y = torch.tensor([index[labels[i]] for i in rows], dtype=torch.long)
    prototypes = class_prototypes(z[rows], y, len(train_classes))
    full = DescriptionMap(alpha).fit(features, prototypes)
    crossed = torch.empty_like(prototypes)
    order = torch.arange(len(train_classes))
    for fold in range(folds):
        held = order[order % folds == fold]
        kept = order[order % folds != fold]
        if len(held) == 0:
            continue
        part = DescriptionMap(alpha).fit(features[kept], prototypes[kept])
        crossed[held] = part.transform(features[held])
    return full, crossed


def zero_shot_logits(query: Tensor, semantic: Tensor) -> Tensor:
    """Logits ``[Q, K]``: minus the squared distance of each query ``[Q, D]`` to each class's
    mapped description ``[K, D]`` (the nearest mapped description wins)."""
    return -torch.cdist(query, semantic).pow(2)


def fit_am3(
    head: torch.nn.Module, z: Tensor, labels: Tensor, semantic: Tensor, *, ways: int = 5,
    shots: int = 1, queries: int = 15, steps: int = 300, lr: float = 1e-3, seed: int = 0,
) -> list[float]:
    """Meta-train an `metamodal.learners.AM3` head on fixed embeddings of training classes.

    The backbone stays frozen: each step draws an episode of ``ways`` training classes from
    ``z``, mixes their prototypes with their semantic vectors (passed to the head as the
    episode's `EpisodeContext`) and takes a gradient step on the query cross-entropy.

    Args:
        head: the AM3 learner (its ``g`` and ``h`` are trained).
        z: ``[N, D]`` embeddings of training samples; labels: long ``[N]`` in ``0..C-1``.
        semantic: ``[C, D]`` semantic vector of each training class (cross-fitted, see
            `fit_description_map`).
        ways, shots, queries: the episodes; steps: how many; lr: Adam's learning rate;
        seed: seeds the episodes.

    Returns:
        The loss of every step.
    """
    classes = int(labels.max()) + 1
    members = [torch.nonzero(labels == c).squeeze(1) for c in range(classes)]
    usable = [c for c in range(classes) if len(members[c]) >= shots + queries]
    if len(usable) < ways:
        raise ConfigError(f"only {len(usable)} training classes have {shots + queries} samples",
                          fix="use fewer ways, shots or queries")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)
    losses = []
    head.train()
    for _ in range(steps):
        chosen = torch.tensor(usable)[torch.randperm(len(usable), generator=generator)[:ways]]
        support, query = [], []
        for c in chosen.tolist():
            rows = members[c][torch.randperm(len(members[c]), generator=generator)]
            support.append(rows[:shots])
            query.append(rows[shots:shots + queries])
        logits = head.scores(z[torch.cat(support)], support_labels, z[torch.cat(query)], ways,
                             context=EpisodeContext(class_semantics=semantic[chosen]))
        loss = torch.nn.functional.cross_entropy(logits, query_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head.eval()
    return losses

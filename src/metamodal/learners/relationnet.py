"""Relation Networks (Sung et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.learners.base import EpisodeContext, MetricLearner, class_means, learners
from metamodal.registry import MAX_LAYERS


@learners.register("relationnet")
class RelationNet(MetricLearner):
    """Relation Network: a learned relation module scores how well a query matches each class.

    Each class is summarised by its support embeddings (their mean by default, their sum as in
    the paper); the relation module, an MLP on the concatenation ``[class; query]`` (our
    embeddings are vectors, not feature maps), outputs one relation score per (query, class).
    `scores` returns the scores *before* the sigmoid, so ``argmax`` and ``softmax`` behave as for
    any other learner; `query_loss` is the paper's mean squared error between the sigmoid scores (in
    (0, 1)) and the one-hot query labels.

    Sung, Yang, Zhang, Xiang, Torr and Hospedales, 2018, "Learning to Compare: Relation Network
    for Few-Shot Learning".

    Args:
        dim: width ``D`` of the embeddings (the relation module reads ``2 * D`` numbers).
        hidden: width of the relation module's hidden layers.
        layers: number of hidden layers (each Linear + ReLU) before the scoring layer.
        pool: ``"mean"`` or ``"sum"`` (the paper's) of each class's support embeddings; the mean
            keeps the scale of the class summary the same whatever the number of shots.

    Example:
        >>> head = RelationNet(dim=4)
        >>> support, query = torch.randn(6, 4), torch.randn(5, 4)
        >>> logits = head.scores(support, torch.tensor([0, 0, 1, 1, 2, 2]), query, 3)
        >>> logits.shape
        torch.Size([5, 3])
        >>> bool(head.query_loss(logits, torch.tensor([0, 1, 2, 0, 1])) > 0)
        True
    """

    def __init__(self, *, dim: int, hidden: int = 64, layers: int = 1, pool: str = "mean") -> None:
        super().__init__()
        if pool not in ("mean", "sum"):
            raise ValueError(f"pool must be 'mean' or 'sum', got {pool!r}")
        if hidden < 1 or not 1 <= layers <= MAX_LAYERS:
            raise ValueError(f"hidden must be >= 1 and layers in 1..{MAX_LAYERS}, got {hidden}, "
                             f"{layers}")
        self.pool = pool
        blocks: list[nn.Module] = []
        width = 2 * dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        blocks.append(nn.Linear(width, 1))
        self.relation = nn.Sequential(*blocks)

    def scores(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        ways: int,
        *,
        counts: Tensor | None = None,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Relation scores before the sigmoid, ``[Q, ways]``.

        Args:
            support: ``[S, D]`` support embeddings.
            support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
            query: ``[Q, D]`` query embeddings.
            ways: number of classes.
            counts: long ``[ways]`` from `check_support`, when the caller has checked the
                labels; context: unused.
        """
        classes = class_means(support, support_labels, ways, counts=counts)  # [ways, D]
        if self.pool == "sum":
            counts = torch.bincount(support_labels, minlength=ways).to(classes.dtype)
            classes = classes * counts.unsqueeze(1)
        q, w = query.shape[0], classes.shape[0]
        pairs = torch.cat(
            [classes.unsqueeze(0).expand(q, w, -1), query.unsqueeze(1).expand(q, w, -1)], dim=2
        )  # [Q, ways, 2D]
        return self.relation(pairs).squeeze(2)

    def query_loss(self, logits: Tensor, query_labels: Tensor) -> Tensor:
        """Mean squared error between ``sigmoid(logits)`` ``[Q, ways]`` and one-hot labels."""
        target = F.one_hot(query_labels, logits.shape[1]).to(logits.dtype)
        return F.mse_loss(torch.sigmoid(logits), target)

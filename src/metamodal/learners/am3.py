"""Adaptive Modality Mixture Mechanism, AM3 (Xing, Rostamzadeh, Oreshkin and Pinheiro, 2019):
few-shot prototypes mixed with each class's mapped description."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from metamodal.learners.base import MetricLearner, class_means, learners, squared_distances

_SEMANTICS: ContextVar[Tensor | None] = ContextVar("metamodal_class_semantics", default=None)


@contextmanager
def class_semantics(semantic: Tensor | None) -> Iterator[None]:
    """Within this block, `AM3` mixes the episode's prototypes with ``semantic`` ``[ways, D]``:
    row ``k`` is the mapped description of episode class ``k``.

    Example:
        >>> head = AM3(dim=2)
        >>> s, q = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([[1.0, 0.0]])
        >>> with class_semantics(torch.tensor([[2.0, 0.0], [4.0, 0.0]])):
        ...     head.scores(s, torch.tensor([0, 1]), q, 2).argmax(1).item()
        0
    """
    token = _SEMANTICS.set(semantic)
    try:
        yield
    finally:
        _SEMANTICS.reset(token)


@learners.register("am3")
class AM3(MetricLearner):
    """AM3: the prototype of class ``k`` becomes ``lambda_k * p_k + (1 - lambda_k) * w_k``,
    where ``p_k`` is the mean of its support embeddings, ``w_k = g(e_k)`` its description
    embedding ``e_k`` transformed by ``g``, and ``lambda_k = sigmoid(h(w_k))`` an
    input-dependent mixing weight (a class whose description says little leans on its
    examples). Queries are scored by minus the squared distance, as in ProtoNet.

    The description embeddings come through `class_semantics` (set by the code that knows the
    episode's classes, e.g. `metamodal.evaluate.zeroshot`); without them AM3 is ProtoNet.

    Xing, Rostamzadeh, Oreshkin and Pinheiro, 2019, "Adaptive Cross-Modal Few-shot Learning".

    Args:
        dim: width of the embeddings (and of the description embeddings).
        hidden: hidden width of ``g`` and ``h``.

    Example:
        >>> head = AM3(dim=4)
        >>> s, q = torch.randn(6, 4), torch.randn(3, 4)
        >>> with class_semantics(torch.randn(3, 4)):
        ...     head.scores(s, torch.tensor([0, 0, 1, 1, 2, 2]), q, 3).shape
        torch.Size([3, 3])
    """

    def __init__(self, *, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.g = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.g[2].weight)  # g starts as the identity (residual below)
        nn.init.zeros_(self.g[2].bias)
        self.h = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def mixture(self, prototypes: Tensor, semantic: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed prototypes ``[ways, D]`` and the weights ``lambda`` ``[ways, 1]``."""
        w = semantic + self.g(semantic)
        lam = torch.sigmoid(self.h(w))
        return lam * prototypes + (1 - lam) * w, lam

    def scores(
        self, support: Tensor, support_labels: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        """Logits ``[Q, ways]`` = minus the squared distance to the mixed prototypes.

        Args:
            support: ``[ways*shots, D]``; support_labels: long ``[ways*shots]``;
            query: ``[Q, D]``; ways: number of classes.
        """
        prototypes = class_means(support, support_labels, ways)
        semantic = _SEMANTICS.get()
        if semantic is not None:
            prototypes, _ = self.mixture(prototypes, semantic.to(prototypes))
        return -squared_distances(query, prototypes)

"""Adaptive Modality Mixture Mechanism, AM3 (Xing, Rostamzadeh, Oreshkin and Pinheiro, 2019):
few-shot prototypes mixed with each class's mapped description."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metamodal.errors import ConfigError
from metamodal.learners.base import (
    EpisodeContext,
    LearnerCapabilities,
    MetricLearner,
    class_means,
    learners,
)
from metamodal.ops import squared_distances


@learners.register("am3")
class AM3(MetricLearner):
    """AM3: the prototype of class ``k`` becomes ``lambda_k * p_k + (1 - lambda_k) * w_k``,
    where ``p_k`` is the mean of its support embeddings, ``w_k = g(e_k)`` its description
    embedding ``e_k`` transformed by ``g``, and ``lambda_k = sigmoid(h(w_k))`` an
    input-dependent mixing weight (a class whose description says little leans on its
    examples). Queries are scored by minus the squared distance, as in ProtoNet.

    The description embeddings ``e`` come in explicitly, as the ``class_semantics`` of an
    `EpisodeContext` (made by the code that knows the episode's classes, e.g.
    `metamodal.evaluate.zeroshot` and `metamodal.mapping.zeroshot.fit_am3`). Without a
    context AM3 refuses to run; with ``EpisodeContext()`` (semantics explicitly None) it is
    ProtoNet.

    Xing, Rostamzadeh, Oreshkin and Pinheiro, 2019, "Adaptive Cross-Modal Few-shot Learning".

    Args:
        dim: width of the embeddings (and of the description embeddings).
        hidden: hidden width of ``g`` and ``h``.

    Example:
        >>> head = AM3(dim=2)
        >>> s, q = torch.tensor([[0.0, 0.0], [4.0, 0.0]]), torch.tensor([[1.0, 0.0]])
        >>> described = EpisodeContext(class_semantics=torch.tensor([[2.0, 0.0], [4.0, 0.0]]))
        >>> head.scores(s, torch.tensor([0, 1]), q, 2, context=described).argmax(1).item()
        0
        >>> head.scores(s, torch.tensor([0, 1]), q, 2, context=EpisodeContext()).tolist()
        [[-1.0, -9.0]]
    """

    def __init__(self, *, dim: int, hidden: int = 64) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.g = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        nn.init.zeros_(self.g[2].weight)  # g starts as the identity (residual below)
        nn.init.zeros_(self.g[2].bias)
        self.h = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def capabilities(self) -> LearnerCapabilities:
        """Trained on episodes, embedded once for evaluation, and needs the episode's class
        semantics (``uses_class_semantics``)."""
        return LearnerCapabilities(embeds_once=True, uses_class_semantics=True)

    def mixture(self, prototypes: Tensor, semantic: Tensor) -> tuple[Tensor, Tensor]:
        """Mixed prototypes ``[ways, D]`` and the weights ``lambda`` ``[ways, 1]``."""
        w = semantic + self.g(semantic)
        lam = torch.sigmoid(self.h(w))
        return lam * prototypes + (1 - lam) * w, lam

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
        """Logits ``[Q, ways]`` = minus the squared distance to the mixed prototypes.

        Args:
            support: ``[ways*shots, D]``; support_labels: long ``[ways*shots]``;
            query: ``[Q, D]``; ways: number of classes.
            counts: long ``[ways]`` from `check_support`, when the caller has checked the
                labels.
            context: its ``class_semantics`` ``[ways, D]`` are the episode's description
                embeddings (None: the prototypes alone, as ProtoNet).

        Raises:
            ConfigError: no ``context`` (AM3 needs to be told the class semantics, or that
                there are none).
        """
        if context is None:
            raise ConfigError(
                "AM3 mixes each class's prototype with its description, but no episode "
                "context came with this episode",
                column="learner",
                fix="pass context=EpisodeContext(class_semantics=...) with the classes' mapped "
                "descriptions (EpisodeContext() for none: AM3 is then ProtoNet), or train "
                "protonet and use `metamodal zero-shot`, which fits an AM3 head")
        prototypes = class_means(support, support_labels, ways, counts=counts)
        semantic = context.class_semantics
        if semantic is not None:
            prototypes, _ = self.mixture(prototypes, semantic.to(prototypes))
        return -squared_distances(query, prototypes)

"""Prototypical Networks (Snell, Swersky and Zemel, 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.learners.base import (
    EpisodeContext,
    MetricLearner,
    class_means,
    learners,
    register_log_scalar,
)
from metamodal.ops import squared_distances


@learners.register("protonet")
class ProtoNet(MetricLearner):
    """Prototypical Networks: each class is the mean of its support embeddings (its
    *prototype*); a query's logit for class ``k`` is minus its squared Euclidean distance to
    prototype ``k``, divided by a temperature.

    Snell, Swersky and Zemel, 2017, "Prototypical Networks for Few-shot Learning".

    Args:
        dim: embedding width (unused; accepted so that every learner is built the same way).
        temperature: divides the distances; 1.0 (the paper's version) by default.
        learn_temperature: make the temperature a trained parameter (kept positive through
            its logarithm).

    Attributes:
        transduction: soft k-means steps that refine the prototypes with the episode's
            unlabelled queries in evaluation mode (Ren et al. 2018, "Meta-Learning for
            Semi-Supervised Few-Shot Classification"): each query joins every class with the
            weight of its softmax probability, and each prototype becomes the weighted mean of
            its supports (weight 1) and of the queries. 0 (the default) = off; set by
            `metamodal.model.FewShotModel.set_test_time`.

    Example:
        >>> import torch
        >>> head = ProtoNet()
        >>> support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
        >>> head.scores(support, torch.tensor([0, 0, 1]), torch.tensor([[1.0, 1.0]]), 2).tolist()
        [[-1.0, -10.0]]
    """

    def __init__(
        self, *, dim: int | None = None, temperature: float = 1.0, learn_temperature: bool = False
    ) -> None:
        super().__init__()
        register_log_scalar(self, "log_temperature", temperature, learn=learn_temperature)
        self.transduction = 0

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
        """Logits ``[Q, ways]`` = ``-||query - prototype_k||^2 / temperature``.

        Args:
            support: ``[ways*shots, D]`` support embeddings.
            support_labels: long ``[ways*shots]`` in ``0..ways-1``.
            query: ``[Q, D]`` query embeddings.
            ways: number of classes.
            counts: long ``[ways]`` from `check_support`, when the caller has checked the
                labels; context: unused.
        """
        prototypes = class_means(support, support_labels, ways, counts=counts)
        temperature = self.log_temperature.exp()
        logits = -squared_distances(query, prototypes) / temperature
        if self.training or not self.transduction:
            return logits
        sums = F.one_hot(support_labels, ways).to(support.dtype).T @ support  # [ways, D]
        sizes = (counts if counts is not None else torch.bincount(
            support_labels, minlength=ways)).to(support.dtype)  # [ways]
        for _ in range(self.transduction):
            weights = logits.softmax(-1)  # [Q, ways]
            prototypes = (sums + weights.T @ query) / (sizes + weights.sum(0)).unsqueeze(1)
            logits = -squared_distances(query, prototypes) / temperature
        return logits

"""Prototypical Networks (Snell, Swersky and Zemel, 2017)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.learners.base import (
    EpisodeContext,
    MetricLearner,
    check_support,
    class_means,
    informative_support,
    learners,
    register_log_scalar,
)
from metamodal.learners.embeddings import Embeddings
from metamodal.ops import balanced_softmax, squared_distances


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
            its supports (weight 1) and of the queries; under late fusion the fused logits
            assign and every modality's prototypes move (`logits`). 0 (the default) = off;
            set by `metamodal.model.FewShotModel.set_test_time`.
        balance: the soft k-means steps assign the queries evenly over the classes (the
            softmax balanced by Sinkhorn's iterations, `metamodal.ops.balanced_softmax`, so
            that each class receives ``Q / ways`` of the queries' weight), when the episode has
            at least as many queries as classes; set from ``transduction_balance``.

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
        self.balance = False

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
        return -squared_distances(query, prototypes) / self.log_temperature.exp()

    def logits(
        self,
        backbone: nn.Module,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        ways: int,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` (see `MetricLearner.logits`), refined in evaluation mode
        by ``transduction`` soft k-means steps (`PrototypeRefinement`, each step's assignment
        by `soft_assignment`, balanced with ``balance``).

        Each step assigns every query softly to the classes (the softmax of the current
        logits) and moves each prototype to the weighted mean of its supports (weight 1) and
        the queries. Under late fusion the assignment comes from the *fused* logits and
        refines every modality's prototypes (from the queries that have that modality): one
        modality's confidence moves the other's prototypes. With ``balance`` the assignment is
        balanced over the classes (`metamodal.ops.balanced_softmax`): where the queries are
        spread evenly over the classes, as in a one-shot run with one query per class, two
        queries drawn to one prototype share it and the weaker pull goes to a class that no
        query claims yet.
        """
        if self.training or not self.transduction:
            return super().logits(backbone, support, support_labels, query, ways, context)
        refinement = self.refinement(backbone, support, support_labels, query, ways, context)
        for _ in range(self.transduction):
            refinement.step(soft_assignment(refinement.logits(), balance=self.balance))
        return refinement.logits()

    def refinement(
        self,
        backbone: nn.Module,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        ways: int,
        context: EpisodeContext | None = None,
    ) -> PrototypeRefinement:
        """The episode's prototypes, ready to be refined by soft k-means steps whose
        assignments come from outside (`logits` takes its own; an ensemble takes its
        members' together, `metamodal.model.EnsembleModel`). Arguments as `logits`."""
        counts = check_support(support_labels, ways)
        if support.late:
            per_modality, valid = self.late_logits(support, support_labels, query, ways,
                                                   context)
            views = [(m, support.present[:, m], query.z[:, m]) for m in range(valid.shape[1])
                     if bool(valid[:, m].any())]
            supports = [support.z[:, m] for m in range(valid.shape[1])]

            def combine(per: Tensor) -> Tensor:
                return backbone.fusion.combine(per, valid)
        else:
            support, support_labels, counts = informative_support(support, support_labels,
                                                                  ways, counts)
            per_modality = self.scores(support.z, support_labels, query.z, ways,
                                       counts=counts).unsqueeze(1)
            valid = torch.ones(len(query), 1, dtype=torch.bool, device=query.z.device)
            views = [(0, torch.ones_like(support_labels, dtype=torch.bool), query.z)]
            supports = [support.z]

            def combine(per: Tensor) -> Tensor:
                return per[:, 0]
        return PrototypeRefinement(per_modality.clone(), valid, views, supports,
                                   support_labels, self.log_temperature.exp(), combine)


def soft_assignment(logits: Tensor, *, balance: bool) -> Tensor:
    """The weights ``[Q, ways]`` with which a soft k-means step assigns each query to the
    classes: the softmax of ``logits`` ``[Q, ways]`` (log-probabilities serve as well), or,
    with ``balance`` and at least as many queries as classes, the softmax balanced over the
    classes (`metamodal.ops.balanced_softmax`)."""
    if balance and len(logits) >= logits.shape[1]:
        return balanced_softmax(logits)
    return logits.softmax(-1)


@dataclass(eq=False)  # (tensors: compared by identity)
class PrototypeRefinement:
    """Soft k-means over one episode's unlabelled queries (Ren et al. 2018), one step at a
    time: `step` takes the queries' assignment to the classes and moves every prototype to
    the weighted mean of its supports (weight 1) and the queries; `logits` are the queries'
    logits under the current prototypes. Built by `ProtoNet.refinement`.

    Args:
        per_modality: ``[Q, M, ways]`` the queries' logits per modality (``M = 1`` for a
            single fused embedding); updated in place by `step`.
        valid: bool ``[Q, M]``: whether query ``q``'s modality ``m`` is scored.
        views: ``(m, has, queries)`` per refined modality: bool ``has [S]`` (the supports
            with ``m``) and ``queries [Q, D]`` (the queries' embeddings in ``m``).
        supports: ``[S, D]`` the supports' embeddings in each modality.
        support_labels: long ``[S]``.
        temperature: the learner's temperature (divides the squared distances).
        combine: ``[Q, M, ways] -> [Q, ways]``: the per-modality logits fused.
    """

    per_modality: Tensor
    valid: Tensor
    views: list[tuple[int, Tensor, Tensor]]
    supports: list[Tensor]
    support_labels: Tensor
    temperature: Tensor
    combine: Callable[[Tensor], Tensor]

    def logits(self) -> Tensor:
        """``[Q, ways]``: the queries' logits under the current prototypes."""
        return self.combine(self.per_modality)

    def step(self, weights: Tensor) -> None:
        """One soft k-means step with ``weights`` ``[Q, ways]`` (each query's assignment to
        the classes; a query with a zero row pulls no prototype)."""
        ways = weights.shape[1]
        for m, has, queries in self.views:
            one_hot = F.one_hot(self.support_labels[has], ways).to(queries.dtype)  # [S_m, ways]
            sums = one_hot.T @ self.supports[m][has]  # [ways, D]
            joined = weights.to(queries.dtype) * self.valid[:, m].unsqueeze(1).to(
                queries.dtype)  # [Q, ways]
            prototypes = (sums + joined.T @ queries) / (
                one_hot.sum(0) + joined.sum(0)).unsqueeze(1)
            self.per_modality[:, m] = -squared_distances(queries, prototypes) / self.temperature

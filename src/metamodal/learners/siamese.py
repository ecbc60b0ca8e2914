"""Cross-modal Siamese networks trained with a contrastive loss (Koch et al., 2015; Hadsell et
al., 2006)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.learners.base import EpisodeContext, MetricLearner, check_support, learners
from metamodal.learners.embeddings import Embeddings
from metamodal.losses import contrastive_loss
from metamodal.ops import l2_normalize, safe_sqrt, squared_distances


@learners.register("siamese")
class Siamese(MetricLearner):
    """Cross-modal Siamese network with a contrastive loss.

    Training uses pairs, not class logits (its `query_loss` is zero; everything is in `extra_loss`):

    1. *fused pairs*: every (query, support) pair of fused embeddings of samples that have at
       least one modality (a sample with none has the placeholder embedding 0, which is not
       data), positive when both have the same class (for late fusion, ``z`` is ``[B, M, D]``:
       pairs are formed within each modality, between samples that both have it);
    2. *cross-modal pairs*, when the embeddings carry per-modality ``parts``: modality ``a`` of
       sample ``i`` against modality ``b != a`` of sample ``j`` over every support and query
       sample of the episode (including ``i == j``: a sample's image and its caption form a
       positive pair), only where both samples have those modalities. This pulls the encoders
       of different modalities into one space, where a sample of one class lies close to
       samples of the same class whatever modality they come in.

    Both use the margin-based contrastive loss of Hadsell et al. 2006 on Euclidean distances
    (see `metamodal.losses.contrastive_loss`); the second is weighted by
    ``cross_modal_weight``. Embeddings are L2-normalised first by default so that one margin
    suits every encoder.

    Prediction: a query's logit for class ``k`` is minus ``scale`` times its mean distance to the
    support samples of class ``k`` (``predict="mean"``) or to the nearest one
    (``predict="nearest"``, Koch et al.'s one-shot rule).

    Koch, Zemel and Salakhutdinov, 2015, "Siamese Neural Networks for One-shot Image
    Recognition"; Hadsell, Chopra and LeCun, 2006, "Dimensionality Reduction by Learning an
    Invariant Mapping".

    Args:
        dim: embedding width (unused; accepted so that every learner is built the same way).
        margin: contrastive margin on the Euclidean distance.
        normalize: L2-normalise embeddings before any distance.
        predict: ``"mean"`` or ``"nearest"``.
        cross_modal_weight: weight of the cross-modal pair term (0 turns it off).
        balance: average positive and negative pairs separately (see `contrastive_loss`).
        scale: multiplies the negative distances into logits; changes probabilities only.

    Example:
        >>> head = Siamese()
        >>> s = Embeddings(torch.randn(4, 8), torch.ones(4, 1, dtype=torch.bool))
        >>> q = Embeddings(torch.randn(6, 8), torch.ones(6, 1, dtype=torch.bool))
        >>> sl, ql = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
        >>> head.scores(s.z, sl, q.z, 2).shape
        torch.Size([6, 2])
        >>> bool(head.extra_loss(s, sl, q, ql) > 0)
        True
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        margin: float = 1.0,
        normalize: bool = True,
        predict: str = "mean",
        cross_modal_weight: float = 1.0,
        balance: bool = True,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        if predict not in ("mean", "nearest"):
            raise ValueError(f"predict must be 'mean' or 'nearest', got {predict!r}")
        if margin <= 0:
            raise ValueError(f"margin must be > 0, got {margin}")
        if not (scale > 0 and cross_modal_weight >= 0):
            raise ValueError(f"scale must be > 0 and cross_modal_weight >= 0, got {scale}, "
                             f"{cross_modal_weight}")
        self.margin = margin
        self.normalize = normalize
        self.predict = predict
        self.cross_modal_weight = cross_modal_weight
        self.balance = balance
        self.scale = scale

    def _prepare(self, x: Tensor) -> Tensor:
        return l2_normalize(x, dim=-1) if self.normalize else x

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
        """Logits ``[Q, ways]``: minus the mean (or smallest) distance to each class's support.

        Args:
            support: ``[S, D]`` support embeddings.
            support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
            query: ``[Q, D]`` query embeddings.
            ways: number of classes.
            counts: long ``[ways]`` from `check_support`, when the caller has checked the
                labels; context: unused.
        """
        if counts is None:
            counts = check_support(support_labels, ways)
        distance = squared_distances(self._prepare(query), self._prepare(support))
        distance = safe_sqrt(distance)  # [Q, S]
        member = F.one_hot(support_labels, ways).to(distance.dtype)  # [S, ways]
        if self.predict == "mean":
            per_class = distance @ member / counts.to(distance.dtype)
        else:
            mask = member.T.bool().unsqueeze(0)  # [1, ways, S]
            per_class = distance.unsqueeze(1).masked_fill(~mask, float("inf")).amin(dim=2)
        return -self.scale * per_class

    def query_loss(self, logits: Tensor, query_labels: Tensor) -> Tensor:
        """Zero: a Siamese network learns from pairs, in `extra_loss`."""
        return logits.new_zeros(())

    def extra_loss(
        self,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        query_labels: Tensor,
    ) -> Tensor:
        """Contrastive loss of the fused (query, support) pairs plus ``cross_modal_weight``
        times that of the cross-modal pairs from ``parts`` (see the class docstring).

        Args:
            support: embeddings of the ``S`` support samples.
            support_labels: long ``[S]``.
            query: embeddings of the ``Q`` query samples.
            query_labels: long ``[Q]``.
        """
        same = query_labels.unsqueeze(1) == support_labels.unsqueeze(0)  # [Q, S]
        zq, zs = self._prepare(query.z), self._prepare(support.z)
        if zq.dim() == 2:
            sq = squared_distances(zq, zs)
            # a sample with no modality at all has the placeholder z = 0: not a data point
            valid = query.present.any(1).unsqueeze(1) & support.present.any(1).unsqueeze(0)
        else:  # late fusion: [B, M, D], pairs within each modality
            zq, zs = zq.transpose(0, 1), zs.transpose(0, 1)  # [M, Q, D], [M, S, D]
            sq = (
                zq.pow(2).sum(-1).unsqueeze(2)
                + zs.pow(2).sum(-1).unsqueeze(1)
                - 2 * zq @ zs.transpose(1, 2)
            ).clamp_min(0.0)  # [M, Q, S]
            valid = query.present.T.unsqueeze(2) & support.present.T.unsqueeze(1)
            same = same.unsqueeze(0).expand_as(valid)
        total = contrastive_loss(sq, same, valid, margin=self.margin, balance=self.balance)
        if self.cross_modal_weight and support.parts is not None and query.parts is not None:
            total = total + self.cross_modal_weight * self._cross_modal(
                support, support_labels, query, query_labels
            )
        return total

    def _cross_modal(
        self,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        query_labels: Tensor,
    ) -> Tensor:
        names = support.modalities
        if len(names) < 2:
            return support.z.new_zeros(())
        assert support.parts is not None and query.parts is not None
        parts = torch.stack(
            [torch.cat([support.parts[name], query.parts[name]]) for name in names], dim=1
        )  # [N, M, D]
        n, m, d = parts.shape
        flat = self._prepare(parts).reshape(n * m, d)
        present = torch.cat([support.present, query.present]).reshape(n * m)
        labels = torch.cat([support_labels, query_labels]).repeat_interleave(m)
        modality = torch.arange(m, device=flat.device).repeat(n)
        sq = squared_distances(flat, flat)
        valid = (
            present.unsqueeze(1)
            & present.unsqueeze(0)
            & (modality.unsqueeze(1) != modality.unsqueeze(0))
        )
        same = labels.unsqueeze(1) == labels.unsqueeze(0)
        return contrastive_loss(sq, same, valid, margin=self.margin, balance=self.balance)

"""Late fusion: keep one embedding per modality and mix the per-modality logits afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metamodal.fusion.base import Fusion, fusions, masked_softmax


@fusions.register("late")
class LateFusion(Fusion):
    """An ensemble of per-modality heads whose logits are mixed with learned weights.

    Unlike the other fusions, ``forward`` does not fuse: it returns the per-modality
    embeddings ``[B, M, dim]`` (absent ones zero), optionally after a per-modality linear map.
    The learner computes logits ``[Q, M, W]`` per modality with its head (e.g. distances to
    per-modality prototypes) and calls `combine`, which mixes them with learned per-modality
    weights, a softmax over the modalities each query has (late fusion / decision-level
    fusion, as in the ensemble baselines of Baltrusaitis et al., 2019, "Multimodal Machine
    Learning: A Survey and Taxonomy").

    In evaluation mode, ``confidence`` > 0 (set from the test-time setting
    ``fusion_confidence``, `metamodal.model.FewShotModel.set_test_time`) lowers, for each query,
    the weight of a modality whose posterior over the classes is uncertain: the weights become
    ``softmax(mix - confidence * H)`` over the query's valid modalities, ``H`` ``[Q, M]`` the
    entropy of each modality's softmax. A modality that separates the episode's classes poorly
    (an alphabet whose strokes it never learned to tell apart) spreads its posterior and
    steps back for that query, where the learned ``mix`` weights it the same everywhere.

    ``reliability`` > 0 (from ``fusion_reliability``) weighs the modalities per class instead,
    transductively: with ``P`` ``[Q, W]`` the fused posterior (learned mix, and confidence when
    set) and ``P_m`` each modality's, modality ``m``'s agreement on class ``c`` is
    ``A[m, c] = sum_q P[q, c] P_m[q, c] / sum_q P[q, c]``, the probability it gives ``c`` on
    the queries the fused model puts there; class ``c``'s logits are then mixed with weights
    ``softmax(scores + reliability * log A[:, c])`` over the modalities. A modality that tells
    one class of the episode poorly from the others (strokes of two characters drawn alike)
    steps back for that class only.

    Args:
        modalities: the modality names (the order of the M axis).
        dim: embedding size (also ``out_dim``).
        project: apply a learned linear map per modality in ``forward``.
        unimodal_loss: weight of each modality's own query loss, added in training by
            metric learners (`metamodal.learners.base.MetricLearner.loss`); 0 = off.
        distill: weight of each modality's distillation loss, added in training the same way:
            the KL divergence from the fused posterior (held fixed) to the modality's own, so
            that each branch learns what the others tell it about the episode's classes
            (cross-modal distillation, for a model later used with one modality); 0 = off.

    Shapes:
        ``forward``: ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, M, dim]``;
        ``combine``: ``[Q, M, W]``, bool ``[Q, M]`` -> ``[Q, W]``; ``last_weights`` ``[Q, M]``
        (``[Q, M, W]`` with ``reliability``).

    Example:
        >>> fusion = LateFusion(modalities=["a", "b"], dim=4)
        >>> fusion({"a": torch.randn(3, 4)}, {"a": torch.ones(3, dtype=torch.bool)}).shape
        torch.Size([3, 2, 4])
        >>> logits = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # [Q=1, M=2, W=2]
        >>> fusion.combine(logits, torch.tensor([[True, False]])).tolist()
        [[1.0, 0.0]]
    """

    late: bool = True

    def __init__(self, *, modalities: Sequence[str], dim: int, project: bool = False,
                 unimodal_loss: float = 0.0, distill: float = 0.0) -> None:
        super().__init__(modalities=modalities, dim=dim)
        for name, weight in (("unimodal_loss", unimodal_loss), ("distill", distill)):
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not (
                    0 <= weight <= 100):
                raise ValueError(f"{name} must be a number in [0, 100], got {weight!r}")
        self.unimodal_loss = float(unimodal_loss)
        self.distill = float(distill)
        count = len(self.modalities)
        self.mix = nn.Parameter(torch.zeros(count))
        self.project = project
        if project:
            self.weight = nn.Parameter(torch.eye(dim).repeat(count, 1, 1))
            self.bias = nn.Parameter(torch.zeros(count, dim))
        self.last_weights: Tensor | None = None
        self.confidence = 0.0
        self.reliability = 0.0

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Per-modality embeddings ``[B, M, dim]`` in ``self.modalities`` order, absent zero."""
        z, mask = self.stack(embeddings, present)
        if self.project:
            z = torch.einsum("bmd,mde->bme", z, self.weight) + self.bias
            z = torch.where(mask.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype))
        return z

    def combine(self, logits: Tensor, valid: Tensor) -> Tensor:
        """Mix per-modality logits: ``[Q, M, W]`` with bool ``valid`` ``[Q, M]`` -> ``[Q, W]``.

        Each query's weights are a softmax of the learned ``mix`` scores over its valid
        modalities (in evaluation minus ``confidence`` times each modality's entropy, and per
        class plus ``reliability`` times the log of each modality's agreement: see the class
        docstring); invalid modalities' logits are never read; a query with no valid modality
        gets zeros. The weights are kept in ``last_weights`` (detached).
        """
        valid = valid.to(torch.bool)
        safe = torch.where(valid.unsqueeze(-1), logits, torch.zeros((), dtype=logits.dtype))
        scores = self.mix.to(logits.dtype).expand(valid.shape)
        evaluating = not self.training
        if evaluating and (self.confidence or self.reliability):
            log_p = safe.log_softmax(-1)  # [Q, M, W]
        if self.confidence and evaluating:
            entropy = -(log_p.exp() * log_p).sum(-1)  # [Q, M]
            scores = scores - self.confidence * entropy
        weights = masked_softmax(scores, valid)  # [Q, M]
        mixing = weights.unsqueeze(-1)  # [Q, M, 1]: one weight for every class
        if self.reliability and evaluating:
            fused = (mixing * safe).sum(dim=1).softmax(-1)  # [Q, W]
            mass = fused.unsqueeze(1) * valid.unsqueeze(-1).to(fused.dtype)  # [Q, M, W]
            agreement = (mass * log_p.exp()).sum(0) / mass.sum(0).clamp_min(1e-12)  # [M, W]
            tiny = torch.finfo(agreement.dtype).tiny
            per_class = scores.unsqueeze(-1) + self.reliability * agreement.clamp_min(tiny).log()
            weights = mixing = masked_softmax(per_class, valid.unsqueeze(-1), dim=1)  # [Q, M, W]
        self.last_weights = weights.detach()
        return (mixing * safe).sum(dim=1)

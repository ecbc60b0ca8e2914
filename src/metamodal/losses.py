"""Losses shared by stages that do not import each other: the margin-based contrastive loss
over pairs, which the Siamese learner (`metamodal.learners.siamese`) and the margin alignment
of two modalities (`metamodal.mapping.contrastive`) both use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.ops import safe_sqrt


def contrastive_loss(
    sq_distances: Tensor, same: Tensor, valid: Tensor, *, margin: float, balance: bool = True
) -> Tensor:
    """Margin-based contrastive loss over pairs (Hadsell, Chopra and LeCun, 2006,
    "Dimensionality Reduction by Learning an Invariant Mapping").

    A positive pair (same class) costs ``d^2 / 2``; a negative pair costs
    ``max(0, margin - d)^2 / 2``, with ``d`` the Euclidean distance.

    Args:
        sq_distances: squared Euclidean distances of the pairs, any shape ``[*P]``.
        same: bool ``[*P]``: True for positive pairs.
        valid: bool ``[*P]``: pairs that count (both sides present, not a sample with itself).
        margin: distance beyond which a negative pair costs nothing.
        balance: average positive and negative pairs separately and add the two means, so the
            many negative pairs of a many-way episode do not drown the few positive ones;
            otherwise one mean over every valid pair (the paper's sum, normalised).

    Returns:
        A scalar; zero when no pair is valid.

    Example:
        >>> d2 = torch.tensor([[0.25, 4.0]])
        >>> same, valid = torch.tensor([[True, False]]), torch.ones(1, 2, dtype=torch.bool)
        >>> float(contrastive_loss(d2, same, valid, margin=1.0))  # 0.25/2 + 0
        0.125
    """
    distance = safe_sqrt(sq_distances)
    positive_cost = 0.5 * sq_distances
    negative_cost = 0.5 * F.relu(margin - distance).pow(2)
    positive = same & valid
    negative = ~same & valid
    zero = torch.zeros((), dtype=sq_distances.dtype, device=sq_distances.device)
    pos_sum = torch.where(positive, positive_cost, zero).sum()
    neg_sum = torch.where(negative, negative_cost, zero).sum()
    if balance:
        return pos_sum / positive.sum().clamp_min(1) + neg_sum / negative.sum().clamp_min(1)
    return (pos_sum + neg_sum) / valid.sum().clamp_min(1)

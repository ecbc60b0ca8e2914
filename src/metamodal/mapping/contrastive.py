"""Contrastive objectives that pull matching samples of two modalities together: symmetric
InfoNCE with a learnable temperature (CLIP) and the margin-based pair loss (Hadsell et al.)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.learners.base import l2_normalize, safe_sqrt, squared_distances

MAX_LOGIT_SCALE = 100.0
"""CLIP's cap on the inverse temperature (Radford et al. 2021), for stability."""


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


def info_nce(a: Tensor, b: Tensor, log_scale: Tensor, labels: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE between paired rows of two modalities (CLIP's loss).

    Row ``i`` of ``a`` and row ``i`` of ``b`` are the same sample (a positive pair); every other
    row of the batch is a negative. Both sides are L2-normalised; the cosine similarities are
    multiplied by ``exp(log_scale)`` (capped at `MAX_LOGIT_SCALE`), and the loss is the mean
    of the cross-entropies in both directions (a -> b and b -> a). With ``labels``, every
    row of the same class is a positive (the supervised contrastive form of Khosla et al.
    2020): the loss is minus the log of the softmax mass on the positives.

    Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
    Supervision"; van den Oord et al., 2018, "Representation Learning with Contrastive
    Predictive Coding".

    Args:
        a: ``[N, D]`` embeddings of modality A.
        b: ``[N, D]`` embeddings of modality B of the same samples.
        log_scale: 0-d tensor, the log of the inverse temperature (learnable).
        labels: optional long ``[N]`` class of each row (class-level positives).

    Returns:
        A scalar (zero when ``N < 2``: a single pair has no negative).

    Example:
        >>> x = torch.eye(4)
        >>> float(info_nce(x, x, torch.tensor(math.log(100.0)))) < 1e-3
        True
    """
    if a.shape[0] < 2:
        return a.sum() * 0.0
    scale = log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
    logits = scale * l2_normalize(a) @ l2_normalize(b).T  # [N, N]
    if labels is None:
        target = torch.arange(a.shape[0], device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    positive = labels.unsqueeze(1) == labels.unsqueeze(0)  # symmetric: same mask both ways
    total = logits.new_zeros(())
    for side in (logits, logits.T):
        mass = side.masked_fill(~positive, float("-inf")).logsumexp(1)
        total = total + (side.logsumexp(1) - mass).mean()
    return 0.5 * total


def margin_alignment_loss(a: Tensor, b: Tensor, *, margin: float = 1.0) -> Tensor:
    """`contrastive_loss` between two modalities of the same samples: row ``i`` of ``a`` and
    row ``i`` of ``b`` form the positive pair, every other cross pair a negative one.

    Args:
        a: ``[N, D]`` embeddings of modality A (L2-normalised here).
        b: ``[N, D]`` embeddings of modality B of the same samples.
        margin: distance beyond which a negative pair costs nothing.

    Example:
        >>> x = torch.eye(3)
        >>> float(margin_alignment_loss(x, x, margin=1.0))  # negatives at sqrt(2) > margin
        0.0
    """
    na, nb = l2_normalize(a), l2_normalize(b)
    sq = squared_distances(na, nb)
    same = torch.eye(a.shape[0], dtype=torch.bool, device=a.device)
    valid = torch.ones_like(same)
    return contrastive_loss(sq, same, valid, margin=margin)

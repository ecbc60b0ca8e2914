"""Contrastive objectives that pull matching samples of two modalities together: symmetric
InfoNCE with a learnable temperature (CLIP) and the margin-based pair loss (Hadsell et al.,
`metamodal.losses.contrastive_loss`, which the Siamese learner shares)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.losses import contrastive_loss
from metamodal.ops import l2_normalize, squared_distances

MAX_LOGIT_SCALE = 100.0
"""CLIP's cap on the inverse temperature (Radford et al. 2021), for stability."""


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

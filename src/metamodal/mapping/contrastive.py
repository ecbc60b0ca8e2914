"""Contrastive objectives that pull matching samples of two modalities together: symmetric
InfoNCE with a learnable temperature (CLIP) and the margin-based pair loss (Hadsell et al.,
`metamodal.losses.contrastive_loss`, which the Siamese learner shares)."""

from __future__ import annotations

import math

import torch
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
    keep = torch.ones(1, a.shape[0], dtype=torch.bool, device=a.device)
    positive = None if labels is None else labels.unsqueeze(1) == labels.unsqueeze(0)
    return masked_info_nce(a.unsqueeze(0), b.unsqueeze(0), log_scale, keep, positive)[0]


def masked_info_nce(a: Tensor, b: Tensor, log_scale: Tensor, keep: Tensor,
                    positive: Tensor | None = None) -> Tensor:
    """`info_nce` of ``P`` pairs of modalities at once, each on the rows it keeps (the
    samples that have both of its modalities).

    Args:
        a: ``[P, N, D]`` embeddings of each pair's first modality.
        b: ``[P, N, D]`` embeddings of its second modality, row by row the same samples.
        log_scale: 0-d tensor, the log of the inverse temperature.
        keep: bool ``[P, N]``, the rows each pair uses; the others are neither anchors nor
            negatives.
        positive: bool ``[N, N]``, which rows are positives of each other (default: each
            row itself; rows of one class for class-level positives).

    Returns:
        ``[P]``: each pair's loss, zero for a pair that keeps fewer than two rows.
    """
    scale = log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
    logits = scale * l2_normalize(a) @ l2_normalize(b).transpose(1, 2)  # [P, N, N]
    if positive is None:
        positive = torch.eye(keep.shape[1], dtype=torch.bool, device=keep.device)
    valid = keep.unsqueeze(2) & keep.unsqueeze(1)  # [P, N, N]
    wanted = valid & positive
    counts = keep.sum(1)  # [P]
    total = logits.new_zeros(len(keep))
    for side, mask, chosen in ((logits, valid, wanted), (logits.transpose(1, 2),
                               valid.transpose(1, 2), wanted.transpose(1, 2))):
        rows = (side.masked_fill(~mask, -math.inf).logsumexp(2)
                - side.masked_fill(~chosen, -math.inf).logsumexp(2))  # [P, N]
        total = total + torch.where(keep, rows, 0.0).sum(1) / counts.clamp_min(1)
    return torch.where(counts >= 2, 0.5 * total, 0.0)


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

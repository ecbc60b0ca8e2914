"""Tensor math that any stage may use: distances, a dtype-safe epsilon, safe square roots, L2
normalisation and a balanced softmax.

Nothing here knows about episodes, learners or modalities: each function takes tensors and
returns tensors, and imports nothing from metamodal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def squared_distances(query: Tensor, keys: Tensor) -> Tensor:
    """Squared Euclidean distances between every query row and every key row.

    Args:
        query: ``[Q, D]``.
        keys: ``[K, D]``.

    Returns:
        ``[Q, K]`` with entry ``(i, j) = ||query_i - keys_j||^2`` (clamped at 0 against rounding).

    Example:
        >>> squared_distances(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])).tolist()
        [[25.0]]
    """
    cross = query @ keys.T
    sq = query.pow(2).sum(1, keepdim=True) + keys.pow(2).sum(1).unsqueeze(0) - 2 * cross
    return sq.clamp_min(0.0)


def tiny(dtype: torch.dtype, eps: float = 1e-12) -> float:
    """``eps``, raised to the smallest normal number of floating ``dtype`` where it is smaller.

    ``1e-12``, the usual guard against dividing by (or taking the root of) zero, rounds to 0
    in float16 and then guards nothing; this gives a guard every floating dtype can hold.

    Example:
        >>> tiny(torch.float32), tiny(torch.float16)
        (1e-12, 6.103515625e-05)
    """
    return max(eps, float(torch.finfo(dtype).tiny))


def safe_sqrt(squared: Tensor, eps: float = 1e-12) -> Tensor:
    """``sqrt(max(squared, tiny(dtype, eps)))``: square roots of non-negative values (e.g.
    squared distances, any shape) whose gradient stays finite at zero in every floating dtype.

    Example:
        >>> safe_sqrt(torch.tensor([25.0, 0.0])).tolist()
        [5.0, 9.999999974752427e-07]
    """
    return squared.clamp_min(tiny(squared.dtype, eps)).sqrt()


def l2_normalize(x: Tensor, dim: int = -1) -> Tensor:
    """``x`` divided by its L2 norm along ``dim``; all-zero rows stay zero.

    Same as ``torch.nn.functional.normalize``, but with a floor on the norm that the dtype
    can hold (`tiny`): with the default ``eps=1e-12``, a zero row (the embedding of a sample
    with no modality, or of an absent modality under late fusion) becomes NaN in float16.

    Args:
        x: float ``[..., D]`` (any shape).
        dim: the axis to normalise.

    Example:
        >>> l2_normalize(torch.tensor([[3.0, 4.0], [0.0, 0.0]]).half()).tolist()
        [[0.60009765625, 0.7998046875], [0.0, 0.0]]
    """
    return F.normalize(x, dim=dim, eps=tiny(x.dtype))


def euclidean_distances(query: Tensor, keys: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances ``[Q, K]`` between rows of ``query [Q, D]`` and ``keys [K, D]``,
    with a gradient that stays finite at zero distance (``sqrt(max(d^2, eps))``, `safe_sqrt`).

    Example:
        >>> euclidean_distances(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])).tolist()
        [[5.0]]
    """
    return safe_sqrt(squared_distances(query, keys), eps)


def balanced_softmax(logits: Tensor, iterations: int = 100, *, tolerance: float = 0.01,
                     max_iterations: int = 1000) -> Tensor:
    """The softmax of ``logits`` ``[Q, W]`` rescaled so that every column holds the same mass,
    ``Q / W``, while every row still sums to 1: Sinkhorn's alternating normalisations
    (Cuturi, 2013, "Sinkhorn Distances"), in log space, in float32, returned in the logits'
    dtype. It assigns ``Q`` items evenly over ``W`` classes where the plain softmax lets
    several items crowd into one class.

    ``iterations`` normalisations always run; then, ten at a time up to ``max_iterations``,
    more run while some column's mass is off ``Q / W`` by more than ``tolerance`` (relative,
    as a log-ratio): sharp logits (a large scale, items that agree on one class) converge
    slowly, and a fixed count would leave them unbalanced.

    Example:
        >>> p = balanced_softmax(torch.tensor([[2.0, 0.0], [1.0, 0.0]]))
        >>> [round(x, 3) for x in p.sum(0).tolist()], [round(x, 3) for x in p.sum(1).tolist()]
        ([1.0, 1.0], [1.0, 1.0])
    """
    queries, ways = logits.shape
    log_p = logits.float().log_softmax(-1)
    column_mass = torch.log(torch.tensor(queries / ways))

    def normalise(log_p: Tensor, times: int) -> Tensor:
        for _ in range(times):
            log_p = log_p - log_p.logsumexp(0, keepdim=True) + column_mass
            log_p = log_p - log_p.logsumexp(1, keepdim=True)
        return log_p

    log_p = normalise(log_p, iterations)
    done = iterations
    while done < max_iterations and bool(
            (log_p.logsumexp(0) - column_mass).abs().max() > tolerance):
        log_p = normalise(log_p, 10)
        done += 10
    return log_p.exp().to(logits.dtype)

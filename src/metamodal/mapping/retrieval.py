"""Cross-modal retrieval: rank the targets of one modality for each query of another, and
score the ranks (Recall@K, median rank) at the instance and the class level."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metamodal.ops import l2_normalize

RECALL_AT = (1, 5, 10)


def similarity(query: Tensor, target: Tensor) -> Tensor:
    """Cosine similarities ``[N, M]`` of query rows ``[N, D]`` and target rows ``[M, D]``.

    Example:
        >>> similarity(torch.eye(2), torch.eye(2)).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    return l2_normalize(query) @ l2_normalize(target).T


def first_positive_rank(scores: Tensor, positive: Tensor) -> Tensor:
    """The 1-based rank of the best-scored positive target of each query.

    Ties are counted against the query (a negative scored equal to the best positive ranks
    above it), so constant scores give the worst rank, not the best; a NaN score (from an
    embedding that overflowed) counts as the lowest, so broken embeddings miss, never hit.

    Args:
        scores: ``[N, M]`` similarity of each query to each target (higher is closer).
        positive: bool ``[N, M]``: which targets count as a hit; every row needs one.

    Returns:
        long ``[N]`` ranks in ``1..M``.

    Example:
        >>> s = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
        >>> first_positive_rank(s, torch.tensor([[False, False, True], [True, False, False]]))
        tensor([2, 2])
        >>> nan = torch.full((1, 3), float("nan"))
        >>> first_positive_rank(nan, torch.tensor([[True, False, False]]))
        tensor([3])
    """
    if not bool(positive.any(1).all()):
        raise ValueError("every query needs at least one positive target")
    scores = scores.nan_to_num(nan=float("-inf"))
    best = scores.masked_fill(~positive, float("-inf")).amax(1, keepdim=True)  # [N, 1]
    above = ((scores >= best) & ~positive).sum(1)
    return above + 1


@dataclass
class RetrievalRanks:
    """Ranks of one retrieval direction, per query.

    Args:
        instance: long ``[N]``: rank of the query's own sample among the targets.
        category: long ``[N]``: rank of the first target of the query's class.
        targets: number of targets ``M`` (the random baseline's scale).
    """

    instance: Tensor
    category: Tensor
    targets: int

    def recall(self, k: int, level: str = "instance") -> Tensor:
        """float ``[N]``: 1 where the hit is within the top ``k``, else 0 (mean = Recall@k)."""
        ranks = self.instance if level == "instance" else self.category
        return (ranks <= k).to(torch.float64)

    def median_rank(self, level: str = "instance") -> float:
        """The median rank over queries."""
        ranks = self.instance if level == "instance" else self.category
        return float(ranks.to(torch.float64).median())


def retrieval_ranks(query: Tensor, target: Tensor, labels: Tensor,
                    scores: Tensor | None = None) -> RetrievalRanks:
    """Rank targets for queries that are the *same samples* seen in another modality.

    Row ``i`` of ``query`` and row ``i`` of ``target`` are the same sample: it is the instance
    hit; any target with the query's label is a class hit.

    Args:
        query: ``[N, D]`` query-modality embeddings (in the joint space).
        target: ``[N, D]`` target-modality embeddings of the same samples.
        labels: long ``[N]`` class of each sample.
        scores: precomputed ``[N, N]`` scores (e.g. of a baseline); default cosine similarity.

    Example:
        >>> x = torch.eye(3)
        >>> r = retrieval_ranks(x, x, torch.tensor([0, 0, 1]))
        >>> r.instance.tolist(), r.recall(1).mean().item()
        ([1, 1, 1], 1.0)
    """
    scores = similarity(query, target) if scores is None else scores
    n = scores.shape[0]
    own = torch.eye(n, dtype=torch.bool, device=scores.device)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    return RetrievalRanks(first_positive_rank(scores, own), first_positive_rank(scores, same), n)

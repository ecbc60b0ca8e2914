"""Matching Networks (Vinyals et al., 2016)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from metamodal.learners.base import (
    EpisodeContext,
    MetricLearner,
    check_support,
    learners,
    register_log_scalar,
)
from metamodal.ops import l2_normalize


@learners.register("matchingnet")
class MatchingNet(MetricLearner):
    """Matching Networks: a query attends over every support sample with a softmax of scaled
    cosine similarities; its class distribution is the attention-weighted sum of the support
    labels' one-hot vectors, and its logits are the logarithms of that distribution (so the
    default cross-entropy `loss` is the paper's negative log-likelihood).

    Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, 2016, "Matching Networks for One
    Shot Learning". Full-context embeddings (the LSTMs over the support set) are not included:
    the embeddings are used as they come from the encoders and fusion.

    Args:
        dim: embedding width (unused; accepted so that every learner is built the same way).
        scale: multiplies the cosine similarities before the softmax (the paper's plain cosine
            is ``scale=1``; a larger scale lets the attention become sharp, 10 by default).
        learn_scale: make the scale a trained parameter (kept positive through its logarithm).

    Example:
        >>> import torch
        >>> head = MatchingNet(scale=1.0)
        >>> support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> logits = head.scores(support, torch.tensor([0, 1]), torch.tensor([[1.0, 0.0]]), 2)
        >>> [round(p, 4) for p in logits.exp()[0].tolist()]  # softmax([1, 0])
        [0.7311, 0.2689]
    """

    def __init__(
        self, *, dim: int | None = None, scale: float = 10.0, learn_scale: bool = False
    ) -> None:
        super().__init__()
        register_log_scalar(self, "log_scale", scale, learn=learn_scale)

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
        """Log-probabilities ``[Q, ways]``: ``log sum_{i: y_i = k} softmax_i(s * cos(q, x_i))``.

        Args:
            support: ``[S, D]`` support embeddings.
            support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
            query: ``[Q, D]`` query embeddings.
            ways: number of classes.
            counts: given when the caller has checked the labels (`check_support`);
                context: unused.
        """
        if counts is None:
            check_support(support_labels, ways)
        similarity = l2_normalize(query, dim=1) @ l2_normalize(support, dim=1).T  # [Q, S]
        scores = similarity * self.log_scale.exp()
        log_attention = scores.log_softmax(dim=1)  # [Q, S]
        # log of the attention mass on each class, computed in log space for stability
        member = F.one_hot(support_labels, ways).T.bool()  # [ways, S]
        masked = log_attention.unsqueeze(1).masked_fill(~member.unsqueeze(0), float("-inf"))
        return masked.logsumexp(dim=2)  # [Q, ways]

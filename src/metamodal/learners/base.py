"""What every few-shot head shares: the registry, the `Head` base class and episode helpers.

A *head* turns embedded support and query samples of one episode into query logits. It is a
plain `torch.nn.Module` with

- ``forward(support [S, D], support_labels long [S], query [Q, D], ways) -> logits [Q, ways]``;
- ``loss(logits [Q, ways], query_labels long [Q]) -> scalar`` (cross-entropy unless overridden);
- ``extra_loss(support: Embeddings, support_labels, query: Embeddings, query_labels) -> scalar``
  (zero unless overridden; sees fused ``z`` and the per-modality ``parts``);
- a class attribute ``training_mode``: ``"episodic"`` (meta-trained on episodes) or
  ``"supervised"`` (the encoders and fusion are pre-trained by ordinary classification over
  every meta-train class, and the head only adapts per episode on frozen features).

Heads are built by name from `learners` with ``learners.create(name, dim=D, **options)``, where
``D`` is the width of the embeddings they receive; heads that need no width ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.errors import DatasetError, InsufficientSamplesError
from metamodal.learners.embeddings import Embeddings
from metamodal.registry import Registry

learners: Registry[nn.Module] = Registry("learner")
"""Few-shot heads by name (``protonet``, ``matchingnet``, ``relationnet``, ``siamese``,
``nearest-centroid``, ``finetune``)."""

TRAINING_MODES = ("episodic", "supervised")


class Head(nn.Module):
    """Base class of few-shot heads: cross-entropy `loss`, zero `extra_loss`, episodic training.

    Subclasses implement `forward`. See the module docstring for the contract.

    Example:
        >>> class Nearest(Head):
        ...     def forward(self, support, support_labels, query, ways):
        ...         return -torch.cdist(query, class_means(support, support_labels, ways))
        >>> Nearest()(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2).argmax(1).tolist()
        [0, 1]
    """

    training_mode: ClassVar[str] = "episodic"

    def forward(  # pragma: no cover - abstract
        self, support: Tensor, support_labels: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from support ``[S, D]``, labels ``[S]``, query ``[Q, D]``."""
        raise NotImplementedError

    def loss(self, logits: Tensor, query_labels: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` ``[Q, ways]`` against ``query_labels`` long ``[Q]``."""
        return F.cross_entropy(logits, query_labels)

    def extra_loss(
        self,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        query_labels: Tensor,
    ) -> Tensor:
        """A loss term beyond `loss` computed from the embeddings themselves; zero here."""
        return support.z.new_zeros(())


def register_log_scalar(module: nn.Module, name: str, value: float, *, learn: bool) -> None:
    """Store the positive ``value`` as its logarithm in ``module.<name>`` (a 0-d tensor).

    With ``learn`` it is a trained `nn.Parameter` (the logarithm keeps the value positive),
    otherwise a buffer; either way it is saved in the state dict under ``name``.

    Raises:
        ValueError: ``value`` is not positive (named ``name`` without ``log_``).

    Example:
        >>> head = nn.Module()
        >>> register_log_scalar(head, "log_scale", 10.0, learn=True)
        >>> round(head.log_scale.exp().item(), 4), head.log_scale.requires_grad
        (10.0, True)
    """
    if value <= 0:
        raise ValueError(f"{name.removeprefix('log_')} must be > 0, got {value}")
    log_value = torch.tensor(math.log(value))
    if learn:
        setattr(module, name, nn.Parameter(log_value))
    else:
        module.register_buffer(name, log_value)


_CHECKED: ContextVar[tuple[Tensor, int, Tensor] | None] = ContextVar(
    "metamodal_checked_support", default=None
)
"""The support labels (the tensor object itself), ways and counts that `support_checked`
vouches for, while its block runs."""


def check_support(support_labels: Tensor, ways: int) -> Tensor:
    """Check that every class ``0..ways-1`` has a support sample; return the counts ``[ways]``.

    One device-to-host transfer (the ``ways`` counts) decides both checks. Inside a
    `support_checked` block for these very labels the counts are returned without checking
    again.

    Args:
        support_labels: long ``[S]``, each in ``0..ways-1``.
        ways: the number of classes of the episode.

    Raises:
        DatasetError: a label is outside ``0..ways-1``.
        InsufficientSamplesError: some class has no support sample (its logits would be
            undefined).

    Example:
        >>> check_support(torch.tensor([0, 0, 1]), 2).tolist()
        [2, 1]
    """
    checked = _CHECKED.get()
    if checked is not None and checked[0] is support_labels and checked[1] == ways:
        return checked[2]
    classes = torch.arange(ways, device=support_labels.device)
    counts = (support_labels.unsqueeze(1) == classes).sum(0)  # [ways]; ignores stray labels
    listed = counts.tolist()  # the one transfer
    if sum(listed) != support_labels.numel():
        raise DatasetError(
            f"support labels must lie in 0..{ways - 1}, got "
            f"{int(support_labels.min())}..{int(support_labels.max())}",
            fix="number the episode's classes 0..ways-1 in support_labels",
        )
    if 0 in listed:
        missing = [k for k, count in enumerate(listed) if count == 0]
        raise InsufficientSamplesError(
            f"class label(s) {missing} of a {ways}-way episode have no support sample",
            fix="give every class of the episode at least one support sample "
            "(check the support table or the episode file)",
        )
    return counts


@contextmanager
def support_checked(support_labels: Tensor, ways: int, counts: Tensor) -> Iterator[None]:
    """Within this block, `check_support` (and so `class_means`) trusts ``counts`` for these
    ``support_labels`` and checks nothing again.

    `FewShotModel.logits` checks an episode's support once and calls the head inside this
    block, so a head that checks again (every built-in head does, when called on its own)
    costs no second device-to-host transfer. Other label tensors are checked as usual.

    Args:
        support_labels: the labels already checked (recognised as this very tensor object).
        ways: the number of classes they were checked for.
        counts: long ``[ways]``, what `check_support` returned for them.

    Example:
        >>> labels = torch.tensor([0, 1, 1])
        >>> with support_checked(labels, 2, check_support(labels, 2)):
        ...     class_means(torch.tensor([[0.0], [2.0], [4.0]]), labels, 2).tolist()
        [[0.0], [3.0]]
    """
    token = _CHECKED.set((support_labels, ways, counts))
    try:
        yield
    finally:
        _CHECKED.reset(token)


def class_means(support: Tensor, support_labels: Tensor, ways: int) -> Tensor:
    """Mean support embedding of each class (the prototypes of Snell et al. 2017).

    Args:
        support: ``[S, D]`` support embeddings.
        support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
        ways: the number of classes.

    Returns:
        ``[ways, D]``: row ``k`` is the mean of the support rows labelled ``k``.

    Example:
        >>> class_means(torch.tensor([[0.0], [2.0], [5.0]]), torch.tensor([0, 0, 1]), 2).tolist()
        [[1.0], [5.0]]
    """
    counts = check_support(support_labels, ways)
    one_hot = F.one_hot(support_labels, ways).to(support.dtype)  # [S, ways]
    return (one_hot.T @ support) / counts.to(support.dtype).unsqueeze(1)


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

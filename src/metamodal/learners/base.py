"""What every learner shares: the registry, the `Learner` and `MetricLearner` base classes
and episode helpers.

A *learner* owns an episode: given the backbone (encoders + fusion, ``backbone(batch) ->
Embeddings``) and the episode's support and query batches it returns the query logits
(``forward``) and the training loss (``loss``). Metric learners (`MetricLearner`) compare
embeddings and let evaluation embed every sample once; optimisation-based learners
(`metamodal.learners.gradient`) adapt the backbone's weights per task.

Learners are built by name from `learners` with ``learners.create(name, dim=D, **options)``,
where ``D`` is the width of the fused embeddings they receive; learners that need no width
ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.data.batch import Episode, ModalityBatch, cat_batches
from metamodal.errors import DatasetError, InsufficientSamplesError
from metamodal.learners.embeddings import Embeddings
from metamodal.registry import Registry

learners: Registry[nn.Module] = Registry("learner")
"""Learners by name: metric (``protonet``, ``matchingnet``, ``relationnet``, ``siamese``),
baselines (``nearest-centroid``, ``finetune``) and optimisation-based (``maml``, ``fomaml``,
``anil``, ``metasgd``, ``maml++``, ``reptile``, ``lstm-optimizer``)."""

TRAINING_MODES = ("episodic", "supervised")


class Learner(nn.Module):
    """Base class of every learner: it owns an episode.

    A learner gets the *backbone* (the encoders and the fusion as one `nn.Module`,
    ``backbone(batch) -> Embeddings``, callable through `torch.func.functional_call`) and an
    episode, and returns the query logits and the loss. Subclasses implement `forward`; the
    default `loss` is the cross-entropy of those logits.

    Class attributes:
        training_mode: ``"episodic"`` (meta-trained on episodes) or ``"supervised"`` (the
            backbone is pre-trained by ordinary classification over every meta-train class,
            and the learner only adapts per episode).
        caches_embeddings: True when the learner sees a sample only through its embedding by
            the unadapted backbone, so that evaluation may embed every sample once and reuse
            the embeddings across episodes (metric learners). Learners that adapt the
            backbone's weights per task (the MAML family) set it False: evaluation then runs
            each episode through `forward`.
        batches_tasks: True when `loss` can run under `torch.func.vmap` over a stack of
            episodes inside `metamodal.batched_tasks.tasks_batched` (the MAML family; see
            `metamodal.learners.task_batching`), so that a meta-batch may be processed at once.

    Example:
        >>> class Nearest(Learner):
        ...     def forward(self, backbone, support, support_labels, query, ways):
        ...         s, q = backbone(support).z, backbone(query).z
        ...         return -torch.cdist(q, class_means(s, support_labels, ways))
        >>> from metamodal.data.batch import ModalityBatch
        >>> class Identity(nn.Module):
        ...     def forward(self, batch):
        ...         return Embeddings(batch["x"].values, batch["x"].present.unsqueeze(1))
        >>> batch = {"x": ModalityBatch(torch.eye(2), torch.ones(2, dtype=torch.bool))}
        >>> Nearest()(Identity(), batch, torch.tensor([0, 1]), batch, 2).argmax(1).tolist()
        [0, 1]
    """

    training_mode: ClassVar[str] = "episodic"
    caches_embeddings: ClassVar[bool] = True
    batches_tasks: ClassVar[bool] = False

    def forward(  # pragma: no cover - abstract
        self,
        backbone: nn.Module,
        support: Mapping[str, ModalityBatch],
        support_labels: Tensor,
        query: Mapping[str, ModalityBatch],
        ways: int,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` of an episode.

        Args:
            backbone: encoders + fusion, ``backbone(batch) -> Embeddings``.
            support: modality name -> `ModalityBatch` of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: modality name -> `ModalityBatch` of the ``Q`` query samples.
            ways: number of classes.
        """
        raise NotImplementedError

    def loss(self, backbone: nn.Module, episode: Episode) -> tuple[Tensor, Tensor]:
        """The episode's training loss and its query logits ``[Q, ways]``."""
        logits = self(backbone, episode.support, episode.support_labels, episode.query,
                      episode.ways)
        return F.cross_entropy(logits, episode.query_labels), logits

    def check_backbone(self, backbone: nn.Module) -> None:
        """Called once when a `FewShotModel` is assembled: raise `ConfigError` when this
        learner cannot work with ``backbone`` (its fusion or encoders), and create any state
        that depends on it (per-weight learning rates); nothing here."""

    def on_step(self, step: int, total: int) -> None:
        """Called by the trainer before training step ``step`` of ``total`` (schedules that
        depend on training progress); nothing here."""


class MetricLearner(Learner):
    """A learner that compares embeddings: ProtoNet and its kin, and the baselines.

    Subclasses implement `scores` (support and query *embeddings* of one view in, logits
    out); `logits` runs it on fused embeddings, or on each modality's embeddings under late
    fusion and mixes them with the fusion's ``combine``. Embeddings do not depend on the
    episode, so evaluation may compute them once per sample (``caches_embeddings``).

    Optional overrides: `query_loss` (cross-entropy of the query logits) and `extra_loss`
    (zero; sees fused ``z`` and the per-modality ``parts``).

    Example:
        >>> class Nearest(MetricLearner):
        ...     def scores(self, support, support_labels, query, ways):
        ...         return -torch.cdist(query, class_means(support, support_labels, ways))
        >>> Nearest().scores(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2).argmax(1)
        tensor([0, 1])
    """

    def scores(  # pragma: no cover - abstract
        self, support: Tensor, support_labels: Tensor, query: Tensor, ways: int
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from support ``[S, D]``, labels ``[S]``, query ``[Q, D]``."""
        raise NotImplementedError

    def query_loss(self, logits: Tensor, query_labels: Tensor) -> Tensor:
        """Cross-entropy of ``logits`` ``[Q, ways]`` against ``query_labels`` long ``[Q]``."""
        return F.cross_entropy(logits, query_labels)

    def extra_loss(
        self,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        query_labels: Tensor,
    ) -> Tensor:
        """A loss term beyond `query_loss` computed from the embeddings themselves; zero here."""
        return support.z.new_zeros(())

    def logits(
        self,
        backbone: nn.Module,
        support: Embeddings,
        support_labels: Tensor,
        query: Embeddings,
        ways: int,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from embedded support and query samples.

        A support sample with no modality at all carries no information (its fused embedding
        is a placeholder zero vector), so it is left out of its class, unless its class has no
        other support sample. With late fusion (``z`` ``[B, M, D]``) `scores` runs once per
        modality ``m`` on the support samples that have ``m``; ``valid[q, m]`` is True when
        query ``q`` has ``m`` and every class has a support sample with ``m``; the backbone's
        fusion ``combine`` mixes the per-modality logits ``[Q, M, ways]`` over the valid ones.

        Args:
            backbone: the backbone that made the embeddings (its fusion mixes late logits).
            support: embeddings of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: embeddings of the ``Q`` query samples.
            ways: number of classes.

        Raises:
            InsufficientSamplesError: some class has no support sample.
        """
        counts = check_support(support_labels, ways)  # the episode's only check
        if not support.late:
            support, support_labels, counts = _informative_support(support, support_labels,
                                                                   ways, counts)
            with support_checked(support_labels, ways, counts):
                return self.scores(support.z, support_labels, query.z, ways)
        return backbone.fusion.combine(*self.late_logits(support, support_labels, query, ways))

    def late_logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int
    ) -> tuple[Tensor, Tensor]:
        """Per-modality logits ``[Q, M, ways]`` of late-fusion embeddings (``z`` ``[B, M, D]``)
        and bool ``valid`` ``[Q, M]``: `scores` per modality ``m`` on the support samples that
        have ``m``; ``valid[q, m]`` is True when query ``q`` has ``m`` and every class has a
        support sample with ``m`` (other rows are zeros, never to be read)."""
        # per_class[k, m]: support samples of class k that have modality m
        has_modality = support.present.to(torch.long)
        per_class = has_modality.new_zeros(ways, has_modality.shape[1])
        per_class.index_add_(0, support_labels, has_modality)
        usable = (per_class > 0).all(0).tolist()  # one transfer for every modality
        per_modality: list[Tensor] = []
        valid: list[Tensor] = []
        for m, use in enumerate(usable):
            if use:
                rows = support.present[:, m].nonzero().squeeze(1)
                labels = support_labels[rows]
                with support_checked(labels, ways, per_class[:, m]):
                    per_modality.append(self.scores(support.z[rows, m], labels,
                                                    query.z[:, m], ways))
                valid.append(query.present[:, m])
            else:
                per_modality.append(query.z.new_zeros(len(query), ways))
                valid.append(torch.zeros_like(query.present[:, m]))
        return torch.stack(per_modality, 1), torch.stack(valid, 1)

    def forward(
        self,
        backbone: nn.Module,
        support: Mapping[str, ModalityBatch],
        support_labels: Tensor,
        query: Mapping[str, ModalityBatch],
        ways: int,
    ) -> Tensor:
        """Embed support and query (in one pass where they carry the same modalities) and
        return `logits` ``[Q, ways]``."""
        s, q = embed_pair(backbone, support, query)
        return self.logits(backbone, s, support_labels, q, ways)

    def loss(self, backbone: nn.Module, episode: Episode) -> tuple[Tensor, Tensor]:
        """`query_loss` of the query logits plus `extra_loss` of the embeddings, and the
        logits ``[Q, ways]``.

        With a late fusion whose ``unimodal_loss`` weight is above zero, each modality's own
        logits are also trained: that weight times the mean over modalities of their
        `query_loss` on the queries they are valid for (deep supervision of every branch, so
        that no modality leans on another).
        """
        support, query = embed_pair(backbone, episode.support, episode.query)
        weight = getattr(backbone.fusion, "unimodal_loss", 0.0) if support.late else 0.0
        if not weight:
            logits = self.logits(backbone, support, episode.support_labels, query,
                                 episode.ways)
            total = self.query_loss(logits, episode.query_labels)
        else:
            check_support(episode.support_labels, episode.ways)
            per_modality, valid = self.late_logits(support, episode.support_labels, query,
                                                   episode.ways)
            logits = backbone.fusion.combine(per_modality, valid)
            total = self.query_loss(logits, episode.query_labels)
            branches = [self.query_loss(per_modality[valid[:, m], m],
                                        episode.query_labels[valid[:, m]])
                        for m in range(per_modality.shape[1]) if bool(valid[:, m].any())]
            if branches:
                total = total + weight * torch.stack(branches).mean()
        total = total + self.extra_loss(support, episode.support_labels, query,
                                        episode.query_labels)
        return total, logits


def embed_pair(
    backbone: nn.Module,
    support: Mapping[str, ModalityBatch],
    query: Mapping[str, ModalityBatch],
) -> tuple[Embeddings, Embeddings]:
    """Embed an episode's support and query sets: in one pass when they carry the same
    modalities (so that normalisation layers see the whole episode); returns (support, query).

    Example:
        >>> from metamodal.data.batch import ModalityBatch
        >>> class Identity(nn.Module):
        ...     def forward(self, batch):
        ...         return Embeddings(batch["x"].values, batch["x"].present.unsqueeze(1))
        >>> b = {"x": ModalityBatch(torch.eye(3), torch.ones(3, dtype=torch.bool))}
        >>> [len(e) for e in embed_pair(Identity(), b, b)]
        [3, 3]
    """
    if set(support) != set(query):
        return backbone(support), backbone(query)
    n_support = len(next(iter(support.values())))
    both = backbone(cat_batches([support, query]))
    first, second = both.split([n_support, len(both) - n_support])
    return first, second


def _informative_support(
    support: Embeddings, labels: Tensor, ways: int, counts: Tensor
) -> tuple[Embeddings, Tensor, Tensor]:
    """Support without samples that have no modality, except for classes that have nothing
    else; returns (support, labels ``[S']``, per-class counts ``[ways]``)."""
    informative = support.present.any(1)
    if bool(informative.all()):
        return support, labels, counts
    per_class = torch.zeros(ways, dtype=torch.long, device=labels.device)
    per_class.index_add_(0, labels, informative.to(torch.long))
    keep = informative | (per_class[labels] == 0)
    rows = keep.nonzero().squeeze(1)
    kept = labels[rows]
    return support.index(rows), kept, torch.bincount(kept, minlength=ways)


def register_log_scalar(module: nn.Module, name: str, value: float, *, learn: bool) -> None:
    """Store the positive ``value`` as its logarithm in ``module.<name>`` (a 0-d tensor).

    With ``learn`` it is a trained `nn.Parameter` (the logarithm keeps the value positive),
    otherwise a buffer; either way it is saved in the state dict under ``name``.

    Raises:
        ValueError: ``value`` is not a finite number > 0 (named ``name`` without ``log_``);
            built through a registry it becomes a `ConfigError`.

    Example:
        >>> head = nn.Module()
        >>> register_log_scalar(head, "log_scale", 10.0, learn=True)
        >>> round(head.log_scale.exp().item(), 4), head.log_scale.requires_grad
        (10.0, True)
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < math.inf):
        raise ValueError(f"{name.removeprefix('log_')} must be a finite number > 0, "
                         f"got {value!r}")
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

    `MetricLearner.logits` checks an episode's support once and calls `scores` inside this
    block, so a learner that checks again (every built-in one does, when called on its own)
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

"""What every learner shares: the registry, the `Learner` and `MetricLearner` base classes,
what a learner can do (`LearnerCapabilities`), what an episode tells it beyond its samples
(`EpisodeContext`), and the episode helpers (`check_support`, `class_means`, `embed_pair`).

A *learner* owns an episode: given the backbone (encoders + fusion, ``backbone(batch) ->
Embeddings``) and the episode's support and query batches it returns the query logits
(``forward``) and the training loss (``loss``). Everything a learner needs comes in through
its arguments: the episode, an optional `EpisodeContext` (e.g. AM3's class semantics) and, for
the scores of a checked support set, its per-class counts. Metric learners (`MetricLearner`)
compare embeddings and let evaluation embed every sample once; optimisation-based learners
(`metamodal.learners.gradient`) adapt the backbone's weights per task.

Learners are built by name from `learners` with ``learners.create(name, dim=D, **options)``,
where ``D`` is the width of the fused embeddings they receive; learners that need no width
ignore it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.data.batch import Episode, ModalityBatch, cat_batches
from metamodal.errors import DatasetError, InsufficientSamplesError
from metamodal.learners.embeddings import Embeddings
from metamodal.registry import Registry

learners: Registry[nn.Module] = Registry("learner")
"""Learners by name: metric (``protonet``, ``matchingnet``, ``relationnet``, ``siamese``,
``am3``), baselines (``nearest-centroid``, ``finetune``) and optimisation-based (``maml``,
``fomaml``, ``anil``, ``metasgd``, ``maml++``, ``reptile``, ``lstm-optimizer``)."""

TRAINING_MODES = ("episodic", "supervised")


@dataclass(frozen=True)
class LearnerCapabilities:
    """What a learner can do: the one thing the trainer, evaluation and the API ask a learner
    (`Learner.capabilities`) or a model (`metamodal.model.FewShotModel.capabilities`).

    Attributes:
        training: ``"episodic"`` (meta-trained on episodes) or ``"supervised"`` (the backbone
            is pre-trained by ordinary classification over every meta-train class, and the
            learner only adapts per episode).
        embeds_once: the learner sees a sample only through its embedding by the unadapted
            backbone, so evaluation may embed every sample once and run each episode's
            ``logits`` on those embeddings (metric learners). False for learners that adapt
            the backbone's weights per task (the MAML family): each episode then runs through
            ``forward`` (``adapt_predict``).
        batches_tasks: ``loss`` can run under `torch.func.vmap` over a stack of episodes
            (`metamodal.learners.task_batching`), so a meta-batch may be processed at once.
            For a model, also every encoder can.
        uses_class_semantics: the learner mixes each class's description embedding into its
            prediction (AM3): it needs an `EpisodeContext` with ``class_semantics``.

    Example:
        >>> LearnerCapabilities(embeds_once=True).training
        'episodic'
    """

    training: Literal["episodic", "supervised"] = "episodic"
    embeds_once: bool = False
    batches_tasks: bool = False
    uses_class_semantics: bool = False


@dataclass(frozen=True, eq=False)
class EpisodeContext:
    """What an episode tells a learner beyond its samples and labels, passed explicitly to
    ``forward``, ``loss``, ``logits`` and ``scores``.

    A learner whose capabilities say ``uses_class_semantics`` (AM3) refuses to run without a
    context; ``EpisodeContext()`` says explicitly that there are no semantics (AM3 is then
    ProtoNet). Other learners ignore the context.

    Args:
        class_semantics: ``[ways, D]``: row ``k`` is the mapped description of episode class
            ``k`` (see `metamodal.mapping.zeroshot`), or None.

    Example:
        >>> EpisodeContext(class_semantics=torch.zeros(5, 8)).class_semantics.shape
        torch.Size([5, 8])
    """

    class_semantics: Tensor | None = None



class Learner(nn.Module):
    """Base class of every learner: it owns an episode.

    A learner gets the *backbone* (the encoders and the fusion as one `nn.Module`,
    ``backbone(batch) -> Embeddings``, callable through `torch.func.functional_call`) and an
    episode, and returns the query logits and the loss. Subclasses implement `forward`; the
    default `loss` is the cross-entropy of those logits. `capabilities` says what the learner
    can do (how it trains, whether evaluation may embed each sample once, ...).

    Example:
        >>> class Nearest(Learner):
        ...     def forward(self, backbone, support, support_labels, query, ways, context=None):
        ...         s, q = backbone(support).z, backbone(query).z
        ...         return -torch.cdist(q, class_means(s, support_labels, ways))
        >>> from metamodal.data.batch import ModalityBatch
        >>> class Identity(nn.Module):
        ...     def forward(self, batch):
        ...         return Embeddings(batch["x"].values, batch["x"].present.unsqueeze(1))
        >>> batch = {"x": ModalityBatch(torch.eye(2), torch.ones(2, dtype=torch.bool))}
        >>> Nearest()(Identity(), batch, torch.tensor([0, 1]), batch, 2).argmax(1).tolist()
        [0, 1]
        >>> Nearest().capabilities().embeds_once
        False
    """

    def capabilities(self) -> LearnerCapabilities:
        """What this learner can do; here: trained on episodes, each episode run through
        `forward` (no `logits` on precomputed embeddings), one episode at a time."""
        return LearnerCapabilities()

    def forward(  # pragma: no cover - abstract
        self,
        backbone: nn.Module,
        support: Mapping[str, ModalityBatch],
        support_labels: Tensor,
        query: Mapping[str, ModalityBatch],
        ways: int,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` of an episode.

        Args:
            backbone: encoders + fusion, ``backbone(batch) -> Embeddings``.
            support: modality name -> `ModalityBatch` of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: modality name -> `ModalityBatch` of the ``Q`` query samples.
            ways: number of classes.
            context: what the episode tells the learner beyond its samples (see
                `EpisodeContext`); None when the caller has nothing to say.
        """
        raise NotImplementedError

    def loss(self, backbone: nn.Module, episode: Episode,
             context: EpisodeContext | None = None) -> tuple[Tensor, Tensor]:
        """The episode's training loss and its query logits ``[Q, ways]`` (``context`` as in
        `forward`)."""
        logits = self(backbone, episode.support, episode.support_labels, episode.query,
                      episode.ways, context)
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
    episode, so evaluation may compute them once per sample (``embeds_once`` in
    `capabilities`).

    Optional overrides: `query_loss` (cross-entropy of the query logits) and `extra_loss`
    (zero; sees fused ``z`` and the per-modality ``parts``).

    Example:
        >>> class Nearest(MetricLearner):
        ...     def scores(self, support, support_labels, query, ways, *, counts=None,
        ...                context=None):
        ...         means = class_means(support, support_labels, ways, counts=counts)
        ...         return -torch.cdist(query, means)
        >>> Nearest().scores(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), 2).argmax(1)
        tensor([0, 1])
        >>> Nearest().capabilities().embeds_once
        True
    """

    def capabilities(self) -> LearnerCapabilities:
        """Trained on episodes; evaluation may embed each sample once (``embeds_once``)."""
        return LearnerCapabilities(embeds_once=True)

    def scores(  # pragma: no cover - abstract
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        ways: int,
        *,
        counts: Tensor | None = None,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from support ``[S, D]``, labels ``[S]``, query ``[Q, D]``.

        Args:
            counts: long ``[ways]``: the support samples of each class, when the caller has
                already checked ``support_labels`` with `check_support` (what it returned);
                None: the learner checks them itself.
            context: see `EpisodeContext`.
        """
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
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` from embedded support and query samples.

        A support sample with no modality at all carries no information (its fused embedding
        is a placeholder zero vector), so it is left out of its class, unless its class has no
        other support sample. With late fusion (``z`` ``[B, M, D]``) `scores` runs once per
        modality ``m`` on the support samples that have ``m``; ``valid[q, m]`` is True when
        query ``q`` has ``m`` and every class has a support sample with ``m``; the backbone's
        fusion ``combine`` mixes the per-modality logits ``[Q, M, ways]`` over the valid ones.
        The support is checked once here (`check_support`); `scores` gets the counts.

        Args:
            backbone: the backbone that made the embeddings (its fusion mixes late logits).
            support: embeddings of the ``S`` support samples.
            support_labels: long ``[S]`` in ``0..ways-1``.
            query: embeddings of the ``Q`` query samples.
            ways: number of classes.
            context: see `EpisodeContext`; passed on to `scores`.

        Raises:
            InsufficientSamplesError: some class has no support sample.
        """
        counts = check_support(support_labels, ways)  # the episode's only check
        if not support.late:
            support, support_labels, counts = informative_support(support, support_labels,
                                                                   ways, counts)
            return self.scores(support.z, support_labels, query.z, ways, counts=counts,
                               context=context)
        return backbone.fusion.combine(*self.late_logits(support, support_labels, query, ways,
                                                         context))

    def logits_many(
        self, backbone: nn.Module, episodes: Sequence[tuple[Embeddings, Tensor, Embeddings]],
        ways: int,
    ) -> list[Tensor]:
        """`logits` of several ``ways``-way episodes (support embeddings, support labels
        ``[S]``, query embeddings), one ``[Q, ways]`` tensor each: here one after the other;
        a learner whose per-episode work vectorises across episodes overrides it."""
        return [self.logits(backbone, s, labels, q, ways) for s, labels, q in episodes]

    def late_logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int,
        context: EpisodeContext | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Per-modality logits ``[Q, M, ways]`` of late-fusion embeddings (``z`` ``[B, M, D]``)
        and bool ``valid`` ``[Q, M]``: `scores` per modality ``m`` on the support samples that
        have ``m``; ``valid[q, m]`` is True when query ``q`` has ``m`` and every class has a
        support sample with ``m`` (other rows are zeros, never to be read). The caller has
        checked ``support_labels`` (`check_support`)."""
        per_class = class_modality_counts(support.present, support_labels, ways)
        usable = (per_class > 0).all(0).tolist()  # one transfer for every modality
        per_modality: list[Tensor] = []
        valid: list[Tensor] = []
        for m, use in enumerate(usable):
            if use:
                rows = support.present[:, m].nonzero().squeeze(1)
                per_modality.append(self.scores(support.z[rows, m], support_labels[rows],
                                                query.z[:, m], ways, counts=per_class[:, m],
                                                context=context))
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
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Embed support and query (in one pass where they carry the same modalities) and
        return `logits` ``[Q, ways]``."""
        s, q = embed_pair(backbone, support, query)
        return self.logits(backbone, s, support_labels, q, ways, context)

    def loss(self, backbone: nn.Module, episode: Episode,
             context: EpisodeContext | None = None) -> tuple[Tensor, Tensor]:
        """`query_loss` of the query logits plus `extra_loss` of the embeddings, and the
        logits ``[Q, ways]`` (``context`` as in `logits`).

        With a late fusion whose ``unimodal_loss`` weight is above zero, each modality's own
        logits are also trained: that weight times the mean over modalities of their
        `query_loss` on the queries they are valid for (deep supervision of every branch, so
        that no modality leans on another). With its ``distill`` weight above zero, that weight
        times the mean over modalities of the KL divergence from the fused posterior (detached)
        to the modality's own, per valid query, is added too (cross-modal distillation).
        """
        support, query = embed_pair(backbone, episode.support, episode.query)
        return self.embedded_loss(backbone, support, query, episode, context)

    def embedded_loss(self, backbone: nn.Module, support: Embeddings, query: Embeddings,
                      episode: Episode, context: EpisodeContext | None = None
                      ) -> tuple[Tensor, Tensor]:
        """`loss` of ``episode`` whose support and query sets are already embedded
        (``support``, ``query``, e.g. by `embed_pair`): the loss and the logits ``[Q, ways]``.
        """
        late = backbone.fusion if support.late else None
        own, distill = getattr(late, "unimodal_loss", 0.0), getattr(late, "distill", 0.0)
        if not (own or distill):
            logits = self.logits(backbone, support, episode.support_labels, query,
                                 episode.ways, context)
            total = self.query_loss(logits, episode.query_labels)
        else:
            check_support(episode.support_labels, episode.ways)
            per_modality, valid = self.late_logits(support, episode.support_labels, query,
                                                   episode.ways, context)
            logits = backbone.fusion.combine(per_modality, valid)
            total = self.query_loss(logits, episode.query_labels)
            target = logits.detach().log_softmax(-1)  # [Q, ways]
            branches = []
            for m in range(per_modality.shape[1]):
                rows = valid[:, m]
                if not bool(rows.any()):
                    continue
                branch = per_modality[rows, m]
                term = own * self.query_loss(branch, episode.query_labels[rows]) if own else 0.0
                if distill:
                    term = term + distill * F.kl_div(branch.log_softmax(-1), target[rows],
                                                     reduction="batchmean", log_target=True)
                branches.append(term)
            if branches:
                total = total + torch.stack(branches).mean()
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


def class_modality_counts(present: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Long ``[ways, M]``: how many support samples of each class carry each modality
    (``present`` bool ``[S, M]``, ``labels`` long ``[S]``). Late fusion compares a modality
    only where every class's count is above zero (`MetricLearner.late_logits`).

    Example:
        >>> present = torch.tensor([[True, False], [True, True]])
        >>> class_modality_counts(present, torch.tensor([0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    has = present.to(torch.long)
    return has.new_zeros(ways, has.shape[1]).index_add_(0, labels, has)


def informative_support(
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


def check_support(support_labels: Tensor, ways: int) -> Tensor:
    """Check that every class ``0..ways-1`` has a support sample; return the counts ``[ways]``.

    One device-to-host transfer (the ``ways`` counts) decides both checks. A caller that has
    checked the labels passes the counts on (``counts=`` of `class_means` and of
    `MetricLearner.scores`) instead of checking again.

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


def class_means(support: Tensor, support_labels: Tensor, ways: int, *,
                counts: Tensor | None = None) -> Tensor:
    """Mean support embedding of each class (the prototypes of Snell et al. 2017).

    Args:
        support: ``[S, D]`` support embeddings.
        support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
        ways: the number of classes.
        counts: long ``[ways]``, what `check_support` returned for these labels when the
            caller has checked them; None: checked here.

    Returns:
        ``[ways, D]``: row ``k`` is the mean of the support rows labelled ``k``.

    Raises:
        DatasetError, InsufficientSamplesError: as `check_support` (without ``counts``).

    Example:
        >>> class_means(torch.tensor([[0.0], [2.0], [5.0]]), torch.tensor([0, 0, 1]), 2).tolist()
        [[1.0], [5.0]]
        >>> labels = torch.tensor([0, 1, 1])
        >>> class_means(torch.tensor([[0.0], [2.0], [4.0]]), labels, 2,
        ...             counts=check_support(labels, 2)).tolist()
        [[0.0], [3.0]]
    """
    if counts is None:
        counts = check_support(support_labels, ways)
    one_hot = F.one_hot(support_labels, ways).to(support.dtype)  # [S, ways]
    return (one_hot.T @ support) / counts.to(support.dtype).unsqueeze(1)

"""Baselines on frozen, supervised pre-trained features: nearest centroid and fine-tuning.

These heads train ``"supervised"`` (their `LearnerCapabilities`): the encoders and fusion are
first trained with ordinary classification over every meta-train class (through
`SupervisedClassifier`), then frozen; the head adapts to each episode from the support features
alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.learners.base import (
    EpisodeContext,
    LearnerCapabilities,
    MetricLearner,
    check_support,
    class_means,
    learners,
)
from metamodal.learners.embeddings import Embeddings
from metamodal.ops import euclidean_distances, l2_normalize


class SupervisedClassifier(nn.Module):
    """The classification layer of supervised pre-training: linear, or cosine (Baseline++).

    Chen, Liu, Kira, Wang and Huang, 2019, "A Closer Look at Few-shot Classification": the
    *Baseline* uses a linear layer; *Baseline++* scores ``scale * cos(x, w_c)`` against one
    weight vector per class, which reduces intra-class variation of the features.

    Args:
        in_dim: width of the features ``[B, in_dim]``.
        num_classes: number of meta-train classes.
        cosine: use the cosine classifier (Baseline++) instead of a linear layer.
        scale: the cosine classifier's scale (temperature inverse).

    Example:
        >>> clf = SupervisedClassifier(8, 3, cosine=True)
        >>> clf(torch.randn(4, 8)).shape
        torch.Size([4, 3])
        >>> bool(clf(torch.randn(4, 8)).abs().max() <= 10.0 + 1e-4)
        True
    """

    def __init__(
        self, in_dim: int, num_classes: int, cosine: bool = False, scale: float = 10.0
    ) -> None:
        super().__init__()
        self.cosine = cosine
        self.scale = scale
        if cosine:
            self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
            nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        else:
            self.linear = nn.Linear(in_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Class logits ``[B, num_classes]`` of ``features`` ``[B, in_dim]``."""
        if self.cosine:
            return self.scale * l2_normalize(features, dim=1) @ l2_normalize(self.weight, dim=1).T
        return self.linear(features)


@learners.register("nearest-centroid")
class NearestCentroid(MetricLearner):
    """SimpleShot: centre the features by the mean pre-training feature, L2-normalise them, and
    give each query the class whose mean normalised support feature is nearest (Euclidean).

    Wang, Chao, Weinberger and van der Maaten, 2019, "SimpleShot: Revisiting Nearest-Neighbor
    Classification for Few-Shot Learning" (the CL2N variant).

    Args:
        dim: feature width ``D``.

    The mean is the buffer ``feature_mean`` ``[D]`` (saved with the model), zero until
    `set_feature_mean` is called after pre-training (then the head is plain L2N).

    Example:
        >>> head = NearestCentroid(dim=2)
        >>> head.set_feature_mean(torch.tensor([1.0, 1.0]))
        >>> support = torch.tensor([[2.0, 1.0], [1.0, 3.0]])  # centred: [1, 0], [0, 2] -> [0, 1]
        >>> logits = head.scores(support, torch.tensor([0, 1]), torch.tensor([[5.0, 1.0]]), 2)
        >>> [round(v, 4) for v in logits[0].tolist()]  # query -> [1, 0]: distances 0 and sqrt 2
        [-0.0, -1.4142]
    """

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.feature_mean: Tensor
        self.register_buffer("feature_mean", torch.zeros(dim))

    def capabilities(self) -> LearnerCapabilities:
        """Supervised pre-training, then embedded once for evaluation."""
        return LearnerCapabilities(training="supervised", embeds_once=True)

    def set_feature_mean(self, mean: Tensor) -> None:
        """Store the mean feature ``[D]`` of the pre-training data (subtracted before norming)."""
        if mean.shape != self.feature_mean.shape:
            raise ValueError(
                f"feature mean must have shape {tuple(self.feature_mean.shape)}, "
                f"got {tuple(mean.shape)}"
            )
        self.feature_mean.copy_(mean.detach())

    def normalize(self, features: Tensor) -> Tensor:
        """Centred and L2-normalised features, ``[B, D]``."""
        return l2_normalize(features - self.feature_mean, dim=1)

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
        """Logits ``[Q, ways]``: minus the Euclidean distance to each class's mean.

        Args:
            support: ``[S, D]`` support features.
            support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
            query: ``[Q, D]`` query features.
            ways: number of classes.
            counts: long ``[ways]`` from `check_support`, when the caller has checked the
                labels; context: unused.
        """
        centroids = class_means(self.normalize(support), support_labels, ways, counts=counts)
        return -euclidean_distances(self.normalize(query), centroids)


def _adam(objective: Callable[[], Tensor], params: list[Tensor], *, lr: float, steps: int,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """``steps`` steps of Adam (Kingma & Ba 2015) on ``objective()`` over ``params``, in place:
    the arithmetic of ``torch.optim.Adam(params, lr)`` (its single-tensor form, the one it
    uses for these small CPU tensors) without an optimiser object, whose bookkeeping costs more
    than the step itself on a ``[ways, D]`` classifier fitted per episode.

    Example:
        >>> w = torch.tensor([1.0], requires_grad=True)
        >>> _adam(lambda: (w ** 2).sum(), [w], lr=0.1, steps=1)
        >>> round(w.item(), 4)  # the first step moves by lr
        0.9
    """
    beta1, beta2 = betas
    first = [torch.zeros_like(p) for p in params]
    second = [torch.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        grads = torch.autograd.grad(objective(), params)
        step_size = lr / (1 - beta1 ** step)
        correction = math.sqrt(1 - beta2 ** step)
        with torch.no_grad():
            for p, g, m, v in zip(params, grads, first, second, strict=True):
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                p.addcdiv_(m, (v.sqrt() / correction).add_(eps), value=-step_size)


@learners.register("finetune")
class FineTune(MetricLearner):
    """Fine-tuning baseline: a fresh linear (or cosine) classifier trained on the support
    features of each episode, with the features frozen.

    Chen, Liu, Kira, Wang and Huang, 2019, "A Closer Look at Few-shot Classification" (Baseline
    and, with ``cosine=True``, Baseline++). The classifier is trained full-batch (vectorised over
    the whole support set) for ``steps`` steps under `torch.enable_grad`, so it also adapts
    inside ``torch.no_grad()`` or ``torch.inference_mode()`` evaluation. Its initial weights come
    from a generator seeded with ``seed``: the same support set always gives the same
    classifier. Gradients do not reach the support features; they do reach the query features
    through the (fixed) trained classifier. Half-precision features are fitted in float32 (the
    optimisers' ``eps`` and small second moments vanish in float16) and the classifier is
    returned in the features' dtype.

    Args:
        dim: feature width (unused; the classifier is sized from the support features).
        steps: optimisation steps per episode.
        lr: learning rate.
        optimizer: ``"adam"``, ``"sgd"`` (momentum 0.9, as in the paper) or ``"lbfgs"``.
        weight_decay: L2 penalty on the classifier's weights.
        cosine: cosine classifier ``scale * cos(x, w_c)`` (Baseline++) instead of linear.
        scale: the cosine classifier's scale.
        normalize: L2-normalise the features first.
        seed: seeds the initial weights.

    Example:
        >>> head = FineTune(steps=50)
        >>> support = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> with torch.no_grad():
        ...     head.scores(support, torch.tensor([0, 1]), support, 2).argmax(1).tolist()
        [0, 1]
    """

    def __init__(
        self,
        *,
        dim: int | None = None,
        steps: int = 100,
        lr: float = 0.05,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        cosine: bool = False,
        scale: float = 10.0,
        normalize: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if optimizer not in ("adam", "sgd", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam', 'sgd' or 'lbfgs', got {optimizer!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not (lr > 0 and scale > 0 and weight_decay >= 0):
            raise ValueError(f"lr and scale must be > 0 and weight_decay >= 0, got {lr}, {scale}, "
                             f"{weight_decay}")
        self.steps = steps
        self.lr = lr
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.cosine = cosine
        self.scale = scale
        self.normalize = normalize
        self.seed = seed

    def capabilities(self) -> LearnerCapabilities:
        """Supervised pre-training, then embedded once for evaluation."""
        return LearnerCapabilities(training="supervised", embeds_once=True)

    def _features(self, x: Tensor) -> Tensor:
        return l2_normalize(x, dim=-1) if self.normalize else x

    def _classify(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Logits ``[..., N, ways]`` of features ``[..., N, D]`` (``...``: episodes, if any)."""
        if self.cosine:
            return self.scale * l2_normalize(x, dim=-1) @ l2_normalize(weight, dim=-1).mT
        return x @ weight.mT + bias.unsqueeze(-2)

    def fit(self, support: Tensor, support_labels: Tensor, ways: int, *,
            counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Train a classifier on ``support`` ``[S, D]`` / ``support_labels`` ``[S]``; returns its
        (detached) ``weight [ways, D]`` and ``bias [ways]``, in the dtype of ``support``.
        With a leading episode axis (``[E, S, D]`` / ``[E, S]``) it fits one classifier per
        episode at once (``[E, ways, D]``, ``[E, ways]``): the objective is the sum of the
        episodes', whose classifiers share no weight, and Adam and SGD act element by
        element, so each episode's classifier is the one it would get alone (not with
        L-BFGS, whose line search would couple them: a `ValueError`).
        The labels are checked (`check_support`) unless their ``counts`` are given."""
        batched = support.dim() == 3
        if batched and self.optimizer == "lbfgs":
            raise ValueError("L-BFGS fits one episode at a time (its line search would couple "
                             "the episodes)")
        if counts is None:
            for labels in support_labels.reshape(-1, support_labels.shape[-1]):
                check_support(labels, ways)
        work = torch.promote_types(support.dtype, torch.float32)  # never fit in half precision
        with torch.inference_mode(False), torch.enable_grad():
            x = self._features(support.detach().to(work).clone())
            y = support_labels.clone()
            generator = torch.Generator().manual_seed(self.seed)
            init = torch.randn(ways, x.shape[-1], generator=generator, dtype=x.dtype) * 0.01
            weight = init.to(x.device).expand(*x.shape[:-2], ways, -1).clone().requires_grad_()
            bias = torch.zeros(*x.shape[:-2], ways, dtype=x.dtype, device=x.device,
                               requires_grad=True)
            params = [weight] if self.cosine else [weight, bias]

            def objective() -> Tensor:
                logits = self._classify(x, weight, bias)
                loss = (F.cross_entropy(logits.mT, y, reduction="none").mean(-1).sum()
                        if batched else F.cross_entropy(logits, y))
                if self.weight_decay:
                    loss = loss + 0.5 * self.weight_decay * weight.pow(2).sum()
                return loss

            if self.optimizer == "lbfgs":
                lbfgs = torch.optim.LBFGS(
                    params, lr=self.lr, max_iter=self.steps, line_search_fn="strong_wolfe"
                )

                def closure() -> Tensor:
                    lbfgs.zero_grad()
                    loss = objective()
                    loss.backward()
                    return loss

                lbfgs.step(closure)
            elif self.optimizer == "adam":
                _adam(objective, params, lr=self.lr, steps=self.steps)
            else:
                opt = torch.optim.SGD(params, lr=self.lr, momentum=0.9)
                for _ in range(self.steps):
                    opt.zero_grad()
                    objective().backward()
                    opt.step()
        return weight.detach().to(support.dtype), bias.detach().to(support.dtype)

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
        """Logits ``[Q, ways]`` of the classifier fitted to this episode's support set.

        Args:
            support: ``[S, D]`` support features.
            support_labels: long ``[S]`` in ``0..ways-1``; every class must occur.
            query: ``[Q, D]`` query features.
            ways: number of classes.
            counts: given when the caller has checked the labels (`check_support`);
                context: unused.
        """
        weight, bias = self.fit(support, support_labels, ways, counts=counts)
        return self._classify(self._features(query), weight, bias)

    def logits_many(
        self, backbone: nn.Module, episodes: Sequence[tuple[Embeddings, Tensor, Embeddings]],
        ways: int,
    ) -> list[Tensor]:
        """`logits` of several episodes, their classifiers fitted at once (`fit` with an
        episode axis: the same classifiers as one by one). Episodes of different sizes, late
        fusion, supports with a sample that has no modality, and L-BFGS go one by one."""
        if (self.optimizer == "lbfgs" or len(episodes) < 2
                or len({(len(s), len(q)) for s, _, q in episodes}) > 1
                or any(s.late or not bool(s.present.any(1).all()) for s, _, _ in episodes)):
            return super().logits_many(backbone, episodes, ways)
        support = torch.stack([s.z for s, _, _ in episodes])  # [E, S, D]
        labels = torch.stack([labels for _, labels, _ in episodes])  # [E, S]
        query = torch.stack([q.z for _, _, q in episodes])  # [E, Q, D]
        weight, bias = self.fit(support, labels, ways)
        return list(self._classify(self._features(query), weight, bias).unbind(0))

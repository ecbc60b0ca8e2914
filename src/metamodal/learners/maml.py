"""The MAML family: MAML, first-order MAML, ANIL, Meta-SGD and MAML++, each a
`GradientLearner` that changes what adapts, the inner update or the loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode
from metamodal.learners.base import EpisodeContext, learners
from metamodal.learners.gradient import GradientLearner, fraction
from metamodal.learners.inner_loop import Params


def _key(name: str) -> str:
    """A parameter name usable as a `nn.ParameterDict` key (no dots)."""
    return name.replace(".", "__")


@learners.register("maml")
class MAML(GradientLearner):
    """Model-Agnostic Meta-Learning with second-order meta-gradients.

    Finn, Abbeel and Levine, 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
    Networks". See `GradientLearner` for the options.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="maml",
        ...                            learner_options={"inner_steps": 2})
        >>> from metamodal.data.batch import ModalityBatch
        >>> batch = {"m": ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))}
        >>> model.adapt_predict(batch, torch.tensor([0, 1, 0, 1]), batch, 2).shape
        torch.Size([4, 2])
    """


@learners.register("fomaml")
class FOMAML(GradientLearner):
    """First-order MAML: the meta-gradient is the query gradient at the adapted weights.

    Finn, Abbeel and Levine, 2017 (section 5.2). Same options as `GradientLearner`, with
    ``first_order`` True.
    """

    def __init__(self, *, dim: int, **options: Any) -> None:
        options.setdefault("first_order", True)
        super().__init__(dim=dim, **options)


@learners.register("anil")
class ANIL(GradientLearner):
    """Almost No Inner Loop: only the output layer adapts per task; the backbone is
    meta-learned through it (its features are computed once per task).

    Raghu, Raghu, Bengio and Vinyals, 2020, "Rapid Learning or Feature Reuse? Towards
    Understanding the Effectiveness of MAML". Same options as `GradientLearner`, with
    ``adapt`` ``"head"``.
    """

    def __init__(self, *, dim: int, **options: Any) -> None:
        options.setdefault("adapt", "head")
        super().__init__(dim=dim, **options)


@learners.register("metasgd")
class MetaSGD(GradientLearner):
    """Meta-SGD: every adapted weight has its own meta-learned inner learning rate (a tensor of
    the weight's shape; one row shared by the classes of the output layer).

    Li, Zhou, Chen and Li, 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning".
    ``inner_lr`` initialises the rates; at evaluation the learned rates are used (scaled by
    ``eval_lr / inner_lr`` when ``eval_lr`` is given).
    """

    def __init__(self, *, dim: int, **options: Any) -> None:
        super().__init__(dim=dim, **options)
        self.rates = nn.ParameterDict({
            "head__weight": nn.Parameter(torch.full((dim,), self.inner_lr)),
            "head__bias": nn.Parameter(torch.tensor(self.inner_lr)),
        })

    def check_backbone(self, backbone: nn.Module) -> None:
        """As `GradientLearner.check_backbone`, then one learning-rate tensor per adapted
        weight."""
        super().check_backbone(backbone)
        params = dict(backbone.named_parameters())
        for name in self.adapted:
            self.rates[_key(name)] = nn.Parameter(torch.full_like(params[name].detach(),
                                                                  self.inner_lr))

    def update(self, step: int, params: Params, grads: Params) -> Params:
        """``p - rate_p * g`` with the learned per-weight rates."""
        scale = 1.0 if self.training else self.eval_lr / self.inner_lr
        return {n: p - scale * self.rates[_key(n)] * grads[n] for n, p in params.items()}


@learners.register("maml++")
class MAMLPlusPlus(GradientLearner):
    """MAML++: learned per-step, per-layer learning rates (LSLR), per-step BatchNorm weights
    and biases (BNWB), the multi-step loss (MSL) and derivative-order annealing (DA).

    Antoniou, Edwards and Storkey, 2019, "How to Train Your MAML".

    Args:
        msl_until: fraction of training over which the multi-step loss's weights move from
            uniform over the steps to the last step only (0 turns MSL off).
        first_order_until: fraction of training run with first-order meta-gradients before
            switching to second order (DA).
        **options: as `GradientLearner`.

    BatchNorm normalises with each batch's statistics at every step (see the module
    docstring); per-step *running* statistics (BNRS) are not kept. Training progress comes
    from the trainer through `on_step`.
    """

    def __init__(self, *, dim: int, msl_until: float = 0.3, first_order_until: float = 0.25,
                 **options: Any) -> None:
        super().__init__(dim=dim, **options)
        self.msl_until = fraction("msl_until", msl_until)
        self.first_order_until = fraction("first_order_until", first_order_until)
        self.progress = 1.0
        self.rates = nn.ParameterDict()
        self.norm_weights = nn.ParameterDict()

    def check_backbone(self, backbone: nn.Module) -> None:
        """As `GradientLearner.check_backbone`, then per-step rates for each adapted weight
        and per-step copies of every BatchNorm weight and bias (taken out of the inner
        loop)."""
        super().check_backbone(backbone)
        params = dict(backbone.named_parameters())
        self.adapted = [n for n in self.adapted if n not in self._norm_params]
        steps = max(self.inner_steps, self.eval_steps)
        for name in [*self.adapted, "head.weight", "head.bias"]:
            self.rates[_key(name)] = nn.Parameter(torch.full((steps,), self.inner_lr))
        for name in sorted(self._norm_params):
            self.norm_weights[_key(name)] = nn.Parameter(
                params[name].detach().clone().unsqueeze(0).repeat(steps + 1,
                                                                  *[1] * params[name].dim()))

    def on_step(self, step: int, total: int) -> None:
        """Record training progress (``step / total``) for MSL and DA."""
        self.progress = step / max(total, 1)

    def second_order(self) -> bool:
        """First order until ``first_order_until`` of training, then second order."""
        return not self.first_order and self.progress >= self.first_order_until

    def step_params(self, step: int) -> Params:
        """The BatchNorm weights and biases of inner step ``step``."""
        return {name: self.norm_weights[_key(name)][min(step, len(self.norm_weights[
            _key(name)]) - 1)] for name in self._norm_params}

    def update(self, step: int, params: Params, grads: Params) -> Params:
        """``p - rate[layer, step] * g`` with the learned per-step, per-layer rates."""
        scale = 1.0 if self.training else self.eval_lr / self.inner_lr
        return {n: p - scale * self.rates[_key(n)][step] * grads[n] for n, p in params.items()}

    def loss_weights(self, steps: int) -> Tensor:
        """MSL weights of the query losses after each of ``steps`` steps: uniform at the
        start of training, annealed to the last step alone by ``msl_until``."""
        if self.msl_until <= 0 or self.progress >= self.msl_until or steps == 1:
            weights = torch.zeros(steps)
            weights[-1] = 1.0
            return weights
        decay = self.progress / self.msl_until  # 0 -> 1
        weights = torch.full((steps,), (1.0 - decay) / steps)
        weights[-1] += decay
        return weights

    def loss(self, backbone: nn.Module, episode: Episode,
             context: EpisodeContext | None = None) -> tuple[Tensor, Tensor]:
        """The multi-step loss: query cross-entropy after every inner step, weighted by
        `loss_weights`; and the final query logits (``context`` is not used)."""
        outputs = self.adapt_and_predict(backbone, episode.support, episode.support_labels,
                                         episode.query, episode.ways, every_step=True)
        weights = self.loss_weights(len(outputs))
        total = sum(float(w) * torch.nn.functional.cross_entropy(o, episode.query_labels)
                    for w, o in zip(weights, outputs, strict=True) if w > 0)
        return total, outputs[-1]

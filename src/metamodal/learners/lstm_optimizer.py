"""A learned inner-loop optimiser: a coordinate-wise LSTM proposes each update (Andrychowicz
et al., 2016; Ravi and Larochelle, 2017)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.errors import ConfigError
from metamodal.learners.base import learners
from metamodal.learners.gradient import GradientLearner, positive_float, positive_int
from metamodal.learners.inner_loop import Params


def _preprocess_gradients(grads: Tensor, p: float) -> Tensor:
    """Andrychowicz et al.'s gradient preprocessing, ``[N]`` -> ``[N, 2]``: ``(log|g| / p,
    sign g)`` where ``|g| >= e^-p``, else ``(-1, e^p g)``."""
    magnitude = grads.abs()
    big = magnitude >= math.exp(-p)
    first = torch.where(big, magnitude.clamp_min(math.exp(-p)).log() / p, -torch.ones_like(grads))
    second = torch.where(big, grads.sign(), grads * math.exp(p))
    return torch.stack([first, second], dim=1)


def _lstm_cell(cell: nn.LSTMCell, x: Tensor, state: tuple[Tensor, Tensor], *,
               batched: bool) -> tuple[Tensor, Tensor]:
    """``cell(x, state)``: ``x`` ``[N, inputs]``, ``state`` two ``[N, hidden]``; ``batched``
    (under vmap over tasks) written out (input, forget, cell and output gates, in
    `nn.LSTMCell`'s order), since the fused cell has no vmap rule."""
    if not batched:
        return cell(x, state)
    h, c = state
    gates = F.linear(x, cell.weight_ih, cell.bias_ih) + F.linear(h, cell.weight_hh, cell.bias_hh)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


@learners.register("lstm-optimizer")
class LSTMOptimizer(GradientLearner):
    """A learned optimiser: a coordinate-wise LSTM proposes each inner-loop update, and is
    meta-trained through the unrolled inner loop.

    Andrychowicz et al., 2016, "Learning to Learn by Gradient Descent by Gradient Descent"
    (coordinate-wise LSTM, gradient preprocessing, second derivatives dropped); Ravi and
    Larochelle, 2017, "Optimization as a Model for Few-Shot Learning" (the LSTM as the inner
    optimiser of few-shot learning, with the learner's initial weights meta-learned too).

    Every adapted coordinate ``i`` carries its own LSTM state, the LSTM's weights are shared
    by all coordinates; its input is the preprocessed gradient ``g_i``, and the update is
    ``-lr * g_i + scale * out(h_i)``, with ``lr`` learned (from ``inner_lr``) and the output
    layer initialised near zero: the optimiser starts as SGD and learns how to depart from it.

    Args:
        hidden: the LSTM's state size.
        scale: multiplies the LSTM's proposals.
        max_coordinates: refuse to adapt more weights than this (the LSTM state is
            ``coordinates x hidden`` floats per step).
        **options: as `GradientLearner` (``first_order`` defaults to True: the gradients are
            inputs, not differentiated through).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> from metamodal.data.batch import ModalityBatch
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="lstm-optimizer",
        ...                            learner_options={"inner_steps": 2})
        >>> batch = {"m": ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))}
        >>> model.adapt_predict(batch, torch.tensor([0, 1, 0, 1]), batch, 2).shape
        torch.Size([4, 2])
    """

    def __init__(self, *, dim: int, hidden: int = 20, scale: float = 0.01,
                 max_coordinates: int = 2_000_000, **options: Any) -> None:
        options.setdefault("first_order", True)
        super().__init__(dim=dim, **options)
        self.hidden = positive_int("hidden", hidden)
        self.scale = positive_float("scale", scale)
        self.max_coordinates = positive_int("max_coordinates", max_coordinates)
        self.cell = nn.LSTMCell(2, self.hidden)
        self.proposal = nn.Linear(self.hidden, 1)
        nn.init.normal_(self.proposal.weight, std=1e-3)
        nn.init.zeros_(self.proposal.bias)
        self.log_lr = nn.Parameter(torch.tensor(math.log(self.inner_lr)))
        self._state: tuple[Tensor, Tensor] | None = None

    def check_backbone(self, backbone: nn.Module) -> None:
        """As `GradientLearner.check_backbone`; also refuses more than ``max_coordinates``
        adapted weights."""
        super().check_backbone(backbone)
        params = dict(backbone.named_parameters())
        count = sum(params[n].numel() for n in self.adapted)
        if count > self.max_coordinates:
            raise ConfigError(
                f"lstm-optimizer would adapt {count:,} weights (more than max_coordinates = "
                f"{self.max_coordinates:,})", column="learner_options.adapt",
                fix='set learner_options.adapt = "head" or a list of modalities, or raise '
                "learner_options.max_coordinates")

    def update(self, step: int, params: Params, grads: Params) -> Params:
        """The LSTM's proposal for every adapted coordinate (its state is reset at step 0)."""
        names = list(params)
        flat = torch.cat([grads[n].reshape(-1) for n in names])
        if step == 0 or self._state is None or self._state[0].shape[0] != flat.numel():
            zeros = flat.new_zeros(flat.numel(), self.hidden)
            self._state = (zeros, zeros)
        inputs = _preprocess_gradients(flat.detach() if self.first_order else flat, 10.0)
        h, c = _lstm_cell(self.cell, inputs.to(self.cell.weight_ih.dtype), self._state,
                          batched=self.under_task_vmap)
        self._state = (h, c) if torch.is_grad_enabled() else (h.detach(), c.detach())
        lr = 1.0 if self.training else self.eval_lr / self.inner_lr
        delta = -lr * self.log_lr.exp() * flat + self.scale * self.proposal(h).squeeze(1)
        out: Params = {}
        offset = 0
        for n in names:
            size = params[n].numel()
            out[n] = params[n] + delta[offset:offset + size].view_as(params[n])
            offset += size
        return out

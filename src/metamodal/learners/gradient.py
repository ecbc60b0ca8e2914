"""The base of the optimisation-based learners (MAML and its family, Reptile, the learned LSTM
optimiser): `GradientLearner`, which adapts the backbone's weights per task with an inner
loop, and the checks of their options.

The learners themselves: `metamodal.learners.maml` (``maml``, ``fomaml``, ``anil``,
``metasgd``, ``maml++``), `metamodal.learners.reptile` (``reptile``) and
`metamodal.learners.lstm_optimizer` (``lstm-optimizer``).

Each task adapts a copy of the network's weights with a few gradient steps on the support set
(the *inner loop*) and classifies the query set with the adapted weights; meta-training
differentiates the query loss through the inner loop (the *outer loop*). The backbone
(encoders + fusion) runs with the task's weights in place of its own (`call_with`, what
`torch.func.functional_call` does), so any encoder and fusion of the registries can be adapted,
and absent modalities are masked inside the inner loop exactly as outside it.

The output layer is built per task for its ``ways`` and starts at zero (as in Antoniou et al.
2019): a start that does not depend on the order of the classes lets one model serve any
number of ways (Ye and Chao 2022, "How to Train Your MAML to Excel in Few-Shot
Classification"), and every such start is equivalent to zero, since adding one vector to
every class's weights shifts all logits alike and changes neither the losses nor the inner
loop's gradients. The first inner step therefore moves only the output layer; the backbone
adapts from the second step on. With plain SGD the inner loop uses this: the first step
differentiates only the output layer, and the second reuses the first one's support embeddings
(`unroll`'s ``keep_zero``, `Through`). BatchNorm layers normalise with each
batch's own statistics during adaptation and prediction and never update their running
statistics (`task_batch_norm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.config import MAX_LR
from metamodal.data.batch import ModalityBatch, all_present
from metamodal.errors import ConfigError
from metamodal.learners.base import (
    EpisodeContext,
    Learner,
    LearnerCapabilities,
    check_support,
    embed_pair,
)
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.inner_loop import (
    BATCH_NORMS,
    Params,
    Slots,
    Through,
    add_step,
    call_with,
    head_logits,
    masked_cross_entropy,
    parameter_slots,
    scaled_descent,
    sgd_step,
    stochastic,
    task_batch_norm,
    unroll,
)

Batch = Mapping[str, ModalityBatch]


MAX_INNER_STEPS = 100
"""The most inner steps of meta-training: each keeps its graph for the meta-gradient (about
10 MB a step on 32 x 32 images at 3-way 1-shot, growing with the episode)."""
MAX_EVAL_STEPS = 1000
"""The most adaptation steps at evaluation (no graph is kept; each costs a task's time)."""


def positive_int(name: str, value: Any, most: int | None = None) -> int:
    """``value`` when it is an integer >= 1 (and at most ``most``), else a `ConfigError`
    naming ``learner_options.<name>``.

    Example:
        >>> positive_int("inner_steps", 5)
        5
    """
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1
            or (most is not None and value > most)):
        within = f"1 to {most:,}" if most is not None else "1 or more"
        raise ConfigError(f"{name} must be an integer of {within}, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} to {within} (e.g. 5)")
    return value


def positive_float(name: str, value: Any, most: float = math.inf) -> float:
    """``value`` as a float when it is a finite number > 0 (and at most ``most``), else a
    `ConfigError` naming ``learner_options.<name>``.

    Example:
        >>> positive_float("inner_lr", 1)
        1.0
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value) or value > most:
        limit = f" and at most {most:g}" if math.isfinite(most) else ""
        raise ConfigError(f"{name} must be a number > 0{limit}, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} to a positive number (e.g. 0.1)")
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` as a float when it is a number in 0..1, else a `ConfigError` naming
    ``learner_options.<name>``.

    Example:
        >>> fraction("msl_until", 0.3)
        0.3
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in 0..1, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} between 0 and 1")
    return float(value)


def _everyone(batch: Batch) -> bool:
    """Whether every sample of ``batch`` has a modality: one modality is present in all."""
    return any(all_present(mb.present) for mb in batch.values())


class GradientLearner(Learner):
    """Base class of the optimisation-based learners (MAML and its family, Reptile, the LSTM
    optimiser).

    Args:
        dim: width of the fused embeddings (the output layer's input).
        inner_steps: gradient steps on the support set per task in meta-training.
        inner_lr: their learning rate.
        eval_steps: steps at evaluation and prediction (default: ``inner_steps``).
        eval_lr: their learning rate (default: ``inner_lr``).
        first_order: drop the second-order terms of the meta-gradient (FOMAML).
        adapt: what the inner loop adapts besides the output layer: ``"all"`` (every weight of
            the backbone), ``"head"`` (only the output layer, as ANIL), ``"fusion"`` (the
            fusion and the output layer) or a list of modality names (those encoders and the
            output layer).

    The output layer (``[ways, D]`` weights and ``[ways]`` biases) starts at zero for every
    task (see the module docstring). Subclasses change the update (`update`), what adapts, or
    the loss (`loss`).
    """

    under_task_vmap: bool = False
    """True while `metamodal.learners.task_batching.vmap_ready` runs this learner under
    `torch.func.vmap` over tasks: the inner loop then differentiates with `torch.func.grad`
    and skips what reads a task's values on the host (the support check, done before)."""

    def __init__(
        self,
        *,
        dim: int,
        inner_steps: int = 5,
        inner_lr: float = 0.1,
        eval_steps: int | None = None,
        eval_lr: float | None = None,
        first_order: bool = False,
        adapt: str | Sequence[str] = "all",
    ) -> None:
        super().__init__()
        self.inner_steps = positive_int("inner_steps", inner_steps, MAX_INNER_STEPS)
        self.inner_lr = positive_float("inner_lr", inner_lr, MAX_LR)
        self.eval_steps = positive_int("eval_steps", inner_steps if eval_steps is None
                                       else eval_steps, MAX_EVAL_STEPS)
        self.eval_lr = positive_float("eval_lr", inner_lr if eval_lr is None else eval_lr,
                                      MAX_LR)
        self.first_order = bool(first_order)
        if isinstance(adapt, str):
            adapt = adapt if adapt in ("all", "head", "fusion") else [adapt]
        elif not isinstance(adapt, Sequence) or not all(isinstance(a, str) for a in adapt):
            raise ConfigError(f"adapt must be 'all', 'head', 'fusion' or a list of modality "
                              f"names, got {adapt!r}", column="learner_options.adapt",
                              fix='e.g. adapt = "all" or adapt = ["image"]')
        self.adapt = adapt if isinstance(adapt, str) else list(adapt)
        self.dim = dim
        self.adapted: list[str] = []

    # ------------------------------------------------------------------ set-up

    def capabilities(self) -> LearnerCapabilities:
        """Trained on episodes; each episode runs through `forward` (the network adapts per
        task, so embeddings cannot be reused); tasks can be batched under vmap."""
        return LearnerCapabilities(embeds_once=False, batches_tasks=True)

    def check_backbone(self, backbone: nn.Module) -> None:
        """Check the options against the backbone and record which of its weights adapt.

        Raises:
            ConfigError: ``adapt`` names a modality the backbone lacks; or second-order
                meta-gradients are asked of recurrent encoders on CUDA (cuDNN's RNNs have no
                double backward).
        """
        names = [n for n, _ in backbone.named_parameters()]
        if self.adapt == "all":
            self.adapted = names
        elif self.adapt == "head":
            self.adapted = []
        elif self.adapt == "fusion":
            self.adapted = [n for n in names if n.startswith("fusion.")]
        else:
            modalities = list(backbone.encoders)
            unknown = [m for m in self.adapt if m not in modalities]
            if unknown:
                raise ConfigError(
                    f"adapt names modalities the model does not use: {', '.join(unknown)}",
                    column="learner_options.adapt",
                    fix=f"use 'all', 'head', 'fusion' or some of: {', '.join(modalities)}")
            prefixes = tuple(f"encoders.{m}." for m in self.adapt)
            self.adapted = [n for n in names if n.startswith(prefixes)]
        norms = {f"{prefix}.{n}" if prefix else n
                 for prefix, layer in backbone.named_modules()
                 if isinstance(layer, BATCH_NORMS) for n, _ in layer.named_parameters()}
        self._norm_params = norms
        recurrent = any(isinstance(m, nn.RNNBase) for m in backbone.modules())
        on_cuda = any(p.is_cuda for p in backbone.parameters())
        if recurrent and on_cuda and not self.first_order and self.adapted:
            raise ConfigError(
                "second-order meta-gradients through recurrent encoders are not available on "
                "CUDA (cuDNN RNNs have no double backward)", column="learner_options",
                fix="set learner_options.first_order = true, adapt = \"head\", or pick a "
                "convolutional encoder (e.g. --encoder caption=textcnn)")

    # ------------------------------------------------------------------ the inner loop

    def steps_and_lr(self) -> tuple[int, float]:
        """Inner steps and learning rate for the current mode (training or evaluation)."""
        return (self.inner_steps, self.inner_lr) if self.training else (self.eval_steps,
                                                                         self.eval_lr)

    def update(self, step: int, params: Params, grads: Params) -> Params:
        """One inner-loop update (plain SGD with the mode's learning rate here)."""
        return sgd_step(params, grads, self.steps_and_lr()[1])

    def second_order(self) -> bool:
        """Whether meta-training differentiates through the inner-loop gradients."""
        return not self.first_order

    def step_params(self, step: int) -> Params:
        """Extra backbone weights for the forward pass of inner step ``step`` (MAML++ uses
        per-step BatchNorm weights); none here."""
        return {}

    def _plain_sgd(self) -> bool:
        """Whether the inner loop is plain SGD (this class's `update`) on the same network at
        every step (no `step_params`): a weight whose gradient is zero then stays as it is."""
        cls = type(self)
        return (cls.update is GradientLearner.update
                and cls.step_params is GradientLearner.step_params)

    def _loss_fn(self, backbone: nn.Module, batch: Batch, labels: Tensor, slots: Slots | None
                 ) -> Callable[[Params, int], Tensor | Through]:
        """The inner loop's loss on ``batch`` (labels long ``[B]``): ``loss_fn(params, step)``,
        the masked cross-entropy of the network with weights ``params``, for `unroll` with the
        backbone's weights as ``zero_first`` and ``keep_zero=self._plain_sgd()`` (``slots``
        from `parameter_slots` of the backbone).

        With plain SGD the first step leaves the backbone's weights as they were, so the second
        step's embeddings are the first step's: unless the network draws random numbers
        (dropout), the second step reuses them and returns a `Through` loss, whose gradient is
        the same as with the embeddings computed again.
        """
        keep_all = _everyone(batch)
        reuse = self._plain_sgd() and not stochastic(backbone) and not self.under_task_vmap
        first: list[tuple[Params, Embeddings]] = []  # the first step's weights and embeddings

        def loss(embedded: Embeddings, params: Params) -> Tensor:
            return masked_cross_entropy(self._logits(backbone, embedded, params), labels,
                                        None if keep_all else embedded.present.any(1))

        def loss_fn(params: Params, step: int) -> Tensor | Through:
            if step == 1 and first:
                weights, embedded = first.pop()
                node = embedded.z.view_as(embedded.z)
                return Through(loss(replace(embedded, z=node), params), node, embedded.z,
                               weights)
            embedded = self._embed(backbone, batch, params, step, slots)
            if reuse and step == 0:
                first.append(({n: p for n, p in params.items() if not n.startswith("head.")},
                              embedded))
            return loss(embedded, params)

        return loss_fn

    def adapting(self, backbone: nn.Module) -> list[str]:
        """The backbone weights the inner loop adapts: the ``adapted`` ones that are not frozen
        (``requires_grad`` off, `metamodal.model.freeze`). A frozen weight is fixed in both
        loops: the outer loop does not train it and no task adapts it."""
        params = dict(backbone.named_parameters())
        return [n for n in self.adapted if params[n].requires_grad]

    def _start(self, backbone: nn.Module, ways: int) -> Params:
        params = dict(backbone.named_parameters())
        start = {n: params[n] for n in self.adapting(backbone)}
        reference = next(iter(params.values()))
        start["head.weight"] = reference.new_zeros(ways, self.dim)
        start["head.bias"] = reference.new_zeros(ways)
        if not self.under_task_vmap:  # torch.func.grad needs no flag (and forbids one)
            start["head.weight"].requires_grad_()
            start["head.bias"].requires_grad_()
        return start

    def _logits(self, backbone: nn.Module, embeddings: Embeddings, params: Params) -> Tensor:
        logits = head_logits(embeddings.z, params["head.weight"], params["head.bias"])
        if embeddings.late:
            return backbone.fusion.combine(logits, embeddings.present)
        return logits

    def _embed(self, backbone: nn.Module, batch: Batch, params: Params, step: int,
               slots: Slots | None) -> Embeddings:
        """The backbone's embeddings of ``batch`` with the backbone's weights in ``params``
        and `step_params` (``slots`` from `parameter_slots` of the backbone)."""
        weights = {n: p for n, p in params.items() if not n.startswith("head.")}
        weights.update(self.step_params(step))
        if not weights:
            return backbone(batch)
        return call_with(backbone, slots, weights, batch)

    def adapt_and_predict(
        self,
        backbone: nn.Module,
        support: Batch,
        support_labels: Tensor,
        query: Batch,
        ways: int,
        *,
        every_step: bool = False,
    ) -> list[Tensor]:
        """Adapt to the support set and return the query logits ``[Q, ways]``: after the last
        step, or after every step with ``every_step`` (MAML++'s multi-step loss).

        Meta-gradients flow back to the meta-learned weights when gradients are enabled on
        entry (meta-training); otherwise (evaluation under `torch.no_grad`) the inner loop
        runs with gradients on, keeps no graph across steps, and the logits are detached.
        """
        if not self.under_task_vmap:  # checked before batching, where labels can be read
            check_support(support_labels, ways)
        meta = torch.is_grad_enabled()
        steps, lr = self.steps_and_lr()
        create_graph = meta and self.second_order()
        with torch.enable_grad(), task_batch_norm(backbone):
            start = self._start(backbone, ways)
            adapts_backbone = any(not n.startswith("head.") for n in start)
            # one plain SGD step from the zero output layer leaves the backbone as it is (its
            # gradient is zero): outside meta-training the support and the query are then
            # embedded by the backbone itself, each in its own pass as the inner loop does,
            # without recording a graph through it
            unchanged = (adapts_backbone and not meta and steps == 1 and self._plain_sgd()
                         and not stochastic(backbone) and not self.under_task_vmap)
            if unchanged:
                start = {n: p for n, p in start.items() if n.startswith("head.")}
                adapts_backbone = False
            slots = parameter_slots(backbone) if adapts_backbone else None
            if adapts_backbone:
                support_loss = self._loss_fn(backbone, support, support_labels, slots)
            else:  # only the output layer adapts: embed once
                if unchanged:
                    with torch.no_grad():
                        s_emb, q_emb = backbone(support), backbone(query)
                else:
                    s_emb, q_emb = embed_pair(backbone, support, query)
                if not meta:
                    s_emb, q_emb = s_emb.detach(), q_emb.detach()
                keep = None if _everyone(support) else s_emb.present.any(1)

                def support_loss(params: Params, step: int) -> Tensor:
                    return masked_cross_entropy(self._logits(backbone, s_emb, params),
                                                support_labels, keep)

            def predict(params: Params, step: int) -> Tensor:
                embedded = (self._embed(backbone, query, params, step, slots) if adapts_backbone
                            else q_emb)
                return self._logits(backbone, embedded, params)

            outputs: list[Tensor] = []
            params = start
            # with the output layer at zero, the first step's backbone gradients are zero
            backbone_names = frozenset(n for n in start if not n.startswith("head."))
            plain = self._plain_sgd()
            loss_fn, update = ((scaled_descent(support_loss, lr), add_step) if plain
                               else (support_loss, self.update))
            for step, params in enumerate(unroll(loss_fn, start, steps=steps, update=update,
                                                 create_graph=create_graph, track=meta,
                                                 zero_first=backbone_names, keep_zero=plain,
                                                 batched=self.under_task_vmap)):
                if every_step and step < steps - 1:
                    outputs.append(predict(params, step + 1))
            outputs.append(predict(params, steps))
        return outputs if meta else [o.detach() for o in outputs]

    def forward(
        self,
        backbone: nn.Module,
        support: Batch,
        support_labels: Tensor,
        query: Batch,
        ways: int,
        context: EpisodeContext | None = None,
    ) -> Tensor:
        """Query logits ``[Q, ways]`` after adapting to the support set (``context`` is not
        used: these learners use no class semantics)."""
        return self.adapt_and_predict(backbone, support, support_labels, query, ways)[-1]

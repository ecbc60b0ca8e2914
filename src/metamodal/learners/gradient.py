"""Optimisation-based learners: MAML, first-order MAML, ANIL, Meta-SGD and MAML++.

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
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.batched_tasks import batching_tasks
from metamodal.data.batch import Episode, ModalityBatch, all_present
from metamodal.errors import ConfigError
from metamodal.learners.base import Learner, check_support, embed_pair, learners
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


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} to 1 or more (e.g. 5)")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} to a positive number (e.g. 0.1)")
    return float(value)


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in 0..1, got {value!r}",
                          column=f"learner_options.{name}",
                          fix=f"set learner_options.{name} between 0 and 1")
    return float(value)


def _everyone(batch: Batch) -> bool:
    """Whether every sample of ``batch`` has a modality: one modality is present in all."""
    return any(all_present(mb.present) for mb in batch.values())


def _key(name: str) -> str:
    """A parameter name usable as a `nn.ParameterDict` key (no dots)."""
    return name.replace(".", "__")


class GradientLearner(Learner):
    """Base class of the optimisation-based learners (MAML and its family).

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

    caches_embeddings = False
    batches_tasks = True

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
        self.inner_steps = _positive_int("inner_steps", inner_steps)
        self.inner_lr = _positive_float("inner_lr", inner_lr)
        self.eval_steps = _positive_int("eval_steps", inner_steps if eval_steps is None
                                        else eval_steps)
        self.eval_lr = _positive_float("eval_lr", inner_lr if eval_lr is None else eval_lr)
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
        reuse = self._plain_sgd() and not stochastic(backbone) and not batching_tasks()
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

    def _start(self, backbone: nn.Module, ways: int) -> Params:
        params = dict(backbone.named_parameters())
        start = {n: params[n] for n in self.adapted}
        reference = next(iter(params.values()))
        start["head.weight"] = reference.new_zeros(ways, self.dim)
        start["head.bias"] = reference.new_zeros(ways)
        if not batching_tasks():  # torch.func.grad needs no flag (and forbids setting one)
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
        if not batching_tasks():  # checked before batching, where labels can be read
            check_support(support_labels, ways)
        meta = torch.is_grad_enabled()
        steps, lr = self.steps_and_lr()
        create_graph = meta and self.second_order()
        with torch.enable_grad(), task_batch_norm(backbone):
            start = self._start(backbone, ways)
            adapts_backbone = any(not n.startswith("head.") for n in start)
            slots = parameter_slots(backbone) if adapts_backbone else None
            if adapts_backbone:
                support_loss = self._loss_fn(backbone, support, support_labels, slots)
            else:  # only the output layer adapts: embed once
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
                                                 zero_first=backbone_names, keep_zero=plain)):
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
    ) -> Tensor:
        """Query logits ``[Q, ways]`` after adapting to the support set."""
        return self.adapt_and_predict(backbone, support, support_labels, query, ways)[-1]


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
        self.msl_until = _fraction("msl_until", msl_until)
        self.first_order_until = _fraction("first_order_until", first_order_until)
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

    def loss(self, backbone: nn.Module, episode: Episode) -> tuple[Tensor, Tensor]:
        """The multi-step loss: query cross-entropy after every inner step, weighted by
        `loss_weights`; and the final query logits."""
        outputs = self.adapt_and_predict(backbone, episode.support, episode.support_labels,
                                         episode.query, episode.ways, every_step=True)
        weights = self.loss_weights(len(outputs))
        total = sum(float(w) * torch.nn.functional.cross_entropy(o, episode.query_labels)
                    for w, o in zip(weights, outputs, strict=True) if w > 0)
        return total, outputs[-1]


@learners.register("reptile")
class Reptile(GradientLearner):
    """Reptile: adapt to each task with plain SGD, then move the meta-learned weights toward
    the adapted ones.

    Nichol, Achiam and Schulman, 2018, "On First-Order Meta-Learning Algorithms". Meta-training
    adapts on all of an episode's samples (support and query) for ``inner_steps`` steps and
    returns the surrogate loss ``1/2 * ||theta - phi||^2`` (``phi`` the adapted weights, held
    fixed), whose gradient is ``theta - phi``: an outer SGD step of size ``epsilon`` is then
    exactly Reptile's ``theta <- theta + epsilon * (phi - theta)``, and with ``--meta-batch N``
    the mean over N tasks. The output layer starts at zero in every task (see the module
    docstring). Prediction adapts to the support set as MAML does.
    """

    def __init__(self, *, dim: int, **options: Any) -> None:
        if options.get("first_order") is False:
            raise ConfigError("reptile is first order by definition",
                              column="learner_options.first_order",
                              fix="leave learner_options.first_order out, or use maml")
        options["first_order"] = True
        super().__init__(dim=dim, **options)

    def check_backbone(self, backbone: nn.Module) -> None:
        """As `GradientLearner.check_backbone`; Reptile needs backbone weights to adapt."""
        super().check_backbone(backbone)
        if not self.adapted:
            raise ConfigError("reptile moves the backbone toward its adapted weights, but "
                              f"adapt = {self.adapt!r} adapts none of them",
                              column="learner_options.adapt",
                              fix='use adapt = "all", "fusion" or a list of modalities')

    def loss(self, backbone: nn.Module, episode: Episode) -> tuple[Tensor, Tensor]:
        """The Reptile surrogate loss of one episode and the query logits ``[Q, ways]`` of the
        weights adapted to the whole episode (for the training accuracy)."""
        from metamodal.data.batch import cat_batches

        ways = episode.ways
        if not batching_tasks():
            check_support(episode.support_labels, ways)
        task = (cat_batches([episode.support, episode.query])
                if set(episode.support) == set(episode.query) else episode.support)
        labels = (torch.cat([episode.support_labels, episode.query_labels])
                  if task is not episode.support else episode.support_labels)
        steps, _ = self.steps_and_lr()
        with torch.enable_grad(), task_batch_norm(backbone):
            start = self._start(backbone, ways)
            slots = parameter_slots(backbone)
            task_loss = self._loss_fn(backbone, task, labels, slots)
            *_, adapted = unroll(task_loss, start, steps=steps, update=self.update,
                                 create_graph=False, track=False,
                                 zero_first=frozenset(self.adapted), keep_zero=self._plain_sgd())
            surrogate = sum(0.5 * (start[n] - adapted[n]).pow(2).sum() for n in self.adapted)
            with torch.no_grad():
                logits = self._logits(backbone, self._embed(backbone, episode.query, adapted,
                                                            steps, slots), adapted)
        return surrogate, logits


def _preprocess_gradients(grads: Tensor, p: float) -> Tensor:
    """Andrychowicz et al.'s gradient preprocessing, ``[N]`` -> ``[N, 2]``: ``(log|g| / p,
    sign g)`` where ``|g| >= e^-p``, else ``(-1, e^p g)``."""
    magnitude = grads.abs()
    big = magnitude >= math.exp(-p)
    first = torch.where(big, magnitude.clamp_min(math.exp(-p)).log() / p, -torch.ones_like(grads))
    second = torch.where(big, grads.sign(), grads * math.exp(p))
    return torch.stack([first, second], dim=1)


def _lstm_cell(cell: nn.LSTMCell, x: Tensor, state: tuple[Tensor, Tensor]
               ) -> tuple[Tensor, Tensor]:
    """``cell(x, state)``: ``x`` ``[N, inputs]``, ``state`` two ``[N, hidden]``; under vmap
    over tasks written out (input, forget, cell and output gates, in `nn.LSTMCell`'s order),
    since the fused cell has no vmap rule."""
    if not batching_tasks():
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
    """

    def __init__(self, *, dim: int, hidden: int = 20, scale: float = 0.01,
                 max_coordinates: int = 2_000_000, **options: Any) -> None:
        options.setdefault("first_order", True)
        super().__init__(dim=dim, **options)
        self.hidden = _positive_int("hidden", hidden)
        self.scale = _positive_float("scale", scale)
        self.max_coordinates = _positive_int("max_coordinates", max_coordinates)
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
        h, c = _lstm_cell(self.cell, inputs.to(self.cell.weight_ih.dtype), self._state)
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

"""The functional core of the optimisation-based learners: inner-loop gradient steps on
parameter dictionaries, per-task BatchNorm, and the output layer built per task.

Everything here is a pure function of ``(params, batch)`` in the style of `torch.func`: a
network is run with other weights through `call_with` (`torch.func.functional_call` with the
parameters' places found once per task), and an inner-loop step is ``params - lr * grad``
with ``grad`` from `torch.autograd.grad` (``create_graph=True`` keeps the second-order terms
of MAML's meta-gradient; without it the step is first order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metamodal.encoders.layers import MaskedBatchNorm

Params = dict[str, Tensor]
"""Parameter name -> tensor, as `nn.Module.named_parameters` names them."""

BATCH_NORMS = (nn.modules.batchnorm._BatchNorm, MaskedBatchNorm)
"""The normalisation layers whose statistics a task must not leak into the running ones."""


def gradients(loss: Tensor, params: Mapping[str, Tensor], *, create_graph: bool,
              grad_output: Tensor | None = None) -> Params:
    """``d loss / d params`` for every entry; one that ``loss`` does not use gets zeros.

    Args:
        loss: a scalar (or any tensor, with ``grad_output``).
        params: name -> tensor (each requiring grad).
        create_graph: keep the graph of the gradients (for second-order meta-gradients).
        grad_output: the vector of the vector-Jacobian product, shaped like ``loss``.

    Example:
        >>> w = torch.tensor([2.0], requires_grad=True)
        >>> unused = torch.tensor([1.0], requires_grad=True)
        >>> g = gradients((w ** 2).sum(), {"w": w, "u": unused}, create_graph=False)
        >>> g["w"].tolist(), g["u"].tolist()
        ([4.0], [0.0])
    """
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], grad_output,
                                create_graph=create_graph, allow_unused=True)
    return {n: torch.zeros_like(params[n]) if g is None else g
            for n, g in zip(names, grads, strict=True)}


def functional_gradients(loss_fn: Callable[[Params], Tensor], params: Mapping[str, Tensor],
                         wanted: Mapping[str, Tensor], *, create_graph: bool) -> Params:
    """`gradients` for use under `torch.func.vmap`: ``d loss_fn(params) / d wanted`` (every
    entry of ``wanted`` replaces its name in ``params``) with `torch.func.grad`, whose result
    stays differentiable by the outer autograd (second order); without ``create_graph`` it
    is detached (first order).

    Example:
        >>> w = torch.tensor([2.0], requires_grad=True)
        >>> g = functional_gradients(lambda p: (p["w"] ** 2 * p["u"]).sum(),
        ...                          {"w": w, "u": torch.tensor([3.0])}, {"w": w},
        ...                          create_graph=False)
        >>> g["w"].tolist()  # d(3 w^2)/dw = 6 w
        [12.0]
    """
    rest = {n: p for n, p in params.items() if n not in wanted}
    grads = torch.func.grad(lambda chosen: loss_fn({**rest, **chosen}))(dict(wanted))
    return grads if create_graph else {n: g.detach() for n, g in grads.items()}


@dataclass
class Through:
    """A loss that reads some weights only through a tensor computed earlier from other tensors
    of the same values: a support loss that reuses the previous step's embeddings, where plain
    SGD left the backbone's weights unchanged.

    Args:
        loss: the scalar loss.
        node: ``output.view_as(output)``, the only way ``loss`` reads ``output`` (a node of its
            own, so that the gradient at it leaves out the paths through ``output`` that earlier
            steps built, e.g. the output layer's update).
        output: what ``weights`` computed (e.g. embeddings ``[B, D]``).
        weights: name -> the tensors ``output`` was computed from, with the values of the
            current step's weights of those names.
    """

    loss: Tensor
    node: Tensor
    output: Tensor
    weights: Params


def gradients_through(loss: Through, params: Mapping[str, Tensor], *,
                      create_graph: bool) -> Params:
    """``d loss / d params`` of a `Through` loss: the gradient at ``loss.node`` (every entry of
    ``params`` held fixed) carried back through the graph of ``loss.output`` to
    ``loss.weights``, whose names' gradients they are; the other names' as `gradients` gives
    them. This is the partial derivative at ``params``, as if the output had been recomputed
    from them, without the forward pass.

    Example:
        >>> w = torch.tensor([2.0], requires_grad=True)
        >>> h = torch.tensor([3.0], requires_grad=True)
        >>> z = w * 5  # computed earlier from w
        >>> node = z.view_as(z)
        >>> g = gradients_through(Through((node * h).sum(), node, z, {"w": w}),
        ...                       {"w": w.view_as(w), "h": h}, create_graph=False)
        >>> g["w"].tolist(), g["h"].tolist()  # d(5wh)/dw = 5h, d(5wh)/dh = 5w
        ([15.0], [10.0])
    """
    weights = {n: w for n, w in loss.weights.items() if n in params}
    rest = {n: p for n, p in params.items() if n not in weights}
    names = list(rest)
    found = torch.autograd.grad(loss.loss, [rest[n] for n in names] + [loss.node],
                                create_graph=create_graph, allow_unused=True)
    grads = {n: torch.zeros_like(rest[n]) if g is None else g
             for n, g in zip(names, found, strict=False)}
    at_node = torch.zeros_like(loss.node) if found[-1] is None else found[-1]
    grads.update(gradients(loss.output, weights, create_graph=create_graph,
                           grad_output=at_node))
    return {n: grads[n] for n in params}


def sgd_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
             lr: float | Mapping[str, Tensor | float]) -> Params:
    """One gradient-descent step ``p - lr * g`` (``lr`` one number or one per name, a tensor
    broadcastable to the parameter for Meta-SGD).

    Example:
        >>> sgd_step({"w": torch.tensor([1.0])}, {"w": torch.tensor([2.0])}, 0.25)["w"].tolist()
        [0.5]
    """
    if isinstance(lr, Mapping):
        return {n: p - lr[n] * grads[n] for n, p in params.items()}
    return {n: torch.add(p, grads[n], alpha=-lr) for n, p in params.items()}


def add_step(step: int, params: Mapping[str, Tensor], grads: Mapping[str, Tensor]) -> Params:
    """``p + g``: the update of `scaled_descent`, whose "gradients" are already the steps."""
    return {n: p + grads[n] for n, p in params.items()}


def scaled_descent(
    loss_fn: Callable[[Params, int], Tensor | Through], lr: float
) -> Callable[[Params, int], Tensor | Through]:
    """Plain SGD ``p - lr * g`` for `unroll`, with the learning rate on the loss: the returned
    loss function gives ``-lr * loss``, whose gradients are the steps themselves, and
    `add_step` adds them. The same steps up to rounding; a second-order meta-gradient then
    flows through every update without multiplying a weight-sized tensor by the rate (the
    rate multiplies the scalar loss instead).

    Example:
        >>> w = {"w": torch.tensor([3.0], requires_grad=True)}
        >>> last = list(unroll(scaled_descent(lambda p, s: (p["w"] ** 2).sum(), 0.25), w,
        ...                    steps=2, update=add_step, create_graph=True))[-1]
        >>> last["w"].tolist()  # 3 -> 1.5 -> 0.75
        [0.75]
    """
    def scaled(params: Params, step: int) -> Tensor | Through:
        loss = loss_fn(params, step)
        if isinstance(loss, Through):
            return replace(loss, loss=loss.loss * -lr)
        return loss * -lr

    return scaled


def detached(params: Mapping[str, Tensor], *, batched: bool = False) -> Params:
    """Copies cut from the graph that require grad again (an inner loop without meta-gradient:
    evaluation keeps no graph back to the initial weights); with ``batched`` (under vmap over
    tasks) only cut (`torch.func.grad` needs no flag).

    Example:
        >>> w = torch.ones(2, requires_grad=True) * 2
        >>> [(p.requires_grad, p.grad_fn) for p in detached({"w": w}).values()]
        [(True, None)]
    """
    if batched:
        return {n: p.detach() for n, p in params.items()}
    return {n: p.detach().requires_grad_() for n, p in params.items()}


@contextmanager
def task_batch_norm(module: nn.Module) -> Iterator[None]:
    """Inside the block every BatchNorm layer of ``module`` normalises with the statistics of
    the batch it sees and leaves its running statistics untouched, in training and evaluation
    alike (transductive BatchNorm, as in Finn et al. 2017): an inner loop neither pollutes the
    running statistics with a task's data nor depends on them.

    The layers' (and encoders') training flags are restored afterwards; dropout keeps the
    module's mode. An `Encoder` whose input layout depends on its mode is switched to its
    training layout too (`metamodal.encoders.image._layout_for`).

    Example:
        >>> bn = nn.BatchNorm1d(2).eval()
        >>> with task_batch_norm(bn):
        ...     y = bn(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> y.abs().max().item() < 1.01, bn.running_mean.tolist(), bn.training
        (True, [0.0, 0.0], False)
    """
    from metamodal.encoders.base import Encoder

    saved: list[tuple[nn.Module, bool, bool | None]] = []
    for layer in module.modules():
        if isinstance(layer, BATCH_NORMS):
            saved.append((layer, layer.training, layer.track_running_stats))
            layer.training = True
            layer.track_running_stats = False
        elif isinstance(layer, Encoder):
            saved.append((layer, layer.training, None))
            layer.training = True
    try:
        yield
    finally:
        for layer, training, track in saved:
            layer.training = training
            if track is not None:
                layer.track_running_stats = track


Slots = dict[str, tuple[nn.Module, str]]
"""Parameter name -> (the submodule that holds it, its attribute name there)."""


def parameter_slots(module: nn.Module) -> Slots | None:
    """Where each parameter of ``module`` lives, for `call_with`; None when two names share one
    tensor (tied weights), which `torch.func.functional_call` handles.

    Example:
        >>> slots = parameter_slots(nn.Sequential(nn.Linear(2, 3)))
        >>> {name: (type(m).__name__, attr) for name, (m, attr) in slots.items()}
        {'0.weight': ('Linear', 'weight'), '0.bias': ('Linear', 'bias')}
    """
    named = list(module.named_parameters(remove_duplicate=False))
    if len({id(p) for _, p in named}) != len(named):
        return None
    slots: Slots = {}
    for name, _ in named:
        prefix, _, attr = name.rpartition(".")
        slots[name] = (module.get_submodule(prefix), attr)
    return slots


def call_with(module: nn.Module, slots: Slots | None, weights: Mapping[str, Tensor],
              *args: object) -> object:
    """``module(*args)`` with the tensors of ``weights`` (parameter name -> tensor) in place of
    those parameters, which are put back afterwards: `torch.func.functional_call`, without
    looking every name up again on every call (``slots`` from `parameter_slots` of this
    module, found once per task). Without ``slots``, or for a name they lack, it is
    `torch.func.functional_call` itself.

    Example:
        >>> net = nn.Linear(1, 1, bias=False)
        >>> out = call_with(net, parameter_slots(net), {"weight": torch.tensor([[2.0]])},
        ...                 torch.tensor([[3.0]]))
        >>> out.item(), isinstance(net.weight, nn.Parameter)
        (6.0, True)
    """
    if slots is None or not all(name in slots for name in weights):
        return functional_call(module, dict(weights), args)
    swapped: list[tuple[dict[str, object], str, object]] = []
    try:
        for name, tensor in weights.items():
            holder, attr = slots[name]
            table = holder._parameters
            swapped.append((table, attr, table[attr]))
            table[attr] = tensor
        return module(*args)
    finally:
        for table, attr, original in reversed(swapped):
            table[attr] = original


def stochastic(module: nn.Module) -> bool:
    """Whether ``module`` draws random numbers in its forward pass: one of its layers is a
    dropout (``p > 0``), an `nn.RReLU` or a recurrent layer with ``dropout > 0`` in training
    mode. Other layers are taken to be deterministic.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> stochastic(net), stochastic(net.eval())
        (True, False)
    """
    for layer in module.modules():
        if not layer.training:
            continue
        if isinstance(layer, nn.modules.dropout._DropoutNd) and layer.p > 0:
            return True
        if isinstance(layer, nn.RReLU) or (isinstance(layer, nn.RNNBase) and layer.dropout > 0):
            return True
    return False


def head_logits(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The output layer: ``z @ weight.T + bias``, ``[B, D]`` -> ``[B, ways]`` (late fusion:
    ``[B, M, D]`` -> ``[B, M, ways]``).

    Example:
        >>> head_logits(torch.ones(2, 3), torch.zeros(4, 3), torch.arange(4.0)).shape
        torch.Size([2, 4])
    """
    return z @ weight.T + bias


def masked_cross_entropy(logits: Tensor, labels: Tensor, keep: Tensor | None) -> Tensor:
    """Mean cross-entropy of ``logits`` ``[B, ways]`` against ``labels`` long ``[B]`` over the
    rows where ``keep`` (bool ``[B]``) is True; all rows when none is (without a device-to-host
    transfer), or when ``keep`` is None (every row known to be kept: the same value, computed
    without the weights).

    Example:
        >>> logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
        >>> float(masked_cross_entropy(logits, torch.tensor([0, 0]), torch.tensor([True, False])))
        0.006715348921716213
    """
    losses = F.cross_entropy(logits, labels, reduction="none")
    if keep is None:  # (losses * 1).sum() / B with every weight 1
        return losses.sum() / losses.shape[0]
    weight = keep.to(losses.dtype)
    weight = torch.where(weight.sum() > 0, weight, torch.ones_like(weight))
    return (losses * weight).sum() / weight.sum()


def unroll(
    loss_fn: Callable[[Params, int], Tensor | Through],
    params: Params,
    *,
    steps: int,
    update: Callable[[int, Params, Params], Params],
    create_graph: bool,
    track: bool = True,
    zero_first: frozenset[str] = frozenset(),
    keep_zero: bool = False,
    batched: bool = False,
) -> Iterator[Params]:
    """Run ``steps`` inner-loop updates and yield the parameters after each one.

    Args:
        loss_fn: ``loss_fn(params, step) -> scalar`` (the support loss), or a `Through`
            loss (differentiated with `gradients_through`). With ``batched`` it is
            differentiated with `functional_gradients` and must return a tensor.
        params: the starting parameters (the meta-learned ones, or views of them).
        steps: the number of updates.
        update: ``update(step, params, grads) -> params`` (e.g. `sgd_step` with a learning
            rate; Meta-SGD and MAML++ pass learned rates; the LSTM optimiser its proposals).
        create_graph: differentiate through the gradients (second order).
        track: keep the graph back to ``params`` (meta-training); without it each step starts
            from detached copies (evaluation: no memory kept across steps).
        zero_first: names whose gradient at the first step is known to be exactly zero (the
            backbone's, while the output layer is zero): zeros are used without
            differentiating the loss through them, which saves a backward pass through the
            network.
        keep_zero: ``update`` leaves a weight whose gradient is zero as it is (plain SGD:
            ``p - lr * 0 = p``). The ``zero_first`` weights then come out of the first step
            without an update (as the very tensors that went in without ``create_graph``,
            else as views of them), and ``loss_fn`` may reuse at the second step what it
            computed from them at the first, returning a `Through` loss.
        batched: the loop runs under `torch.func.vmap` over tasks
            (`metamodal.learners.task_batching`): gradients come from `torch.func.grad`, since
            `torch.autograd.grad` cannot run there.

    Example:
        >>> w = {"w": torch.tensor([3.0], requires_grad=True)}
        >>> last = list(unroll(lambda p, s: (p["w"] ** 2).sum(), w, steps=2,
        ...                    update=lambda s, p, g: sgd_step(p, g, 0.25),
        ...                    create_graph=True))[-1]
        >>> last["w"].tolist()  # 3 -> 1.5 -> 0.75
        [0.75]
    """
    if not track:
        params = detached(params, batched=batched)
    for step in range(steps):
        skip = zero_first if step == 0 else frozenset()
        wanted = {n: p for n, p in params.items() if n not in skip}
        if batched:
            grads = functional_gradients(lambda p, step=step: loss_fn(p, step), params,
                                         wanted, create_graph=create_graph)
        else:
            loss = loss_fn(params, step)
            grads = (gradients_through(loss, wanted, create_graph=create_graph)
                     if isinstance(loss, Through)
                     else gradients(loss, wanted, create_graph=create_graph))
        if skip and keep_zero:  # the skipped weights stay as they are
            moved = update(step, wanted, grads)
            if not track:
                moved = detached(moved, batched=batched)
            params = {n: moved[n] if n in moved else p.view_as(p) if create_graph else p
                      for n, p in params.items()}
        else:
            grads.update({n: torch.zeros_like(params[n]) for n in skip})
            params = update(step, params, {n: grads[n] for n in params})
            if not track:
                params = detached(params, batched=batched)
        yield params

"""The tasks of a meta-batch at once: a learner's episode loss under `torch.func.vmap` over a
stack of episodes.

The trainer processes a meta-batch in one of two ways (``task_batching``): ``loop`` runs the
episodes one after the other, each backpropagated on its own (the fastest and leanest way on
CPU, see ``benchmarks/meta_learners.py``); ``vmap`` stacks a chunk of episodes along a new
leading axis and runs the learner's `loss` once for all of them under `torch.func.vmap`, its
inner loop differentiated with `torch.func.grad`, and backpropagates the chunk's losses
together (one graph per chunk, never one for the whole meta-batch). Both
compute the same losses and meta-gradients up to rounding.

vmap runs every sample through every encoder (it cannot skip absent rows, whose number is
data), so a chunk is batched only when its episodes are *complete*: every sample has every
modality the episodes carry. A BatchNorm layer would otherwise see the absent rows' zeros
in its statistics. Other chunks fall back to the loop, which masks absent modalities
exactly (`batchable`).

Modules that must behave differently under vmap over tasks (the optimisation-based learners,
encoders, `MaskedBatchNorm`, the attention fusion) declare an ``under_task_vmap`` mode, as
``training`` is declared by every module; `vmap_ready` switches it on for the duration of the
vmapped call, as ``module.train()`` switches ``training``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

from metamodal.data.batch import Batch, Episode, ModalityBatch, all_present, cat_batches
from metamodal.encoders.base import Encoder
from metamodal.errors import ConfigError, DatasetError
from metamodal.learners.base import check_support
from metamodal.learners.inner_loop import task_batch_norm

TASK_BATCHING = ("auto", "loop", "vmap")
"""The choices of ``task_batching``: ``auto`` picks per device (`resolve_task_batching`)."""


def uses_vmap(choice: str, device: torch.device, learner: nn.Module, backbone: nn.Module,
              *, aligns: bool = False) -> bool:
    """Whether meta-training batches the tasks of a meta-batch with vmap: ``choice``
    ``"vmap"``, or ``"auto"`` on CUDA (on CPU ``auto`` is the loop, measured faster and leaner
    there by ``benchmarks/meta_learners.py``), when the model can (`obstacles`) and no
    alignment loss is trained beside the learner's.

    Raises:
        ConfigError: ``choice`` is not one of `TASK_BATCHING`, or it is ``"vmap"`` and the
            model or the alignment loss cannot be batched (names why).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="maml")
        >>> uses_vmap("auto", torch.device("cpu"), model.learner, model.backbone)
        False
        >>> uses_vmap("vmap", torch.device("cpu"), model.learner, model.backbone)
        True
    """
    if choice not in TASK_BATCHING:
        raise ConfigError(f"unknown task_batching {choice!r}", column="task_batching",
                          fix="use 'auto', 'loop' or 'vmap'")
    found = obstacles(learner, backbone) + (["the alignment loss is computed per episode"]
                                             if aligns else [])
    if choice == "vmap" and found:
        fixes = ["use task_batching = 'loop' (or 'auto')"]
        if aligns:
            fixes.append("train without the alignment loss (align_weight = 0)")
        if len(found) > aligns:
            fixes.append("a learner of the MAML family with encoders that can be batched "
                         "(not gru)")
        raise ConfigError("task_batching = 'vmap' is not available: " + "; ".join(found),
                          column="task_batching", fix=", or ".join(fixes))
    return not found and (choice == "vmap" or (choice == "auto" and device.type == "cuda"))


def batchable(episodes: Sequence[Episode]) -> bool:
    """Whether ``episodes`` can run under vmap together and give what the loop gives: they
    have the same modalities and sizes, and every sample has every modality (one check per
    modality batch).

    Example:
        >>> full = {"m": ModalityBatch(torch.zeros(2, 3), torch.ones(2, dtype=torch.bool))}
        >>> labels = torch.tensor([0, 1])
        >>> episode = Episode(full, full, labels, labels, ["a", "b"], ["1", "2"], ["3", "4"])
        >>> batchable([episode, episode])
        True
    """
    first = episodes[0]
    for episode in episodes:
        if episode.ways != first.ways:
            return False
        for side, reference in ((episode.support, first.support), (episode.query, first.query)):
            if set(side) != set(reference) or any(len(side[m]) != len(reference[m])
                                                  for m in side):
                return False
            if not all(all_present(mb.present) for mb in side.values()):
                return False
    return True


def stack_batches(batches: Sequence[Batch]) -> dict[str, tuple[Tensor, ...]]:
    """Batches of equal size ``B`` stacked along a new leading task axis, as plain tensors
    for vmap: modality name -> ``(values [T, B, ...], present [T, B])``, with ``lengths
    [T, B]`` appended where the kind has lengths. Values are zero-padded to the longest along
    every axis (as `cat_batches` pads).

    Example:
        >>> ok = torch.ones(2, dtype=torch.bool)
        >>> a = {"t": ModalityBatch(torch.ones(2, 3), ok, torch.tensor([3, 1]))}
        >>> b = {"t": ModalityBatch(torch.ones(2, 5), ok, torch.tensor([5, 2]))}
        >>> [tuple(x.shape) for x in stack_batches([a, b])["t"]]
        [(2, 2, 5), (2, 2), (2, 2)]
    """
    joined = cat_batches(batches)
    tasks = len(batches)
    out: dict[str, tuple[Tensor, ...]] = {}
    for name, mb in joined.items():
        parts = [mb.values.unflatten(0, (tasks, -1)), mb.present.unflatten(0, (tasks, -1))]
        if mb.lengths is not None:
            parts.append(mb.lengths.unflatten(0, (tasks, -1)))
        out[name] = tuple(parts)
    return out


def _unstacked(stacked: dict[str, tuple[Tensor, ...]]) -> Batch:
    """One task's batch from `stack_batches`' tensors (under vmap: the task axis removed)."""
    return {name: ModalityBatch(*parts) for name, parts in stacked.items()}


def obstacles(learner: nn.Module, backbone: nn.Module) -> list[str]:
    """Why ``learner`` and ``backbone`` cannot run under vmap over tasks (empty: they can).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="protonet")
        >>> obstacles(model.learner, model.backbone)
        ['learner ProtoNet runs each episode on its own']
    """
    found = []
    if not learner.capabilities().batches_tasks:
        found.append(f"learner {type(learner).__name__} runs each episode on its own")
    for name, encoder in getattr(backbone, "encoders", {}).items():
        if not encoder.batches_tasks:
            found.append(f"encoder {type(encoder).__name__} of modality {name!r} reads "
                         "values on the host")
    return found


def _batch_norm(layer: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """``layer(x)`` with the batch's own statistics (as inside `task_batch_norm`), written out:
    torch's batching rule for BatchNorm's double backward with affine weights gives wrong
    second-order gradients under vmap. ``x`` ``[B, C, ...]``."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    mean = x.mean(dims, keepdim=True)
    centred = x - mean
    out = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + layer.eps)
    if layer.affine:
        out = out * layer.weight.view(shape) + layer.bias.view(shape)
    return out


def _layer_norm(layer: nn.LayerNorm, x: Tensor) -> Tensor:
    """``layer(x)`` written out, for the same reason as `_batch_norm`."""
    dims = list(range(x.dim() - len(layer.normalized_shape), x.dim()))
    centred = x - x.mean(dims, keepdim=True)
    out = centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + layer.eps)
    if layer.elementwise_affine:
        out = out * layer.weight
        if layer.bias is not None:
            out = out + layer.bias
    return out


def _written_out_forward(layer: nn.Module, written_out: Callable[..., Tensor]) -> partial:
    """``partial(written_out, layer)``, the same object at every call for one layer (kept on
    the layer), so that a `torch.compile`'d meta-update, which checks which ``forward`` a
    layer has, finds the same one every time and does not compile again."""
    found = vars(layer).get("_task_vmap_forward")
    if found is None or found.func is not written_out:
        found = partial(written_out, layer)
        vars(layer)["_task_vmap_forward"] = found
    return found


def _kept_tensors(module: nn.Module) -> dict[tuple[nn.Module, str], object]:
    """Tensors (or tuples of them) that ``module``'s submodules keep as plain attributes (the
    gated fusion's ``last_weights``, the LSTM optimiser's state): attribute -> value."""
    kept = {}
    for sub in module.modules():
        for name, value in vars(sub).items():
            if isinstance(value, Tensor) or (isinstance(value, tuple) and value
                                             and all(isinstance(v, Tensor) for v in value)):
                kept[sub, name] = value
    return kept


def vmap_modes(*modules: nn.Module) -> list[nn.Module]:
    """The submodules of ``modules`` whose class declares the ``under_task_vmap`` mode.

    Example:
        >>> from metamodal.learners import learners
        >>> [type(m).__name__ for m in vmap_modes(learners.create("maml", dim=4))]
        ['MAML']
    """
    return [sub for module in modules for sub in module.modules()
            if hasattr(type(sub), "under_task_vmap")]


@contextmanager
def vmap_ready(learner: nn.Module, backbone: nn.Module) -> Iterator[None]:
    """Inside the block ``learner`` and ``backbone`` run under vmap over tasks as they run
    outside on complete batches: every module that declares the ``under_task_vmap`` mode
    (`vmap_modes`) has it on, so that the learner's inner loop differentiates with
    `torch.func.grad` and no layer queries memory formats; every `Encoder` encodes all rows of
    a batch and zeroes the absent ones afterwards (``skip_absent = False``; vmap cannot skip
    rows whose number is data), and every BatchNorm and LayerNorm layer is written out
    (`_batch_norm`, `_layer_norm`). The modes are put back afterwards, and so are tensors the
    modules keep as attributes: those set inside exist only within vmap and could not be
    read, copied or saved.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="maml")
        >>> with vmap_ready(model.learner, model.backbone):
        ...     inside = model.learner.under_task_vmap
        >>> inside, model.learner.under_task_vmap
        (True, False)
    """
    kept = {**_kept_tensors(learner), **_kept_tensors(backbone)}
    modes = [(module, module.under_task_vmap) for module in vmap_modes(learner, backbone)]
    encoders = [(m, m.skip_absent) for m in backbone.modules() if isinstance(m, Encoder)]
    norms = [(m, _batch_norm if isinstance(m, nn.modules.batchnorm._BatchNorm) else _layer_norm)
             for m in backbone.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm | nn.LayerNorm)]
    for module, _ in modes:
        module.under_task_vmap = True
    for encoder, _ in encoders:
        encoder.skip_absent = False
    for norm, written_out in norms:
        norm.forward = _written_out_forward(norm, written_out)
    try:
        yield
    finally:
        for module, mode in modes:
            module.under_task_vmap = mode
        for encoder, skip in encoders:
            encoder.skip_absent = skip
        for norm, _ in norms:
            del norm.forward
        for module in (learner, backbone):
            for (sub, name), _ in _kept_tensors(module).items():
                setattr(sub, name, kept.get((sub, name)))


StackedTasks = tuple[dict[str, tuple[Tensor, ...]], dict[str, tuple[Tensor, ...]], Tensor, Tensor]
"""What `stack_episodes` returns: support and query (`stack_batches`), support labels
``[T, S]`` and query labels ``[T, Q]``."""
TaskRunner = Callable[..., tuple[Tensor, Tensor]]
"""``run(support, query, support_labels, query_labels) -> (losses [T], logits [T, Q, ways])``
over `StackedTasks`: `vmapped_loss`'s function, or the same compiled."""


def stack_episodes(episodes: Sequence[Episode], *, checked: bool = False) -> StackedTasks:
    """The tensors of ``T`` episodes stacked along a new task axis, for `vmapped_loss`'s
    function, after checking that they can run under vmap together (unless ``checked``: the
    caller has checked them with `batchable` and `check_support`, e.g. on the host before
    moving them to a GPU, where reading them would wait for the device).

    Raises:
        DatasetError: the episodes are not `batchable` (or there are none); an episode's
            support labels (checked here, before batching).
        InsufficientSamplesError: a class of an episode has no support sample.
    """
    if not episodes or not (checked or batchable(episodes)):
        raise DatasetError(
            "these episodes cannot be batched: they differ in ways, modalities or sizes, or a "
            "sample lacks a modality", fix="check them with batchable() and run the others "
            "one by one through model.loss(episode)")
    for episode in episodes if not checked else ():
        check_support(episode.support_labels, episode.ways)
    return (stack_batches([e.support for e in episodes]),
            stack_batches([e.query for e in episodes]),
            torch.stack([e.support_labels for e in episodes]),
            torch.stack([e.query_labels for e in episodes]))


def vmapped_loss(learner: nn.Module, backbone: nn.Module, ways: int) -> TaskRunner:
    """The learner's `loss` of ``ways``-way episodes as one function of tensors under
    `torch.func.vmap` over tasks (what `batched_losses` runs; `torch.compile` can capture it
    whole: inner loop, query loss and, through its backward, the meta-gradient). Call it
    inside `task_batch_norm` and `vmap_ready` of the same modules.

    The episodes it rebuilds carry placeholder class names and sample ids (``"0"``, ``"s0"``,
    ...): the learners that batch tasks read neither, and a compiled function then depends on
    the episodes' sizes only.

    Example:
        >>> from metamodal.model import FewShotModel
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean", learner="maml")
        >>> present = torch.ones(2, dtype=torch.bool)
        >>> side = {"m": ModalityBatch(torch.randn(2, 3), present)}
        >>> labels = torch.tensor([0, 1])
        >>> tasks = [Episode(side, side, labels, labels, ["a", "b"], ["1", "2"], ["3", "4"])] * 3
        >>> run = vmapped_loss(model.learner, model.backbone, ways=2)
        >>> with task_batch_norm(model.backbone), vmap_ready(model.learner, model.backbone):
        ...     losses, logits = run(*stack_episodes(tasks))
        >>> tuple(losses.shape), tuple(logits.shape)
        ((3,), (3, 2, 2))
    """
    classes = [str(k) for k in range(ways)]

    def one_task(support: dict[str, tuple[Tensor, ...]], query: dict[str, tuple[Tensor, ...]],
                 support_labels: Tensor, query_labels: Tensor) -> tuple[Tensor, Tensor]:
        episode = Episode(_unstacked(support), _unstacked(query), support_labels, query_labels,
                          classes, [f"s{i}" for i in range(support_labels.shape[0])],
                          [f"q{i}" for i in range(query_labels.shape[0])])
        return learner.loss(backbone, episode)

    def run(support: dict[str, tuple[Tensor, ...]], query: dict[str, tuple[Tensor, ...]],
            support_labels: Tensor, query_labels: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.vmap(one_task, randomness="different")(
            support, query, support_labels, query_labels)

    return run


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; from the host to a GPU through pinned memory without waiting
    (``non_blocking``), so that the host does not wait for the GPU's queued work to copy.

    Example:
        >>> to_device(torch.ones(2), torch.device("cpu")).device
        device(type='cpu')
    """
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def batched_losses(learner: nn.Module, backbone: nn.Module, episodes: Sequence[Episode],
                   *, run: TaskRunner | None = None, checked: bool = False,
                   device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The training losses ``[T]`` and query logits ``[T, Q, ways]`` of ``T`` episodes, the
    learner's `loss` run once under `torch.func.vmap` over the stacked episodes.

    Args:
        learner: a learner whose capabilities say ``batches_tasks`` (the MAML family).
        backbone: the encoders and fusion.
        episodes: `batchable` episodes.
        run: `vmapped_loss`'s function for these modules and the episodes' ways, or the same
            compiled (`metamodal.train.acceleration.MetaLossCompiler`); default: a new one.
        checked: the caller has checked the episodes (see `stack_episodes`).
        device: move the stacked tensors there (episodes on the host are stacked there and
            copied in one transfer per tensor, not one per episode).

    Raises:
        DatasetError: the episodes are not `batchable` (or there are none); an episode's
            support labels (checked here, before batching).
        InsufficientSamplesError: a class of an episode has no support sample.
    """
    stacked = stack_episodes(episodes, checked=checked)
    if device is not None:
        support, query, support_labels, query_labels = stacked
        stacked = ({m: tuple(to_device(t, device) for t in parts) for m, parts in support.items()},
                   {m: tuple(to_device(t, device) for t in parts) for m, parts in query.items()},
                   to_device(support_labels, device), to_device(query_labels, device))
    if run is None:
        run = vmapped_loss(learner, backbone, episodes[0].ways)
    with task_batch_norm(backbone), vmap_ready(learner, backbone):
        return run(*stacked)


def chunk_sizes(total: int, most: int) -> list[int]:
    """``total`` tasks cut into the fewest chunks of at most ``most``, as even as can be
    (sizes differ by at most one, larger first): at most two shapes for a compiled
    meta-update, and no small last chunk.

    Example:
        >>> chunk_sizes(32, 30), chunk_sizes(10, 4), chunk_sizes(3, 8)
        ([16, 16], [4, 3, 3], [3])
    """
    if total < 1 or most < 1:
        raise ValueError(f"chunk_sizes needs positive counts, got {total} and {most}")
    count = -(-total // most)
    small, extra = divmod(total, count)
    return [small + 1] * extra + [small] * (count - extra)

"""Meta-learner benchmark: seconds per meta-update and peak memory of metamodal's MAML and
ProtoNet against learn2learn, higher and plain PyTorch, with a check that every side computes
the same meta-gradient.

Four workloads on Omniglot-shaped random data (images ``[1, 28, 28]``), run with
``torch.set_num_threads(2)`` by default:

W1  MAML, 5-way 1-shot 15 queries, conv4 (64 filters per block, as Finn et al. 2017), meta-batch
    32, 1 inner step, second order;
W2  the same with 5 inner steps, first order;
W3  ProtoNet, 20-way 5-shot 15 queries, conv4, one episode per update (as Snell et al. 2017);
W4  MAML on frozen 512-d features: an MLP 512-256-64, meta-batch 64, 5 inner steps, second
    order.

A meta-update is what `metamodal.train.trainer.Trainer` does: for each of the meta-batch's
tasks, the query loss divided by the meta-batch size is backpropagated on its own (only one
task's graph is alive at a time), then one optimiser step (Adam, lr 1e-3, on every side; the
trainer's AdamW costs the same). The sides:

- ``metamodal``: `FewShotModel.build(...)` with learner ``maml`` (or ``protonet``);
  ``loss, _ = model.loss(episode)`` on `Episode` objects built before timing.
- ``metamodal vmap``: the same model with the trainer's ``task_batching = "vmap"``: chunks of
  tasks under `torch.func.vmap` (`metamodal.learners.task_batching`), one backward per chunk,
  sized as the trainer sizes them (``vmap_chunk = 0``: `metamodal.train.acceleration.ChunkPlan`,
  from the device's free memory on CUDA). Which of the two is faster on the device decides
  ``task_batching = "auto"``.
- ``metamodal compiled``: ``metamodal vmap`` with the trainer's ``compile = true``: each
  chunk's meta-loss compiled whole by `torch.compile` (`MetaLossCompiler`; mode
  ``reduce-overhead``, CUDA graphs, on CUDA). Compilation happens in the warm-up updates.
- ``learn2learn``: ``l2l.algorithms.MAML`` (``clone()``, ``adapt(loss)``) around the *same*
  backbone module (metamodal's conv4 / MLP encoder and mean fusion) plus a zero-initialised
  ``nn.Linear(D, ways)``.
- ``higher``: ``higher.innerloop_ctx(module, SGD, copy_initial_weights=False)`` around the same
  module. higher has no first-order switch: for W2 its inner gradients are detached in
  ``grad_callback`` (the double-backward graph is still built, as it always is in higher).
- ``plain loop``: the network written again in plain PyTorch (``nn.Sequential``, weights
  copied from metamodal's), the inner loop with `torch.func.functional_call` and
  ``torch.autograd.grad(create_graph=True)``, one backward per task.
- ``vmap``: the same plain network, all tasks of the meta-batch at once with
  ``torch.func.vmap`` over ``torch.func.grad`` (its BatchNorm layers keep no running statistics,
  which vmap cannot update in place; one graph for all tasks).

metamodal's MAML starts every task's output layer at zero and does not meta-learn it (see
`metamodal.learners.gradient`). The peers wrap a zero-initialised ``nn.Linear`` that is left out
of their optimiser, so every task starts from zero there too and every side computes the same
mathematics; the meta-gradients compared are those of the backbone's weights only (the peers also
compute one for the ``Linear``, which metamodal does not have). BatchNorm normalises with the
statistics of the batch it sees on every side (the peers and the plain loop also update the
running statistics, which nothing reads).

Each side runs in its own process (the script calls itself with ``--side NAME --workload W``), so
that the peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``) is that side's alone; it
includes the Python interpreter, torch and the data (the "RSS at start" column is the peak before
the first update). After timing, each process computes the meta-gradient of ``--check-tasks``
tasks in float64 from the same initial weights and data; the table shows its largest absolute
difference from metamodal's, and the script fails when one exceeds 1e-9 times the largest
gradient entry (at least 1e-9).

Run::

    python benchmarks/meta_learners.py                       # metamodal (both), plain, vmap
    bash benchmarks/setup_learn2learn.sh .l2l-env            # once: learn2learn + higher
    .l2l-env/bin/python benchmarks/meta_learners.py          # every side
    python benchmarks/meta_learners.py --device cuda         # on a GPU
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from text_table import print_table
from torch import Tensor, nn
from torch.func import functional_call

from metamodal.config import TrainConfig
from metamodal.data.batch import Episode, ModalityBatch
from metamodal.learners.task_batching import batched_losses
from metamodal.model import FewShotModel
from metamodal.train import acceleration
from metamodal.train.acceleration import ChunkPlan, MetaLossCompiler

SIDES = ("metamodal", "metamodal vmap", "metamodal compiled", "learn2learn", "higher",
         "plain loop", "vmap")
OURS = ("metamodal", "metamodal vmap", "metamodal compiled")
"""metamodal's ways through a meta-batch (``task_batching`` ``loop`` and ``vmap``, and
``vmap`` with ``compile``)."""
VMAP_CHUNK = TrainConfig.vmap_chunk
"""``vmap_chunk`` of the ``metamodal vmap`` side: the trainer's default (0: sized by
`ChunkPlan`)."""
PEERS = {"learn2learn": "learn2learn", "higher": "higher"}
"""Side name -> the module it imports."""
SETUP_HINT = ("to compare with learn2learn and higher: bash benchmarks/setup_learn2learn.sh "
              ".l2l-env, then .l2l-env/bin/python benchmarks/meta_learners.py")
RESULT = "RESULT "
"""Prefix of the line a side's process prints its JSON result on."""
RSS_SLACK, RSS_SLACK_MB = 0.02, 5.0
"""Peak RSS counts as "no more" within 2% or 5 MB (run-to-run noise of the measurement)."""
TOLERANCE = 1e-9
"""Largest float64 meta-gradient difference accepted, relative to the largest entry."""


# --- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """One benchmark setting.

    Args:
        key: ``W1``..``W4``.
        learner: ``maml`` or ``protonet``.
        ways, shots, queries: the episode (``queries`` per class).
        meta_batch: tasks per meta-update.
        inner_steps, inner_lr, first_order: MAML's inner loop.
        images: conv4 on ``[1, 28, 28]`` images, else an MLP on ``features``-d vectors.
        hidden: conv4 filters per block, or the MLP's hidden widths.
        features: input width of the MLP workload.
        dim: embedding width ``D`` (the output layer is ``D -> ways``).
    """

    key: str
    learner: str
    ways: int
    shots: int
    queries: int
    meta_batch: int
    inner_steps: int = 1
    inner_lr: float = 0.4
    first_order: bool = False
    images: bool = True
    hidden: tuple[int, ...] = (64,)
    features: int = 512
    dim: int = 64

    @property
    def modality(self) -> str:
        return "image" if self.images else "features"

    @property
    def maml(self) -> bool:
        return self.learner == "maml"

    def network(self) -> str:
        """The network in words, for the table's title."""
        if self.images:
            h = self.hidden[0]
            body = (f"conv4 ({h} filters per block, 28->14->7->3->1, flatten {h}) -> "
                    f"linear {h}-{self.dim}")
        else:
            body = "MLP " + "-".join(str(w) for w in (self.features, *self.hidden, self.dim))
        if self.maml:
            return f"{body}, per-task output layer {self.dim}-{self.ways} (starts at 0)"
        return f"{body}, prototypes, -squared distances"

    def describe(self) -> str:
        """One line: the workload's learner, episode and meta-batch."""
        episode = f"{self.ways}-way {self.shots}-shot {self.queries} queries"
        if not self.maml:
            return f"{self.key} ProtoNet, {episode}, meta-batch {self.meta_batch}"
        order = "first order" if self.first_order else "second order"
        steps = f"{self.inner_steps} inner step{'s' if self.inner_steps > 1 else ''}"
        return (f"{self.key} MAML, {episode}, meta-batch {self.meta_batch}, {steps} "
                f"(lr {self.inner_lr}), {order}")


WORKLOADS = {
    "W1": Workload("W1", "maml", 5, 1, 15, 32, inner_steps=1, first_order=False),
    "W2": Workload("W2", "maml", 5, 1, 15, 32, inner_steps=5, first_order=True),
    "W3": Workload("W3", "protonet", 20, 5, 15, 1),
    "W4": Workload("W4", "maml", 5, 1, 15, 64, inner_steps=5, inner_lr=0.1, first_order=False,
                   images=False, hidden=(256,)),
}
VMAP_WORKLOADS = ("W1", "W2", "W4")


def tiny(workload: Workload) -> Workload:
    """The workload at a size a test runs in seconds (same code paths)."""
    if workload.maml:
        return replace(workload, queries=2, meta_batch=2, hidden=(8,) if workload.images
                       else (16,), features=32, dim=8)
    return replace(workload, ways=5, shots=2, queries=2, hidden=(8,), dim=8)


def sides_for(workload: Workload) -> dict[str, str | None]:
    """Side name -> None when it runs this workload, else why it does not."""
    out: dict[str, str | None] = {}
    for side in SIDES:
        if side in PEERS and not workload.maml:
            out[side] = f"not applicable: {side} has no ProtoNet learner"
        elif side in ("metamodal vmap", "metamodal compiled") and not workload.maml:
            out[side] = "not applicable: ProtoNet runs each episode on its own"
        elif side == "vmap" and workload.key not in VMAP_WORKLOADS:
            out[side] = "not measured (W1, W2, W4 only)"
        else:
            out[side] = None
    return out


# --- data -----------------------------------------------------------------------------------


@dataclass
class Task:
    """One task's tensors (support grouped by class, labels ``0..ways-1``) and the same task
    as a metamodal `Episode`."""

    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor
    episode: Episode


def make_tasks(workload: Workload, n: int, seed: int, dtype: torch.dtype,
               device: torch.device) -> list[Task]:
    """``n`` tasks of random inputs (``randn``), the same for every side given ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 28, 28) if workload.images else (workload.features,)
    ways = workload.ways
    tasks = []
    for t in range(n):
        xs = torch.randn(ways * workload.shots, *shape, generator=generator, dtype=dtype)
        xq = torch.randn(ways * workload.queries, *shape, generator=generator, dtype=dtype)
        xs, xq = xs.to(device), xq.to(device)
        ys = torch.arange(ways, device=device).repeat_interleave(workload.shots)
        yq = torch.arange(ways, device=device).repeat_interleave(workload.queries)

        def batch(x: Tensor) -> dict[str, ModalityBatch]:
            present = torch.ones(len(x), dtype=torch.bool, device=device)
            return {workload.modality: ModalityBatch(x, present)}

        episode = Episode(
            batch(xs), batch(xq), ys, yq, [f"class{k}" for k in range(ways)],
            [f"t{t}s{i}" for i in range(len(xs))], [f"t{t}q{i}" for i in range(len(xq))],
        )
        tasks.append(Task(xs, ys, xq, yq, episode))
    return tasks


# --- the network, built the same way on every side ------------------------------------------


def build_model(workload: Workload, seed: int) -> FewShotModel:
    """metamodal's model; every side starts from its initial weights (same ``seed``)."""
    torch.manual_seed(seed)
    if workload.images:
        kinds = {"image": "image"}
        info = {"image": {"channels": 1, "height": 28, "width": 28}}
        encoders = {"image": "conv4"}
        encoder_options = {"image": {"hidden": workload.hidden[0]}}
    else:
        kinds = {"features": "tabular"}
        info = {"features": {"features": workload.features}}
        encoders = {"features": "mlp"}
        encoder_options = {"features": {"hidden": list(workload.hidden)}}
    if workload.maml:
        options: dict[str, Any] = {"inner_steps": workload.inner_steps,
                                   "inner_lr": workload.inner_lr,
                                   "first_order": workload.first_order}
    else:
        options = {}
    return FewShotModel.build(kinds=kinds, input_info=info, dim=workload.dim, encoders=encoders,
                              encoder_options=encoder_options, fusion="mean",
                              learner=workload.learner, learner_options=options)


def plain_network(workload: Workload, model: FewShotModel) -> nn.Sequential:
    """The backbone written in plain PyTorch, with the weights of ``model``'s backbone
    (parameters in the same order)."""
    layers: list[nn.Module] = []
    if workload.images:
        channels, h = 1, workload.hidden[0]
        for _ in range(4):
            layers += [nn.Conv2d(channels, h, 3, padding=1), nn.BatchNorm2d(h), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = h
        layers += [nn.Flatten(), nn.Linear(h, workload.dim)]
    else:
        size = workload.features
        for width in workload.hidden:
            layers += [nn.Linear(size, width), nn.ReLU()]
            size = width
        layers.append(nn.Linear(size, workload.dim))
    ours = list(model.backbone.parameters())
    net = nn.Sequential(*layers).to(device=ours[0].device, dtype=ours[0].dtype)
    theirs = list(net.parameters())
    assert [p.shape for p in ours] == [p.shape for p in theirs], "plain network differs"
    with torch.no_grad():
        for mine, copy in zip(ours, theirs, strict=True):
            copy.copy_(mine)
    return net


class PeerNetwork(nn.Module):
    """metamodal's backbone and a zero-initialised output layer, as one plain module whose
    ``forward`` takes the input tensor (what learn2learn and higher adapt).

    Args:
        backbone: ``model.backbone`` (encoders + fusion).
        modality: the one modality's name.
        dim: the backbone's output width ``D``.
        ways: classes per task.
    """

    def __init__(self, backbone: nn.Module, modality: str, dim: int, ways: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.modality = modality
        reference = next(backbone.parameters())
        self.head = nn.Linear(dim, ways, device=reference.device, dtype=reference.dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        present = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        z = self.backbone({self.modality: ModalityBatch(x, present)}).z
        return self.head(z)


# --- the sides: each builds its network and returns accumulate(tasks) -------------------------


@dataclass
class Side:
    """One side, ready to run.

    Args:
        accumulate: adds the meta-gradient of the given tasks (each task's loss divided by the
            count) to ``.grad`` of the meta-learned weights.
        optimizer: the outer optimiser (Adam, lr 1e-3, over the backbone's weights).
        compared: the backbone's weights in metamodal's order, whose gradients are compared.
        note: how this side was set up, for the notes under the table (a function: read
            after timing, when it can say what happened, e.g. a compilation given up).
    """

    accumulate: Callable[[list[Task]], None]
    optimizer: torch.optim.Optimizer
    compared: list[Tensor]
    note: str | Callable[[], str] = ""


def adam(parameters: Sequence[Tensor]) -> torch.optim.Optimizer:
    """The outer optimiser of every side."""
    return torch.optim.Adam(parameters, lr=1e-3)


def side_metamodal(workload: Workload, model: FewShotModel) -> Side:
    """metamodal's side: ``model.loss(episode)`` per task, as the trainer does."""
    model.train()

    def accumulate(tasks: list[Task]) -> None:
        for task in tasks:
            loss, _ = model.loss(task.episode)
            (loss / len(tasks)).backward()

    return Side(accumulate, adam(list(model.parameters())), list(model.backbone.parameters()))


def side_metamodal_vmap(workload: Workload, model: FewShotModel, *,
                        compile: bool = False) -> Side:
    """metamodal's side with ``task_batching = "vmap"``: chunks of tasks under
    `torch.func.vmap` (`batched_losses`), sized by `ChunkPlan` from the trainer's default
    ``vmap_chunk``, one backward per chunk, as the trainer does; with ``compile`` each
    chunk's meta-loss compiled (`MetaLossCompiler`)."""
    model.train()
    device = next(model.parameters()).device
    plan = ChunkPlan(VMAP_CHUNK, workload.meta_batch, device)
    compiler = MetaLossCompiler(model.learner, model.backbone, device, enabled=compile)

    def accumulate(tasks: list[Task]) -> None:
        for chunk in plan.chunks([task.episode for task in tasks]):
            losses, _ = batched_losses(model.learner, model.backbone, chunk,
                                       run=None if plan.probing
                                       else compiler.runner(chunk[0].ways))
            (losses.sum() / len(tasks)).backward()

    def note() -> str:
        how = ("chunks sized by the trainer's rule (vmap_chunk = 0)" if not VMAP_CHUNK
               else f"{VMAP_CHUNK} tasks per vmap call")
        how += f", at most {plan.size} tasks a chunk" if plan.size else ""
        if compile:
            how += (", torch.compile(fullgraph=True"
                    + (", mode='reduce-overhead'" if compiler.mode else "")
                    + (f", backend={acceleration.BACKEND!r}"
                       if acceleration.BACKEND != "inductor" else "") + ")"
                    + (f"; FELL BACK to eager: {compiler.failure}" if compiler.failure else ""))
        return f"task_batching = 'vmap': {how}, one backward per chunk"

    return Side(accumulate, adam(list(model.parameters())), list(model.backbone.parameters()),
                note)


def side_metamodal_compiled(workload: Workload, model: FewShotModel) -> Side:
    """``metamodal vmap`` with ``compile = true``."""
    return side_metamodal_vmap(workload, model, compile=True)


def import_peer(name: str) -> tuple[Any | None, str]:
    """The peer's module and a line about it (its version, or why it is not importable)."""
    module_name = PEERS[name]
    if importlib.util.find_spec(module_name) is None:
        return None, f"not importable: no module named {module_name!r}"
    stubbed: list[str] = []
    if name == "learn2learn":
        from data import install_stubs  # benchmarks/data.py: stand-ins for gym, torchvision

        stubbed = install_stubs()
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any import failure: the other sides still run
        message = str(err).splitlines()[0] if str(err) else ""
        return None, f"not importable: {type(err).__name__}: {message}"[:160]
    try:
        version = importlib.metadata.version(module_name)
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "?")
    extra = f", imported with stand-ins for {', '.join(stubbed)}" if stubbed else ""
    return module, f"{name} {version}{extra}"


def side_learn2learn(workload: Workload, model: FewShotModel) -> Side:
    """learn2learn's ``MAML`` around the backbone and a zero output layer."""
    l2l, line = import_peer("learn2learn")
    assert l2l is not None, line
    net = PeerNetwork(model.backbone, workload.modality, workload.dim, workload.ways)
    net.train()
    maml = l2l.algorithms.MAML(net, lr=workload.inner_lr, first_order=workload.first_order)

    def accumulate(tasks: list[Task]) -> None:
        for task in tasks:
            learner = maml.clone()
            for _ in range(workload.inner_steps):
                learner.adapt(F.cross_entropy(learner(task.xs), task.ys))
            (F.cross_entropy(learner(task.xq), task.yq) / len(tasks)).backward()

    backbone = list(model.backbone.parameters())
    return Side(accumulate, adam(backbone), backbone,
                f"{line}: MAML(module, lr={workload.inner_lr}, "
                f"first_order={workload.first_order}), clone() and adapt() per task")


def side_higher(workload: Workload, model: FewShotModel) -> Side:
    """higher's ``innerloop_ctx`` around the backbone and a zero output layer."""
    higher, line = import_peer("higher")
    assert higher is not None, line
    net = PeerNetwork(model.backbone, workload.modality, workload.dim, workload.ways)
    net.train()
    inner = torch.optim.SGD(net.parameters(), lr=workload.inner_lr)

    def detach(grads: Sequence[Tensor | None]) -> list[Tensor | None]:
        return [None if g is None else g.detach() for g in grads]

    callback = detach if workload.first_order else None

    def accumulate(tasks: list[Task]) -> None:
        for task in tasks:
            with higher.innerloop_ctx(net, inner, copy_initial_weights=False) as (fnet, opt):
                for _ in range(workload.inner_steps):
                    opt.step(F.cross_entropy(fnet(task.xs), task.ys), grad_callback=callback)
                (F.cross_entropy(fnet(task.xq), task.yq) / len(tasks)).backward()

    backbone = list(model.backbone.parameters())
    how = ("; first order: grad_callback detaches the inner gradients"
           if workload.first_order else "")
    return Side(accumulate, adam(backbone), backbone,
                f"{line}: innerloop_ctx(module, SGD(lr={workload.inner_lr}), "
                f"copy_initial_weights=False) per task{how}")


def plain_protonet_loss(net: nn.Module, task: Task, workload: Workload) -> Tensor:
    """ProtoNet's query loss: one pass over support and query, prototypes, squared
    distances."""
    z = net(torch.cat([task.xs, task.xq]))
    support, query = z[: len(task.xs)], z[len(task.xs):]
    prototypes = support.view(workload.ways, workload.shots, -1).mean(1)
    logits = -(query.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
    return F.cross_entropy(logits, task.yq)


def side_plain_loop(workload: Workload, model: FewShotModel) -> Side:
    """The plain-PyTorch network, inner loop and one backward per task."""
    net = plain_network(workload, model)
    net.train()
    params = dict(net.named_parameters())

    def logits(fast: dict[str, Tensor], x: Tensor) -> Tensor:
        backbone = {n: p for n, p in fast.items() if not n.startswith("head.")}
        return functional_call(net, backbone, (x,)) @ fast["head.weight"].T + fast["head.bias"]

    def task_loss(task: Task) -> Tensor:
        if not workload.maml:
            return plain_protonet_loss(net, task, workload)
        fast = dict(params)
        fast["head.weight"] = task.xs.new_zeros(workload.ways, workload.dim, requires_grad=True)
        fast["head.bias"] = task.xs.new_zeros(workload.ways, requires_grad=True)
        for _ in range(workload.inner_steps):
            loss = F.cross_entropy(logits(fast, task.xs), task.ys)
            grads = torch.autograd.grad(loss, list(fast.values()),
                                        create_graph=not workload.first_order)
            fast = {n: p - workload.inner_lr * g
                    for (n, p), g in zip(fast.items(), grads, strict=True)}
        return F.cross_entropy(logits(fast, task.xq), task.yq)

    def accumulate(tasks: list[Task]) -> None:
        for task in tasks:
            (task_loss(task) / len(tasks)).backward()

    weights = list(net.parameters())
    return Side(accumulate, adam(weights), weights,
                "nn.Sequential written again, weights copied from metamodal's; functional_call "
                "+ autograd.grad, one backward per task")


def side_vmap(workload: Workload, model: FewShotModel) -> Side:
    """The plain-PyTorch network, every task of the meta-batch at once under vmap."""
    assert workload.maml, "vmap side: MAML workloads only"
    net = plain_network(workload, model)
    torch.func.replace_all_batch_norm_modules_(net)  # no running statistics under vmap
    net.train()
    names = [n for n, _ in net.named_parameters()]
    weights = list(net.parameters())
    ways, dim, lr = workload.ways, workload.dim, workload.inner_lr

    def logits(fast: dict[str, Tensor], x: Tensor) -> Tensor:
        backbone = {n: fast[n] for n in names}
        return functional_call(net, backbone, (x,)) @ fast["head.weight"].T + fast["head.bias"]

    def query_loss(backbone: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor,
                   yq: Tensor) -> Tensor:
        fast = dict(backbone)
        fast["head.weight"] = xs.new_zeros(ways, dim)
        fast["head.bias"] = xs.new_zeros(ways)

        def support_loss(p: dict[str, Tensor]) -> Tensor:
            return F.cross_entropy(logits(p, xs), ys)

        for _ in range(workload.inner_steps):
            grads = torch.func.grad(support_loss)(fast)
            if workload.first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            fast = {n: p - lr * grads[n] for n, p in fast.items()}
        return F.cross_entropy(logits(fast, xq), yq)

    batched = torch.func.vmap(query_loss, in_dims=(None, 0, 0, 0, 0))

    def meta_loss(backbone: dict[str, Tensor], stacked: tuple[Tensor, ...]) -> Tensor:
        return batched(backbone, *stacked).mean()

    meta_grad = torch.func.grad(meta_loss)

    def accumulate(tasks: list[Task]) -> None:
        stacked = tuple(torch.stack([getattr(t, k) for t in tasks])
                        for k in ("xs", "ys", "xq", "yq"))
        grads = meta_grad({n: p.detach() for n, p in zip(names, weights, strict=True)},
                          stacked)
        for n, p in zip(names, weights, strict=True):
            p.grad = grads[n] if p.grad is None else p.grad + grads[n]

    return Side(accumulate, adam(weights), weights,
                "the plain network under torch.func.vmap over the meta-batch "
                "(torch.func.grad inside and outside; BatchNorm without running statistics), "
                "one graph for all tasks")


BUILDERS: dict[str, Callable[[Workload, FewShotModel], Side]] = {
    "metamodal": side_metamodal,
    "metamodal vmap": side_metamodal_vmap,
    "metamodal compiled": side_metamodal_compiled,
    "learn2learn": side_learn2learn,
    "higher": side_higher,
    "plain loop": side_plain_loop,
    "vmap": side_vmap,
}


# --- one side in its own process ------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (2^20 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock reads finished work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_side(args: argparse.Namespace) -> None:
    """Time one side on one workload, then compute its float64 check gradient; print the
    result as one JSON line and save the gradient to ``--grad-out``."""
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    acceleration.BACKEND = args.compile_backend
    workload = WORKLOADS[args.workload]
    if args.tiny:
        workload = tiny(workload)
    build = BUILDERS[args.side]

    tasks = make_tasks(workload, workload.meta_batch, args.seed, torch.float32, device)
    side = build(workload, build_model(workload, args.seed).to(device))
    start_rss = peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.repeats):
        synchronize(device)
        started = time.perf_counter()
        side.optimizer.zero_grad(set_to_none=True)
        side.accumulate(tasks)
        side.optimizer.step()
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    rss = peak_rss_mb()
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    note = side.note() if callable(side.note) else side.note
    del side, tasks

    check_tasks = make_tasks(workload, args.check_tasks, args.seed + 1, torch.float64, device)
    check = build(workload, build_model(workload, args.seed).to(device, torch.float64))
    for p in check.compared:
        p.grad = None
    check.accumulate(check_tasks)
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in check.compared]
    torch.save([g.cpu() for g in grads], args.grad_out)
    print(RESULT + json.dumps({
        "median": statistics.median(times), "times": times, "peak_rss_mb": rss,
        "start_rss_mb": start_rss, "gpu_peak_mb": gpu, "note": note,
    }), flush=True)


def launch(side: str, workload: str, args: argparse.Namespace, grad_out: Path
           ) -> dict[str, Any]:
    """Run one side in a fresh process; its result, or ``{"error": ...}``."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--side", side, "--workload", workload,
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads",
        str(args.threads), "--device", args.device, "--seed", str(args.seed), "--check-tasks",
        str(args.check_tasks), "--grad-out", str(grad_out), "--compile-backend",
        args.compile_backend,
    ] + (["--tiny"] if args.tiny else [])
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return {"error": lines[-1][:200] if lines else f"exit status {done.returncode}",
            "stderr": done.stderr[-3000:]}


# --- the comparison -------------------------------------------------------------------------


def gradient_difference(reference: list[Tensor], theirs: list[Tensor]) -> tuple[float, bool]:
    """Largest absolute difference and whether it is within `TOLERANCE` (relative to the
    largest entry of ``reference``, at least 1)."""
    assert [g.shape for g in reference] == [g.shape for g in theirs], "gradient shapes differ"
    difference = max(float((a - b).abs().max()) for a, b in zip(reference, theirs, strict=True))
    scale = max(1.0, max(float(g.abs().max()) for g in reference))
    return difference, difference <= TOLERANCE * scale


@dataclass
class Outcome:
    """What one workload's comparison found."""

    rows: list[list[str]]
    notes: list[str]
    summary: str
    mismatches: list[str]
    failures: list[tuple[str, str]]
    """(side, message) of every side whose process failed."""


def compare(key: str, args: argparse.Namespace, peers: dict[str, tuple[bool, str]],
            chosen: Sequence[str], tmp: Path) -> Outcome:
    """Run every side of workload ``key`` and build its table rows and summary."""
    workload = tiny(WORKLOADS[key]) if args.tiny else WORKLOADS[key]
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for side, why in sides_for(workload).items():
        if side not in chosen:
            continue
        if why is None and side in peers and not peers[side][0]:
            why = peers[side][1]
        if why is not None:
            skipped[side] = why
            continue
        grad_out = tmp / f"{key}-{side.replace(' ', '-')}.pt"
        started = time.perf_counter()
        results[side] = launch(side, key, args, grad_out)
        results[side]["grad_out"] = grad_out
        done = results[side]
        found = (f"median {done['median']:.4f} s/update" if "median" in done
                 else f"failed: {done['error']}")
        print(f"  {key} {side}: {found} ({time.perf_counter() - started:.0f} s)", flush=True)

    ours = results.get("metamodal", {})
    reference = torch.load(ours["grad_out"]) if "median" in ours else None
    rows, notes, mismatches, failures = [], [], [], []
    timed: dict[str, tuple[float, float]] = {}
    for side in SIDES:
        if side not in chosen:
            continue
        label = side
        if side in skipped:
            rows.append([side, skipped[side], "-", "-", "-", "-"]
                        + (["-"] if args.device != "cpu" else []))
            continue
        result = results[side]
        if "error" in result:
            failures.append((side, f"{key} {side}: {result['error']}\n{result.get('stderr', '')}"))
            rows.append([label, f"failed: {result['error'][:100]}", "-", "-", "-", "-"]
                        + (["-"] if args.device != "cpu" else []))
            continue
        if side == "metamodal":
            same = "reference"
        elif reference is None:
            same = "no reference"
        else:
            difference, ok = gradient_difference(reference, torch.load(result["grad_out"]))
            same = f"{difference:.1e}" + ("" if ok else " MISMATCH")
            if not ok:
                mismatches.append(f"{key} {side}: max |meta-gradient difference| {difference:.3e}")
        ratio = (f"{result['median'] / ours['median']:.2f}x" if "median" in ours else "-")
        row = [label, f"{result['median']:.4f}", ratio, f"{result['peak_rss_mb']:,.0f}",
               f"{result['start_rss_mb']:,.0f}", same]
        if args.device != "cpu":
            row.append(f"{result['gpu_peak_mb']:,.0f}")
        rows.append(row)
        timed[side] = (result["median"], result["peak_rss_mb"])
        if result.get("note"):
            notes.append(f"{side}: {result['note']}")
    return Outcome(rows, notes, summarize(key, timed), mismatches, failures)


def summarize(key: str, timed: dict[str, tuple[float, float]]) -> str:
    """One line: is metamodal faster than the fastest peer, at no more peak memory?"""
    if "metamodal" not in timed:
        return f"{key}: metamodal did not run"
    peers = {s: v for s, v in timed.items() if s not in OURS}
    batching = ""
    if "metamodal vmap" in timed:
        loop, vmap = timed["metamodal"][0], timed["metamodal vmap"][0]
        batching = (f"; task_batching on this device: {'loop' if loop <= vmap else 'vmap'} is "
                    f"faster ({loop:.4f} s loop, {vmap:.4f} s vmap)")
    if not peers:
        return f"{key}: no peer ran{batching}"
    best = min((s for s in timed if s in OURS), key=lambda s: timed[s][0])
    ours, our_rss = timed[best]
    fastest = min(peers, key=lambda s: peers[s][0])
    theirs, their_rss = peers[fastest]
    faster = ours < theirs
    less = our_rss <= their_rss + max(RSS_SLACK_MB, RSS_SLACK * their_rss)
    verdict = "YES" if faster and less else "NO"
    return (f"{key}: faster than the fastest peer at no more peak memory: {verdict} "
            f"(fastest of metamodal's ways: {best}, {ours:.4f} s/update, {our_rss:,.0f} MB; "
            f"fastest peer {fastest} "
            f"{theirs:.4f} s, {their_rss:,.0f} MB: metamodal {'faster' if faster else 'slower'}"
            f" by {abs(theirs / ours - 1) * 100:.0f}%, "
            f"{'no more' if less else 'more'} memory){batching}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated workloads (W1,W2,W3,W4)")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"comma-separated sides ({','.join(SIDES)})")
    parser.add_argument("--repeats", type=int, default=10,
                        help="timed meta-updates per side (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-updates first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--check-tasks", type=int, default=2,
                        help="tasks of the float64 meta-gradient check")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights and data")
    parser.add_argument("--compile-backend", default=acceleration.BACKEND,
                        help="torch.compile backend of the 'metamodal compiled' side "
                        "(aot_eager: the same graphs without generating kernels, for tests)")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny networks and meta-batches (for tests; same code paths)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--workload", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    parser.add_argument("--grad-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.check_tasks < 1:
        parser.error("--repeats and --check-tasks must be at least 1, --warmup at least 0")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    if args.side is not None:
        run_side(args)
        return
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    chosen = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [k for k in keys if k not in WORKLOADS] + [s for s in chosen if s not in SIDES]
    if unknown:
        parser.error(f"unknown workloads or sides: {unknown}")
    if "metamodal" not in chosen:
        chosen.insert(0, "metamodal")

    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"torch.set_num_threads({args.threads}), Python {sys.version.split()[0]}"
          + (", tiny sizes" if args.tiny else ""))
    peers: dict[str, tuple[bool, str]] = {}
    for peer in PEERS:
        if peer in chosen:
            module, line = import_peer(peer)
            peers[peer] = (module is not None, line)
            print(f"{peer}: {line}")
    if not all(ok for ok, _ in peers.values()):
        print(SETUP_HINT)
    print("each side runs in its own process; numbers vary by tens of per cent from run to run "
          "on a shared machine", flush=True)

    started = time.perf_counter()
    outcomes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in keys:
            outcome = compare(key, args, peers, chosen, Path(tmp))
            outcomes[key] = outcome
            workload = tiny(WORKLOADS[key]) if args.tiny else WORKLOADS[key]
            header = ["side", "median s/update", "time / metamodal's", "peak RSS MB",
                      "RSS at start MB", "max |meta-grad diff| (float64)"]
            if device.type == "cuda":
                header.append("peak GPU MB")
            print_table(
                f"{workload.describe()}\n{workload.network()}\nmedian of {args.repeats} "
                f"meta-updates after {args.warmup} warm-up", header, outcome.rows)
            for note in outcome.notes:
                print(f"  {note}")
    print(f"\nmeta-gradients compared: the backbone's weights, {args.check_tasks} tasks in "
          f"float64 from the same initial weights and data; accepted up to {TOLERANCE:g} x "
          "the largest entry (at least 1)")
    print("summary (fastest peer = the fastest other side that ran; peak RSS within 2% or 5 MB "
          "counts as no more):")
    for outcome in outcomes.values():
        print(f"  {outcome.summary}")
    print(f"total {time.perf_counter() - started:.0f} s")
    failures = [f for o in outcomes.values() for f in o.failures]
    mismatches = [m for o in outcomes.values() for m in o.mismatches]
    for _, failure in failures:
        print(f"\nFAILED {failure}", file=sys.stderr)
    for mismatch in mismatches:
        print(f"MISMATCH {mismatch}", file=sys.stderr)
    # A peer that fails at run time is reported in its row; metamodal's side and the plain
    # references are this project's code, so their failures (and any mismatch) fail the run.
    if mismatches or any(side not in PEERS for side, _ in failures):
        sys.exit(1)


if __name__ == "__main__":
    main()

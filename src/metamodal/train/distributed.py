"""Data-parallel meta-training over several processes and machines with `torch.distributed`.

A job is started by ``torchrun`` (PyTorch's elastic launcher), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every process it
starts; `join` reads them and joins the job's process group (gloo on CPUs, NCCL on GPUs).
Without them a process is a job of one (`Job.alone`), and nothing here communicates.

What a step of a job of ``W`` processes does (`Job.step`):

- the ``meta_batch`` tasks of the step, episodes ``step * meta_batch + i``, are cut into ``W``
  contiguous shards (`Job.shard`; ``W`` must divide ``meta_batch``), and each process
  backpropagates the tasks of its shard, each with ``loss / meta_batch``, exactly as one
  process does with all of them;
- one all-reduce (SUM) of the flattened gradients then gives every process the gradient of
  the whole meta-batch (an explicit all-reduce of the meta-gradient rather than
  `DistributedDataParallel`: a step is many backward passes, one per task, some through
  `torch.func` transforms that DDP's hooks do not see); a gradient that no process has stays
  ``None``, as in one process;
- the running statistics of BatchNorm layers, which each process moved over its own shard
  only, are composed in task order (`RunningStats`), so that they too end as one process
  leaves them;
- each task draws its randomness (dropout) from torch's generator seeded by ``(seed, task
  number)`` (`seed_task`), so that a task draws the same numbers in whichever process it runs.

This is synchronous data-parallel SGD with an all-reduce of the gradients, as in Li et al.,
2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel Training" (VLDB), with
the data being tasks. A run is therefore the same with 1 or ``W`` processes, up to the order
in which floating-point sums are taken. Every process then makes the same optimiser step,
so that the weights stay identical without being sent; only rank 0 writes the run directory,
its TensorBoard events and its checkpoints, and reads the checkpoint to resume from, which
it sends to the others (`Job.on_main`): a checkpoint of any world size resumes with any
other. Validation episodes are shared out among the processes and their predictions
gathered (`metamodal.evaluate.protocol.evaluate`'s ``shard``).

On start every process compares a fingerprint of its code (metamodal's sources, torch's
version), its settings and its decoded data with rank 0's (`Job.check_same`,
`Job.check_data`): a difference is a `ConfigError` naming what differs. A process that dies
stops the job: ``torchrun`` ends the others (and with ``--max-restarts N`` starts them again,
and training resumes from the last checkpoint, `Job.restarted`); a collective that waits
longer than ``dist_timeout`` seconds is a `RunError`.

Example:
    >>> job = Job.alone()
    >>> job.world_size, job.is_main, list(job.shard(range(8, 12)))
    (1, True, [8, 9, 10, 11])
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from metamodal.config import TrainConfig, resolve_device
from metamodal.errors import ConfigError, RunError
from metamodal.runs.prepared import PreparedData
from metamodal.version import __version__

log = logging.getLogger(__name__)

T = TypeVar("T")

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables ``torchrun`` sets in every process it starts (and that a job
started by other means must set too)."""

_GROUPS = itertools.count()
"""Numbers the process groups `join` makes in this process (the same on every process)."""

DEFAULT_TIMEOUT_S = 600.0
"""How long a collective may wait when no `TrainConfig` says (evaluation)."""

PER_PROCESS_KEYS = ("data", "init_from")
"""Settings that may differ between processes: paths, which may differ between machines (the
data they point to is compared by `Job.check_data`)."""


@dataclass(frozen=True)
class Launch:
    """What the launcher's environment says about this process.

    Args:
        rank: this process's number in the job, ``0 .. world_size - 1``.
        world_size: the number of processes of the job.
        local_rank: this process's number on its machine (its GPU).
        host: ``MASTER_ADDR``, where the job's store listens (``torchrun``'s agent on the
            first machine, or rank 0).
        port: ``MASTER_PORT``.
        restarts: how often ``torchrun`` restarted the job (``TORCHELASTIC_RESTART_COUNT``).
        agent_store: the store is ``torchrun``'s (``TORCHELASTIC_USE_AGENT_STORE``), rather
            than one that rank 0 starts.

    Example:
        >>> launch = Launch.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
        ...                                   "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})
        >>> launch.rank, launch.world_size, launch.address
        (1, 2, '10.0.0.1:29500')
        >>> Launch.from_environment({}) is None
        True
    """

    rank: int
    world_size: int
    local_rank: int
    host: str
    port: int
    restarts: int = 0
    agent_store: bool = False

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Launch | None:
        """The launch ``env`` (default ``os.environ``) describes; None when it names no job
        (``WORLD_SIZE`` unset).

        Raises:
            ConfigError: ``WORLD_SIZE`` is set but another variable is missing or not a
                number, or the rank is out of range (names the variable).
        """
        env = dict(os.environ if env is None else env)
        if "WORLD_SIZE" not in env:
            return None
        fix = ("start the job with torchrun (it sets RANK, WORLD_SIZE, LOCAL_RANK, "
               "MASTER_ADDR and MASTER_PORT), or unset WORLD_SIZE to run in one process")
        numbers = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT",
                     "TORCHELASTIC_RESTART_COUNT"):
            text = env.get(name, "0" if name in ("LOCAL_RANK", "TORCHELASTIC_RESTART_COUNT")
                           else None)
            if text is None:
                raise ConfigError(f"WORLD_SIZE is set but {name} is not", column=name, fix=fix)
            try:
                numbers[name] = int(text)
            except ValueError:
                raise ConfigError(f"{name} is not a whole number: {text!r}", column=name,
                                  fix=fix) from None
        world, rank = numbers["WORLD_SIZE"], numbers["RANK"]
        if world < 1 or not 0 <= rank < world:
            raise ConfigError(f"RANK {rank} is not one of the WORLD_SIZE {world} processes",
                              column="RANK", fix=fix)
        if world > 1 and not env.get("MASTER_ADDR"):
            raise ConfigError("WORLD_SIZE is set but MASTER_ADDR is not", column="MASTER_ADDR",
                              fix=fix)
        if world > 1 and not 1 <= numbers["MASTER_PORT"] <= 65535:
            raise ConfigError(f"MASTER_PORT {numbers['MASTER_PORT']} is not a TCP port",
                              column="MASTER_PORT", fix="give a port from 1 to 65535, e.g. 29500")
        return cls(rank, world, numbers["LOCAL_RANK"], env.get("MASTER_ADDR", ""),
                   numbers["MASTER_PORT"], numbers["TORCHELASTIC_RESTART_COUNT"],
                   env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")


def seed_task(seed: int, number: int) -> None:
    """Seed torch's global generator (CPU and CUDA) for training task (episode) ``number``: a
    pure function of both, so that a task's dropout draws the same numbers in whichever
    process, and after whichever resume, it runs.

    Example:
        >>> seed_task(0, 7); a = torch.rand(2)
        >>> seed_task(0, 7); bool((a == torch.rand(2)).all())
        True
    """
    words = np.random.SeedSequence([seed, number, 0x7A5C]).generate_state(2, dtype=np.uint32)
    value = int(words[0]) << 31 | int(words[1]) >> 1
    # torch.manual_seed would also queue a seeding of every accelerator not yet initialised,
    # with a formatted stack trace each time (milliseconds per task); an accelerator a task
    # draws from is initialised by then (the model is on it)
    torch.default_generator.manual_seed(value)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(value)


@cache
def code_fingerprint() -> str:
    """A hash of metamodal's Python sources, its version and torch's version: processes with
    the same fingerprint run the same code.

    Example:
        >>> len(code_fingerprint())
        16
    """
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"{__version__} torch {torch.__version__}".encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_fingerprint(ids: Sequence[str], labels: Sequence[str], split: dict[str, Any],
                     preprocessor: dict[str, Any]) -> str:
    """A hash of a decoded dataset: its sample ids and labels, its class split and its fitted
    preprocessor (vocabularies, normalisation statistics).

    Example:
        >>> data_fingerprint(["a"], ["x"], {"train": ["x"]}, {}) == data_fingerprint(
        ...     ["a"], ["y"], {"train": ["x"]}, {})
        False
    """
    digest = hashlib.sha256()
    for part in (list(ids), list(labels), split, preprocessor):
        digest.update(json.dumps(part, sort_keys=True, default=str).encode() + b"\0")
    return digest.hexdigest()[:16]


def prepared_fingerprint(data: PreparedData) -> str:
    """`data_fingerprint` of decoded data: its store's ids and labels, its class split and its
    fitted preprocessor."""
    return data_fingerprint(data.store.ids, data.store.labels, data.split.to_dict(),
                            data.preprocessor.state_dict())


class QuietLogger:
    """The metrics logger of a process other than rank 0: records nothing."""

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Drop ``values``."""

    def close(self) -> None:
        """Nothing to close."""


@dataclass
class RunningStats:
    """Composes the BatchNorm running statistics that each process moved over its own shard
    into those one process leaves after all the shards, in task order.

    A layer's running mean (and variance) after ``u`` updates with momentum ``m`` from ``r0``
    is ``a r0 + c`` with ``a = (1 - m)^u``: an affine map. Shard ``k`` (rank ``k``) ends at
    ``r_k = a_k r0 + c_k``; one process would have applied the maps one after the other, which
    gives ``(prod_k a_k) r0 + sum_k c_k prod_{j > k} a_j``. Each process counts its updates
    with a forward pre-hook (a layer in training mode that tracks statistics updates them once
    a call); the counts are summed into a table ``[W, layers]``, and one all-reduce of each
    process's weighted ``c_k`` gives the result. A layer with ``momentum = None`` (a
    cumulative average) is composed as the count-weighted mean it is.

    Args:
        layers: the layers with ``running_mean`` / ``running_var`` buffers and a
            ``momentum`` (`nn.BatchNorm*d`, `metamodal.encoders.layers.MaskedBatchNorm`).

    Example:
        >>> bn = nn.BatchNorm1d(2)
        >>> stats = RunningStats.of(bn)
        >>> stats.begin(); _ = bn(torch.randn(4, 2)); stats.counts
        [1]
        >>> stats.close()
    """

    layers: list[nn.Module]
    counts: list[int] = field(default_factory=list)
    start: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)

    @classmethod
    def of(cls, *modules: nn.Module | None) -> RunningStats:
        """The tracker of every BatchNorm-like layer of ``modules``, hooked."""
        layers = [m for module in modules if module is not None for m in module.modules()
                  if isinstance(getattr(m, "running_mean", None), Tensor)
                  and isinstance(getattr(m, "running_var", None), Tensor)
                  and hasattr(m, "momentum")]
        stats = cls(layers)
        for i, layer in enumerate(layers):
            stats.handles.append(layer.register_forward_pre_hook(stats._counter(i)))
        return stats

    def _counter(self, i: int) -> Callable[..., None]:
        def count(layer: nn.Module, args: Any) -> None:
            # a layer whose forward is replaced (written out under vmap) updates nothing
            if (self.counts and layer.training and getattr(layer, "track_running_stats", True)
                    and "forward" not in vars(layer)):
                self.counts[i] += 1
        return count

    def begin(self) -> None:
        """Remember the statistics at the start of a step; count updates from 0."""
        self.counts = [0] * len(self.layers)
        self.start = [(m.running_mean.detach().clone(), m.running_var.detach().clone())
                      for m in self.layers]

    def compose(self, rank: int, world: int, all_reduce: Callable[[Tensor], None],
                device: torch.device) -> None:
        """Replace each layer's statistics by their composition over the ``world`` shards
        (``all_reduce`` sums a tensor over the processes in place)."""
        if not self.layers:
            return
        table = torch.zeros(world, len(self.layers), dtype=torch.float64, device=device)
        table[rank] = torch.tensor(self.counts, dtype=torch.float64, device=device)
        all_reduce(table)
        moved = [i for i in range(len(self.layers)) if table[:, i].sum() > 0]
        if not moved:
            return
        parts, finals = [], []
        for i in moved:
            layer, (mean0, var0) = self.layers[i], self.start[i]
            u = table[:, i]
            for now, before in ((layer.running_mean, mean0), (layer.running_var, var0)):
                now64, before64 = now.detach().double(), before.double()
                if layer.momentum is None:  # cumulative average over every update
                    tracked = float(getattr(layer, "num_batches_tracked", torch.tensor(0)))
                    n0 = tracked - float(u[rank])  # the count before this step
                    parts.append(((n0 + u[rank]) * now64 - n0 * before64) / (n0 + u.sum()))
                    finals.append(n0 * before64 / (n0 + u.sum()))
                else:
                    a = (1 - float(layer.momentum)) ** u
                    after = torch.prod(a[rank + 1:])
                    parts.append((now64 - a[rank] * before64) * after)
                    finals.append(torch.prod(a) * before64)
        flat = torch.cat([p.reshape(-1) for p in parts])
        all_reduce(flat)
        offset, k = 0, 0
        for i in moved:
            layer = self.layers[i]
            for buffer in (layer.running_mean, layer.running_var):
                n = buffer.numel()
                value = flat[offset:offset + n].view_as(buffer) + finals[k]
                buffer.copy_(value.to(buffer.dtype))
                offset, k = offset + n, k + 1
            tracked = getattr(layer, "num_batches_tracked", None)
            if isinstance(tracked, Tensor):  # every process's updates counted
                tracked.add_(int(table[:, i].sum()) - self.counts[i])

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class Job:
    """This process's part in a (data-parallel) training or evaluation job.

    Made by `join` (from ``torchrun``'s environment) or `Job.alone` (one process, nothing
    communicated). The methods are the hooks `metamodal.train.trainer.Trainer` calls; in a
    job of one each does what one process needs and no more.

    Args:
        rank: this process's number, ``0 .. world_size - 1``.
        world_size: the number of processes.
        local_rank: this process's number on its machine.
        device: the device this process trains on (``cuda:LOCAL_RANK`` on GPUs).
        restarted: ``torchrun`` restarted the job after a failure (training then resumes from
            the last checkpoint).
        timeout_s: how long a collective may wait.
        backend: the process group's backend (``gloo`` or ``nccl``); None alone.
        objects: the gloo group that carries Python objects (settings, the checkpoint,
            predictions) beside an NCCL group; None: the default group.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, *, local_rank: int = 0,
                 device: torch.device | None = None, restarted: bool = False,
                 timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None,
                 objects: Any = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.restarted = restarted
        self.timeout_s = timeout_s
        self.backend = backend
        self._objects = objects  # the gloo group of object collectives (None: the default)
        self._stats: RunningStats | None = None
        self._step = 0

    @classmethod
    def alone(cls, *, restarted: bool = False) -> Job:
        """A job of one process."""
        return cls(restarted=restarted)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that reads and writes the run directory."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there are other processes to talk to."""
        return self.world_size > 1

    # -- what each process trains ------------------------------------------------------

    def check_trainable(self, config: TrainConfig, training: str, multitask: bool) -> None:
        """Raise `ConfigError` unless this job can share ``config``'s training out:
        episodic (not supervised pre-training, ``training`` being the learner's mode, nor
        ``align_only``), one task (not multi-task), and ``meta_batch`` a multiple of the
        world size (each process trains ``meta_batch / world_size`` tasks a step)."""
        if not self.active:
            return
        fix = "train it in one process (without torchrun)"
        if training == "supervised":
            raise ConfigError(f"learner {config.learner} pre-trains on ordinary batches, which "
                              "data-parallel training does not share out", column="learner",
                              fix=fix + ", or use an episodic learner (protonet, maml, ...)")
        if config.align_only:
            raise ConfigError("align_only trains on batches, which data-parallel training "
                              "does not share out", column="align_only", fix=fix)
        if multitask:
            raise ConfigError("multi-task training is not shared out over processes",
                              column="tasks", fix=fix + ", or train the main label alone")
        if config.meta_batch % self.world_size:
            low = max(self.world_size, config.meta_batch // self.world_size * self.world_size)
            raise ConfigError(
                f"meta_batch {config.meta_batch} does not divide over {self.world_size} "
                "processes: each process trains meta_batch / world_size tasks of every "
                "meta-batch", column="meta_batch",
                fix=f"use --meta-batch {low} or {low + self.world_size} (a multiple of "
                f"{self.world_size}), or start {config.meta_batch} process(es) or a divisor")

    def shard(self, numbers: range) -> range:
        """This process's contiguous share of a step's task numbers (rank 0 the first)."""
        size = len(numbers) // self.world_size
        return numbers[self.rank * size:(self.rank + 1) * size]

    def device_for(self, device: torch.device) -> torch.device:
        """The device this process trains on: ``cuda:LOCAL_RANK`` where ``device`` is CUDA
        without an index in a job, else ``device``."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    # -- start: the same code, settings, data and state everywhere ------------------------

    def check_same(self, config: TrainConfig) -> None:
        """Raise `ConfigError` on every process unless all run the same code (metamodal's
        sources, torch's version) with the same settings (`PER_PROCESS_KEYS` aside): a
        process started from another checkout or with other flags would train something
        else silently."""
        if not self.active:
            return
        settings = {k: v for k, v in config.to_dict().items() if k not in PER_PROCESS_KEYS}
        mine = {"code": code_fingerprint(), "torch": torch.__version__,
                "version": __version__, "settings": settings}
        everyone = self.all_gather_object(mine)
        first = everyone[0]
        code = [r for r, other in enumerate(everyone) if other["code"] != first["code"]]
        if code:
            raise ConfigError(
                f"process(es) {', '.join(map(str, code))} run other code than rank 0 "
                f"(metamodal {first['version']}, torch {first['torch']}, sources "
                f"{first['code']}; rank {code[0]}: metamodal {everyone[code[0]]['version']}, "
                f"torch {everyone[code[0]]['torch']}, sources {everyone[code[0]]['code']})",
                column="code", fix="install the same metamodal checkout and torch on every "
                "machine")
        for r, other in enumerate(everyone):
            keys = sorted(k for k in set(first["settings"]) | set(other["settings"])
                          if first["settings"].get(k) != other["settings"].get(k))
            if keys:
                shown = "; ".join(f"{k}: rank 0 {first['settings'].get(k)!r}, rank {r} "
                                  f"{other['settings'].get(k)!r}" for k in keys[:5])
                raise ConfigError(f"the processes were started with other settings ({shown})",
                                  column=keys[0], fix="start every process with the same "
                                  "flags and config file")

    def check_data(self, fingerprint: str, where: str | Path) -> None:
        """Raise `ConfigError` unless every process decoded the same data (its
        `prepared_fingerprint`; ``where``, the dataset directory, is named in the error)."""
        if not self.active:
            return
        everyone = self.all_gather_object(fingerprint)
        other = [r for r, f in enumerate(everyone) if f != everyone[0]]
        if other:
            raise ConfigError(
                f"process(es) {', '.join(map(str, other))} decoded other data than rank 0 "
                "(sample ids, labels, class split or fitted preprocessing differ)",
                file=where, column="data", fix="give every machine the same copy of the "
                "dataset directory (and the same splits.toml)")

    def on_main(self, work: Callable[[], T]) -> T:
        """``work()`` on rank 0, its value sent to every process; an error there stops every
        process (a `RunError` elsewhere, naming rank 0's)."""
        if not self.active:
            return work()
        message: list[Any] = [None]
        if self.is_main:
            try:
                value = work()
            except BaseException as error:
                message[0] = ("error", f"{type(error).__name__}: {error}")
                self._broadcast(message)
                raise
            message[0] = ("ok", value)
        self._broadcast(message)
        kind, value = message[0]
        if kind == "error":
            raise RunError(f"rank 0 stopped: {value}", fix="see rank 0's message")
        return value

    def same_weights(self, *modules: nn.Module | None) -> None:
        """Send rank 0's parameters and buffers to every process (before the first step)."""
        if not self.active:
            return
        import torch.distributed as dist

        for module in modules:
            if module is None:
                continue
            for tensor in [*module.parameters(), *module.buffers()]:
                sent = tensor.data if tensor.is_contiguous() else tensor.data.contiguous()
                self._collective(lambda t=sent: dist.broadcast(t, src=0), "start")
                if sent is not tensor.data:  # e.g. a channels_last weight
                    tensor.data.copy_(sent)

    # -- a step ---------------------------------------------------------------------------

    def watch(self, *modules: nn.Module | None) -> None:
        """Track the BatchNorm running statistics of ``modules`` (see `RunningStats`)."""
        if self.active:
            self._stats = RunningStats.of(*modules)

    def step(self, step_loss: Callable[[int], tuple[Tensor | float, Tensor | float]],
             step: int, params: Sequence[nn.Parameter]
             ) -> tuple[Tensor | float, Tensor | float]:
        """One step's gradients, summed over the job: ``step_loss(step)`` (this process's
        shard, each task weighted ``1 / meta_batch``), then one all-reduce of the gradients
        of ``params``, the loss and the accuracy, and the composition of the running
        statistics. Returns the meta-batch's mean loss and accuracy."""
        if not self.active:
            return step_loss(step)
        self._step = step
        if self._stats is not None:
            self._stats.begin()
        loss, acc = step_loss(step)
        loss, acc = self._reduce_gradients(params, loss, acc)
        if self._stats is not None:
            self._stats.compose(self.rank, self.world_size, self._all_reduce, self._device())
        return loss, acc

    def _reduce_gradients(self, params: Sequence[nn.Parameter], loss: Tensor | float,
                          acc: Tensor | float) -> tuple[float, float]:
        device = self._device()
        head = torch.tensor([float(loss), float(acc)] + [p.grad is not None for p in params],
                            dtype=torch.float64, device=device)
        self._all_reduce(head)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(params):
            by_dtype.setdefault(p.dtype, []).append(i)
        for members in by_dtype.values():
            flat = torch.cat([(params[i].grad if params[i].grad is not None
                               else torch.zeros_like(params[i])).reshape(-1)
                              for i in members]).to(device)
            self._all_reduce(flat)
            offset = 0
            for i in members:
                p, n = params[i], params[i].numel()
                if head[2 + i] > 0:
                    p.grad = flat[offset:offset + n].view_as(p).to(p.device)
                offset += n
        return float(head[0]), float(head[1])

    # -- collectives ------------------------------------------------------------------------

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (for small Python objects)."""
        if not self.active:
            return [value]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        self._collective(lambda: dist.all_gather_object(gathered, value, group=self._objects),
                         "gather")
        return gathered

    def barrier(self) -> None:
        """Wait for every process."""
        if self.active:
            import torch.distributed as dist

            self._collective(lambda: dist.barrier(group=self._objects), "barrier")

    def _broadcast(self, message: list[Any]) -> None:
        import torch.distributed as dist

        self._collective(lambda: dist.broadcast_object_list(message, src=0,
                                                            group=self._objects), "start")

    def _all_reduce(self, tensor: Tensor) -> None:
        import torch.distributed as dist

        self._collective(lambda: dist.all_reduce(tensor), f"step {self._step + 1}")

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _collective(self, call: Callable[[], Any], what: str) -> None:
        """Run a collective; a peer that is gone or too slow is a `RunError`, not a hang."""
        try:
            call()
        except (RuntimeError, TimeoutError, pickle.PickleError) as error:
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise RunError(
                f"process {self.rank} of {self.world_size} lost the others at {what} "
                f"({type(error).__name__}: {first}): another process stopped, or waited "
                f"longer than dist_timeout ({self.timeout_s:g} s)",
                fix="see the other processes' messages; with torchrun --max-restarts N the "
                "job starts again and resumes from the last checkpoint (or rerun with "
                "--resume)") from None

    def close(self) -> None:
        """Remove the hooks this job set."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None


def choose_backend(name: str, device: torch.device) -> str:
    """The process group's backend: ``name``, or for ``auto`` NCCL on CUDA devices and gloo
    elsewhere.

    Raises:
        ConfigError: an unknown name, or NCCL where this torch has none or the device is not
            CUDA.

    Example:
        >>> choose_backend("auto", torch.device("cpu"))
        'gloo'
    """
    import torch.distributed as dist

    if name == "auto":
        return "nccl" if device.type == "cuda" and dist.is_nccl_available() else "gloo"
    if name not in ("gloo", "nccl"):
        raise ConfigError(f"unknown dist_backend {name!r}", column="dist_backend",
                          fix="use auto, gloo (CPUs) or nccl (GPUs)")
    if name == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise ConfigError("dist_backend nccl needs CUDA devices and a torch built with NCCL",
                          column="dist_backend", fix="use --dist-backend gloo (or auto)")
    return name


@contextmanager
def join(device: str = "auto", *, backend: str = "auto",
         timeout_s: float = DEFAULT_TIMEOUT_S,
         env: dict[str, str] | None = None) -> Iterator[Job]:
    """The job this process belongs to, for the block: from ``torchrun``'s environment
    (`Launch`), or a job of one without it.

    A process group already set up (by the caller) is used as it is; otherwise one is made
    with `torch.distributed.init_process_group` on the ``MASTER_ADDR:MASTER_PORT`` store
    (``torchrun``'s, or one rank 0 starts), waiting at most ``timeout_s`` seconds for the
    others, and taken down after the block. Its keys in the store are kept apart per attempt
    of the job and per group this process made: after a restart (``torchrun
    --max-restarts``), or for a second training in the same processes, the store still holds
    the former group's addresses, which would otherwise be read for the new one's.

    Args:
        device: the ``device`` setting (``auto``, ``cpu``, ``cuda``...): CUDA means NCCL and
            ``cuda:LOCAL_RANK``.
        backend: ``auto``, ``gloo`` or ``nccl`` (`choose_backend`).
        timeout_s: how long joining, and each collective, may wait.
        env: the environment (default ``os.environ``).

    Raises:
        RunError: the others could not be reached within ``timeout_s``.
        ConfigError: a bad launch environment or backend.

    Example:
        >>> with join("cpu", env={}) as job:
        ...     job.world_size
        1
    """
    launch = Launch.from_environment(env)
    restarted = bool(launch and launch.restarts)
    if launch is None or launch.world_size == 1:
        yield Job.alone(restarted=restarted)
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this torch has no torch.distributed", column="WORLD_SIZE",
                          fix="install a torch build with distributed support, or train in "
                          "one process")
    wanted = resolve_device(device)
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(wanted)
    name = choose_backend(backend, wanted)
    made = not dist.is_initialized()
    if made:
        try:
            store = dist.TCPStore(launch.host, launch.port, launch.world_size,
                                  is_master=launch.rank == 0 and not launch.agent_store,
                                  timeout=timedelta(seconds=timeout_s))
            prefix = f"metamodal/attempt-{launch.restarts}/group-{next(_GROUPS)}"
            dist.init_process_group(
                name, store=dist.PrefixStore(prefix, store),
                rank=launch.rank, world_size=launch.world_size,
                timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, TimeoutError, ValueError) as error:
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise RunError(
                f"process {launch.rank} of {launch.world_size} could not join the job at "
                f"{launch.address} within {timeout_s:g} s ({type(error).__name__}: {first})",
                fix="check that the rendezvous address (--rdzv-endpoint or MASTER_ADDR:"
                "MASTER_PORT) is the first machine's address, reachable from every machine "
                "(firewall), that all --nnodes machines were started, or raise "
                "--dist-timeout") from None
    elif (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
        raise ConfigError(f"the process group (rank {dist.get_rank()} of "
                          f"{dist.get_world_size()}) is not the launch's (rank {launch.rank} "
                          f"of {launch.world_size})", column="RANK",
                          fix="set up the process group with RANK and WORLD_SIZE")
    objects = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    job = Job(launch.rank, launch.world_size, local_rank=launch.local_rank, device=wanted,
              restarted=restarted, timeout_s=timeout_s, backend=dist.get_backend(),
              objects=objects)
    try:
        yield job
    finally:
        job.close()
        if made and dist.is_initialized():
            dist.destroy_process_group()


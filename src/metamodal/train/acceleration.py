"""How a training step uses the hardware: the size of the vmap chunks of a meta-batch, bfloat16
autocast of the encoders and the fusion, and `torch.compile` of the meta-update.

Each is a setting of `metamodal.config.TrainConfig` that changes speed and memory, never what
is computed beyond rounding:

- ``vmap_chunk = 0`` (the default): `ChunkPlan` sizes the chunks of ``task_batching`` vmap at
  the start of training. On CUDA the first chunk of a run has two tasks; the device memory it
  took at its peak, per task, and the memory free for tensors then (free on the device plus
  what PyTorch's allocator holds unused) give the largest chunk that fills at most
  `MEMORY_FRACTION` of it; the meta-batch is then cut into the fewest chunks of at most that
  size, as even as can be (`metamodal.learners.task_batching.chunk_sizes`). On the CPU the
  rule is fixed: chunks of at most `CPU_CHUNK` tasks (on a CPU ``task_batching = "auto"``
  runs the loop, measured faster there; see ``benchmarks/meta_learners.py``). A positive
  ``vmap_chunk`` is used as given.
- ``precision = "bf16"`` (or ``"auto"`` on hardware that computes bfloat16 natively:
  `resolve_precision`): `backbone_precision` runs the backbone's forward pass under
  `torch.autocast` in bfloat16 and hands float embeddings of the parameters' dtype on, so the
  output layer, the losses, the inner-loop updates and the meta-gradient stay in float32.
- ``compile = true``: `MetaLossCompiler` captures the vmapped meta-loss
  (`metamodal.learners.task_batching.vmapped_loss`: inner loop and query loss, and through
  AOTAutograd its backward) with ``torch.compile(fullgraph=True)``, mode ``reduce-overhead``
  (CUDA graphs) on CUDA. Where it cannot (no C compiler for the CPU backend, a model whose
  graph breaks, too many recompilations) it warns once and runs eagerly.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from metamodal.errors import ConfigError
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.task_batching import TaskRunner, chunk_sizes, vmapped_loss

log = logging.getLogger(__name__)

T = TypeVar("T")

PRECISIONS = ("fp32", "bf16", "auto")
"""The choices of ``precision`` (``auto``: `resolve_precision`)."""
CPU_CHUNK = 8
"""Tasks per vmap chunk on the CPU when ``vmap_chunk = 0``."""
PROBE_TASKS = 2
"""Tasks of the first chunk on CUDA when ``vmap_chunk = 0``, whose memory sizes the others."""
MEMORY_FRACTION = 0.8
"""Share of the memory free for tensors that a chunk may fill (the rest: fragmentation and
the optimiser's step)."""
BACKEND = "inductor"
"""The `torch.compile` backend of `MetaLossCompiler` (``aot_eager`` captures the same graphs
without generating kernels: what a test uses to check the capture quickly)."""


# --- chunk sizes ------------------------------------------------------------------------------


@dataclass
class DeviceMemory:
    """Readings of a CUDA device's memory, in bytes (what `ChunkPlan` sizes chunks from; a test
    passes another object with the same three methods).

    Args:
        device: a CUDA device.
    """

    device: torch.device

    def available(self) -> int:
        """Memory free for tensors: free on the device plus what the allocator holds unused."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(free + torch.cuda.memory_reserved(self.device)
                   - torch.cuda.memory_allocated(self.device))

    def start(self) -> int:
        """Reset the peak and return the memory allocated now."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return int(torch.cuda.memory_allocated(self.device))

    def peak(self) -> int:
        """The most memory allocated since `start`."""
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device))


class ChunkPlan:
    """The chunks of a meta-batch under vmap: ``vmap_chunk`` tasks each when it is positive,
    otherwise sized once, at the first meta-batch (see the module docstring).

    Args:
        setting: ``vmap_chunk`` (0: size them here).
        meta_batch: tasks per meta-update.
        device: the training device.
        memory: the memory readings on CUDA (default `DeviceMemory` of ``device``).

    Attributes:
        size: the largest chunk, once known (None until the first meta-batch on CUDA).
        probing: True while the probe chunk is out (the caller runs it eagerly: a compiled
            meta-update would be compiled for its shape, used only once).

    Example:
        >>> plan = ChunkPlan(0, 20, torch.device("cpu"))
        >>> [len(chunk) for chunk in plan.chunks(list(range(20)))]
        [7, 7, 6]
    """

    def __init__(self, setting: int, meta_batch: int, device: torch.device, *,
                 memory: DeviceMemory | None = None) -> None:
        self.meta_batch = meta_batch
        self.memory = memory if memory is not None or device.type != "cuda" \
            else DeviceMemory(device)
        self.size: int | None = setting or (None if device.type == "cuda"
                                            else min(meta_batch, CPU_CHUNK))
        self.probing = False

    def chunks(self, items: Sequence[T]) -> Iterator[list[T]]:
        """``items`` (a meta-batch's tasks) in chunks. Before the size is known, the first
        chunk is the probe: the caller runs it (forward and backward) before asking for the
        next, and the memory it took sizes the rest."""
        items = list(items)
        if self.size is None and self.memory is not None:
            probe = items[:min(PROBE_TASKS, len(items))]
            available = self.memory.available()
            before = self.memory.start()
            self.probing = True
            yield probe
            self.probing = False
            per_task = max(self.memory.peak() - before, 1) / len(probe)
            self.size = max(1, min(self.meta_batch,
                                   int(MEMORY_FRACTION * available / per_task)))
            log.info("vmap chunks of at most %d tasks (%.1f MB per task, %.0f MB free)",
                     self.size, per_task / 2**20, available / 2**20)
            items = items[len(probe):]
        if not items:
            return
        first = 0
        for size in chunk_sizes(len(items), self.size or len(items)):
            yield items[first:first + size]
            first += size


# --- precision --------------------------------------------------------------------------------


def check_precision(precision: str, device: torch.device) -> None:
    """Raise `ConfigError` when ``precision`` is unknown or ``device`` cannot compute in it.

    Example:
        >>> check_precision("bf16", torch.device("cpu"))
        >>> try:
        ...     check_precision("fp16", torch.device("cpu"))
        ... except ConfigError as error:
        ...     print(error.column, "|", error.message)
        precision | unknown precision 'fp16'
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", column="precision",
                          fix="use 'fp32', 'bf16' or 'auto' (--precision fp32|bf16|auto)")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{torch.cuda.get_device_name(device)} does not compute in bfloat16",
                          column="precision", fix="use --precision fp32")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products and convolutions in hardware: a
    CUDA GPU from NVIDIA's Ampere on, or a CPU with AMX tiles or AVX512-BF16 (on which oneDNN's
    bfloat16 convolutions run about twice as fast as float32's; elsewhere they are emulated,
    and slower)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.3 has no emulation to leave out
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return any(getattr(torch.cpu, probe, lambda: False)()
                   for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision training steps run in on ``device``: ``precision`` itself, or for
    ``"auto"`` ``"bf16"`` where `native_bf16` and ``"fp32"`` elsewhere. Raises `ConfigError`
    like `check_precision`.

    Example:
        >>> resolve_precision("fp32", torch.device("cpu"))
        'fp32'
        >>> resolve_precision("auto", torch.device("meta"))
        'fp32'
    """
    check_precision(precision, device)
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def _as_dtype(embeddings: Embeddings, dtype: torch.dtype) -> Embeddings:
    """``embeddings`` with its float tensors in ``dtype``."""
    parts = None if embeddings.parts is None else {
        name: part.to(dtype) for name, part in embeddings.parts.items()}
    return Embeddings(embeddings.z.to(dtype), embeddings.present, parts,
                      list(embeddings.modalities))


def _autocast_forward(backbone: nn.Module, device_type: str) -> Callable[..., Embeddings]:
    """``backbone``'s forward under bfloat16 autocast, its embeddings in the parameters'
    dtype; one object per backbone and device type (kept on it), so that a compiled
    meta-update finds the same one at every call."""
    found = vars(backbone).get("_autocast_forward")
    if found is not None and found.device_type == device_type:
        return found
    forward = type(backbone).forward

    def autocast_forward(*args: object, **kwargs: object) -> Embeddings:
        dtype = next(backbone.parameters()).dtype
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(backbone, *args, **kwargs)
        return _as_dtype(out, dtype)

    autocast_forward.device_type = device_type  # type: ignore[attr-defined]
    vars(backbone)["_autocast_forward"] = autocast_forward
    return autocast_forward


@contextmanager
def backbone_precision(backbone: nn.Module, precision: str,
                       device: torch.device) -> Iterator[None]:
    """Inside the block ``backbone`` (encoders and fusion: a `metamodal.model.Backbone`) runs
    its forward pass in ``precision``: with ``"bf16"`` under `torch.autocast` in bfloat16
    (matrix products and convolutions in bfloat16, what autocast keeps in float32 in float32),
    its `Embeddings` handed on in the dtype of its parameters, so that whatever follows (the
    output layer, the losses, the inner-loop updates, the meta-gradient) computes in float32;
    with ``"fp32"`` nothing changes. Float64 modules are left as they are (autocast casts
    only float32).

    Example:
        >>> from metamodal.model import FewShotModel
        >>> from metamodal.data.batch import ModalityBatch
        >>> model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
        ...                            dim=8, fusion="mean")
        >>> batch = {"m": ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))}
        >>> with backbone_precision(model.backbone, "bf16", torch.device("cpu")):
        ...     z = model.backbone(batch).z
        >>> z.dtype, "forward" in vars(model.backbone)
        (torch.float32, False)
    """
    check_precision(precision, device)
    if precision == "fp32":
        yield
        return
    backbone.forward = _autocast_forward(backbone, device.type)
    try:
        yield
    finally:
        del backbone.forward


# --- compilation ------------------------------------------------------------------------------


def compiler_missing(device: torch.device) -> str | None:
    """Why `torch.compile` cannot build kernels for ``device`` here, or None: its CPU backend
    (Inductor) compiles C++ and needs a C++ compiler on the PATH.

    Example:
        >>> compiler_missing(torch.device("cuda")) is None
        True
    """
    if device.type == "cpu" and BACKEND == "inductor" and not any(
            shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "no C++ compiler (c++, g++ or clang++) on the PATH for torch.compile's CPU backend"
    return None


class MetaLossCompiler:
    """The vmapped meta-loss (`metamodal.learners.task_batching.vmapped_loss`) compiled with
    `torch.compile`, one per number of ways, with a fallback to eager mode.

    ``runner(ways)`` gives the function `metamodal.learners.task_batching.batched_losses`
    takes as ``run``: compiled with ``fullgraph=True`` (mode ``reduce-overhead``, CUDA graphs,
    on CUDA), so that a model whose meta-update cannot be captured whole fails at once rather
    than running in pieces. Any failure to compile (or a C++ compiler missing for the CPU
    backend) is warned about once, and from then on every call runs eagerly: the same
    computation, without compilation.

    Args:
        learner, backbone: the modules of the meta-update.
        device: the training device.
        enabled: compile at all (``compile`` of `metamodal.config.TrainConfig`); when False
            `runner` gives None (`batched_losses` then builds its eager function).

    Attributes:
        failure: why compilation was given up (None while it works or is off).
    """

    def __init__(self, learner: nn.Module, backbone: nn.Module, device: torch.device, *,
                 enabled: bool = True) -> None:
        self.learner, self.backbone, self.device = learner, backbone, device
        self.enabled = enabled
        self.mode = "reduce-overhead" if device.type == "cuda" else None
        self.failure: str | None = compiler_missing(device) if enabled else None
        if self.failure is not None:
            self._give_up(self.failure)
        self._runners: dict[int, TaskRunner] = {}

    def _give_up(self, why: str) -> None:
        self.failure = why
        warnings.warn(f"compile: the meta-update runs eagerly ({why})", RuntimeWarning,
                      stacklevel=3)

    def runner(self, ways: int) -> TaskRunner | None:
        """The function for ``ways``-way episodes, or None when compilation is off."""
        if not self.enabled:
            return None
        if ways not in self._runners:
            eager = vmapped_loss(self.learner, self.backbone, ways)
            compiled = (None if self.failure is not None else
                        torch.compile(eager, fullgraph=True, backend=BACKEND,
                                      mode=self.mode if BACKEND == "inductor" else None))

            def run(*stacked: object) -> tuple[Tensor, Tensor]:
                if self.failure is None and compiled is not None:
                    try:
                        if self.device.type == "cuda":
                            torch.compiler.cudagraph_mark_step_begin()
                        return compiled(*stacked)
                    except Exception as error:  # noqa: BLE001 - any failure: run eagerly
                        first = str(error).strip().splitlines()
                        self._give_up(f"{type(error).__name__}: {first[0][:200] if first else ''}")
                return eager(*stacked)

            self._runners[ways] = run
        return self._runners[ways]

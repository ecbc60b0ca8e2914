"""Atomic, resumable checkpoints: model weights in safetensors, training state with torch.save.

The training state holds only tensors and plain data (numbers, strings, lists, tuples, dicts):
the generators' states are stored as tensors and integers, so that `load_checkpoint` reads it
with ``torch.load(weights_only=True)``. Nothing in a checkpoint is unpickled as code; a crafted
or corrupt file is a `RunError`.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metamodal.errors import RunError
from metamodal.io import atomic_write
from metamodal.runs.directory import CHECKPOINT_FILE as CHECKPOINT_FILE  # where it is named


def rng_state() -> dict[str, Any]:
    """The state of every random generator training touches (Python, NumPy, torch CPU/CUDA),
    as tensors and plain numbers only (so that it loads with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by `rng_state`."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training-state dict (model, optimiser, schedule, step, RNG...) atomically.

    Raises:
        OutputError: it cannot be written (a full disk, a file-size limit): torch's writer
            reports a failed write as a RuntimeError.
    """
    def write(tmp: Path) -> None:
        try:
            torch.save(state, tmp)
        except RuntimeError as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else "failed"
            raise OSError(f"the write failed, the disk full or a file-size limit reached? "
                          f"({detail})") from None

    return atomic_write(path, write)


CHECKPOINT_KEYS = ("config", "model", "classifier", "optimizer", "schedule", "rng", "progress")
"""The entries of a training-state checkpoint."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_checkpoint` with ``torch.load(weights_only=True)``.

    Nothing is unpickled as code: a file that needs more than tensors and plain data, or that
    is not a checkpoint at all, is a `RunError` naming the file (and the entry it lacks).
    """
    fix = "train again with --overwrite (instead of --resume) to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError, RuntimeError, EOFError, ... for a bad file
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise RunError(f"checkpoint is corrupt or not a metamodal checkpoint "
                       f"({type(error).__name__}: {first[:200]})", file=path, fix=fix) from None
    if not isinstance(state, dict):
        raise RunError(f"checkpoint holds a {type(state).__name__}, not a training state",
                       file=path, fix=fix)
    for key in CHECKPOINT_KEYS:
        if key not in state:
            raise RunError("checkpoint lacks an entry", file=path, column=key, fix=fix)
    return state


@dataclass
class TrainingProgress:
    """Where training stands; checkpointed so that a resumed run continues exactly.

    Args:
        step: optimisation steps done.
        best: best validation accuracy so far (-1 before the first validation).
        best_step: the step of the best validation (whose weights are kept).
        bad: validations since the best one (for early stopping).
        window: sums of training loss and accuracy over the steps since the last log line.
        stopped_early: early stopping ended training.
        finished: training is over.
        seconds: wall-clock seconds of training so far.
    """

    step: int = 0
    best: float = -1.0
    best_step: int = 0
    bad: int = 0
    window: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "acc": 0.0, "n": 0})
    stopped_early: bool = False
    finished: bool = False
    seconds: float = 0.0

    def check(self) -> None:
        """Raise `TypeError` unless every field has its type (a checkpoint is not trusted)."""
        numbers = (self.best, self.seconds, *self.window.values()) if isinstance(
            self.window, dict) else ()
        if (not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in (self.step, self.best_step, self.bad))
                or not isinstance(self.window, dict) or set(self.window) != {"loss", "acc", "n"}
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           for v in numbers)
                or not isinstance(self.stopped_early, bool)
                or not isinstance(self.finished, bool)):
            raise TypeError(f"progress has values of the wrong type: {self}")


def restore_training(state: dict[str, Any], model: nn.Module, classifier: nn.Module | None,
                     optimizer: torch.optim.Optimizer,
                     schedule: torch.optim.lr_scheduler.LambdaLR,
                     path: str | Path, *, aligner: nn.Module | None = None,
                     heads: nn.Module | None = None) -> TrainingProgress:
    """Load a checkpoint's states into the training objects and the generators; returns its
    progress.

    Args:
        schedule: the learning-rate schedule, whose factors are `metamodal.train.budget.StepPlan`s
            (their checkpointed plans are checked).
        aligner: the cross-modal aligner, when the run trains one (its entry ``aligner``).
        heads: the multi-task heads, when the run has them (its entry ``tasks``).

    Raises:
        RunError: an entry does not fit the model, aligner, task heads, optimiser, schedule or
            generators (names the file ``path`` and the entry).
    """
    entry = "model"
    try:
        model.load_state_dict(state["model"])
        if classifier is not None:
            entry = "classifier"
            classifier.load_state_dict(state["classifier"])
        if aligner is not None and state.get("aligner") is not None:
            entry = "aligner"
            aligner.load_state_dict(state["aligner"])
        if heads is not None:
            entry = "tasks"
            heads.load_state_dict(state["tasks"])
        entry = "optimizer"
        optimizer.load_state_dict(state["optimizer"])
        entry = "schedule"
        schedule.load_state_dict(state["schedule"])
        for plan in schedule.lr_lambdas:  # the trainer's `StepPlan`s, checked, not trusted
            plan.check()
        entry = "rng"
        set_rng_state(state["rng"])
        entry = "progress"
        progress = TrainingProgress(**state["progress"])
        progress.check()
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError,
            IndexError) as error:
        raise RunError(f"checkpoint entry does not fit this run ({type(error).__name__}: "
                       f"{str(error)[:200]})", file=path,
                       column=entry, fix="train again with --overwrite (instead of "
                       "--resume) to start over") from None
    return progress


def training_state(config: dict[str, Any], progress: TrainingProgress, model: nn.Module,
                   classifier: nn.Module | None, aligner: nn.Module | None,
                   optimizer: torch.optim.Optimizer,
                   schedule: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The resumable state of a training (the entries `CHECKPOINT_KEYS` and ``aligner``), for
    `save_checkpoint`."""
    return {
        "config": config,
        "model": model.state_dict(),
        "classifier": classifier.state_dict() if classifier else None,
        "aligner": aligner.state_dict() if aligner is not None else None,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng_state(),
        "progress": dataclasses.asdict(progress),
    }

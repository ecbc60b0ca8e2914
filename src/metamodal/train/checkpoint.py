"""Atomic, resumable checkpoints: model weights in safetensors, training state with torch.save.

The training state holds only tensors and plain data (numbers, strings, lists, tuples, dicts):
the generators' states are stored as tensors and integers, so that `load_checkpoint` reads it
with ``torch.load(weights_only=True)``. Nothing in a checkpoint is unpickled as code; a crafted
or corrupt file is a `RunError`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metamodal.errors import RunError
from metamodal.io import atomic_write

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"


def save_weights(path: str | Path, module: torch.nn.Module) -> Path:
    """Write ``module``'s state dict (parameters and buffers) to a safetensors file atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def load_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Load a safetensors state dict into ``module``; a missing/corrupt file is a `RunError`.

    A tensor the module needs that the file lacks, a stray tensor, a tensor of another shape or
    a floating-point tensor holding NaN or infinite values is a `RunError` naming the file and
    the tensor (as its key).
    """
    path = Path(path)
    if not path.is_file():
        raise RunError("model weights not found", file=path,
                       fix="train the run first, or point to a complete run directory")
    try:
        state = load_file(str(path))
    except (SafetensorError, RuntimeError, OSError) as error:
        raise RunError(f"model weights are corrupt: {error}", file=path,
                       fix="re-train the run or restore model.safetensors") from None
    expected = set(module.state_dict())
    stray = sorted(set(state) ^ expected)
    if any(key.startswith("learner.") for key in stray):
        raise RunError(
            "the weights were saved for another learner than the run's config.toml names "
            f"(mismatched tensors: {', '.join(stray[:4])}{', ...' if len(stray) > 4 else ''})",
            file=path, fix="restore the config.toml that belongs to these weights, or re-train")
    own = module.state_dict()
    for key in sorted(set(own) | set(state)):
        if key not in state:
            raise RunError("a tensor the model needs is missing", file=path, column=key,
                           fix="re-train the run or restore model.safetensors")
        if key not in own:
            raise RunError("the file holds a tensor the model does not have", file=path,
                           column=key, fix="restore the config.toml that belongs to these "
                           "weights, or re-train")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise RunError(f"tensor has shape {list(state[key].shape)}, the model needs "
                           f"{list(own[key].shape)}", file=path, column=key,
                           fix="restore the config.toml that belongs to these weights, "
                           "or re-train")
        if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all()):
            raise RunError("tensor holds NaN or infinite values", file=path, column=key,
                           fix="re-train the run (lower the learning rate if training "
                           "diverged) or restore model.safetensors")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise RunError(f"model weights are corrupt or do not match the config: {error}",
                       file=path, fix="re-train the run or restore model.safetensors") from None


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
    """Write a training-state dict (model, optimiser, schedule, step, RNG...) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


CHECKPOINT_KEYS = ("config", "model", "classifier", "optimizer", "schedule", "rng", "progress")
"""The entries of a training-state checkpoint."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_checkpoint` with ``torch.load(weights_only=True)``.

    Nothing is unpickled as code: a file that needs more than tensors and plain data, or that
    is not a checkpoint at all, is a `RunError` naming the file (and the entry it lacks).
    """
    fix = "delete it to start over, or train without --resume"
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

"""Atomic, resumable checkpoints: model weights in safetensors, training state with torch.save."""

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
    """Load a safetensors state dict into ``module``; a missing/corrupt file is a `RunError`."""
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
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError) as error:
        raise RunError(f"model weights are corrupt or do not match the config: {error}",
                       file=path, fix="re-train the run or restore model.safetensors") from None


def rng_state() -> dict[str, Any]:
    """The state of every random generator training touches (Python, NumPy, torch CPU/CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generators saved by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write a training-state dict (model, optimiser, schedule, step, RNG...) atomically."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_checkpoint`; a corrupt file is a `RunError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, ValueError) as error:
        raise RunError(f"checkpoint is corrupt: {error}", file=path,
                       fix="delete it to start over, or train without --resume") from None

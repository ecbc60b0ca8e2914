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

from metamodal.errors import RunError
from metamodal.io import atomic_write

CHECKPOINT_FILE = "checkpoint.pt"


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

"""Model weights in a run directory: ``model.safetensors``, written atomically and read
strictly (every tensor named, shaped and finite)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metamodal.errors import RunError
from metamodal.io import atomic_write

WEIGHTS_FILE = "model.safetensors"


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

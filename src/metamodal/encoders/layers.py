"""Small building blocks shared by encoders: length masks, masked pooling, masked BatchNorm."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metamodal.errors import ConfigError


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """Bool ``[B, size]``: True at positions before each row's length.

    Args:
        lengths: long ``[B]`` valid lengths.
        size: the padded length.

    Example:
        >>> length_mask(torch.tensor([1, 3]), 3).tolist()
        [[True, False, False], [True, True, True]]
    """
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def resolve_lengths(lengths: Tensor | None, size: int, batch: int, device: torch.device) -> Tensor:
    """Lengths clamped to ``1..size``; ``None`` means every row is ``size`` long.

    A present sample of length 0 is treated as length 1 (one padding step), so that it still
    gets a defined embedding.

    Example:
        >>> resolve_lengths(torch.tensor([0, 9]), 5, 2, torch.device("cpu")).tolist()
        [1, 5]
    """
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.long, device=device)
    return lengths.to(device=device, dtype=torch.long).clamp(1, max(size, 1))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` ``[B, T, C]`` over the steps where ``mask`` ``[B, T]`` is True -> ``[B, C]``.

    Rows without any True step give zeros.

    Example:
        >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]).bool())
        tensor([[2.]])
    """
    keep = mask.unsqueeze(-1)
    total = torch.where(keep, x, torch.zeros((), dtype=x.dtype)).sum(1)
    return total / keep.sum(1).clamp_min(1).to(x.dtype)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of ``x`` ``[B, T, C]`` over the steps where ``mask`` ``[B, T]`` is True -> ``[B, C]``.

    Rows without any True step give zeros.

    Example:
        >>> masked_max(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]).bool())
        tensor([[3.]])
    """
    keep = mask.unsqueeze(-1)
    low = torch.finfo(x.dtype).min
    best = torch.where(keep, x, torch.full((), low, dtype=x.dtype)).amax(1)
    return torch.where(keep.any(1), best, torch.zeros((), dtype=x.dtype))


POOLS = ("mean", "max", "meanmax")
"""The ways `masked_pool` pools over valid steps."""


def check_pool(encoder: str, pool: str) -> None:
    """Raise `ConfigError` naming ``encoder`` unless ``pool`` is one of `POOLS`.

    Example:
        >>> check_pool("tcn", "meanmax")
    """
    if pool not in POOLS:
        raise ConfigError(
            f"{encoder}: unknown pool {pool!r}", fix=f"use one of: {', '.join(POOLS)}"
        )


def pooled_size(channels: int, pool: str) -> int:
    """Width of `masked_pool`'s output for ``channels`` input channels: ``2C`` for ``meanmax``.

    Example:
        >>> pooled_size(32, "mean"), pooled_size(32, "meanmax")
        (32, 64)
    """
    return channels * (2 if pool == "meanmax" else 1)


def masked_pool(x: Tensor, mask: Tensor, pool: str) -> Tensor:
    """Pool ``x`` ``[B, T, C]`` over valid steps: ``mean``, ``max`` or ``meanmax`` (both, ``2C``).

    Example:
        >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
        >>> masked_pool(x, torch.tensor([[True, True, False]]), "meanmax")
        tensor([[2., 3.]])
    """
    if pool == "mean":
        return masked_mean(x, mask)
    if pool == "max":
        return masked_max(x, mask)
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over channels (axis 1) whose statistics count only valid (unpadded) positions.

    Plain BatchNorm would mix the padding of variable-length inputs into its batch statistics,
    so the same sample would be normalised differently depending on how much padding its batch
    carries. Here padded positions are left out of the statistics and set to zero in the output.
    Otherwise it behaves like ``nn.BatchNorm1d/2d`` (Ioffe & Szegedy, 2015, "Batch
    Normalization"): batch statistics in training (updating running estimates with
    ``momentum``), running estimates in evaluation.

    Args:
        channels: number of channels ``C``.
        eps: added to the variance.
        momentum: weight of the new batch statistics in the running estimates.

    Shapes:
        ``x`` ``[B, C, *positions]``, ``mask`` bool broadcastable to ``[B, 1, *positions]``.

    Example:
        >>> bn = MaskedBatchNorm(2)
        >>> x = torch.randn(3, 2, 5)
        >>> mask = torch.tensor([[1, 1, 1, 0, 0]] * 3).bool().unsqueeze(1)
        >>> bool(bn(x, mask)[..., 3:].abs().sum() == 0)
        True
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Normalise ``x`` ``[B, C, ...]``; positions where ``mask`` is False become zeros."""
        shape = [1, -1] + [1] * (x.dim() - 2)
        keep = mask.to(x.dtype)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            count = keep.expand(x.shape[0], 1, *x.shape[2:]).sum().clamp_min(1)
            mean = (x * keep).sum(dims) / count
            centred = (x - mean.view(shape)) * keep
            var = (centred * centred).sum(dims) / count
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp_min(1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
            centred = (x - mean.view(shape)) * keep
        scale = (self.weight * torch.rsqrt(var + self.eps)).to(x.dtype)
        return centred * scale.view(shape) + self.bias.to(x.dtype).view(shape) * keep

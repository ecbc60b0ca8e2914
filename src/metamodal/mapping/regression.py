"""Regression mappings between modalities: a network ``f`` with ``f(X) ~ Y``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.errors import ConfigError

REGRESSION_LOSSES = ("mse", "cosine")


def regression_loss(prediction: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """How far mapped embeddings are from their targets.

    Args:
        prediction: ``[N, D]`` mapped embeddings ``f(x)``.
        target: ``[N, D]`` embeddings of the target modality of the same samples.
        kind: ``"mse"`` (mean squared error) or ``"cosine"`` (mean of ``1 - cos``).

    Returns:
        A scalar (zero for ``N = 0``).

    Example:
        >>> import torch
        >>> round(float(regression_loss(torch.ones(2, 3), 2 * torch.ones(2, 3), "cosine")), 6)
        0.0
    """
    if kind not in REGRESSION_LOSSES:
        raise ConfigError(f"unknown regression loss {kind!r}", column="regression_loss",
                          fix=f"use one of: {', '.join(REGRESSION_LOSSES)}")
    if prediction.shape[0] == 0:
        return prediction.sum() * 0.0
    return regression_errors(prediction, target, kind).mean()


def regression_errors(prediction: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Each row's `regression_loss`: ``[..., N, D]`` -> ``[..., N]`` (the mean squared error
    of its entries, or ``1 - cos``)."""
    if kind == "mse":
        return (prediction - target).pow(2).mean(-1)
    return 1 - F.cosine_similarity(prediction, target, dim=-1)


class RegressionMap(nn.Module):
    """A small network ``f: [N, D_in] -> [N, D_out]`` mapping one modality's embeddings into
    another's: a residual two-layer MLP (the identity plus a learned correction when the widths
    agree, so that an untrained map starts as "the two spaces coincide").

    Args:
        dim_in: width of the source embeddings.
        dim_out: width of the target embeddings (default ``dim_in``).
        hidden: width of the hidden layer (default ``2 * dim_in``).

    Example:
        >>> import torch
        >>> f = RegressionMap(8)
        >>> f(torch.randn(5, 8)).shape
        torch.Size([5, 8])
    """

    def __init__(self, dim_in: int, dim_out: int | None = None, hidden: int | None = None) -> None:
        super().__init__()
        dim_out = dim_out or dim_in
        hidden = hidden or 2 * dim_in
        self.residual = dim_in == dim_out
        self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.GELU(), nn.Linear(hidden, dim_out))
        if self.residual:  # start at the identity map
            nn.init.zeros_(self.net[2].weight)
            nn.init.zeros_(self.net[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        """``f(x)`` ``[N, D_out]`` from ``x`` ``[N, D_in]``."""
        out = self.net(x)
        return x + out if self.residual else out


def stacked_maps(maps: Sequence[RegressionMap], x: Tensor) -> Tensor:
    """``maps[q](x[q])`` for every ``q`` at once: ``x`` ``[Q, N, D_in]`` -> ``[Q, N, D_out]``,
    each map's weights stacked into batched matrix products (maps of the same widths).

    Example:
        >>> import torch
        >>> maps = [RegressionMap(4), RegressionMap(4)]
        >>> x = torch.randn(2, 3, 4)
        >>> bool(torch.allclose(stacked_maps(maps, x)[1], maps[1](x[1])))
        True
    """
    residual = {m.residual for m in maps}
    if len(residual) != 1:
        raise ValueError("stacked_maps needs maps of the same widths")
    first = [m.net[0] for m in maps]
    second = [m.net[2] for m in maps]
    hidden = F.gelu(torch.baddbmm(torch.stack([layer.bias for layer in first]).unsqueeze(1), x,
                                  torch.stack([layer.weight for layer in first]).transpose(1, 2)))
    out = torch.baddbmm(torch.stack([layer.bias for layer in second]).unsqueeze(1), hidden,
                        torch.stack([layer.weight for layer in second]).transpose(1, 2))
    return x + out if residual.pop() else out

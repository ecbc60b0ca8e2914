"""Tensor fusion (TFN): the outer product of the modalities' embeddings, each extended by 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metamodal.errors import OptionError
from metamodal.fusion.base import Fusion, fusions
from metamodal.registry import require_option

MAX_FEATURES = 65536
"""Largest outer-product size ``(rank_dim + 1) ** M`` that `TensorFusion` accepts."""


def default_rank_dim(modalities: int) -> int:
    """The projection size used when none is given: the largest ``r <= 16`` with
    ``(r + 1) ** modalities <= 4096``.

    Example:
        >>> [default_rank_dim(m) for m in (1, 2, 3, 4, 5)]
        [16, 16, 15, 7, 4]
    """
    r = 16
    while r > 1 and (r + 1) ** modalities > 4096:
        r -= 1
    return r


@fusions.register("tensor")
class TensorFusion(Fusion):
    """Tensor Fusion Network: ``vec([z_1; 1] (x) [z_2; 1] (x) ... (x) [z_M; 1])``, then linear.

    Zadeh et al., 2017, "Tensor Fusion Network for Multimodal Sentiment Analysis". The outer
    product holds every unimodal, bimodal, ..., M-modal interaction. Its size ``(r + 1) ** M``
    explodes with M, so each embedding is first projected linearly to ``rank_dim`` values
    (default: `default_rank_dim`). An absent modality is represented by ``[0, ..., 0; 1]``: only
    its constant 1 survives, so every interaction term involving it drops out multiplicatively
    and the terms of the other modalities are kept. A sample with no modality gets zeros.

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``).
        rank_dim: size of each modality's projection before the product.
        hidden: width of a hidden ReLU layer after the product; 0 for a single linear map.

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]``.

    Example:
        >>> fusion = TensorFusion(modalities=["a", "b"], dim=8, rank_dim=3)
        >>> fusion.features
        16
        >>> present = {"a": torch.ones(2, dtype=torch.bool), "b": torch.tensor([True, False])}
        >>> fusion({"a": torch.randn(2, 8), "b": torch.randn(2, 8)}, present).shape
        torch.Size([2, 8])
    """

    def __init__(
        self,
        *,
        modalities: Sequence[str],
        dim: int,
        rank_dim: int | None = None,
        hidden: int = 0,
    ) -> None:
        super().__init__(modalities=modalities, dim=dim)
        require_option(hidden >= 0, "tensor", f"hidden >= 0, got {hidden}",
                       fix="use 0 (one linear map) or a width, e.g. hidden=64")
        count = len(self.modalities)
        self.rank_dim = default_rank_dim(count) if rank_dim is None else int(rank_dim)
        self.features = (self.rank_dim + 1) ** count
        if self.rank_dim < 1 or self.features > MAX_FEATURES:
            raise OptionError(
                f"tensor: rank_dim={self.rank_dim} with {count} modalities gives an outer "
                f"product of {self.features} values (at most {MAX_FEATURES})",
                fix=f"use a smaller rank_dim (e.g. {default_rank_dim(count)}) or the lowrank "
                "fusion",
            )
        self.reduce = nn.Parameter(torch.randn(count, dim, self.rank_dim) / dim**0.5)
        self.reduce_bias = nn.Parameter(torch.zeros(count, self.rank_dim))
        if hidden > 0:
            self.project: nn.Module = nn.Sequential(
                nn.Linear(self.features, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )
        else:
            self.project = nn.Linear(self.features, dim)

    def product(self, z: Tensor, mask: Tensor) -> Tensor:
        """The flattened outer product ``[B, (rank_dim + 1) ** M]`` of stacked ``z``
        ``[B, M, dim]`` with presence ``mask`` ``[B, M]``."""
        small = torch.einsum("bmd,mdr->bmr", z, self.reduce) + self.reduce_bias
        small = torch.where(mask.unsqueeze(-1), small, torch.zeros((), dtype=small.dtype))
        extended = torch.cat([small, torch.ones_like(small[..., :1])], dim=-1)  # [B, M, r+1]
        out = extended[:, 0]
        for m in range(1, extended.shape[1]):
            out = (out.unsqueeze(-1) * extended[:, m].unsqueeze(1)).flatten(1)
        return out

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``."""
        z, mask = self.stack(embeddings, present)
        return self.zero_empty(self.project(self.product(z, mask)), mask)

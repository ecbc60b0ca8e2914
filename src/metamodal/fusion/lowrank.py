"""Low-rank multimodal fusion (LMF): tensor fusion with the weight tensor in rank-r factors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metamodal.errors import OptionError
from metamodal.fusion.base import Fusion, fusions


@fusions.register("lowrank")
class LowRankFusion(Fusion):
    """LMF: ``h = sum_i w_i * prod_m (W_m^(i) [z_m; 1]) + b`` with modality-specific factors.

    Liu et al., 2018, "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors":
    the tensor-fusion weight is decomposed into ``rank`` factors per modality, so the outer
    product is never formed. An absent modality is represented by ``[0, ..., 0; 1]`` as in
    tensor fusion, i.e. its factor applied to the constant 1 alone (the last row of each
    ``W_m^(i)``, a learned vector); this is exactly tensor fusion with ``[0; 1]`` for the
    absent modality, so the interaction terms that involve it drop out. A sample with no
    modality gets zeros.

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``).
        rank: number of factors per modality.

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]``.

    Example:
        >>> fusion = LowRankFusion(modalities=["a", "b"], dim=8, rank=2)
        >>> present = {"a": torch.ones(2, dtype=torch.bool), "b": torch.tensor([True, False])}
        >>> fusion({"a": torch.randn(2, 8), "b": torch.randn(2, 8)}, present).shape
        torch.Size([2, 8])
    """

    def __init__(self, *, modalities: Sequence[str], dim: int, rank: int = 4) -> None:
        super().__init__(modalities=modalities, dim=dim)
        if rank < 1:
            raise OptionError(f"lowrank: rank must be >= 1, got {rank}", fix="use e.g. rank=4")
        self.rank = rank
        factors = torch.empty(len(self.modalities), rank, dim + 1, dim)
        for m in range(factors.shape[0]):
            nn.init.xavier_normal_(factors[m])
        self.factors = nn.Parameter(factors)
        self.fusion_weights = nn.Parameter(torch.empty(1, rank))
        nn.init.xavier_normal_(self.fusion_weights)
        self.fusion_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``."""
        z, mask = self.stack(embeddings, present)
        extended = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1)  # [B, M, dim + 1]
        per_modality = torch.einsum("bmi,mrio->bmro", extended, self.factors)
        fused = per_modality.prod(dim=1)  # [B, rank, dim]
        out = torch.einsum("bro,r->bo", fused, self.fusion_weights[0]) + self.fusion_bias
        return self.zero_empty(out, mask)

"""Mean fusion: the average of the present modalities' embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from metamodal.data.batch import all_present
from metamodal.fusion.base import Fusion, fusions


@fusions.register("mean")
class MeanFusion(Fusion):
    """Masked mean over the modalities each sample has; no parameters.

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``).

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]`` (zeros for a sample with no
        modality).

    Example:
        >>> import torch
        >>> fusion = MeanFusion(modalities=["a", "b"], dim=2)
        >>> fusion({"a": torch.tensor([[1.0, 1.0]]), "b": torch.tensor([[3.0, 5.0]])},
        ...        {"a": torch.tensor([True]), "b": torch.tensor([True])})
        tensor([[2., 3.]])
    """

    def __init__(self, *, modalities: Sequence[str], dim: int) -> None:
        super().__init__(modalities=modalities, dim=dim)

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``."""
        if len(self.modalities) == 1:  # the mean of one embedding is itself, absent rows zeroed
            (z,), (mask,) = self.columns(embeddings, present)
            if all_present(mask):
                return z
            return torch.where(mask.unsqueeze(1), z, torch.zeros((), dtype=z.dtype))
        z, mask = self.stack(embeddings, present)
        count = mask.sum(dim=1, keepdim=True).clamp_min(1).to(z.dtype)
        return z.sum(dim=1) / count

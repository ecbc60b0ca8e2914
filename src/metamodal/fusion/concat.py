"""Concatenation fusion: the modalities' embeddings side by side, projected to ``dim``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metamodal.errors import OptionError
from metamodal.fusion.base import Fusion, fusions
from metamodal.registry import require_option

MISSING_MODES = ("token", "indicator")


@fusions.register("concat")
class ConcatFusion(Fusion):
    """Concatenate every modality's slot, then a linear map (or an MLP) to ``dim``.

    What an absent modality puts in its slot is set by ``missing``:

    - ``token`` (default): a learned "missing" vector per modality, so the projection can learn
      what to do when a modality is absent;
    - ``indicator``: zeros, plus one presence feature (0/1) per modality appended to the
      concatenation.

    Either way an absent modality's embedding values are never read. A sample with no modality
    present at all gets zeros.

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``).
        missing: ``token`` or ``indicator``.
        hidden: width of a hidden ReLU layer before the output; 0 for a single linear map.

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]``.

    Example:
        >>> fusion = ConcatFusion(modalities=["a", "b"], dim=4)
        >>> present = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([1, 0, 1]).bool()}
        >>> fusion({"a": torch.randn(3, 4), "b": torch.randn(3, 4)}, present).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, *, modalities: Sequence[str], dim: int, missing: str = "token", hidden: int = 0
    ) -> None:
        super().__init__(modalities=modalities, dim=dim)
        require_option(hidden >= 0, "concat", f"hidden >= 0, got {hidden}",
                       fix="use 0 (one linear map) or a width, e.g. hidden=64")
        if missing not in MISSING_MODES:
            raise OptionError(
                f"concat: unknown missing mode {missing!r}",
                fix=f"use one of: {', '.join(MISSING_MODES)}",
            )
        self.missing = missing
        count = len(self.modalities)
        size = count * dim
        if missing == "token":
            self.missing_tokens = nn.Parameter(torch.randn(count, dim) * 0.02)
        else:
            size += count
        if hidden > 0:
            self.project: nn.Module = nn.Sequential(
                nn.Linear(size, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )
        else:
            self.project = nn.Linear(size, dim)

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``."""
        z, mask = self.stack(embeddings, present)
        if self.missing == "token":
            slots = torch.where(mask.unsqueeze(-1), z, self.missing_tokens.to(z.dtype))
            features = slots.flatten(1)
        else:
            features = torch.cat([z.flatten(1), mask.to(z.dtype)], dim=1)
        return self.zero_empty(self.project(features), mask)

"""Gated fusion: an input-dependent convex mixture of the present modalities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from metamodal.fusion.base import Fusion, fusions, masked_softmax
from metamodal.registry import require_option


@fusions.register("gated")
class GatedFusion(Fusion):
    """A learned gate scores each present modality from its embedding; softmax; weighted sum.

    Generalises the adaptive mixture of Xing et al., 2019, "Adaptive Cross-Modal Few-shot
    Learning" (AM3), which mixes a visual and a text representation with a weight computed from
    the text, to any number of modalities: modality ``m`` of a sample gets the score
    ``s_m = w_m . relu(W_m z_m + b_m) + c_m`` (a small MLP per modality, computed for all
    modalities at once), the weights are a softmax of the scores over the modalities the sample
    has, and the output is the weighted sum of those embeddings. The weights of the last call
    are kept in ``last_weights`` ``[B, M]`` (detached; zeros for absent modalities) for reports.

    Args:
        modalities: the modality names.
        dim: embedding size (also ``out_dim``).
        hidden: width of each modality's gate MLP.

    Shapes:
        ``{name: [B, dim]}``, ``{name: bool [B]}`` -> ``[B, dim]`` (zeros for a sample with no
        modality).

    Example:
        >>> fusion = GatedFusion(modalities=["image", "text"], dim=4)
        >>> out = fusion({"image": torch.randn(3, 4), "text": torch.randn(3, 4)},
        ...              {"image": torch.ones(3, dtype=torch.bool),
        ...               "text": torch.tensor([True, False, True])})
        >>> out.shape, fusion.last_weights[1].tolist()
        (torch.Size([3, 4]), [1.0, 0.0])
    """

    def __init__(self, *, modalities: Sequence[str], dim: int, hidden: int = 32) -> None:
        super().__init__(modalities=modalities, dim=dim)
        require_option(hidden >= 1, "gated", f"hidden >= 1, got {hidden}", fix="use e.g. hidden=32")
        count = len(self.modalities)
        self.gate_in = nn.Parameter(torch.randn(count, dim, hidden) / dim**0.5)
        self.gate_in_bias = nn.Parameter(torch.zeros(count, hidden))
        self.gate_out = nn.Parameter(torch.randn(count, hidden) / hidden**0.5)
        self.gate_out_bias = nn.Parameter(torch.zeros(count))
        self.last_weights: Tensor | None = None

    def scores(self, z: Tensor) -> Tensor:
        """Gate scores ``[B, M]`` of stacked embeddings ``z`` ``[B, M, dim]``."""
        h = torch.relu(torch.einsum("bmd,mdh->bmh", z, self.gate_in) + self.gate_in_bias)
        return (h * self.gate_out).sum(-1) + self.gate_out_bias

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        """Fuse: ``{name: [B, dim]}`` -> ``[B, dim]``; sets ``last_weights`` ``[B, M]``."""
        z, mask = self.stack(embeddings, present)
        weights = masked_softmax(self.scores(z), mask)
        self.last_weights = weights.detach()
        return (weights.unsqueeze(-1) * z).sum(dim=1)

"""Fusion modules, registered by name: ``fusions.create("gated", modalities=[...], dim=64)``.

=============  ===========================================================================
name           what
=============  ===========================================================================
``concat``     concatenation (learned "missing" token or presence indicator), linear
``mean``       masked mean over present modalities
``gated``      input-dependent softmax weights over present modalities (AM3-style mixture)
``attention``  transformer over modality tokens + CLS, absent tokens masked
``tensor``     Tensor Fusion Network: outer product of ``[z_m; 1]``, linear
``lowrank``    Low-rank Multimodal Fusion: rank-r modality-specific factors
``late``       per-modality embeddings; ``combine`` mixes per-modality logits
=============  ===========================================================================

Every fusion ignores the values of absent modalities and returns zeros for a sample with no
modality; only ``late`` has ``late = True``.
"""

from metamodal.fusion import attention, concat, gated, late, lowrank, mean, tensor
from metamodal.fusion.base import Fusion, build_fusion, fusions, masked_softmax

__all__ = [
    "Fusion",
    "attention",
    "build_fusion",
    "concat",
    "fusions",
    "gated",
    "late",
    "lowrank",
    "masked_softmax",
    "mean",
    "tensor",
]

# The package doubles as its registry, so `metamodal.fusions.create(...)` works whether
# `metamodal.fusions` resolves to this package or to the registry object.
create = fusions.create
get = fusions.get
names = fusions.names
register = fusions.register

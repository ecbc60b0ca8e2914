"""The ``tabular`` kind: numeric columns, inline, standardised to float ``[B, F]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.kinds.base import AugmentContext, ModalityAugment, ModalityKind, register_kind
from metamodal.data.loaders.base import Cell, DecodeContext


@register_kind
class TabularKind(ModalityKind):
    """Numeric fields read from a list of ``columns``; Gaussian noise as augmentation.

    Example:
        >>> TabularKind().multi_column
        True
    """

    name = "tabular"
    loader = "tabular"
    default_encoder = "mlp"
    multi_column = True
    augment_options = {"noise": (0, 10)}

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        return {"features": int(batch.values.shape[-1])}

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        noise = torch.randn(batch.values.shape, generator=generator) * spec.get("noise")
        return ModalityBatch(batch.values + noise.to(batch.values), batch.present, batch.lengths)

"""The ``text`` kind: the text itself, inline, tokenised to long ``[B, L]``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    register_kind,
    summary,
)
from metamodal.data.loaders.base import Cell, DecodeContext


def token_dropout(mb: ModalityBatch, rate: float, generator: torch.Generator) -> ModalityBatch:
    """Drop each token of ``[B, L]`` with probability ``rate``, keeping at least one per text.

    Example:
        >>> mb = ModalityBatch(torch.tensor([[5, 6, 7]]), torch.tensor([True]), torch.tensor([3]))
        >>> out = token_dropout(mb, 0.9, torch.Generator().manual_seed(0))
        >>> int(out.lengths[0]) >= 1
        True
    """
    tokens, lengths = mb.values, mb.lengths
    if lengths is None:
        lengths = (tokens != 0).sum(1)
    valid = torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)
    keep = valid & (torch.rand(tokens.shape, generator=generator) >= rate)
    first = valid & (torch.arange(tokens.shape[1]) == 0)
    keep |= first & (keep.sum(1, keepdim=True) == 0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    packed = torch.where(keep, tokens, 0).gather(1, order)
    return ModalityBatch(packed, mb.present, keep.sum(1).to(lengths.dtype))


@register_kind
class TextKind(ModalityKind):
    """Text written in the cell; token dropout as augmentation.

    Example:
        >>> TextKind().media, TextKind().length_unit
        (False, 'tokens')
    """

    name = "text"
    loader = "text"
    default_encoder = "bag"
    length_unit = "tokens"
    length_axis = 1
    augment_options = {"token_dropout": (0, 0.9)}

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        chars = [len(str(c)) for c in cells if c is not None]
        return {"characters": summary(chars)} if chars else {}

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        return token_dropout(batch, spec.get("token_dropout"), generator)

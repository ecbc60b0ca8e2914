"""Tabular encoder: an MLP over a fixed vector of numeric fields ``[B, F]``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.layers import mlp_layers
from metamodal.errors import ModalityError, OptionError


@register_encoder("mlp", ["tabular"])
class TabularMLP(Encoder):
    """A multi-layer perceptron: (linear -> ReLU -> dropout) per hidden layer, then linear.

    Args:
        dim: output size.
        input_info: ``{"features"}`` from the tabular loader.
        hidden: widths of the hidden layers (empty for a single linear map).
        dropout: dropout after each hidden layer.

    Shapes:
        ``[B, features]`` -> ``[B, dim]``.

    Example:
        >>> import torch
        >>> enc = TabularMLP(dim=8, input_info={"features": 3}, hidden=[16, 16])
        >>> enc(ModalityBatch(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))).shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        hidden: int | Sequence[int] = (64,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.features,) = require_info("mlp", input_info, "features")
        widths = [int(hidden)] if isinstance(hidden, int) else [int(w) for w in hidden]
        if any(w < 1 for w in widths):
            raise OptionError(
                f"mlp: hidden widths must be positive, got {hidden!r}",
                fix="use e.g. hidden=[64]",
            )
        self.net = nn.Sequential(*mlp_layers(self.features, widths, dim, dropout))

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is ``[B, features]``."""
        values = batch.values
        if values.dim() != 2 or values.shape[1] != self.features:
            raise ModalityError(
                f"encoder 'mlp' takes [B, {self.features}] fields, got {tuple(values.shape)}",
                fix="decode the modality with the tabular loader the encoder was built for",
            )

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed fields ``[n, features]`` -> ``[n, dim]``."""
        return self.net(values)

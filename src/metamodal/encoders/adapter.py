"""Trainable adapters over frozen pretrained features, registered under the encoders' names.

``--encoder caption=minilm`` makes the preprocessor compute MiniLM features once per input
(`metamodal.encoders.features`); the model-side encoder ``minilm`` is this adapter, the part
the learner trains: a small MLP over the ``[B, F]`` features, optionally plus a residual
linear map (adapters on frozen features in the spirit of Houlsby et al. 2019,
"Parameter-Efficient Transfer Learning for NLP", and Gao et al. 2021, "CLIP-Adapter", whose
adapter output is likewise added to a residual path):

``z = MLP(x) + W x`` (with ``residual``) or ``z = MLP(x)``, ``[B, F] -> [B, dim]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder
from metamodal.encoders.layers import mlp_layers
from metamodal.errors import ConfigError, ModalityError, OptionError


class FeatureAdapter(Encoder):
    """MLP (+ optional residual linear map) over frozen features ``[B, F]`` -> ``[B, dim]``.

    Args:
        dim: output size.
        input_info: ``{"features": F, "pretrained": name}`` from the pretrained loader.
        hidden: widths of the MLP's hidden layers (default ``(256,)``; empty: one linear map).
        residual: add a linear map of the features to the MLP's output (default True).
        dropout: dropout on the features and after each hidden layer (default 0.1).

    Raises:
        ConfigError: ``input_info`` does not come from this encoder's pretrained features (the
            modality was not prepared with the pretrained encoder).

    Example:
        >>> import torch
        >>> enc = MiniLMAdapter(dim=8, input_info={"features": 384, "pretrained": "minilm"})
        >>> enc(ModalityBatch(torch.randn(3, 384), torch.ones(3, dtype=torch.bool))).shape
        torch.Size([3, 8])
    """

    pretrained_name = ""

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        hidden: Sequence[int] = (256,),
        residual: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        name = self.pretrained_name
        if input_info.get("pretrained") != name or not isinstance(input_info.get("features"), int):
            raise ConfigError(
                f"encoder {name!r} adapts the features of the frozen pretrained encoder "
                f"{name!r}, but this modality was prepared as {dict(input_info)}",
                fix=f"prepare the data with that encoder: prepare_data(..., encoders="
                f"{{modality: {name!r}}}) (the Trainer does it from TrainConfig.encoders)",
            )
        self.features = int(input_info["features"])
        widths = [int(hidden)] if isinstance(hidden, int) else [int(w) for w in hidden]
        if any(w < 1 for w in widths) or not 0.0 <= float(dropout) < 1.0:
            raise OptionError(f"{name}: hidden widths must be positive and dropout in [0, 1), "
                              f"got hidden={hidden!r}, dropout={dropout!r}",
                              fix="use e.g. hidden=[256], dropout=0.1")
        self.mlp = nn.Sequential(nn.Dropout(dropout),
                                 *mlp_layers(self.features, widths, dim, dropout))
        self.residual = nn.Linear(self.features, dim, bias=False) if residual else None

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is ``[B, features]``."""
        values = batch.values
        if values.dim() != 2 or values.shape[1] != self.features:
            raise ModalityError(
                f"encoder {self.pretrained_name!r} takes [B, {self.features}] features, got "
                f"{tuple(values.shape)}",
                fix="decode the modality with the pretrained loader the encoder was built for",
            )

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Adapt features ``[n, F]`` -> ``[n, dim]``."""
        out = self.mlp(values)
        if self.residual is not None:
            out = out + self.residual(values)
        return out


@register_encoder("minilm", ["text"])
class MiniLMAdapter(FeatureAdapter):
    """The trainable adapter over frozen all-MiniLM-L6-v2 text features (384-d)."""

    pretrained_name = "minilm"


@register_encoder("efficientnet-lite0", ["image"])
class EfficientNetLite0Adapter(FeatureAdapter):
    """The trainable adapter over frozen EfficientNet-Lite0 image features (1280-d)."""

    pretrained_name = "efficientnet-lite0"


@register_encoder("resemblyzer", ["audio"])
class ResemblyzerAdapter(FeatureAdapter):
    """The trainable adapter over frozen GE2E speaker-encoder audio features (256-d)."""

    pretrained_name = "resemblyzer"

"""Encoders of variable-length sequences: a bidirectional GRU (``gru``) and a TCN (``tcn``).

Numeric sequences arrive as float ``[B, T, D]`` with lengths ``[B]``; ``gru`` also takes text
(token ids ``[B, L]``) through a token embedding. Both look only at the valid steps of each
sample, so the amount of padding never changes an embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.layers import (
    check_pool,
    length_mask,
    masked_pool,
    pooled_size,
    resolve_lengths,
)
from metamodal.encoders.text import TokenEmbedding, token_mask
from metamodal.errors import ModalityError, OptionError
from metamodal.registry import MAX_LAYERS, require_option


def check_steps(name: str, batch: ModalityBatch, features: int) -> None:
    """Raise `ModalityError` unless ``batch.values`` is float ``[B, T, features]``."""
    values = batch.values
    if values.dim() != 3 or values.shape[2] != features or not values.is_floating_point():
        raise ModalityError(
            f"encoder {name!r} takes float [B, T, {features}] sequences, got "
            f"{values.dtype} {tuple(values.shape)}",
            fix="decode the modality with the sequence loader the encoder was built for",
        )


@register_encoder("gru", ["sequence", "text"])
class GRUEncoder(Encoder):
    """Bidirectional GRU over the valid steps; the final hidden states, mapped to ``dim``.

    Cho et al., 2014, "Learning Phrase Representations using RNN Encoder-Decoder for
    Statistical Machine Translation" (the GRU), run in both directions (Schuster & Paliwal,
    1997, "Bidirectional Recurrent Neural Networks"). Sequences are packed with their lengths
    (``pack_padded_sequence``), so padding is never read. When ``input_info`` has
    ``vocab_size`` the input is text and goes through a token embedding first; otherwise it is
    a numeric sequence with ``features`` values per step.

    Args:
        dim: output size.
        input_info: ``{"features", "max_length"}`` (sequence) or ``{"vocab_size",
            "max_length"}`` (text).
        hidden: GRU hidden size per direction.
        layers: stacked GRU layers.
        bidirectional: run a second GRU backwards.
        embedding_dim: token embedding size (text only).
        dropout: dropout between stacked layers.

    Shapes:
        ``[B, T, features]`` or token ids ``[B, L]``, with lengths ``[B]`` -> ``[B, dim]``.

    Example:
        >>> enc = GRUEncoder(dim=8, input_info={"features": 2, "max_length": 5}, hidden=4)
        >>> batch = ModalityBatch(torch.randn(3, 5, 2), torch.ones(3, dtype=torch.bool),
        ...                       torch.tensor([5, 2, 3]))
        >>> enc(batch).shape
        torch.Size([3, 8])
    """

    batches_tasks = False  # packing needs the lengths on the host

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        hidden: int = 64,
        layers: int = 1,
        bidirectional: bool = True,
        embedding_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        require_option(min(hidden, embedding_dim) >= 1 and 1 <= layers <= MAX_LAYERS
                       and 0 <= dropout < 1, "gru",
                       f"hidden, embedding_dim >= 1, layers in 1..{MAX_LAYERS} and "
                       f"0 <= dropout < 1, got {hidden}, {embedding_dim}, {layers}, {dropout}",
                       fix="use e.g. hidden=64, layers=1")
        self.text = "vocab_size" in input_info
        if self.text:
            (vocab_size,) = require_info("gru", input_info, "vocab_size")
            self.embed: TokenEmbedding | None = TokenEmbedding(vocab_size, embedding_dim)
            size = embedding_dim
        else:
            (size,) = require_info("gru", input_info, "features")
            self.embed = None
        self.features = size
        self.rnn = nn.GRU(
            size,
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.directions = 2 if bidirectional else 1
        self.project = nn.Linear(hidden * self.directions, dim)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is token ids ``[B, L]`` (text) or
        float ``[B, T, features]`` (sequence), whichever the encoder was built for."""
        if self.text:
            if batch.values.dim() != 2 or batch.values.is_floating_point():
                raise ModalityError(
                    f"encoder 'gru' was built for text and takes token ids, long [B, L]; got "
                    f"{batch.values.dtype} {tuple(batch.values.shape)}",
                    fix="decode the modality with the text loader",
                )
        else:
            check_steps("gru", batch, self.features)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed ``[n, T, D]`` (or token ids ``[n, L]``) with lengths ``[n]`` -> ``[n, dim]``."""
        if self.embed is not None:
            lengths = token_mask(values, lengths).sum(1) if lengths is None else lengths
            lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
            x = self.embed(values, lengths)
        else:
            lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
            x = values
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, last = self.rnn(packed)  # [layers * directions, n, hidden], in input order
        final = last[-self.directions :].transpose(0, 1).flatten(1)
        return self.project(final)


class _CausalBlock(nn.Module):
    """Two dilated causal convolutions with ReLU and dropout, plus a residual connection."""

    def __init__(
        self, channels: int, width: int, kernel_size: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.left = (kernel_size - 1) * dilation
        self.conv1 = nn.Conv1d(channels, width, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, kernel_size, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        self.residual = nn.Conv1d(channels, width, 1) if channels != width else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(torch.relu(self.conv1(F.pad(x, (self.left, 0)))))
        h = self.dropout(torch.relu(self.conv2(F.pad(h, (self.left, 0)))))
        return torch.relu(h + self.residual(x))


@register_encoder("tcn", ["sequence"])
class TCN(Encoder):
    """Temporal convolutional network: dilated causal 1-D conv blocks, masked pooling, linear.

    Bai et al., 2018, "An Empirical Evaluation of Generic Convolutional and Recurrent Networks
    for Sequence Modeling": residual blocks of two dilated causal convolutions, dilation
    doubling per level. Being causal, the output at a valid step depends only on valid steps,
    so right padding never leaks in; pooling (mean and/or max) runs over valid steps only.

    Args:
        dim: output size.
        input_info: ``{"features", "max_length"}`` from the sequence loader.
        channels: channels of every block.
        levels: number of blocks (dilations 1, 2, 4, ...).
        kernel_size: width of each convolution.
        dropout: dropout after each convolution.
        pool: ``mean``, ``max`` or ``meanmax`` (both, concatenated) over valid steps.

    Shapes:
        ``[B, T, features]`` with lengths ``[B]`` -> ``[B, dim]``.

    Example:
        >>> enc = TCN(dim=8, input_info={"features": 2, "max_length": 5}, channels=4)
        >>> batch = ModalityBatch(torch.randn(3, 5, 2), torch.ones(3, dtype=torch.bool),
        ...                       torch.tensor([5, 2, 3]))
        >>> enc(batch).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        channels: int = 64,
        levels: int = 3,
        kernel_size: int = 3,
        dropout: float = 0.0,
        pool: str = "meanmax",
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.features,) = require_info("tcn", input_info, "features")
        check_pool("tcn", pool)
        if not 1 <= levels <= MAX_LAYERS or kernel_size < 1 or channels < 1:
            raise OptionError(
                f"tcn needs channels, kernel_size >= 1 and levels in 1..{MAX_LAYERS}, got "
                f"{channels}, {kernel_size}, {levels}",
                fix="use e.g. channels=64, levels=3, kernel_size=3",
            )
        self.pool = pool
        self.blocks = nn.Sequential(
            *(
                _CausalBlock(self.features if i == 0 else channels, channels, kernel_size,
                             2**i, dropout)
                for i in range(levels)
            )
        )
        self.project = nn.Linear(pooled_size(channels, pool), dim)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is float ``[B, T, features]``."""
        check_steps("tcn", batch, self.features)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed ``[n, T, features]`` with lengths ``[n]`` -> ``[n, dim]``."""
        lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
        mask = length_mask(lengths, values.shape[1])
        x = torch.where(mask.unsqueeze(-1), values, torch.zeros((), dtype=values.dtype))
        h = self.blocks(x.transpose(1, 2)).transpose(1, 2)  # [n, T, channels]
        return self.project(masked_pool(h, mask, self.pool))

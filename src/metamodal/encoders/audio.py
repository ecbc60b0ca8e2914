"""Audio encoder: a small 2-D CNN over log-mel spectrograms ``[B, n_mels, frames]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.layers import (
    MaskedBatchNorm,
    check_pool,
    length_mask,
    masked_pool,
    pooled_size,
    resolve_lengths,
    to_channels_last,
)
from metamodal.errors import ModalityError, OptionError
from metamodal.registry import MAX_LAYERS


@register_encoder("audio-cnn", ["audio"])
class AudioCNN(Encoder):
    """A spectrogram treated as a one-channel image: conv blocks, pooling over valid frames.

    The common CNN baseline for sound classification (e.g. Choi et al., 2016, "Automatic
    Tagging Using Deep Convolutional Neural Networks"; Hershey et al., 2017, "CNN
    Architectures for Large-Scale Audio Classification"). Each block is conv3x3 -> BatchNorm ->
    ReLU -> 2x2 max-pool over (mels, frames). Variable lengths are exact: BatchNorm counts only
    valid frames (`MaskedBatchNorm`), frames past each clip's length are zeroed after every
    block, pooling over time uses ``ceil_mode`` (a clip's last odd frame is kept whatever the
    padding), and the final pooling (mean over mels, then ``pool`` over valid frames) ignores
    padding. The same clip therefore gets the same embedding however much it is padded.

    Args:
        dim: output size.
        input_info: ``{"n_mels", "max_frames"}`` from the audio loader.
        channels: filters per block.
        blocks: number of blocks.
        pool: ``mean``, ``max`` or ``meanmax`` (both, concatenated) over valid frames.

    Shapes:
        ``[B, n_mels, frames]`` with lengths ``[B]`` (frames) -> ``[B, dim]``.

    Example:
        >>> enc = AudioCNN(dim=8, input_info={"n_mels": 16, "max_frames": 20}, channels=4)
        >>> batch = ModalityBatch(torch.randn(3, 16, 20), torch.ones(3, dtype=torch.bool),
        ...                       torch.tensor([20, 7, 12]))
        >>> enc(batch).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        channels: int = 32,
        blocks: int = 4,
        pool: str = "mean",
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.n_mels,) = require_info("audio-cnn", input_info, "n_mels")
        check_pool("audio-cnn", pool)
        if channels < 1 or not 1 <= blocks <= MAX_LAYERS:
            raise OptionError(
                f"audio-cnn needs channels >= 1 and blocks in 1..{MAX_LAYERS}, got {channels}, "
                f"{blocks}",
                fix="use e.g. channels=32, blocks=4",
            )
        self.pool = pool
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.mel_pools: list[int] = []
        mels, inputs = self.n_mels, 1
        for _ in range(blocks):
            self.convs.append(nn.Conv2d(inputs, channels, 3, padding=1, bias=False))
            self.norms.append(MaskedBatchNorm(channels))
            self.mel_pools.append(2 if mels >= 2 else 1)
            mels, inputs = -(-mels // self.mel_pools[-1]), channels
        self.project = nn.Linear(pooled_size(channels, pool), dim)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is float ``[B, n_mels, frames]``."""
        values = batch.values
        if values.dim() != 3 or values.shape[1] != self.n_mels or not values.is_floating_point():
            raise ModalityError(
                f"encoder 'audio-cnn' takes float [B, {self.n_mels}, frames] spectrograms, got "
                f"{values.dtype} {tuple(values.shape)}",
                fix="decode the modality with the audio loader the encoder was built for",
            )

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed spectrograms ``[n, n_mels, frames]`` with lengths ``[n]`` -> ``[n, dim]``."""
        frames = values.shape[2]
        # clips that all fill the window (a common case: fixed-length clips) need no masking:
        # BatchNorm then takes its native kernel. The check reads the lengths, so it is made
        # only where that costs nothing: not under vmap, and not on an accelerator (a wait)
        full = not self.under_task_vmap and (lengths is None or (
            lengths.device.type == "cpu" and bool((lengths >= frames).all())))
        lengths = resolve_lengths(lengths, frames, values.shape[0], values.device)
        mask = length_mask(lengths, frames)[:, None, None, :]  # [n, 1, 1, frames]
        x = values.unsqueeze(1) if full else torch.where(
            mask, values.unsqueeze(1), torch.zeros((), dtype=values.dtype))
        # channels_last: convolutions, MaskedBatchNorm and max-pooling keep it, and run faster
        x = to_channels_last(x, batched=self.under_task_vmap)
        for conv, norm, mel_pool in zip(self.convs, self.norms, self.mel_pools, strict=True):
            x = torch.relu(norm(conv(x), None if full else mask))
            x = F.max_pool2d(x, (mel_pool, 2), ceil_mode=True)
            # windows past a clip's end pooled only zeros, so x is already zero there
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            mask = length_mask(lengths, x.shape[3])[:, None, None, :]
        steps = x.mean(dim=2).transpose(1, 2)  # [n, frames', channels]
        return self.project(masked_pool(steps, mask[:, 0, 0, :], self.pool))

"""Video encoder (``video-conv``): a per-frame ConvNet with temporal pooling.

Input ``[B, T, C, H, W]`` frames from the video loader; each frame goes through the four-block
ConvNet of the image kind (`metamodal.encoders.image.Conv4`), and the ``T`` frame embeddings are
pooled over time: their mean (``temporal = "mean"``, as in Karpathy et al. 2014, "Large-scale
Video Classification with Convolutional Neural Networks", late fusion), or a 1-D convolution
over time followed by the mean (``temporal = "conv"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.image import Conv4
from metamodal.errors import ModalityError, OptionError

TEMPORAL = ("mean", "conv")
"""How `VideoConv` pools frame embeddings over time."""


@register_encoder("video-conv", ["video"])
class VideoConv(Encoder):
    """Per-frame ConvNet (`Conv4`) with temporal pooling.

    Args:
        dim: output size.
        input_info: ``{"frames", "channels", "height", "width"}`` from the video loader.
        hidden: filters per ConvNet block.
        blocks: ConvNet blocks.
        temporal: ``"mean"`` (mean of the frame embeddings) or ``"conv"`` (a kernel-3 1-D
            convolution over time, ReLU, then the mean).

    Shapes:
        ``[B, T, C, H, W]`` -> ``[B, dim]``; rows of absent samples are zeros.

    Example:
        >>> import torch
        >>> info = {"frames": 4, "channels": 3, "height": 16, "width": 16}
        >>> enc = VideoConv(dim=8, input_info=info, hidden=4)
        >>> batch = ModalityBatch(torch.rand(2, 4, 3, 16, 16), torch.tensor([True, False]))
        >>> out = enc(batch)
        >>> out.shape, bool(out[1].abs().sum() == 0)
        (torch.Size([2, 8]), True)
    """

    def __init__(self, *, dim: int, input_info: Mapping[str, Any], hidden: int = 32,
                 blocks: int = 4, temporal: str = "mean") -> None:
        super().__init__(dim=dim, input_info=input_info)
        self.frames, self.channels, self.height, self.width = require_info(
            "video-conv", input_info, "frames", "channels", "height", "width")
        if temporal not in TEMPORAL:
            raise OptionError(f"video-conv temporal must be one of {TEMPORAL}, got "
                              f"{temporal!r}", fix='set temporal = "mean" or "conv"')
        self.frame_encoder = Conv4(dim=dim, input_info={
            "channels": self.channels, "height": self.height, "width": self.width},
            hidden=hidden, blocks=blocks)
        self.temporal = temporal
        self.time_conv = nn.Conv1d(dim, dim, 3, padding=1) if temporal == "conv" else None

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless the values are ``[B, T, C, H, W]`` as built for."""
        shape = tuple(batch.values.shape[1:])
        if shape != (self.frames, self.channels, self.height, self.width):
            raise ModalityError(
                "encoder 'video-conv' was built for videos of shape "
                f"{(self.frames, self.channels, self.height, self.width)} (T, C, H, W), "
                f"got {shape}",
                fix="decode videos with the same loader options (frames, size, channels)")

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed videos ``[n, T, C, H, W]`` -> ``[n, dim]``."""
        n, t = values.shape[:2]
        frames = self.frame_encoder.encode(values.reshape(n * t, *values.shape[2:]), None)
        frames = frames.view(n, t, -1)  # [n, T, dim]
        if self.time_conv is not None:
            frames = self.time_conv(frames.transpose(1, 2)).relu().transpose(1, 2)
        return frames.mean(1)

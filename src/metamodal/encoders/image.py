"""Image encoders: the four-block ConvNet (``conv4``) and the small residual net (``resnet12``).

Both take ``[B, C, H, W]`` images of the size the image loader reports and work on small
inputs (16x16, 28x28, 32x32, ...): a 2x2 max-pool is applied along an axis only while that axis
is at least 2 long, so spatial sizes never reach 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.layers import to_channels_last
from metamodal.errors import ModalityError, OptionError
from metamodal.registry import MAX_LAYERS


def _pool_kernel(height: int, width: int, *, last: bool) -> tuple[int, int]:
    """A 2x2 pooling kernel, 1 along an axis that is already 1 long; before another
    BatchNorm layer no axis is pooled down to 1 (with a single image in a training batch,
    BatchNorm would see one value per channel and fail)."""
    floor = 1 if last else 2
    return (2 if height // 2 >= floor else 1, 2 if width // 2 >= floor else 1)


class _ImageEncoder(Encoder):
    """Shared input checks and memory layout of the image encoders."""

    def __init__(self, *, dim: int, input_info: Mapping[str, Any], name: str) -> None:
        super().__init__(dim=dim, input_info=input_info)
        self.channels, self.height, self.width = require_info(
            name, input_info, "channels", "height", "width"
        )
        self._name = name

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless the images are ``[B, channels, height, width]``."""
        shape = tuple(batch.values.shape[1:])
        if shape != (self.channels, self.height, self.width):
            raise ModalityError(
                f"encoder {self._name!r} was built for images of shape "
                f"{(self.channels, self.height, self.width)} (C, H, W), got {shape}",
                fix="decode images with the same loader (size, mode) the encoder was built for",
            )

    def channels_last(self, values: Tensor) -> Tensor:
        """Images ``[n, C, H, W]`` in ``channels_last`` memory format (`to_channels_last`):
        this CPU build's convolutions, BatchNorm and max-pooling run several times faster on
        it, in training and evaluation, and each keeps the format. Its BatchNorm accumulates
        batch statistics in another order: float32 training gradients differ from float64's
        by up to about twice the plain layout's error (relative, per weight: 7e-6 against 3e-6
        for ``conv4`` on 16 x 16 images, 3e-3 against 1.4e-3 for ``resnet12`` on 28 x 28), far
        below the noise of sampling episodes (``benchmarks/cpu_path.py``)."""
        return to_channels_last(values, batched=self.under_task_vmap)


@register_encoder("conv4", ["image"])
class Conv4(_ImageEncoder):
    """The four-block ConvNet of few-shot learning, followed by a linear map to ``dim``.

    Each block is conv3x3 (``hidden`` filters) -> BatchNorm -> ReLU -> 2x2 max-pool (Vinyals et
    al., 2016, "Matching Networks for One Shot Learning"; Snell et al., 2017, "Prototypical
    Networks for Few-shot Learning"). The final feature map is flattened and mapped linearly to
    ``dim``. Pooling along an axis stops once that axis is 1 long, so 16x16 inputs work.

    The ReLU runs after the max-pool, on a quarter of the values: the same values and the same
    gradients, since ReLU keeps positive values as they are and the maximum of a window is
    positive exactly where the maximum of its ReLU is (in both orders the gradient reaches the
    window's first maximal entry where that maximum is positive, and nothing otherwise).

    Args:
        dim: output size.
        input_info: ``{"channels", "height", "width"}`` from the image loader.
        hidden: filters per block (64 in the papers).
        blocks: number of blocks (4 in the papers).

    Shapes:
        ``[B, channels, height, width]`` -> ``[B, dim]``.

    Example:
        >>> import torch
        >>> enc = Conv4(dim=32, input_info={"channels": 1, "height": 16, "width": 16}, hidden=8)
        >>> batch = ModalityBatch(torch.randn(5, 1, 16, 16), torch.ones(5, dtype=torch.bool))
        >>> enc(batch).shape
        torch.Size([5, 32])
    """

    def __init__(
        self, *, dim: int, input_info: Mapping[str, Any], hidden: int = 64, blocks: int = 4
    ) -> None:
        super().__init__(dim=dim, input_info=input_info, name="conv4")
        if hidden < 1 or not 1 <= blocks <= MAX_LAYERS:
            raise OptionError(
                f"conv4 needs hidden >= 1 and blocks in 1..{MAX_LAYERS}, got hidden={hidden}, "
                f"blocks={blocks}",
                fix="use e.g. hidden=64, blocks=4",
            )
        layers: list[nn.Module] = []
        height, width, channels = self.height, self.width, self.channels
        for block in range(blocks):
            kernel = _pool_kernel(height, width, last=block == blocks - 1)
            layers += [nn.Conv2d(channels, hidden, 3, padding=1), nn.BatchNorm2d(hidden)]
            if kernel != (1, 1):
                layers.append(nn.MaxPool2d(kernel))
            layers.append(nn.ReLU(inplace=True))
            height, width, channels = height // kernel[0], width // kernel[1], hidden
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(channels * height * width, dim)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed images ``[n, C, H, W]`` -> ``[n, dim]``."""
        return self.project(self.features(self.channels_last(values)).flatten(1))


class _ResidualBlock(nn.Module):
    """Three conv3x3-BatchNorm layers with LeakyReLU, a 1x1 shortcut, then 2x2 max-pool."""

    def __init__(
        self, channels: int, width: int, slope: float, kernel: tuple[int, int]
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(slope),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(slope),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut = nn.Sequential(
            nn.Conv2d(channels, width, 1, bias=False), nn.BatchNorm2d(width)
        )
        self.activation = nn.LeakyReLU(slope)
        self.pool = nn.MaxPool2d(kernel) if kernel != (1, 1) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


@register_encoder("resnet12", ["image"])
class ResNet12(_ImageEncoder):
    """ResNet-12: four residual blocks of three conv3x3 layers, global average pool, linear.

    As in Oreshkin et al., 2018, "TADAM: Task dependent adaptive metric for improved few-shot
    learning" and Lee et al., 2019, "Meta-Learning with Differentiable Convex Optimization"
    (MetaOptNet), without DropBlock. Each block: (conv3x3 -> BatchNorm -> LeakyReLU) x 2 ->
    conv3x3 -> BatchNorm, plus a 1x1-conv shortcut, LeakyReLU, 2x2 max-pool. The default widths
    (32, 64, 128, 256) are half of TADAM's (64, 128, 256, 512) and about two fifths of
    MetaOptNet's (64, 160, 320, 640), small enough for a CPU.

    Args:
        dim: output size.
        input_info: ``{"channels", "height", "width"}`` from the image loader.
        widths: output channels of each block (one block per entry).
        slope: negative slope of the LeakyReLU (0.1 in the papers).

    Shapes:
        ``[B, channels, height, width]`` -> ``[B, dim]``.

    Example:
        >>> import torch
        >>> enc = ResNet12(dim=16, input_info={"channels": 3, "height": 16, "width": 16},
        ...                widths=(8, 8, 16, 16))
        >>> batch = ModalityBatch(torch.randn(2, 3, 16, 16), torch.ones(2, dtype=torch.bool))
        >>> enc(batch).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        widths: Sequence[int] = (32, 64, 128, 256),
        slope: float = 0.1,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info, name="resnet12")
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise OptionError(
                f"resnet12 needs a non-empty list of positive widths, got {widths!r}",
                fix="use e.g. widths=[32, 64, 128, 256]",
            )
        blocks: list[nn.Module] = []
        height, width, channels = self.height, self.width, self.channels
        for block, out in enumerate(widths):
            kernel = _pool_kernel(height, width, last=block == len(widths) - 1)
            blocks.append(_ResidualBlock(channels, out, slope, kernel))
            height, width, channels = height // kernel[0], width // kernel[1], out
        self.blocks = nn.Sequential(*blocks)
        self.project = nn.Linear(channels, dim)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed images ``[n, C, H, W]`` -> ``[n, dim]``."""
        return self.project(self.blocks(self.channels_last(values)).mean(dim=(2, 3)))

"""Small building blocks shared by encoders: length masks, masked pooling, masked BatchNorm,
channels_last conversion."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from metamodal.errors import OptionError


def length_mask(lengths: Tensor, size: int) -> Tensor:
    """Bool ``[B, size]``: True at positions before each row's length.

    Args:
        lengths: long ``[B]`` valid lengths.
        size: the padded length.

    Example:
        >>> length_mask(torch.tensor([1, 3]), 3).tolist()
        [[True, False, False], [True, True, True]]
    """
    return torch.arange(size, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def resolve_lengths(lengths: Tensor | None, size: int, batch: int, device: torch.device) -> Tensor:
    """Lengths clamped to ``1..size``; ``None`` means every row is ``size`` long.

    A present sample of length 0 is treated as length 1 (one padding step), so that it still
    gets a defined embedding.

    Example:
        >>> resolve_lengths(torch.tensor([0, 9]), 5, 2, torch.device("cpu")).tolist()
        [1, 5]
    """
    if lengths is None:
        return torch.full((batch,), size, dtype=torch.long, device=device)
    return lengths.to(device=device, dtype=torch.long).clamp(1, max(size, 1))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` ``[B, T, C]`` over the steps where ``mask`` ``[B, T]`` is True -> ``[B, C]``.

    Rows without any True step give zeros.

    Example:
        >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]).bool())
        tensor([[2.]])
    """
    keep = mask.unsqueeze(-1)
    total = torch.where(keep, x, torch.zeros((), dtype=x.dtype)).sum(1)
    return total / keep.sum(1).clamp_min(1).to(x.dtype)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of ``x`` ``[B, T, C]`` over the steps where ``mask`` ``[B, T]`` is True -> ``[B, C]``.

    Rows without any True step give zeros.

    Example:
        >>> masked_max(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]).bool())
        tensor([[3.]])
    """
    keep = mask.unsqueeze(-1)
    low = torch.finfo(x.dtype).min
    best = torch.where(keep, x, torch.full((), low, dtype=x.dtype)).amax(1)
    return torch.where(keep.any(1), best, torch.zeros((), dtype=x.dtype))


POOLS = ("mean", "max", "meanmax")
"""The ways `masked_pool` pools over valid steps."""


def check_pool(encoder: str, pool: str) -> None:
    """Raise `ConfigError` naming ``encoder`` unless ``pool`` is one of `POOLS`.

    Example:
        >>> check_pool("tcn", "meanmax")
    """
    if pool not in POOLS:
        raise OptionError(
            f"{encoder}: unknown pool {pool!r}", fix=f"use one of: {', '.join(POOLS)}"
        )


def pooled_size(channels: int, pool: str) -> int:
    """Width of `masked_pool`'s output for ``channels`` input channels: ``2C`` for ``meanmax``.

    Example:
        >>> pooled_size(32, "mean"), pooled_size(32, "meanmax")
        (32, 64)
    """
    return channels * (2 if pool == "meanmax" else 1)


def masked_pool(x: Tensor, mask: Tensor, pool: str) -> Tensor:
    """Pool ``x`` ``[B, T, C]`` over valid steps: ``mean``, ``max`` or ``meanmax`` (both, ``2C``).

    Example:
        >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
        >>> masked_pool(x, torch.tensor([[True, True, False]]), "meanmax")
        tensor([[2., 3.]])
    """
    if pool == "mean":
        return masked_mean(x, mask)
    if pool == "max":
        return masked_max(x, mask)
    return torch.cat([masked_mean(x, mask), masked_max(x, mask)], dim=-1)


def mlp_layers(in_features: int, widths: list[int], out_features: int,
               dropout: float) -> list[nn.Module]:
    """(linear -> ReLU -> dropout) per hidden width, then a linear map to ``out_features``.

    Example:
        >>> [type(m).__name__ for m in mlp_layers(3, [4], 2, 0.0)]
        ['Linear', 'ReLU', 'Dropout', 'Linear']
    """
    layers: list[nn.Module] = []
    size = in_features
    for width in widths:
        layers += [nn.Linear(size, width), nn.ReLU(), nn.Dropout(dropout)]
        size = width
    layers.append(nn.Linear(size, out_features))
    return layers


def to_channels_last(x: Tensor, *, batched: bool = False) -> Tensor:
    """``x`` ``[B, C, H, W]`` in ``channels_last`` memory format (same values, same shape).

    Convolutions, BatchNorm and max-pooling of the CPU build run several times faster on
    ``channels_last`` activations, and their outputs stay ``channels_last``. Unlike
    ``x.contiguous(memory_format=torch.channels_last)``, this also marks a one-channel input
    (whose plain layout is already valid ``channels_last``) with strides that convolutions
    recognise, so that the first convolution of a grayscale image or a spectrogram already
    writes ``channels_last`` output. Copies only when the layout changes. With ``batched``
    (under `torch.func.vmap` over tasks, where memory formats cannot be queried; the caller's
    ``under_task_vmap``) ``x`` is returned as it is: the layout is only speed.

    Example:
        >>> to_channels_last(torch.zeros(2, 3, 4, 5)).stride()
        (60, 1, 15, 3)
        >>> y = to_channels_last(torch.arange(6.0).view(1, 1, 2, 3))
        >>> y.stride(), y.tolist()
        ((6, 1, 3, 1), [[[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]]])
    """
    if batched:  # vmap cannot query memory formats; the layout is only speed
        return x
    batch, channels, height, width = x.shape
    if channels == 1:
        # stride 1 along the channel axis: what convolutions take for channels_last
        return x.reshape(batch, height, width, 1).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last)


class MaskedBatchNorm(nn.Module):
    """BatchNorm over channels (axis 1) whose statistics count only valid (unpadded) positions.

    Plain BatchNorm would mix the padding of variable-length inputs into its batch statistics,
    so the same sample would be normalised differently depending on how much padding its batch
    carries. Here padded positions are left out of the statistics and set to zero in the output.
    Otherwise it behaves like ``nn.BatchNorm1d/2d`` (Ioffe & Szegedy, 2015, "Batch
    Normalization"): batch statistics in training (updating running estimates with
    ``momentum``), running estimates in evaluation.

    Args:
        channels: number of channels ``C``.
        eps: added to the variance.
        momentum: weight of the new batch statistics in the running estimates.

    Shapes:
        ``x`` ``[B, C, *positions]``, ``mask`` bool broadcastable to ``[B, 1, *positions]``.

    Under `torch.func.vmap` over tasks (``under_task_vmap``, set by
    `metamodal.learners.task_batching.vmap_ready`) it leaves memory formats alone.

    Example:
        >>> bn = MaskedBatchNorm(2)
        >>> x = torch.randn(3, 2, 5)
        >>> mask = torch.tensor([[1, 1, 1, 0, 0]] * 3).bool().unsqueeze(1)
        >>> bool(bn(x, mask)[..., 3:].abs().sum() == 0)
        True
    """

    under_task_vmap: bool = False
    """True while the layer runs under `torch.func.vmap` over tasks (memory formats cannot be
    queried there)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = True
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Normalise ``x`` ``[B, C, ...]``; positions where ``mask`` is False become zeros.

        The output is one ``addcmul`` whose per-channel factors carry the mask (``x * (scale
        * keep) + shift * keep``): with a mask that broadcasts over some positions (e.g.
        ``[B, 1, 1, frames]``) those factors are small, and the activations are read and
        written once. The output keeps the memory format of ``x`` (``channels_last`` in,
        ``channels_last`` out).

        ``mask=None`` says every position is valid: the statistics are then plain BatchNorm's,
        and the native kernel computes them (about twice as fast in training on the CPU;
        on ``channels_last`` input its gradients differ from float64 by about 1e-5 relative,
        against 1e-6 for the masked arithmetic).
        """
        if mask is None:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum, self.eps)
        shape = [1, -1] + [1] * (x.dim() - 2)
        keep = mask.to(x.dtype)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            count = keep.expand(x.shape[0], 1, *x.shape[2:]).sum().clamp_min(1)
            masked = x * keep
            mean = masked.sum(dims) / count
            centred = masked - mean.view(shape) * keep  # x - mean where valid, 0 elsewhere
            var = centred.square().sum(dims) / count
            if self.track_running_stats:
                with torch.no_grad():
                    unbiased = var * (count / (count - 1).clamp_min(1))
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype),
                                            self.momentum)
                    self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype),
                                           self.momentum)
            scale = (self.weight * torch.rsqrt(var + self.eps)).to(x.dtype)
            bias = _in_layout_of(self.bias.to(x.dtype).view(shape) * keep, x,
                                 self.under_task_vmap)
            return torch.addcmul(bias, centred, scale.view(shape))
        mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        scale = (self.weight * torch.rsqrt(var + self.eps)).to(x.dtype)
        shift = self.bias.to(x.dtype) - mean * scale
        # keep * ((x - mean) * scale + bias), the mask folded into the (small) factors
        return torch.addcmul(
            _in_layout_of(shift.view(shape) * keep, x, self.under_task_vmap), x,
            _in_layout_of(scale.view(shape) * keep, x, self.under_task_vmap),
        )


def _in_layout_of(factor: Tensor, x: Tensor, batched: bool) -> Tensor:
    """``factor`` (broadcastable to ``x``) in the memory format of ``x``, so that an
    element-wise op taking ``factor`` first gives an output laid out like ``x``; as it is
    when ``batched`` (under vmap, where memory formats cannot be queried)."""
    if x.dim() == 4 and not batched and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last
    ):
        return factor.contiguous(memory_format=torch.channels_last)
    return factor

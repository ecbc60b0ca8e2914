"""Encoders of pen trajectories: ``trajectory`` (the whole drawing through a 1-D CNN),
``stroke-set`` (each stroke on its own, pooled in no order) and ``stroke-image`` (the drawing
rendered with its motion, through a ResNet-12).

A pen trajectory is a sequence modality whose steps carry an ``x, y`` position and, optionally, a
flag marking the first point of each stroke (the pen touching down), as Omniglot's strokes
(`metamodal.datasets.omniglot`) do. Raw recordings differ in speed, sampling rate, position and
size, none of which tells characters apart; the encoder removes them before learning anything:

1. **resample** each drawing to ``points`` points spaced uniformly along the pen's path (jumps
   between strokes are not path: a stroke's points never lie on the pen-up line);
2. **normalise** position and scale per drawing (centre at the ink's centroid, divide by its
   RMS radius, the same for x and y so the aspect ratio stays);
3. describe each point by its position, its **offset** from the previous point (zero where a
   stroke starts) and the **pen-down** flag;
4. a 1-D CNN (conv, BatchNorm, ReLU; pooling halves the length between blocks), then mean and
   max over the points, and a linear map to ``dim``.

Measured on Omniglot (see the README's real-data table), this beats a GRU or TCN over the raw
steps by a wide margin; it is the default encoder of the strokes that `metamodal import
omniglot` writes.

People draw a character's strokes in different orders and directions, which the whole-drawing
CNN sees as different sequences (training can only show it redrawn copies). ``stroke-set``
is blind to both by construction: it cuts the drawing at each pen-down flag, resamples every
stroke on its own, encodes each stroke and its reversal with one shared 1-D CNN (their sum),
relates the strokes by self-attention without positions, and pools them by mean and max.

``stroke-image`` gives a 2-D CNN what the pen did: it resamples and normalises the drawing as
``trajectory`` does, then renders it on a grid whose channels hold the ink, the pen's direction
of motion (``x`` and ``y`` of the unit step) and how far along the drawing each point lies
(0 at the first point, 1 at the last), each point splatted bilinearly onto its four nearest
cells. A photograph of the same character shows the ink only, at the drawer's size and place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metamodal.data.batch import ModalityBatch
from metamodal.encoders.base import Encoder, register_encoder, require_info
from metamodal.encoders.image import ResNet12
from metamodal.encoders.layers import resolve_lengths
from metamodal.encoders.sequence import check_steps
from metamodal.errors import OptionError
from metamodal.registry import MAX_LAYERS

MAX_POINTS = 4096
"""The most points a drawing (`TrajectoryEncoder`) or a stroke (`StrokeSetEncoder`) is
resampled to."""
MAX_STROKES = 256
"""The most strokes `StrokeSetEncoder` keeps apart per drawing."""
MAX_GRID = 256
"""The largest grid side `StrokeImageEncoder` renders on."""


def resample_trajectory(points: Tensor, starts: Tensor, lengths: Tensor, count: int
                        ) -> tuple[Tensor, Tensor]:
    """Points uniformly spaced along the pen's path, and which of them begin a stroke.

    Args:
        points: float ``[n, T, 2]`` positions (steps past a sample's length are ignored).
        starts: bool ``[n, T]``, True on the first step of each stroke (step 0 counts as one).
        lengths: long ``[n]`` valid steps (>= 1).
        count: points to return per drawing.

    Returns:
        ``(resampled [n, count, 2], stroke_starts bool [n, count])``; the path length between
        consecutive strokes' end and start is not counted, so no point falls on a pen-up jump.

    Example:
        >>> line = torch.tensor([[[0.0, 0.0], [4.0, 0.0]]])
        >>> out, first = resample_trajectory(line, torch.tensor([[True, False]]),
        ...                                  torch.tensor([2]), 5)
        >>> out[0, :, 0].tolist(), first[0].tolist()
        ([0.0, 1.0, 2.0, 3.0, 4.0], [True, False, False, False, False])
    """
    n, steps, _ = points.shape
    index = torch.arange(steps, device=points.device)
    valid = index < lengths.unsqueeze(1)
    starts = (starts | (index == 0)) & valid
    step = (points[:, 1:] - points[:, :-1]).norm(dim=-1)
    step = torch.where(starts[:, 1:] | ~valid[:, 1:], torch.zeros((), dtype=step.dtype), step)
    arc = torch.cat([step.new_zeros(n, 1), step.cumsum(1)], 1)  # [n, T], non-decreasing
    total = arc.gather(1, (lengths - 1).clamp_min(0).unsqueeze(1))
    targets = torch.linspace(0, 1, count, device=points.device, dtype=points.dtype) * total
    last = (lengths - 1).clamp_min(0).unsqueeze(1)
    low = (torch.searchsorted(arc.contiguous(), targets.contiguous(), right=True) - 1)
    low = torch.minimum(low.clamp_min(0), last)
    high = torch.minimum(low + 1, last)
    span = arc.gather(1, high) - arc.gather(1, low)
    weight = torch.where(span > 0, (targets - arc.gather(1, low)) / span.clamp_min(1e-12),
                         torch.zeros((), dtype=span.dtype)).clamp(0, 1)
    take = lambda i: points.gather(1, i.unsqueeze(-1).expand(n, count, 2))  # noqa: E731
    resampled = take(low) * (1 - weight.unsqueeze(-1)) + take(high) * weight.unsqueeze(-1)
    stroke = starts.long().cumsum(1).gather(1, low)
    first = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=points.device),
                       stroke[:, 1:] != stroke[:, :-1]], 1)
    return resampled, first


def trajectory_features(resampled: Tensor, first: Tensor) -> Tensor:
    """Per-point features ``[n, count, 5]``: normalised x, y, offsets dx, dy, stroke start.

    Position and scale are normalised per drawing: centred at the mean point, divided by the
    RMS distance to it (one scale for both axes).
    """
    centre = resampled.mean(1, keepdim=True)
    moved = resampled - centre
    radius = moved.square().sum(-1).mean(1, keepdim=True).sqrt().clamp_min(1e-6).unsqueeze(-1)
    normal = moved / radius
    offset = torch.cat([torch.zeros_like(normal[:, :1]), normal[:, 1:] - normal[:, :-1]], 1)
    offset = offset.masked_fill(first.unsqueeze(-1), 0.0)
    return torch.cat([normal, offset, first.unsqueeze(-1).to(normal.dtype)], -1)


def pen_columns(encoder: str, features: int, coords: list[int] | tuple[int, int], pen: int
                ) -> tuple[list[int], int]:
    """The ``x, y`` columns and the stroke-start column (-1: none) of ``features``-wide steps.

    Raises:
        OptionError: a column is not one of the steps', or two of them are the same one
            (``encoder`` names the encoder).
    """
    columns = [*coords, *([pen] if pen != -1 else [])]
    if (len(coords) != 2 or any(not isinstance(c, int) or not 0 <= c < features
                                for c in columns) or len(set(columns)) < len(columns)):
        raise OptionError(
            f"{encoder}: coords {list(coords)} and pen {pen} must be different columns of the "
            f"{features}-feature steps",
            fix=f"give two x, y columns in 0..{features - 1} and pen another (or -1: none)")
    return [int(c) for c in coords], int(pen)


def stroke_starts(values: Tensor, pen: int) -> Tensor:
    """Bool ``[n, T]``: the steps of ``values [n, T, features]`` whose ``pen`` column is > 0
    (which holds for a raw 0/1 flag and for its standardised value); none for ``pen`` -1."""
    if pen < 0:
        return torch.zeros(values.shape[:2], dtype=torch.bool, device=values.device)
    return values[..., pen] > 0


def conv_body(width: int, channels: int, blocks: int) -> nn.Sequential:
    """``blocks`` of (conv5, BatchNorm, ReLU) over ``[n, width, P]``, the length halved between
    blocks: ``[n, width, P] -> [n, channels, P / 2 ** (blocks - 1)]``."""
    layers: list[nn.Module] = []
    for i in range(blocks):
        layers += [nn.Conv1d(width, channels, 5, padding=2, bias=False),
                   nn.BatchNorm1d(channels), nn.ReLU()]
        if i < blocks - 1:
            layers.append(nn.MaxPool1d(2, ceil_mode=True))
        width = channels
    return nn.Sequential(*layers)


@register_encoder("trajectory", ["sequence"])
class TrajectoryEncoder(Encoder):
    """Pen trajectories: resample along the path, normalise, 1-D CNN (see the module docstring).

    Args:
        dim: output size.
        input_info: ``{"features", "max_length"}`` from the sequence loader.
        coords: the ``x, y`` columns of the steps.
        pen: the column flagging the first point of a stroke (a value > 0 marks it, which
            holds for a raw 0/1 flag and for its standardised value), or -1 for one stroke.
        points: points per resampled drawing.
        channels: channels of the convolutions.
        blocks: convolution blocks (the length halves after each but the last).
        dropout: dropout before the final linear map.

    Shapes:
        ``[B, T, features]`` with lengths ``[B]`` -> ``[B, dim]``.

    Example:
        >>> enc = TrajectoryEncoder(dim=8, input_info={"features": 4, "max_length": 6},
        ...                         pen=3, points=16, channels=4)
        >>> batch = ModalityBatch(torch.randn(3, 6, 4), torch.ones(3, dtype=torch.bool),
        ...                       torch.tensor([6, 2, 4]))
        >>> enc(batch).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        coords: list[int] | tuple[int, int] = (0, 1),
        pen: int = -1,
        points: int = 64,
        channels: int = 64,
        blocks: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.features,) = require_info("trajectory", input_info, "features")
        self.coords, self.pen = pen_columns("trajectory", self.features, coords, pen)
        if (not 4 <= points <= MAX_POINTS or channels < 1 or not 1 <= blocks <= MAX_LAYERS
                or not 0 <= dropout < 1):
            raise OptionError(
                f"trajectory needs points in 4..{MAX_POINTS}, channels >= 1, blocks in "
                f"1..{MAX_LAYERS}, 0 <= dropout < 1; got {points}, {channels}, {blocks}, "
                f"{dropout}",
                fix="use e.g. points=64, channels=64, blocks=4")
        self.points = int(points)
        self.body = conv_body(5, channels, blocks)
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(2 * channels, dim)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is float ``[B, T, features]``."""
        check_steps("trajectory", batch, self.features)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed ``[n, T, features]`` with lengths ``[n]`` -> ``[n, dim]``."""
        lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
        lengths = lengths.clamp_min(1)
        resampled, first = resample_trajectory(values[..., self.coords],
                                               stroke_starts(values, self.pen), lengths,
                                               self.points)
        h = self.body(trajectory_features(resampled, first).transpose(1, 2))  # [n, C, P']
        pooled = torch.cat([h.mean(-1), h.amax(-1)], -1)
        return self.project(self.dropout(pooled))


def split_strokes(points: Tensor, starts: Tensor, lengths: Tensor, max_strokes: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Each drawing's strokes, one row each, every one starting at step 0 of its row.

    Args:
        points: float ``[n, T, 2]`` positions (steps past a sample's length are ignored).
        starts: bool ``[n, T]``, True on the first step of each stroke (step 0 counts as one).
        lengths: long ``[n]`` valid steps (>= 1).
        max_strokes: rows per drawing, ``S``; strokes past the ``S``-th join the last row,
            their own starts kept (so resampling does not draw the pen-up jumps).

    Returns:
        ``(strokes [n, S, T, 2], stroke_starts bool [n, S, T], counts long [n, S])``: row ``s``
        holds stroke ``s``'s ``counts[:, s]`` steps (0 where a drawing has fewer strokes),
        padded with its last step.

    Example:
        >>> steps = torch.tensor([[[0.0, 0], [1, 0], [5, 5], [6, 5], [7, 5]]])
        >>> rows, first, counts = split_strokes(
        ...     steps, torch.tensor([[True, False, True, False, False]]), torch.tensor([5]), 3)
        >>> counts.tolist(), rows[0, 1, :3, 0].tolist()
        ([[2, 3, 0]], [5.0, 6.0, 7.0])
    """
    n, steps, _ = points.shape
    index = torch.arange(steps, device=points.device)
    valid = index < lengths.unsqueeze(1)
    starts = (starts | (index == 0)) & valid
    stroke = (starts.long().cumsum(1) - 1).clamp(0, max_strokes - 1)
    stroke = torch.where(valid, stroke, torch.full_like(stroke, max_strokes))  # [n, T] sorted
    rows = torch.arange(max_strokes + 1, device=points.device).expand(n, -1).contiguous()
    bounds = torch.searchsorted(stroke.contiguous(), rows)  # [n, S + 1]: each row's first step
    begin, counts = bounds[:, :-1], bounds[:, 1:] - bounds[:, :-1]
    last = (begin + counts - 1).clamp_min(0).unsqueeze(-1)
    take = torch.minimum(begin.unsqueeze(-1) + index, last).view(n, -1)  # [n, S * T]
    strokes = points.gather(1, take.unsqueeze(-1).expand(-1, -1, 2))
    return (strokes.view(n, max_strokes, steps, 2),
            starts.gather(1, take).view(n, max_strokes, steps), counts)


@register_encoder("stroke-set", ["sequence"])
class StrokeSetEncoder(Encoder):
    """Pen trajectories as a set of strokes, blind to their order and direction (module
    docstring).

    Args:
        dim: output size.
        input_info: ``{"features", "max_length"}`` from the sequence loader.
        coords: the ``x, y`` columns of the steps.
        pen: the column flagging the first point of a stroke (a value > 0 marks it), or -1
            for one stroke per drawing.
        points: points per resampled stroke.
        max_strokes: strokes kept apart per drawing (later ones join the last).
        channels: channels of the convolutions and of each stroke's embedding.
        blocks: convolution blocks (the length halves after each but the last).
        attention: self-attention layers over a drawing's strokes (0 for none).
        dropout: dropout before the final linear map.

    Shapes:
        ``[B, T, features]`` with lengths ``[B]`` -> ``[B, dim]``.

    Example:
        >>> enc = StrokeSetEncoder(dim=8, input_info={"features": 4, "max_length": 6},
        ...                        pen=3, points=8, channels=4)
        >>> steps = torch.randn(3, 6, 4)
        >>> steps[..., 3] = torch.tensor([1.0, 0, 0, 1, 0, 0])  # two strokes of three steps
        >>> enc(ModalityBatch(steps, torch.ones(3, dtype=torch.bool), torch.tensor([6, 2, 4]))
        ...     ).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        coords: list[int] | tuple[int, int] = (0, 1),
        pen: int = -1,
        points: int = 32,
        max_strokes: int = 12,
        channels: int = 64,
        blocks: int = 3,
        attention: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.features,) = require_info("stroke-set", input_info, "features")
        self.coords, self.pen = pen_columns("stroke-set", self.features, coords, pen)
        if (not 4 <= points <= MAX_POINTS or not 1 <= max_strokes <= MAX_STROKES
                or channels < 1 or not 1 <= blocks <= MAX_LAYERS
                or not 0 <= attention <= MAX_LAYERS or not 0 <= dropout < 1):
            raise OptionError(
                f"stroke-set needs points in 4..{MAX_POINTS}, max_strokes in 1..{MAX_STROKES}, "
                f"channels >= 1, blocks in 1..{MAX_LAYERS}, attention in 0..{MAX_LAYERS}, "
                f"0 <= dropout < 1; got {points}, {max_strokes}, {channels}, {blocks}, "
                f"{attention}, {dropout}",
                fix="use e.g. points=32, max_strokes=12, channels=64, blocks=3, attention=1")
        self.points = int(points)
        self.max_strokes = int(max_strokes)
        self.body = conv_body(4, channels, blocks)
        self.stroke = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU())
        heads = next(h for h in (4, 2, 1) if channels % h == 0)
        self.relate = nn.ModuleList(
            nn.TransformerEncoderLayer(channels, heads, 2 * channels, dropout=0.0,
                                       batch_first=True)
            for _ in range(attention))
        self.dropout = nn.Dropout(dropout)
        self.project = nn.Linear(2 * channels, dim)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is float ``[B, T, features]``."""
        check_steps("stroke-set", batch, self.features)

    def _encode_strokes(self, strokes: Tensor) -> Tensor:
        """``[m, P, 2]`` normalised strokes -> ``[m, channels]``, the same for a reversed one."""
        both = torch.cat([strokes, strokes.flip(1)])  # [2m, P, 2]
        offset = torch.cat([torch.zeros_like(both[:, :1]), both[:, 1:] - both[:, :-1]], 1)
        h = self.body(torch.cat([both, offset], -1).transpose(1, 2))  # [2m, C, P']
        h = self.stroke(torch.cat([h.mean(-1), h.amax(-1)], -1))
        forward, backward = h.chunk(2)
        return forward + backward

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed ``[n, T, features]`` with lengths ``[n]`` -> ``[n, dim]``."""
        n, steps = values.shape[:2]
        lengths = resolve_lengths(lengths, steps, n, values.device).clamp(1, steps)
        rows, row_starts, counts = split_strokes(values[..., self.coords],
                                                 stroke_starts(values, self.pen), lengths,
                                                 self.max_strokes)
        drawn = counts > 0  # [n, S]; stroke 0 always is
        owner = torch.arange(n, device=values.device).unsqueeze(1).expand_as(drawn)[drawn]
        strokes, _ = resample_trajectory(rows[drawn], row_starts[drawn], counts[drawn],
                                         self.points)  # [m, P, 2]
        # one position and scale per drawing: its ink's centroid and RMS radius, each stroke
        # weighed by its length (the same whatever the strokes' order and direction)
        length = (strokes[:, 1:] - strokes[:, :-1]).norm(dim=-1).sum(1)  # [m]
        total = length.new_zeros(n).index_add(0, owner, length)[owner]  # its drawing's ink
        alone = 1 / drawn.sum(1)[owner].to(length.dtype)  # equal weights for a drawing of dots
        weight = torch.where(total > 0, length / total.clamp_min(1e-12), alone).unsqueeze(1)
        centre = strokes.new_zeros(n, 2).index_add(0, owner, weight * strokes.mean(1))[owner]
        spread = (strokes - centre.unsqueeze(1)).square().sum(-1).mean(1, keepdim=True)
        radius = length.new_zeros(n).index_add(0, owner, (weight * spread).squeeze(1))[owner]
        strokes = (strokes - centre.unsqueeze(1)) / radius.sqrt().clamp_min(1e-6).view(-1, 1, 1)
        encoded = self._encode_strokes(strokes)  # [m, C]
        h = encoded.new_zeros(n, self.max_strokes, encoded.shape[-1])
        h[drawn] = encoded
        for layer in self.relate:
            h = layer(h, src_key_padding_mask=~drawn)
        mask = drawn.unsqueeze(-1).to(h.dtype)
        mean = (h * mask).sum(1) / mask.sum(1)
        peak = h.masked_fill(~drawn.unsqueeze(-1), float("-inf")).amax(1)
        return self.project(self.dropout(torch.cat([mean, peak], -1)))


def render_motion(normal: Tensor, first: Tensor, size: int, extent: float) -> Tensor:
    """Render normalised drawings with their motion: ``[n, P, 2], [n, P] -> [n, 4, size, size]``.

    Args:
        normal: float ``[n, P, 2]`` points, normalised per drawing (`trajectory_features`'
            first two columns: centred, unit RMS radius).
        first: bool ``[n, P]``, True where a stroke starts.
        size: cells along each side of the grid (2 or more).
        extent: the normalised coordinate at the grid's edges (``-extent .. extent`` along both
            axes; points beyond lie on the border cells).

    Returns:
        Channels ink, direction ``x``, direction ``y`` and progress along the drawing, each the
        bilinear splat of its points' values, divided by the drawing's densest ink cell (ink in
        ``0..1``). A point's direction is the unit step from the point before it in its stroke
        (zero at a stroke's first point and where the pen stood still).

    Example:
        >>> line = torch.tensor([[[-1.0, 0.0], [0.0, 0.0], [1.0, 0.0]]])
        >>> grid = render_motion(line, torch.tensor([[True, False, False]]), 3, 1.0)
        >>> grid[0, 0, 1].tolist(), grid[0, 1, 1].tolist()
        ([1.0, 1.0, 1.0], [0.0, 1.0, 1.0])
    """
    n, count, _ = normal.shape
    step = torch.cat([torch.zeros_like(normal[:, :1]), normal[:, 1:] - normal[:, :-1]], 1)
    step = step.masked_fill(first.unsqueeze(-1), 0.0)
    direction = step / step.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    progress = torch.linspace(0, 1, count, device=normal.device, dtype=normal.dtype)
    values = torch.cat([torch.ones_like(normal[..., :1]), direction,
                        progress.expand(n, count).unsqueeze(-1)], -1)  # [n, P, 4]
    cell = ((normal / extent + 1) * (size - 1) / 2).clamp(0, size - 1)  # [n, P, 2]: x, y
    low = cell.floor().clamp(max=size - 2)
    frac = cell - low
    grid = normal.new_zeros(n, 4, size * size)
    for dx in (0, 1):
        for dy in (0, 1):
            weight = ((frac[..., 0] if dx else 1 - frac[..., 0])
                      * (frac[..., 1] if dy else 1 - frac[..., 1]))  # [n, P]
            index = ((low[..., 1] + dy) * size + low[..., 0] + dx).long()  # row y, column x
            grid.scatter_add_(2, index.unsqueeze(1).expand(n, 4, count),
                              (values * weight.unsqueeze(-1)).transpose(1, 2))
    densest = grid[:, :1].amax(-1, keepdim=True).clamp_min(1e-6)
    return (grid / densest).view(n, 4, size, size)


@register_encoder("stroke-image", ["sequence"])
class StrokeImageEncoder(Encoder):
    """Pen trajectories rendered with their motion, then a ResNet-12 (module docstring).

    Args:
        dim: output size.
        input_info: ``{"features", "max_length"}`` from the sequence loader.
        coords: the ``x, y`` columns of the steps.
        pen: the column flagging the first point of a stroke (a value > 0 marks it), or -1
            for one stroke per drawing.
        points: points per resampled drawing (each splatted onto the grid).
        size: cells along each side of the rendered grid.
        extent: the normalised coordinate (in RMS radii from the ink's centroid) at the grid's
            edges.
        widths: the ResNet-12's block widths (`metamodal.encoders.image.ResNet12`).

    Shapes:
        ``[B, T, features]`` with lengths ``[B]`` -> ``[B, dim]``.

    Example:
        >>> enc = StrokeImageEncoder(dim=8, input_info={"features": 3, "max_length": 6},
        ...                          pen=2, points=16, size=8, widths=[4, 4])
        >>> batch = ModalityBatch(torch.randn(3, 6, 3), torch.ones(3, dtype=torch.bool),
        ...                       torch.tensor([6, 2, 4]))
        >>> enc(batch).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        *,
        dim: int,
        input_info: Mapping[str, Any],
        coords: list[int] | tuple[int, int] = (0, 1),
        pen: int = -1,
        points: int = 256,
        size: int = 28,
        extent: float = 2.0,
        widths: list[int] | tuple[int, ...] = (32, 64, 128, 256),
    ) -> None:
        super().__init__(dim=dim, input_info=input_info)
        (self.features,) = require_info("stroke-image", input_info, "features")
        self.coords, self.pen = pen_columns("stroke-image", self.features, coords, pen)
        if (not 4 <= points <= MAX_POINTS or not 4 <= size <= MAX_GRID
                or not 0.1 <= extent <= 100):
            raise OptionError(
                f"stroke-image needs points in 4..{MAX_POINTS}, size in 4..{MAX_GRID}, extent "
                f"in 0.1..100; got {points}, {size}, {extent}",
                fix="use e.g. points=256, size=28, extent=2.0")
        self.points, self.size, self.extent = int(points), int(size), float(extent)
        self.body = ResNet12(dim=dim, input_info={"channels": 4, "height": size, "width": size},
                             widths=widths)

    def check(self, batch: ModalityBatch) -> None:
        """Raise `ModalityError` unless ``batch.values`` is float ``[B, T, features]``."""
        check_steps("stroke-image", batch, self.features)

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        """Embed ``[n, T, features]`` with lengths ``[n]`` -> ``[n, dim]``."""
        lengths = resolve_lengths(lengths, values.shape[1], values.shape[0], values.device)
        resampled, first = resample_trajectory(values[..., self.coords],
                                               stroke_starts(values, self.pen),
                                               lengths.clamp_min(1), self.points)
        normal = trajectory_features(resampled, first)[..., :2]
        return self.body.encode(render_motion(normal, first, self.size, self.extent), None)

"""The ``sequence`` kind: a column of ``.npy`` / ``.csv`` file paths of numeric sequences
(pen strokes, sensor traces), decoded to float ``[B, T, D]``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from metamodal.data.batch import ModalityBatch
from metamodal.data.geometry import GEOMETRY_OPTIONS, affine, draw_affine
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    register_kind,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader

SEQUENCE_SUFFIXES = (".npy", ".csv")
"""Suffixes of the sequence files that importers pick up (lower case)."""


def step_mask(mb: ModalityBatch) -> Tensor:
    """bool ``[B, T]``: the valid steps of each (present) sequence.

    Example:
        >>> mb = ModalityBatch(torch.zeros(1, 3, 2), torch.tensor([True]), torch.tensor([2]))
        >>> step_mask(mb).tolist()
        [[True, True, False]]
    """
    steps = torch.arange(mb.values.shape[1])
    lengths = mb.lengths if mb.lengths is not None else torch.full((len(mb),), len(steps))
    return (steps < lengths.unsqueeze(1)) & mb.present.unsqueeze(1)


def time_warp(mb: ModalityBatch, strength: float, discrete: Sequence[int],
              generator: torch.Generator) -> ModalityBatch:
    """Re-time each sequence by a random monotone map ``u + a * u * (1 - u)``, ``|a| <=
    strength``, interpolating steps linearly (``discrete`` columns: the nearest step).

    Example:
        >>> mb = ModalityBatch(torch.arange(8.0).view(1, 4, 2), torch.tensor([True]),
        ...                    torch.tensor([4]))
        >>> time_warp(mb, 0.5, [], torch.Generator().manual_seed(0)).values.shape
        torch.Size([1, 4, 2])
    """
    values, lengths = mb.values, mb.lengths
    if lengths is None or values.shape[1] < 2:
        return mb
    b, t, _ = values.shape
    u = torch.linspace(0, 1, t).expand(b, t)
    a = (torch.rand(b, 1, generator=generator) * 2 - 1) * strength
    last = (lengths - 1).clamp_min(0).unsqueeze(1).to(values.dtype)
    position = (u + a * u * (1 - u)) * last  # [B, T] fractional source steps
    low = position.floor().long().clamp(0, t - 1)
    high = (low + 1).clamp(max=(lengths - 1).clamp_min(0).unsqueeze(1))
    weight = (position - low).unsqueeze(-1).to(values.dtype)
    gather = lambda index: values.gather(1, index.unsqueeze(-1).expand_as(values))  # noqa: E731
    warped = gather(low) * (1 - weight) + gather(high) * weight
    if discrete:
        nearest = gather(position.round().long().clamp(0, t - 1))
        warped[..., list(discrete)] = nearest[..., list(discrete)]
    keep = step_mask(mb).unsqueeze(-1)
    return ModalityBatch(torch.where(keep, warped, values), mb.present, lengths)


def reorder_strokes(mb: ModalityBatch, pen: int, shuffle: float, reverse: float,
                    generator: torch.Generator) -> ModalityBatch:
    """Redraw each drawing with its strokes in another order and direction.

    A stroke is the run of steps from one whose ``pen`` column is > 0 (and step 0) to the
    next. With probability ``shuffle`` a drawing's strokes are put in a random order, and each
    stroke is drawn backwards with probability ``reverse``: people draw the same character
    with its strokes in different orders and directions, which says nothing of what it is.
    Every column moves with its step except ``pen``, which keeps its values per position in
    the stroke (the first step of each stroke in the new order stays flagged).

    Args:
        mb: sequences ``[B, T, D]`` with lengths ``[B]`` (steps past a length stay put).
        pen: the stroke-start column.
        shuffle: probability that a drawing's strokes are reordered.
        reverse: probability that a stroke is reversed.
        generator: the random source.

    Example:
        >>> steps = torch.tensor([[[0.0, 1], [1, 0], [2, 1], [3, 0], [4, 0]]])  # x, pen
        >>> out = reorder_strokes(ModalityBatch(steps, torch.tensor([True]),
        ...                                     torch.tensor([5])), 1, 0.0, 1.0,
        ...                       torch.Generator().manual_seed(0))
        >>> out.values[0].tolist()
        [[1.0, 1.0], [0.0, 0.0], [4.0, 1.0], [3.0, 0.0], [2.0, 0.0]]
    """
    values, lengths = mb.values, mb.lengths
    b, t, _ = values.shape
    if lengths is None or t < 2:
        return mb
    valid = step_mask(mb)
    index = torch.arange(t).expand(b, t)
    starts = ((values[..., pen] > 0) | (index == 0)) & valid
    stroke = (starts.long().cumsum(1) - 1).clamp_min(0)  # [B, T] stroke number of each step
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values  # its start
    length = torch.zeros(b, t, dtype=torch.long).scatter_add_(
        1, stroke, valid.long())  # [B, strokes] steps per stroke
    stroke_length = length.gather(1, stroke)
    position = index - first  # within the stroke, 0-based
    backwards = (torch.rand(b, t, generator=generator) < reverse).gather(1, stroke)
    new_position = torch.where(backwards, stroke_length - 1 - position, position)
    shuffled = torch.rand(b, 1, generator=generator) < shuffle
    rank = torch.where(shuffled, torch.rand(b, t, generator=generator).argsort(1).argsort(1),
                       index)  # [B, strokes] each stroke's place in the new order
    key = rank.gather(1, stroke) * t + new_position
    key = torch.where(valid, key, t * t + index)
    order = key.argsort(dim=1)  # [B, T]: the source step of each new step (keys distinct)
    moved = values.gather(1, order.unsqueeze(-1).expand_as(values))
    flag_source = first.gather(1, order) + new_position.gather(1, order)
    moved[..., pen] = values[..., pen].gather(1, flag_source.clamp(0, t - 1))
    return ModalityBatch(torch.where(valid.unsqueeze(-1), moved, values), mb.present, lengths)


def coordinate_unit(spec: ModalityAugment, scale: tuple[Tensor, Tensor] | None
                    ) -> tuple[Tensor, Tensor]:
    """Stored units of the coords: ``(mean [2], std [2])`` of stored = (raw - mean) / std.

    Example:
        >>> coordinate_unit(ModalityAugment("sequence", {}, coords=(0, 1)), None)
        (tensor([0., 0.]), tensor([1., 1.]))
    """
    if scale is None:
        return torch.zeros(2), torch.ones(2)
    mean, std = scale
    columns = list(spec.coords)
    return mean[columns], std[columns]


def move_points(mb: ModalityBatch, spec: ModalityAugment, matrix: Tensor,
                scale: tuple[Tensor, Tensor] | None) -> ModalityBatch:
    """Apply forward maps ``[B, 2, 3]`` (normalised frame coordinates) to the coords of
    sequences ``[B, T, D]``.

    Example:
        >>> mb = ModalityBatch(torch.ones(1, 2, 2), torch.tensor([True]), torch.tensor([2]))
        >>> flip = torch.tensor([[[-1.0, 0, 0], [0, 1.0, 0]]])
        >>> spec = ModalityAugment("sequence", {}, coords=(0, 1))
        >>> move_points(mb, spec, flip, None).values[0, 0].tolist()
        [-1.0, 1.0]
    """
    x, y = spec.coords
    mean, std = coordinate_unit(spec, scale)
    points = mb.values[..., [x, y]] * std + mean  # raw units [B, T, 2]
    if spec.frame is not None:
        left, top, right, bottom = spec.frame
        origin = torch.tensor([left, top])
        size = torch.tensor([right - left, bottom - top])
        points = (points - origin) / size * 2 - 1
    moved = points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
    if spec.frame is not None:
        moved = (moved + 1) / 2 * size + origin
    values = mb.values.clone()
    keep = step_mask(mb).unsqueeze(-1)
    values[..., [x, y]] = torch.where(keep, (moved - mean) / std, values[..., [x, y]])
    return ModalityBatch(values, mb.present, mb.lengths)


def augment_sequences(mb: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                      matrix: Tensor | None, scale: tuple[Tensor, Tensor] | None
                      ) -> ModalityBatch:
    """Reorder and reverse the strokes (``shuffle_strokes`` / ``reverse_strokes``), move the
    coords by ``matrix`` (when given), then time warp and jitter them.

    Example:
        >>> mb = ModalityBatch(torch.zeros(1, 3, 2), torch.tensor([True]), torch.tensor([3]))
        >>> spec = ModalityAugment("sequence", {"jitter": 0.1}, coords=(0, 1))
        >>> out = augment_sequences(mb, spec, torch.Generator().manual_seed(0), None, None)
        >>> bool(out.values.abs().sum() > 0)
        True
    """
    if spec.pen is not None and (spec.get("shuffle_strokes") or spec.get("reverse_strokes")):
        mb = reorder_strokes(mb, spec.pen, spec.get("shuffle_strokes"),
                             spec.get("reverse_strokes"), generator)
    if matrix is not None:
        mb = move_points(mb, spec, matrix, scale)
    if spec.get("time_warp"):
        mb = time_warp(mb, spec.get("time_warp"), spec.discrete, generator)
    if spec.get("jitter"):
        x, y = spec.coords
        noise = torch.randn(*mb.values.shape[:2], 2, generator=generator) * spec.get("jitter")
        if spec.frame is not None:  # a fraction of the frame's width / height
            left, top, right, bottom = spec.frame
            noise = noise * torch.tensor([right - left, bottom - top]).abs()
        noise = noise / coordinate_unit(spec, scale)[1]
        values = mb.values.clone()
        values[..., [x, y]] += noise.to(values) * step_mask(mb).unsqueeze(-1)
        mb = ModalityBatch(values, mb.present, mb.lengths)
    return mb


@register_kind
class SequenceKind(ModalityKind):
    """Numeric sequences ``[T, D]`` from ``.npy`` / ``.csv`` files; trajectory geometry
    (its own or following an image's), stroke order and direction, time warp and jitter as
    augmentation.

    Example:
        >>> SequenceKind().length_unit, "time_warp" in SequenceKind().augment_options
        ('steps', True)
    """

    name = "sequence"
    loader = "sequence"
    default_encoder = "tcn"
    media = True
    length_unit = "steps"
    length_axis = 1
    suffixes = SEQUENCE_SUFFIXES
    media_folder = "sequences"
    augment_options = {**GEOMETRY_OPTIONS, "time_warp": (0, 0.9), "jitter": (0, 1),
                       "shuffle_strokes": (0, 1), "reverse_strokes": (0, 1)}
    augment_choices = ("coords", "follow", "frame", "discrete", "pen")

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        return {"dims": int(batch.values.shape[-1])}

    def check_augment(self, name: str, spec: ModalityAugment) -> None:
        if not spec.coords and (spec.geometric or spec.follow is not None
                                or spec.frame is not None or spec.get("jitter")):
            raise augment_error(f"augment.{name}: a geometric transform or jitter of a "
                                "sequence needs its coordinate columns", f"{name}.coords",
                                "name them, e.g. coords = [0, 1]")
        if spec.pen is None and (spec.get("shuffle_strokes") or spec.get("reverse_strokes")):
            raise augment_error(f"augment.{name}: reordering or reversing strokes needs the "
                                "column that marks where each stroke starts", f"{name}.pen",
                                "name it, e.g. pen = 3 for Omniglot strokes")

    def augment_info(self, loader: ModalityLoader) -> dict[str, Any]:
        info: dict[str, Any] = {}
        width = loader.input_info().get("features")
        if isinstance(width, int):
            info["width"] = width
        mean = getattr(loader, "mean_", None)
        if mean is not None:
            info["scale"] = (mean, loader.std_)  # type: ignore[attr-defined]
        return info

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        matrix = (draw_affine(spec.get, spec.flip, len(batch), generator)
                  if spec.geometric else None)
        return augment_sequences(batch, spec, generator, matrix, context.scale)

    def follow(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
               context: AugmentContext, matrix: Tensor | None) -> ModalityBatch:
        return augment_sequences(batch, spec, generator, matrix, context.scale)

    def check_rotatable(self, name: str, spec: ModalityAugment | None) -> None:
        if spec is None or not spec.coords:
            raise augment_error(f"rotate_classes rotates every modality of a sample, and the "
                                f"sequence modality {name!r} has no coordinate columns",
                                f"{name}.coords",
                                f"add [augment.{name}] coords = [x, y] (and frame)")

    def rotate_quarter(self, batch: ModalityBatch, quarter: int, spec: ModalityAugment | None,
                       context: AugmentContext) -> ModalityBatch:
        assert spec is not None  # check_rotatable refused a sequence without coords
        n = len(batch)
        angle = torch.full((n,), quarter * math.pi / 2)
        matrix = affine(angle, torch.ones(n), torch.zeros(n), torch.zeros(n, 2), torch.ones(n, 2))
        return move_points(batch, spec, matrix, context.scale)

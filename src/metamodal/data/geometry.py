"""Random affine maps of the image plane, shared by the kinds whose augmentation moves pixels
or points (image, video frames, trajectories drawn on an image).

Maps are forward maps ``[n, 2, 3]`` in normalised coordinates (``-1..1``, x right, y down), so
that a positive angle turns counter-clockwise on screen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.data.batch import ModalityBatch

FLIPS = ("none", "horizontal", "vertical", "both")
"""The ``flip`` values of an image-like modality's augmentation."""

GEOMETRY_OPTIONS: dict[str, tuple[float, float]] = {
    "rotate": (0, 180), "shift": (0, 1), "scale": (0, 0.9), "shear": (0, 60)}
"""The numeric options of a random affine map and their allowed ranges (inclusive)."""


def affine(angle: Tensor, scale: Tensor, shear: Tensor, shift: Tensor, flips: Tensor) -> Tensor:
    """Forward maps ``[n, 2, 3]``: flip, then scale, shear, rotate and shift.

    Args:
        angle: radians ``[n]``; scale: ``[n]``; shear: radians ``[n]``; shift: ``[n, 2]``;
        flips: ``[n, 2]`` of +-1 per axis.

    Example:
        >>> n = 1
        >>> affine(torch.zeros(n), torch.ones(n), torch.zeros(n), torch.zeros(n, 2),
        ...        torch.ones(n, 2)).tolist()
        [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]
    """
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    shearing = torch.eye(2).repeat(len(angle), 1, 1)
    shearing[:, 0, 1] = torch.tan(shear)
    linear = rotation @ shearing * scale[:, None, None] * flips[:, None, :]
    return torch.cat([linear, shift.unsqueeze(-1)], -1)


def draw_affine(get: Callable[[str], float | None], flip: str, n: int,
                generator: torch.Generator) -> Tensor:
    """Random forward maps ``[n, 2, 3]`` from the options ``rotate`` (degrees), ``shift``
    (fraction of the size), ``scale``, ``shear`` (degrees) and ``flip``.

    Draws, in order: angle, scale, shear, x shift, y shift (``[n]`` each) and the flip coins
    ``[n, 2]`` from ``generator``.

    Args:
        get: option name -> value (0 = off), e.g. ``ModalityAugment.get``.
        flip: one of `FLIPS`.
        n: how many maps.

    Example:
        >>> m = draw_affine({"rotate": 10.0}.get, "none", 3, torch.Generator().manual_seed(0))
        >>> m.shape
        torch.Size([3, 2, 3])
    """
    def value(name: str) -> float:
        return get(name) or 0.0

    def uniform(bound: float) -> Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(value("rotate")))
    scale = 1 + uniform(value("scale"))
    shear = uniform(math.radians(value("shear")))
    shift = torch.stack([uniform(2 * value("shift")), uniform(2 * value("shift"))], 1)
    flips = torch.ones(n, 2)
    coin = torch.rand(n, 2, generator=generator) < 0.5
    if flip in ("horizontal", "both"):
        flips[:, 0] = torch.where(coin[:, 0], -1.0, 1.0)
    if flip in ("vertical", "both"):
        flips[:, 1] = torch.where(coin[:, 1], -1.0, 1.0)
    return affine(angle, scale, shear, shift, flips)


def warp_images(values: Tensor, matrix: Tensor) -> Tensor:
    """Images ``[B, C, H, W]`` moved by forward maps ``[B, 2, 3]`` (border pixels fill in).

    Example:
        >>> identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
        >>> x = torch.rand(1, 1, 4, 4)
        >>> bool(torch.allclose(warp_images(x, identity), x, atol=1e-6))
        True
    """
    linear, shift = matrix[:, :, :2], matrix[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    theta = torch.cat([inverse, -inverse @ shift], -1).to(values)
    grid = F.affine_grid(theta, list(values.shape), align_corners=False)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def warp_image(mb: ModalityBatch, matrix: Tensor) -> ModalityBatch:
    """An image batch ``[B, C, H, W]`` moved by forward maps ``[B, 2, 3]``; absent rows are
    left as they are.

    Example:
        >>> mb = ModalityBatch(torch.rand(2, 1, 4, 4), torch.tensor([True, False]))
        >>> m = torch.tensor([[[0.0, 1, 0], [-1, 0, 0]]]).repeat(2, 1, 1)
        >>> bool((warp_image(mb, m).values[1] == mb.values[1]).all())
        True
    """
    warped = warp_images(mb.values, matrix)
    keep = mb.present.view(-1, 1, 1, 1)
    return ModalityBatch(torch.where(keep, warped, mb.values), mb.present, mb.lengths)


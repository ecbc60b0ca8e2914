"""The ``image`` kind: a column of image file paths, decoded to float ``[B, C, H, W]``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.geometry import GEOMETRY_OPTIONS, draw_affine, warp_image
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    register_kind,
    summary,
)
from metamodal.data.loaders.base import Cell, DecodeContext

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""Suffixes of the image files that importers pick up (lower case)."""


def image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of an image file from its header, ``None`` if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except Exception:  # already reported by the loader
        return None


@register_kind
class ImageKind(ModalityKind):
    """Images: PNG / JPEG / ... files, resized and stacked as float ``[B, C, H, W]``; random
    affine maps and flips as augmentation, quarter turns for ``rotate_classes``.

    Example:
        >>> ImageKind().augment_options["rotate"]
        (0, 180)
    """

    name = "image"
    loader = "image"
    default_encoder = "conv4"
    media = True
    suffixes = IMAGE_SUFFIXES
    import_options = ("size", "channels")
    media_folder = "images"
    augment_options = GEOMETRY_OPTIONS
    augment_choices = ("flip",)
    followable = True

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        sizes = [image_size(context.root / str(c))
                 for c, ok in zip(cells, batch.present.tolist(), strict=True) if ok]
        found = [s for s in sizes if s is not None]
        if not found:
            return {}
        return {"width": summary([w for w, _ in found]), "height": summary([h for _, h in found])}

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        matrix = draw_affine(spec.get, spec.flip, len(batch), generator)
        context.geometry[context.name] = matrix
        return warp_image(batch, matrix)

    def check_rotatable(self, name: str, spec: ModalityAugment | None) -> None:
        return None

    def check_rotation(self, name: str, batch: ModalityBatch) -> None:
        if batch.values.shape[-1] != batch.values.shape[-2]:
            raise augment_error(f"rotate_classes needs square images; {name!r} is "
                                f"{batch.values.shape[-2]}x{batch.values.shape[-1]}",
                                "rotate_classes",
                                "resize the images to a square (preprocess size = N)")

    def rotate_quarter(self, batch: ModalityBatch, quarter: int, spec: ModalityAugment | None,
                       context: AugmentContext) -> ModalityBatch:
        return ModalityBatch(torch.rot90(batch.values, quarter, dims=(-2, -1)), batch.present,
                             batch.lengths)

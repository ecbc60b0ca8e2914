"""The ``video`` kind: a column of video file paths, decoded to float ``[B, T, C, H, W]``.

Augmentation (``[augment.NAME]`` of a video modality): ``temporal_crop = c`` keeps a random
contiguous window of between ``1 - c`` and all of the ``T`` frames and resamples it back to
``T`` frames (nearest frame); ``rotate`` / ``shift`` / ``scale`` / ``shear`` / ``flip`` are the
image kind's random affine map, one per video, applied alike to every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.geometry import GEOMETRY_OPTIONS, draw_affine, warp_images
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    register_kind,
    summary,
)
from metamodal.data.loaders.base import Cell, DecodeContext
from metamodal.data.loaders.video import open_video

VIDEO_SUFFIXES = (".mp4", ".m4v", ".webm", ".avi", ".mkv", ".mov", ".mpg", ".mpeg", ".ogv",
                  ".wmv", ".flv")
"""Suffixes of the video files that importers pick up (lower case)."""


def video_metadata(path: Path) -> dict[str, Any] | None:
    """``{"codec", "frames", "seconds", "width", "height"}`` of a video file from its
    container's metadata (no frame decoded), ``None`` if unreadable.

    ``frames`` and ``seconds`` are ``None`` where the container does not say.
    """
    import av

    try:
        with open_video(path) as container:
            stream = container.streams.video[0]
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            return {"codec": stream.codec_context.name, "frames": int(stream.frames) or None,
                    "seconds": seconds, "width": stream.codec_context.width,
                    "height": stream.codec_context.height}
    except Exception:  # already reported by the loader
        return None


def temporal_crop(values: torch.Tensor, crop: float, generator: torch.Generator
                  ) -> torch.Tensor:
    """A random contiguous window of each video ``[B, T, ...]`` resampled back to ``T``
    frames: the window keeps a fraction uniform in ``[1 - crop, 1]`` of the frames (at least
    one) and starts uniformly among the positions where it fits.

    Draws, in order: the window lengths ``[B]``, then their starts ``[B]``.

    Example:
        >>> clip = torch.arange(8.0).view(1, 8)
        >>> temporal_crop(clip, 0.5, torch.Generator().manual_seed(0)).shape
        torch.Size([1, 8])
    """
    b, t = values.shape[:2]
    keep = 1 - torch.rand(b, generator=generator) * crop
    length = (keep * t).round().clamp(1, t)
    start = (torch.rand(b, generator=generator) * (t - length + 1)).floor()
    steps = (torch.arange(t) + 0.5) / t  # [T] centres of T equal parts of the window
    source = (start.unsqueeze(1) + (steps * length.unsqueeze(1)).floor()).long().clamp(0, t - 1)
    index = source.view(b, t, *([1] * (values.dim() - 2))).expand_as(values)
    return values.gather(1, index)


@register_kind
class VideoKind(ModalityKind):
    """Videos: MP4 / WebM / AVI / MKV / MOV ... files, ``T`` frames sampled uniformly;
    temporal crop and frame-wise image augmentation (one affine map per video).

    Example:
        >>> kind = VideoKind()
        >>> kind.default_encoder, kind.media_folder, ".mp4" in kind.suffixes
        ('video-conv', 'videos', True)
    """

    name = "video"
    loader = "video"
    default_encoder = "video-conv"
    media = True
    suffixes = VIDEO_SUFFIXES
    import_options = ("size", "channels")
    media_folder = "videos"
    augment_options = {**GEOMETRY_OPTIONS, "temporal_crop": (0, 0.9)}
    augment_choices = ("flip",)

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        found = [video_metadata(context.root / str(c))
                 for c, ok in zip(cells, batch.present.tolist(), strict=True) if ok]
        found = [m for m in found if m is not None]
        if not found:
            return {}
        details: dict[str, Any] = {"codec": ", ".join(sorted({m["codec"] for m in found}))}
        for key, name in (("frames", "source_frames"), ("seconds", "seconds"),
                          ("width", "source_width"), ("height", "source_height")):
            values = [m[key] for m in found if m[key] is not None]
            if values:
                details[name] = summary(values)
        return details

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        values = batch.values
        if spec.get("temporal_crop"):
            values = temporal_crop(values, spec.get("temporal_crop"), generator)
        if spec.geometric:
            b, t = values.shape[:2]
            matrix = draw_affine(spec.get, spec.flip, b, generator)
            frames = values.reshape(b * t, *values.shape[2:])
            values = warp_images(frames, matrix.repeat_interleave(t, 0)).view_as(values)
        keep = batch.present.view(-1, *([1] * (values.dim() - 1)))
        return ModalityBatch(torch.where(keep, values, batch.values), batch.present,
                             batch.lengths)

    def check_rotatable(self, name: str, spec: ModalityAugment | None) -> None:
        return None

    def check_rotation(self, name: str, batch: ModalityBatch) -> None:
        if batch.values.shape[-1] != batch.values.shape[-2]:
            raise augment_error(f"rotate_classes needs square frames; {name!r} is "
                                f"{batch.values.shape[-2]}x{batch.values.shape[-1]}",
                                "rotate_classes", "resize the frames to a square (size = N)")

    def rotate_quarter(self, batch: ModalityBatch, quarter: int, spec: ModalityAugment | None,
                       context: AugmentContext) -> ModalityBatch:
        return ModalityBatch(torch.rot90(batch.values, quarter, dims=(-2, -1)), batch.present,
                             batch.lengths)

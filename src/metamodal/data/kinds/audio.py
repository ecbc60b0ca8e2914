"""The ``audio`` kind: a column of audio file paths, decoded to log-mel ``[B, n_mels, frames]``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metamodal.data.batch import ModalityBatch
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    register_kind,
    summary,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")
"""Suffixes of the audio files that importers pick up (lower case)."""


def audio_seconds(path: Path) -> float | None:
    """Duration of an audio file from its header, ``None`` if unreadable."""
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except Exception:  # already reported by the loader
        return None


def augment_spectrograms(spec: ModalityAugment, mb: ModalityBatch, generator: torch.Generator,
                         scale: tuple[Tensor, Tensor] | None) -> ModalityBatch:
    """Time shift, gain and SpecAugment masks (Park et al. 2019, "SpecAugment: A Simple Data
    Augmentation Method for Automatic Speech Recognition") of log-mel spectrograms
    ``[B, n_mels, frames]``.

    Example:
        >>> mb = ModalityBatch(torch.ones(1, 4, 6), torch.tensor([True]), torch.tensor([6]))
        >>> spec = ModalityAugment("audio", {"time_mask": 6.0})
        >>> out = augment_spectrograms(spec, mb, torch.Generator().manual_seed(1), None)
        >>> out.values.shape
        torch.Size([1, 4, 6])
    """
    values = mb.values
    b, bands, frames = values.shape
    lengths = mb.lengths if mb.lengths is not None else torch.full((b,), frames)
    valid = (torch.arange(frames) < lengths.unsqueeze(1)).unsqueeze(1)  # [B, 1, frames]
    if spec.get("time_shift"):
        limit = (lengths.to(torch.float32) * spec.get("time_shift")).floor()
        shift = (torch.rand(b, generator=generator) * (2 * limit + 1)).floor() - limit
        source = (torch.arange(frames) - shift.unsqueeze(1)).remainder(lengths.clamp_min(1)
                                                                     .unsqueeze(1))
        values = values.gather(2, source.long().unsqueeze(1).expand(b, bands, frames))
    if spec.get("gain_db"):
        db = (torch.rand(b, 1, 1, generator=generator) * 2 - 1) * spec.get("gain_db")
        offset = db * math.log(10) / 10  # natural-log power change
        if scale is not None:
            offset = offset / scale[1].view(1, -1, 1)
        values = values + offset.to(values)
    for axis, key, size in ((1, "freq_mask", bands), (2, "time_mask", frames)):
        width = int(spec.get(key))
        if not width:
            continue
        span = (torch.rand(b, generator=generator) * (min(width, size) + 1)).floor()
        start = (torch.rand(b, generator=generator) * (size - span + 1)).floor()
        index = torch.arange(size)
        masked = (index >= start.unsqueeze(1)) & (index < (start + span).unsqueeze(1))
        shape = (b, size, 1) if axis == 1 else (b, 1, size)
        values = values.masked_fill(masked.view(shape), 0.0)
    values = torch.where(valid & mb.present.view(-1, 1, 1), values, mb.values)
    return ModalityBatch(values, mb.present, mb.lengths)


@register_kind
class AudioKind(ModalityKind):
    """Audio: WAV / FLAC / OGG files as log-mel spectrograms; time shift, gain and
    SpecAugment masks as augmentation.

    Example:
        >>> AudioKind().length_unit, AudioKind().media_folder
        ('frames', 'audio')
    """

    name = "audio"
    loader = "audio"
    default_encoder = "audio-cnn"
    media = True
    length_unit = "frames"
    length_axis = 2
    suffixes = AUDIO_SUFFIXES
    media_folder = "audio"
    augment_options = {"time_shift": (0, 1), "gain_db": (0, 40), "freq_mask": (0, 1000),
                       "time_mask": (0, 100_000)}

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        seconds = [audio_seconds(context.root / str(c))
                   for c, ok in zip(cells, batch.present.tolist(), strict=True) if ok]
        found = [s for s in seconds if s is not None]
        return {"seconds": summary(found)} if found else {}

    def check_augment(self, name: str, spec: ModalityAugment) -> None:
        for key in ("time_mask", "freq_mask"):
            value = spec.values.get(key)
            if value is not None and value != int(value):
                raise augment_error(f"augment.{name}.{key} must be a whole number",
                                    f"{name}.{key}", "give a count of bands / frames")

    def augment_info(self, loader: ModalityLoader) -> dict[str, Any]:
        mean = getattr(loader, "mean_", None)
        return {} if mean is None else {"scale": (mean, loader.std_)}  # type: ignore[attr-defined]

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        return augment_spectrograms(spec, batch, generator, context.scale)

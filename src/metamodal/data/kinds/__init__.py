"""Modality kinds: one `ModalityKind` object per kind, registered in ``kinds`` by name.

Importing this package registers the built-in kinds (``audio``, ``image``, ``sequence``,
``tabular``, ``text``, ``video``) and their loaders. A new kind is one file: a `ModalityKind`
subclass decorated with `register_kind`, naming a loader registered in
``metamodal.data.loaders.loaders`` and a default encoder registered in
``metamodal.encoders.encoders``.

    >>> from metamodal.data.kinds import kinds, modality_kind
    >>> kinds.names()
    ['audio', 'image', 'sequence', 'tabular', 'text', 'video']
    >>> modality_kind("video").default_encoder
    'video-conv'
"""

from __future__ import annotations

import metamodal.data.loaders  # noqa: F401  (registers the built-in loaders)
from metamodal.data.kinds.audio import AudioKind
from metamodal.data.kinds.base import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    kind_names,
    kinds,
    modality_kind,
    register_kind,
    summary,
)
from metamodal.data.kinds.image import ImageKind
from metamodal.data.kinds.sequence import SequenceKind
from metamodal.data.kinds.tabular import TabularKind
from metamodal.data.kinds.text import TextKind
from metamodal.data.kinds.video import VideoKind

__all__ = [
    "AudioKind",
    "AugmentContext",
    "ImageKind",
    "ModalityAugment",
    "ModalityKind",
    "SequenceKind",
    "TabularKind",
    "TextKind",
    "VideoKind",
    "augment_error",
    "kind_names",
    "kinds",
    "modality_kind",
    "register_kind",
    "summary",
]

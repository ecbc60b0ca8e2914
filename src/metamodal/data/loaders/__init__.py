"""Modality loaders: one `ModalityLoader` per kind, registered in `loaders` by kind name.

Importing this package registers ``image``, ``text``, ``audio``, ``sequence``, ``tabular``
and ``video``:

    >>> from metamodal.data.loaders import loaders
    >>> loaders.names()
    ['audio', 'image', 'sequence', 'tabular', 'text', 'video']
    >>> loaders.create("image", size=16).input_info()
    {'channels': 3, 'height': 16, 'width': 16}
"""

from __future__ import annotations

from metamodal.data.loaders.audio import AudioLoader
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.data.loaders.image import ImageLoader
from metamodal.data.loaders.sequence import SequenceLoader
from metamodal.data.loaders.tabular import TabularLoader
from metamodal.data.loaders.text import TextLoader, tokenizers
from metamodal.data.loaders.video import VideoLoader

__all__ = [
    "AudioLoader",
    "Cell",
    "DecodeContext",
    "ImageLoader",
    "ModalityLoader",
    "SequenceLoader",
    "TabularLoader",
    "TextLoader",
    "VideoLoader",
    "loaders",
    "tokenizers",
]

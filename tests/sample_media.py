"""Small media files of every file-based kind, and the schema of a dataset that uses them.

Shared by the inspection and preprocessing tests, which build their sample tables on top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

MEDIA_MODALITIES = """
[modalities.photo]
kind = "image"
column = "photo"
size = 8

[modalities.caption]
kind = "text"
column = "caption"

[modalities.sound]
kind = "audio"
column = "sound"
n_mels = 8
n_fft = 64
hop_length = 32

[modalities.track]
kind = "sequence"
column = "track"

[modalities.size]
kind = "tabular"
columns = ["w", "h"]
"""
"""The ``[modalities.*]`` tables of ``dataset.toml``: columns photo, caption, sound, track, w, h."""


def write_media(root: Path) -> None:
    """Small valid media files in ``root``: 2 images, 2 clips, 2 sequences.

    ``a.png`` RGB 6x5, ``b.png`` grayscale 12x9; ``a.wav`` 0.1 s and ``b.wav`` 0.05 s at
    8 kHz; ``a.npy`` ``[5, 2]`` and ``b.npy`` ``[3, 2]``.
    """
    Image.new("RGB", (6, 5), (200, 10, 10)).save(root / "a.png")
    Image.new("L", (12, 9), 80).save(root / "b.png")
    t = np.arange(800) / 8000.0
    soundfile.write(root / "a.wav", np.sin(2 * np.pi * 440 * t), 8000)
    soundfile.write(root / "b.wav", 0.5 * np.sin(2 * np.pi * 220 * t[:400]), 8000)
    np.save(root / "a.npy", np.arange(10, dtype=np.float32).reshape(5, 2))
    np.save(root / "b.npy", np.ones((3, 2), dtype=np.float32))

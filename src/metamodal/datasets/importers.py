"""Importers for common data layouts: they write a dataset directory in metamodal's format.

``metamodal import LAYOUT SOURCE OUT`` reads data laid out the way users usually keep it and
writes ``OUT/dataset.toml``, ``OUT/samples.csv``, the media files (copied below ``OUT``, so the
dataset stands alone) and, when held-out groups are named, ``OUT/splits.toml``:

- ``imagefolder`` / ``audiofolder`` / ``videofolder``: one folder per class
  (``SOURCE/CLASS/FILE``), optionally with a group level above it
  (``SOURCE/GROUP/CLASS/FILE``: splits are then made by group), as torchvision's
  ``ImageFolder`` reads them. Files below a class folder at any depth belong to it. A class
  folder holding files of another type is an error (or skipped with ``skip_other``).
- ``table``: a CSV / JSON-lines / Parquet table with a label column, where the user names which
  columns are text, numbers, and paths of image, audio, sequence or video files (relative to the
  table's folder or ``root``; a path leading out of it is refused).
- ``omniglot``: the official Omniglot archives, see `metamodal.datasets.omniglot`.

Every importer reads its source safely (`metamodal.datasets._sources` for folders,
`metamodal.datasets._archives` for zip and tar archives: no path out of the source, no symlink
out of it, bounded sizes, operating-system noise skipped), builds the whole
dataset in a temporary directory and moves it into place only when complete; a non-empty
``OUT`` is replaced only with ``overwrite`` and only when it holds a dataset. Bad input raises a
`DatasetError` (or `ConfigError` for a bad argument) naming the file, row and column with a fix.

The importers live one per source: `metamodal.datasets.folders` (class folders),
`metamodal.datasets.tables` (tables) and `metamodal.datasets.omniglot`; what they share is
`metamodal.datasets.common`. This module names the layouts and dispatches between them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from metamodal.data.kinds.audio import AUDIO_SUFFIXES
from metamodal.data.kinds.image import IMAGE_SUFFIXES
from metamodal.data.kinds.sequence import SEQUENCE_SUFFIXES
from metamodal.data.kinds.video import VIDEO_SUFFIXES
from metamodal.datasets.common import ImportResult
from metamodal.datasets.folders import (
    import_audiofolder,
    import_folder,
    import_imagefolder,
    import_videofolder,
)
from metamodal.datasets.tables import import_table
from metamodal.errors import ConfigError

__all__ = [
    "AUDIO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "SEQUENCE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "ImportResult",
    "import_audiofolder",
    "import_dataset",
    "import_folder",
    "import_imagefolder",
    "import_table",
    "import_videofolder",
]

LAYOUTS = ("imagefolder", "audiofolder", "videofolder", "table", "omniglot")
"""Layouts `import_dataset` knows."""


def _omniglot(source: str | Path, out: str | Path, **options: Any) -> ImportResult:
    from metamodal.datasets.omniglot import import_omniglot

    return import_omniglot(source, out, **options)


_IMPORTERS: dict[str, Callable[..., ImportResult]] = {
    "imagefolder": import_imagefolder,
    "audiofolder": import_audiofolder,
    "videofolder": import_videofolder,
    "table": import_table,
    "omniglot": _omniglot,
}


def import_dataset(layout: str, source: str | Path, out: str | Path,
                   **options: Any) -> ImportResult:
    """Import ``source`` laid out as ``layout`` (one of `LAYOUTS`) into the dataset ``out``.

    ``options`` are those of the layout's importer (`import_folder`, `import_videofolder`,
    `import_table`, `metamodal.datasets.omniglot.import_omniglot`).

    Raises:
        ConfigError: an unknown layout, or a ``source`` or ``out`` that is not a path.

    Example:
        >>> import_dataset("imagefolder", "photos", "photos-ds")  # doctest: +SKIP
    """
    if layout not in _IMPORTERS:
        raise ConfigError(f"unknown layout {layout!r}", column="layout",
                          fix=f"use one of: {', '.join(LAYOUTS)}")
    for key, value in (("source", source), ("out", out)):
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key} must be a path, got {value!r}", column=key,
                              fix=f"give {key} as a str or pathlib.Path")
    return _IMPORTERS[layout](source, out, **options)

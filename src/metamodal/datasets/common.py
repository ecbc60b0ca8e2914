"""What every importer shares: the `ImportResult` it returns and small helpers (listing a few
names, a progress bar, image loader options, writing the dataset's tables).

`metamodal.datasets.folders`, `metamodal.datasets.tables` and `metamodal.datasets.omniglot`
import these; `metamodal.datasets.importers` dispatches between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.data.loaders.image import MAX_SIDE
from metamodal.datasets._output import write_samples_csv, write_schema
from metamodal.errors import ConfigError

__all__ = ["ImportResult", "few", "image_options", "progress", "write_dataset"]


@dataclass
class ImportResult:
    """What an importer wrote.

    Args:
        path: the dataset directory.
        samples: number of samples (rows of ``samples.csv``).
        classes: number of classes.
        groups: number of groups, or ``None`` without a group column.
        modalities: modality name -> kind.
        episodes: the episode file written beside the dataset, if any (Omniglot ``all_runs``).
        notes: what else the user should know (skipped files, extra datasets written).

    Example:
        >>> print(ImportResult(Path("out"), 40, 2, None, {"image": "image"}).summary())
        imported 40 samples of 2 classes into out (modalities: image (image))
    """

    path: Path
    samples: int
    classes: int
    groups: int | None
    modalities: dict[str, str]
    episodes: Path | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """The `summary`."""
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the dataset directory, the counts and the modalities."""
        values = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}

    def summary(self) -> str:
        """One paragraph for the command line."""
        groups = f" in {self.groups} groups" if self.groups is not None else ""
        kinds = ", ".join(f"{name} ({kind})" for name, kind in self.modalities.items())
        lines = [f"imported {self.samples} samples of {self.classes} classes{groups} into "
                 f"{self.path} (modalities: {kinds})"]
        if self.episodes is not None:
            lines.append(f"episode file: {self.episodes}")
        lines += self.notes
        return "\n".join(lines)


def few(items: Sequence[str], n: int = 5) -> str:
    """The first ``n`` of ``items``, comma-separated, and how many more there are.

    Example:
        >>> few(["a", "b", "c"], 2)
        'a, b and 1 more'
    """
    shown = ", ".join(str(x) for x in list(items)[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def progress(items: Sequence[Any], enabled: bool, desc: str) -> Any:
    """``items``, wrapped in a progress bar (tqdm, shown after a second) when ``enabled``.

    Example:
        >>> progress([1, 2], False, "copy")
        [1, 2]
    """
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="file", delay=1.0, leave=False)


def image_options(image_size: int | None, channels: int | None) -> dict[str, Any]:
    """The image loader options (``size``, ``channels``) an importer writes to
    ``dataset.toml``; `ConfigError` for a value the loader would refuse.

    Example:
        >>> image_options(28, 1)
        {'size': 28, 'channels': 1}
    """
    options: dict[str, Any] = {}
    if image_size is not None:
        if (isinstance(image_size, bool) or not isinstance(image_size, int)
                or not 1 <= image_size <= MAX_SIDE):
            raise ConfigError(f"invalid image size {image_size!r}", column="image_size",
                              fix=f"give a number of pixels from 1 to {MAX_SIDE}, e.g. 28")
        options["size"] = image_size
    if channels is not None:
        if channels not in (1, 3):
            raise ConfigError(f"invalid channels {channels!r}", column="channels",
                              fix="use 1 (grayscale) or 3 (RGB)")
        options["channels"] = channels
    return options


def write_dataset(tmp: Path, header: list[str], rows: list[list[str | None]],
                  schema: dict[str, Any], splits: dict[str, list[str]] | None) -> None:
    """Write ``samples.csv`` (``header`` and ``rows``), ``splits.toml`` (when ``splits``) and
    ``dataset.toml`` (``schema``) into the staging directory ``tmp``."""
    write_samples_csv(tmp / "samples.csv", header, rows)
    if splits is not None:
        import tomli_w

        (tmp / "splits.toml").write_text(tomli_w.dumps(splits), encoding="utf-8")
    write_schema(tmp / "dataset.toml", schema)

"""The verbs about data: `make_synthetic`, `import_dataset`, `download`, `inspect`,
`episodes`, `cache_info` and `clear_cache`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.fields import check_output_file, resolve, typed_arguments, write_json
from metamodal.api.settings import (
    IMPORT_LAYOUTS,
    CacheSettings,
    DownloadSettings,
    EpisodesSettings,
    ImportSettings,
    SyntheticSettings,
)
from metamodal.errors import ConfigError


@dataclass
class SyntheticResult:
    """The dataset `make_synthetic` wrote.

    Args:
        path: the dataset directory.
        classes: number of classes.
        per_class: samples per class.
    """

    path: Path
    classes: int
    per_class: int

    def to_dict(self) -> dict[str, Any]:
        """The directory and the counts."""
        return {"path": str(self.path), "classes": self.classes, "per_class": self.per_class}

    def table(self) -> str:
        """One line: what was written where."""
        return f"wrote {self.classes} classes x {self.per_class} samples to {self.path}"


def make_synthetic(out: str | Path | None = None, settings: SyntheticSettings | None = None,
                   **options: Any) -> SyntheticResult:
    """Write the embedded synthetic five-modality dataset (``metamodal make-synthetic``): image,
    caption, sound, trajectory and measurements of classes that share latent attributes.

    Args:
        out: the dataset directory to write.
        settings: a `SyntheticSettings`; ``options`` (its field names) override it.

    Example:
        >>> make_synthetic("data", classes=20, per_class=10).path  # doctest: +SKIP
    """
    from metamodal.datasets.synthetic import make_synthetic as write

    s = resolve(SyntheticSettings, settings, {"out": out, **options}, verb="make_synthetic")
    values = dataclasses.asdict(s)
    path = write(values.pop("out"), **values)
    return SyntheticResult(Path(path), s.classes, s.per_class)


@typed_arguments("import")
def import_dataset(layout: str, source: str | Path | None = None, out: str | Path | None = None,
                   settings: ImportSettings | None = None, **options: Any) -> Any:
    """Import data in a common layout as a dataset directory (``metamodal import LAYOUT``).

    Args:
        layout: one of `IMPORT_LAYOUTS`: ``imagefolder``, ``audiofolder``, ``videofolder``,
            ``table``, ``omniglot``.
        source: the folder, archive or table to import.
        out: the dataset directory to write.
        settings: the layout's settings (`ImageFolderSettings`, `TableImportSettings`, ...);
            ``options`` (its field names) override it.

    Returns:
        a `metamodal.datasets.importers.ImportResult` (``table()`` is its summary).

    Raises:
        ConfigError: an unknown layout or setting.

    Example:
        >>> import_dataset("imagefolder", "photos", "photos-ds")  # doctest: +SKIP
    """
    from metamodal.datasets.importers import import_dataset as run_import

    if layout not in IMPORT_LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}", column="layout",
                          fix=f"use one of: {', '.join(IMPORT_LAYOUTS)}")
    cls = IMPORT_LAYOUTS[layout][0]
    s = resolve(cls, settings, {"source": source, "out": out, **options}, verb="import")
    values = dataclasses.asdict(s)
    if "group_level" in values:
        values["group_level"] = {"auto": None, "yes": True, "no": False}[values["group_level"]]
        values["skip_other"] = values.pop("skip_other_files")
    if layout == "table":
        values["id_column"] = values.pop("id")
        values["table_in_archive"] = values.pop("table")
    if layout == "omniglot":
        values["strokes"] = not values.pop("no_strokes")
        if values["name"] is None:
            values.pop("name")
    return run_import(layout, values.pop("source"), values.pop("out"), **values)


def download(dataset: str | None = None, directory: str | Path | None = None,
             settings: DownloadSettings | None = None, **options: Any) -> Any:
    """Download a public dataset, verify its checksums, unpack and import it
    (``metamodal download``).

    Args:
        dataset: ``omniglot``.
        directory: the folder for ``archives/``, ``unpacked/`` and the imported ``dataset/``.
        settings: a `DownloadSettings`; ``options`` (its field names) override it.

    Returns:
        a `metamodal.datasets.download.DownloadResult`.

    Example:
        >>> download("omniglot", "omniglot").dataset  # doctest: +SKIP
    """
    from metamodal.datasets.download import download_omniglot

    s = resolve(DownloadSettings, settings, {"dataset": dataset, "dir": directory, **options},
                verb="download")
    return download_omniglot(
        s.dir, sets=list(s.sets) or ["background-small"],
        **({"base_url": s.url} if s.url is not None else {}), sha256=dict(s.sha256),
        import_data=not s.no_import, overwrite=s.overwrite, progress=s.progress,
        timeout=s.timeout, val_groups=list(s.val_groups), test_groups=list(s.test_groups),
        image_size=s.image_size)


@typed_arguments("inspect")
def inspect(directory: str | Path, *, json: str | Path | None = None) -> Any:
    """Validate a dataset directory and describe it (``metamodal inspect``): sizes, classes,
    modalities and every problem at once.

    Args:
        directory: the dataset directory.
        json: also write the findings as JSON to this file.

    Returns:
        a `metamodal.data.inspect.InspectionReport` (``ok`` is False when a problem makes the
        dataset unusable).

    Example:
        >>> inspect("data").ok  # doctest: +SKIP
    """
    from metamodal.data.inspect import inspect_dataset

    if json:
        check_output_file(json, "json")
    report = inspect_dataset(directory)
    write_json(json, report)
    return report


@dataclass
class EpisodesResult:
    """The episode file `episodes` wrote.

    Args:
        path: the episodes.jsonl written.
        runs: the runs (each with ``support`` and ``query`` sample ids, and ``group``).
        shape: ways, shots and queries, in words.
        groups: group -> runs drawn within it (for ``within``).
    """

    path: Path
    runs: list[Any]
    shape: str
    groups: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The file, the number of runs and the runs per group."""
        return {"path": str(self.path), "runs": len(self.runs), "shape": self.shape,
                "groups": dict(self.groups)}

    def table(self) -> str:
        """One line: how many runs of which shape went where."""
        where = ("; within one group each: " + ", ".join(
            f"{g} x{n}" for g, n in self.groups.items())) if self.groups else ""
        return f"wrote {len(self.runs)} runs ({self.shape}{where}) to {self.path}"


def episodes(data: str | Path | None = None, settings: EpisodesSettings | None = None,
             **options: Any) -> EpisodesResult:
    """Write an episode file of a published protocol (``metamodal episodes``), e.g. Lake et
    al.'s 20-way one-shot runs within an alphabet (``within="*"``).

    Args:
        data: the dataset directory.
        settings: an `EpisodesSettings`; ``options`` (its field names) override it.

    Example:
        >>> episodes("omniglot", out="runs.jsonl", within="*", ways=20,
        ...          queries=1, runs=20).path  # doctest: +SKIP
    """
    from metamodal.data.dataset import load_dataset
    from metamodal.data.episode_files import protocol_episodes, write_episode_file
    from metamodal.data.splits import load_split

    s = resolve(EpisodesSettings, settings, {"data": data, **options}, verb="episodes")
    check_output_file(s.out, "out")
    dataset = load_dataset(s.data)
    labels = [str(label) for label in dataset.labels]
    classes = None
    if s.split != "all":
        split = load_split(dataset.root, labels, dataset.groups, seed=s.split_seed)
        classes = split.of(s.split)
    within: list[str] | str | None = None
    if s.within is not None:
        within = "*" if s.within.strip() in ("*", "all") else [
            g.strip() for g in s.within.split(",") if g.strip()]
    runs = protocol_episodes(dataset.ids, labels, ways=s.ways, shots=s.shots,
                             queries=s.queries, runs=s.runs, seed=s.seed, classes=classes,
                             groups=dataset.groups, within=within)
    path = write_episode_file(s.out, runs)
    groups: dict[str, int] = {}
    if within is not None:
        for run in runs:
            groups[str(run.group)] = groups.get(str(run.group), 0) + 1
    shape = (f"{s.ways}-way {s.shots}-shot, {s.queries} "
             f"quer{'y' if s.queries == 1 else 'ies'} per class")
    return EpisodesResult(Path(path), list(runs), shape, groups)


def cache_info(settings: CacheSettings | None = None, **options: Any) -> Any:
    """Where the feature cache of pretrained encoders is, its size and its entries per encoder
    (``metamodal cache info``).

    Returns:
        a `metamodal.encoders.cache.CacheInfo`.

    Example:
        >>> cache_info().entries  # doctest: +SKIP
    """
    from metamodal.encoders.cache import FeatureCache

    s = resolve(CacheSettings, settings, options, verb="cache_info")
    info = FeatureCache(s.dir, limit=s.limit).info()
    write_json(s.json, info)
    return info


@dataclass
class ClearedCache:
    """What `clear_cache` freed.

    Args:
        root: the cache directory.
        freed: bytes freed.
        encoder: the encoder whose features were cleared (None: all).
    """

    root: Path
    freed: int
    encoder: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The directory, the bytes freed and the encoder."""
        return {"root": str(self.root), "freed": self.freed, "encoder": self.encoder}

    def table(self) -> str:
        """One line: what was freed where."""
        from metamodal.encoders.cache import human_size

        return (f"cleared {human_size(self.freed)} from {self.root}"
                + (f" (encoder {self.encoder})" if self.encoder else ""))


def clear_cache(settings: CacheSettings | None = None, **options: Any) -> ClearedCache:
    """Delete the cached features (of one encoder, or all) (``metamodal cache clear``).

    Example:
        >>> clear_cache(encoder="minilm").freed  # doctest: +SKIP
    """
    from metamodal.encoders.cache import FeatureCache

    s = resolve(CacheSettings, settings, options, verb="clear_cache")
    cache = FeatureCache(s.dir, limit=s.limit)
    return ClearedCache(cache.root, cache.clear(encoder=s.encoder), s.encoder)

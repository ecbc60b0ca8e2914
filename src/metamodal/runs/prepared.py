"""From a dataset directory to a decoded store: read, split by class, fit loaders, decode once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metamodal.data.batch import TensorStore
from metamodal.data.dataset import MultimodalDataset, load_dataset
from metamodal.data.preprocess import Preprocessor
from metamodal.data.splits import ClassSplit, split_classes
from metamodal.encoders.features import pretrained_loaders

CACHE_DIR = ".metamodal-cache"


@dataclass
class PreparedData:
    """A dataset ready for episodes: the table, its class split, the fitted preprocessor and
    the decoded `TensorStore` of every sample."""

    dataset: MultimodalDataset
    split: ClassSplit
    preprocessor: Preprocessor
    store: TensorStore


def prepare_data(
    data: str | Path,
    *,
    seed: int = 0,
    modalities: list[str] | None = None,
    preprocess: dict[str, dict] | None = None,
    cache: bool = True,
    preprocessor: Preprocessor | None = None,
    split: ClassSplit | None = None,
    encoders: dict[str, str] | None = None,
) -> PreparedData:
    """Load ``data``, split its classes, fit a preprocessor on meta-train classes, decode.

    Args:
        data: the dataset directory.
        seed: seeds the class split when the dataset has no ``splits.toml``.
        modalities: modalities to keep (default all).
        preprocess: loader option overrides per modality (for a modality with a pretrained
            encoder: that encoder's options, e.g. ``{"image": {"size": 112}}``).
        cache: keep decoded tensors in ``DATA/.metamodal-cache`` and reuse them. (Features of
            pretrained encoders are also kept in the user-wide feature cache,
            `metamodal.encoders.cache.FeatureCache`, whatever this flag says.)
        preprocessor: an already fitted preprocessor (from a run): used as is.
        split: an already chosen class split (from a run): used as is.
        encoders: modality name -> encoder name (``TrainConfig.encoders``); a modality whose
            encoder is pretrained (``minilm``, ``efficientnet-lite0``, ``resemblyzer``) is
            decoded into that frozen encoder's features, computed once per input through the
            feature cache (`metamodal.encoders.features`). Ignored with ``preprocessor``.

    Example:
        >>> prepared = prepare_data("demo-data", seed=0)  # doctest: +SKIP
        >>> len(prepared.split.test) > 0  # doctest: +SKIP
        True
    """
    dataset = load_dataset(data)
    if split is None:
        splits_file = dataset.root / "splits.toml"
        split = split_classes(
            dataset.labels,
            dataset.groups,
            seed=seed,
            splits_file=splits_file if splits_file.exists() else None,
        )
    if preprocessor is None:
        specs = dataset.schema.modalities
        prebuilt = pretrained_loaders(
            {name: specs[name] for name in (modalities or specs) if name in specs},
            encoders, preprocess,
        )
        overrides = {k: v for k, v in (preprocess or {}).items() if k not in prebuilt}
        preprocessor = Preprocessor(specs, modalities=modalities, overrides=overrides,
                                    prebuilt=prebuilt)
        preprocessor.fit(dataset, split.train)
    cache_dir = dataset.root / CACHE_DIR if cache else None
    store = preprocessor.transform(dataset, cache_dir=cache_dir)
    return PreparedData(dataset, split, preprocessor, store)

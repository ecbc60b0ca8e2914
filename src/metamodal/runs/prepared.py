"""From a dataset directory to a decoded store: read, split by class, fit loaders, decode once."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from metamodal.data.batch import TensorStore
from metamodal.data.dataset import MultimodalDataset, load_dataset
from metamodal.data.loaders.base import DecodeContext
from metamodal.data.preprocess import Preprocessor
from metamodal.data.splits import ClassSplit, split_classes
from metamodal.encoders.features import (
    PretrainedLoader,
    preprocessor_from_state,
    pretrained_loaders,
)
from metamodal.errors import ModalityError

CACHE_DIR = ".metamodal-cache"


@dataclass
class PreparedData:
    """A dataset ready for episodes: the table, its class split, the fitted preprocessor and
    the decoded `TensorStore` of every sample."""

    dataset: MultimodalDataset
    split: ClassSplit
    preprocessor: Preprocessor
    store: TensorStore

    def classes(self, split: str) -> list[str]:
        """The class labels of ``split``: ``train``, ``val``, ``test`` or ``all``."""
        s = self.split
        return s.train + s.val + s.test if split == "all" else s.of(split)


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
    progress: bool = True,
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
        preprocessor: an already fitted preprocessor (from a run): used as is. A modality it
            decodes that the dataset lacks entirely (not in its ``dataset.toml``) is absent
            for every sample, with one `UserWarning` naming it, as if each row had an empty
            cell; the others are decoded (and cached) as usual.
        split: an already chosen class split (from a run): used as is.
        encoders: modality name -> encoder name (``TrainConfig.encoders``); a modality whose
            encoder is pretrained (``minilm``, ``efficientnet-lite0``, ``resemblyzer``) is
            decoded into that frozen encoder's features, computed once per input through the
            feature cache (`metamodal.encoders.features`). Ignored with ``preprocessor``.
        progress: show a progress bar while pretrained encoders compute features.

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
    fit = preprocessor is None
    if preprocessor is None:
        specs = dataset.schema.modalities
        prebuilt = pretrained_loaders(
            {name: specs[name] for name in (modalities or specs) if name in specs},
            encoders, preprocess,
        )
        overrides = {k: v for k, v in (preprocess or {}).items() if k not in prebuilt}
        preprocessor = Preprocessor(specs, modalities=modalities, overrides=overrides,
                                    prebuilt=prebuilt)
    show_progress(preprocessor, progress)  # before fit, which computes features too
    if fit:
        preprocessor.fit(dataset, split.train)
        show_progress(preprocessor, progress)  # a fit remembered rebuilds its loaders
    cache_dir = dataset.root / CACHE_DIR if cache else None
    lacking = lacking_modalities(preprocessor, dataset)
    if not lacking:
        store = preprocessor.transform(dataset, cache_dir=cache_dir)
    else:
        store = _transform_without(preprocessor, dataset, lacking, cache_dir)
    return PreparedData(dataset, split, preprocessor, store)


def show_progress(preprocessor: Preprocessor, progress: bool) -> None:
    """Whether the pretrained loaders of ``preprocessor`` draw a bar while they compute
    features (`metamodal.encoders.features.PretrainedLoader.progress`)."""
    for loader in preprocessor.loaders.values():
        if isinstance(loader, PretrainedLoader):
            loader.progress = progress


def lacking_modalities(preprocessor: Preprocessor, dataset: MultimodalDataset) -> list[str]:
    """The modalities ``preprocessor`` decodes that ``dataset``'s schema does not declare.

    Example:
        >>> lacking_modalities(run.preprocessor, load_dataset("images-only"))  # doctest: +SKIP
        ['strokes']
    """
    return [name for name in preprocessor.modalities if name not in dataset.schema.modalities]


def _transform_without(preprocessor: Preprocessor, dataset: MultimodalDataset,
                       lacking: list[str], cache_dir: Path | None) -> TensorStore:
    """Decode the modalities ``dataset`` has (cached, by a preprocessor restricted to them)
    and add the ``lacking`` ones as absent for every sample, in the preprocessor's order."""
    present = [name for name in preprocessor.modalities if name not in lacking]
    if not present:
        raise ModalityError(
            f"the dataset {dataset.root} has none of the model's modalities "
            f"({', '.join(preprocessor.modalities)}); it has: "
            f"{', '.join(dataset.schema.modalities)}", file=dataset.root / "dataset.toml",
            column="modalities",
            fix="evaluate on data that carries at least one modality the model was trained on")
    warnings.warn(
        f"dataset {str(dataset.root)!r} lacks the model's modalit"
        f"{'y' if len(lacking) == 1 else 'ies'} {', '.join(map(repr, lacking))}: "
        f"{'it is' if len(lacking) == 1 else 'they are'} absent for every sample, and the "
        f"model uses {', '.join(map(repr, present))}", stacklevel=3)
    state = preprocessor.state_dict()
    state = {**state, "modalities": present,
             "specs": {name: state["specs"][name] for name in present},
             "loaders": {name: state["loaders"][name] for name in present}}
    decoded = preprocessor_from_state(state).transform(dataset, cache_dir=cache_dir)
    context_rows = list(range(1, len(dataset) + 1))
    modalities = {}
    for name in preprocessor.modalities:
        if name in decoded.modalities:
            modalities[name] = decoded.modalities[name]
        else:
            context = DecodeContext(dataset.root, dataset.table.file, context_rows, name,
                                    noun=preprocessor.specs[name].kind)
            modalities[name] = preprocessor.loaders[name].decode([None] * len(dataset),
                                                                 context)
    return TensorStore(decoded.ids, decoded.labels, modalities, preprocessor.kinds())

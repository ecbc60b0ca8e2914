"""Decode a dataset once into a `TensorStore`, with loaders fitted on meta-train classes only.

A `Preprocessor` holds one `ModalityLoader` per modality. ``fit`` learns each loader's state
(text vocabulary, normalisation statistics, ...) from the samples of the meta-train classes
only, so that nothing about validation or test classes leaks into training. ``transform``
decodes every sample once; episodes are then cut from the store by indexing.

On-disk cache: with ``cache_dir``, the decoded store is saved as ``store-KEY.safetensors``
and reused by later calls. ``KEY`` is a SHA-256 over

* the package version and the preprocessor's `Preprocessor.state_dict` (modalities, loader
  options and fitted state), so a refit or a changed option gives a new key;
* the samples being decoded: their ids, labels and, for every modality, their cells (the
  part of the sample table that is decoded, in order);
* for media kinds (whose `ModalityKind.media` is true: image, audio, sequence, video), each
  referenced file's size and modification time
  in nanoseconds (``os.stat``), the cheap test build tools such as make and rsync use: media
  are never read to compute the key, and editing or replacing a file changes the key.

A store is written atomically (temporary file in the same directory, then ``os.replace``),
never when decoding collected problems, and an unreadable cache file is decoded again.

Fitting is remembered within a process: a loader fitted on the same cells of the same files
(the same key, over its options instead of the fitted state and over the meta-train samples)
as one fitted before is rebuilt from that one's state instead of reading the files again
(``_FITTED``, the last `FIT_MEMORY` of them), as when several runs train on one dataset.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from metamodal.data.batch import ModalityBatch, TensorStore
from metamodal.data.dataset import MultimodalDataset
from metamodal.data.kinds import modality_kind
from metamodal.data.loaders.base import Cell, ModalityLoader
from metamodal.data.loading import build_loader, create_loader, loader_class_of
from metamodal.data.schema import DatasetSchema, ModalitySpec
from metamodal.errors import (
    ConfigError,
    DatasetError,
    MetamodalError,
    OutputError,
    RunError,
    UnknownNameError,
)
from metamodal.io import atomic_write
from metamodal.version import __version__

__all__ = ["Preprocessor", "build_loader", "create_loader"]

_STATE_FORMAT = 1
FIT_MEMORY = 32
"""Fitted loader states this process remembers (`Preprocessor.fit`)."""
_FITTED: OrderedDict[str, dict[str, Any]] = OrderedDict()


class Preprocessor:
    """One fitted loader per modality; decodes datasets into `TensorStore`s.

    Args:
        specs: modality name -> `ModalitySpec` (or a `DatasetSchema`, whose modalities are
            used).
        modalities: the modalities to keep, in this order (default: all of ``specs``).
        overrides: modality name -> loader options that update the spec's options (e.g. from
            a run config: ``{"image": {"size": 64}}``).
        prebuilt: modality name -> a loader to use instead of the kind's own (e.g. a frozen
            pretrained encoder's ``metamodal.encoders.features.PretrainedLoader``, which
            decodes the modality into feature vectors); ``overrides`` do not apply to it.

    Raises:
        UnknownNameError: a modality in ``modalities`` or ``overrides`` is not in ``specs``.
        ConfigError: no modality is selected, or a loader rejects its options.

    Example:
        >>> import tempfile
        >>> from metamodal.data.dataset import load_dataset
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "dataset.toml").write_text(
        ...     'label = "y"\\n[modalities.f]\\nkind = "tabular"\\ncolumns = ["a", "b"]\\n')
        >>> _ = (d / "samples.csv").write_text("id,y,a,b\\n1,P,0,1\\n2,Q,2,3\\n3,R,4,\\n")
        >>> ds = load_dataset(d)
        >>> pre = Preprocessor(ds.schema).fit(ds, classes=["P", "Q"])
        >>> store = pre.transform(ds)
        >>> store.modalities["f"].values.shape, pre.kinds()
        (torch.Size([3, 2]), {'f': 'tabular'})
    """

    def __init__(
        self,
        specs: Mapping[str, ModalitySpec] | DatasetSchema,
        modalities: Sequence[str] | None = None,
        overrides: Mapping[str, Mapping[str, Any]] | None = None,
        prebuilt: Mapping[str, ModalityLoader] | None = None,
    ) -> None:
        if isinstance(specs, DatasetSchema):
            specs = specs.modalities
        names = list(specs) if modalities is None else list(modalities)
        overrides = dict(overrides or {})
        for name in [*names, *overrides]:
            if name not in specs:
                raise UnknownNameError(
                    f"unknown modality {name!r}", column="modalities",
                    fix=f"use one of: {', '.join(specs)}"
                )
        if not names:
            raise ConfigError(
                "no modality selected", fix=f"select at least one of: {', '.join(specs)}"
            )
        self.specs: dict[str, ModalitySpec] = {name: specs[name] for name in names}
        prebuilt = dict(prebuilt or {})
        self.loaders: dict[str, ModalityLoader] = {
            name: prebuilt[name] if name in prebuilt else create_loader(spec, overrides.get(name))
            for name, spec in self.specs.items()
        }
        self.fitted_ = False

    @property
    def modalities(self) -> list[str]:
        """The modality names, in order."""
        return list(self.specs)

    def kinds(self) -> dict[str, str]:
        """Modality name -> kind."""
        return {name: spec.kind for name, spec in self.specs.items()}

    def input_info(self) -> dict[str, dict[str, Any]]:
        """Modality name -> what its encoder needs to know (the loader's ``input_info``)."""
        return {name: loader.input_info() for name, loader in self.loaders.items()}

    def fit(self, dataset: MultimodalDataset, classes: Sequence[str]) -> Preprocessor:
        """Fit every loader on the cells of the samples whose label is in ``classes``.

        Args:
            dataset: the dataset.
            classes: the meta-train classes; vocabularies and normalisation statistics come
                from their samples only.

        Returns:
            ``self``, fitted.

        Raises:
            DatasetError: a class is not in the dataset, or a cell cannot be decoded.
        """
        wanted = set(classes)
        unknown = sorted(wanted - set(dataset.classes))
        if unknown or not wanted:
            raise DatasetError(
                f"classes to fit on are not in the dataset: {unknown}"
                if unknown
                else "no classes to fit on",
                file=dataset.table.file,
                column=dataset.schema.label,
                fix="fit on the meta-train classes of this dataset",
            )
        train = dataset.subset([i for i, label in enumerate(dataset.labels) if label in wanted])
        for name, loader in list(self.loaders.items()):
            cells = train.cells(name)
            key = _fit_key(loader, self.specs[name], train.root, cells)
            known = _FITTED.get(key)
            if known is not None:
                _FITTED.move_to_end(key)
                self.loaders[name] = type(loader).from_state(copy.deepcopy(known))
                continue
            loader.fit(cells, train.context(name))
            _FITTED[key] = copy.deepcopy(loader.state_dict())
            while len(_FITTED) > FIT_MEMORY:
                _FITTED.popitem(last=False)
        self.fitted_ = True
        return self

    def transform(
        self,
        dataset: MultimodalDataset,
        cache_dir: str | Path | None = None,
        problems: list[DatasetError] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> TensorStore:
        """Decode every sample of ``dataset`` once.

        Args:
            dataset: the samples (a dataset, a subset, or a support / query table).
            cache_dir: when given, reuse or write the decoded store there (see the module
                docstring for the cache key).
            problems: when a list, decoding problems (missing or corrupt media, NaN values)
                are appended to it and those cells are treated as missing; otherwise the
                first one is raised.
            modalities: decode only these (default: all of the preprocessor's); not cached.

        Returns:
            a `TensorStore` with ``N = len(dataset)`` samples; labels of unlabelled samples
            are ``""``.

        Raises:
            DatasetError: a cell cannot be decoded (when ``problems`` is None).
        """
        if not self.fitted_:
            raise MetamodalError("the preprocessor is not fitted; call fit(dataset, classes)")
        path = None
        if modalities is not None:
            cache_dir = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"store-{self.cache_key(dataset)}.safetensors"
            if path.is_file():
                cached = _load_store(path)
                if cached is not None:
                    return cached
        before = 0 if problems is None else len(problems)
        store = TensorStore(
            ids=list(dataset.ids),
            labels=[label if label is not None else "" for label in dataset.labels],
            modalities={
                name: loader.decode(dataset.cells(name, self.specs[name].columns),
                                    dataset.context(name, problems))
                for name, loader in self.loaders.items()
                if modalities is None or name in modalities
            },
            kinds=self.kinds(),
        )
        if path is not None and (problems is None or len(problems) == before):
            _save_store(store, path)
        return store

    def cache_key(self, dataset: MultimodalDataset) -> str:
        """The hex cache key of decoding ``dataset`` with this preprocessor (module docstring)."""
        digest = hashlib.sha256()

        def feed(value: Any) -> None:
            digest.update(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
            digest.update(b"\n")

        feed({"version": __version__, "state": self.state_dict()})
        feed(dataset.ids)
        feed(dataset.labels)
        for name, spec in self.specs.items():
            cells = dataset.cells(name, spec.columns)
            feed(cells)
            if modality_kind(spec.kind).media:
                feed([_fingerprint(dataset.root, cell) for cell in cells])
        return digest.hexdigest()[:32]

    def state_dict(self) -> dict[str, Any]:
        """Modalities, their specs and their loaders' state, JSON-serialisable."""
        return {
            "format": _STATE_FORMAT,
            "modalities": self.modalities,
            "specs": {name: spec.to_dict() for name, spec in self.specs.items()},
            "loaders": {name: loader.state_dict() for name, loader in self.loaders.items()},
            "fitted": self.fitted_,
        }

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        loader_classes: Mapping[str, type[ModalityLoader]] | None = None,
    ) -> Preprocessor:
        """Rebuild a preprocessor (fitted if it was) from `state_dict`'s output.

        Args:
            state: what `state_dict` returned.
            loader_classes: classes of loaders that are not a kind's own, by the ``loader``
                key of their state (a ``prebuilt`` loader, e.g. ``{"pretrained":
                PretrainedLoader}``; ``metamodal.encoders.features.preprocessor_from_state``
                passes it).

        Raises:
            RunError: the state is incomplete or of another format, or names a loader that
                ``loader_classes`` lacks.
        """
        name = None
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"the state is a {type(state).__name__}, not an object")
            if state["format"] != _STATE_FORMAT:
                raise RunError(
                    f"preprocessor state format {state['format']!r} is not {_STATE_FORMAT}",
                    fix="retrain with this version of metamodal",
                )
            specs = {
                name: ModalitySpec.from_dict(name, state["specs"][name])
                for name in state["modalities"]
            }
            preprocessor = cls.__new__(cls)
            preprocessor.specs = specs
            preprocessor.loaders = {}
            for name, spec in specs.items():
                loader_state = state["loaders"][name]
                custom = loader_state.get("loader") if isinstance(loader_state, Mapping) else None
                if custom is not None and custom not in (loader_classes or {}):
                    raise RunError(
                        f"modality {name!r} is decoded by the {custom!r} loader",
                        fix="rebuild the preprocessor with metamodal.encoders.features."
                        "preprocessor_from_state (load_run does)",
                    )
                loader_class: Any = (loader_classes or {})[custom] if custom else (
                    loader_class_of(spec.kind))
                preprocessor.loaders[name] = loader_class.from_state(loader_state)
            preprocessor.fitted_ = bool(state["fitted"])
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise RunError(
                f"the preprocessor state is incomplete or invalid ({type(exc).__name__}: "
                f"{str(exc)[:300]})",
                column=f"loaders.{name}" if name else None,
                fix="rebuild it with Preprocessor.state_dict() (re-train the run)",
            ) from None
        except (ConfigError, DatasetError) as exc:
            raise RunError(
                f"the preprocessor state holds invalid options: {exc.message}",
                column=f"loaders.{name}" if name else exc.column,
                fix="rebuild it with Preprocessor.state_dict() (re-train the run)",
            ) from None
        return preprocessor


def _fit_key(loader: ModalityLoader, spec: ModalitySpec, root: Path,
             cells: Sequence[Cell]) -> str:
    """The key of fitting ``loader`` (not yet fitted) on ``cells`` of a dataset at ``root``:
    its class and options, the modality's spec, the root, the cells and, for media, each
    file's size and modification time (as the decoded store's key, module docstring)."""
    digest = hashlib.sha256()
    for value in ({"version": __version__,
                   "loader": f"{type(loader).__module__}.{type(loader).__qualname__}",
                   "options": loader.state_dict(), "spec": spec.to_dict(),
                   "root": str(root.resolve())},
                  cells,
                  [_fingerprint(root, cell) for cell in cells]
                  if modality_kind(spec.kind).media else None):
        digest.update(json.dumps(value, sort_keys=True, separators=(",", ":"),
                                 default=repr).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _fingerprint(root: Path, cell: Cell) -> list[int] | None:
    """``[size, mtime_ns]`` of the media file of ``cell``, ``None`` when missing."""
    if not isinstance(cell, str):
        return None
    try:
        stat = (root / cell).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _save_store(store: TensorStore, path: Path) -> None:
    """Write ``store`` to ``path`` atomically; a failed write only warns (a cache is optional)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, batch in store.modalities.items():
        tensors[f"{name}/values"] = batch.values.contiguous()
        tensors[f"{name}/present"] = batch.present.contiguous()
        if batch.lengths is not None:
            tensors[f"{name}/lengths"] = batch.lengths.contiguous()
    metadata = {
        "format": str(_STATE_FORMAT),
        "ids": json.dumps(store.ids),
        "labels": json.dumps(store.labels),
        "kinds": json.dumps(store.kinds),
        "modalities": json.dumps(list(store.modalities)),
    }
    try:
        atomic_write(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))
    except (OSError, OutputError, SafetensorError) as exc:  # a read-only dataset, a full disk
        warnings.warn(f"cannot write the store cache {path}: {exc}; the data is decoded "
                      "again next time", stacklevel=3)


def _load_store(path: Path) -> TensorStore | None:
    """The store saved at ``path``, or ``None`` (with a warning) when it is unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != str(_STATE_FORMAT):
                raise ValueError(f"format {meta.get('format')!r}")
            keys = set(handle.keys())
            modalities = {}
            for name in json.loads(meta["modalities"]):
                lengths = f"{name}/lengths"
                modalities[name] = ModalityBatch(
                    handle.get_tensor(f"{name}/values"),
                    handle.get_tensor(f"{name}/present"),
                    handle.get_tensor(lengths) if lengths in keys else None,
                )
            return TensorStore(
                ids=json.loads(meta["ids"]),
                labels=json.loads(meta["labels"]),
                modalities=modalities,
                kinds=json.loads(meta["kinds"]),
            )
    except Exception as exc:  # a truncated or foreign file: decode again
        warnings.warn(f"ignoring unreadable store cache {path}: {exc}", stacklevel=3)
        return None

"""Frozen pretrained features as a preprocessing step: a modality loader over the feature cache.

A modality whose encoder is pretrained (``--encoder caption=minilm``) is decoded, like every
other modality, once, when the data is prepared: `PretrainedLoader` reads each cell's raw
input, looks its content hash up in the `FeatureCache`, runs the frozen network only on the
inputs that miss (in batches, with a progress bar), stores what it computed, and returns float
``[B, F]`` features. The model-side encoder registered under the same name
(`metamodal.encoders.adapter`) is the trainable adapter over those features. Training,
evaluation, ``predict`` and `FewShotClassifier` all decode through the preprocessor, so all of
them read the cache.

`pretrained_loaders` builds the loaders a `TrainConfig.encoders` mapping asks for;
`preprocessor_from_state` rebuilds a saved preprocessor that holds some.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._media import (
    DecodeFailure,
    file_not_found,
    read_media,
    report_failure,
)
from metamodal.data.loaders._numeric import MIN_STD, StandardisingState, check_normalize
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader
from metamodal.data.preprocess import Preprocessor
from metamodal.data.schema import ModalitySpec
from metamodal.encoders.cache import FeatureCache, content_key
from metamodal.encoders.pretrained import PretrainedEncoder, pretrained_encoders
from metamodal.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

LOADER = "pretrained"
"""The ``loader`` value a `PretrainedLoader`'s state carries (see `Preprocessor.from_state`)."""

Augment = Callable[[Any], Any]
"""An augmentation of one decoded input (a text, pixels, a wave): returns it unchanged (the
same object) or a changed copy."""


class PretrainedLoader(StandardisingState, ModalityLoader):
    """Decodes a modality into the features of a frozen pretrained encoder, through the cache.

    Args:
        encoder: name in `pretrained_encoders` (``minilm``, ``efficientnet-lite0``,
            ``resemblyzer``).
        kind: the modality's kind; must be the encoder's.
        normalize: standardise each feature with its meta-train mean / std (default True).
        **options: the encoder's preprocessing options (e.g. ``size = 112``), part of the
            cache key.

    Fitted state: ``mean_`` / ``std_`` per feature (or None without ``normalize``). The cached
    features are the raw ones; standardisation is applied after reading them.

    Attributes:
        cache: the `FeatureCache` used (default: ``FeatureCache()`` at first use); None
            computes every feature on the fly. Not part of the state.
        progress: show a progress bar while computing features (default True).
        computed: inputs this loader has run through the network (cache misses), counted.

    Raises:
        MissingExtraError: the encoder's packages are not installed.
        ConfigError: the encoder does not fit ``kind``, or an option is invalid.

    Example:
        >>> loader = PretrainedLoader("minilm", kind="text")  # doctest: +SKIP
        >>> ctx = DecodeContext(Path("."), "samples.csv", [1, 2], "caption")  # doctest: +SKIP
        >>> loader.decode(["a red bird", None], ctx).values.shape  # doctest: +SKIP
        torch.Size([2, 384])
    """

    kind: ClassVar[str] = LOADER

    def __init__(self, encoder: str, *, kind: str, normalize: bool = True,
                 **options: Any) -> None:
        factory: Any = pretrained_encoders.get(encoder)
        if factory.kind != kind:
            raise ConfigError(
                f"the pretrained encoder {encoder!r} encodes {factory.kind} modalities, "
                f"not {kind}",
                fix=f"use one of: {', '.join(pretrained_for(kind)) or 'none for ' + kind}",
            )
        factory.check_installed()
        try:
            self.encoder: PretrainedEncoder = factory(**options)
        except TypeError as exc:
            raise ConfigError(f"pretrained encoder {encoder!r} rejects its options ({exc})",
                              fix=f"use the options {factory.__name__} documents") from None
        self.encoder_name = encoder
        self.modality_kind = kind
        self.normalize = check_normalize(f"pretrained {encoder}", normalize)
        self.version = factory.version()
        self.cache: FeatureCache | None = _DEFAULT
        self.progress = True
        self.computed = 0
        self._clear_statistics()

    # -- the ModalityLoader interface -------------------------------------------------------

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn per-feature mean / std from the meta-train inputs' raw features."""
        if self.normalize:
            raw, present = self.features(cells, context)
            rows = raw[present].to(torch.float64)
            size = self.encoder.features
            if rows.shape[0] == 0:
                self.mean_, self.std_ = [0.0] * size, [1.0] * size
            else:
                std = rows.std(dim=0, unbiased=False)
                std = torch.where(std < MIN_STD, torch.ones_like(std), std)
                self.mean_, self.std_ = rows.mean(dim=0).tolist(), std.tolist()
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext,
               augment: Augment | None = None) -> ModalityBatch:
        """Features float ``[B, F]`` (standardised when fitted with ``normalize``), ``present``.

        Args:
            cells: texts (text) or relative file paths (image, audio), or None.
            context: where the cells come from; a missing or undecodable file is reported
                through it (raised, or collected and treated as missing).
            augment: applied to each decoded input; an input it changes is encoded on the fly
                and bypasses the cache (neither read nor written), the others use it.
        """
        values, present = self.features(cells, context, augment=augment)
        if self.normalize and self.mean_ is not None and self.std_ is not None:
            mean = torch.tensor(self.mean_, dtype=torch.float32)
            std = torch.tensor(self.std_, dtype=torch.float32)
            values = (values - mean) / std * present.unsqueeze(1)
        return ModalityBatch(values, present, None)

    def input_info(self) -> dict[str, Any]:
        """``{"features": F, "pretrained": encoder name}``."""
        return {"features": self.encoder.features, "pretrained": self.encoder_name}

    def state_dict(self) -> dict[str, Any]:
        """Encoder, options, weights version and statistics as JSON-able data."""
        return {"kind": self.modality_kind, "loader": LOADER, "encoder": self.encoder_name,
                "version": self.version,
                "options": {"normalize": self.normalize, **self.encoder.options()},
                **self._statistics_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PretrainedLoader:
        """Rebuild the loader `state_dict` describes; warns when the installed weights version
        differs from the recorded one."""
        loader = cls(state["encoder"], kind=state["kind"], **state["options"])
        if loader.version != state.get("version"):
            log.warning("pretrained encoder %s: installed %s, the run used %s",
                        loader.encoder_name, loader.version, state.get("version"))
        loader._restore_statistics(state)
        return loader

    # -- features through the cache ---------------------------------------------------------

    @property
    def namespace(self) -> str:
        """The cache namespace: encoder name, weights version and preprocessing options."""
        return FeatureCache.namespace(self.encoder_name, self.version, self.encoder.options())

    def features(
        self, cells: Sequence[Cell], context: DecodeContext, augment: Augment | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unstandardised) features float ``[B, F]`` and ``present`` bool ``[B]``.

        Each present cell's bytes are hashed; the hashes found in the cache are read, the
        others decoded and encoded in batches (with a progress bar) and written back. A cached
        shard whose features are not of the encoder's size, or not finite, is damaged: deleted
        and computed again.
        """
        raw = self._read_raw(cells, context)
        out = torch.zeros(len(cells), self.encoder.features)
        present = torch.zeros(len(cells), dtype=torch.bool)
        keys = {i: content_key(data) for i, (data, _) in raw.items()}
        cache = self._cache()
        found = (cache.get(self.namespace, sorted(set(keys.values())),
                           width=self.encoder.features) if cache else {})
        todo: list[int] = []
        for i, key in keys.items():
            if key in found and augment is None:
                out[i] = found[key]
                present[i] = True
            else:
                todo.append(i)
        if not todo:
            return out, present
        fresh: dict[str, torch.Tensor] = {}
        pending: list[tuple[int, Any, bool]] = []  # (row, input, cacheable)
        same: dict[int, int] = {}  # row -> earlier row with the same content (encoded once)
        queued: dict[str, int] = {}
        for i in todo:
            data, cell = raw[i]
            if augment is None and keys[i] in queued:
                same[i] = queued[keys[i]]
                continue
            try:
                decoded = self.encoder.load(data)
            except Exception as exc:
                _report(DecodeFailure(f"cannot decode {self.modality_kind}: {exc}",
                                      "replace the file, or leave the cell empty"),
                        cell, i, context, text=self.modality_kind == "text")
                continue
            changed = decoded
            if augment is not None:
                changed = augment(decoded)
                if changed is decoded and keys[i] in found:
                    out[i] = found[keys[i]]
                    present[i] = True
                    continue
            queued[keys[i]] = i
            pending.append((i, changed, changed is decoded))
        batch = self.encoder.batch_size
        bar = tqdm(total=len(pending), unit=self.modality_kind, leave=False,
                   desc=f"{self.encoder_name} features",
                   disable=not self.progress or len(pending) < batch)
        with bar:
            for start in range(0, len(pending), batch):
                part = pending[start:start + batch]
                encoded = self.encoder.encode([item for _, item, _ in part])
                self.computed += len(part)
                for (i, _, cacheable), row in zip(part, encoded, strict=True):
                    out[i] = row
                    present[i] = True
                    if cacheable:
                        fresh[keys[i]] = row
                bar.update(len(part))
        for i, j in same.items():
            if present[j]:
                out[i] = out[j]
                present[i] = True
        if cache is not None and fresh:
            cache.put(self.namespace, fresh, encoder=self.encoder_name, version=self.version,
                      options=self.encoder.options())
        return out, present

    def _cache(self) -> FeatureCache | None:
        if self.cache is _DEFAULT:
            self.cache = FeatureCache()
        return self.cache

    def _read_raw(self, cells: Sequence[Cell], context: DecodeContext
                  ) -> dict[int, tuple[bytes, Cell]]:
        """Row -> (raw bytes, cell) of every present, readable cell."""
        if self.modality_kind == "text":
            out = {}
            for i, cell in enumerate(cells):
                if cell is None:
                    continue
                if not isinstance(cell, str):
                    context.report(DatasetError(
                        f"text cell holds a {type(cell).__name__}, not a string",
                        file=context.table_file, row=context.rows[i], column=context.column,
                        fix="store the text itself in the cell"))
                    continue
                out[i] = (cell.encode("utf-8"), cell)
            return out
        noun = self.modality_kind
        return {i: (data, cell) for i, cell, data in
                read_media(cells, context, lambda path, root: _read_bytes(path, root, noun))}


_DEFAULT: Any = object()


def _read_bytes(path: Path, root: Path | str, noun: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise file_not_found(noun, root) from exc
    except IsADirectoryError as exc:
        raise DecodeFailure(f"{noun} path is a directory, not a file",
                            f"point the cell at an {noun} file") from exc
    except OSError as exc:
        raise DecodeFailure(f"cannot read {noun} file: {exc}",
                            "check the file's permissions") from exc


def _report(failure: DecodeFailure, cell: Cell, index: int, context: DecodeContext,
            text: bool) -> None:
    """Report an input that cannot be decoded: naming the media file, or the table for text."""
    if text:
        context.report(DatasetError(failure.message, file=context.table_file,
                                    row=context.rows[index], column=context.column,
                                    fix=failure.fix))
    else:
        report_failure(failure, cell, index, context)


def pretrained_for(kind: str) -> list[str]:
    """Sorted names of the pretrained encoders of modality ``kind``.

    Example:
        >>> pretrained_for("image")
        ['efficientnet-lite0']
    """
    return sorted(name for name in pretrained_encoders.names()
                  if getattr(pretrained_encoders.get(name), "kind", None) == kind)


def pretrained_loaders(
    specs: Mapping[str, ModalitySpec],
    encoders: Mapping[str, str] | None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, PretrainedLoader]:
    """A `PretrainedLoader` for each modality whose encoder (in ``encoders``) is pretrained.

    Args:
        specs: the dataset's modalities.
        encoders: modality name -> encoder name (``TrainConfig.encoders``); names that are not
            pretrained encoders are skipped.
        overrides: modality name -> options (``TrainConfig.preprocess``): for a pretrained
            modality, the encoder's options (``size``, ``crop``, ``max_length``, ...) and
            ``normalize``.

    Raises:
        MissingExtraError: a pretrained encoder is asked for without its packages installed.
        ConfigError: an encoder does not fit its modality, or an option is invalid.

    Example:
        >>> spec = ModalitySpec("m", "tabular", columns=["a"])
        >>> pretrained_loaders({"m": spec}, {"m": "mlp"})
        {}
    """
    out = {}
    for name, encoder in (encoders or {}).items():
        if encoder not in pretrained_encoders or name not in specs:
            continue
        options = dict((overrides or {}).get(name, {}))
        try:
            out[name] = PretrainedLoader(encoder, kind=specs[name].kind, **options)
        except ConfigError as exc:
            if exc.column is not None:
                raise
            raise type(exc)(f"modality {name!r}: {exc.message}", column=f"encoders.{name}",
                            fix=exc.fix) from None
    return out


def preprocessor_from_state(state: Mapping[str, Any]) -> Preprocessor:
    """`Preprocessor.from_state` that also rebuilds pretrained-feature loaders.

    Example:
        >>> from metamodal.data.preprocess import Preprocessor
        >>> spec = ModalitySpec("m", "tabular", columns=["a"])
        >>> state = Preprocessor({"m": spec}).state_dict()
        >>> preprocessor_from_state(state).modalities
        ['m']
    """
    return Preprocessor.from_state(state, loader_classes={LOADER: PretrainedLoader})


__all__ = [
    "LOADER",
    "PretrainedLoader",
    "preprocessor_from_state",
    "pretrained_for",
    "pretrained_loaders",
]

"""Training-time augmentation: random transforms of training episodes, per modality.

Configured by the ``augment`` table of a training config (``TrainConfig.augment``)::

    [augment]
    rotate_classes = true        # each 90/180/270-degree rotation of a class is a new class
    modality_dropout = 0.2       # hide each present modality of a sample with this probability

    [augment.image]              # an image modality: random affine map and flips
    rotate = 10                  # degrees, uniform in [-10, 10]
    shift = 0.1                  # fraction of the image size, per axis
    scale = 0.1                  # zoom factor uniform in [0.9, 1.1]
    shear = 5                    # degrees
    flip = "none"                # or "horizontal", "vertical", "both" (each with p = 0.5)

    [augment.strokes]            # a sequence modality
    coords = [0, 1]              # the x, y columns of a trajectory
    follow = "image"             # move them with the image's geometric transform...
    frame = [0, 0, 105, -105]    # ...where (x, y) = (left, top) and (right, bottom) of the image
    discrete = [3]               # columns copied by nearest step (flags), not interpolated
    pen = 3                      # the column > 0 on each stroke's first step; with it:
    reverse_strokes = 0.5        # draw each stroke backwards with this probability
    shuffle_strokes = 0.5        # put a drawing's strokes in a random order (probability)
    time_warp = 0.2              # random monotone re-timing of up to 20% of the length
    jitter = 0.01                # Gaussian noise (std, fraction of the frame) on coords

    [augment.sound]              # an audio modality (log-mel spectrogram)
    time_shift = 0.1             # circular shift of up to 10% of the frames
    gain_db = 6                  # level change of up to +-6 dB
    freq_mask = 8                # SpecAugment: one band of up to 8 mel bands set to the mean
    time_mask = 10               # ...and one span of up to 10 frames

    [augment.caption]            # a text modality
    token_dropout = 0.1          # drop each token with this probability (one always stays)

    [augment.fields]             # a tabular modality
    noise = 0.05                 # Gaussian noise on standardised values

A sequence modality without ``follow`` takes its own ``rotate`` / ``shift`` / ``scale`` /
``shear`` (in the units of ``frame`` when given, else about the origin of the stored values).

Augmentation touches training episodes (and supervised pre-training batches) only, never
validation or evaluation. Each training step's transforms are drawn from a generator seeded by
``(seed, episode number)``: a run is reproducible under its seed and a resumed run draws the
same transforms as an uninterrupted one, with no state to checkpoint.

Class rotations (Santoro et al. 2016, Vinyals et al. 2016) expand the meta-train classes once:
`Augmentation.expand_classes` adds, per class ``c``, the classes ``c@rot90``, ``c@rot180`` and
``c@rot270`` whose samples are the rotated images (square images only) and rotated
trajectories of ``c``'s samples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metamodal.data.batch import Batch, Episode, ModalityBatch, TensorStore, cat_batches
from metamodal.data.geometry import FLIPS
from metamodal.data.kinds import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    augment_error,
    kinds,
    modality_kind,
)
from metamodal.errors import ConfigError

__all__ = ["Augmentation", "ModalityAugment", "augmentation_for", "augment_options",
           "step_generator"]

GLOBAL_OPTIONS = ("rotate_classes", "modality_dropout")
ROTATIONS = (90, 180, 270)
_BUILT_IN_ORDER = ("image", "sequence", "audio", "text", "tabular")


def augment_options() -> dict[str, dict[str, tuple[float, float]]]:
    """Numeric augmentation options of each registered modality kind and their allowed
    ranges (inclusive), from the kinds' ``augment_options``.

    Example:
        >>> augment_options()["text"]
        {'token_dropout': (0, 0.9)}
    """
    return {name: dict(kinds.get(name).augment_options) for name in _kind_order()}


def _kind_order() -> list[str]:
    """Registered kinds: the built-in ones in their documented order, then the others."""
    names = kinds.names()
    return [n for n in _BUILT_IN_ORDER if n in names] + [
        n for n in names if n not in _BUILT_IN_ORDER]


def _error(message: str, key: str, fix: str) -> ConfigError:
    return augment_error(message, key, fix)


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _error(f"augment.{key} must be a number, got {value!r}", key,
                     f"give a number in [{low:g}, {high:g}]")
    if not low <= value <= high:
        raise _error(f"augment.{key} = {value!r} is out of range", key,
                     f"give a number in [{low:g}, {high:g}]")
    return float(value)


def _columns(value: Any, key: str, width: int | None) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise _error(f"augment.{key} must be a list of column numbers, got {value!r}", key,
                     "e.g. coords = [0, 1]")
    if any(v < 0 for v in value) or (width is not None and any(v >= width for v in value)):
        raise _error(f"augment.{key} = {value!r} names a column the sequences lack", key,
                     "use column numbers from 0" if width is None
                     else f"use column numbers 0..{width - 1}")
    return tuple(value)


def _column(value: Any, key: str, width: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _error(f"augment.{key} must be one column number, got {value!r}", key,
                     "e.g. pen = 3")
    return _columns([value], key, width)[0]


class Augmentation:
    """Random transforms of training episodes, built from a config's ``augment`` table.

    Args:
        options: the ``augment`` table: global keys (``rotate_classes``, ``modality_dropout``)
            and one table per modality name (see the module docstring).
        kinds: modality name -> kind of the data trained on.
        widths: sequence modality name -> feature count ``D`` (checks column numbers).
        scales: sequence / audio modality name -> ``(mean [D], std [D])`` of the loader's
            standardisation (stored = (raw - mean) / std), so that a sequence's ``frame`` is
            in file units and an audio ``gain_db`` in decibels.

    Raises:
        ConfigError: an unknown modality or option, an option the modality's kind has no use
            for (a rotation of text), a value out of range; the key is named as
            ``augment.<modality>.<option>``.

    Example:
        >>> aug = Augmentation({"x": {"noise": 0.1}}, {"x": "tabular"})
        >>> batch = {"x": ModalityBatch(torch.zeros(2, 3), torch.ones(2, dtype=torch.bool))}
        >>> out = aug.batch(batch, torch.Generator().manual_seed(0))
        >>> bool(out["x"].values.abs().sum() > 0), aug.active
        (True, True)
    """

    def __init__(
        self,
        options: Mapping[str, Any] | None,
        kinds: Mapping[str, str],
        widths: Mapping[str, int] | None = None,
        scales: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    ) -> None:
        options = dict(options or {})
        self.kinds = dict(kinds)
        self.rotate_classes = options.pop("rotate_classes", False)
        if not isinstance(self.rotate_classes, bool):
            raise _error("augment.rotate_classes must be true or false", "rotate_classes",
                         "set rotate_classes = true or false")
        self.modality_dropout = _number(options.pop("modality_dropout", 0.0),
                                        "modality_dropout", 0, 0.9)
        self.modalities: dict[str, ModalityAugment] = {}
        for name, table in options.items():
            if name not in self.kinds:
                known = ", ".join([*GLOBAL_OPTIONS, *self.kinds])
                raise _error(f"augment.{name}: no such modality or option", name,
                             f"use one of: {known}")
            if not isinstance(table, dict):
                raise _error(f"augment.{name} must be a table of options", name,
                             f"e.g. [augment.{name}] with options of a {self.kinds[name]}")
            self.modalities[name] = self._parse(name, table, (widths or {}).get(name))
        self._check_follow()
        self._scales = {k: (torch.tensor(m, dtype=torch.float32),
                            torch.tensor(s, dtype=torch.float32))
                        for k, (m, s) in (scales or {}).items()}
        if self.rotate_classes:
            self._check_rotatable()

    def _kind(self, name: str) -> ModalityKind:
        return modality_kind(self.kinds[name])

    def _context(self, name: str, geometry: dict[str, Any] | None = None) -> AugmentContext:
        return AugmentContext(name, self._scales.get(name), {} if geometry is None else geometry)

    def _parse(self, name: str, table: Mapping[str, Any], width: int | None) -> ModalityAugment:
        kind = self.kinds[name]
        kind_object = modality_kind(kind)
        ranges = kind_object.augment_options
        others = kind_object.augment_choices
        values: dict[str, float] = {}
        extra: dict[str, Any] = {}
        for key, value in table.items():
            full = f"{name}.{key}"
            if key in ranges:
                values[key] = _number(value, full, *ranges[key])
            elif key in others:
                extra[key] = value
            else:
                usable = [k for k in _kind_order()
                          if key in kinds.get(k).augment_options
                          or key in kinds.get(k).augment_choices]
                why = (f"a {kind} modality has no {key!r} augmentation"
                       + (f" (it applies to {', '.join(usable)} modalities)" if usable else ""))
                raise _error(f"augment.{full}: {why}", full,
                             f"use one of: {', '.join([*ranges, *others])}")
        flip = extra.get("flip", "none")
        if flip not in FLIPS:
            raise _error(f"augment.{name}.flip = {flip!r} is unknown", f"{name}.flip",
                         f"use one of: {', '.join(FLIPS)}")
        coords = _columns(extra["coords"], f"{name}.coords", width) if "coords" in extra else ()
        if coords and len(coords) != 2:
            raise _error(f"augment.{name}.coords must name two columns (x, y)", f"{name}.coords",
                         "e.g. coords = [0, 1]")
        discrete = (_columns(extra["discrete"], f"{name}.discrete", width)
                    if "discrete" in extra else ())
        frame = extra.get("frame")
        if frame is not None:
            if (not isinstance(frame, list) or len(frame) != 4
                    or not all(isinstance(v, int | float) and not isinstance(v, bool)
                               and math.isfinite(v) for v in frame)
                    or frame[0] == frame[2] or frame[1] == frame[3]):
                raise _error(f"augment.{name}.frame must be [left, top, right, bottom] with "
                             f"left != right and top != bottom, got {frame!r}", f"{name}.frame",
                             "e.g. frame = [0, 0, 105, -105] for Omniglot strokes")
            frame = tuple(float(v) for v in frame)
        follow = extra.get("follow")
        pen = _column(extra["pen"], f"{name}.pen", width) if "pen" in extra else None
        spec = ModalityAugment(kind, values, flip, coords, follow, frame, discrete, pen)
        kind_object.check_augment(name, spec)
        return spec

    def _check_follow(self) -> None:
        for name, spec in self.modalities.items():
            if spec.follow is None:
                continue
            target = self.modalities.get(spec.follow)
            if spec.follow not in self.kinds or not modality_kind(
                    self.kinds[spec.follow]).followable:
                raise _error(f"augment.{name}.follow = {spec.follow!r} is not an image modality",
                             f"{name}.follow", "name the image modality the trajectory draws")
            if spec.frame is None:
                raise _error(f"augment.{name}.follow needs the image's frame", f"{name}.frame",
                             "give frame = [left, top, right, bottom] in the sequence's units")
            if spec.geometric:
                raise _error(f"augment.{name} follows {spec.follow!r}: it cannot also have its "
                             "own rotate / shift / scale / shear", f"{name}.follow",
                             "remove them, or remove follow")
            if target is None or not target.geometric:
                raise _error(f"augment.{name}.follow: {spec.follow!r} has no geometric "
                             "augmentation to follow", f"{name}.follow",
                             f"add rotate / shift / scale / shear / flip to augment.{spec.follow}")

    def _check_rotatable(self) -> None:
        for name in self.kinds:
            self._kind(name).check_rotatable(name, self.modalities.get(name))

    @property
    def active(self) -> bool:
        """Whether any transform of episodes is configured (class rotations aside)."""
        return bool(self.modality_dropout) or any(
            spec.values and any(spec.values.values()) or spec.flip != "none"
            for spec in self.modalities.values()
        )

    # -- class rotations -------------------------------------------------------------------

    def expand_classes(self, store: TensorStore, classes: Sequence[str]
                       ) -> tuple[TensorStore, list[str]]:
        """``store`` plus rotated copies of the samples of ``classes`` as new classes.

        Returns ``(store, classes)`` unchanged without ``rotate_classes``; else a store whose
        extra rows are the samples of each class rotated by 90, 180 and 270 degrees, labelled
        ``<class>@rot<angle>``, and the class list with those classes added.
        """
        if not self.rotate_classes:
            return store, list(classes)
        wanted = set(classes)
        rows = torch.tensor([i for i, label in enumerate(store.labels) if label in wanted],
                            dtype=torch.long)
        base = store.batch(rows)
        for name, mb in base.items():
            kind = store.kinds.get(name)
            if kind is not None and kind in kinds:
                modality_kind(kind).check_rotation(name, mb)
        parts: list[Batch] = [store.modalities]
        ids, labels = list(store.ids), list(store.labels)
        picked_ids = [store.ids[i] for i in rows.tolist()]
        picked_labels = [store.labels[i] for i in rows.tolist()]
        for quarter, angle in enumerate(ROTATIONS, start=1):
            parts.append({name: self._kind(name).rotate_quarter(
                mb, quarter, self.modalities.get(name), self._context(name))
                for name, mb in base.items()})
            ids += [f"{sid}@rot{angle}" for sid in picked_ids]
            labels += [f"{label}@rot{angle}" for label in picked_labels]
        modalities = {name: ModalityBatch(
            torch.cat([p[name].values for p in parts]),
            torch.cat([p[name].present for p in parts]),
            None if parts[0][name].lengths is None
            else torch.cat([p[name].lengths for p in parts]),
        ) for name in store.modalities}
        expanded = list(classes) + [f"{c}@rot{angle}" for angle in ROTATIONS for c in classes]
        return TensorStore(ids, labels, modalities, dict(store.kinds)), expanded

    # -- episodes --------------------------------------------------------------------------

    def episode(self, episode: Episode, generator: torch.Generator) -> Episode:
        """``episode`` with its support and query batches transformed (labels unchanged)."""
        return Episode(self.batch(episode.support, generator), self.batch(episode.query, generator),
                       episode.support_labels, episode.query_labels, episode.classes,
                       episode.support_ids, episode.query_ids, episode.name)

    def batch(self, batch: Mapping[str, ModalityBatch], generator: torch.Generator) -> Batch:
        """Every configured transform applied to ``batch`` (a new batch; inputs unchanged):
        each modality's kind transforms it (`ModalityKind.augment`), in the order of the
        ``augment`` table, then the modalities that follow another one, then modality
        dropout."""
        out = dict(batch)
        geometry: dict[str, Any] = {}
        for name, spec in self.modalities.items():
            if name not in out or spec.follow is not None:
                continue
            out[name] = self._kind(name).augment(out[name], spec, generator,
                                                 self._context(name, geometry))
        for name, spec in self.modalities.items():  # trajectories move with their image
            if spec.follow is not None and name in out:
                matrix = geometry.get(spec.follow)
                out[name] = self._kind(name).follow(out[name], spec, generator,
                                                    self._context(name, geometry), matrix)
        if self.modality_dropout:
            out = _drop_modalities(out, self.modality_dropout, generator)
        return out

    def sample_copies(self, batch: Mapping[str, ModalityBatch], copies: int,
                      seed: int = 0) -> Iterator[Batch]:
        """``copies`` transformed copies of ``batch`` (test-time augmentation), each sample's
        drawn from a generator of its own, seeded by ``seed`` and the sample's shape (the
        modalities it carries, each one's size): a sample's copies are the same whatever
        batch it comes in, and wherever in it (`batch` draws a whole batch from one
        generator, so a sample's copies there depend on the samples before it). Not by its
        values: a sound decoded beside others can differ from itself decoded alone in the last
        bit, which would draw other copies. Each sample is cut to its own length first (a
        variable-length kind's ``length_axis``); each copy is padded to its longest sample
        again.

        Example:
            >>> aug = Augmentation({"v": {"noise": 0.1}}, {"v": "tabular"})
            >>> def of(values):
            ...     return {"v": ModalityBatch(values, torch.ones(len(values), dtype=torch.bool))}
            >>> a, b = torch.zeros(1, 3), torch.ones(1, 3)
            >>> alone = next(aug.sample_copies(of(a), 1))["v"].values
            >>> after_b = next(aug.sample_copies(of(torch.cat([b, a])), 1))["v"].values[1:]
            >>> torch.equal(after_b, alone)
            True
        """
        size = len(next(iter(batch.values())))
        rows = [self._own_row(batch, i) for i in range(size)]
        generators = [torch.Generator().manual_seed(_shape_seed(row, seed)) for row in rows]
        for _ in range(copies):
            yield cat_batches([self.batch(row, generator)
                               for row, generator in zip(rows, generators, strict=True)])

    def _own_row(self, batch: Mapping[str, ModalityBatch], row: int) -> Batch:
        """Sample ``row`` of ``batch`` alone, each variable-length modality cut to its length
        (at least 1: an absent modality's values are never used)."""
        index = torch.tensor([row])
        out = {}
        for name, mb in batch.items():
            one = mb.index(index)
            axis = modality_kind(self.kinds[name]).length_axis if name in self.kinds else None
            if one.lengths is not None and axis is not None:
                length = min(max(int(one.lengths[0]), 1), one.values.shape[axis])
                one = ModalityBatch(one.values.narrow(axis, 0, length), one.present,
                                    one.lengths)
            out[name] = one
        return out


def _shape_seed(row: Mapping[str, ModalityBatch], seed: int) -> int:
    """A 63-bit seed from ``seed`` and the shape of a one-sample batch: the modalities it
    carries and the size of each."""
    shape = [(name, tuple(row[name].values.shape)) for name in sorted(row)
             if bool(row[name].present[0])]
    digest = hashlib.blake2b(repr((seed, shape)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _drop_modalities(batch: Batch, rate: float, generator: torch.Generator) -> Batch:
    """Hide each present modality of each sample with probability ``rate``; a sample keeps
    at least one of the modalities it has."""
    names = list(batch)
    present = torch.stack([batch[n].present for n in names], 1)  # [B, M]
    drop = torch.rand(present.shape, generator=generator) < rate
    kept = present & ~drop
    lost = present.any(1) & ~kept.any(1)
    if lost.any():  # give such a sample back one present modality, at random
        keys = torch.rand(present.shape, generator=generator).masked_fill(~present, -1)
        back = torch.zeros_like(present).scatter_(1, keys.argmax(1, keepdim=True), True)
        kept |= back & lost.unsqueeze(1)
    return {n: batch[n].with_present(kept[:, i]) for i, n in enumerate(names)}


def augmentation_for(options: Mapping[str, Any] | None, preprocessor: Any) -> Augmentation:
    """The `Augmentation` of ``options`` for data decoded by a fitted ``preprocessor``
    (`metamodal.data.preprocess.Preprocessor`): kinds come from it, and each kind reads what
    it needs from its loader (`ModalityKind.augment_info`: a sequence's width, the
    standardisation of a sequence or audio modality)."""
    kinds_by_name = preprocessor.kinds()
    widths: dict[str, int] = {}
    scales: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for name, kind in kinds_by_name.items():
        info = modality_kind(kind).augment_info(preprocessor.loaders[name])
        if "width" in info:
            widths[name] = info["width"]
        if "scale" in info:
            scales[name] = info["scale"]
    return Augmentation(options, kinds_by_name, widths, scales)


def step_generator(seed: int, index: int) -> torch.Generator:
    """The generator of training episode (or batch) ``index``: a pure function of both.

    Example:
        >>> a = torch.rand(2, generator=step_generator(0, 5))
        >>> bool((a == torch.rand(2, generator=step_generator(0, 5))).all())
        True
    """
    words = np.random.SeedSequence([seed, index, 0x0A06]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)

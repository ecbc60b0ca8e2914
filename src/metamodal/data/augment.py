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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.data.batch import Batch, Episode, ModalityBatch, TensorStore
from metamodal.errors import ConfigError

FLIPS = ("none", "horizontal", "vertical", "both")
GEOMETRY = ("rotate", "shift", "scale", "shear")
OPTIONS: dict[str, dict[str, tuple[float, float]]] = {
    # option -> (lowest, highest) allowed value
    "image": {"rotate": (0, 180), "shift": (0, 1), "scale": (0, 0.9), "shear": (0, 60)},
    "sequence": {"rotate": (0, 180), "shift": (0, 1), "scale": (0, 0.9), "shear": (0, 60),
                 "time_warp": (0, 0.9), "jitter": (0, 1)},
    "audio": {"time_shift": (0, 1), "gain_db": (0, 40), "freq_mask": (0, 1000),
              "time_mask": (0, 100_000)},
    "text": {"token_dropout": (0, 0.9)},
    "tabular": {"noise": (0, 10)},
}
"""Numeric options of each modality kind and their allowed ranges (inclusive)."""
OTHER_OPTIONS = {"image": ("flip",), "sequence": ("coords", "follow", "frame", "discrete")}
GLOBAL_OPTIONS = ("rotate_classes", "modality_dropout")
ROTATIONS = (90, 180, 270)


def _error(message: str, key: str, fix: str) -> ConfigError:
    return ConfigError(message, column=f"augment.{key}", fix=fix)


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
    if width is not None and any(not 0 <= v < width for v in value):
        raise _error(f"augment.{key} = {value!r} names a column the sequences lack", key,
                     f"use column numbers 0..{width - 1}")
    return tuple(value)


@dataclass(frozen=True)
class ModalityAugment:
    """The validated augmentation options of one modality (see the module docstring)."""

    kind: str
    values: Mapping[str, float]
    flip: str = "none"
    coords: tuple[int, ...] = ()
    follow: str | None = None
    frame: tuple[float, float, float, float] | None = None
    discrete: tuple[int, ...] = ()

    def get(self, name: str) -> float:
        """The value of numeric option ``name`` (0 = off)."""
        return self.values.get(name, 0.0)

    @property
    def geometric(self) -> bool:
        """Whether the modality has its own random affine map or flips."""
        return any(self.get(k) for k in GEOMETRY) or self.flip != "none"


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

    def _parse(self, name: str, table: Mapping[str, Any], width: int | None) -> ModalityAugment:
        kind = self.kinds[name]
        ranges = OPTIONS[kind]
        others = OTHER_OPTIONS.get(kind, ())
        values: dict[str, float] = {}
        extra: dict[str, Any] = {}
        for key, value in table.items():
            full = f"{name}.{key}"
            if key in ranges:
                values[key] = _number(value, full, *ranges[key])
            elif key in others:
                extra[key] = value
            else:
                usable = [k for k in OPTIONS
                          if key in OPTIONS[k] or key in OTHER_OPTIONS.get(k, ())]
                why = (f"a {kind} modality has no {key!r} augmentation"
                       + (f" (it applies to {', '.join(usable)} modalities)" if usable else ""))
                raise _error(f"augment.{full}: {why}", full,
                             f"use one of: {', '.join([*ranges, *others])}")
        for key in ("time_mask", "freq_mask"):
            if key in values and values[key] != int(values[key]):
                raise _error(f"augment.{name}.{key} must be a whole number", f"{name}.{key}",
                             "give a count of bands / frames")
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
        spec = ModalityAugment(kind, values, flip, coords, follow, frame, discrete)
        if kind == "sequence" and not coords and (
            spec.geometric or follow is not None or frame is not None or spec.get("jitter")
        ):
            raise _error(f"augment.{name}: a geometric transform or jitter of a sequence needs "
                         "its coordinate columns", f"{name}.coords",
                         "name them, e.g. coords = [0, 1]")
        return spec

    def _check_follow(self) -> None:
        for name, spec in self.modalities.items():
            if spec.follow is None:
                continue
            target = self.modalities.get(spec.follow)
            if self.kinds.get(spec.follow) != "image":
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
        for name, kind in self.kinds.items():
            spec = self.modalities.get(name)
            if kind == "sequence" and (spec is None or not spec.coords):
                raise _error(f"rotate_classes rotates every modality of a sample, and the "
                             f"sequence modality {name!r} has no coordinate columns",
                             f"{name}.coords", f"add [augment.{name}] coords = [x, y] (and frame)")
            if kind not in ("image", "sequence"):
                raise _error(f"rotate_classes cannot rotate the {kind} modality {name!r}",
                             "rotate_classes",
                             "train on image and sequence modalities only, or turn it off")

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
            if store.kinds.get(name) == "image" and mb.values.shape[-1] != mb.values.shape[-2]:
                raise _error(f"rotate_classes needs square images; {name!r} is "
                             f"{mb.values.shape[-2]}x{mb.values.shape[-1]}", "rotate_classes",
                             "resize the images to a square (preprocess size = N)")
        parts: list[Batch] = [store.modalities]
        ids, labels = list(store.ids), list(store.labels)
        picked_ids = [store.ids[i] for i in rows.tolist()]
        picked_labels = [store.labels[i] for i in rows.tolist()]
        for quarter, angle in enumerate(ROTATIONS, start=1):
            parts.append({name: self._rotate_quarter(name, mb, quarter)
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

    def _rotate_quarter(self, name: str, mb: ModalityBatch, quarter: int) -> ModalityBatch:
        """``mb`` rotated counter-clockwise (as seen on screen) by ``quarter`` * 90 degrees."""
        if self.kinds[name] == "image":
            return ModalityBatch(torch.rot90(mb.values, quarter, dims=(-2, -1)), mb.present,
                                 mb.lengths)
        angle = torch.full((len(mb),), quarter * math.pi / 2)
        matrix = _affine(angle, torch.ones(len(mb)), torch.zeros(len(mb)),
                         torch.zeros(len(mb), 2), torch.ones(len(mb), 2))
        return self._move_points(name, mb, matrix)

    # -- episodes --------------------------------------------------------------------------

    def episode(self, episode: Episode, generator: torch.Generator) -> Episode:
        """``episode`` with its support and query batches transformed (labels unchanged)."""
        return Episode(self.batch(episode.support, generator), self.batch(episode.query, generator),
                       episode.support_labels, episode.query_labels, episode.classes,
                       episode.support_ids, episode.query_ids, episode.name)

    def batch(self, batch: Mapping[str, ModalityBatch], generator: torch.Generator) -> Batch:
        """Every configured transform applied to ``batch`` (a new batch; inputs unchanged)."""
        out = dict(batch)
        geometry: dict[str, Tensor] = {}
        for name, spec in self.modalities.items():
            if name not in out or spec.follow is not None:
                continue
            mb = out[name]
            if spec.kind == "image":
                matrix = self._draw_affine(spec, len(mb), generator)
                geometry[name] = matrix
                out[name] = _warp_image(mb, matrix)
            elif spec.kind == "sequence":
                out[name] = self._sequence(name, spec, mb, generator,
                                           self._draw_affine(spec, len(mb), generator)
                                           if spec.geometric else None)
            elif spec.kind == "audio":
                out[name] = _audio(spec, mb, generator, self._scales.get(name))
            elif spec.kind == "text":
                out[name] = _token_dropout(mb, spec.get("token_dropout"), generator)
            else:
                noise = torch.randn(mb.values.shape, generator=generator) * spec.get("noise")
                out[name] = ModalityBatch(mb.values + noise.to(mb.values), mb.present, mb.lengths)
        for name, spec in self.modalities.items():  # trajectories move with their image
            if spec.follow is not None and name in out:
                matrix = geometry.get(spec.follow)
                out[name] = self._sequence(name, spec, out[name], generator, matrix)
        if self.modality_dropout:
            out = _drop_modalities(out, self.modality_dropout, generator)
        return out

    def _draw_affine(self, spec: ModalityAugment, n: int, generator: torch.Generator) -> Tensor:
        """Random forward maps ``[n, 2, 3]`` in normalised coordinates (x right, y down)."""
        def uniform(bound: float) -> Tensor:
            return (torch.rand(n, generator=generator) * 2 - 1) * bound

        angle = uniform(math.radians(spec.get("rotate")))
        scale = 1 + uniform(spec.get("scale"))
        shear = uniform(math.radians(spec.get("shear")))
        shift = torch.stack([uniform(2 * spec.get("shift")), uniform(2 * spec.get("shift"))], 1)
        flips = torch.ones(n, 2)
        coin = torch.rand(n, 2, generator=generator) < 0.5
        if spec.flip in ("horizontal", "both"):
            flips[:, 0] = torch.where(coin[:, 0], -1.0, 1.0)
        if spec.flip in ("vertical", "both"):
            flips[:, 1] = torch.where(coin[:, 1], -1.0, 1.0)
        return _affine(angle, scale, shear, shift, flips)

    def _sequence(self, name: str, spec: ModalityAugment, mb: ModalityBatch,
                  generator: torch.Generator, matrix: Tensor | None) -> ModalityBatch:
        if matrix is not None:
            mb = self._move_points(name, mb, matrix)
        if spec.get("time_warp"):
            mb = _time_warp(mb, spec.get("time_warp"), spec.discrete, generator)
        if spec.get("jitter"):
            x, y = spec.coords
            noise = torch.randn(*mb.values.shape[:2], 2, generator=generator) * spec.get("jitter")
            if spec.frame is not None:  # a fraction of the frame's width / height
                left, top, right, bottom = spec.frame
                noise = noise * torch.tensor([right - left, bottom - top]).abs()
            noise = noise / self._unit(name, spec)[1]
            values = mb.values.clone()
            values[..., [x, y]] += noise.to(values) * _step_mask(mb).unsqueeze(-1)
            mb = ModalityBatch(values, mb.present, mb.lengths)
        return mb

    def _unit(self, name: str, spec: ModalityAugment) -> tuple[Tensor, Tensor]:
        """Stored units of the coords: ``(mean [2], std [2])`` of stored = (raw - mean) / std."""
        mean, std = self._scales.get(name, (None, None))
        if mean is None:
            return torch.zeros(2), torch.ones(2)
        columns = list(spec.coords)
        return mean[columns], std[columns]

    def _move_points(self, name: str, mb: ModalityBatch, matrix: Tensor) -> ModalityBatch:
        """Apply forward maps ``[B, 2, 3]`` (normalised frame coordinates) to the coords."""
        spec = self.modalities[name]
        x, y = spec.coords
        mean, std = self._unit(name, spec)
        points = mb.values[..., [x, y]] * std + mean  # raw units [B, T, 2]
        if spec.frame is not None:
            left, top, right, bottom = spec.frame
            origin = torch.tensor([left, top])
            size = torch.tensor([right - left, bottom - top])
            points = (points - origin) / size * 2 - 1
        moved = points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
        if spec.frame is not None:
            moved = (moved + 1) / 2 * size + origin
        values = mb.values.clone()
        keep = _step_mask(mb).unsqueeze(-1)
        values[..., [x, y]] = torch.where(keep, (moved - mean) / std, values[..., [x, y]])
        return ModalityBatch(values, mb.present, mb.lengths)


def _affine(angle: Tensor, scale: Tensor, shear: Tensor, shift: Tensor, flips: Tensor) -> Tensor:
    """Forward maps ``[n, 2, 3]``: flip, then scale, shear, rotate and shift (normalised
    coordinates, x right and y down, so a positive angle turns counter-clockwise on screen)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    shearing = torch.eye(2).repeat(len(angle), 1, 1)
    shearing[:, 0, 1] = torch.tan(shear)
    linear = rotation @ shearing * scale[:, None, None] * flips[:, None, :]
    return torch.cat([linear, shift.unsqueeze(-1)], -1)


def _warp_image(mb: ModalityBatch, matrix: Tensor) -> ModalityBatch:
    """Images ``[B, C, H, W]`` moved by forward maps ``[B, 2, 3]`` (border pixels fill in)."""
    linear, shift = matrix[:, :, :2], matrix[:, :, 2:]
    inverse = torch.linalg.inv(linear)
    theta = torch.cat([inverse, -inverse @ shift], -1).to(mb.values)
    grid = F.affine_grid(theta, list(mb.values.shape), align_corners=False)
    warped = F.grid_sample(mb.values, grid, mode="bilinear", padding_mode="border",
                           align_corners=False)
    keep = mb.present.view(-1, 1, 1, 1)
    return ModalityBatch(torch.where(keep, warped, mb.values), mb.present, mb.lengths)


def _step_mask(mb: ModalityBatch) -> Tensor:
    """bool ``[B, T]``: the valid steps of each (present) sequence."""
    steps = torch.arange(mb.values.shape[1])
    lengths = mb.lengths if mb.lengths is not None else torch.full((len(mb),), len(steps))
    return (steps < lengths.unsqueeze(1)) & mb.present.unsqueeze(1)


def _time_warp(mb: ModalityBatch, strength: float, discrete: Sequence[int],
               generator: torch.Generator) -> ModalityBatch:
    """Re-time each sequence by a random monotone map ``u + a * u * (1 - u)``, ``|a| <=
    strength``, interpolating steps linearly (``discrete`` columns: the nearest step)."""
    values, lengths = mb.values, mb.lengths
    if lengths is None or values.shape[1] < 2:
        return mb
    b, t, _ = values.shape
    u = torch.linspace(0, 1, t).expand(b, t)
    a = (torch.rand(b, 1, generator=generator) * 2 - 1) * strength
    last = (lengths - 1).clamp_min(0).unsqueeze(1).to(values.dtype)
    position = (u + a * u * (1 - u)) * last  # [B, T] fractional source steps
    low = position.floor().long().clamp(0, t - 1)
    high = (low + 1).clamp(max=(lengths - 1).clamp_min(0).unsqueeze(1))
    weight = (position - low).unsqueeze(-1).to(values.dtype)
    gather = lambda index: values.gather(1, index.unsqueeze(-1).expand_as(values))  # noqa: E731
    warped = gather(low) * (1 - weight) + gather(high) * weight
    if discrete:
        nearest = gather(position.round().long().clamp(0, t - 1))
        warped[..., list(discrete)] = nearest[..., list(discrete)]
    keep = _step_mask(mb).unsqueeze(-1)
    return ModalityBatch(torch.where(keep, warped, values), mb.present, lengths)


def _audio(spec: ModalityAugment, mb: ModalityBatch, generator: torch.Generator,
           scale: tuple[Tensor, Tensor] | None) -> ModalityBatch:
    """Time shift, gain and SpecAugment masks of log-mel spectrograms ``[B, n_mels, frames]``."""
    values = mb.values
    b, bands, frames = values.shape
    lengths = mb.lengths if mb.lengths is not None else torch.full((b,), frames)
    valid = (torch.arange(frames) < lengths.unsqueeze(1)).unsqueeze(1)  # [B, 1, frames]
    if spec.get("time_shift"):
        limit = (lengths.to(torch.float32) * spec.get("time_shift")).floor()
        shift = (torch.rand(b, generator=generator) * (2 * limit + 1)).floor() - limit
        source = (torch.arange(frames) - shift.unsqueeze(1)).remainder(lengths.clamp_min(1)
                                                                     .unsqueeze(1))
        values = values.gather(2, source.long().unsqueeze(1).expand(b, bands, frames))
    if spec.get("gain_db"):
        db = (torch.rand(b, 1, 1, generator=generator) * 2 - 1) * spec.get("gain_db")
        offset = db * math.log(10) / 10  # natural-log power change
        if scale is not None:
            offset = offset / scale[1].view(1, -1, 1)
        values = values + offset.to(values)
    for axis, key, size in ((1, "freq_mask", bands), (2, "time_mask", frames)):
        width = int(spec.get(key))
        if not width:
            continue
        span = (torch.rand(b, generator=generator) * (min(width, size) + 1)).floor()
        start = (torch.rand(b, generator=generator) * (size - span + 1)).floor()
        index = torch.arange(size)
        masked = (index >= start.unsqueeze(1)) & (index < (start + span).unsqueeze(1))
        shape = (b, size, 1) if axis == 1 else (b, 1, size)
        values = values.masked_fill(masked.view(shape), 0.0)
    values = torch.where(valid & mb.present.view(-1, 1, 1), values, mb.values)
    return ModalityBatch(values, mb.present, mb.lengths)


def _token_dropout(mb: ModalityBatch, rate: float, generator: torch.Generator) -> ModalityBatch:
    """Drop each token with probability ``rate``, keeping at least one per text."""
    tokens, lengths = mb.values, mb.lengths
    if lengths is None:
        lengths = (tokens != 0).sum(1)
    valid = torch.arange(tokens.shape[1]) < lengths.unsqueeze(1)
    keep = valid & (torch.rand(tokens.shape, generator=generator) >= rate)
    first = valid & (torch.arange(tokens.shape[1]) == 0)
    keep |= first & (keep.sum(1, keepdim=True) == 0)
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    packed = torch.where(keep, tokens, 0).gather(1, order)
    return ModalityBatch(packed, mb.present, keep.sum(1).to(lengths.dtype))


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
    (`metamodal.data.preprocess.Preprocessor`): kinds, sequence widths and the standardisation
    of each sequence modality come from its loaders."""
    kinds = preprocessor.kinds()
    widths: dict[str, int] = {}
    scales: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for name, kind in kinds.items():
        if kind not in ("sequence", "audio"):
            continue
        loader = preprocessor.loaders[name]
        width = loader.input_info().get("features")
        if kind == "sequence" and isinstance(width, int):
            widths[name] = width
        if getattr(loader, "mean_", None) is not None:
            scales[name] = (loader.mean_, loader.std_)
    return Augmentation(options, kinds, widths, scales)


def step_generator(seed: int, index: int) -> torch.Generator:
    """The generator of training episode (or batch) ``index``: a pure function of both.

    Example:
        >>> a = torch.rand(2, generator=step_generator(0, 5))
        >>> bool((a == torch.rand(2, generator=step_generator(0, 5))).all())
        True
    """
    words = np.random.SeedSequence([seed, index, 0x0A06]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 31 | int(words[1]) >> 1)

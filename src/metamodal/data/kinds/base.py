"""The `ModalityKind` interface and the ``kinds`` registry: everything one modality kind means.

A kind (``image``, ``text``, ``audio``, ``sequence``, ``tabular``, ``video``, ...) is one
registered object that names its loader and its default encoder, says whether its column holds
a media path or the value inline, inspects decoded cells, validates and applies its training
augmentations, and gives importers their hints (file suffixes, media folder). Every part of the
package that behaves differently per kind asks the kind object; adding a kind is one new file
that subclasses `ModalityKind` and registers it with `register_kind`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.errors import ConfigError
from metamodal.registry import Registry


def augment_error(message: str, key: str, fix: str) -> ConfigError:
    """A `ConfigError` about the ``augment.KEY`` option of a training config.

    Example:
        >>> augment_error("bad", "image.rotate", "give a number").column
        'augment.image.rotate'
    """
    return ConfigError(message, column=f"augment.{key}", fix=fix)


@dataclass(frozen=True)
class ModalityAugment:
    """The validated augmentation options of one modality (see `metamodal.data.augment`).

    Args:
        kind: the modality's kind.
        values: numeric option -> value (0 = off).
        flip: ``none``, ``horizontal``, ``vertical`` or ``both`` (image-like kinds).
        coords: the x, y columns of a trajectory (sequence).
        follow: the image modality a trajectory moves with (sequence).
        frame: ``(left, top, right, bottom)`` of the image in the sequence's units.
        discrete: columns copied by nearest step when re-timing (sequence).
        pen: the column flagging the first step of each stroke, > 0 there (sequence).

    Example:
        >>> ModalityAugment("image", {"rotate": 10.0}).geometric
        True
    """

    kind: str
    values: Mapping[str, float]
    flip: str = "none"
    coords: tuple[int, ...] = ()
    follow: str | None = None
    frame: tuple[float, float, float, float] | None = None
    discrete: tuple[int, ...] = ()
    pen: int | None = None

    def get(self, name: str) -> float:
        """The value of numeric option ``name`` (0 = off)."""
        return self.values.get(name, 0.0)

    @property
    def geometric(self) -> bool:
        """Whether the modality has its own random affine map or flips."""
        return any(self.get(k) for k in ("rotate", "shift", "scale", "shear")) or (
            self.flip != "none")


@dataclass
class AugmentContext:
    """What a kind's augmentation may need beside its batch and options.

    Args:
        name: the modality's name (for messages and for ``geometry``).
        scale: ``(mean [D], std [D])`` of the loader's standardisation (stored = (raw - mean)
            / std), from `ModalityKind.augment_info`, or ``None``.
        geometry: modality name -> the forward affine maps ``[B, 2, 3]`` drawn for it in this
            batch, so that another modality can follow them (a trajectory drawn on an image).

    Example:
        >>> AugmentContext("photo").geometry
        {}
    """

    name: str
    scale: tuple[Tensor, Tensor] | None = None
    geometry: dict[str, Tensor] = field(default_factory=dict)


class ModalityKind:
    """One modality kind: its loader, default encoder, cell inspection, augmentations and
    importer hints. Subclass it in one file and decorate the class with `register_kind`.

    Class attributes:
        name: the kind's name, as ``kind = "NAME"`` in ``dataset.toml``.
        loader: the name of its loader in ``metamodal.data.loaders.loaders``.
        default_encoder: the name of the encoder (in ``metamodal.encoders.encoders``) used
            when a config names none (a name: the data stage does not import encoders).
        media: cells are paths of media files relative to the dataset directory (their size
            and modification time enter the decode cache key), not inline values.
        multi_column: the modality reads a list of ``columns`` (tabular), not one ``column``.
        length_unit: what the loader's ``lengths`` count, for inspection (``tokens``, ...).
        length_axis: the axis of ``values`` that ``lengths`` measures (padded to the longest
            in a batch), or None for a kind of fixed size.
        suffixes: importer hint: file suffixes of this kind's media files (lower case).
        media_folder: importer hint: the folder an importer copies this kind's files into.
        import_options: importer hint: the loader options an importer's ``image_size`` /
            ``channels`` set (``size``, ``channels``), empty when they do not apply.
        augment_options: numeric augmentation options and their (lowest, highest) values.
        augment_choices: the other augmentation options it accepts (``flip``, ``coords``).
        followable: a trajectory may follow this modality's geometric augmentation.

    Example:
        >>> kind = modality_kind("image")
        >>> kind.loader, kind.default_encoder, kind.media, kind.suffixes[:2]
        ('image', 'conv4', True, ('.png', '.jpg'))
    """

    name: ClassVar[str]
    loader: ClassVar[str]
    default_encoder: ClassVar[str]
    media: ClassVar[bool] = False
    multi_column: ClassVar[bool] = False
    length_unit: ClassVar[str] = "length"
    length_axis: ClassVar[int | None] = None
    suffixes: ClassVar[tuple[str, ...]] = ()
    media_folder: ClassVar[str | None] = None
    import_options: ClassVar[tuple[str, ...]] = ()
    augment_options: ClassVar[Mapping[str, tuple[float, float]]] = {}
    augment_choices: ClassVar[tuple[str, ...]] = ()
    followable: ClassVar[bool] = False

    def create_loader(self, **options: Any) -> ModalityLoader:
        """This kind's loader built from ``options`` (`ConfigError` on a bad option)."""
        return loaders.create(self.loader, **options)

    # -- inspection ------------------------------------------------------------------------

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        """Kind-specific statistics of decoded cells for ``metamodal inspect`` (e.g. image
        width and height). ``batch.present`` marks the cells that decoded; a problem found
        here goes to ``context.report`` (which collects it during inspection)."""
        return {}

    # -- augmentation ----------------------------------------------------------------------

    def check_augment(self, name: str, spec: ModalityAugment) -> None:
        """Raise a `ConfigError` (`augment_error`) when ``spec`` is inconsistent for this
        kind (e.g. a sequence's rotation without coordinate columns)."""

    def augment_info(self, loader: ModalityLoader) -> dict[str, Any]:
        """What augmentation needs from a fitted loader: ``width`` (columns, to check
        column numbers) and ``scale`` (``(mean, std)`` of its standardisation)."""
        return {}

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        """``batch`` with this kind's random transforms applied (a new batch), drawing from
        ``generator`` only. Called only for modalities with an ``[augment.NAME]`` table."""
        return batch

    def follow(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
               context: AugmentContext, matrix: Tensor | None) -> ModalityBatch:
        """``batch`` moved with the forward maps ``matrix`` ``[B, 2, 3]`` of the modality it
        follows (``spec.follow``); only kinds that accept ``follow`` implement it."""
        raise augment_error(f"augment.{context.name}: a {self.name} modality cannot follow "
                            "another", f"{context.name}.follow", "remove follow")

    def check_rotatable(self, name: str, spec: ModalityAugment | None) -> None:
        """Raise a `ConfigError` unless ``rotate_classes`` can rotate this modality."""
        raise augment_error(f"rotate_classes cannot rotate the {self.name} modality {name!r}",
                            "rotate_classes",
                            "train on image and sequence modalities only, or turn it off")

    def check_rotation(self, name: str, batch: ModalityBatch) -> None:
        """Raise a `ConfigError` when ``batch``'s samples cannot be rotated by quarter
        turns (e.g. images that are not square)."""

    def rotate_quarter(self, batch: ModalityBatch, quarter: int, spec: ModalityAugment | None,
                       context: AugmentContext) -> ModalityBatch:
        """``batch`` rotated counter-clockwise (on screen) by ``quarter`` * 90 degrees."""
        raise NotImplementedError(f"the {self.name} kind cannot be rotated")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def summary(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "median", "max"}`` of a non-empty sequence (inspection statistics).

    Example:
        >>> summary([3, 1, 2])
        {'min': 1, 'median': 2, 'max': 3}
    """
    import statistics

    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


kinds: Registry[ModalityKind] = Registry("modality kind")
"""Modality kinds by name: ``kinds.create("image")`` is the image kind object."""


def register_kind(cls: type[ModalityKind]) -> type[ModalityKind]:
    """Class decorator: register a `ModalityKind` subclass under its ``name``.

    Example:
        >>> @register_kind  # doctest: +SKIP
        ... class PointCloud(ModalityKind):
        ...     name, loader, default_encoder = "points", "points", "pointnet"
    """
    kinds.register(cls.name)(cls)
    return cls


def modality_kind(name: str) -> ModalityKind:
    """The kind object registered as ``name``; `UnknownNameError` lists the known kinds.

    Example:
        >>> modality_kind("text").media
        False
    """
    return kinds.create(name)


def kind_names() -> list[str]:
    """The registered kinds' names, sorted.

    Example:
        >>> kind_names()[:5]
        ['audio', 'image', 'sequence', 'tabular', 'text']
    """
    return kinds.names()

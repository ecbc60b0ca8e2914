"""The species of the synthetic dataset: six latent attributes, which of them each modality
reveals, and the seeded choice of the attribute tuples that make the classes.

`metamodal.datasets.synthetic` renders samples of these species; this module only says what
the species are, so that tests, the demo and zero-shot checks can ask what two modalities share.
"""

from __future__ import annotations

import numpy as np

from metamodal.datasets._render import ATTRIBUTES
from metamodal.errors import ConfigError

__all__ = [
    "ATTRIBUTE_ORDER",
    "MODALITY_ATTRIBUTES",
    "MODALITY_KINDS",
    "MODALITY_ORDER",
    "attribute_names",
    "check_attribute_values",
    "check_seed",
    "class_attributes",
    "shared_attributes",
    "species_labels",
    "value_positions",
]

#: Which attributes each modality reveals (the rest are invisible to it).
MODALITY_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "image": ("shape", "colour"),
    "caption": ("colour", "habitat"),
    "sound": ("pitch", "habitat"),
    "track": ("gait", "size"),
    "measurements": ("shape", "size"),
}

#: The metamodal kind of each modality.
MODALITY_KINDS: dict[str, str] = {
    "image": "image",
    "caption": "text",
    "sound": "audio",
    "track": "sequence",
    "measurements": "tabular",
}

ATTRIBUTE_ORDER = tuple(ATTRIBUTES)
"""The six attributes in the order of `class_attributes`' columns."""

MODALITY_ORDER = tuple(MODALITY_ATTRIBUTES)
"""The five modalities in the order the dataset writes them."""

def value_positions(attribute_values: int) -> np.ndarray:
    """Positions (in each attribute's five-value list) of the values a dataset uses.

    Args:
        attribute_values: values per attribute, 2-5; evenly spaced picks of the five.

    Returns:
        int ``[attribute_values]`` positions, e.g. ``[0, 2, 4]`` for 3.

    Example:
        >>> value_positions(3).tolist()
        [0, 2, 4]
    """
    check_attribute_values(attribute_values)
    return np.rint(np.linspace(0.0, 4.0, attribute_values)).astype(np.int64)


def attribute_names(attribute_values: int = 3) -> dict[str, tuple[str, ...]]:
    """The value names each attribute takes in a dataset with ``attribute_values`` values.

    Args:
        attribute_values: values per attribute, 2-5.

    Returns:
        attribute name -> its value names, index ``i`` naming value index ``i`` of
        :func:`class_attributes`.

    Example:
        >>> attribute_names(3)["colour"]
        ('red', 'green', 'blue')
    """
    positions = value_positions(attribute_values)
    return {name: tuple(values[p] for p in positions) for name, values in ATTRIBUTES.items()}


def class_attributes(classes: int, *, seed: int = 0, attribute_values: int = 3) -> np.ndarray:
    """Choose the classes: distinct attribute tuples, deterministically from the seed.

    The first ``n`` classes are the same for every ``classes >= n`` (a prefix of one seeded
    permutation of the whole attribute space).

    Args:
        classes: how many classes (at most ``attribute_values ** 6``).
        seed: non-negative seed.
        attribute_values: values per attribute, 2-5.

    Returns:
        int ``[classes, 6]``: value index (``0..attribute_values-1``) of each attribute, columns
        in the order of :data:`ATTRIBUTES` (shape, colour, habitat, pitch, gait, size).

    Raises:
        ConfigError: the attribute space has fewer tuples than ``classes``.

    Example:
        >>> table = class_attributes(10, seed=0)
        >>> table.shape, len({tuple(row) for row in table.tolist()})
        ((10, 6), 10)
    """
    check_attribute_values(attribute_values)
    check_seed(seed)
    space = attribute_values ** len(ATTRIBUTE_ORDER)
    if not isinstance(classes, int) or classes < 1:
        raise ConfigError(f"classes must be a positive integer, got {classes!r}",
                          fix="pass classes >= 1")
    if classes > space:
        raise ConfigError(
            f"{classes} classes asked but {attribute_values} values for each of "
            f"{len(ATTRIBUTE_ORDER)} attributes make only {space} distinct species",
            fix=f"ask for at most {space} classes or raise attribute_values (up to 5 gives "
            f"{5 ** len(ATTRIBUTE_ORDER)})",
        )
    codes = np.random.default_rng([seed, 1]).permutation(space)[:classes]
    digits = attribute_values ** np.arange(len(ATTRIBUTE_ORDER) - 1, -1, -1)
    return (codes[:, None] // digits[None, :]) % attribute_values


def species_labels(classes: int) -> list[str]:
    """The class labels of a dataset of ``classes`` species: ``species-000``, ...

    Example:
        >>> species_labels(2)
        ['species-000', 'species-001']
    """
    return [f"species-{c:0{max(3, len(str(classes - 1)))}d}" for c in range(classes)]


def shared_attributes(a: str, b: str, classes: int, *, seed: int = 0,
                      attribute_values: int = 3) -> dict[str, tuple[int, ...]]:
    """What modalities ``a`` and ``b`` both reveal of each species of
    ``make_synthetic(classes=classes, seed=seed, attribute_values=attribute_values)``.

    Returns:
        class label -> value indices of the attributes both modalities show (``()`` when they
        share none), e.g. ``caption`` and ``image`` share the colour.

    Example:
        >>> shared = shared_attributes("caption", "image", 4)
        >>> len(shared), len(shared["species-000"])
        (4, 1)
    """
    for name in (a, b):
        if name not in MODALITY_ATTRIBUTES:
            raise ConfigError(f"the generated dataset has no modality {name!r}",
                              fix=f"use one of: {', '.join(MODALITY_ATTRIBUTES)}")
    columns = [i for i, attribute in enumerate(ATTRIBUTE_ORDER)
               if attribute in MODALITY_ATTRIBUTES[a] and attribute in MODALITY_ATTRIBUTES[b]]
    table = class_attributes(classes, seed=seed, attribute_values=attribute_values)
    return {label: tuple(int(v) for v in table[c, columns])
            for c, label in enumerate(species_labels(classes))}


def check_attribute_values(attribute_values: int) -> None:
    """`ConfigError` unless ``attribute_values`` is an integer from 2 to 5."""
    if not isinstance(attribute_values, int) or not 2 <= attribute_values <= 5:
        raise ConfigError(f"attribute_values must be an integer from 2 to 5, got "
                          f"{attribute_values!r}",
                          fix="pass attribute_values between 2 and 5")


def check_seed(seed: int) -> None:
    """`ConfigError` unless ``seed`` is a non-negative integer."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}",
                          fix="pass seed >= 0")

"""Numbers shared by the loaders: parsing text as a number and standardisation statistics.

The image, audio, sequence and tabular loaders all take a ``normalize`` option and, when it is
set, keep a per-channel / per-band / per-feature ``mean_`` and ``std_`` learnt on the
meta-train samples and stored in their state as plain lists of floats (`StandardisingState`).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from metamodal.errors import ConfigError

MIN_STD = 1e-6
"""A standard deviation below this counts as constant; it is replaced by 1."""

MAX_INPUT = 1e6
"""The largest magnitude of a value the model is given (a sequence's or a row's, standardised
where the loader standardises): beyond it the network's float32 arithmetic (squared distances,
attention products) can overflow to NaN. A value a million standard deviations from the
meta-train data is a unit or export error."""


NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity|nan)",
                    re.IGNORECASE | re.ASCII)
"""A number as a data file writes it: ASCII decimal digits, an optional point and exponent (or
inf / nan, which the loaders then refuse as not finite). Python's ``float`` also takes
``1_000`` and digits of other scripts; in a data file those are typing or export errors."""


def is_number(text: str) -> bool:
    """Whether ``text`` is a number as a data file writes it (`NUMBER`), white space around
    it aside (a spreadsheet's no-break space too, as ``float`` allows).

    Example:
        >>> is_number("1e3"), is_number(" -.5 "), is_number("7\u00a0"), is_number("ten")
        (True, True, True, False)
        >>> is_number("1_000"), is_number("0x10"), is_number("nan")
        (False, False, True)
    """
    return NUMBER.fullmatch(text.strip()) is not None


def check_count(kind: str, name: str, value: object, minimum: int, maximum: int) -> int:
    """Return ``value`` if it is an integer (not a bool, not ``3.0``) in
    ``[minimum, maximum]``; else raise `ConfigError` naming the ``kind`` loader's option.

    Every size a user can set has an upper bound, so that a typo cannot ask for an
    allocation without end.

    Example:
        >>> check_count("image", "channels", 3, 1, 3)
        3
        >>> try:
        ...     check_count("image", "channels", 3.0, 1, 3)
        ... except ConfigError as error:
        ...     print(error.message)
        image channels must be an integer from 1 to 3, got 3.0
    """
    if (isinstance(value, bool) or not isinstance(value, int)
            or not minimum <= value <= maximum):
        raise ConfigError(f"{kind} {name} must be an integer from {minimum} to {maximum}, "
                          f"got {value!r}",
                          fix=f"set {name} to an integer from {minimum} to {maximum}")
    return value


def check_normalize(kind: str, normalize: object) -> bool:
    """Return ``normalize`` if it is a bool; else raise `ConfigError` for the ``kind`` loader.

    Example:
        >>> check_normalize("image", True)
        True
    """
    if not isinstance(normalize, bool):
        raise ConfigError(f"{kind} normalize must be true or false, got {normalize!r}",
                          fix="set normalize = true or normalize = false")
    return normalize


def mean_and_std(total: Tensor, squares: Tensor, count: int) -> tuple[list[float], list[float]]:
    """Mean and (population) standard deviation from running sums over ``count`` values.

    A standard deviation below `MIN_STD` (a constant channel) becomes 1.

    Args:
        total: float64 ``[C]`` sum of the values of each channel.
        squares: float64 ``[C]`` sum of their squares.
        count: values summed per channel (> 0).

    Example:
        >>> total, squares = torch.tensor([3.0, 4.0]), torch.tensor([5.0, 8.0])
        >>> mean_and_std(total, squares, 2)
        ([1.5, 2.0], [0.5, 1.0])
    """
    mean = total / count
    std = torch.sqrt(torch.clamp(squares / count - mean.square(), min=0.0))
    std = torch.where(std < MIN_STD, torch.ones_like(std), std)
    return mean.tolist(), std.tolist()


def warn_identity(what: str, kind: str, column: str) -> None:
    """Warn that no meta-train ``what`` were found in ``column``, so normalisation is skipped.

    The warning points at the caller of the loader's ``fit``.
    """
    warnings.warn(f"no meta-train {what} in column {column!r}; "
                  f"{kind} normalisation is the identity", stacklevel=3)


def optional_floats(values: Iterable[float] | None) -> list[float] | None:
    """``values`` as a list of floats (e.g. ``mean`` of a loader's state), or None.

    Example:
        >>> optional_floats([1, 2]), optional_floats(None)
        ([1.0, 2.0], None)
    """
    return None if values is None else [float(v) for v in values]


class StandardisingState:
    """The fitted state of a loader that standardises its values with meta-train statistics.

    ``mean_`` and ``std_`` hold one float per channel / band / feature (None before fitting,
    or when the loader does not normalise); ``fitted_`` says whether ``fit`` has run. Mixed
    into the image, audio, sequence and tabular loaders, which call `_clear_statistics` in
    their constructor and add `_statistics_state` to their ``state_dict``.

    Example:
        >>> state = StandardisingState()
        >>> state._clear_statistics()
        >>> state.mean_, state.std_, state.fitted_ = [0.5], [2.0], True
        >>> again = StandardisingState()
        >>> again._restore_statistics(state._statistics_state())
        >>> again.is_fitted, again.mean_, again.std_
        (True, [0.5], [2.0])
    """

    mean_: list[float] | None
    std_: list[float] | None
    fitted_: bool

    def _clear_statistics(self) -> None:
        """No statistics yet, not fitted."""
        self.mean_ = None
        self.std_ = None
        self.fitted_ = False

    @property
    def is_fitted(self) -> bool:
        """Whether `fit` (or `from_state` of a fitted loader) has run."""
        return self.fitted_

    def _statistics_state(self) -> dict[str, Any]:
        """``{"fitted", "mean", "std"}`` as JSON-able data, for ``state_dict``."""
        return {"fitted": self.fitted_, "mean": self.mean_, "std": self.std_}

    def _restore_statistics(self, state: Mapping[str, Any], size: int | None = None) -> None:
        """Set the statistics `_statistics_state` wrote into ``state``, checked.

        Args:
            state: the loader's state.
            size: how many values ``mean`` and ``std`` must hold (channels, bands, features),
                when known.

        Raises:
            ValueError: ``fitted`` is not a bool, ``mean`` and ``std`` differ in length or
                from ``size``, a value is not finite, or a standard deviation is not > 0 (a
                zero would divide every decoded value by zero).
        """
        if not isinstance(state["fitted"], bool):
            raise ValueError(f"fitted must be true or false, got {state['fitted']!r}")
        mean, std = optional_floats(state["mean"]), optional_floats(state["std"])
        if (mean is None) != (std is None):
            raise ValueError("mean and std must both be given or both be null")
        if mean is not None and std is not None:
            if len(mean) != len(std) or (size is not None and len(mean) != size):
                raise ValueError(f"mean has {len(mean)} values and std {len(std)}"
                                 + (f"; {size} are needed" if size is not None else ""))
            if not all(math.isfinite(v) for v in mean + std):
                raise ValueError("mean and std must be finite numbers")
            if not all(v > 0 for v in std):
                raise ValueError("every std must be > 0")
        self.fitted_ = state["fitted"]
        self.mean_, self.std_ = mean, std

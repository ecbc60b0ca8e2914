"""Name -> constructor registries, so that a config or a CLI flag picks a component by name."""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from metamodal.errors import ConfigError, OptionError, UnknownNameError
from metamodal.hints import fits_type, type_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A registry of constructors by name, in the style of timm's model registry.

    Args:
        family: what the registry holds, used in error messages ("encoder", "fusion", ...).

    Example:
        >>> fusions = Registry("fusion")
        >>> @fusions.register("mean")
        ... class Mean: ...
        >>> type(fusions.create("mean")).__name__
        'Mean'
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a class or factory under ``name``."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = factory
            return factory

        return decorate

    def get(self, name: str) -> Callable[..., T]:
        """The constructor registered as ``name``; `UnknownNameError` lists the known names
        (its key is the family, e.g. ``learner``)."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"unknown {self.family} {name!r}",
                column=self.family,
                fix=f"use one of: {', '.join(self.names())}",
            ) from None

    def check_options(self, name: str, options: Mapping[str, Any], *,
                      options_key: str | None = None) -> None:
        """Check a config's options for component ``name`` before it is built: `ConfigError`
        naming the accepted options when ``options`` has others, or when a value is not of its
        option's type (the constructor's hint, where it resolves) or out of any component's
        bounds (not finite, `MAX_OPTION_INT`, `MAX_OPTION_ITEMS`); its key is ``options_key``,
        the config table that holds them, where given. Each component checks its own ranges
        when it is built (`require_option`).

        Example:
            >>> from metamodal.encoders import encoders
            >>> encoders.check_options("mlp", {"depth": 2})
            Traceback (most recent call last):
            ...
            metamodal.errors.ConfigError: encoder 'mlp' has no hyper-parameter 'depth' \
(fix: use: hidden=(64,), dropout=0.0)
            >>> encoders.check_options("mlp", {"dropout": "x"})
            Traceback (most recent call last):
            ...
            metamodal.errors.ConfigError: encoder 'mlp': dropout = 'x' is not of type float \
(fix: give a value like its default, dropout = 0.0)
        """
        factory = self.get(name)
        known = hyperparameters(factory)
        unknown = [key for key in options if key not in known]
        if unknown:
            listed = ", ".join(f"{key}={value!r}" for key, value in known.items()) or "none"
            raise ConfigError(
                f"{self.family} {name!r} has no hyper-parameter {', '.join(map(repr, unknown))}",
                column=options_key, fix=f"use: {listed}",
            )
        hints = _option_hints(factory)
        for key, value in options.items():
            fix = f"give a value like its default, {key} = {known[key]!r}"
            if key in hints and not fits_type(value, hints[key]):
                raise ConfigError(f"{self.family} {name!r}: {key} = {value!r} is not of type "
                                  f"{type_name(hints[key])}", column=options_key, fix=fix)
            why = _out_of_bounds(value) or (_too_wide(value) if key in WIDTH_OPTIONS else None)
            if why:
                raise ConfigError(f"{self.family} {name!r}: {key} = {value!r} {why}",
                                  column=options_key, fix=fix)

    def create(self, name: str, /, *, options_key: str | None = None, **kwargs: Any) -> T:
        """Build the component registered as ``name`` with keyword arguments.

        Args:
            name: the registered name.
            options_key: the config key that holds the component's options (e.g.
                ``fusion_options``), named by a rejected value's error; default ``name``.
            **kwargs: the constructor's arguments.

        Raises:
            UnknownNameError: no component has that name.
            ConfigError: the component rejects an option value (its ``ValueError``, e.g.
                ``temperature = 0``, an `OptionError` that names no key, or a ``TypeError`` or
                torch's ``RuntimeError`` while it is built, e.g. a negative size), naming
                ``options_key`` as the key.
        """
        factory = self.get(name)
        try:
            return factory(**kwargs)
        except OptionError as error:
            if error.column is not None:
                raise
            raise OptionError(error.message, file=error.file, column=options_key or name,
                              fix=error.fix) from error
        except (TypeError, RuntimeError) as error:  # an option it lacks, a size torch refuses
            raise ConfigError(f"{self.family} {name!r} rejects its options ({error})",
                              column=options_key or name,
                              fix=f"correct the {self.family}'s options") from error
        except ValueError as error:
            raise ConfigError(f"{self.family} {name!r}: {error}", column=options_key or name,
                              fix=f"correct the {self.family}'s options") from error

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.family!r}, {self.names()})"


MAX_LAYERS = 64
"""The most blocks or layers a component's option may stack."""
MAX_OPTION_INT = 1 << 24
"""The largest magnitude of a component's integer option (sizes, counts, steps)."""
MAX_OPTION_ITEMS = 64
"""The most items of a component's list option (a network's widths, say)."""
MAX_WIDTH = 8192
"""The widest layer a component's option may ask for (an option named in `WIDTH_OPTIONS`, or
each item of it), and the largest ``dim`` (`metamodal.config.LIMITS`)."""
WIDTH_OPTIONS = frozenset({"hidden", "channels", "widths", "embedding_dim", "filters", "rank"})
"""The option names that set a layer's width (units, channels, an embedding's size, a
low-rank fusion's factors): a weight matrix grows with them (with their square for most), so
2^24 would ask for terabytes."""


def _constructors(factory: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """The functions that take a registered constructor's keyword options: the factory, or a
    class's ``__init__`` and, while one passes ``**options`` on, its base classes'."""
    owners = factory.__mro__ if isinstance(factory, type) else [factory]
    for owner in owners:
        init = owner.__dict__.get("__init__") if isinstance(factory, type) else owner
        if init is None:
            continue
        yield init
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break


def hyperparameters(factory: Callable[..., Any]) -> dict[str, Any]:
    """The keyword hyper-parameters of a registered constructor and their defaults.

    ``dim``, ``input_info`` and ``modalities`` (given by the model, not by a config) are left
    out. A class constructor that passes ``**options`` on to its base class also accepts the
    base class's hyper-parameters (its own defaults win).

    Example:
        >>> from metamodal.encoders import encoders
        >>> hyperparameters(encoders.get("mlp"))
        {'hidden': (64,), 'dropout': 0.0}
    """
    skip = {"self", "dim", "input_info", "modalities"}
    found: dict[str, Any] = {}
    for init in _constructors(factory):
        for parameter in inspect.signature(init).parameters.values():
            if parameter.name not in skip and parameter.kind in (
                parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD
            ):
                found.setdefault(parameter.name, parameter.default)
    return found


def _option_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    """The type hints of a registered constructor's keyword options (its own win; none from a
    constructor whose hints do not resolve, e.g. names imported only for type checkers)."""
    hints: dict[str, Any] = {}
    for init in _constructors(factory):
        try:
            resolved = typing.get_type_hints(init)
        except (NameError, TypeError, AttributeError):
            continue
        for key, hint in resolved.items():
            hints.setdefault(key, hint)
    return hints


def _too_wide(value: Any) -> str | None:
    """Why a width option (an int, or a list of them) asks for a layer wider than `MAX_WIDTH`,
    or None."""
    widths = value if isinstance(value, list | tuple) else [value]
    if any(isinstance(w, int) and w > MAX_WIDTH for w in widths):
        return f"asks for a layer wider than {MAX_WIDTH:,}"
    return None


def _out_of_bounds(value: Any) -> str | None:
    """Why an option's value lies outside what any component takes (a number that is not
    finite, an integer over `MAX_OPTION_INT`, a list of more than `MAX_OPTION_ITEMS`), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number"
    if isinstance(value, int) and abs(value) > MAX_OPTION_INT:
        return f"is over {MAX_OPTION_INT:,} in magnitude"
    if isinstance(value, list | tuple):
        if len(value) > MAX_OPTION_ITEMS:
            return f"has over {MAX_OPTION_ITEMS} items"
        return next((why for why in map(_out_of_bounds, value) if why), None)
    return None




def require_option(ok: bool, component: str, rule: str, *, fix: str) -> None:
    """Raise `OptionError` ``"COMPONENT needs RULE"`` unless ``ok``: a component's check of
    its own options' ranges (`Registry.create` names the config table as the key).

    Example:
        >>> require_option(True, "gated", "hidden >= 1, got 32", fix="use e.g. hidden=32")
        >>> require_option(False, "gated", "hidden >= 1, got 0", fix="use e.g. hidden=32")
        Traceback (most recent call last):
        ...
        metamodal.errors.OptionError: gated needs hidden >= 1, got 0 (fix: use e.g. hidden=32)
    """
    if not ok:
        raise OptionError(f"{component} needs {rule}", fix=fix)

"""Name -> constructor registries, so that a config or a CLI flag picks a component by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from metamodal.errors import ConfigError, OptionError, UnknownNameError

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

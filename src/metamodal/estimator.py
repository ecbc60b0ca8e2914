"""scikit-learn's parameter protocol without scikit-learn: `EstimatorParams` gives a class
``get_params``, ``set_params`` and a ``repr`` of its parameters, by scikit-learn's rules, so
that ``sklearn.base.clone`` and scikit-learn's model selection work with it.

The rules (from scikit-learn's developer guide): the parameters are the constructor's
arguments (no ``*args``); the constructor stores each one unchanged under its own name and
does nothing else (no validation, no file read); what ``fit`` learns is stored under names
that end with ``_``. ``clone`` then builds an unfitted copy as ``type(est)(**est.get_params())``
and checks that each argument was stored as given.

metamodal implements the protocol instead of inheriting ``sklearn.base.BaseEstimator``:
scikit-learn (and SciPy with it) is not a dependency of metamodal's core.
"""

from __future__ import annotations

import inspect
from typing import Any

from metamodal.errors import ConfigError


class EstimatorParams:
    """``get_params`` / ``set_params`` / ``repr`` over the constructor's arguments.

    Example:
        >>> class Scaler(EstimatorParams):
        ...     def __init__(self, factor=1.0, *, name=None):
        ...         self.factor = factor
        ...         self.name = name
        >>> s = Scaler(2.0)
        >>> s, s.get_params()
        (Scaler(factor=2.0), {'factor': 2.0, 'name': None})
        >>> s.set_params(name="x")
        Scaler(factor=2.0, name='x')
        >>> s.set_params(size=3)
        Traceback (most recent call last):
        ...
        metamodal.errors.ConfigError: key size: Scaler has no parameter 'size' (fix: ...)
    """

    @classmethod
    def _parameters(cls) -> list[inspect.Parameter]:
        """The constructor's parameters, in signature order."""
        return [p for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments by name (sorted), as stored.

        Args:
            deep: also a parameter's own parameters (``name__key``) when that parameter is
                an estimator, as scikit-learn does.
        """
        params: dict[str, Any] = {}
        for parameter in sorted(self._parameters(), key=lambda p: p.name):
            value = getattr(self, parameter.name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                params.update((f"{parameter.name}__{key}", sub)
                              for key, sub in value.get_params().items())
            params[parameter.name] = value
        return params

    def set_params(self, **params: Any) -> Any:
        """Set constructor arguments by name (``name__key`` sets a parameter's own parameter);
        returns the estimator. They take effect at the next ``fit``.

        Raises:
            ConfigError: a name that is not a constructor argument.
        """
        names = [p.name for p in self._parameters()]
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in names or (sub and not hasattr(getattr(self, name), "set_params")):
                raise ConfigError(f"{type(self).__name__} has no parameter {key!r}",
                                  column=key, fix=f"use one of: {', '.join(names)}")
            if sub:
                getattr(self, name).set_params(**{sub: value})
            else:
                setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        shown = [f"{p.name}={getattr(self, p.name)!r}" for p in self._parameters()
                 if p.default is p.empty or _differs(getattr(self, p.name), p.default)]
        return f"{type(self).__name__}({', '.join(shown)})"


def _differs(value: Any, default: Any) -> bool:
    """True unless ``value`` equals ``default`` (a value that cannot be compared differs)."""
    if value is default:
        return False
    try:
        return not bool(value == default)
    except (TypeError, ValueError):
        return True

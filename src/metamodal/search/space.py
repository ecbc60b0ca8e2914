"""`SearchSpace`: the settings a search varies, read from a TOML file.

One key per setting, named as in the training config (`metamodal.config.TrainConfig`), with
dotted keys for the settings inside its tables:

.. code-block:: toml

    fusion = { choices = ["mean", "gated", "late"] }
    lr = { low = 1e-4, high = 1e-2, log = true }
    dim = { choices = [32, 64] }
    "learner_options.inner_steps" = { low = 1, high = 5 }
    "encoders.image" = { choices = ["conv4", "resnet12"] }
    "augment.image.rotate" = { low = 0.0, high = 20.0, step = 5.0 }

A range of integers (``low``, ``high`` both integers) draws integers, one of floats draws floats;
``log = true`` draws on a log scale, ``step`` on a grid (a whole step for integers). Every value
a key can take is checked against the training config before any trial runs, so a misspelt
key, a value of the wrong type, a component name no registry holds (``fusion``, ``learner``,
``encoders.*``) or an option that a component which can be chosen lacks
(``learner_options.*``, ...) is a `ConfigError` naming the file and the key, never a failed
trial.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metamodal.config import TrainConfig
from metamodal.data.paths import PathRefused, read_small_text
from metamodal.errors import ConfigError
from metamodal.io import ParseError, loads_toml
from metamodal.registry import Registry

FIXED = ("data", "seed", "init_from", "device", "cache")
"""Training settings a search may not vary: they define the data, its split (and so the fixed
validation episodes) or where training runs, not the model."""

MACHINE_SETTINGS = frozenset({"device", "dist_backend", "dist_timeout", "world_size", "cache",
                              "compile", "task_batching", "vmap_chunk", "checkpoint_every"})
"""Settings each worker may give for its own machine: they do not change what a trial
learns (a worker on a GPU beside one on a CPU)."""

NOT_SEARCHED = {
    "world_size": "it is recorded by training (the processes of a torchrun job), not set",
    "align_only": "a search scores few-shot runs, and an alignment-only run trains none",
}
"""Training settings that are no choice a search makes, with the reason."""

MAX_CHOICES = 1000
"""The most choices (or grid points) of one key."""

MAX_GRID = 100_000
"""The most combinations of a grid search (the product of its keys' grid sizes): Optuna's
grid sampler holds every one of them in memory."""

MAX_SPACE_BYTES = 1 << 20
"""The largest space file read (a space of a few keys takes a few hundred bytes)."""

COMPONENTS = {"learner": "learner_options", "fusion": "fusion_options",
              "encoders": "encoder_options"}
"""The settings that name a registered component (``encoders.MODALITY`` one per modality),
with the table of that component's options."""


@dataclass(frozen=True)
class Param:
    """One setting a search varies.

    Args:
        name: the training config key, dotted inside tables (``encoders.image``).
        choices: the values of a categorical setting, or None.
        low, high: the bounds of a range (inclusive).
        log: draw the range on a log scale.
        step: draw the range on a grid of this step.
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        """A range of integers."""
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool)
                                            for v in (self.low, self.high))

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws for this setting (a list choice, such as a set of
        modalities, is drawn by its label ``image+strokes``)."""
        if self.choices is not None:
            labels = {_label(c): c for c in self.choices}
            return labels[trial.suggest_categorical(self.name, list(labels))]
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def grid(self, file: Path) -> list[Any]:
        """Every value of a grid search (list choices by their labels).

        Raises:
            ConfigError: a float range without ``step``, or too many points.
        """
        if self.choices is not None:
            return [_label(c) for c in self.choices]
        if self.step is None and not self.integer:
            raise ConfigError("a grid search needs the values of a float range", file=file,
                              column=self.name, fix="give choices = [...] or a step")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if count > MAX_CHOICES:
            raise ConfigError(f"the grid of this range has {count} points", file=file,
                              column=self.name, fix=f"use a step giving at most {MAX_CHOICES}")
        # low + k * step in floats can pass high (0.3 + 3 * 0.2 = 0.9000000000000001):
        # rounded to 15 significant digits (any scale) and kept in the range, whose ends
        # are what was checked
        values = [min(max(float(f"{self.low + k * step:.15g}"), self.low), self.high)
                  for k in range(count)]
        return [int(v) for v in values] if self.integer else values

    def examples(self) -> list[Any]:
        """Values that stand for what this setting can take (checked against the config)."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [float(self.low),
                                                                      float(self.high)]


@dataclass
class SearchSpace:
    """The settings a search varies (see the module docstring)."""

    params: list[Param]
    file: Path

    @classmethod
    def from_toml(cls, path: str | Path, base: TrainConfig | None = None) -> SearchSpace:
        """Read and check a space file against the training config ``base``.

        Raises:
            ConfigError: the file is missing or not TOML, a key is not a training setting (or
                one a search may not vary), a range is empty, a categorical has no choices,
                or a value does not fit the setting.
        """
        path = Path(path)
        try:
            table = loads_toml(read_small_text(path, "search space", MAX_SPACE_BYTES))
        except FileNotFoundError:
            raise ConfigError("the search space file does not exist", file=path,
                              fix="write a space TOML, e.g. fusion = { choices = "
                              "[\"mean\", \"gated\"] }") from None
        except PathRefused as error:  # a FIFO (reading one would block), too large, ...
            raise ConfigError(error.message, file=path, fix=error.fix) from None
        except (ParseError, UnicodeDecodeError) as error:
            raise ConfigError(f"the search space is not valid TOML ({error})", file=path,
                              fix="fix the TOML syntax") from None
        except (OSError, ValueError) as error:  # no permission, a NUL character, ...
            raise ConfigError(f"the search space file cannot be read ({error})", file=path,
                              fix="give a readable space TOML") from None
        params = [_param(name, spec, path) for name, spec in _flatten(table)]
        if not params:
            raise ConfigError("the search space is empty", file=path,
                              fix="name at least one setting to vary")
        space = cls(params, path)
        space.check(base or TrainConfig())
        return space

    def check(self, base: TrainConfig) -> None:
        """Every value of every key applied to ``base`` is a valid training config, whose
        components (`COMPONENTS`) are registered and take their options, whichever of the
        space's choices of the other keys a trial draws with it.

        Raises:
            ConfigError: naming the space file and the key; or the base config's key, where a
                component the space does not choose is unknown or lacks a base option.
        """
        for key, names, options, options_key in self._components(base, None):
            if key not in self.by_name:  # a trial keeps the base config's component
                _check_component(key, names, options, options_key)
        for param in self.params:
            for value in param.examples():
                try:
                    config = base.merged(nest({param.name: value}))
                    config.validate()
                    for component in self._components(config, param.name):
                        _check_component(*component)
                except ConfigError as error:
                    raise ConfigError(f"{param.name} = {value!r} is not a valid training "
                                      f"setting: {error.message}", file=self.file,
                                      column=param.name, fix=error.fix or "see metamodal "
                                      "train --help for the settings and their values"
                                      ) from None

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Each setting's draw by its name: what a study records of its space.

        Example:
            >>> space = SearchSpace([Param("lr", low=1e-4, high=1e-2, log=True)], Path("s.toml"))
            >>> space.to_dict()["lr"]["log"]
            True
        """
        return {param.name: {k: v for k, v in dataclasses.asdict(param).items() if k != "name"}
                for param in self.params}

    @functools.cached_property
    def by_name(self) -> dict[str, Param]:
        """The space's keys and their settings."""
        return {param.name: param for param in self.params}

    def _components(self, config: TrainConfig, varied: str | None
                    ) -> Iterator[tuple[str, list[Any] | None, dict[str, Any], str]]:
        """Each component of ``config`` as (its key, the names a trial may give it, its options,
        the options' key). The names are the space's choices where a key other than ``varied``
        chooses the component, else ``config``'s (None: a modality's default encoder, which
        only the dataset knows); the options leave out those the space varies (each trial
        gives them its own values), except ``varied``."""
        def names(key: str, current: str | None) -> list[Any] | None:
            param = self.by_name.get(key)
            if key != varied and param is not None and param.choices is not None:
                return list(param.choices)
            return None if current is None else [current]

        def options(table: str, values: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in values.items()
                    if f"{table}.{k}" == varied or f"{table}.{k}" not in self.by_name}

        for key in ("learner", "fusion"):
            table = COMPONENTS[key]
            yield key, names(key, getattr(config, key)), options(
                table, getattr(config, table)), table
        for modality in sorted({*config.encoders, *config.encoder_options}):
            key, table = f"encoders.{modality}", f"{COMPONENTS['encoders']}.{modality}"
            yield key, names(key, config.encoders.get(modality)), options(
                table, config.encoder_options.get(modality, {})), table

    def suggest(self, trial: Any) -> dict[str, Any]:
        """The values an Optuna trial draws, by dotted name."""
        return {param.name: param.suggest(trial) for param in self.params}

    def grid(self) -> dict[str, list[Any]]:
        """The grid of a grid search: each setting's values.

        Raises:
            ConfigError: a key's grid cannot be made (`Param.grid`), or the grid has more
                than `MAX_GRID` combinations.
        """
        grid = {param.name: param.grid(self.file) for param in self.params}
        size = math.prod(len(values) for values in grid.values())
        if size > MAX_GRID:
            raise ConfigError(f"the grid has {size:,} combinations (at most {MAX_GRID:,})",
                              file=self.file, fix="give fewer choices or larger steps, or "
                              "use --sampler tpe or random")
        return grid


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted names as nested tables, the form `TrainConfig.merged` takes.

    Example:
        >>> nest({"lr": 0.01, "encoders.image": "conv4", "augment.image.rotate": 5})
        {'lr': 0.01, 'encoders': {'image': 'conv4'}, 'augment': {'image': {'rotate': 5}}}
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        *tables, key = name.split(".")
        node = out
        for table in tables:
            node = node.setdefault(table, {})
        node[key] = value
    return out


def _check_component(key: str, names: list[Any] | None, options: dict[str, Any],
                     options_key: str) -> None:
    """Each of ``names`` is a registered component that takes ``options``; with no names (a
    modality's default encoder), some encoder takes them.

    Raises:
        ConfigError: an unknown name (`metamodal.errors.UnknownNameError`), an option the
            component lacks or a value of the wrong type, keyed ``options_key`` or the family.
    """
    from metamodal.encoders import encoders
    from metamodal.fusion import fusions
    from metamodal.learners import learners

    registry: Registry[Any] = {"learner": learners, "fusion": fusions}.get(key, encoders)
    if names is not None:
        for name in names:
            registry.check_options(name, options, options_key=options_key)
        return
    for name in registry.names():
        try:
            registry.check_options(name, options, options_key=options_key)
            return
        except ConfigError:
            continue
    raise ConfigError(f"no {registry.family} takes the options {options}", column=options_key,
                      fix=f"name the encoder ({key} = ...) and give options it takes")


_SPEC_KEYS = {"choices", "low", "high", "log", "step"}


def _label(choice: Any) -> Any:
    """A choice as Optuna stores it: a list as ``a+b``, anything else as it is.

    Example:
        >>> _label(["image", "strokes"]), _label(0.5)
        ('image+strokes', 0.5)
    """
    return "+".join(map(str, choice)) if isinstance(choice, list) else choice


def _flatten(table: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, spec) of each setting: a nested table that is not a spec is a table of
    settings (``[encoders]`` then ``image = {...}``)."""
    out = []
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) & _SPEC_KEYS:
            out += _flatten(value, name + ".")
        else:
            out.append((name, value))
    return out


def _param(name: str, spec: Any, file: Path) -> Param:
    """One key of the space file, checked."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    head = name.split(".")[0]

    def bad(message: str, fix: str) -> ConfigError:
        return ConfigError(message, file=file, column=name, fix=fix)

    if head not in fields:
        raise bad(f"{head!r} is not a training setting",
                  "use a key of the training config (metamodal train --help)")
    if head in FIXED:
        raise bad(f"a search may not vary {head}",
                  f"fix it with --{head.replace('_', '-')} for every trial")
    if head in NOT_SEARCHED:
        raise bad(f"a search may not vary {head}: {NOT_SEARCHED[head]}",
                  f"leave {head} out of the space")
    if head in MACHINE_SETTINGS:
        raise bad(f"a search may not vary {head}: a setting of each worker's machine, which "
                  "changes how a trial trains, not what it learns",
                  f"give it as --{head.replace('_', '-')} to the worker that needs it")
    if "." in name and not isinstance(TrainConfig().to_dict()[head], dict):
        raise bad(f"{head} is not a table, so {name!r} names nothing",
                  f"write {head} = {{ ... }} without the dotted part")
    if not isinstance(spec, dict):
        raise bad("each setting needs { choices = [...] } or { low = ..., high = ... }",
                  f'e.g. {name} = {{ choices = [...] }}')
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise bad(f"unknown key(s) {sorted(unknown)}", f"use {sorted(_SPEC_KEYS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"}:
            raise bad("choices cannot be mixed with a range", "give choices or low / high")
        if not isinstance(choices, list) or not choices:
            raise bad("a categorical setting needs at least one choice",
                      "give choices = [a, b, ...]")
        if len(choices) > MAX_CHOICES:
            raise bad(f"{len(choices)} choices", f"give at most {MAX_CHOICES}")
        labels = [_label(c) for c in choices]
        if any(isinstance(c, dict) for c in choices) or len(set(map(repr, labels))) < len(
                labels):
            raise bad("choices must be distinct values or lists of values",
                      "remove the repeated choice or the table")
        return Param(name, choices=tuple(choices))
    low, high = spec.get("low"), spec.get("high")
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                  and math.isfinite(v) for v in (low, high))
    if not numbers:
        raise bad("a range needs finite numbers low and high", f"e.g. {name} = "
                  "{ low = 0.001, high = 0.01 }")
    if not low < high:
        raise bad(f"the range [{low}, {high}] is empty", "give low < high")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise bad("log must be true or false", "write log = true")
    if log and low <= 0:
        raise bad("a log range needs low > 0", "raise low above 0, or drop log")
    if step is not None and (not isinstance(step, int | float) or isinstance(step, bool)
                             or not 0 < step <= high - low):
        raise bad(f"step must be a number > 0 and at most high - low = {high - low:g}",
                  "give a step between 0 and high - low")
    integer = isinstance(low, int) and isinstance(high, int)
    if integer and step is not None and not float(step).is_integer():
        raise bad(f"a range of integers needs a whole step, not {step}",
                  "give an integer step, or float bounds (low = 4.0) to draw floats")
    if log and step is not None:
        raise bad("a range cannot have both log and step", "drop one of them")
    return Param(name, low=low, high=high, log=log, step=step)

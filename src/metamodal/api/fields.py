"""How a verb's settings dataclass becomes keywords and flags: `Flag` metadata, the field
documentation read from the class's ``Args:`` (`field_help`), building settings from keywords
with typed errors (`make`, `resolve`), checking where output goes (`check_output_file`),
writing a result's JSON (`write_json`), and refusing a verb torchrun started that does not
share its work out (`check_torchrun_verb`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metamodal.errors import ConfigError
from metamodal.hints import fits_type, type_name


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line, where it differs from ``--field-name``.

    Args:
        name: the flag (``"--episodes-count"``), or ``""`` for a positional argument.
        aliases: further spellings of the flag.
        metavar: the placeholder in ``--help``.
        pairs: the field is a ``dict[str, str]`` given as repeated ``KEY=VALUE`` flags.
        values: a Python literal in ``--help`` for the default, where ``repr`` misleads.
        least, most: the range of a number setting (a count that would otherwise allocate
            without end, a port), checked by `make`; NaN is outside every range.
    """

    name: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    pairs: bool = False
    values: str | None = None
    least: float | None = None
    most: float | None = None


def flag(default: Any = dataclasses.MISSING, **how: Any) -> Any:
    """A dataclass field with command-line `Flag` metadata (``flag(600, name="--episodes-count")``).
    A mutable default (list or dict) is copied for each instance."""
    metadata = {"flag": Flag(**how)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_ENTRY = re.compile(r"^(\s*)([A-Za-z_][\w, ]*):\s*(.*)$")


def field_help(cls: type) -> dict[str, str]:
    """The ``Args:`` entries of ``cls``'s docstring by field name (an entry ``a, b: text``
    documents both ``a`` and ``b``).

    Example:
        >>> from metamodal.api.settings import EpisodeShape
        >>> field_help(EpisodeShape)["shots"]
        'support samples per class.'
    """
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    try:
        start = lines.index("Args:") + 1
    except ValueError:
        return {}
    found: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break  # the next section
        match = _ENTRY.match(line)
        if match and (indent is None or len(match.group(1)) == indent):
            indent = len(match.group(1))
            names = [n.strip() for n in match.group(2).split(",")]
            for name in names:
                found[name] = match.group(3).strip()
        elif line.strip() and names:
            for name in names:
                found[name] = f"{found[name]} {line.strip()}"
    return found


def _number(value: float) -> str:
    """``1,000,000`` for an int, ``0.000976562`` / ``nan`` for a float."""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def make(cls: type, values: dict[str, Any], *, verb: str) -> Any:
    """``cls(**values)``; an unknown setting, or a value of the wrong type, outside the field's
    choices or outside its `Flag`'s ``least`` .. ``most``, or an empty list where the default
    is None (which would mean the default), is a `ConfigError` naming the setting.

    Example:
        >>> from metamodal.api.settings import EvalSettings
        >>> make(EvalSettings, {"split": "tset"}, verb="evaluate")
        Traceback (most recent call last):
        ...
        metamodal.errors.ConfigError: key split: evaluate: split = 'tset' is not \
typing.Literal['test', 'val', 'train', 'all'] (fix: e.g. split = 'test')
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{verb}: unknown setting(s) {', '.join(unknown)}",
                          column=unknown[0], fix=f"use {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if not fits_type(value, hints[name], paths=True):
            default = fields[name].default
            example = "" if default is dataclasses.MISSING else f"e.g. {name} = {default!r}"
            raise ConfigError(f"{verb}: {name} = {value!r} is not {hints[name]}", column=name,
                              fix=example or f"give {name} a value of type {hints[name]}")
        if fields[name].default is None and isinstance(value, list | tuple) and not value:
            raise ConfigError(f"{verb}: {name} = {value!r} names nothing", column=name,
                              fix=f"give {name} a value, or leave it out (None) for the default")
        how = fields[name].metadata.get("flag") or Flag()
        if value is not None and not ((how.least is None or value >= how.least)
                                      and (how.most is None or value <= how.most)):
            limits = [f"at least {_number(how.least)}" if how.least is not None else "",
                      f"at most {_number(how.most)}" if how.most is not None else ""]
            wanted = " and ".join(part for part in limits if part)
            raise ConfigError(f"{verb}: {name} = {_number(value)} is outside its range "
                              f"({wanted})", column=name, fix=f"give {name} {wanted}")
    values = {k: str(v) if isinstance(v, Path) and hints[k] in (str, str | None) else v
              for k, v in values.items()}
    return cls(**values)


Function = TypeVar("Function", bound=Callable[..., Any])


def argument_hints(function: Callable[..., Any], signature: inspect.Signature
                   ) -> dict[str, Any]:
    """The type hints of ``function``'s parameters, each resolved in the function's module as
    `typing.get_type_hints` does; one naming a type imported only for type checkers (kept out
    of start-up, e.g. `metamodal.train.trainer.StepCallback`) is left out."""
    hints = {}
    for name, parameter in signature.parameters.items():
        annotation = parameter.annotation
        if annotation is inspect.Parameter.empty:
            continue
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, function.__globals__)  # noqa: S307 (own source)
            except NameError:
                continue
        hints[name] = annotation
    return hints


def typed_arguments(verb: str) -> Callable[[Function], Function]:
    """Check a function's arguments against its type hints at each call (`fits_type`, a `Path`
    counting as a ``str``): one that does not fit, or an unknown keyword, is a `ConfigError`
    naming it, before the function runs (a TypeError or AttributeError came from deep inside,
    or after work was done). ``**options`` are left to the function.

    Example:
        >>> @typed_arguments("demo")
        ... def twice(ways: int = 5) -> int:
        ...     return 2 * ways
        >>> twice(ways=None)
        Traceback (most recent call last):
        ...
        metamodal.errors.ConfigError: key ways: demo: ways = None is not int (fix: give ways \
a value of type int)
    """
    def decorate(function: Function) -> Function:
        signature = inspect.signature(function)
        # resolved at the first call, once the function's module has defined every name
        hints_once = functools.cache(lambda: argument_hints(function, signature))

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError as error:
                raise ConfigError(f"{verb}: {error}", fix="see help(metamodal.api."
                                  f"{function.__name__})") from None
            hints = hints_once()
            for name, value in bound.arguments.items():
                kind = signature.parameters[name].kind
                if name in hints and kind not in (inspect.Parameter.VAR_KEYWORD,
                                                  inspect.Parameter.VAR_POSITIONAL) \
                        and not fits_type(value, hints[name], paths=True):
                    shown = repr(value) if len(repr(value)) <= 80 else type(value).__name__
                    raise ConfigError(f"{verb}: {name} = {shown} is not "
                                      f"{type_name(hints[name])}", column=name,
                                      fix=f"give {name} a value of type "
                                      f"{type_name(hints[name])}")
            return function(*args, **kwargs)

        return typing.cast(Function, checked)

    return decorate


def resolve(cls: type, settings: Any, options: dict[str, Any], *, verb: str) -> Any:
    """``settings`` (an instance of ``cls``, or None for its defaults) with ``options`` (field
    name -> value; None values are left out) applied; an unknown name is a `ConfigError`."""
    if settings is not None and not isinstance(settings, cls):
        raise ConfigError(f"{verb}: settings is a {type(settings).__name__}, not a "
                          f"{cls.__name__}", column="settings",
                          fix=f"pass a {cls.__name__}, or its fields as keywords")
    values = dataclasses.asdict(settings) if settings is not None else {}
    values.update({k: v for k, v in options.items() if v is not None})
    resolved = make(cls, values, verb=verb)
    if getattr(resolved, "json", None):
        check_json_target(resolved.json, resolved)
    return resolved


def run_files() -> frozenset[str]:
    """The files of a run directory that a result's JSON must never replace, named by the
    modules that write them (imported here, not at start-up: they load torch)."""
    from metamodal.runs.directory import CONFIG_FILE, PREPROCESSOR_FILE
    from metamodal.runs.support import SUPPORT_FILE
    from metamodal.runs.weights import WEIGHTS_FILE
    from metamodal.train.alignment import ALIGNMENT_FILE
    from metamodal.train.checkpoint import CHECKPOINT_FILE
    from metamodal.train.logger import METRICS_FILE
    from metamodal.train.multitask import TASKS_FILE
    from metamodal.train.transfer import TRANSFER_FILE

    return frozenset({CONFIG_FILE, PREPROCESSOR_FILE, WEIGHTS_FILE, METRICS_FILE,
                      CHECKPOINT_FILE, SUPPORT_FILE, ALIGNMENT_FILE, TASKS_FILE, TRANSFER_FILE})


def check_json_target(json: str | Path, settings: Any) -> None:
    """`ConfigError` (before any work) when ``--json`` would overwrite a file the verb reads or
    writes (the run, an input table, an episode file), a file of a run directory (its
    ``config.toml``, weights, ...: one of `run_files` inside a directory that the settings
    name, such as ``out``) or of a dataset (`check_output_file`)."""
    from metamodal.io import resolved

    target = resolved(json, "json")
    given: list[Path] = []
    for item in dataclasses.fields(settings):
        if item.name == "json":
            continue
        value = getattr(settings, item.name)
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str | Path) and str(v) and (item.name == "out" or Path(v).exists()):
                given.append(resolved(v, item.name))
    if target in given or (target.name in run_files()
                           and any(p in target.parents for p in given)):
        raise ConfigError(f"--json {json} would overwrite {target.name}, a file this command "
                          f"reads or a run's own", column="json",
                          fix="write the result to a file of its own, e.g. result.json")
    check_output_file(target, "json")


def check_output_file(target: str | Path, key: str) -> None:
    """`ConfigError` when the output file ``target`` would replace something that is not a
    regular file, a run's own file (one of `run_files` beside a ``config.toml``), a report's
    page (``index.html``, ``results.md`` or ``results.json`` beside a report's
    ``results.json``, such as a run's ``report/``) or a file that exists inside a dataset
    directory (one above it holds a ``dataset.toml``: its schema, table, splits or media)."""
    from metamodal.data.schema import dataset_holding
    from metamodal.evaluate.report.assemble import REPORT_PAGES, RESULTS_JSON
    from metamodal.io import check_file_target, resolved
    from metamodal.runs.directory import CONFIG_FILE

    target = resolved(target, key)
    check_file_target(target)
    if target.name in run_files() and (target.parent / CONFIG_FILE).exists():
        raise ConfigError(f"{target} is a run's own {target.name}; writing there would "
                          "replace it", column=key, fix="write to a file of its own")
    if target.name in REPORT_PAGES and (target.parent / RESULTS_JSON).is_file():
        raise ConfigError(f"{target} is a page of the report in {target.parent}; writing "
                          "there would replace it", column=key,
                          fix="write to a file of its own, outside the report's directory")
    if target.exists() and dataset_holding(target.parent) is not None:
        raise ConfigError(f"{target} is a file of a dataset directory; writing there would "
                          "replace it", column=key,
                          fix="write to a new file, outside the dataset directory")


def write_json(path: str | Path | None, result: Any) -> None:
    """Write ``result.to_dict()`` to ``path`` atomically (nothing when ``path`` is None)."""
    if path:
        from metamodal.io import atomic_write_json

        atomic_write_json(path, result.to_dict())


SHARED_VERBS = ("train", "eval")
"""The verbs that share their work out among the processes of a torchrun job."""


def check_torchrun_verb(verb: str) -> bool:
    """Refuse a verb that does not share its work out (`SHARED_VERBS`) started by torchrun
    in several processes: it would run once in each, every one writing the same outputs (one
    failing on another's, or replacing it).

    Returns:
        Whether this process prints the verb's result: it is the job's rank 0, or belongs to
        no torchrun job (``WORLD_SIZE`` unset, whatever ``RANK`` a scheduler left).

    Raises:
        ConfigError: keyed ``WORLD_SIZE`` (or another variable of torchrun's that is wrong).
    """
    from metamodal.train.distributed import Launch

    launch = Launch.from_environment()
    if launch is None:
        return True
    if launch.world_size > 1 and verb not in SHARED_VERBS:
        raise ConfigError(
            f"metamodal {verb} is not a torchrun job: only {' and '.join(SHARED_VERBS)} share "
            f"their work out, and {verb} would run once in each of the {launch.world_size} "
            "processes, every one writing the same outputs", column="WORLD_SIZE",
            fix=f"run `metamodal {verb}` once, without torchrun")
    return launch.rank == 0

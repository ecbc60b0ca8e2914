"""The ``metamodal`` command: parse the flags, call one `metamodal.api` function, print its
result (and write its JSON). Every flag comes from a field of a settings dataclass
(`metamodal.api.settings`, `metamodal.config.TrainConfig`), its help from the field's
documentation."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import tomllib
import types
import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

from metamodal import api
from metamodal.api.fields import Flag, check_torchrun_verb, field_help
from metamodal.config import TrainConfig
from metamodal.errors import ConfigError, MetamodalError

TRAIN_FLAGS = {
    "encoders": Flag("--encoder", metavar="MODALITY=NAME", pairs=True),
    "augment": Flag(metavar="KEY=VALUE", values="e.g. rotate_classes=true, image.rotate=10"),
    "align_objective": Flag(aliases=("--objective",)),
}
"""How the `TrainConfig` tables that have flags appear (the others are set in a config file)."""
ALIGN_KEYS = ("data", "modalities", "encoders", "fusion", "steps", "seed", "lr", "dim",
              "batch_size", "val_every", "device", "align_objective")
"""The `TrainConfig` keys that ``metamodal align`` takes as flags."""


def _unwrap(hint: Any) -> Any:
    """``X`` of ``X | None``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _help(cls: type) -> dict[str, str]:
    """Field documentation of ``cls`` and the classes it extends."""
    found: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            found.update(field_help(base))
    return found


def add_fields(parser: argparse.ArgumentParser, cls: type, *, only: Sequence[str] | None = None,
               flags: dict[str, Flag] | None = None, skip: Sequence[str] = (),
               required: bool = True) -> list[str]:
    """Add one argument per field of the dataclass ``cls`` (those in ``only``, if given);
    returns the field names added. Optional flags default to "not given", so that only what
    the user typed overrides the settings' own defaults; with ``required``, a text field whose
    default is empty must be given."""
    hints = typing.get_type_hints(cls)
    helps = _help(cls)
    added = []
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip:
            continue
        how = (flags or {}).get(f.name) or f.metadata.get("flag") or Flag()
        hint = _unwrap(hints[f.name])
        origin = typing.get_origin(hint)
        if origin is dict and not how.pairs and f.name != "augment":
            continue  # a table without a flag of its own: set it in a config file
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = helps.get(f.name, "").replace("`", "")
        if not isinstance(default, bool) and default not in (None, "", [], {}):
            text += f" (default {how.values or default})"
        if hint is bool and default is True:
            text = f"turn off: {text}"
        kwargs: dict[str, Any] = {"help": text, "dest": f.name}
        if how.name == "":
            del kwargs["dest"]
            parser.add_argument(f.name, help=text, metavar=f.name.upper().replace("_", "-"),
                                **({"choices": typing.get_args(hint)}
                                   if typing.get_origin(hint) is Literal else {}),
                                **({"nargs": "+", "action": "extend"} if origin is list else {}))
            added.append(f.name)
            continue
        negated = hint is bool and default is True
        names = [how.name or ("--no-" if negated else "--") + f.name.replace("_", "-"),
                 *how.aliases]
        kwargs["default"] = argparse.SUPPRESS
        if hint is bool:  # a default of None keeps what is set elsewhere: --x and --no-x
            kwargs["action"] = {True: "store_false", False: "store_true"}.get(
                default, argparse.BooleanOptionalAction)
        elif origin is list or origin is dict or f.name == "augment":
            kwargs.update(action="append", metavar=how.metavar or "A,B")
        elif origin is Literal:
            kwargs.update(choices=typing.get_args(hint), type=type(typing.get_args(hint)[0]))
        else:
            kwargs.update(type=hint, metavar=how.metavar)
            if required and default == "" and hint is str:
                kwargs["required"] = True
        parser.add_argument(*names, **kwargs)
        added.append(f.name)
    return added


def _pairs(items: list[str], name: str, form: str) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` ``items`` of the flag ``name`` (``form``: its metavar, as
    ``NAME=HEX``) as a table."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{name} expects {form}, got {item!r}", column=name,
                              fix=f"give {name} {form}")
        if key.strip() in result:  # the later one replaced the earlier without a word
            raise ConfigError(f"{name} names {key.strip()!r} twice", column=name,
                              fix=f"give each {form.split('=')[0]} once")
        result[key.strip()] = value.strip()
    return result


def _augment(items: list[str]) -> dict[str, Any]:
    """``--augment KEY=VALUE`` flags as an ``augment`` table: ``KEY`` is an option
    (``rotate_classes``) or ``MODALITY.OPTION`` (``image.rotate``); ``VALUE`` is read as a TOML
    value (``10``, ``true``, ``[0, 1]``), else kept as a string (``horizontal``)."""
    table: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path) or len(path) > 2:
            raise ConfigError(f"--augment expects KEY=VALUE or MODALITY.OPTION=VALUE, got "
                              f"{item!r}", column="--augment",
                              fix="e.g. --augment image.rotate=10 --augment rotate_classes=true")
        where = "augment." + ".".join(path)
        if len(text) > 1000:
            raise ConfigError(f"--augment {key}: a value of {len(text)} characters",
                              column=where, fix="give a number, a boolean, a word or a short list")
        try:
            value: Any = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        except (ValueError, RecursionError):  # integers beyond Python's digit limit, nesting
            raise ConfigError(f"--augment {key}: the value cannot be read", column=where,
                              fix="give a number, a boolean, a word or a short list") from None
        if len(path) == 1:
            table[path[0]] = value
        else:
            table.setdefault(path[0], {})[path[1]] = value
    return table


def _list(items: list[str], kind: type, name: str) -> list[Any]:
    """Repeated or comma-separated ``items`` of a list flag, each read as ``kind``."""
    values = [v.strip() for item in items for v in item.split(",") if v.strip()]
    example = f"e.g. {name} {'0.5,1' if kind is float else '1,5' if kind is int else 'a,b'}"
    if not values:
        raise ConfigError(f"{name} was given no values", column=name,
                          fix=f"{example}, or leave the flag out")
    read = []
    for text in values:
        try:
            read.append(kind(text))
        except ValueError:
            raise ConfigError(f"{name} expects {kind.__name__} values separated by commas, got "
                              f"{text!r}", column=name, fix=example) from None
    return read


def collect(args: argparse.Namespace, cls: type, names: Sequence[str]) -> dict[str, Any]:
    """The values the user gave for the fields ``names`` of ``cls``, typed as the fields."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f.metadata["flag"] for f in dataclasses.fields(cls)
              if "flag" in f.metadata}
    values: dict[str, Any] = {}
    for name in names:
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        hint = _unwrap(hints[name])
        if name == "augment":
            value = _augment(value)
        elif typing.get_origin(hint) is dict:
            how = fields.get(name) or TRAIN_FLAGS.get(name) or Flag()
            value = _pairs(value, how.name or "--" + name.replace("_", "-"),
                           how.metavar or "KEY=VALUE")
        elif typing.get_origin(hint) is list:
            value = _list(value, typing.get_args(hint)[0], "--" + name.replace("_", "-"))
        values[name] = value
    return values


def _verb(sub: Any, name: str, text: str, call: Callable[[argparse.Namespace], Any],
          *parts: tuple[type, dict[str, Any]]) -> argparse.ArgumentParser:
    """A sub-command whose arguments are the fields of ``parts`` (class, `add_fields` options)
    and whose action is ``call(args)``."""
    parser = sub.add_parser(name, help=text, description=text)
    fields = [(cls, add_fields(parser, cls, **options)) for cls, options in parts]
    parser.set_defaults(call=call, fields=fields)
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """Every field the user gave, across the verb's settings classes."""
    values: dict[str, Any] = {}
    for cls, names in args.fields:
        values.update(collect(args, cls, names))
    return values


def _take(values: dict[str, Any], cls: type) -> Any:
    """An instance of the dataclass ``cls`` from the ``values`` that are its fields (taken out)."""
    return cls(**{k: values.pop(k) for k in list(values) if k in cls.__dataclass_fields__})


def _train(args: argparse.Namespace, verb: Callable[..., Any]) -> Any:
    values = _given(args)
    learner = _take(values, api.LearnerFlags).options()
    align = _take(values, api.AlignFlags).options()
    fusion = _take(values, api.FusionFlags).options()
    for key, options in (("learner_options", learner), ("align_options", align),
                         ("fusion_options", fusion)):
        if options:
            values[key] = options
    return verb(**values)


def _import(args: argparse.Namespace) -> Any:
    return api.import_dataset(args.layout, **_given(args))


def _cache(args: argparse.Namespace) -> Any:
    return (api.cache_info if args.action == "info" else api.clear_cache)(**_given(args))


def _demo(args: argparse.Namespace) -> Any:
    return api.demo(**_given(args), echo=print)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metamodal`` command."""
    parser = argparse.ArgumentParser(
        prog="metamodal",
        description="Few-shot learning on multimodal data: meta-train, evaluate, predict.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _verb(sub, "demo", "the whole pipeline on the embedded dataset", _demo,
          (api.DemoRunSettings, {}), (api.DemoSettings, {}))
    p = sub.add_parser("inspect", help="validate a dataset directory and describe it")
    p.add_argument("directory", metavar="DIR", help="dataset directory")
    p.add_argument("--json", help="also write the findings as JSON")
    p.set_defaults(call=lambda a: api.inspect(a.directory, json=a.json))
    _verb(sub, "make-synthetic", "write the embedded five-modality dataset",
          lambda a: api.make_synthetic(**_given(a)), (api.SyntheticSettings, {}))
    p = sub.add_parser("import", help="import data in a common layout as a dataset directory")
    layouts = p.add_subparsers(dest="layout", required=True, metavar="LAYOUT")
    for layout, (cls, text) in api.IMPORT_LAYOUTS.items():
        _verb(layouts, layout, text, _import, (cls, {}))
    _verb(sub, "download", "download a public dataset, verify, unpack, import",
          lambda a: api.download(**_given(a)), (api.DownloadSettings, {}))
    _verb(sub, "episodes", "write an episode file of a published protocol",
          lambda a: api.episodes(**_given(a)), (api.EpisodesSettings, {}))
    _verb(sub, "train", "meta-train a model; writes a run directory",
          lambda a: _train(a, api.train), (api.RunSettings, {}),
          (TrainConfig, {"flags": TRAIN_FLAGS, "skip": ("align_only", "world_size"),
                         "required": False}),
          (api.LearnerFlags, {}), (api.AlignFlags, {}), (api.FusionFlags, {}))
    _verb(sub, "align", "align the encoders of two or more modalities (contrastive or "
          "regression); writes a run directory", lambda a: _train(a, api.align),
          (api.RunSettings, {}),
          (TrainConfig, {"flags": TRAIN_FLAGS, "only": ALIGN_KEYS, "required": False}),
          (api.AlignFlags, {}))
    _verb(sub, "retrieve", "cross-modal retrieval of an aligned run: Recall@K and median "
          "rank both ways, with random and linear-map baselines",
          lambda a: api.retrieve(**_given(a)), (api.RetrieveSettings, {}))
    _verb(sub, "zero-shot", "zero-shot (from class descriptions) and few+zero-shot (AM3) "
          "accuracy on the run's test classes", lambda a: api.zero_shot(**_given(a)),
          (api.ZeroShotSettings, {}))
    _verb(sub, "eval", "evaluate a run on test episodes", lambda a: api.evaluate(**_given(a)),
          (api.EvalSettings, {}))
    _verb(sub, "predict", "classify query samples from a labelled support set",
          lambda a: api.predict(**_given(a)), (api.PredictSettings, {}))
    _verb(sub, "search", "search over learners, fusions, encoders and hyper-parameters "
          "(Optuna: TPE, random or grid); every trial trains a run and is scored on fixed "
          "validation episodes", lambda a: _train(a, api.search), (api.SearchSettings, {}),
          (TrainConfig, {"flags": TRAIN_FLAGS, "skip": ("align_only", "config", "world_size"),
                         "required": False}),
          (api.LearnerFlags, {}), (api.AlignFlags, {}))
    _verb(sub, "serve", "serve a run: an HTTP API and a web page where classes are defined "
          "by a few examples and new items classified", lambda a: api.serve(**_given(a)),
          (api.ServeSettings, {}))
    _verb(sub, "report", "write a run's report (plots, tables, index.html)",
          lambda a: api.report(**_given(a)), (api.ReportSettings, {}))
    _verb(sub, "export", "write a run's encoders and fusion as an ONNX or TorchScript file "
          "(preprocessed inputs -> embeddings) and a JSON of its preprocessing and prototype "
          "rule", lambda a: api.export(**_given(a)), (api.ExportSettings, {}))
    _verb(sub, "ensemble", "combine trained runs into one ensemble run (mean of calibrated "
          "probabilities, or stacked weights fitted on validation episodes)",
          lambda a: api.ensemble(**_given(a)), (api.EnsembleSettings, {}))
    p = _verb(sub, "cache", "show or empty the feature cache of pretrained encoders", _cache,
              (api.CacheSettings, {}))
    p.add_argument("action", choices=("info", "clear"),
                   help="info: location, size, entries; clear: delete the cached features")
    return parser


_SHOWN: set[str] = set()


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: Any = None, line: str | None = None) -> None:
    """`warnings.showwarning` on the command line: ``warning: MESSAGE`` on stderr, each
    message once, without the library's source line it was raised at (``-v`` shows it)."""
    text = str(message)
    if text not in _SHOWN:
        _SHOWN.add(text)
        print(f"warning: {text}", file=sys.stderr if file is None else file)


class Terminated(BaseException):
    """SIGTERM or SIGHUP on the command line, raised where the command is, so that what it
    has begun is cleaned up (temporary and staging folders) as after Ctrl-C."""


def _terminate(signum: int, frame: Any) -> None:  # noqa: ARG001 - a signal handler's signature
    raise Terminated(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metamodal`` command; returns the exit status (2 for a typed
    error, 1 when ``inspect`` finds a problem, 130 after Ctrl-C, 143 after SIGTERM / SIGHUP)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if argv is None and not args.verbose:  # the command line: a warning's words, once each
        warnings.showwarning = _show_warning
    if argv is None and threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):  # no SIGHUP on Windows
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), _terminate)
    try:
        prints = check_torchrun_verb(args.command)  # under torchrun, rank 0 prints
        result = args.call(args)
        if prints:
            print(result.table(), flush=True)
    except MetamodalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated as stop:
        print(f"terminated ({stop})", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (`metamodal cache info | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say
        return 141
    return 0 if getattr(result, "ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The run directory contract: write what a trained model needs, and load it back.

A run directory holds ``config.toml`` (training config, model spec, class split, dataset
schema), ``preprocessor.json`` (fitted loaders: vocabulary, normalisation statistics),
``model.safetensors``, ``metrics.jsonl``, ``tensorboard/`` and ``report/``. It is all that
``eval``, ``predict`` and `FewShotClassifier.load` need.

An ensemble run (written by ``metamodal ensemble``) has no ``[model]`` table: its
``config.toml`` holds an ``[ensemble]`` table (method, member directories, fitted temperatures
and weights, joint transduction), each member's ``config.toml`` and ``preprocessor.json``
(what rebuilds its model) are copied under ``members/0``, ``members/1``, ..., its
``model.safetensors`` holds every member's weights (``members.N.`` prefixes), and its
``preprocessor.json`` decodes the union of their modalities. `load_run` returns it as a `Run`
whose model is an `metamodal.model.EnsembleModel`.

A run is **finished** when the last record training writes is in its ``metrics.jsonl``: a line
with ``"event": "end"`` (every run of ``metamodal train`` and ``metamodal align`` has one).
Before it, ``model.safetensors`` may already hold the best validation weights so far
(validation can come before the first checkpoint): such a run is unfinished, and `load_run`
refuses it (`check_finished`). A directory without ``metrics.jsonl`` (what
`metamodal.classifier.FewShotClassifier.save` writes, an ensemble run, a run whose log was
deleted) cannot be told by its log: it counts as finished when it holds ``config.toml`` and
``model.safetensors`` and no ``checkpoint.pt`` (`training_status`).
"""

from __future__ import annotations

import os
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import tomli_w

from metamodal.config import LIMITS, TestTime, TrainConfig, resolve_device
from metamodal.data.loaders.base import loaders
from metamodal.data.preprocess import Preprocessor, create_loader
from metamodal.data.schema import DatasetSchema
from metamodal.data.splits import ClassSplit
from metamodal.encoders.features import preprocessor_from_state
from metamodal.errors import ConfigError, LocatedError, MetamodalError, RunError
from metamodal.hints import fits_type, type_name
from metamodal.io import (
    ParseError,
    atomic_write_json,
    atomic_write_text,
    loads_json,
    loads_toml,
    resolved,
)
from metamodal.model import EnsembleModel, FewShotModel
from metamodal.model.ensemble import check_joint_steps
from metamodal.model.freeze import freeze
from metamodal.model.test_time import apply_test_time, unhonoured_by
from metamodal.runs.weights import WEIGHTS_FILE, load_weights
from metamodal.version import __version__

CONFIG_FILE = "config.toml"
PREPROCESSOR_FILE = "preprocessor.json"
MEMBERS_DIR = "members"
"""Where an ensemble run keeps its member runs (``members/0``, ``members/1``, ...)."""
METRICS_FILE = "metrics.jsonl"
"""The training log, one JSON record a line (written by `metamodal.train.logger`)."""
CHECKPOINT_FILE = "checkpoint.pt"
"""The resumable training state (written by `metamodal.train.checkpoint`)."""
END_EVENT = "end"
"""The ``event`` of the record training writes last, once the run is complete."""

TrainingStatus = Literal["finished", "resumable", "unresumable", "none"]
"""What a directory holds (`training_status`)."""


def training_ended(run_dir: str | Path) -> bool:
    """Whether ``run_dir``'s ``metrics.jsonl`` records the end of training (a line with
    ``"event": "end"``; damaged lines are skipped; no file: False).

    Example:
        >>> import tempfile
        >>> training_ended(tempfile.mkdtemp())
        False
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return False
    for line in reversed(path.read_text(errors="replace").splitlines()):
        try:
            record = loads_json(line)
        except ParseError:
            continue
        if isinstance(record, dict) and record.get("event") == END_EVENT:
            return True
    return False


def training_status(run_dir: str | Path) -> TrainingStatus:
    """What ``run_dir`` holds (see the module's documentation):

    - ``finished``: ``metrics.jsonl`` records the end of training; or, without
      ``metrics.jsonl``, ``config.toml`` and ``model.safetensors`` are there and no
      ``checkpoint.pt``;
    - ``resumable``: training did not end (killed, failed or still going) and
      ``checkpoint.pt`` is there: ``train --resume`` continues it;
    - ``unresumable``: ``metrics.jsonl`` is there without the end record and no
      ``checkpoint.pt``: training stopped (or is still going) before its first checkpoint,
      and can only start again (``train --overwrite``);
    - ``none``: no run (a missing or empty directory, or one without log or weights).

    Example:
        >>> import tempfile
        >>> training_status(tempfile.mkdtemp())
        'none'
    """
    run_dir = Path(run_dir)
    if training_ended(run_dir):
        return "finished"
    if (run_dir / CHECKPOINT_FILE).exists():
        return "resumable"
    if (run_dir / METRICS_FILE).is_file():
        return "unresumable"
    if (run_dir / CONFIG_FILE).is_file() and (run_dir / WEIGHTS_FILE).is_file():
        return "finished"
    return "none"


def check_finished(run_dir: str | Path) -> None:
    """Refuse a run whose training did not finish (`training_status` ``resumable`` or
    ``unresumable``): its weights are those of part of a training.

    Raises:
        RunError: naming the run directory, with the way to finish it.
    """
    status = training_status(run_dir)
    if status not in ("resumable", "unresumable"):
        return
    message = (f"the run's training did not finish ({METRICS_FILE} has no end record: it was "
               "killed, failed or is still training), so its weights are those of part of a "
               "training")
    if status == "resumable":
        raise RunError(message, file=run_dir,
                       fix=f"let it finish, or continue it from its {CHECKPOINT_FILE}: the same "
                       "`metamodal train` command with --resume (or train it again with "
                       "--overwrite)")
    raise RunError(f"{message}; it stopped before its first checkpoint and cannot be resumed",
                   file=run_dir,
                   fix="let it finish if it is still training; otherwise train it again: the "
                   "same `metamodal train` command with --overwrite (a lower "
                   "--checkpoint-every makes a later kill resumable)")


@dataclass
class Run:
    """A trained run loaded from its directory.

    Args:
        path: the run directory.
        config: the training configuration, with the test-time settings the model was
            loaded with (`load_run`'s ``test_time``).
        model: the model with its trained weights, in eval mode.
        preprocessor: the fitted preprocessor that decodes new samples as in training.
        split: the class split used in training.
        schema: the training dataset's schema.
        ensemble: for an ensemble run, its ``[ensemble]`` table (method, members,
            temperatures, weights, validation); None for a trained run. ``config`` is then
            the first member's training configuration (the data and split are shared).
    """

    path: Path
    config: TrainConfig
    model: FewShotModel | EnsembleModel
    preprocessor: Preprocessor
    split: ClassSplit
    schema: DatasetSchema
    ensemble: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """``learner+fusion``, or ``ensemble-METHOD(member, ...)`` for an ensemble
        (``ensemble-METHOD+joint(...)`` where its members' transduction steps are taken
        jointly: `metamodal.model.EnsembleModel.refines_jointly`, which needs a member with
        prototypes that takes steps)."""
        if self.ensemble is not None:
            names = self.ensemble.get("names")  # shown only: whatever a damaged table holds
            shown = ", ".join(map(str, names)) if isinstance(names, list) else ""
            joint = "+joint" if getattr(self.model, "refines_jointly", False) else ""
            return f"ensemble-{self.ensemble.get('method')}{joint}({shown})"
        return f"{self.config.learner}+{self.config.fusion}"


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def _write_config(run_dir: Path, document: dict[str, Any]) -> None:
    """Write ``document`` as the run's ``config.toml`` (atomically; None values left out)."""
    atomic_write_text(run_dir / CONFIG_FILE, tomli_w.dumps(_drop_none(document)))


def write_run_files(
    run_dir: str | Path,
    *,
    config: TrainConfig,
    model_spec: dict[str, Any],
    split: ClassSplit,
    schema: DatasetSchema,
    preprocessor: Preprocessor,
    alignment: dict[str, Any] | None = None,
) -> None:
    """Write ``config.toml`` and ``preprocessor.json`` of a run (atomically); ``alignment``
    (the options of a trained `metamodal.mapping.Aligner`) goes to its ``[alignment]`` table."""
    run_dir = Path(run_dir)
    document = {
        "metamodal_version": __version__,
        "train": config.to_dict(),
        "model": model_spec,
        "split": split.to_dict(),
        "dataset": schema.to_dict(),
    }
    if alignment:
        document["alignment"] = dict(alignment)
    _write_config(run_dir, document)
    atomic_write_json(run_dir / PREPROCESSOR_FILE, preprocessor.state_dict())


def write_ensemble_files(
    run_dir: str | Path,
    *,
    train: dict[str, Any],
    ensemble: dict[str, Any],
    split: ClassSplit,
    schema: DatasetSchema,
    preprocessor: Preprocessor,
) -> None:
    """Write the ``config.toml`` and ``preprocessor.json`` of an ensemble run (atomically):
    ``train`` is the first member's ``[train]`` table, ``ensemble`` the ``[ensemble]`` table,
    ``preprocessor`` decodes the union of the members' modalities. The members' files and
    the weights (`metamodal.runs.weights.save_weights` of the `EnsembleModel`) are written by
    the caller."""
    run_dir = Path(run_dir)
    document = {
        "metamodal_version": __version__,
        "train": dict(train),
        "ensemble": dict(ensemble),
        "split": split.to_dict(),
        "dataset": schema.to_dict(),
    }
    atomic_write_json(run_dir / PREPROCESSOR_FILE, preprocessor.state_dict())
    _write_config(run_dir, document)


def write_member_config(member_dir: str | Path, run: Run) -> None:
    """Write ``config.toml`` of an ensemble's member ``run`` into ``member_dir``
    (atomically): the run's own, with ``run.config`` as its ``[train]`` table, so that the
    member keeps the test-time settings it was loaded (and the ensemble fitted) with."""
    document = read_run_config(run.path)
    document["train"] = run.config.to_dict()
    _write_config(Path(member_dir), document)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.toml`` of a run; `RunError` naming the file (and the key) when it
    is missing, corrupt, lacks a section or holds an unknown or mistyped training setting."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError("run directory not found", file=run_dir,
                       fix="pass the --out directory of a finished `metamodal train`")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunError("not a run directory: config.toml is missing", file=path,
                       fix="pass the --out directory of a finished `metamodal train`")
    try:
        document = loads_toml(path.read_text(encoding="utf-8"))
    except (ParseError, UnicodeDecodeError) as error:
        raise RunError(f"config.toml is corrupt ({error})", file=path,
                       fix="re-train the run, or restore its config.toml") from None
    tables = ("train", "ensemble", "split", "dataset") if "ensemble" in document else (
        "train", "model", "split", "dataset")
    for key in tables:
        if not isinstance(document.get(key), dict):
            raise RunError(f"config.toml lacks the [{key}] table", file=path, column=key,
                           fix="re-train the run, or restore its config.toml")
    try:
        TrainConfig.from_dict(document["train"], source=str(path)).validate(source=str(path))
    except ConfigError as error:
        raise RunError(error.message, file=path, column=f"train.{error.column}",
                       fix=error.fix or "restore the run's config.toml") from None
    return document


def check_not_inside_run(path: str | Path, key: str, *, itself: bool = False) -> None:
    """`ConfigError` keyed ``key`` when the output directory ``path`` lies inside a run
    directory (or, with ``itself``, is one): a folder above it holds a run's ``config.toml``
    beside its ``model.safetensors`` or ``checkpoint.pt``. Training that run again
    (``--overwrite``) or writing a new ensemble there replaces it whole, with whatever lies
    inside.

    Example:
        >>> import tempfile
        >>> check_not_inside_run(Path(tempfile.mkdtemp()) / "runs" / "a", "out")
    """
    place = resolved(path, key)
    for folder in (place, *place.parents) if itself else place.parents:
        if (folder / CONFIG_FILE).is_file() and ((folder / WEIGHTS_FILE).is_file()
                                                 or (folder / CHECKPOINT_FILE).is_file()):
            where = "is" if folder == place else "lies inside"
            raise ConfigError(
                f"{path} {where} the run directory {folder}, which training that run "
                "again (--overwrite) or a new ensemble written there replaces whole, with "
                "everything inside it", column=key,
                fix=f"write to a directory outside the run, e.g. one beside it in "
                f"{folder.parent}")


def load_run(run_dir: str | Path, *, device: str = "cpu",
             test_time: Mapping[str, float | None] | None = None,
             joint_transduction: bool | None = None) -> Run:
    """Load a run directory written by `metamodal.train.Trainer`.

    ``test_time`` replaces the run's test-time settings (``tta``, ``transduction``,
    ``transduction_balance``, ``fusion_confidence``, ``fusion_reliability``; a None value
    keeps the run's; `metamodal.model.test_time`); of an ensemble, in every member that can
    honour them (`members_with_test_time`). ``joint_transduction`` (not None) takes an
    ensemble's transduction steps jointly or not (a `ConfigError` for a run that is not an
    ensemble).

    Raises `RunError` naming the file (and the key or tensor) when the directory, its config,
    preprocessor or weights are missing, corrupt or do not fit together, or naming the
    directory when its training did not finish (`check_finished`), and `ConfigError`
    (key ``device``) when ``device`` names one this machine lacks (``cuda`` without CUDA).

    Example:
        >>> run = load_run("runs/demo")  # doctest: +SKIP
        >>> run.model.modalities  # doctest: +SKIP
        ['image', 'caption']
    """
    if not isinstance(run_dir, str | os.PathLike):
        raise ConfigError(f"a run directory is a path, not a {type(run_dir).__name__}",
                          column="run", fix="give the run directory's path")
    if joint_transduction is not None and not isinstance(joint_transduction, bool):
        raise ConfigError(f"joint_transduction must be true, false or None, not "
                          f"{joint_transduction!r}", column="joint_transduction",
                          fix="give True or False (or None: as the ensemble was made)")
    run_dir = Path(run_dir)
    document = read_run_config(run_dir)
    check_finished(run_dir)
    config_path = run_dir / CONFIG_FILE
    preprocessor = read_preprocessor(run_dir / PREPROCESSOR_FILE)
    changes = {k: v for k, v in (test_time or {}).items() if v is not None}
    if "ensemble" in document:
        run = _load_ensemble(run_dir, document, preprocessor, device, changes)
        return run if joint_transduction is None else _joint(run, joint_transduction)
    if joint_transduction is not None:
        raise ConfigError("joint transduction is a setting of ensembles, and this run is one "
                          "network", file=run_dir, column="joint_transduction",
                          fix="give an ensemble run (`metamodal ensemble`), or leave out "
                          "--joint-transduction / --no-joint-transduction")
    model, config = _build_model(run_dir, document, preprocessor, changes)
    target = resolve_device(str(device))
    load_weights(run_dir / WEIGHTS_FILE, model)
    model.to(target).eval()
    split, schema = _split_and_schema(document, config_path)
    return Run(
        path=run_dir,
        config=config,
        model=model,
        preprocessor=preprocessor,
        split=split,
        schema=schema,
    )


def _build_model(run_dir: Path, document: dict[str, Any], preprocessor: Preprocessor,
                 test_time: Mapping[str, float]) -> tuple[FewShotModel, TrainConfig]:
    """The untrained model ``config.toml``'s ``[model]`` table describes, checked against the
    run's preprocessor, with the run's test-time settings updated by ``test_time``, and the
    training configuration with those settings; `RunError` naming the file and key when they
    do not fit, `ConfigError` when ``test_time`` does not."""
    config_path = run_dir / CONFIG_FILE
    hints = typing.get_type_hints(FewShotModel.build)
    for key, value in document["model"].items():
        if key in hints and not fits_type(value, hints[key]):
            raise RunError(f"config.toml's [model] {key} = {value!r} is not of type "
                           f"{type_name(hints[key])}", file=config_path, column=f"model.{key}",
                           fix="restore the run's config.toml")
    if not 1 <= document["model"].get("dim", 1) <= LIMITS["dim"]:
        raise RunError(f"config.toml's [model] dim is not in 1..{LIMITS['dim']}",
                       file=config_path, column="model.dim", fix="restore the run's config.toml")
    # checked before building: the sizes in input_info decide what is allocated
    kinds = document["model"].get("kinds") or {}
    if set(kinds) - set(preprocessor.modalities):
        raise RunError(f"the model uses modalities {sorted(kinds)} but the "
                       f"preprocessor decodes {sorted(preprocessor.modalities)}",
                       file=run_dir / PREPROCESSOR_FILE, column="modalities",
                       fix="restore the preprocessor.json that belongs to this run, or re-train")
    info = preprocessor.input_info()
    expected = document["model"].get("input_info") or {}
    for name in kinds:
        wanted = expected.get(name)
        if wanted is not None and info[name] != wanted:
            raise RunError(
                f"preprocessor.json decodes modality {name!r} to {info[name]}, but "
                f"config.toml's [model.input_info.{name}] says the model was built for "
                f"{wanted}: one of the two files was changed", file=config_path,
                column=f"model.input_info.{name}",
                fix="restore whichever of config.toml and preprocessor.json was edited (both "
                "belong to the run), or re-train")
    try:
        model = FewShotModel.build(**document["model"])
    except TypeError as error:
        raise RunError(f"config.toml's [model] table does not describe a model ({error})",
                       file=config_path, column="model",
                       fix="restore the run's config.toml") from None
    except ConfigError as error:
        raise RunError(f"config.toml describes a model that cannot be built: {error.message}",
                       file=config_path,
                       column=f"model.{error.column}" if error.column else "model",
                       fix=error.fix or "restore the run's config.toml") from None
    train = TrainConfig.from_dict(document["train"], source=str(config_path))
    if test_time:  # the run's own settings were checked with its config
        train = train.updated(dict(test_time))
    # an override the run cannot honour names the run (one member of an ensemble, say)
    apply_test_time(model, train, preprocessor, source=str(run_dir if test_time else config_path))
    try:  # weights frozen in training stay out of the MAML family's inner loop here too
        freeze(model, list(document.get("train", {}).get("freeze") or []),
               source=str(config_path))
    except ConfigError as error:
        raise RunError(error.message, file=config_path, column="train.freeze",
                       fix="restore the run's config.toml") from None
    return model, train


def _joint(run: Run, joint: bool) -> Run:
    """``run``, an ensemble just loaded, with its members' transduction steps taken jointly
    or not: its model changed in place, and its ``[ensemble]`` table's copy with it; the
    temperatures and weights stay as fitted.

    Raises:
        ConfigError: keyed ``joint_transduction``: ``joint`` where no member with prototypes
            takes steps (`check_joint_steps`).
    """
    if joint:
        names = run.ensemble.get("names")
        count = len(run.model.members)
        shown = names if isinstance(names, list) and len(names) == count else ["?"] * count
        check_joint_steps(run.model.members,
                          [f"member {k} ({name})" for k, name in enumerate(shown)])
    run.model.joint_transduction = joint
    return replace(run, ensemble={**run.ensemble, "joint_transduction": joint})


def _load_ensemble(run_dir: Path, document: dict[str, Any], preprocessor: Preprocessor,
                   device: str, test_time: Mapping[str, float]) -> Run:
    """The `Run` of an ensemble run directory: each member's model built from
    ``members/N`` (its config and preprocessor, checked against the ensemble's split and
    preprocessor), the `EnsembleModel` of them with the ``[ensemble]`` table's method,
    temperatures, weights and joint transduction, and every member's weights from the ensemble's own
    ``model.safetensors``."""
    config_path = run_dir / CONFIG_FILE
    table = document["ensemble"]
    members = table.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(
            isinstance(m, str) for m in members):
        raise RunError("config.toml's [ensemble] table lacks its list of members",
                       file=config_path, column="ensemble.members",
                       fix="re-run `metamodal ensemble`")
    split, schema = _split_and_schema(document, config_path)
    state = preprocessor.state_dict()
    runs: list[Run] = []
    for k, member in enumerate(members):
        if member != f"{MEMBERS_DIR}/{k}":
            raise RunError(f"member {k} is {member!r}, not {MEMBERS_DIR}/{k} inside the run",
                           file=config_path, column=f"ensemble.members[{k}]",
                           fix="re-run `metamodal ensemble`; its members are copied inside")
        member_dir = run_dir / member
        if not resolved(member_dir, f"ensemble.members[{k}]").is_relative_to(
                resolved(run_dir, "run")):
            raise RunError(f"member {k} ({member}) is a link that leads out of the ensemble",
                           file=member_dir, column=f"ensemble.members[{k}]",
                           fix="re-run `metamodal ensemble`; its members are copied inside")
        try:
            own_document = read_run_config(member_dir)
            own = read_preprocessor(member_dir / PREPROCESSOR_FILE)
        except RunError as error:  # its fix would ask for a run of `metamodal train`
            raise RunError(f"member {k}: {error.message}", file=error.file, row=error.row,
                           column=error.column, fix="re-run `metamodal ensemble`; its "
                           f"members are copied inside it, in {MEMBERS_DIR}/N") from None
        if "ensemble" in own_document:
            raise RunError("a member of an ensemble is itself an ensemble",
                           file=member_dir / CONFIG_FILE, fix="combine the trained runs directly")
        own_split, own_schema = _split_and_schema(own_document, member_dir / CONFIG_FILE)
        if own_split.to_dict() != split.to_dict():
            raise RunError(f"member {k}'s class split differs from the ensemble's",
                           file=member_dir / CONFIG_FILE, column="split",
                           fix="re-run `metamodal ensemble`")
        for name in own.modalities:
            if name not in state["loaders"] or (
                    state["loaders"][name] != own.state_dict()["loaders"][name]):
                raise RunError(f"the ensemble decodes modality {name!r} differently from "
                               f"member {k}", file=run_dir / PREPROCESSOR_FILE,
                               column=f"loaders.{name}", fix="re-run `metamodal ensemble`")
        member_model, member_config = _build_model(member_dir, own_document, own, {})
        runs.append(Run(path=member_dir, config=member_config, model=member_model,
                        preprocessor=own, split=own_split, schema=own_schema))
    runs = members_with_test_time(runs, test_time)
    try:
        model = EnsembleModel([run.model for run in runs], table.get("method", "mean"),
                              table.get("temperatures"), table.get("weights"))
    except (ConfigError, TypeError, ValueError, RuntimeError) as error:
        message = error.message if isinstance(error, LocatedError) else str(error)
        key = getattr(error, "column", None) or "method"
        raise RunError(f"config.toml's [ensemble] table is invalid: {message}",
                       file=config_path, column=f"ensemble.{key}",
                       fix="re-run `metamodal ensemble`") from None
    joint = table.get("joint_transduction", False)  # absent in ensembles written before it
    if not isinstance(joint, bool):
        raise RunError(f"config.toml's [ensemble] joint_transduction = {joint!r} is not true "
                       "or false", file=config_path, column="ensemble.joint_transduction",
                       fix="re-run `metamodal ensemble`")
    model.joint_transduction = joint
    try:
        load_weights(run_dir / WEIGHTS_FILE, model)
    except RunError as error:  # its fix would ask for training: the weights are its members'
        raise RunError(error.message, file=error.file, row=error.row, column=error.column,
                       fix="re-run `metamodal ensemble`, or restore its model.safetensors"
                       ) from None
    model.to(resolve_device(str(device))).eval()
    config = runs[0].config.updated({"tasks": None, "task_weights": None})  # the members'
    # predictions of the main label are combined, whatever tasks they were trained on
    return Run(path=run_dir, config=config, model=model, preprocessor=preprocessor,
               split=split, schema=schema, ensemble=dict(table))


def members_with_test_time(members: Sequence[Run],
                           test_time: Mapping[str, Any] | None) -> list[Run]:
    """The members of an ensemble with the test-time settings ``test_time`` (`load_run`'s:
    None values keep each member's own) where each can honour them: a setting a member
    cannot honour (`metamodal.model.test_time.unhonoured_settings`: ``transduction`` for a
    learner without prototypes, ``tta`` for one that adapts per task or a run without
    ``[augment]`` tables, ``fusion_confidence`` without late fusion, ...) keeps that
    member's own value, and the member still votes with its own logits. The members'
    models are changed in place; each returned `Run`'s ``config`` holds its settings.

    Raises:
        ConfigError: keyed by the setting: a value out of range, or a setting that no member
            can honour (every member and why named).

    Example:
        >>> runs = members_with_test_time([load_run("runs/a"), load_run("runs/maml")],
        ...                               {"transduction": 10})  # doctest: +SKIP
        >>> [run.config.transduction for run in runs]  # doctest: +SKIP
        [10, 0]
    """
    changes = {k: v for k, v in (test_time or {}).items() if v is not None}
    if not changes:
        return list(members)
    replace(TestTime(), **changes).check()
    unhonoured = [unhonoured_by(run.model, run.config.updated(changes), run.preprocessor,
                                source=str(run.path)) for run in members]
    for key in changes:
        if all(key in found for found in unhonoured):
            why = "; ".join(f"{run.path}: {found[key].message}"
                            for run, found in zip(members, unhonoured, strict=True))
            raise ConfigError(f"no member of the ensemble can use {key} ({why})", column=key,
                              fix=f"leave {key} out, or combine a run that can use it "
                              f"({unhonoured[0][key].fix})")
    result = []
    for run, found in zip(members, unhonoured, strict=True):
        config = run.config.updated({k: v for k, v in changes.items() if k not in found})
        apply_test_time(run.model, config, run.preprocessor, source=str(run.path))
        result.append(replace(run, config=config))
    return result


def _split_and_schema(document: dict[str, Any],
                      config_path: Path) -> tuple[ClassSplit, DatasetSchema]:
    """The run's class split and dataset schema from its config; `RunError` when invalid."""
    try:
        split = ClassSplit.from_dict(document["split"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown key is an error here, raised below
            schema = DatasetSchema.from_dict(document["dataset"], file=str(config_path))
    except (MetamodalError, KeyError, TypeError, ValueError) as error:
        message = error.message if isinstance(error, LocatedError) else str(error)
        key = getattr(error, "column", None)
        raise RunError(f"config.toml's split or dataset table is invalid: {message}",
                       file=config_path, column=f"dataset.{key}" if key else "split",
                       fix="restore the run's config.toml") from None
    _check_dataset_table(document["dataset"], schema, config_path)
    return split, schema


def _check_dataset_table(table: dict[str, Any], schema: DatasetSchema, path: Path) -> None:
    """`RunError` naming the key when the run's ``[dataset]`` table holds a key that the
    schema does not write (a dataset.toml only warns about one; a run's config is written by
    metamodal, so an unknown key means it was edited or damaged) or a modality option that
    its loader rejects."""
    written = schema.to_dict()
    for key in table:
        if key not in written:
            raise RunError(f"config.toml's [dataset] table has an unknown key {key!r}",
                           file=path, column=f"dataset.{key}",
                           fix=f"remove `{key}` (known: {', '.join(written)}), or restore the "
                           "run's config.toml")
    for name, spec in schema.modalities.items():
        try:
            create_loader(spec)
        except ConfigError as error:
            raise RunError(f"config.toml's modality {name!r} is invalid: {error.message}",
                           file=path, column=f"dataset.modalities.{name}",
                           fix="remove the unknown option, or restore the run's "
                           "config.toml") from None


def _check_preprocessor_state(state: Any, path: Path) -> None:
    """`RunError` naming the key when ``preprocessor.json`` holds a value of the wrong type
    where fitted state belongs (``fitted`` not a boolean), or a loader whose ``kind`` is not
    a registered loader kind or not its modality's kind."""
    if not isinstance(state, dict):
        raise RunError(f"preprocessor.json holds a {type(state).__name__}, not an object",
                       file=path, fix="re-train the run")
    if "fitted" in state and not isinstance(state["fitted"], bool):
        raise RunError(f"`fitted` must be true or false, got {state['fitted']!r}", file=path,
                       column="fitted", fix="restore the run's preprocessor.json or re-train")
    specs = state.get("specs") if isinstance(state.get("specs"), dict) else {}
    for name, loader in (state.get("loaders") or {}).items():
        if not isinstance(loader, dict):
            raise RunError(f"the loader state of {name!r} is a {type(loader).__name__}, not "
                           "an object", file=path, column=f"loaders.{name}",
                           fix="restore the run's preprocessor.json or re-train")
        if "fitted" in loader and not isinstance(loader["fitted"], bool):
            raise RunError(f"`fitted` must be true or false, got {loader['fitted']!r}",
                           file=path, column=f"loaders.{name}.fitted",
                           fix="restore the run's preprocessor.json or re-train")
        kind = loader.get("kind")
        if kind is None:
            continue
        spec = specs.get(name)
        expected = spec.get("kind") if isinstance(spec, dict) else None
        if kind not in loaders:
            raise RunError(f"modality {name!r} names the unknown loader kind {kind!r}",
                           file=path, column=f"loaders.{name}.kind",
                           fix=f"use one of: {', '.join(loaders.names())}; or restore the "
                           "run's preprocessor.json")
        if expected is not None and kind != expected:
            raise RunError(f"modality {name!r} is of kind {expected!r}, but its loader state "
                           f"is of kind {kind!r}", file=path, column=f"loaders.{name}.kind",
                           fix=f"set it to {expected!r}, or restore the run's "
                           "preprocessor.json")


def read_preprocessor(path: Path) -> Preprocessor:
    """The fitted preprocessor of a run's ``preprocessor.json``; `RunError` naming the file
    (and the loader, as key) when it is missing, corrupt or invalid (missing fields, zero or
    non-finite statistics, statistics of the wrong size)."""
    if path.exists() and not path.is_file():  # a FIFO would block the read for ever
        raise RunError("preprocessor.json is not a regular file (a FIFO, a device or a "
                       "folder)", file=path, fix="restore the run's preprocessor.json")
    try:
        state = loads_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError("preprocessor.json is missing", file=path,
                       fix="re-train the run; the file holds the fitted vocabulary and "
                       "normalisation statistics") from None
    except (ParseError, OSError, UnicodeDecodeError) as error:
        raise RunError(f"preprocessor.json is corrupt ({error})", file=path,
                       fix="re-train the run") from None
    _check_preprocessor_state(state, path)
    try:
        preprocessor = preprocessor_from_state(state)
    except RunError as error:
        raise RunError(error.message, file=path, column=error.column,
                       fix=error.fix) from None
    if not preprocessor.fitted_:
        raise RunError("the preprocessor was never fitted", file=path, column="fitted",
                       fix="re-train the run")
    return preprocessor


def load_run_data(run: Run, data: str | Path | None = None, *, cache: bool | None = None,
                  progress: bool = True):
    """Decode the samples a run is evaluated on, exactly as in training.

    Args:
        run: a loaded run.
        data: another dataset directory; by default the run's own dataset and class split.
        cache: use the dataset's on-disk cache of decoded tensors; None: as the run did in
            training (its ``cache``: off for a run trained on a dataset it could not write
            to, ``--no-cache``).
        progress: show a progress bar while pretrained encoders compute features.

    Returns:
        `metamodal.runs.prepared.PreparedData` whose ``split`` is the run's split for its own
        dataset, or the other dataset's own split (``splits.toml`` or seeded). A modality of
        the run that the dataset lacks entirely is absent for every sample (one warning names
        it; see `metamodal.runs.prepared.prepare_data`).

    Raises:
        RunError: without ``data``, the run's ``train.data`` names no dataset directory
            (the key and ``config.toml`` are named); the run still loads for prediction.
    """
    from metamodal.runs.prepared import prepare_data

    cache = run.config.cache if cache is None else cache
    if data is None:
        source = Path(run.config.data) if run.config.data else None
        if source is None or not (source / "dataset.toml").is_file():
            raise RunError(f"the run's dataset {run.config.data!r} is not there (no "
                           "dataset.toml)", file=run.path / CONFIG_FILE, column="train.data",
                           fix="move the training dataset back to where train.data says, "
                           "or give the dataset with --data DIR (eval, retrieve, zero-shot; "
                           "data= in Python)")
        return prepare_data(source, preprocessor=run.preprocessor, split=run.split,
                            cache=cache, progress=progress)
    return prepare_data(data, seed=run.config.seed, preprocessor=run.preprocessor, cache=cache,
                        progress=progress)

"""The verbs that write a run directory: `train` and `align`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metamodal.api.fields import resolve, typed_arguments
from metamodal.api.settings import RunSettings
from metamodal.config import TrainConfig, load_config, read_config_values
from metamodal.errors import ConfigError

if TYPE_CHECKING:
    from metamodal.train.trainer import StepCallback


@dataclass
class TrainReport:
    """What `train` or `align` did.

    Args:
        run_dir: the run directory written.
        steps: optimisation steps done in total.
        best_val_accuracy: the best validation score (accuracy, or Recall@1 for an alignment),
            NaN without validation.
        best_step: the step whose weights were kept.
        stopped_early: whether early stopping ended training.
        seconds: wall-clock seconds of training (summed over resumes).
        score: what ``best_val_accuracy`` measures, in words.
        transfer: what ``init_from`` reused, newly initialised or dropped and what ``freeze``
            froze (``transfer.json``'s content, `metamodal.train.transfer.Transfer.to_dict`);
            None when neither was asked for.
        time_limited: whether ``max_minutes`` ended training before its ``steps``.
    """

    run_dir: Path
    steps: int
    best_val_accuracy: float
    best_step: int
    stopped_early: bool
    seconds: float
    score: str = "validation accuracy"
    transfer: dict[str, Any] | None = None
    time_limited: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the run directory as a string; NaN as None)."""
        values = dataclasses.asdict(self)
        values["run_dir"] = str(self.run_dir)
        if values["best_val_accuracy"] != values["best_val_accuracy"]:
            values["best_val_accuracy"] = None
        return values

    def table(self) -> str:
        """One line: the run, its steps and its best validation score; then the transfer
        table when ``init_from`` or ``freeze`` was given."""
        line = (f"run: {self.run_dir}  steps: {self.steps}  best {self.score}: "
                f"{self.best_val_accuracy:.4f} (step {self.best_step})"
                + ("  [stopped early]" if self.stopped_early else "")
                + ("  [ended by max_minutes]" if self.time_limited else ""))
        if not self.transfer:
            return line
        from metamodal.train.transfer import Transfer

        return line + "\n" + Transfer.from_dict(self.transfer).table()


def _run_settings(settings: RunSettings | None, options: dict[str, Any], verb: str
                  ) -> tuple[RunSettings, TrainConfig, dict[str, Any], str | None]:
    """Split ``options`` into the run's settings, the base config, the config changes and
    the config file the base was read from (None: no file)."""
    names = {f.name for f in dataclasses.fields(RunSettings)}
    config = options.pop("config", None)
    run_options = {k: options.pop(k) for k in list(options) if k in names}
    s = resolve(RunSettings, settings, run_options, verb=verb)
    if isinstance(config, TrainConfig):
        return s, config, options, None
    given = config if config is not None else s.config
    path = str(given) if given else None
    return s, load_config(path) if path else TrainConfig(), options, path


def _fit(config: TrainConfig, s: RunSettings, score: str, source: tuple[str | None, dict],
         callbacks: list[StepCallback] | None = None) -> TrainReport:
    """Train ``config`` into ``s.out``; ``source`` is the config file and the changes made to
    it (`_named_in_file`)."""
    from metamodal.runs.directory import check_not_inside_run
    from metamodal.train.trainer import Trainer

    if not s.out:
        raise ConfigError("no run directory given", column="out",
                          fix="pass --out RUN (out= in Python)")
    check_not_inside_run(s.out, "out")
    try:
        result = Trainer(config, s.out, progress=s.progress, callbacks=callbacks).fit(
            resume=s.resume, overwrite=s.overwrite)
    except ConfigError as error:
        raise _named_in_file(error, *source) from None
    return TrainReport(result.run_dir, result.steps, result.best_val_accuracy, result.best_step,
                       result.stopped_early, result.seconds, score,
                       result.transfer.to_dict() if result.transfer is not None else None,
                       result.time_limited)


def _named_in_file(error: ConfigError, path: str | None,
                   changes: dict[str, Any]) -> ConfigError:
    """``error`` naming the config file ``path`` where it names no file and its key was set
    there, not by a flag (``changes``): what is found once training builds the model (an
    unknown fusion, an option out of a component's range) named only the key."""
    if not path or error.file is not None or not error.column:
        return error
    key = error.column.split(".")[0]
    try:
        values = read_config_values(path)
    except ConfigError:  # read when training began: changed since
        return error
    if key in values and key not in changes:
        error.file = str(path)
    return error


@typed_arguments("train")
def train(out: str | Path | None = None, settings: RunSettings | None = None, *,
          callbacks: list[StepCallback] | None = None, **options: Any) -> TrainReport:
    """Meta-train a model and write its run directory (``metamodal train``).

    Args:
        out: the run directory to write.
        settings: a `RunSettings` (``config`` file, ``resume``, ``overwrite``, ``progress``).
        callbacks: functions called as ``callback(step, values)`` after each training step
            (``values`` has ``val_acc`` at validation steps; `metamodal.search` prunes with
            it).
        options: `RunSettings` fields, ``config`` (a `TrainConfig` or a TOML file), and any
            key of `metamodal.config.TrainConfig` (``data``, ``learner``, ``fusion``,
            ``ways``, ...), which overrides the config; tables are merged (`TrainConfig.merged`).

    Returns:
        a `TrainReport`.

    Raises:
        ConfigError: no dataset, an unknown key or a bad value (named); ``out`` inside
            another run directory (key ``out``).
        RunError: ``out`` holds a finished or unfinished run and neither ``resume`` nor
            ``overwrite``.

    Example:
        >>> train("runs/demo", data="data", learner="protonet", fusion="gated",
        ...       steps=1000).best_val_accuracy  # doctest: +SKIP
    """
    if callbacks is not None and not (isinstance(callbacks, list | tuple)
                                      and all(callable(c) for c in callbacks)):
        raise ConfigError(f"train: callbacks must be a list of functions, got {callbacks!r}",
                          column="callbacks", fix="give callbacks=[function, ...]")
    s, base, changes, path = _run_settings(settings, {"out": out, **options}, "train")
    config = base.merged(changes)
    if not config.data:
        raise ConfigError("no dataset given", column="data",
                          fix="pass --data DIR or set data in the config file")
    return _fit(config, s, "validation accuracy", (path, changes), callbacks)


def align(out: str | Path | None = None, settings: RunSettings | None = None,
          **options: Any) -> TrainReport:
    """Align the encoders of two or more modalities, contrastively or by regression, and write
    a run directory (``metamodal align``) that `retrieve` measures and ``train --init-from``
    starts from.

    Args:
        out: the run directory to write.
        settings: a `RunSettings`.
        options: as for `train`; ``modalities`` (two or more) are the ones aligned; the
            fusion defaults to ``mean`` (alignment trains only the encoders).

    Raises:
        ConfigError: fewer than two modalities.

    Example:
        >>> align("runs/align", data="data", modalities=["image", "caption"])  # doctest: +SKIP
    """
    s, base, changes, path = _run_settings(settings, {"out": out, **options}, "align")
    names = list(changes.get("modalities") or [])
    if len(names) < 2:
        raise ConfigError("align needs two or more modalities", column="modalities",
                          fix="e.g. --modalities image,caption")
    changes = {"fusion": "mean", **changes, "align_modalities": names, "align_only": True,
               "learner": "protonet"}
    config = base.merged(changes)
    positives = config.align_options.get("positives", "instance")
    return _fit(config, s, f"validation Recall@1 ({positives} level)", (path, changes))

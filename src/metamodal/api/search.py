"""The verb that searches over training settings: `search` (``metamodal search``).

Each trial trains a run with `metamodal.api.train` (the base config, the fixed flags, then the
trial's values from the `metamodal.search.space.SearchSpace`) into ``OUT/trials/NNNN`` and
scores it with `metamodal.api.evaluate` on *fixed* validation episodes
(``OUT/val-episodes.jsonl``, written once from the dataset's validation split, the same for
every trial and every worker). The trainer's validations during training go to the pruner. A
trial that fails (a bad combination of settings) is recorded as failed with its reason, and
the search goes on; a search whose every trial failed is a `ConfigError` naming the first
failure. Storage, sampler and pruner: `metamodal.search.study`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.api.data import episodes as write_episodes
from metamodal.api.evaluation import evaluate
from metamodal.api.fields import resolve
from metamodal.api.settings import SearchSettings
from metamodal.api.training import train
from metamodal.config import TrainConfig, load_config
from metamodal.errors import (
    ConfigError,
    InsufficientSamplesError,
    MetamodalError,
    OutputError,
    RunError,
)
from metamodal.io import make_directory, resolved
from metamodal.search.report import EPISODES_FILE, STUDY_FILE, TRIALS_DIR
from metamodal.search.space import MACHINE_SETTINGS, SearchSpace, nest

log = logging.getLogger(__name__)

TOKEN_ATTR = "out_token"
"""The study's user attribute that tells it from a study of its name in another storage."""
TOKEN_WAIT = 10.0
"""How long a worker waits for the token of a study another worker has just created (s)."""
FIXED_ATTR = "fixed_settings"
"""The study's user attribute that records the settings all its trials share."""
DATA_DIGEST = "sha256:"
"""How a study's fixed settings begin the digest of its dataset (`study_dataset`)."""

MAX_STUDY_NAME = 512
"""The longest study name (characters): what Optuna's database storages hold."""


@dataclass
class SearchResult:
    """What a search found.

    Args:
        study: the study's name.
        trials: every trial: ``number``, ``state`` (complete, pruned, fail, running),
            ``score`` (validation accuracy on the fixed episodes), ``ci95``, ``values``,
            ``error`` (why a trial failed) and ``run``.
        best: the best completed trial (as in ``trials``), or None.
        importances: setting -> importance (fANOVA, summing to 1), when computable.
        files: what was written: ``trials`` (csv), ``best`` (toml), ``report`` (html).
    """

    study: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    importances: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)

    def table(self) -> str:
        """One line per trial, the best marked, then where the outputs are."""
        lines = [f"study {self.study}: {len(self.trials)} trial(s)",
                 f"{'trial':>5}  {'state':<8}  {'score':>13}  values"]
        best = self.best["number"] if self.best else None
        for t in self.trials:
            score = "" if t["score"] is None else (
                f"{t['score']:.4f}" + (f" ± {t['ci95']:.3f}" if t["ci95"] is not None else ""))
            note = t["error"] if t["state"] == "fail" else t["values"]
            lines.append(f"{t['number']:>5}  {t['state']:<8}  {score:>13}  {note}"
                         + ("  <- best" if t["number"] == best else ""))
        if self.importances:
            lines.append("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                    self.importances.items()))
        lines += [f"{role}: {path}" for role, path in self.files.items()]
        return "\n".join(lines)


def search(data: str | Path | None = None, settings: SearchSettings | None = None,
           **options: Any) -> SearchResult:
    """Search over training settings with Optuna (``metamodal search``): each trial trains a
    run with `metamodal.api.train` and is scored on fixed validation episodes with
    `metamodal.api.evaluate`; see `metamodal.search.study`.

    Args:
        data: the dataset directory.
        settings: a `SearchSettings`; ``options`` holds its fields and any key of
            `metamodal.config.TrainConfig` (``steps``, ``ways``, ...), fixed for every trial.

    Raises:
        ConfigError: a bad space (named key), a setting outside its range (`SearchSettings`),
            a storage URL or study name it cannot use (`check_settings`), an
            ``out`` that cannot be a directory (`metamodal.errors.OutputError`), or a study
            whose every trial failed (naming the first failure).
        RunError: a corrupt study file.

    Example:
        >>> search("data", space="space.toml", trials=20, steps=200,
        ...        out="search").best  # doctest: +SKIP
    """
    from metamodal.train.distributed import Launch

    launch = Launch.from_environment()
    if launch is not None and launch.world_size > 1:
        raise ConfigError("a search is not a torchrun job: its workers are independent "
                          "processes that share a study", column="WORLD_SIZE",
                          fix="start `metamodal search` once per worker (on any machines) "
                          "with the same --storage, --study and --out, without torchrun")
    try:
        import optuna
    except ImportError:
        raise ConfigError("searching needs the search extra (optuna is missing)",
                          column="search",
                          fix="pip install -c constraints.txt -e '.[search]'") from None

    from metamodal.search.report import write_outputs
    from metamodal.search.space import SearchSpace
    from metamodal.search.study import (
        HEARTBEAT_GRACE,
        fail_stale_trials,
        has_own_heartbeat,
        make_pruner,
        make_sampler,
        open_storage,
    )

    names = {f.name for f in dataclasses.fields(SearchSettings)}
    own = {k: options.pop(k) for k in list(options) if k in names}
    s = resolve(SearchSettings, settings, own, verb="search")
    check_settings(s)
    for key, fix in (("space", "--space SPACE.toml"), ("out", "--out DIR")):
        if not getattr(s, key):
            raise ConfigError(f"no {key} given", column=key, fix=f"pass {fix}")
    check_out(s.out)
    base = (load_config(s.config) if s.config else TrainConfig()).merged(
        {**options, **({"data": str(data)} if data else {})})
    if not base.data:
        raise ConfigError("no dataset given", column="data", fix="pass DATA")
    base = base.updated({"data": str(resolved(base.data, "data"))})
    base.validate(source=s.config or None)  # a bad flag is the flag's, not the space's
    space = SearchSpace.from_toml(s.space, base)
    sampler = make_sampler(s.sampler, space, s.sampler_seed)
    pruner = make_pruner(s.pruner, base.steps, base.val_every)
    out = make_directory(s.out, key="out")
    # drawn before the study is opened: an objective the data cannot supply records nothing
    drafted = draft_episodes(out, base.data, base.seed, ways=s.objective_ways,
                             shots=s.objective_shots, queries=s.objective_queries,
                             count=s.objective_episodes)
    try:
        storage = open_storage(s.storage, out)
        # a failed trial is logged in one line by the objective: not by Optuna's traceback
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study, token = open_study(storage, s.study, sampler, pruner)
        except Exception as error:  # the storage's own errors: locked, corrupt, wrong schema
            raise RunError(f"the study cannot be opened ({type(error).__name__}: {error})",
                           column="storage", fix="give another --storage or --study") from None
        check_trial_folders(out, study)
        claim_out(out, study.study_name, token)
        check_fixed_settings(study, {
            "train": {k: v for k, v in base.to_dict().items() if k not in MACHINE_SETTINGS}
            | {"data": study_dataset(study, base.data)},
            "objective": {"ways": s.objective_ways, "shots": s.objective_shots,
                          "queries": s.objective_queries, "episodes": s.objective_episodes},
            "space": space.to_dict()}, space_file=s.space)
    except BaseException:
        discard_episodes(drafted)
        raise
    episodes = publish_episodes(drafted, out)
    fail_stale_trials(study)  # a killed worker's trial past its grace: failed now
    remaining = s.trials - counted_trials(study)
    if remaining > 0:
        def enough(study: optuna.Study, _: Any) -> None:
            if counted_trials(study) >= s.trials:
                study.stop()

        with storage_failures(s.storage):
            study.optimize(objective(space, base, out, episodes,
                                     beat=not has_own_heartbeat(storage)), n_trials=remaining,
                           catch=(Exception,), callbacks=[enough])
    with storage_failures(s.storage):
        summary = write_outputs(study, out)
    running = [row.number for row in summary.rows if row.state == "running"]
    if running and summary.best is None:
        log.warning("trial(s) %s still running: another worker's, or of one killed less than "
                    "%d s ago, which a search started after that replaces",
                    ", ".join(map(str, running)), HEARTBEAT_GRACE)
    failed = summary.all_failed()
    if failed is not None:
        raise ConfigError(f"every trial of study {summary.study!r} failed ({len(summary.rows)}); "
                          f"the first, trial {failed.number}: {failed.error or 'no reason given'}",
                          file=s.space, fix="correct the space or the fixed settings (each "
                          f"trial's error is in {summary.files['trials']})")
    rows = [dataclasses.asdict(r) for r in summary.rows]
    best = dataclasses.asdict(summary.best) if summary.best else None
    return SearchResult(summary.study, rows, best, summary.importances, summary.files)


@contextlib.contextmanager
def storage_failures(url: str | None) -> Iterator[None]:
    """Turn an error of the study's storage during the search (a journal another worker left
    damaged, a database gone) into a `RunError` keyed ``storage``: for a journal, the one
    `check_journal` gives, naming the line and the repair."""
    from metamodal.search.study import check_journal

    try:
        yield
    except MetamodalError:
        raise
    except Exception as error:
        if url and url.startswith("journal:"):
            check_journal(Path(url.removeprefix("journal:")))
        raise RunError(f"the study's storage failed during the search "
                       f"({type(error).__name__}: {error})", column="storage",
                       fix="check the storage, then run the same search again: finished "
                       "trials are kept") from None


def check_settings(s: SearchSettings) -> None:
    """The study's name is usable (the numbers' ranges are declared with `SearchSettings`
    and checked when it is made): checked before anything is opened or written.

    Raises:
        ConfigError: keyed ``study``.
    """
    if not s.study.strip() or len(s.study) > MAX_STUDY_NAME or not s.study.isprintable():
        raise ConfigError(f"the study name must be 1 to {MAX_STUDY_NAME} printable characters, "
                          f"not all blank (got {s.study[:40]!r}, {len(s.study)} characters)",
                          column="study", fix="give --study NAME, e.g. --study metamodal")


def check_out(out: str) -> None:
    """Refuse an ``out`` (where the trials' runs, the report and the default storage go) that
    is or lies inside a run directory (its report page would be replaced, and training it
    again deletes what lies inside) or a dataset directory.

    Raises:
        ConfigError: keyed ``out``.
    """
    from metamodal.data.schema import check_outside_dataset
    from metamodal.runs.directory import check_not_inside_run

    check_not_inside_run(out, "out", itself=True)
    check_outside_dataset(out, "out")


def killed(trial: Any) -> bool:
    """Whether ``trial`` failed because its worker stopped (Optuna's heartbeat failed it: no
    error of its own was recorded); such a trial does not count toward ``trials``."""
    import optuna

    return trial.state == optuna.trial.TrialState.FAIL and "error" not in trial.user_attrs


def counted_trials(study: Any) -> int:
    """The trials that count toward the study's size: all but the killed ones (running ones
    included, so that several workers share the count)."""
    return sum(not killed(t) for t in study.get_trials(deepcopy=False))


def check_trial_folders(out: Path, study: Any) -> None:
    """`ConfigError` when ``OUT/trials`` holds run folders that are not this study's trials
    (another study's, or one from another storage): its trial numbers start at 0 too, and
    would replace them."""
    folder = out / TRIALS_DIR
    if not folder.is_dir():
        return
    found = {p.name for p in folder.iterdir() if p.is_dir() and p.name.isdigit()}
    own = {f"{t.number:04d}" for t in study.get_trials(deepcopy=False)}
    foreign = sorted(found - own)
    if foreign:
        raise ConfigError(
            f"{folder} holds run folders ({', '.join(foreign[:5])}) that are not trials of "
            f"study {study.study_name!r} in this storage; its trials would replace them",
            column="study", file=folder,
            fix="give this study an --out of its own, or the --storage and --study that "
            "made those runs")


def open_study(storage: Any, name: str, sampler: Any, pruner: Any) -> tuple[Any, str]:
    """The study ``name`` in ``storage``, created or loaded, and its token: a random id that
    the worker which created the study records in it (user attribute `TOKEN_ATTR`), so that
    two studies of one name in two storages are told apart (`claim_out`). A worker that loads
    a study just created waits for its token; a study an older metamodal began gets one."""
    import optuna

    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        study.set_user_attr(TOKEN_ATTR, uuid.uuid4().hex)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    load_if_exists=True, sampler=sampler, pruner=pruner)
    waited = 0.0
    while TOKEN_ATTR not in (attrs := study.user_attrs):
        if (FIXED_ATTR in attrs or waited >= TOKEN_WAIT  # begun before tokens were recorded
                or study.get_trials(deepcopy=False)):
            study.set_user_attr(TOKEN_ATTR, uuid.uuid4().hex)
        else:  # its creator records the token next
            time.sleep(0.1)
            waited += 0.1
    return study, str(attrs[TOKEN_ATTR])


def claim_out(out: Path, study_name: str, token: str) -> None:
    """Record in ``OUT/study.txt`` that ``out`` holds the trials of the study ``study_name``
    of token ``token`` (`open_study`), or refuse a worker of another study. The record is
    written once and linked into place, which fails where another worker was first: two
    workers of different studies (or of one name in two storages) started together, where
    `check_trial_folders` finds no runs yet, cannot both pass, and would train into the same
    ``OUT/trials/0000``.

    Raises:
        ConfigError: keyed ``study``: ``out`` holds another study's trials, or its record
            cannot be read.
        OutputError: the record cannot be written.
    """
    from metamodal.data.paths import PathRefused, check_regular_file

    path = out / STUDY_FILE
    if not os.path.lexists(path):
        try:
            fd, draft = tempfile.mkstemp(dir=out, prefix=f".{STUDY_FILE}.", suffix=".tmp")
        except OSError as error:
            raise OutputError(f"{out} cannot be written ({error.strerror})", file=out,
                              column="out", fix="give an --out this user may write") from None
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"{study_name}\n{token}\n")
            os.chmod(draft, 0o644)
            os.link(draft, path)
        except FileExistsError:
            pass  # another worker was first: its record is read below
        except OSError:  # a file system without hard links: the rename, nearly as good
            if not os.path.lexists(path):
                os.replace(draft, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(draft)
    try:
        check_regular_file(path, "study record")
        with path.open("rb") as handle:
            text = handle.read(4 * MAX_STUDY_NAME + 64).decode("utf-8")
        recorded, recorded_token, rest = text.split("\n")
        if (rest or not recorded or not recorded.isprintable()
                or not re.fullmatch("[0-9a-f]{32}", recorded_token)):
            raise ValueError("not a study's name and token, one a line")
    except (PathRefused, OSError, ValueError) as error:  # UnicodeDecodeError among them
        why = error.message if isinstance(error, PathRefused) else str(error)
        raise ConfigError(f"the record of the study whose trials {out} holds cannot be read "
                          f"({why})", file=path, column="study",
                          fix=f"remove {path} if {out} holds no other study's trials") from None
    if recorded != study_name:
        raise ConfigError(
            f"{out} holds the trials of study {recorded!r}, not of {study_name!r}; its "
            "trial numbers start at 0 too, and its runs would replace them", file=path,
            column="study", fix=f"give this study an --out of its own, or --study {recorded}")
    if recorded_token != token:
        raise ConfigError(
            f"{out} holds the trials of another study named {study_name!r}, in another "
            "storage; its trial numbers start at 0 too, and its runs would replace them",
            file=path, column="storage", fix="give this study an --out of its own, or the "
            "--storage of the study whose trials it holds")


def study_dataset(study: Any, data: str) -> str:
    """How ``study``'s fixed settings name its dataset ``data``: by the digest of the files
    that define it (`dataset_digest`: its schema, sample table and splits), not by its path,
    so that workers on machines that mount the dataset at different paths share the study and
    one that edited it is refused. A study begun by a metamodal that recorded the path is
    compared by the path, as it was."""
    from metamodal.data.dataset import dataset_digest

    recorded = study.user_attrs.get(FIXED_ATTR)
    train = recorded.get("train") if isinstance(recorded, dict) else None
    before = train.get("data") if isinstance(train, dict) else None
    if isinstance(before, str) and not before.startswith(DATA_DIGEST):
        return data
    return DATA_DIGEST + dataset_digest(data)


def check_fixed_settings(study: Any, fixed: dict[str, Any], *, space_file: str = "") -> None:
    """Record the settings every trial of ``study`` shares (the fixed training settings, the
    dataset among them, the objective's episodes and the search space) when it begins;
    `ConfigError` when a later worker or run of the study gives other ones: its trials would
    be trained and scored otherwise (on the episode file written for the first) and ranked
    together, or fail on a space Optuna cannot change. A part an older metamodal did not
    record is recorded now. A study with trials that no metamodal search made is refused."""
    fixed = json.loads(json.dumps(fixed, default=str))  # as the storage gives it back
    recorded = study.user_attrs.get(FIXED_ATTR)
    if recorded is None:
        foreign = [t.number for t in study.get_trials(deepcopy=False) if "run" not in t.user_attrs]
        if foreign:
            raise ConfigError(f"study {study.study_name!r} holds trials that no metamodal "
                              f"search made (trial {foreign[0]} records no run)",
                              column="study", fix="give a study of its own (another --study)")
        study.set_user_attr(FIXED_ATTR, fixed)
        return
    recorded = recorded if isinstance(recorded, dict) else {}
    if set(fixed) - set(recorded):
        study.set_user_attr(FIXED_ATTR, {**fixed, **recorded})
    for part, values in fixed.items():
        before = recorded.get(part, values)
        before = before if isinstance(before, dict) else {}
        changed = sorted(k for k in set(values) | set(before) if values.get(k) != before.get(k))
        if not changed:
            continue
        key = changed[0]
        own = "give another --study and --out"
        if part == "space":
            raise ConfigError(
                f"study {study.study_name!r} began with another search space: {key} was "
                f"{_setting(before.get(key))}, here {_setting(values.get(key))}",
                file=space_file or None, column=key,
                fix=f"give the space the study began with, or {own} for this one")
        if part == "train" and key == "data" and str(values[key]).startswith(DATA_DIGEST):
            raise ConfigError(
                f"study {study.study_name!r} began on another dataset: this one's "
                "dataset.toml, sample table or splits.toml differ from the ones its first "
                "worker read", column="data",
                fix=f"give the dataset the study began with (a copy at any path will do), "
                f"or {own} for this one")
        name = f"objective_{key}" if part == "objective" else key
        raise ConfigError(
            f"study {study.study_name!r} began with {name} = {before.get(key)!r}, not "
            f"{values.get(key)!r}: its trials share their fixed settings and their "
            "validation episodes", column=name,
            fix=f"give {name} = {before.get(key)!r} to continue it, or {own} for this one")


def _setting(param: Any) -> str:
    """A space setting as recorded (`SearchSpace.to_dict`), for a message."""
    if not isinstance(param, dict):
        return "absent"
    if param.get("choices") is not None:
        return f"one of {param['choices']}"
    return f"a range {param.get('low')}..{param.get('high')}" + (
        " (log)" if param.get("log") else "") + (
        f" step {param['step']}" if param.get("step") is not None else "")


def draft_episodes(out: Path, data: str, seed: int, *, ways: int, shots: int, queries: int,
                   count: int) -> Path | None:
    """The validation episodes every trial is scored on, drawn into a folder of their own
    inside ``out`` (`publish_episodes` puts them in place); None where ``OUT`` already holds
    them (they depend only on the dataset, its split and these numbers, which the study's
    fixed settings check).

    Raises:
        ConfigError: the validation split cannot supply such episodes (naming the flags).
    """
    if (out / EPISODES_FILE).exists():
        return None
    folder = Path(tempfile.mkdtemp(prefix=".episodes-", dir=out))
    try:
        return write_episodes(data, out=str(folder / EPISODES_FILE), split="val",
                              split_seed=seed, ways=ways, shots=shots, queries=queries,
                              runs=count, seed=seed).path
    except InsufficientSamplesError as error:
        raise ConfigError(
            f"the search's validation episodes ({ways}-way {shots}-shot, {queries} queries) "
            f"cannot be drawn: {error.message}", fix="lower --objective-ways, "
            "--objective-shots or --objective-queries (" + (error.fix or "").replace(
                "--ways", "--objective-ways") + ")") from None
    finally:
        if not (folder / EPISODES_FILE).exists():
            shutil.rmtree(folder, ignore_errors=True)


def publish_episodes(drafted: Path | None, out: Path) -> Path:
    """``OUT``'s validation episodes: ``drafted`` moved into place unless another worker's
    are already there (the same file: they depend only on the data and the settings)."""
    from metamodal.io import atomic_write

    path = out / EPISODES_FILE
    if drafted is not None and not path.exists():
        atomic_write(path, lambda tmp: os.replace(drafted, tmp))
    discard_episodes(drafted)
    return path


def discard_episodes(drafted: Path | None) -> None:
    """Remove the folder `draft_episodes` drew into (what is left of it)."""
    if drafted is not None:
        shutil.rmtree(drafted.parent, ignore_errors=True)


def objective(space: SearchSpace, base: TrainConfig, out: Path, episodes: Path, *,
              beat: bool = False) -> Callable[[Any], float]:
    """The function Optuna maximises: train a trial's run, score it on the fixed episodes
    (``beat``: within a `TrialHeartbeat`, for storages without Optuna's heartbeat)."""
    import optuna

    from metamodal.search.study import TrialHeartbeat

    def score(trial: optuna.Trial) -> float:
        try:
            with TrialHeartbeat(trial) if beat else contextlib.nullcontext():
                return trained_and_scored(trial)
        except (Exception, KeyboardInterrupt):
            raise  # Optuna fails the trial
        except BaseException:
            # a signal turned into an exception (`metamodal.cli.Terminated`), which Optuna
            # lets through with its trial left running: failed here as Ctrl-C fails it (no
            # error of ours: the worker stopped), so that a search started again replaces it
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise

    def trained_and_scored(trial: optuna.Trial) -> float:
        run_dir = out / TRIALS_DIR / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))

        def report(step: int, metrics: dict[str, float]) -> None:
            if "val_acc" in metrics:
                trial.report(metrics["val_acc"], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} (validation "
                                             f"{metrics['val_acc']:.4f})")

        try:
            # inside: a space changed since the study began fails here, with its reason
            config = base.merged(nest(space.suggest(trial)))
            trial.set_user_attr("config", config.to_dict())
            train(run_dir, config=config, progress=False, overwrite=True, callbacks=[report])
            result = evaluate(run_dir, episodes=str(episodes), baseline=False,
                              progress=False).result
        except optuna.TrialPruned:
            raise
        except Exception as error:  # a bad combination fails its trial, not the search
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            log.warning("trial %d failed: %s", trial.number, error)
            raise
        trial.set_user_attr("ci95", result.ci95)
        return result.accuracy

    return score

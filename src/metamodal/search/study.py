"""Running a search: the Optuna study, its storage, sampler and pruner, and the objective.

Each trial trains a run with `metamodal.api.train` (the base config, the fixed flags, then the
trial's values from the `SearchSpace`) into ``OUT/trials/NNNN`` and scores it with
`metamodal.api.evaluate` on *fixed* validation episodes (``OUT/val-episodes.jsonl``, written
once from the dataset's validation split, the same for every trial and every worker). The
trainer's validations during training are reported to the pruner. A trial that fails (a bad
combination of settings) is recorded as failed with its reason, and the search goes on.

Several workers (processes or machines) share one study through its storage: a SQLite file
(the default, ``OUT/study.db``), any URL Optuna accepts (``postgresql://...``), or Optuna's
journal file, written ``journal:PATH`` (safe on file systems where SQLite locking is not).
``trials`` is the size of the whole study: a worker stops once the study holds that many
trials (running ones included), so N workers overshoot it by at most N - 1.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metamodal.config import TrainConfig
from metamodal.errors import ConfigError, MetamodalError, RunError
from metamodal.search.space import SearchSpace, nest

log = logging.getLogger(__name__)

EPISODES_FILE = "val-episodes.jsonl"
TRIALS_DIR = "trials"


def open_storage(url: str | None, out: Path) -> Any:
    """The study's storage: ``url`` (default: ``sqlite:///OUT/study.db``); ``journal:PATH`` is
    Optuna's journal file.

    Raises:
        ConfigError: the URL names no storage Optuna can open.
        RunError: the storage exists but is corrupt.
    """
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend
    from sqlalchemy.exc import ArgumentError

    url = url or f"sqlite:///{out / 'study.db'}"
    fix = "give --storage sqlite:///PATH/study.db, journal:PATH/study.log or a database URL"
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            if not path.parent.is_dir():
                raise ConfigError("the journal's folder does not exist", column="storage",
                                  file=path, fix="create the folder, or give another path")
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            if not path.parent.is_dir():
                raise ConfigError("the database's folder does not exist", column="storage",
                                  file=path, fix="create the folder, or give another path")
            if path.exists() and path.stat().st_size and not _is_sqlite(path):
                raise RunError("the study file is not a SQLite database", file=path,
                               column="storage", fix="give another --storage, or move this "
                               "file away (the search starts a new study there)")
        with warnings.catch_warnings():  # heartbeats: a killed worker's trial is failed
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=60, grace_period=180)
    except MetamodalError:
        raise
    except (ArgumentError, ValueError, ImportError) as error:  # not a URL of a known database
        raise ConfigError(f"the storage {url!r} cannot be opened ({error})",
                          column="storage", fix=fix) from None
    except Exception as error:  # the store's own errors: unreachable, locked, corrupt
        raise RunError(f"the storage {url!r} cannot be read ({type(error).__name__}: "
                       f"{error})", column="storage", fix=fix) from None


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def make_sampler(name: str, space: SearchSpace, seed: int | None) -> Any:
    """Optuna's sampler for ``tpe``, ``random`` or ``grid``."""
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, steps: int, every: int) -> Any:
    """Optuna's pruner for ``median``, ``hyperband`` or ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, every), max_resource=steps)
    return optuna.pruners.NopPruner()


def fixed_episodes(out: Path, data: str, seed: int, *, ways: int, shots: int, queries: int,
                   count: int) -> Path:
    """The validation episodes every trial is scored on, written once (the same file for
    every worker: it depends only on the dataset, its split and these numbers)."""
    from metamodal import api
    from metamodal.io import atomic_write

    path = out / EPISODES_FILE
    if not path.exists():
        tmp_dir = out / f".episodes-{os.getpid()}"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        written = api.episodes(data, out=str(tmp_dir / EPISODES_FILE), split="val",
                               split_seed=seed, ways=ways, shots=shots, queries=queries,
                               runs=count, seed=seed).path
        atomic_write(path, lambda tmp: os.replace(written, tmp))
        tmp_dir.rmdir()
    return path


def objective(space: SearchSpace, base: TrainConfig, out: Path, episodes: Path,
              on_trial: Callable[[str], None] | None = None) -> Callable[[Any], float]:
    """The function Optuna maximises: train a trial's run, score it on the fixed episodes."""
    import optuna

    from metamodal import api
    from metamodal.api.training import merged

    def score(trial: optuna.Trial) -> float:
        values = space.suggest(trial)
        run_dir = out / TRIALS_DIR / f"{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))

        def report(step: int, metrics: dict[str, float]) -> None:
            if "val_acc" in metrics:
                trial.report(metrics["val_acc"], step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at step {step} (validation "
                                             f"{metrics['val_acc']:.4f})")

        try:
            config = merged(base, nest(values))
            trial.set_user_attr("config", config.to_dict())
            api.train(run_dir, config=config, progress=False, overwrite=True,
                      callbacks=[report])
            result = api.evaluate(run_dir, split="val", episodes=str(episodes),
                                  baseline=False, progress=False).result
        except optuna.TrialPruned:
            raise
        except Exception as error:  # a bad combination fails its trial, not the search
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            log.warning("trial %d failed: %s", trial.number, error)
            raise
        trial.set_user_attr("ci95", result.ci95)
        if on_trial is not None:
            on_trial(f"trial {trial.number}: {result.accuracy:.4f} ± {result.ci95:.4f} "
                     f"{values}")
        return result.accuracy

    return score

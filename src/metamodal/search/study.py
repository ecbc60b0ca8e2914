"""The parts of an Optuna study a search is made of: its storage, sampler and pruner (the
objective, which trains and evaluates, is `metamodal.api.search`'s).

Several workers (processes or machines) share one study through its storage: a SQLite file
(the default, ``OUT/study.db``), any URL Optuna accepts (``postgresql://...``), or Optuna's
journal file, written ``journal:PATH`` (safe on file systems where SQLite locking is not).
``trials`` is the size of the whole study: a worker stops once the study holds that many
trials (running ones included), so N workers overshoot it by at most N - 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from metamodal.errors import ConfigError, MetamodalError, RunError
from metamodal.search.space import SearchSpace


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

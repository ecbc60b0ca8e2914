"""The parts of an Optuna study a search is made of: its storage, sampler and pruner (the
objective, which trains and evaluates, is `metamodal.api.search`'s).

Several workers (processes or machines) share one study through its storage: a SQLite file
(the default, ``OUT/study.db``), any URL Optuna accepts (``postgresql://...``), or Optuna's
journal file, written ``journal:PATH`` (safe on file systems where SQLite locking is not).
``trials`` is the size of the whole study: a worker stops once the study holds that many
trials (running ones included), so N workers overshoot it by at most N - 1.

Workers on several machines need a storage all of them reach: a database server's URL (the
safest), or a journal file on a shared file system. A SQLite file on a network file system
(NFS, SMB, Lustre, ...) is warned about (`network_filesystem`): SQLite's locking is not
reliable there, and concurrent writers from several machines can corrupt the study.

A worker killed mid-trial leaves its trial running in the storage. SQL storages keep Optuna's
heartbeat; on the others (the journal) `TrialHeartbeat` records the time in the trial's
``heartbeat`` attribute instead; either way `fail_stale_trials` fails a running trial whose
heartbeat is older than `HEARTBEAT_GRACE` when a search starts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from metamodal.errors import ConfigError, MetamodalError, RunError
from metamodal.io import resolved
from metamodal.search.space import SearchSpace

HEARTBEAT_INTERVAL = 60
"""Seconds between a running trial's heartbeats (Optuna's on SQL storages, `TrialHeartbeat`
elsewhere)."""
HEARTBEAT_GRACE = 180
"""Seconds without a heartbeat after which a running trial counts as killed, and is failed."""
JOURNAL_SETTLE = 1.0
"""Seconds `check_journal` waits before it looks again at a journal's incomplete last line."""
HEARTBEAT_ATTR = "heartbeat"
"""The user attribute `TrialHeartbeat` keeps a trial's last heartbeat in (Unix seconds)."""

log = logging.getLogger(__name__)


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
            check_storage_file(path, out)
            if not path.parent.is_dir():
                raise ConfigError("the journal's folder does not exist", column="storage",
                                  file=path, fix="create the folder, or give another path")
            check_journal(path)
            return JournalStorage(JournalFileBackend(str(path)))
        if url in ("sqlite://", "sqlite:///", "sqlite:///:memory:") or ":memory:" in url:
            raise ConfigError("an in-memory SQLite study ends with its process: no worker can "
                              "share it, no run continue it", column="storage", fix=fix)
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            check_storage_file(path, out)
            if not path.parent.is_dir():
                raise ConfigError("the database's folder does not exist", column="storage",
                                  file=path, fix="create the folder, or give another path")
            if path.exists() and path.stat().st_size and not _is_sqlite(path):
                raise RunError("the study file is not a SQLite database", file=path,
                               column="storage", fix="give another --storage, or move this "
                               "file away (the search starts a new study there)")
            shared = network_filesystem(path)
            if shared:
                warnings.warn(
                    f"{path}: the study's SQLite file is on a network file system ({shared}), "
                    "where SQLite's locking is not reliable: workers on several machines may "
                    "corrupt it; use --storage journal:PATH (one file on the shared file "
                    "system) or a database server (--storage postgresql://...)", stacklevel=2)
        with warnings.catch_warnings():  # heartbeats: a killed worker's trial is failed
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL,
                              grace_period=HEARTBEAT_GRACE)
    except MetamodalError:
        raise
    except (ArgumentError, ValueError, ImportError) as error:  # not a URL of a known database
        raise ConfigError(f"the storage {url!r} cannot be opened ({error})",
                          column="storage", fix=fix) from None
    except Exception as error:  # the store's own errors: unreachable, locked, corrupt
        raise RunError(f"the storage {url!r} cannot be read ({type(error).__name__}: "
                       f"{error})", column="storage", fix="check that the storage is "
                       "reachable and whole, or give another --storage") from None


def check_storage_file(path: Path, out: Path) -> None:
    """Refuse a study's file (a journal or SQLite database) that is something other than a
    regular file, one of the files a search writes in ``out`` (`OUT_ENTRIES`, or inside its
    report or trials), or inside a dataset directory: the search would write over it, or it
    over the search's own files.

    Raises:
        ConfigError: keyed ``storage``.
    """
    from metamodal.data.paths import PathRefused, check_regular_file
    from metamodal.data.schema import dataset_holding
    from metamodal.search.report import OUT_ENTRIES

    def refuse(why: str, fix: str) -> ConfigError:
        return ConfigError(f"the study's file {why}", file=path, column="storage", fix=fix)

    try:
        check_regular_file(path, "study")
    except FileNotFoundError:
        pass
    except PathRefused as refused:
        raise refuse(f"cannot be used: {refused.message}", refused.fix) from None
    target, out = resolved(path, "study"), resolved(out, "out")
    if out in target.parents and target.relative_to(out).parts[0] in OUT_ENTRIES:
        raise refuse(f"is {target.relative_to(out)}, which the search writes in its --out",
                     f"give it a name of its own, e.g. {out / 'study.log'}")
    if dataset_holding(target.parent) is not None:
        raise refuse("lies inside a dataset directory", "keep it outside the dataset, e.g. "
                     f"in the search's --out ({out})")


def check_journal(path: Path) -> None:
    """Refuse a journal file whose records cannot all be replayed, naming the first bad line:
    Optuna reads such a journal without a word, then appends onto its incomplete last line
    and leaves it unreadable. An incomplete last line is what a worker killed while writing
    leaves; it is looked at again after a moment, in case another worker is writing it.

    Raises:
        RunError: keyed ``storage``, the line in ``row``.
    """
    if not path.exists():
        return
    op_codes = journal_op_codes()
    for attempt in range(2):
        replay = journal_replay()
        with open(path, "rb") as handle:
            size, number = 0, 0
            for number, line in enumerate(handle, start=1):
                if not line.endswith(b"\n"):
                    break
                size += len(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if (not isinstance(record, dict) or type(record.get("op_code")) is not int
                        or record["op_code"] not in op_codes
                        or not _replays(replay, record)):
                    raise RunError(
                        "the journal's record is not one of Optuna's (a JSON object with one "
                        "of its op_codes and that operation's fields): the records from here "
                        "on cannot be replayed", file=path, row=number, column="storage",
                        fix="restore the journal from a copy, or give another --storage for "
                        "a new study")
            else:
                return
        if attempt == 0:
            time.sleep(JOURNAL_SETTLE)
    raise RunError(f"the journal's last record (line {number}) is incomplete: a worker "
                   "stopped while writing it", file=path, row=number, column="storage",
                   fix=f"cut it off (the {number - 1} records before it are whole): "
                   f"truncate -s {size} {path}")


def journal_replay() -> Any:
    """Optuna's own replay of journal records, as a worker of no record's (so that a record
    another worker may legitimately have lost a race with is passed over, as Optuna passes
    it), or None where this Optuna version keeps it elsewhere."""
    try:
        from optuna.storages.journal._storage import JournalStorageReplayResult
    except ImportError:
        return None
    return JournalStorageReplayResult(worker_id_prefix=f"metamodal-check-{uuid.uuid4().hex}-")


def _replays(replay: Any, record: dict) -> bool:
    """Whether ``record`` replays (``replay``: `journal_replay`'s, None: not checked): a
    record of a known op_code without that operation's fields, or with values of another
    type, stops Optuna's replay with a bare KeyError or TypeError."""
    if replay is None:
        return True
    try:
        replay.apply_logs([record])
    except Exception:  # noqa: BLE001 - whatever stops Optuna's replay stops it here
        return False
    return True


def journal_op_codes() -> frozenset[int]:
    """The operation codes of Optuna's journal records (a record of another code stops its
    replay with a bare AssertionError)."""
    try:
        from optuna.storages.journal._storage import JournalOperation
    except ImportError:  # a layout of another Optuna version: the codes of 4.x and 5.x
        return frozenset(range(11))
    return frozenset(int(op) for op in JournalOperation)


NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "afs", "9p", "lustre", "gpfs",
    "beegfs", "ceph", "glusterfs", "ocfs2", "gfs2", "panfs", "wekafs", "fuse.sshfs",
    "fuse.glusterfs", "fuse.ceph", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "fuse.rclone",
})
"""File-system types (as ``/proc/mounts`` names them) that are shared over a network."""


def has_own_heartbeat(storage: Any) -> bool:
    """Whether ``storage`` keeps Optuna's heartbeat (SQL storages opened by `open_storage`);
    the others need `TrialHeartbeat`."""
    from optuna.storages import RDBStorage

    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


class TrialHeartbeat:
    """While the ``with`` block runs, a thread writes the time to ``trial``'s ``heartbeat``
    user attribute every `HEARTBEAT_INTERVAL` seconds (the first at once), so that a search
    started later can tell a killed worker's trial (`fail_stale_trials`) from a running one
    on a storage without Optuna's heartbeat. A write that fails is logged and ends the beats
    (the trial goes on).

    Example:
        >>> import optuna
        >>> study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
        >>> trial = study.ask()
        >>> with TrialHeartbeat(trial):
        ...     pass
        >>> HEARTBEAT_ATTR in study.trials[0].user_attrs
        True
    """

    def __init__(self, trial: Any, interval: float | None = None) -> None:
        self.trial = trial
        self.interval = HEARTBEAT_INTERVAL if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        name=f"heartbeat-trial-{trial.number}")

    def _write(self) -> bool:
        try:
            self.trial.set_user_attr(HEARTBEAT_ATTR, time.time())
        except Exception as error:  # the storage's own errors: the trial goes on without
            log.warning("trial %d: its heartbeat cannot be written (%s): a search started "
                        "more than %d s from now may take it for a killed worker's",
                        self.trial.number, error, HEARTBEAT_GRACE)
            return False
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.interval) and self._write():
            pass

    def __enter__(self) -> TrialHeartbeat:
        if self._write():
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def fail_stale_trials(study: Any) -> None:
    """Fail the running trials of killed workers: on SQL storages by Optuna's heartbeat, on the
    others those whose `TrialHeartbeat` (or, without one, whose start) is more than
    `HEARTBEAT_GRACE` seconds old. A failed trial records no error, so it does not count
    toward the study's size."""
    import optuna

    with warnings.catch_warnings():  # (experimental in Optuna; a no-op without heartbeats)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if has_own_heartbeat(study._storage):  # noqa: SLF001 (Optuna names it nowhere else)
        return
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = trial.user_attrs.get(HEARTBEAT_ATTR)
        if not isinstance(beat, int | float):
            beat = trial.datetime_start.timestamp() if trial.datetime_start else now
        if now - beat > HEARTBEAT_GRACE:  # (finished meanwhile by its worker: left so)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def network_filesystem(path: str | Path, mounts: str | Path = "/proc/mounts") -> str | None:
    """The type of the network file system ``path`` lies on (its mount point's, the longest
    that contains it, as listed in ``mounts``), or None: a local one, or no mount table
    (not Linux).

    Example:
        >>> import tempfile, pathlib
        >>> table = pathlib.Path(tempfile.mkdtemp()) / "mounts"
        >>> _ = table.write_text("/dev/sda1 / ext4 rw 0 0\\nserver:/x /shared nfs4 rw 0 0\\n")
        >>> network_filesystem("/shared/search/study.db", table)
        'nfs4'
        >>> network_filesystem("/home/study.db", table) is None
        True
    """
    try:
        lines = Path(mounts).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = os.path.abspath(path)
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FILESYSTEMS else None


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def make_sampler(name: str, space: SearchSpace, seed: int | None) -> Any:
    """Optuna's sampler for ``tpe``, ``random`` or ``grid``.

    Raises:
        ConfigError: a grid search over a space that has no grid, or too large a grid
            (`metamodal.search.space.SearchSpace.grid`).
    """
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

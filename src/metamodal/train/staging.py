"""Staging folders of ``train --overwrite``: a new run is written beside the finished one it
replaces, and takes its place only once it is complete.

A staging folder is ``.RUN.staging-XXXXXXXX`` in the run's parent directory. While training
it holds `OWNER_FILE`, naming the process (host and pid) that writes it; the file is removed
just before the folder is put in place of the run. A process killed hard (SIGKILL, power
loss) leaves its staging folder behind. The next training of the same run cleans up what is
provably stale and its own (an owner file of this host whose process is gone: it holds an
unfinished run, nothing of value) and names, with a warning or an error, what it cannot
prove: a staging folder without an owner file (one written by an older version, or killed
between the owner file's removal and the rename) and the folder that
`metamodal.io.replace_directory` moves a finished run aside to (``.RUN.old-XXXXXXXX``), which
after a kill between its two renames holds the only copy of the finished run.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path

from metamodal.errors import RunError
from metamodal.io import make_directory

log = logging.getLogger(__name__)

OWNER_FILE = ".metamodal-staging.json"
"""The file inside a staging folder that names the process writing it."""

STAGING_INFIX = ".staging-"
ASIDE_INFIX = ".old-"


def make_staging(out: Path) -> Path:
    """Create the staging folder of the run ``out`` beside it, owned by this process.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> work = make_staging(root / "run")
        >>> work.name.startswith(".run.staging-"), (work / OWNER_FILE).is_file()
        (True, True)
    """
    make_directory(out.parent)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}{STAGING_INFIX}"))
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "run": out.name}
    (work / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
    return work


def release_staging(work: Path) -> None:
    """Remove the owner file of a complete staging folder, before it is put in place of the
    run (so that the run directory holds only the run's own files)."""
    (work / OWNER_FILE).unlink(missing_ok=True)


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # it exists (someone else's) or cannot be told: not provably gone
    return False


def _stale_owner(folder: Path, run: str) -> bool | None:
    """True when ``folder``'s owner file names this host, the run ``run`` and a process that
    is gone; False when it names a live (or another host's) process; None without a readable
    owner file."""
    try:
        owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8"))
        host, pid, named = owner["host"], owner["pid"], owner["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or named != run:
        return None
    return host == socket.gethostname() and pid != os.getpid() and _process_is_gone(pid)


def clean_leftovers(out: Path) -> list[Path]:
    """Deal with what an interrupted ``train --overwrite`` of ``out`` left beside it.

    Stale staging folders of this run (owner file of this host, process gone) are deleted,
    with a log message; a staging folder whose owner is alive is left alone (another training
    is writing it). A staging folder without an owner file, and a finished run moved aside
    while ``out`` exists, are named in a `UserWarning` with the fix (delete them by hand).

    Args:
        out: the run directory about to be trained.

    Returns:
        the staging folders deleted.

    Raises:
        RunError: ``out`` is missing but a finished run was moved aside from it (a kill
            between the two renames of a replacement): it is the only copy, so training is
            refused until it is renamed back or deleted.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> stale = root / ".run.staging-abc"
        >>> stale.mkdir()
        >>> _ = (stale / OWNER_FILE).write_text(json.dumps(
        ...     {"host": socket.gethostname(), "pid": 2**22 + 1, "run": "run"}))
        >>> [p.name for p in clean_leftovers(root / "run")], stale.exists()
        (['.run.staging-abc'], False)
    """
    parent = out.parent
    if not parent.is_dir():
        return []
    removed: list[Path] = []
    unclaimed: list[Path] = []
    aside: list[Path] = []
    for folder in sorted(parent.glob(f".{glob.escape(out.name)}.*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        rest = folder.name[len(out.name) + 1:]
        if rest.startswith(ASIDE_INFIX):
            aside.append(folder)
            continue
        stale = _stale_owner(folder, out.name)
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            log.warning("removed %s: the staging folder of an interrupted training of %s",
                        folder, out)
            removed.append(folder)
        elif stale is None:  # no owner file: an older version's, or one cannot tell
            unclaimed.append(folder)
    finished_aside = [f for f in aside if (f / "config.toml").is_file()]
    if finished_aside and not out.exists():
        raise RunError(
            f"an interrupted --overwrite left the finished run in {finished_aside[0]}, and "
            f"{out.name} is missing", file=finished_aside[0],
            fix=f"rename it back (mv {finished_aside[0]} {out}) to keep it, or delete it; "
            "then train again")
    leftovers = unclaimed + aside
    if leftovers:
        warnings.warn(
            f"leftovers of an interrupted `train --overwrite` of {out}: "
            f"{', '.join(str(p) for p in leftovers)} (an unfinished staging folder, or the "
            f"run it replaced); delete them once no training of {out.name} is running",
            stacklevel=2)
    return removed

"""`TaskStore`: the server's tasks and their encoded examples in one SQLite database.

The database (``tasks.sqlite`` in the state directory) runs in WAL mode with ``synchronous =
FULL``: every write of a task is one transaction, so after a crash (even ``kill -9``) the
database holds each acknowledged write whole and nothing of one that was not acknowledged.
Readers never wait for a writer (WAL); writers of one task are serialised by a lock per task,
and SQLite's own lock orders writers of different tasks.

An example's encoded tensors (one row of `metamodal.runs.support.EncodedSamples`) are stored
as safetensors bytes, read back without unpickling. The database records a fingerprint of the
model (the run's weights): a state written by another model is refused, since its stored
embeddings mean nothing to this one.

Every stored value is checked as it is read back (text columns hold text, ``modalities`` a JSON
list of names, ``version`` a whole number; the engine checks the tensors): a value that is not
is a `RunError` built by `damaged`, naming ``tasks.sqlite``, the table's column, the task and
the example, so that one damaged row fails the requests that need it, never the others.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metamodal.data.dataset import has_control_characters, plain_spelling
from metamodal.errors import ConfigError, RunError
from metamodal.io import make_directory

DATABASE = "tasks.sqlite"
MAX_LABEL = 200
"""The longest class label or task name, in characters."""
THUMBNAIL_SIZE = 96
"""The longest side of a stored thumbnail, in pixels."""
_PNG = b"\x89PNG\r\n\x1a\n"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS examples (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL, label TEXT NOT NULL, modalities TEXT NOT NULL, text TEXT,
    thumbnail BLOB, tensors BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS examples_of_task ON examples (task_id, seq);
"""


def damaged(column: str, reason: str, *, task_id: str | None = None,
            example_id: str | None = None) -> RunError:
    """The error of a stored value that cannot be read back.

    It names the database by its file name only (the answer goes to clients, who need not
    know the state directory), ``column`` as ``table.column``, the task and the example, and
    the fix: delete the example (or the task) and add it again.

    Example:
        >>> damaged("examples.modalities", "not JSON", task_id="t1", example_id="e1").column
        'examples.modalities'
    """
    where = ", ".join([f"task {task_id!r}"] * (task_id is not None)
                      + [f"example {example_id!r}"] * (example_id is not None))
    if example_id is not None:
        again = (f"delete the example (DELETE /api/tasks/{task_id}/examples/{example_id}) "
                 "and add it again, or ")
    elif task_id is not None:
        again = f"delete the task (DELETE /api/tasks/{task_id}) and create it again, or "
    else:
        again = ""
    message = f"the stored {column} cannot be read back ({reason})"
    return RunError(f"{where}: {message}" if where else message, file=DATABASE, column=column,
                    fix=f"{again}restore {DATABASE} from a backup")


def label_fault(label: str) -> tuple[str, str] | None:
    """What makes ``label`` no class name (what is wrong, and the fix), or None: it is blank
    or invisible, longer than `MAX_LABEL`, only dots (``/classes/..`` would reach the task's
    own URL) or holds a control character. Checked as a label comes in, and as it is read
    back.

    Example:
        >>> label_fault("finch"), label_fault("..")[1]
        (None, 'give the class a name with other characters')
    """
    plain = plain_spelling(label)
    if not plain or len(label) > MAX_LABEL:
        return (f"must be a class name of 1 to {MAX_LABEL} characters, not all invisible",
                "give each example a label")
    if not plain.strip("."):
        return ("is only dots, which a class's URL cannot hold",
                "give the class a name with other characters")
    if has_control_characters(label):
        return "holds a control character", "give the class a name of printable characters"
    return None


def thumbnail_fault(data: bytes) -> str | None:
    """What makes ``data`` no thumbnail a server stores (a PNG of at most `THUMBNAIL_SIZE`
    pixels a side, by its header), or None."""
    if len(data) < 24 or not data.startswith(_PNG) or data[12:16] != b"IHDR":
        return "not a PNG image"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not (0 < width <= THUMBNAIL_SIZE and 0 < height <= THUMBNAIL_SIZE):
        return f"a PNG of {width} x {height} pixels, more than {THUMBNAIL_SIZE} a side"
    return None


class LimitError(ConfigError):
    """A bound of the server's state is reached (tasks, examples or classes)."""


class NotFoundError(ConfigError):
    """No task or example of that id."""


@dataclass
class NewExample:
    """An example to store.

    Args:
        label: its class.
        modalities: the names of the modalities it carries.
        tensors: safetensors bytes of its encoded form (one row of ``EncodedSamples``).
        text: the first text it carries, shortened (shown instead of a picture), or None.
        thumbnail: PNG bytes of its first image, small, or None.
    """

    label: str
    modalities: list[str]
    tensors: bytes
    text: str | None = None
    thumbnail: bytes | None = None


@dataclass
class StoredExample:
    """A stored example (its tensors only when asked for)."""

    id: str
    label: str
    modalities: list[str]
    text: str | None
    has_thumbnail: bool
    tensors: bytes | None = None


@dataclass
class TaskRecord:
    """A task: its id, name, creation time (ISO 8601), version (one more after each write)
    and examples in the order they were added."""

    id: str
    name: str
    created: str
    version: int
    examples: list[StoredExample] = field(default_factory=list)

    def classes(self) -> list[tuple[str, int]]:
        """(label, number of examples) of each class, in the order classes first appeared."""
        counts: dict[str, int] = {}
        for example in self.examples:
            counts[example.label] = counts.get(example.label, 0) + 1
        return list(counts.items())


@dataclass
class DamagedTask:
    """A task whose stored rows cannot be read back: its id and the error (`damaged`)."""

    id: str
    error: RunError


@dataclass
class Limits:
    """The bounds of the state: tasks, examples per task, classes per task."""

    max_tasks: int = 1000
    max_examples: int = 2000
    max_classes: int = 200


class TaskStore:
    """Tasks and their examples in ``DIR/tasks.sqlite`` (see the module docstring).

    Args:
        directory: the state directory (created if missing).
        model: the fingerprint of the model the examples are encoded by.
        tta: the test-time augmentation the stored embeddings were made with (None: the
            examples are stored decoded, and embedded as they are used).
        limits: the bounds that writes respect.

    Raises:
        ConfigError: keyed ``tta``: the state's embeddings were made with another ``tta``
            (prototypes of averaged copies beside queries of one, or the reverse).
        RunError: the database is corrupt or was written for another model.

    Example:
        >>> import tempfile
        >>> store = TaskStore(tempfile.mkdtemp(), model="m1")
        >>> task = store.create_task("birds", [NewExample("finch", ["image"], b"...")])
        >>> [(c, n) for c, n in store.get(task.id).classes()]
        [('finch', 1)]
    """

    def __init__(self, directory: str | Path, *, model: str, tta: int | None = None,
                 limits: Limits | None = None) -> None:
        self.directory = Path(directory)
        make_directory(self.directory, key="state")
        self.path = self.directory / DATABASE
        self.limits = limits or Limits()
        self._local = threading.local()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        try:
            with self._write() as db:
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    db.execute(statement)
                row = db.execute("SELECT value FROM meta WHERE key = 'model'").fetchone()
                unowned = row is None and db.execute(
                    "SELECT 1 FROM examples LIMIT 1").fetchone() is not None
                if row is None and not unowned:
                    db.execute("INSERT INTO meta VALUES ('model', ?)", (model,))
                made = db.execute("SELECT value FROM meta WHERE key = 'tta'").fetchone()
                if made is None and tta is not None:  # kept from now on (older states: too)
                    db.execute("INSERT INTO meta VALUES ('tta', ?)", (str(tta),))
        except sqlite3.DatabaseError as error:
            raise RunError(f"the task database is unreadable ({error})", file=self.path,
                           fix="point --state at another directory, or move this one away"
                           ) from None
        if unowned:  # any model would take the examples as its own: they mean nothing to it
            raise RunError(
                "the state holds encoded examples but no record of the model that encoded "
                "them (the database was damaged or edited)", file=self.path,
                column="meta.model", fix="give another --state, and move this one away")
        if row is not None and row[0] != model:
            raise RunError(
                "the state holds tasks encoded by another model", file=self.path,
                column="model",
                fix="serve that model's run with this --state, or give another --state")
        if made is not None and not (isinstance(made[0], str) and made[0].isdigit()):
            raise RunError("the state's record of the tta its examples were embedded with "
                           f"cannot be read back ({made[0]!r})", file=self.path,
                           column="meta.tta", fix="give another --state, and move this one "
                           "away (or restore it from a backup)")
        if tta is not None and made is not None and made[0] != str(tta):
            raise ConfigError(
                f"the state's examples were embedded with tta = {made[0]}; this server's is "
                f"{tta}, and its queries would be compared with prototypes made otherwise",
                file=self.path, column="tta",
                fix=f"serve with --tta {made[0]}, or give another --state")

    # -- connections ------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (autocommit: transactions are explicit)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed whole, or rolled back."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: a consistent snapshot."""
        db = self._db()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def task_lock(self, task_id: str) -> threading.Lock:
        """The lock that serialises writes to ``task_id``."""
        with self._locks_guard:
            return self._locks.setdefault(task_id, threading.Lock())

    # -- reading ----------------------------------------------------------------------------

    def tasks(self) -> tuple[list[TaskRecord], list[DamagedTask]]:
        """Every task with its examples (without their tensors), oldest first; apart, each
        task whose stored rows cannot be read back (their tensors are not read here)."""
        tasks, damaged_tasks = [], []
        with self._read() as db:
            for row in db.execute("SELECT id, name, created, version FROM tasks "
                                  "ORDER BY created, id").fetchall():
                try:
                    task = self._task(row)
                    task.examples = self._examples(db, task.id, tensors=False)
                except RunError as error:
                    damaged_tasks.append(DamagedTask(str(row[0]), error))
                else:
                    tasks.append(task)
        return tasks, damaged_tasks

    def count(self) -> int:
        """How many tasks the state holds (damaged ones too)."""
        with self._read() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return count

    def get(self, task_id: str, *, tensors: bool = False) -> TaskRecord:
        """One task with its examples (and their tensors when ``tensors``).

        Raises:
            NotFoundError: no such task.
            RunError: a stored value of the task cannot be read back (`damaged`).
        """
        with self._read() as db:
            row = db.execute("SELECT id, name, created, version FROM tasks WHERE id = ?",
                             (task_id,)).fetchone()
            if row is None:
                raise _no_task(task_id)
            task = self._task(row)
            task.examples = self._examples(db, task_id, tensors=tensors)
        return task

    def thumbnail(self, task_id: str, example_id: str) -> bytes | None:
        """The PNG thumbnail of an example, or None when it has no image.

        Raises:
            NotFoundError: no such task or example.
            RunError: the stored thumbnail is not bytes (`damaged`).
        """
        with self._read() as db:
            row = db.execute("SELECT thumbnail FROM examples WHERE id = ? AND task_id = ?",
                             (example_id, task_id)).fetchone()
        if row is None:
            raise NotFoundError(f"task {task_id!r} has no example {example_id!r}",
                                column="example", fix="list the task's examples first")
        if row[0] is not None:
            wrong = (f"{type(row[0]).__name__}, not bytes" if not isinstance(row[0], bytes)
                     else thumbnail_fault(row[0]))
            if wrong is not None:
                raise damaged("examples.thumbnail", wrong, task_id=task_id,
                              example_id=example_id)
        return row[0]

    @staticmethod
    def _task(row: tuple) -> TaskRecord:
        """A ``tasks`` row (id, name, created, version) read back, its values checked."""
        task_id = row[0] if isinstance(row[0], str) else repr(row[0])
        for column, value, kind in zip(("id", "name", "created", "version"), row,
                                       (str, str, str, int), strict=True):
            _check(value, kind, f"tasks.{column}", task_id=task_id)
        return TaskRecord(*row)

    @staticmethod
    def _examples(db: sqlite3.Connection, task_id: str, *,
                  tensors: bool) -> list[StoredExample]:
        """The task's ``examples`` rows read back, their values checked (`damaged`)."""
        columns = "id, label, modalities, text, thumbnail IS NOT NULL" + (
            ", tensors" if tensors else "")
        examples = []
        for row in db.execute(f"SELECT {columns} FROM examples WHERE task_id = ? "
                              "ORDER BY seq", (task_id,)):
            example_id = row[0] if isinstance(row[0], str) else repr(row[0])
            where = {"task_id": task_id, "example_id": example_id}
            _check(row[0], str, "examples.id", **where)
            _check(row[1], str, "examples.label", **where)
            wrong = label_fault(row[1])
            if wrong is not None:
                raise damaged("examples.label", wrong[0], **where)
            _check(row[3], str | None, "examples.text", **where)
            if tensors:
                _check(row[5], bytes, "examples.tensors", **where)
            modalities = _json(row[2], "examples.modalities", **where)
            if not isinstance(modalities, list) or not all(isinstance(m, str)
                                                           for m in modalities):
                raise damaged("examples.modalities", "not a list of modality names",
                              **where)
            examples.append(StoredExample(row[0], row[1], modalities, row[3], bool(row[4]),
                                          row[5] if tensors else None))
        first: dict[str, StoredExample] = {}
        for example in examples:  # two spellings of one class (an edit, or a state older
            # than labels kept in NFC): the one not plainly spelt is the damaged row
            plain = plain_spelling(example.label)
            other = first.setdefault(plain, example)
            if other.label != example.label:
                odd = other if other.label != plain and example.label == plain else example
                raise damaged("examples.label", f"{odd.label!r} spells the label "
                              f"{plain!r} of another example otherwise only in surrounding "
                              "spaces, invisible characters or Unicode normal form",
                              task_id=task_id, example_id=odd.id)
        return examples

    def read_meta(self, key: str) -> Any:
        """A value kept beside the tasks (JSON), or None.

        Raises:
            RunError: the stored value is not JSON (`damaged`, naming ``meta.KEY``).
        """
        with self._read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else _json(row[0], f"meta.{key}")

    def write_meta(self, key: str, value: Any) -> None:
        """Keep a JSON value beside the tasks."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    # -- writing ----------------------------------------------------------------------------

    def create_task(self, name: str, examples: list[NewExample]) -> TaskRecord:
        """A new task holding ``examples``, written in one transaction.

        Raises:
            LimitError: the state holds ``max_tasks`` tasks, or ``examples`` exceed a task's
                bounds.
        """
        task_id = uuid.uuid4().hex[:12]
        created = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._write() as db:
            (count,) = db.execute("SELECT COUNT(*) FROM tasks").fetchone()
            if count >= self.limits.max_tasks:
                raise LimitError(f"the server holds {count} tasks, its limit",
                                 column="max_tasks",
                                 fix="delete tasks you no longer need, or serve with a higher "
                                 "--max-tasks")
            db.execute("INSERT INTO tasks VALUES (?, ?, ?, 0)", (task_id, name, created))
            self._insert(db, task_id, [], examples)
        return self.get(task_id)

    def add_examples(self, task_id: str, examples: list[NewExample]) -> tuple[TaskRecord,
                                                                            list[str]]:
        """Add ``examples`` to a task in one transaction; the task and the new ids.

        Raises:
            NotFoundError: no such task.
            LimitError: the task would exceed ``max_examples`` or ``max_classes``.
        """
        with self.task_lock(task_id), self._write() as db:
            self._require(db, task_id)
            current = self._examples(db, task_id, tensors=False)
            added = self._insert(db, task_id, current, examples)
            self._bump(db, task_id)
        return self.get(task_id), added

    def remove_examples(self, task_id: str, *, example_id: str | None = None,
                        label: str | None = None) -> None:
        """Remove one example, or every example of a class, in one transaction (the task is
        not read back: another of its rows may be damaged, and the removal stands).

        Raises:
            NotFoundError: no such task, example or class.
        """
        with self.task_lock(task_id), self._write() as db:
            self._require(db, task_id)
            if example_id is not None:
                gone = db.execute("DELETE FROM examples WHERE id = ? AND task_id = ?",
                                  (example_id, task_id)).rowcount
                what = f"example {example_id!r}"
            else:
                gone = db.execute("DELETE FROM examples WHERE label = ? AND task_id = ?",
                                  (label, task_id)).rowcount
                what = f"class {label!r}"
            if not gone:
                raise NotFoundError(f"task {task_id!r} has no {what}",
                                    column="example" if example_id is not None else "label",
                                    fix="list the task's examples and classes first")
            self._bump(db, task_id)

    def delete_task(self, task_id: str) -> None:
        """Delete a task and its examples.

        Raises:
            NotFoundError: no such task.
        """
        with self.task_lock(task_id), self._write() as db:
            if not db.execute("DELETE FROM tasks WHERE id = ?", (task_id,)).rowcount:
                raise _no_task(task_id)
        with self._locks_guard:
            self._locks.pop(task_id, None)

    def _insert(self, db: sqlite3.Connection, task_id: str, current: list[StoredExample],
                examples: list[NewExample]) -> list[str]:
        limits = self.limits
        if len(current) + len(examples) > limits.max_examples:
            raise LimitError(
                f"the task would hold {len(current) + len(examples)} examples, more than "
                f"{limits.max_examples}", column="max_examples",
                fix="remove examples first, or serve with a higher --max-examples")
        classes = {e.label for e in current} | {e.label for e in examples}
        spelt = {plain_spelling(e.label): e.label for e in current}
        for example in examples:
            other = spelt.setdefault(plain_spelling(example.label), example.label)
            if other != example.label:  # one class, stored apart: the task then fails
                raise ConfigError(
                    f"label {example.label!r} is another spelling of the task's class "
                    f"{other!r} (they differ only in surrounding spaces, invisible characters "
                    "or Unicode normal form)", column="label",
                    fix=f"send the label as {other!r}, or name another class")
        if len(classes) > limits.max_classes:
            raise LimitError(f"the task would hold {len(classes)} classes, more than "
                             f"{limits.max_classes}", column="max_classes",
                             fix="remove classes first, or serve with a higher --max-classes")
        (seq,) = db.execute("SELECT COALESCE(MAX(seq), -1) FROM examples WHERE task_id = ?",
                            (task_id,)).fetchone()
        ids = [uuid.uuid4().hex[:12] for _ in examples]
        db.executemany(
            "INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(ids[k], task_id, seq + 1 + k, e.label, json.dumps(e.modalities), e.text,
              e.thumbnail, e.tensors) for k, e in enumerate(examples)])
        return ids

    @staticmethod
    def _require(db: sqlite3.Connection, task_id: str) -> None:
        if db.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is None:
            raise _no_task(task_id)

    @staticmethod
    def _bump(db: sqlite3.Connection, task_id: str) -> None:
        db.execute("UPDATE tasks SET version = version + 1 WHERE id = ?", (task_id,))

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _check(value: Any, kind: Any, column: str, **where: Any) -> None:
    """Refuse a stored ``value`` that is not of ``kind`` (a type or a union of types)."""
    if not isinstance(value, kind):
        name = getattr(kind, "__name__", str(kind))
        raise damaged(column, f"{type(value).__name__}, not {name}", **where)


def _json(value: Any, column: str, **where: Any) -> Any:
    """A stored JSON text read back; a value that is not JSON text is `damaged`."""
    if not isinstance(value, str):
        raise damaged(column, f"{type(value).__name__}, not JSON text", **where)
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, a number too long to
        # convert, or arrays nested too deep
        raise damaged(column, f"not JSON: {error}", **where) from None


def _no_task(task_id: str) -> NotFoundError:
    return NotFoundError(f"no task {task_id!r}", column="task",
                         fix="list the tasks with GET /api/tasks")

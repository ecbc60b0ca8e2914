"""Training metrics: one JSON line per record in ``metrics.jsonl`` and TensorBoard event files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from metamodal.errors import RunError
from metamodal.io import ParseError, atomic_write_text, loads_json
from metamodal.runs.directory import METRICS_FILE

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
"""The folder of a run that holds its TensorBoard event files."""

class MetricsLogger:
    """Appends metric records to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        resume_step: when resuming, records after this step (written by the killed run after
            its last checkpoint) are dropped, so the log matches the resumed state exactly.

    Example:
        >>> import tempfile
        >>> logger = MetricsLogger(tempfile.mkdtemp())
        >>> logger.log(10, {"train_loss": 0.5})
        >>> logger.close()
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if _step(line) is not None and _step(line) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(
                str(Path(run_dir) / TENSORBOARD_DIR),
                purge_step=None if resume_step is None else resume_step + 1,
            )
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            log.warning("tensorboard is not installed: no event files are written")

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Record ``values`` at ``step`` (numbers go to TensorBoard too)."""
        record = {"step": step, **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close the files."""
        self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl`` (empty when there is none).

    Raises:
        RunError: the file is unreadable, or a line is not a JSON object or has a ``step``
            that is not a whole number >= 0 (names the line).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    fix = f"restore {METRICS_FILE}, or delete the damaged line (the run itself is intact)"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"cannot read the training log: {error}", file=path, fix=fix) from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = loads_json(line)
        except ParseError as error:
            raise RunError(str(error), file=path, row=number, fix=fix) from None
        if not isinstance(record, dict):
            raise RunError("a record must be a JSON object", file=path,
                           row=number, fix=fix)
        step = record.get("step")
        if "step" in record and (not isinstance(step, int) or isinstance(step, bool)
                                 or step < 0):
            raise RunError(f"a record's step must be a whole number >= 0, got {step!r}",
                           file=path, row=number, column="step", fix=fix)
        for key, value in record.items():
            wrong = _value_fault(key, value)
            if wrong is not None:
                raise RunError(f"{key} {wrong}, got {value!r}", file=path, row=number,
                               column=key, fix=fix)
        records.append(record)
    return records


def _value_fault(key: str, value: Any) -> str | None:
    """What is wrong with a value training logs under ``key`` (None: nothing, or a key it
    does not know): an accuracy is a number in [0, 1], a loss, rate or time a finite number,
    ``best_step`` a whole number >= 0 and the end record's flags true or false."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key in ("stopped_early", "time_limited"):
        return None if isinstance(value, bool) else "must be true or false"
    if key == "best_step":
        whole = number and math.isfinite(value) and value == int(value) >= 0
        return None if whole else "must be a whole number >= 0"
    if "acc" in key.split("_"):  # best_val_acc -1: no validation ran (`Progress.best`)
        fits = number and (0 <= value <= 1 or (key == "best_val_acc" and value == -1))
        return None if fits else "must be an accuracy from 0 to 1"
    if any(part in key.split("_") for part in ("loss", "lr", "var", "seconds")):
        return None if number and math.isfinite(value) else "must be a finite number"
    return None


def _step(line: str) -> int | None:
    """The step of one ``metrics.jsonl`` line, None when it is not a record."""
    try:
        record = loads_json(line)
    except ParseError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


"""What a search leaves in ``OUT``: the trials table, the best configuration as a ready
``train --config`` file and the report (history and parameter-importance plots).

    OUT/trials.csv           one row per trial: number, state, score, ci95, values, error, run
    OUT/best.toml            the best trial's whole training config (metamodal train --config)
    OUT/report/index.html    the table and the two plots
    OUT/report/history.png   each trial's score and the best so far
    OUT/report/importance.png  how much each setting explains the score (Optuna's fANOVA)

beside the trials' run directories (``OUT/trials/NNNN``), the validation episodes every
trial is scored on (``OUT/val-episodes.jsonl``) and the name of the study whose trials ``OUT``
holds (``OUT/study.txt``).
"""

from __future__ import annotations

import csv
import html
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.errors import RunError
from metamodal.io import atomic_write, atomic_write_text

TRIALS_FILE = "trials.csv"
BEST_FILE = "best.toml"
REPORT_DIR = "report"
TRIALS_DIR = "trials"
EPISODES_FILE = "val-episodes.jsonl"
STUDY_FILE = "study.txt"
OUT_ENTRIES = frozenset({TRIALS_FILE, BEST_FILE, REPORT_DIR, TRIALS_DIR, EPISODES_FILE,
                         STUDY_FILE})
"""What a search writes in ``OUT`` (besides its default storage, ``study.db``)."""
KILLED = "its worker stopped during the trial (its heartbeat ended)"
"""The reason shown for a trial failed without an error of its own: its worker was killed."""


@dataclass
class TrialRow:
    """One trial of the study."""

    number: int
    state: str
    score: float | None
    ci95: float | None
    values: dict[str, Any]
    error: str | None
    run: str | None


@dataclass
class SearchSummary:
    """The study's trials and its best one.

    Args:
        study: the study's name.
        rows: every trial, by number.
        best: the best completed trial, or None.
        importances: setting -> importance (summing to 1), when it could be computed.
        files: what was written, by role.
    """

    study: str
    rows: list[TrialRow]
    best: TrialRow | None
    importances: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def all_failed(self) -> TrialRow | None:
        """The first trial where the study has trials and every one of them failed (none
        completed, was pruned or is running), else None."""
        if self.rows and all(row.state == "fail" for row in self.rows):
            return self.rows[0]
        return None


def summarise(study: Any) -> SearchSummary:
    """The trials of an Optuna study as `TrialRow` s, and its best (a pruned trial has no
    score: its last validation is not the objective)."""
    import optuna

    rows = []
    for trial in study.get_trials(deepcopy=False):
        complete = trial.state == optuna.trial.TrialState.COMPLETE
        error = _attr(study, trial, "error", str)
        if error is None and trial.state == optuna.trial.TrialState.FAIL:
            error = KILLED
        rows.append(TrialRow(trial.number, trial.state.name.lower(),
                             trial.value if complete else None,
                             _attr(study, trial, "ci95", float), dict(trial.params), error,
                             _attr(study, trial, "run", str)))
    done = [r for r in rows if r.state == "complete" and r.score is not None]
    best = max(done, key=lambda r: (r.score, -r.number)) if done else None
    return SearchSummary(study.study_name, rows, best, _importances(study, len(done)))


def _attr(study: Any, trial: Any, key: str, kind: type) -> Any:
    """``trial``'s user attribute ``key`` (None when absent) when it is a ``kind`` (a finite
    number for ``float``), else a `RunError`: the study's storage was damaged."""
    value = trial.user_attrs.get(key)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if value is None or (kind is float and number and math.isfinite(value)) or (
            kind is not float and isinstance(value, kind)):
        return value
    raise RunError(f"trial {trial.number} of study {study.study_name!r} records {key} = "
                   f"{value!r}, not a {'finite number' if kind is float else kind.__name__}",
                   column=key, fix="the study's storage is damaged: continue it from a copy "
                   "made before, or start another study (another --study and --out)")


def _importances(study: Any, completed: int) -> dict[str, float]:
    """Optuna's fANOVA importances, or nothing with too few trials or one setting."""
    import optuna

    if completed < 3:
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ImportError):
        return {}


def write_outputs(study: Any, out: Path) -> SearchSummary:
    """Write the trials table, the best config and the report; return the summary."""
    import tomli_w

    summary = summarise(study)
    names = sorted({name for row in summary.rows for name in row.values})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "score", "ci95", *names, "error", "run"])
    for row in summary.rows:
        writer.writerow([row.number, row.state, _num(row.score), _num(row.ci95),
                         *[row.values.get(n, "") for n in names], row.error or "",
                         row.run or ""])
    atomic_write_text(out / TRIALS_FILE, buffer.getvalue())
    summary.files["trials"] = str(out / TRIALS_FILE)
    if summary.best is not None:
        config = _attr(study, study.trials[summary.best.number], "config", dict)
        if config is None:
            raise RunError(f"the best trial ({summary.best.number}) of study "
                           f"{summary.study!r} records no config", column="config",
                           fix="the study's storage is damaged: continue it from a copy made "
                           "before, or start another study (another --study and --out)")
        header = (f"# The best trial ({summary.best.number}) of study {summary.study}: "
                  f"validation accuracy {summary.best.score:.4f} on the search's fixed "
                  "episodes.\n# metamodal train --config best.toml --out RUN\n")
        plain = {k: v for k, v in config.items() if v is not None}
        atomic_write_text(out / BEST_FILE, header + tomli_w.dumps(plain))
        summary.files["best"] = str(out / BEST_FILE)
    report = out / REPORT_DIR
    report.mkdir(exist_ok=True)
    _plot_history(summary, report / "history.png")
    if summary.importances:
        _plot_importances(summary.importances, report / "importance.png")
    atomic_write_text(report / "index.html", _html(summary))
    summary.files["report"] = str(report / "index.html")
    return summary


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _plot_history(summary: SearchSummary, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in summary.rows if r.score is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([r.number for r in done], [r.score for r in done], s=18, label="trial")
    best, line = -1.0, []
    for r in sorted(done, key=lambda r: r.number):
        best = max(best, r.score)
        line.append((r.number, best))
    if line:
        ax.step(*zip(*line, strict=True), where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def _plot_importances(importances: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.35 * len(names)))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    fig.tight_layout()
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    def draw(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    atomic_write(path, draw)
    plt.close(fig)


def _html(summary: SearchSummary) -> str:
    names = sorted({name for row in summary.rows for name in row.values})
    head = "".join(f"<th>{html.escape(n)}</th>" for n in ["trial", "state", "score", "±",
                                                           *names, "error"])
    rows = []
    for r in summary.rows:
        cells = [r.number, r.state, _num(r.score), _num(r.ci95),
                 *[r.values.get(n, "") for n in names], r.error or ""]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
                    + "</tr>")
    best = ("none completed" if summary.best is None else
            f"trial {summary.best.number}: {summary.best.score:.4f} (best.toml)")
    images = '<img src="history.png" alt="history">' + (
        '<img src="importance.png" alt="importance">' if summary.importances else "")
    return (f"<!doctype html><meta charset=utf-8><title>search {html.escape(summary.study)}"
            f"</title><h1>Search {html.escape(summary.study)}</h1><p>Best: "
            f"{html.escape(best)}</p>{images}<table border=1 cellpadding=3>"
            f"<tr>{head}</tr>{''.join(rows)}</table>")

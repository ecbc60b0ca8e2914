"""The results section of a report: methods beside their baselines with 95% confidence
intervals, the paired differences of results measured on the same episodes, and the training
time; also the same results as a text table for a terminal."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metamodal.evaluate.report.render import (
    BASELINE_PREFIX,
    ResultsLike,
    Section,
    bar_plot,
    html_image,
    html_table,
    md_table,
    named_results,
    num,
    pct,
)
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.stats import paired_difference

METHODS_PNG = "methods.png"


def same_episodes(a: EvalResult, b: EvalResult) -> bool:
    """Whether two results were measured on the same episodes (equal ``episode_digest``;
    without a digest, equal seed, ways, shots, queries and episode count), so that they can be
    compared episode by episode.

    Example:
        >>> a = EvalResult(0.9, 0.02, 0.9, 2, 5, 1, 15, 0, [0.9, 0.9], episode_digest="x")
        >>> b = EvalResult(0.9, 0.02, 0.9, 2, 5, 1, 15, 0)
        >>> same_episodes(a, a.renamed("b")), same_episodes(a, b)
        (True, False)
    """
    if not a.accuracies or len(a.accuracies) != len(b.accuracies):
        return False
    if a.episode_digest and b.episode_digest:
        return a.episode_digest == b.episode_digest
    keys = ("seed", "ways", "shots", "queries", "episodes")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def paired_comparisons(results: ResultsLike) -> list[dict[str, Any]]:
    """Paired differences of every method against the references, on shared episodes only.

    The references are the results whose name starts with ``"baseline"``, or else the first
    result; every other result is compared with each reference. A pair is compared only when
    both were measured on the same episodes (`same_episodes`).

    Args:
        results: name -> `EvalResult`, or a list of named results.

    Returns:
        rows ``{"method", "reference", "difference", "ci95", "significant"}`` (difference and
        ci95 as fractions, ``method - reference``).

    Example:
        >>> a = EvalResult(0.9, 0.02, 0.9, 3, 5, 1, 15, 0, [0.9, 0.95, 0.85])
        >>> b = EvalResult(0.7, 0.02, 0.7, 3, 5, 1, 15, 0, [0.7, 0.75, 0.65])
        >>> row = paired_comparisons({"baseline": b, "method": a})[0]
        >>> row["method"], round(row["difference"], 2), row["significant"]
        ('method', 0.2, True)
    """
    named = named_results(results)
    if len(named) < 2:
        return []
    refs = [(n, r) for n, r in named if n.lower().startswith(BASELINE_PREFIX)] or [named[0]]
    rows = []
    ref_names = {n for n, _ in refs}
    for ref_name, ref in refs:
        for name, r in named:
            if name in ref_names or not same_episodes(r, ref):
                continue
            diff = paired_difference(r.accuracies, ref.accuracies)
            rows.append(
                {
                    "method": name,
                    "reference": ref_name,
                    "difference": diff.mean,
                    "ci95": diff.ci95,
                    "significant": diff.significant,
                }
            )
    return rows


def format_results_table(results: ResultsLike) -> str:
    """A fixed-width text table of results, for a terminal.

    Args:
        results: name -> `EvalResult` (in display order), or a list of named results.

    Returns:
        lines ``method  accuracy (%)  macro-F1  episodes``, accuracy as ``mean ± ci95`` in
        percent, joined by newlines (no trailing newline).

    Example:
        >>> r = EvalResult(0.9321, 0.0045, 0.93, 600, 5, 1, 15, 0)
        >>> print(format_results_table({"protonet": r}))
        method    accuracy (%)  macro-F1  episodes
        protonet  93.21 ± 0.45  0.930          600
    """
    header = ["method", "accuracy (%)", "macro-F1", "episodes"]
    rows = [[name, f"{pct(r.accuracy)} ± {pct(r.ci95)}", num(r.macro_f1), str(r.episodes)]
            for name, r in named_results(results)]
    return text_table(header, rows, right=1)


def text_table(header: list[str], rows: list[list[str]], *, right: int = 0) -> str:
    """Fixed-width columns for a terminal, two spaces apart: the last ``right`` columns
    right-aligned, the others left-aligned (no trailing spaces or newline).

    Example:
        >>> print(text_table(["a", "count"], [["xyz", "7"]], right=1))
        a    count
        xyz      7
    """
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(width) if c >= len(row) - right else cell.ljust(width)
                 for c, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _result_rows(named: list[tuple[str, EvalResult]]) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Accuracy (%)", "95% CI (±)", "Macro-F1", "Episodes", "Ways", "Shots"]
    header += ["Queries", "Seed"]
    rows = [
        [
            name,
            pct(r.accuracy),
            pct(r.ci95),
            num(r.macro_f1),
            str(r.episodes),
            str(r.ways) if r.ways is not None else "varies",
            str(r.shots) if r.shots is not None else "varies",
            str(r.queries) if r.queries is not None else "varies",
            str(r.seed),
        ]
        for name, r in named
    ]
    return header, rows


def _paired_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Reference", "Difference (points)", "95% CI (±)", "Significant"]
    body = [
        [
            row["method"],
            row["reference"],
            f"{100 * row['difference']:+.2f}" if math.isfinite(row["difference"]) else "n/a",
            pct(row["ci95"]),
            ("yes, higher" if row["difference"] > 0 else "yes, lower")
            if row["significant"]
            else "no",
        ]
        for row in rows
    ]
    return header, body


def results_section(named: list[tuple[str, EvalResult]], paired: list[dict[str, Any]],
                    out: Path) -> Section:
    """The methods section: ``methods.png`` (written into ``out``), the table of results and,
    when there are any, the paired differences (`paired_comparisons`).

    Args:
        named: ``(name, result)`` pairs in display order (`named_results`).
        paired: the rows of `paired_comparisons` of these results.
        out: the report directory.
    """
    section = Section()
    if not named:
        return section
    bar_plot(named, out / METHODS_PNG, "Methods")
    header, rows = _result_rows(named)
    section.markdown += ["## Methods", "", f"![methods]({METHODS_PNG})", "",
                         md_table(header, rows), ""]
    section.html += ["<h2>Methods</h2>", html_image(METHODS_PNG, "methods"),
                     html_table(header, rows)]
    section.html.append(
        '<p class="note">Accuracy is the mean over test episodes; ± is the half width of '
        "its 95% confidence interval (1.96 · std / √episodes).</p>"
    )
    if paired:
        header, rows = _paired_rows(paired)
        section.markdown += ["### Paired differences (same episodes)", "",
                             md_table(header, rows), ""]
        section.html += ["<h3>Paired differences (same episodes)</h3>",
                         html_table(header, rows)]
        section.html.append(
            '<p class="note">Method minus reference, per episode, averaged; significant '
            "when the 95% interval of the difference excludes zero.</p>"
        )
    return section


def training_time_section(timing: Mapping[str, float]) -> Section:
    """A table of wall-clock training seconds per method (empty without any).

    Example:
        >>> training_time_section({"protonet": 12.4}).markdown[0]
        '## Training time'
    """
    section = Section()
    if timing:
        header = ["training", "seconds"]
        rows = [[name, f"{seconds:.0f}"] for name, seconds in timing.items()]
        section.markdown += ["## Training time", "", md_table(header, rows), ""]
        section.html += ["<h2>Training time</h2>", html_table(header, rows)]
    return section

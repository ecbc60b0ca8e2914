"""Assemble a report from its sections: ``results.json``, ``results.md`` and a one-page
``index.html``, beside the plots the sections draw.

A report puts every method beside its baseline with 95% confidence intervals, and, where two
results were measured on the same episodes, the paired difference between them (which tells
methods apart far more sharply than overlapping intervals). Each section is built by its own
module (`metamodal.evaluate.report.results`, ``robustness``, ``mapping``, ``learning``); this
module orders them, and writes and reads the files.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metamodal.errors import ConfigError, OutputError, RunError
from metamodal.evaluate.report.learning import LEARNING_CURVE_PNG, learning_section
from metamodal.evaluate.report.mapping import (
    IMPUTATION_PNG,
    PROJECTION_PNG,
    MappingResults,
    mapping_section,
)
from metamodal.evaluate.report.render import (
    CSS,
    Section,
    jsonable,
    md_text,
    named_results,
    write_bytes,
)
from metamodal.evaluate.report.results import (
    METHODS_PNG,
    paired_comparisons,
    results_section,
    training_time_section,
)
from metamodal.evaluate.report.robustness import (
    ABLATION_PNG,
    ROBUSTNESS_PNG,
    ablation_section,
    robustness_section,
)
from metamodal.evaluate.result import EvalResult
from metamodal.io import make_directory

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
INDEX_HTML = "index.html"
REPORT_PAGES = (INDEX_HTML, RESULTS_MD, RESULTS_JSON)
"""The pages every report writes; ``results.json`` marks a directory a report wrote."""

REPORT_PLOTS = frozenset({METHODS_PNG, ABLATION_PNG, ROBUSTNESS_PNG, LEARNING_CURVE_PNG,
                          PROJECTION_PNG, IMPUTATION_PNG})
"""The plots a report draws before its pages (``results.json`` first): a directory holding
only these is a report stopped before its pages, and is written again."""


def check_report_directory(out_dir: str | Path) -> None:
    """`OutputError` when ``out_dir`` is empty, is a symbolic link (the report would land
    where it points), or holds files other than a report's plots (`REPORT_PLOTS`) while no
    report finished there (its ``results.json``): writing there would replace the user's."""
    if str(out_dir) == "":
        raise OutputError("no report directory given", column="out",
                          fix="give the report a directory, e.g. report")
    out = Path(out_dir)
    if out.is_symlink():
        raise OutputError("is a symbolic link: the report would be written where it points",
                          file=out, fix="remove the link, or write the report elsewhere")
    if not out.is_dir() or (out / RESULTS_JSON).is_file():
        return
    held = sorted(entry.name for entry in out.iterdir())
    if set(held) - REPORT_PLOTS:
        raise OutputError(f"holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''} "
                          f"and no report wrote there (no {RESULTS_JSON}): writing the report "
                          "would replace them", file=out,
                          fix="write the report to a new or empty directory")


def write_report(
    out_dir: str | Path,
    *,
    results: Mapping[str, EvalResult] | None = None,
    ablation: Sequence[EvalResult] | None = None,
    robustness: Mapping[str, Sequence[EvalResult]] | None = None,
    learning_curve: Sequence[Mapping[str, Any]] | None = None,
    training_seconds: Mapping[str, float] | None = None,
    title: str = "metamodal report",
    mapping: MappingResults | None = None,
    sections: Sequence[Section] = (),
) -> Path:
    """Write an evaluation report: PNG plots, ``results.json``, ``results.md``, ``index.html``.

    Files written (each atomically: temp file then rename), for the sections given, in this
    order:

    - ``methods.png``: accuracy of each method as a bar with its 95% CI (baselines in grey,
      chance as a dashed line), its table and the paired comparisons (`paired_comparisons`);
    - a table of training time per method (``training_seconds``);
    - ``ablation.png``: the same for the modality ablation (`modality_ablation`);
    - ``robustness.png``: accuracy vs fraction of samples with a modality dropped, one line per
      modality with a CI band (`missing_modality_curve`);
    - the mapping sections (`MappingResults`: retrieval, zero-shot, ``imputation.png``,
      ``joint_space.png``);
    - ``learning_curve.png``: training loss and train / validation accuracy per step;
    - any further ``sections`` (built with `metamodal.evaluate.report.render.Section`);
    - ``results.json``: everything above as data (read back with `read_results`);
    - ``results.md``: the tables in Markdown;
    - ``index.html``: one self-contained page (inline style, images by relative path) with all
      plots and tables; names are HTML-escaped.

    Args:
        out_dir: the report directory (created if needed), e.g. ``RUN/report``.
        results: method name -> `EvalResult`, e.g. ``{"protonet+gated": r1,
            "baseline: nearest-centroid": r0}``; names starting with "baseline" are the
            references of the paired comparisons.
        ablation: results of `modality_ablation`.
        robustness: modality -> results per drop rate, from `missing_modality_curve`.
        learning_curve: rows of ``metrics.jsonl`` (``step``, ``train_loss``, ``train_acc``,
            ``val_acc``, optional ``val_loss`` and ``val_ci95``).
        training_seconds: method (or run) name -> wall-clock seconds of its training.
        title: the report's title.
        mapping: a `MappingResults` (retrieval, zero-shot, imputation, joint-space picture),
            shown after the robustness section.
        sections: further sections, shown last; their ``data`` goes to ``results.json``.

    Returns:
        the report directory (open ``<it>/index.html``).

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.9, 600, 5, 1, 15, 0)
        >>> out = write_report("run/report", results={"protonet": r})  # doctest: +SKIP
        >>> (out / "index.html").is_file()  # doctest: +SKIP
        True
    """
    check_report_directory(out_dir)
    out = Path(out_dir)
    make_directory(out)
    named = named_results(results)
    ablation_list = list(ablation) if ablation else []
    robust = {m: list(curve) for m, curve in robustness.items() if curve} if robustness else {}
    curve_rows = [dict(row) for row in learning_curve] if learning_curve else []
    paired = paired_comparisons(dict(named)) if named else []
    timing = {str(k): float(v) for k, v in (training_seconds or {}).items()}

    head = Section([f"# {md_text(title)}", ""], [f"<h1>{html.escape(title)}</h1>"])
    if not (named or ablation_list or robust or curve_rows or timing or mapping or sections):
        head.markdown.append("Nothing to report.")
        head.html.append('<p class="note">Nothing to report.</p>')
    parts = [
        head,
        results_section(named, paired, out),
        training_time_section(timing),
        ablation_section(ablation_list, out),
        robustness_section(robust, out),
        mapping_section(mapping, out) if mapping is not None else Section(),
        learning_section(curve_rows, out),
        *sections,
    ]
    extra: dict[str, Any] = {}
    for part in sections:
        extra.update(part.data)
    data = {
        "title": title,
        "results": {name: r.to_dict() for name, r in named},
        "paired": paired,
        "ablation": [r.to_dict() for r in ablation_list] or None,
        "robustness": {m: [r.to_dict() for r in c] for m, c in robust.items()} or None,
        "learning_curve": curve_rows or None,
        "training_seconds": timing or None,
        "mapping": parts[5].data or None,
        **extra,
    }
    md = [line for part in parts for line in part.markdown]
    page = [fragment for part in parts for fragment in part.html]
    text = json.dumps(jsonable(data), indent=2, ensure_ascii=False, allow_nan=False)
    write_bytes(out / RESULTS_JSON, (text + "\n").encode("utf-8"))
    write_bytes(out / RESULTS_MD, ("\n".join(md).rstrip() + "\n").encode("utf-8"))
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(page)
        + "\n</body></html>\n"
    )
    write_bytes(out / INDEX_HTML, document.encode("utf-8"))
    return out


def read_results(path: str | Path) -> dict[str, Any]:
    """Read a report's ``results.json`` back into `EvalResult` objects.

    Args:
        path: the ``results.json`` file, or the report directory holding it.

    Returns:
        ``{"title", "results": dict[str, EvalResult], "ablation": list | None,
        "robustness": dict[str, list] | None, "learning_curve": list | None,
        "training_seconds": dict | None}``; the keys other
        than ``title`` can be passed back to `write_report` to redraw the report.

    Raises:
        RunError: the file is missing or not a report's JSON.

    Example:
        >>> data = read_results("run/report")  # doctest: +SKIP
        >>> write_report("run/report2", **{k: v for k, v in data.items()})  # doctest: +SKIP
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        results = {n: EvalResult.from_dict(d) for n, d in (data.get("results") or {}).items()}
        ablation = [EvalResult.from_dict(d) for d in data.get("ablation") or []] or None
        robustness = {
            m: [EvalResult.from_dict(d) for d in curve]
            for m, curve in (data.get("robustness") or {}).items()
        } or None
    except (OSError, ValueError, AttributeError, TypeError, ConfigError, RecursionError) as err:
        raise RunError(
            f"cannot read report results: {err}",
            file=path,
            fix="point at a results.json written by write_report",
        ) from None
    return {
        "title": data.get("title", "metamodal report"),
        "results": results,
        "ablation": ablation,
        "robustness": robustness,
        "learning_curve": data.get("learning_curve"),
        "training_seconds": data.get("training_seconds"),
    }


__all__ = ["INDEX_HTML", "RESULTS_JSON", "RESULTS_MD", "read_results", "write_report"]

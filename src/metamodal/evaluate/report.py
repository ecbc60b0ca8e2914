"""Evaluation reports: plots (PNG), ``results.json``, a Markdown table and a one-page HTML view.

A report puts every method beside its baseline with 95% confidence intervals, and, where two
results were measured on the same episodes, the paired difference between them (which tells
methods apart far more sharply than overlapping intervals). Plots are drawn with matplotlib's
object-oriented API on the Agg canvas, so writing a report never opens a window nor changes
the global pyplot backend.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metamodal.errors import ConfigError, RunError
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.stats import paired_difference
from metamodal.io import atomic_write

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
INDEX_HTML = "index.html"
METHODS_PNG = "methods.png"
ABLATION_PNG = "ablation.png"
ROBUSTNESS_PNG = "robustness.png"
LEARNING_CURVE_PNG = "learning_curve.png"
BASELINE_PREFIX = "baseline"
"""Results whose name starts with this are the references of the paired comparisons."""

ResultsLike = Mapping[str, EvalResult] | Sequence[EvalResult]


# ----------------------------------------------------------------------------- small helpers


def _named(results: ResultsLike | None) -> list[tuple[str, EvalResult]]:
    if results is None:
        return []
    if isinstance(results, Mapping):
        return [(str(name), r) for name, r in results.items()]
    return [(r.name or f"result {k + 1}", r) for k, r in enumerate(results)]


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _accuracy_text(r: EvalResult) -> str:
    return f"{_pct(r.accuracy)}% ± {_pct(r.ci95)}"


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None."""
    if isinstance(obj, EvalResult):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`metamodal.io.atomic_write`)."""
    atomic_write(path, lambda temp: temp.write_bytes(data))


def _finite(x: float | None, default: float = 0.0) -> float:
    return x if x is not None and math.isfinite(x) else default


# ----------------------------------------------------------------------------- comparisons


def paired_comparisons(results: ResultsLike) -> list[dict[str, Any]]:
    """Paired differences of every method against the references, on shared episodes only.

    The references are the results whose name starts with ``"baseline"``, or else the first
    result; every other result is compared with each reference. A pair is compared only when
    both were measured on the same episodes (equal ``episode_digest``; when a digest is
    missing, equal seed, ways, shots, queries and episode count).

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
    named = _named(results)
    if len(named) < 2:
        return []
    refs = [(n, r) for n, r in named if n.lower().startswith(BASELINE_PREFIX)] or [named[0]]
    rows = []
    ref_names = {n for n, _ in refs}
    for ref_name, ref in refs:
        for name, r in named:
            if name in ref_names or not _same_episodes(r, ref):
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


def _same_episodes(a: EvalResult, b: EvalResult) -> bool:
    if not a.accuracies or len(a.accuracies) != len(b.accuracies):
        return False
    if a.episode_digest and b.episode_digest:
        return a.episode_digest == b.episode_digest
    keys = ("seed", "ways", "shots", "queries", "episodes")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


# ----------------------------------------------------------------------------- text tables


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
    header = ("method", "accuracy (%)", "macro-F1", "episodes")
    rows = [
        (name, f"{_pct(r.accuracy)} ± {_pct(r.ci95)}", _num(r.macro_f1), str(r.episodes))
        for name, r in _named(results)
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2])]
        cells.append(row[3].rjust(widths[3]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _md_text(text: str) -> str:
    """Text for Markdown: ``<`` and ``>`` escaped so names never become HTML."""
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return _md_text(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _result_rows(named: list[tuple[str, EvalResult]]) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Accuracy (%)", "95% CI (±)", "Macro-F1", "Episodes", "Ways", "Shots"]
    header += ["Queries", "Seed"]
    rows = [
        [
            name,
            _pct(r.accuracy),
            _pct(r.ci95),
            _num(r.macro_f1),
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
            _pct(row["ci95"]),
            ("yes, higher" if row["difference"] > 0 else "yes, lower")
            if row["significant"]
            else "no",
        ]
        for row in rows
    ]
    return header, body


def _ablation_rows(ablation: list[EvalResult]) -> tuple[list[str], list[list[str]]]:
    named = _named(ablation)
    full = next((r for n, r in named if n == "all"), None)
    header = ["Variant", "Modalities", "Accuracy (%)", "95% CI (±)", "Δ vs all (points)"]
    rows = []
    for name, r in named:
        delta = "—"
        if full is not None and r is not full and _same_episodes(r, full):
            d = paired_difference(r.accuracies, full.accuracies)
            delta = f"{100 * d.mean:+.2f} ± {_pct(d.ci95)}" + (" *" if d.significant else "")
        rows.append([name, ", ".join(r.modalities or []), _pct(r.accuracy), _pct(r.ci95), delta])
    return header, rows


def _rates(robustness: Mapping[str, list[EvalResult]]) -> dict[str, list[float]]:
    return {
        m: [_finite((r.drop or {}).get(m), k / max(1, len(curve) - 1)) for k, r in enumerate(curve)]
        for m, curve in robustness.items()
    }


def _robustness_rows(
    robustness: Mapping[str, list[EvalResult]],
) -> tuple[list[str], list[list[str]]]:
    rates = _rates(robustness)
    all_rates = sorted({x for xs in rates.values() for x in xs})
    header = ["Modality"] + [f"{100 * x:g}% dropped" for x in all_rates]
    rows = []
    for m, curve in robustness.items():
        by_rate = dict(zip(rates[m], curve, strict=True))
        rows.append([m] + [_accuracy_text(by_rate[x]) if x in by_rate else "—" for x in all_rates])
    return header, rows


def _learning_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = ("step", "train_loss", "train_acc", "val_loss", "val_acc", "val_ci95")
    keys = tuple(k for k in keys if any(k in row for row in rows))
    measured = [row for row in rows if any(_is_number(row.get(k)) for k in keys[1:])]
    last = measured[-1] if measured else rows[-1]
    best_val = max(
        (row for row in rows if _is_number(row.get("val_acc"))),
        key=lambda row: row["val_acc"],
        default=None,
    )
    header = ["", *keys]
    body = [["last", *[_cell(last.get(k)) for k in keys]]]
    if best_val is not None:
        body.append(["best val", *[_cell(best_val.get(k)) for k in keys]])
    return header, body


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return _num(value, 4)
    return str(value)


# ----------------------------------------------------------------------------- plots


def _plain(text: str) -> str:
    """A label matplotlib draws as typed (``$`` would start mathtext)."""
    return str(text).replace("$", r"\$")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    _atomic_write(path, buffer.getvalue())


def _bar_plot(named: list[tuple[str, EvalResult]], path: Path, title: str) -> None:
    """Horizontal bars of accuracy (%) with 95% CI error bars; a dashed line marks chance."""
    n = len(named)
    fig = _figure(7.5, 1.2 + 0.45 * n)
    ax = fig.subplots()
    ys = list(range(n))[::-1]
    acc = [100 * _finite(r.accuracy) for _, r in named]
    err = [100 * _finite(r.ci95) for _, r in named]
    colors = [
        "#9e9e9e" if name.lower().startswith(BASELINE_PREFIX) else "#3f6fb5" for name, _ in named
    ]
    ax.barh(ys, acc, xerr=err, color=colors, capsize=4, height=0.6)
    ax.set_yticks(ys, [_plain(name) for name, _ in named])
    ways = {r.ways for _, r in named if r.ways}
    if len(ways) == 1:
        chance = 100 / next(iter(ways))
        ax.axvline(chance, color="#c0392b", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="lower right", fontsize="small")
    for y, a, e in zip(ys, acc, err, strict=True):
        ax.text(a + e + 1.0, y, f"{a:.1f}", va="center", fontsize="small")
    ax.set_xlim(0, 105)
    ax.set_xlabel("accuracy (%), mean ± 95% CI")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    _save_png(fig, path)


def _robustness_plot(robustness: Mapping[str, list[EvalResult]], path: Path) -> None:
    """One line per modality: accuracy vs fraction dropped, with a 95% CI band."""
    fig = _figure(6.5, 4.2)
    ax = fig.subplots()
    rates = _rates(robustness)
    ways = set()
    for m, curve in robustness.items():
        x = [100 * r for r in rates[m]]
        y = [100 * _finite(r.accuracy, math.nan) for r in curve]
        e = [100 * _finite(r.ci95) for r in curve]
        (line,) = ax.plot(x, y, marker="o", label=_plain(m))
        ax.fill_between(
            x,
            [a - b for a, b in zip(y, e, strict=True)],
            [a + b for a, b in zip(y, e, strict=True)],
            color=line.get_color(),
            alpha=0.2,
        )
        ways |= {r.ways for r in curve if r.ways}
    if len(ways) == 1:
        ax.axhline(
            100 / next(iter(ways)), color="#c0392b", linestyle="--", linewidth=1, label="chance"
        )
    ax.set_xlabel("samples with the modality dropped (%)")
    ax.set_ylabel("accuracy (%), mean ± 95% CI")
    ax.set_title("Robustness to a missing modality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save_png(fig, path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for k, row in enumerate(rows):
        value = row.get(key)
        if _is_number(value):
            xs.append(float(row.get("step", k)))
            ys.append(float(value))
    return xs, ys


def _learning_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss (left) and train / validation accuracy (right) against the step."""
    fig = _figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    xs, ys = _series(rows, "train_loss")
    if xs:
        loss_ax.plot(xs, ys, color="#3f6fb5", label="train loss")
    vxs, vys = _series(rows, "val_loss")
    if vxs:
        loss_ax.plot(vxs, vys, color="#e67e22", marker="o", label="val loss")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("Loss")
    loss_ax.grid(alpha=0.3)
    if xs or vxs:
        loss_ax.legend(fontsize="small")
    xs, ys = _series(rows, "train_acc")
    if xs:
        acc_ax.plot(xs, [100 * y for y in ys], color="#3f6fb5", label="train accuracy")
    vxs, vys = _series(rows, "val_acc")
    if vxs:
        acc_ax.plot(vxs, [100 * y for y in vys], color="#e67e22", marker="o", label="val accuracy")
        band = [row for row in rows if _is_number(row.get("val_acc"))]
        ci = [row["val_ci95"] if _is_number(row.get("val_ci95")) else 0.0 for row in band]
        if any(ci):
            acc_ax.fill_between(
                vxs,
                [100 * (y - c) for y, c in zip(vys, ci, strict=True)],
                [100 * (y + c) for y, c in zip(vys, ci, strict=True)],
                color="#e67e22",
                alpha=0.2,
            )
    acc_ax.set_xlabel("step")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_title("Accuracy")
    acc_ax.grid(alpha=0.3)
    if xs or vxs:
        acc_ax.legend(fontsize="small")
    _save_png(fig, path)


# ----------------------------------------------------------------------------- documents


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 60em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; height: auto; }
p.note { color: #555; font-size: 0.9em; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_image(file: str, alt: str) -> str:
    src = html.escape(file, quote=True)
    return f'<p><img src="{src}" alt="{html.escape(alt, quote=True)}"></p>'


def write_report(
    out_dir: str | Path,
    *,
    results: Mapping[str, EvalResult] | None = None,
    ablation: Sequence[EvalResult] | None = None,
    robustness: Mapping[str, Sequence[EvalResult]] | None = None,
    learning_curve: Sequence[Mapping[str, Any]] | None = None,
    training_seconds: Mapping[str, float] | None = None,
    title: str = "metamodal report",
    mapping: Any = None,
) -> Path:
    """Write an evaluation report: PNG plots, ``results.json``, ``results.md``, ``index.html``.

    Files written (each atomically: temp file then rename), for the sections given:

    - ``methods.png``: accuracy of each method as a bar with its 95% CI (baselines in grey,
      chance as a dashed line);
    - ``ablation.png``: the same for the modality ablation (`modality_ablation`);
    - ``robustness.png``: accuracy vs fraction of samples with a modality dropped, one line per
      modality with a CI band (`missing_modality_curve`);
    - ``learning_curve.png``: training loss and train / validation accuracy per step;
    - a table of training time per method (``training_seconds``);
    - ``results.json``: everything above as data (read back with `read_results`), plus the
      paired comparisons (`paired_comparisons`);
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
        mapping: a `metamodal.evaluate.mapping_report.MappingResults` (retrieval, zero-shot,
            imputation, joint-space picture), shown after the robustness section.

    Returns:
        the report directory (open ``<it>/index.html``).

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.9, 600, 5, 1, 15, 0)
        >>> out = write_report("run/report", results={"protonet": r})  # doctest: +SKIP
        >>> (out / "index.html").is_file()  # doctest: +SKIP
        True
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    named = _named(results)
    ablation_list = list(ablation) if ablation else []
    robust = {m: list(curve) for m, curve in robustness.items() if curve} if robustness else {}
    curve_rows = [dict(row) for row in learning_curve] if learning_curve else []
    paired = paired_comparisons(dict(named)) if named else []

    md = [f"# {_md_text(title)}", ""]
    page = [f"<h1>{html.escape(title)}</h1>"]
    timing = {str(k): float(v) for k, v in (training_seconds or {}).items()}
    if not (named or ablation_list or robust or curve_rows or timing or mapping):
        md.append("Nothing to report.")
        page.append('<p class="note">Nothing to report.</p>')

    if named:
        _bar_plot(named, out / METHODS_PNG, "Methods")
        header, rows = _result_rows(named)
        md += ["## Methods", "", f"![methods]({METHODS_PNG})", "", _md_table(header, rows), ""]
        page += ["<h2>Methods</h2>", _html_image(METHODS_PNG, "methods"), _html_table(header, rows)]
        page.append(
            '<p class="note">Accuracy is the mean over test episodes; ± is the half width of '
            "its 95% confidence interval (1.96 · std / √episodes).</p>"
        )
        if paired:
            header, rows = _paired_rows(paired)
            md += ["### Paired differences (same episodes)", "", _md_table(header, rows), ""]
            page += ["<h3>Paired differences (same episodes)</h3>", _html_table(header, rows)]
            page.append(
                '<p class="note">Method minus reference, per episode, averaged; significant '
                "when the 95% interval of the difference excludes zero.</p>"
            )

    if timing:
        header = ["training", "seconds"]
        rows = [[name, f"{seconds:.0f}"] for name, seconds in timing.items()]
        md += ["## Training time", "", _md_table(header, rows), ""]
        page += ["<h2>Training time</h2>", _html_table(header, rows)]

    if ablation_list:
        _bar_plot(_named(ablation_list), out / ABLATION_PNG, "Modality ablation")
        header, rows = _ablation_rows(ablation_list)
        md += ["## Modality ablation", "", f"![ablation]({ABLATION_PNG})", ""]
        md += [_md_table(header, rows), ""]
        page += ["<h2>Modality ablation</h2>", _html_image(ABLATION_PNG, "modality ablation")]
        page.append(_html_table(header, rows))
        page.append('<p class="note">* the paired difference to "all" is significant.</p>')

    if robust:
        _robustness_plot(robust, out / ROBUSTNESS_PNG)
        header, rows = _robustness_rows(robust)
        md += ["## Robustness to a missing modality", "", f"![robustness]({ROBUSTNESS_PNG})", ""]
        md += [_md_table(header, rows), ""]
        page += ["<h2>Robustness to a missing modality</h2>"]
        page += [_html_image(ROBUSTNESS_PNG, "robustness"), _html_table(header, rows)]

    mapping_data: dict[str, Any] = {}
    if mapping is not None:
        from metamodal.evaluate.mapping_report import mapping_sections

        mapping_md, mapping_page, mapping_data = mapping_sections(mapping, out)
        md += mapping_md
        page += mapping_page

    if curve_rows:
        _learning_plot(curve_rows, out / LEARNING_CURVE_PNG)
        header, rows = _learning_rows(curve_rows)
        md += ["## Learning curve", "", f"![learning curve]({LEARNING_CURVE_PNG})", ""]
        md += [_md_table(header, rows), ""]
        page += ["<h2>Learning curve</h2>", _html_image(LEARNING_CURVE_PNG, "learning curve")]
        page.append(_html_table(header, rows))

    data = {
        "title": title,
        "results": {name: r.to_dict() for name, r in named},
        "paired": paired,
        "ablation": [r.to_dict() for r in ablation_list] or None,
        "robustness": {m: [r.to_dict() for r in c] for m, c in robust.items()} or None,
        "learning_curve": curve_rows or None,
        "training_seconds": timing or None,
        "mapping": mapping_data or None,
    }
    text = json.dumps(_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False)
    _atomic_write(out / RESULTS_JSON, (text + "\n").encode("utf-8"))
    _atomic_write(out / RESULTS_MD, ("\n".join(md).rstrip() + "\n").encode("utf-8"))
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(page)
        + "\n</body></html>\n"
    )
    _atomic_write(out / INDEX_HTML, document.encode("utf-8"))
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

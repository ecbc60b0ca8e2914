"""What every report section draws with: number formats, Markdown and HTML tables, figures
saved as PNG, and the `Section` a section builder returns.

Plots use matplotlib's object-oriented API on the Agg canvas, so writing a report never opens a
window nor changes the global pyplot backend. Files are written atomically.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.evaluate.result import EvalResult
from metamodal.io import atomic_write

BASELINE_PREFIX = "baseline"
"""Results whose name starts with this are the references of the paired comparisons (and are
drawn in grey)."""

ResultsLike = Mapping[str, EvalResult] | Sequence[EvalResult]
"""Results as name -> `EvalResult`, or a list of results named by their ``name``."""

CSS = """
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
"""The inline style of ``index.html``."""


@dataclass
class Section:
    """One part of a report, as the assembler puts it together.

    Args:
        markdown: lines of ``results.md``.
        html: fragments of ``index.html``.
        data: what the section adds to ``results.json`` (key -> JSON-able value).
    """

    markdown: list[str] = field(default_factory=list)
    html: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def named_results(results: ResultsLike | None) -> list[tuple[str, EvalResult]]:
    """``(name, result)`` pairs in order; a result of a list is named by its ``name``.

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.9, 600, 5, 1, 15, 0)
        >>> [n for n, _ in named_results([r, r.renamed("b")])]
        ['result 1', 'b']
    """
    if results is None:
        return []
    if isinstance(results, Mapping):
        return [(str(name), r) for name, r in results.items()]
    return [(r.name or f"result {k + 1}", r) for k, r in enumerate(results)]


def pct(x: float | None, digits: int = 2) -> str:
    """A fraction as a percentage, ``n/a`` when missing or not finite.

    Example:
        >>> pct(0.12345), pct(float("nan"))
        ('12.35', 'n/a')
    """
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals, ``n/a`` when missing or not finite.

    Example:
        >>> num(0.5), num(None)
        ('0.500', 'n/a')
    """
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def accuracy_text(r: EvalResult) -> str:
    """``mean% ± ci95`` of a result.

    Example:
        >>> accuracy_text(EvalResult(0.9, 0.01, 0.9, 600, 5, 1, 15, 0))
        '90.00% ± 1.00'
    """
    return f"{pct(r.accuracy)}% ± {pct(r.ci95)}"


def finite(x: float | None, default: float = 0.0) -> float:
    """``x``, or ``default`` when it is missing or not finite.

    Example:
        >>> finite(float("inf"), 1.0)
        1.0
    """
    return x if x is not None and math.isfinite(x) else default


def cell_text(value: Any) -> str:
    """A table cell: ``—`` for None, 4 decimals for a float, else the text.

    Example:
        >>> cell_text(None), cell_text(0.5), cell_text(3)
        ('—', '0.5000', '3')
    """
    if value is None:
        return "—"
    if isinstance(value, float):
        return num(value, 4)
    return str(value)


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None, results their ``to_dict()``.

    Example:
        >>> jsonable({"a": (1, float("nan"))})
        {'a': [1, None]}
    """
    if isinstance(obj, EvalResult):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`metamodal.io.atomic_write`)."""
    atomic_write(path, lambda temp: temp.write_bytes(data))


def md_text(text: str) -> str:
    """Text for Markdown: ``<`` and ``>`` escaped so names never become HTML.

    Example:
        >>> md_text("a<b>")
        'a&lt;b&gt;'
    """
    return str(text).replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(text: str) -> str:
    return md_text(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (cells escaped).

    Example:
        >>> print(md_table(["a", "b"], [["1", "x|y"]]))
        | a | b |
        |---|---|
        | 1 | x\\|y |
    """
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table (cells escaped).

    Example:
        >>> html_table(["a"], [["<1>"]])
        '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;1&gt;</td></tr></tbody></table>'
    """
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_image(file: str, alt: str) -> str:
    """An HTML paragraph showing the image ``file`` (a path relative to the page).

    Example:
        >>> html_image("a.png", "plot")
        '<p><img src="a.png" alt="plot"></p>'
    """
    src = html.escape(file, quote=True)
    return f'<p><img src="{src}" alt="{html.escape(alt, quote=True)}"></p>'


def plain_label(text: str) -> str:
    """A label matplotlib draws as typed (``$`` would start mathtext).

    Example:
        >>> plain_label("$5")
        '\\\\$5'
    """
    return str(text).replace("$", r"\$")


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi, laid out by
    constraints, on no global backend."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_png(fig: Any, path: Path) -> None:
    """Render ``fig`` as PNG into ``path`` atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())


def bar_plot(named: list[tuple[str, EvalResult]], path: Path, title: str) -> None:
    """Horizontal bars of accuracy (%) with 95% CI error bars; a dashed line marks chance;
    baselines are grey."""
    n = len(named)
    fig = new_figure(7.5, 1.2 + 0.45 * n)
    ax = fig.subplots()
    ys = list(range(n))[::-1]
    acc = [100 * finite(r.accuracy) for _, r in named]
    err = [100 * finite(r.ci95) for _, r in named]
    colors = [
        "#9e9e9e" if name.lower().startswith(BASELINE_PREFIX) else "#3f6fb5" for name, _ in named
    ]
    ax.barh(ys, acc, xerr=err, color=colors, capsize=4, height=0.6)
    ax.set_yticks(ys, [plain_label(name) for name, _ in named])
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
    save_png(fig, path)

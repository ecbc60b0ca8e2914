"""The learning-curve section of a report: training loss and train / validation accuracy per
step, from a run's ``metrics.jsonl``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metamodal.evaluate.report.render import (
    Section,
    cell_text,
    html_image,
    html_table,
    md_table,
    new_figure,
    save_png,
)
from metamodal.hints import is_number

LEARNING_CURVE_PNG = "learning_curve.png"


def _learning_rows(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    keys = ("step", "train_loss", "train_acc", "val_loss", "val_acc", "val_ci95")
    keys = tuple(k for k in keys if any(k in row for row in rows))
    measured = [row for row in rows if any(is_number(row.get(k)) for k in keys[1:])]
    last = measured[-1] if measured else rows[-1]
    best_val = max(
        (row for row in rows if is_number(row.get("val_acc"))),
        key=lambda row: row["val_acc"],
        default=None,
    )
    header = ["", *keys]
    body = [["last", *[cell_text(last.get(k)) for k in keys]]]
    if best_val is not None:
        body.append(["best val", *[cell_text(best_val.get(k)) for k in keys]])
    return header, body


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for k, row in enumerate(rows):
        value = row.get(key)
        if is_number(value):
            xs.append(float(row.get("step", k)))
            ys.append(float(value))
    return xs, ys


def _learning_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss (left) and train / validation accuracy (right) against the step."""
    fig = new_figure(10, 3.8)
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
        band = [row for row in rows if is_number(row.get("val_acc"))]
        ci = [row["val_ci95"] if is_number(row.get("val_ci95")) else 0.0 for row in band]
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
    save_png(fig, path)


def learning_section(rows: list[dict[str, Any]], out: Path) -> Section:
    """The learning curve: ``learning_curve.png`` (written into ``out``) and the last and best
    validated rows of ``metrics.jsonl`` (``step``, ``train_loss``, ``train_acc``, ``val_acc``,
    optional ``val_loss`` and ``val_ci95``); empty without rows."""
    section = Section()
    if not rows:
        return section
    _learning_plot(rows, out / LEARNING_CURVE_PNG)
    header, body = _learning_rows(rows)
    section.markdown += ["## Learning curve", "", f"![learning curve]({LEARNING_CURVE_PNG})", ""]
    section.markdown += [md_table(header, body), ""]
    section.html += ["<h2>Learning curve</h2>",
                     html_image(LEARNING_CURVE_PNG, "learning curve")]
    section.html.append(html_table(header, body))
    return section

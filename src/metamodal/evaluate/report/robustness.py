"""The modality sections of a report: the ablation (each modality alone and left out) and the
robustness curves (accuracy as a modality disappears from more samples)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from metamodal.evaluate.report.render import (
    Section,
    accuracy_text,
    bar_plot,
    finite,
    html_image,
    html_table,
    md_table,
    named_results,
    new_figure,
    pct,
    plain_label,
    save_png,
)
from metamodal.evaluate.report.results import same_episodes, text_table
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.stats import paired_difference

ABLATION_PNG = "ablation.png"
ROBUSTNESS_PNG = "robustness.png"


def _ablation_rows(ablation: list[EvalResult]) -> tuple[list[str], list[list[str]]]:
    """Each variant's modalities, accuracy, interval and paired difference to ``all`` on the
    same episodes (``*``: the difference's interval excludes 0)."""
    named = named_results(ablation)
    full = next((r for n, r in named if n == "all"), None)
    header = ["Variant", "Modalities", "Accuracy (%)", "95% CI (±)", "Δ vs all (points)"]
    rows = []
    for name, r in named:
        delta = "—"
        if full is not None and r is not full and same_episodes(r, full):
            d = paired_difference(r.accuracies, full.accuracies)
            delta = f"{100 * d.mean:+.2f} ± {pct(d.ci95)}" + (" *" if d.significant else "")
        rows.append([name, ", ".join(r.modalities or []), pct(r.accuracy), pct(r.ci95), delta])
    return header, rows


def format_ablation_table(ablation: list[EvalResult]) -> str:
    """The modality ablation as a text table for a terminal: the report's table, with each
    variant's paired difference to ``all`` in points.

    Example:
        >>> a = EvalResult(0.9, 0.01, 0.9, 2, 5, 1, 15, 0, [0.9, 0.9], "all", ["a", "b"])
        >>> b = EvalResult(0.8, 0.01, 0.8, 2, 5, 1, 15, 0, [0.8, 0.8], "only:a", ["a"])
        >>> print(format_ablation_table([a, b]))
        Variant  Modalities  Accuracy (%)  95% CI (±)  Δ vs all (points)
        all      a, b               90.00        1.00                  —
        only:a   a                  80.00        1.00    -10.00 ± 0.00 *
    """
    return text_table(*_ablation_rows(ablation), right=3)


def drop_rates(robustness: Mapping[str, list[EvalResult]]) -> dict[str, list[float]]:
    """Modality -> the drop rate of each point of its curve (from the results' ``drop``;
    evenly spaced in ``0..1`` where a result lacks it).

    Example:
        >>> r = EvalResult(0.9, 0.01, 0.9, 1, 5, 1, 15, 0, drop={"image": 0.5})
        >>> drop_rates({"image": [r]})
        {'image': [0.5]}
    """
    return {
        m: [finite((r.drop or {}).get(m), k / max(1, len(curve) - 1)) for k, r in enumerate(curve)]
        for m, curve in robustness.items()
    }


def _robustness_rows(
    robustness: Mapping[str, list[EvalResult]],
) -> tuple[list[str], list[list[str]]]:
    rates = drop_rates(robustness)
    all_rates = sorted({x for xs in rates.values() for x in xs})
    header = ["Modality"] + [f"{100 * x:g}% dropped" for x in all_rates]
    rows = []
    for m, curve in robustness.items():
        by_rate = dict(zip(rates[m], curve, strict=True))
        rows.append([m] + [accuracy_text(by_rate[x]) if x in by_rate else "—" for x in all_rates])
    return header, rows


def _robustness_plot(robustness: Mapping[str, list[EvalResult]], path: Path) -> None:
    """One line per modality: accuracy vs fraction dropped, with a 95% CI band."""
    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    rates = drop_rates(robustness)
    ways = set()
    for m, curve in robustness.items():
        x = [100 * r for r in rates[m]]
        y = [100 * finite(r.accuracy, math.nan) for r in curve]
        e = [100 * finite(r.ci95) for r in curve]
        (line,) = ax.plot(x, y, marker="o", label=plain_label(m))
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
    save_png(fig, path)


def ablation_section(ablation: list[EvalResult], out: Path) -> Section:
    """The modality ablation (`metamodal.evaluate.ablation.modality_ablation`):
    ``ablation.png`` (written into ``out``) and a table with the paired difference of each
    variant to ``all``; empty without results."""
    section = Section()
    if not ablation:
        return section
    bar_plot(named_results(ablation), out / ABLATION_PNG, "Modality ablation")
    header, rows = _ablation_rows(ablation)
    section.markdown += ["## Modality ablation", "", f"![ablation]({ABLATION_PNG})", ""]
    section.markdown += [md_table(header, rows), ""]
    section.html += ["<h2>Modality ablation</h2>",
                     html_image(ABLATION_PNG, "modality ablation")]
    section.html.append(html_table(header, rows))
    section.html.append('<p class="note">* the paired difference to "all" is significant.</p>')
    return section


def robustness_section(robustness: Mapping[str, list[EvalResult]], out: Path) -> Section:
    """The missing-modality curves (`metamodal.evaluate.robustness.missing_modality_curve`):
    ``robustness.png`` (written into ``out``) and a table by drop rate; empty without curves."""
    section = Section()
    if not robustness:
        return section
    _robustness_plot(robustness, out / ROBUSTNESS_PNG)
    header, rows = _robustness_rows(robustness)
    section.markdown += ["## Robustness to a missing modality", "",
                         f"![robustness]({ROBUSTNESS_PNG})", ""]
    section.markdown += [md_table(header, rows), ""]
    section.html += ["<h2>Robustness to a missing modality</h2>"]
    section.html += [html_image(ROBUSTNESS_PNG, "robustness"), html_table(header, rows)]
    return section

"""The cross-modal mapping sections of a report: retrieval, zero-shot and few+zero-shot,
imputation versus masking, and the 2-D picture of the joint space."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from metamodal.evaluate.projection import Projection
from metamodal.evaluate.report.render import (
    Section,
    html_image,
    html_table,
    md_table,
    new_figure,
    save_png,
)
from metamodal.evaluate.result import EvalResult
from metamodal.evaluate.retrieval import LEVELS, RetrievalReport
from metamodal.evaluate.robustness import IMPUTATION, MASKING, imputation_gains
from metamodal.evaluate.zeroshot import ZeroShotReport
from metamodal.mapping.retrieval import RECALL_AT

PROJECTION_PNG = "joint_space.png"
IMPUTATION_PNG = "imputation.png"


@dataclass
class MappingResults:
    """What `metamodal.evaluate.report.write_report` shows about cross-modal mapping (every
    part optional).

    Args:
        retrieval: from `metamodal.evaluate.retrieval.evaluate_retrieval`.
        zero_shot: from `metamodal.evaluate.zeroshot.evaluate_zero_shot`.
        imputation: from `metamodal.evaluate.robustness.imputation_curves`.
        projection: from `metamodal.evaluate.projection.joint_projection`.
    """

    retrieval: RetrievalReport | None = None
    zero_shot: ZeroShotReport | None = None
    imputation: dict[str, dict[str, list[EvalResult]]] | None = None
    projection: Projection | None = None


def _pct(mean: float, ci: float) -> str:
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def _retrieval_rows(report: RetrievalReport) -> tuple[list[str], list[list[str]]]:
    header = ["level", "method", "direction", *[f"R@{k} (%)" for k in RECALL_AT],
              "median rank", "queries"]
    rows = []
    for level in LEVELS:
        for r in report.rows:
            if r.level == level:
                rows.append([level, r.method, r.direction,
                             *[_pct(m, c) for m, c in r.recall.values()],
                             f"{r.median_rank:.0f}", str(r.queries)])
    return header, rows


def _zero_shot_rows(report: ZeroShotReport) -> tuple[list[str], list[list[str]]]:
    header = ["setting", "method", "accuracy (%)", "episodes"]
    rows = []
    for key in sorted(report.results, key=lambda k: int(k.split("-")[0])):
        for name, r in report.results[key].items():
            rows.append([key, name, _pct(r.accuracy, r.ci95), str(r.episodes)])
    rows.append(["", f"chance ({report.ways}-way)", f"{100 / report.ways:.1f}", ""])
    for key, (mean, ci) in report.gains.items():
        rows.append([key, "AM3 minus prototypes alone (paired)", f"{100 * mean:+.1f} ± "
                     f"{100 * ci:.1f}", ""])
    return header, rows


def _imputation_rows(curves: dict[str, dict[str, list[EvalResult]]]
                     ) -> tuple[list[str], list[list[str]]]:
    header = ["modality", "missing", "masking (%)", "imputation (%)", "imputation - masking"]
    rows = []
    gains = imputation_gains(curves)
    for modality, methods in curves.items():
        for masked, imputed, (rate, mean, ci) in zip(methods[MASKING], methods[IMPUTATION],
                                                     gains[modality], strict=True):
            rows.append([modality, f"{100 * rate:.0f}%", _pct(masked.accuracy, masked.ci95),
                         _pct(imputed.accuracy, imputed.ci95),
                         f"{100 * mean:+.1f} ± {100 * ci:.1f}"])
    return header, rows


def _imputation_plot(curves: dict[str, dict[str, list[EvalResult]]], path: Path) -> None:
    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    gains = imputation_gains(curves)
    for modality, methods in curves.items():
        x = [100 * g[0] for g in gains[modality]]
        (line,) = ax.plot(x, [100 * r.accuracy for r in methods[IMPUTATION]], marker="o",
                          label=f"{modality}: imputed")
        ax.plot(x, [100 * r.accuracy for r in methods[MASKING]], marker="x", linestyle="--",
                color=line.get_color(), label=f"{modality}: masked")
    ax.set_xlabel("samples with the modality missing (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Imputing a missing modality vs masking it")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small", ncol=2)
    save_png(fig, path)


def _projection_plot(projection: Projection, path: Path) -> None:
    fig = new_figure(6.5, 5.0)
    ax = fig.subplots()
    classes = list(dict.fromkeys(projection.classes))
    modalities = list(dict.fromkeys(projection.modalities))
    markers = "osD^vP*X"
    colours = [f"C{k % 10}" for k in range(len(classes))]
    xy = projection.coords.tolist()
    for m_index, modality in enumerate(modalities):
        for c_index, label in enumerate(classes):
            pts = [p for p, c, m in zip(xy, projection.classes, projection.modalities,
                                        strict=True) if c == label and m == modality]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.75,
                           marker=markers[m_index % len(markers)], color=colours[c_index])
    for m_index, modality in enumerate(modalities):
        ax.scatter([], [], marker=markers[m_index % len(markers)], color="grey", label=modality)
    ax.legend(fontsize="small", title="modality (colour = class)")
    ax.set_title(f"Joint space, PCA ({100 * projection.explained:.0f}% of the variance)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    save_png(fig, path)


def mapping_section(results: MappingResults, out: Path) -> Section:
    """The mapping sections of the parts ``results`` holds, in this order: retrieval,
    zero-shot, imputation vs masking (``imputation.png``), the joint space
    (``joint_space.png``); plots are written into ``out``, and each part adds its data under
    its own key (``retrieval``, ``zero_shot``, ``imputation``, ``projection``)."""
    section = Section()
    md, page, data = section.markdown, section.html, section.data
    if results.retrieval is not None:
        r = results.retrieval
        header, rows = _retrieval_rows(r)
        title = f"Cross-modal retrieval ({r.query_modality} <-> {r.target_modality})"
        md += [f"## {title}", "", md_table(header, rows), ""]
        page += [f"<h2>{html.escape(title)}</h2>", html_table(header, rows),
                 '<p class="note">Recall@K: share of queries whose hit (the same sample, or any '
                 "sample of its class) is among the K best targets; ± is the 95% interval over "
                 "queries. Baselines: random scores; ridge and CCA maps fitted on meta-train "
                 "samples over encoders that were not aligned.</p>"]
        data["retrieval"] = r.to_dict()
    if results.zero_shot is not None:
        header, rows = _zero_shot_rows(results.zero_shot)
        source = f"Classes described by {results.zero_shot.source}."
        md += ["## Zero-shot and few+zero-shot (class descriptions)", "", source, "",
               md_table(header, rows), ""]
        page += ["<h2>Zero-shot and few+zero-shot (class descriptions)</h2>",
                 f"<p>{html.escape(source)}</p>", html_table(header, rows)]
        data["zero_shot"] = results.zero_shot.to_dict()
    if results.imputation:
        _imputation_plot(results.imputation, out / IMPUTATION_PNG)
        header, rows = _imputation_rows(results.imputation)
        md += ["## Imputing a missing modality vs masking it", "",
               f"![imputation]({IMPUTATION_PNG})", "", md_table(header, rows), ""]
        page += ["<h2>Imputing a missing modality vs masking it</h2>",
                 html_image(IMPUTATION_PNG, "imputation vs masking"), html_table(header, rows)]
        data["imputation"] = {m: {k: [x.to_dict() for x in v] for k, v in rows_.items()}
                              for m, rows_ in results.imputation.items()}
    if results.projection is not None:
        _projection_plot(results.projection, out / PROJECTION_PNG)
        md += ["## The joint space", "", f"![joint space]({PROJECTION_PNG})", ""]
        page += ["<h2>The joint space</h2>", html_image(PROJECTION_PNG, "joint space"),
                 '<p class="note">Each point is one modality of one test sample (its encoder '
                 "output, L2-normalised), projected on the first two principal components; "
                 "colour is the class, the marker the modality.</p>"]
        data["projection"] = results.projection.to_dict()
    return section

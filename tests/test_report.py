"""Tests of metamodal.evaluate.report: plots, JSON, Markdown, HTML and the text table."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

from metamodal.errors import RunError
from metamodal.evaluate import (
    EvalResult,
    format_results_table,
    paired_comparisons,
    read_results,
    write_report,
)


def result(name: str, accuracies: list[float], digest: str = "d0", **kw: object) -> EvalResult:
    n = len(accuracies)
    mean = sum(accuracies) / n
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / (n - 1))
    fields = dict(
        accuracy=mean,
        ci95=1.96 * std / math.sqrt(n),
        macro_f1=mean - 0.01,
        episodes=n,
        ways=5,
        shots=1,
        queries=15,
        seed=0,
        accuracies=accuracies,
        name=name,
        modalities=["image", "text"],
        episode_digest=digest,
    )
    fields.update(kw)
    return EvalResult(**fields)  # type: ignore[arg-type]


METHOD = result("protonet+gated", [0.9, 0.85, 0.95, 0.9, 0.88, 0.92])
BASELINE = result("baseline: nearest-centroid", [0.6, 0.55, 0.65, 0.62, 0.58, 0.6])
TRICKY = result('<script>alert("x")</script> & co', [0.5, 0.52, 0.48, 0.5, 0.51, 0.49])
OTHER_EPISODES = result("other protocol", [0.7, 0.7, 0.71, 0.69, 0.7, 0.7], digest="d1")


def report_inputs() -> dict:
    ablation = [
        result("all", [0.9, 0.85, 0.95, 0.9, 0.88, 0.92]),
        result("only:image", [0.8, 0.78, 0.82, 0.8, 0.79, 0.81], modalities=["image"]),
        result("without:image", [0.3, 0.25, 0.35, 0.3, 0.28, 0.32], modalities=["text"]),
    ]
    robustness = {
        m: [
            result(f"drop:{m}={r:g}", [acc - r * 0.3 + 0.01 * k for k in range(-2, 3)], drop={m: r})
            for r in (0.0, 0.5, 1.0)
        ]
        for m, acc in (("image", 0.9), ("text", 0.85))
    }
    curve = [
        {"step": 0, "train_loss": 1.6, "train_acc": 0.2},
        {"step": 50, "train_loss": 1.1, "train_acc": 0.5, "val_acc": 0.45, "val_ci95": 0.02},
        {"step": 100, "train_loss": 0.7, "train_acc": 0.7, "val_acc": 0.6, "val_ci95": 0.02},
        {"step": 150, "train_loss": float("nan"), "train_acc": 0.8},
        {"step": 150, "event": "end", "best_val_acc": 0.6, "best_step": 100},
    ]
    return {
        "results": {
            "protonet+gated": METHOD,
            "baseline: nearest-centroid": BASELINE,
            TRICKY.name: TRICKY,
            "other protocol": OTHER_EPISODES,
        },
        "ablation": ablation,
        "robustness": robustness,
        "learning_curve": curve,
    }


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "nested" / "report"
    written = write_report(out, title="Field guide <5-way>", **report_inputs())
    assert written == out and (out / "index.html").is_file()
    return out


def test_pngs_are_valid_images(report_dir: Path) -> None:
    names = ["methods.png", "ablation.png", "robustness.png", "learning_curve.png"]
    for name in names:
        with Image.open(report_dir / name) as im:
            im.verify()
        with Image.open(report_dir / name) as im:
            assert im.format == "PNG"
            assert im.size[0] > 200 and im.size[1] > 100


def test_index_html_references_plots_and_escapes_names(report_dir: Path) -> None:
    page = (report_dir / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(sources) == sorted(
        ["methods.png", "ablation.png", "robustness.png", "learning_curve.png"]
    )
    for src in sources:
        assert (report_dir / src).is_file()  # relative and present
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page
    assert "Field guide &lt;5-way&gt;" in page
    assert "protonet+gated" in page and "90.00" in page


def test_results_json_round_trips(report_dir: Path) -> None:
    raw = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    entry = raw["results"]["protonet+gated"]
    assert {"accuracy", "ci95", "episodes", "ways", "shots"} <= set(entry)
    assert raw["learning_curve"][3]["train_loss"] is None  # NaN stored as null
    data = read_results(report_dir)
    inputs = report_inputs()
    assert data["results"] == inputs["results"]
    assert data["ablation"] == inputs["ablation"]
    assert data["robustness"] == inputs["robustness"]
    assert data["title"] == "Field guide <5-way>"
    assert data["learning_curve"][1] == inputs["learning_curve"][1]


def test_results_json_paired_comparisons(report_dir: Path) -> None:
    raw = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    rows = {(r["method"], r["reference"]): r for r in raw["paired"]}
    row = rows[("protonet+gated", "baseline: nearest-centroid")]
    assert row["difference"] == pytest.approx(METHOD.accuracy - BASELINE.accuracy)
    assert row["significant"] is True
    assert ("other protocol", "baseline: nearest-centroid") not in rows  # other episodes
    assert len(rows) == 2  # the two other methods on the baseline's episodes


def test_results_md_has_tables(report_dir: Path) -> None:
    md = (report_dir / "results.md").read_text(encoding="utf-8")
    assert md.startswith("# Field guide &lt;5-way&gt;")
    assert "<script>" not in md
    assert "| Method | Accuracy (%) | 95% CI (±) |" in md
    assert "| protonet+gated | 90.00 |" in md
    assert "![robustness](robustness.png)" in md
    assert "without:image" in md and "-60.00" in md  # ablation delta vs all, in points
    assert "| last | 150 | n/a | 0.8000 |" in md  # the end-of-training event row is skipped
    assert "| best val | 100 | 0.7000 | 0.7000 | 0.6000 | 0.0200 |" in md


def test_no_temporary_files_left(report_dir: Path) -> None:
    assert not [p.name for p in report_dir.iterdir() if p.name.startswith(".")]


def test_partial_and_empty_reports(tmp_path: Path) -> None:
    index = write_report(tmp_path / "a", results={"only": METHOD}) / "index.html"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "index.html",
        "methods.png",
        "results.json",
        "results.md",
    ]
    assert read_results(tmp_path / "a" / "results.json")["ablation"] is None
    assert "methods.png" in index.read_text(encoding="utf-8")
    empty = write_report(tmp_path / "b") / "index.html"
    assert "Nothing to report" in empty.read_text(encoding="utf-8")


def test_read_results_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(RunError):
        read_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"results": {"x": {"accuracy": 1}}}', encoding="utf-8")
    with pytest.raises(RunError):
        read_results(tmp_path / "bad.json")


@pytest.mark.parametrize(("line", "words"), [("not json", "not valid JSON"),
                                            ("[1, 2]", "must be a JSON object"),
                                            ('{"step": "five", "val_acc": 0.5}', "step"),
                                            ('{"step": null, "train_loss": 1}', "step"),
                                            ('{"step": true}', "step"),
                                            # plotted as they were: a validation of 750 %
                                            ('{"step": 5, "val_acc": 7.5}', "val_acc"),
                                            ('{"step": 5, "val_acc": true}', "val_acc"),
                                            ('{"step": 5, "train_loss": Infinity}', "train_loss"),
                                            ('{"step": 5, "event": "end", "best_step": -1}',
                                             "best_step"),
                                            ('{"step": 5, "time_limited": "yes"}',
                                             "time_limited")])
def test_a_damaged_training_log_is_a_run_error_naming_its_line(
        tmp_path: Path, line: str, words: str) -> None:
    """The report crashed with a JSONDecodeError or a TypeError, after its evaluation."""
    from metamodal.train.logger import read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 1, "train_loss": 0.5, "best_val_acc": -1.0, "unknown": [1]}\n\n'
                   + line + "\n", encoding="utf-8")  # -1: a run that never validated
    with pytest.raises(RunError, match=words) as caught:
        read_metrics(tmp_path)
    assert caught.value.file == str(log) and caught.value.row == 3


def test_paired_comparisons_reference_is_first_without_baseline() -> None:
    rows = paired_comparisons([METHOD.renamed("a"), TRICKY.renamed("b")])
    assert [(r["method"], r["reference"]) for r in rows] == [("b", "a")]
    assert rows[0]["difference"] < 0


def test_format_results_table() -> None:
    r1 = EvalResult(0.9321, 0.0045, 0.93, 600, 5, 1, 15, 0)
    r2 = EvalResult(0.5, math.nan, math.nan, 1, 5, 1, 15, 0)
    text = format_results_table({"protonet": r1, "baseline: nearest-centroid": r2})
    assert text.splitlines() == [
        "method                      accuracy (%)  macro-F1  episodes",
        "protonet                    93.21 ± 0.45  0.930          600",
        "baseline: nearest-centroid  50.00 ± n/a   n/a              1",
    ]
    listed = format_results_table([r1.renamed("x")])
    assert listed.splitlines()[1].startswith("x ")


def test_mapping_sections_show_retrieval_zero_shot_imputation_and_the_joint_space(
        tmp_path: Path) -> None:
    import torch

    from metamodal.evaluate.projection import Projection
    from metamodal.evaluate.report import MappingResults
    from metamodal.evaluate.retrieval import RetrievalReport, RetrievalRow
    from metamodal.evaluate.zeroshot import ZeroShotReport

    rows = [RetrievalRow(method, direction, level, {1: (0.3, 0.02), 5: (0.6, 0.03),
                                                    10: (0.8, 0.02)}, 3.0, 400, 400)
            for method in ("aligned encoders", "baseline: random")
            for direction in ("caption->image", "image->caption")
            for level in ("instance", "class")]
    retrieval = RetrievalReport("caption", "image", rows)
    zero = ZeroShotReport({"0-shot": {"zero-shot": METHOD}, "1-shot": {"AM3": METHOD,
                                                                       "prototypes": BASELINE}},
                          {"1-shot": (0.3, 0.05)}, ways=5)
    imputation = {"image": {"masking": [result("m", [0.5, 0.6, 0.55], drop={"image": r})
                                        for r in (0.5, 0.75)],
                            "imputation": [result("i", [0.6, 0.7, 0.65], drop={"image": r})
                                           for r in (0.5, 0.75)]}}
    projection = Projection(torch.randn(6, 2), ["a", "a", "b", "b", "a", "b"],
                            ["image"] * 3 + ["caption"] * 3, 0.4)
    out = write_report(tmp_path / "r", mapping=MappingResults(retrieval, zero, imputation,
                                                               projection))
    html_text = (out / "index.html").read_text()
    for text in ("Cross-modal retrieval (caption &lt;-&gt; image)", "Zero-shot and few+zero-shot",
                 "imputation.png", "joint_space.png", "+10.0 ± "):
        assert text in html_text
    for image in ("imputation.png", "joint_space.png"):
        with Image.open(out / image) as img:
            assert img.size[0] > 100
    data = json.loads((out / "results.json").read_text())["mapping"]
    assert set(data) == {"retrieval", "zero_shot", "imputation", "projection"}
    assert data["zero_shot"]["am3_gain"]["1-shot"]["mean"] == 0.3

"""The user-facing surfaces: `FewShotClassifier` and the `metamodal` command."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest

from metamodal import api
from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.data.episode_files import write_episode_file
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import ConfigError, InsufficientSamplesError, ModalityError, RunError
from metamodal.evaluate.stats import paired_difference
from metamodal.runs.directory import load_run, load_run_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A dataset made and a small model trained through the CLI: (data dir, run dir)."""
    root = tmp_path_factory.mktemp("cli")
    data, run = root / "data", root / "run"
    assert main(["make-synthetic", str(data), "--classes", "24", "--per-class", "8",
                 "--image-size", "16", "--seed", "2"]) == 0
    config = root / "config.toml"
    config.write_text("dim = 16\nval_episodes = 10\nval_every = 0\n"
                      "[preprocess.image]\nsize = 16\n")
    assert main(["train", "--data", str(data), "--out", str(run), "--config", str(config),
                 "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "20",
                 "--no-progress", "--device", "cpu"]) == 0
    return data, run


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "samples.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _support_query(data: Path, run: Path) -> tuple[Path, Path, list[str]]:
    """One support sample and two queries for three test classes, as tables in ``data``."""
    test = load_run(run).split.test[:3]
    label = "species"
    by_class: dict[str, list[dict[str, str]]] = {}
    for row in _rows(data):
        if row[label] in test:
            by_class.setdefault(row[label], []).append(row)
    support = [rows[0] for rows in by_class.values()]
    query = [r for rows in by_class.values() for r in rows[1:3]]
    return (_write(data / "support.csv", support), _write(data / "query.csv", query), test)


def test_classifier_fit_predict_save_load(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    support, query, classes = _support_query(data, run)
    clf = FewShotClassifier(run).fit(support)
    assert clf.classes_ == sorted(classes)
    proba = clf.predict_proba(query)
    assert proba.shape == (6, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    assert clf.predict(query) == [clf.classes_[k] for k in proba.argmax(1)]
    # with one shot a support sample is its own prototype: ProtoNet must give its own class
    assert clf.predict(support) == [r["species"] for r in _rows_of(support)]
    clf.save(tmp_path / "saved")
    again = FewShotClassifier.load(tmp_path / "saved")
    np.testing.assert_allclose(again.predict_proba(query), proba, rtol=1e-5, atol=1e-6)


def _rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_support_class_without_example_is_a_typed_error(trained: tuple[Path, Path]) -> None:
    data, run = trained
    support, _, classes = _support_query(data, run)
    with pytest.raises(InsufficientSamplesError, match="ghost"):
        FewShotClassifier(run).fit(support, classes=[*classes, "ghost"])
    rows = _rows_of(support)
    for column in ("image", "caption", "sound", "track", "body_length_cm", "body_width_cm",
                   "weight_g", "air_temp_c"):
        rows[0][column] = ""
    with pytest.raises(ModalityError, match=rows[0]["species"]) as caught:  # its row named
        FewShotClassifier(run).fit(_write(data / "support-empty.csv", rows))
    assert caught.value.row == 1


def test_predict_before_fit_is_a_typed_error(trained: tuple[Path, Path]) -> None:
    _, run = trained
    with pytest.raises(RunError, match="fit"):
        FewShotClassifier(run).predict("query.csv")


def test_query_with_modalities_the_model_never_saw(trained: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    data, run = trained
    support, query, _ = _support_query(data, run)
    clf = FewShotClassifier(run).fit(support)
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("id,thermal\nq1,scan.npy\n")
    with pytest.raises(ModalityError, match="modalities"):
        clf.predict(foreign)


def test_cli_eval_writes_the_contract_json(trained: tuple[Path, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--ways", "3", "--shots", "1", "--queries", "2",
                 "--episodes-count", "40", "--json", str(out), "--ablation"]) == 0
    result = json.loads(out.read_text())
    assert 0.0 <= result["accuracy"] <= 1.0 and result["ci95"] >= 0
    assert (result["episodes"], result["ways"], result["shots"]) == (40, 3, 1)
    baseline = result["baseline"]["baseline: untrained encoders"]
    assert baseline["episodes"] == 40 and result["chance"] == pytest.approx(1 / 3)
    # same episodes, different weights: the per-episode accuracies must differ somewhere
    assert baseline["accuracies"] != result["accuracies"]
    assert len(result["ablation"]) == 1 + 2 * len(load_run(run).model.modalities)
    # the terminal's ablation table gives each variant's paired difference to all
    printed = capsys.readouterr().out
    full, *variants = result["ablation"]
    for variant in variants:
        gap = paired_difference(variant["accuracies"], full["accuracies"])
        line = next(x for x in printed.splitlines() if x.startswith(variant["name"] + " "))
        assert f"{100 * gap.mean:+.2f} ± {100 * gap.ci95:.2f}" in line


def test_cli_eval_on_a_fixed_episode_file(trained: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    loaded = load_run(run)
    store = load_run_data(loaded).store
    sampler = EpisodeSampler(store, loaded.split.test, 3, 1, 2, seed=9)
    episodes = [sampler[i] for i in range(7)]
    path = tmp_path / "episodes.jsonl"
    write_episode_file(path, episodes)
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--episodes", str(path), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["episodes"] == 7
    # episodes of the classes the run trained on score what it has seen: said, not silent
    seen = tmp_path / "seen.jsonl"
    write_episode_file(seen, [EpisodeSampler(store, loaded.split.train, 3, 1, 2, seed=9)[0]])
    with pytest.warns(UserWarning, match=r"seen.jsonl: 3 of the 3 classes .* the run trained on"):
        assert main(["eval", str(run), "--episodes", str(seen)]) == 0
    # what the file fixes cannot also be asked for: refused, not ignored without a word
    for extra in (["--ways", "5"], ["--shots", "5"], ["--episodes-count", "100"],
                  ["--ablation"], ["--robustness"]):
        capsys.readouterr()
        assert main(["eval", str(run), "--episodes", str(path), *extra]) == 2
        error = capsys.readouterr().err
        assert str(path) in error and f"fixes the episodes, so {extra[0]} cannot" in error
    with pytest.warns(UserWarning, match="split 'val' draws nothing from an episode file"):
        assert main(["eval", str(run), "--episodes", str(path), "--split", "val", "--seed", "3",
                     "--json", str(out)]) == 0
    one_way = tmp_path / "one-way.jsonl"  # a single class: every query right, any model
    line = json.loads(path.read_text().splitlines()[0])
    first = loaded.split.test[0]
    ids = [i for i, label in zip(store.ids, store.labels, strict=True) if label == first][:2]
    one_way.write_text(json.dumps(line) + "\n"
                       + json.dumps({**line, "support": ids[:1], "query": ids[1:]}) + "\n")
    no_query = tmp_path / "no-query.jsonl"
    no_query.write_text(json.dumps(line) + "\n\n" + json.dumps({**line, "query": []}) + "\n")
    for episodes, row, words in ((one_way, 2, "has one class"),
                                 (no_query, 3, "has no query samples")):
        capsys.readouterr()
        assert main(["eval", str(run), "--episodes", str(episodes)]) == 2
        error = capsys.readouterr().err
        assert words in error and f"{episodes}, row {row}" in error  # the file and its line
    # imputation measures the run as trained: not under another learner or modalities
    for extra in (["--learner", "protonet"], ["--modalities", "image"]):
        capsys.readouterr()
        assert main(["eval", str(run), "--imputation", "--episodes-count", "2", *extra]) == 2
        assert f"which {extra[0]} would change" in capsys.readouterr().err


def test_report_refuses_descriptions_it_would_not_use(trained: tuple[Path, Path],
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """Zero-shot needs an alignment: the flag was ignored without a word after the whole
    evaluation; now it is refused before it."""
    _, run = trained
    assert main(["report", str(run), "--descriptions-from", "caption"]) == 2
    error = capsys.readouterr().err
    assert str(run / "config.toml") in error and "this run trained no alignment" in error
    late = tmp_path / "late"  # the same run as if it had trained an alignment, fusing late
    shutil.copytree(run, late)
    config = (late / "config.toml").read_text()
    config = re.sub(r'(?m)^fusion = ".*"$', 'fusion = "late"', config)
    (late / "config.toml").write_text(config + '\n[alignment]\nmodalities = ["a", "b"]\n')
    assert main(["report", str(late), "--descriptions-from", "caption"]) == 2
    assert "this run fuses late" in capsys.readouterr().err


def test_cli_predict_and_report(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    support, query, classes = _support_query(data, run)
    out = tmp_path / "pred.json"
    assert main(["predict", str(run), "--support", str(support), "--query", str(query),
                 "--json", str(out)]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert [p["id"] for p in predictions] == [r["id"] for r in _rows_of(query)]
    assert all(p["prediction"] in classes for p in predictions)
    assert main(["report", str(run), "--ways", "3", "--queries", "2",
                 "--episodes-count", "20"]) == 0
    assert (run / "report" / "index.html").is_file()


def test_json_never_overwrites_an_input_or_a_runs_file(trained: tuple[Path, Path],
                                                        tmp_path: Path, capsys) -> None:
    data, run = trained
    support, query, _ = _support_query(data, run)
    kept = {path: path.read_bytes() for path in (support, run / "model.safetensors",
                                                 run / "config.toml")}
    for argv in (["predict", str(run), "--support", str(support), "--query", str(query),
                  "--json", str(support)],
                 ["eval", str(run), "--json", str(run / "model.safetensors")],
                 ["eval", str(run), "--json", str(run / "config.toml")]):
        assert main(argv) == 2
        assert "--json" in capsys.readouterr().err
    assert all(path.read_bytes() == content for path, content in kept.items())
    with pytest.raises(ConfigError) as caught:  # inside the ensemble about to be written
        api.ensemble([str(run), str(run)], out=str(tmp_path / "ens"),
                     json=str(tmp_path / "ens" / "config.toml"))
    assert caught.value.column == "json"
    assert main(["eval", str(run), "--ways", "3", "--queries", "1", "--episodes-count", "2",
                 "--json", str(run / "eval.json")]) == 0  # a file of its own, beside them


def test_predict_json_never_overwrites_a_media_file_it_reads(
        trained: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Tables outside a dataset directory: --json naming a support or query image wrote the
    predictions over it (the next predict could not decode it)."""
    data, run = trained
    _support_query(data, run)
    folder = tmp_path / "p"
    shutil.copytree(data, folder, ignore=shutil.ignore_patterns("dataset.toml"))
    for table in ("support.csv", "query.csv"):
        image = folder / _rows_of(folder / table)[0]["image"]
        before = image.read_bytes()
        assert main(["predict", str(run), "--support", str(folder / "support.csv"),
                     "--query", str(folder / "query.csv"), "--json", str(image)]) == 2
        assert "media file" in capsys.readouterr().err and image.read_bytes() == before


def test_json_never_overwrites_a_reports_page(trained: tuple[Path, Path], tmp_path: Path,
                                              capsys) -> None:
    _, run = trained
    report = run / "report"
    assert main(["report", str(run), "--ways", "3", "--queries", "1",
                 "--episodes-count", "2"]) == 0
    pages = {name: (report / name).read_bytes() for name in ("index.html", "results.md",
                                                             "results.json")}
    for name in pages:
        assert main(["eval", str(run), "--ways", "3", "--queries", "1", "--episodes-count",
                     "2", "--json", str(report / name)]) == 2
        error = capsys.readouterr().err
        assert "key json" in error and "page of the report" in error
    assert all((report / name).read_bytes() == page for name, page in pages.items())
    (tmp_path / "mine").mkdir()  # an index.html of no report is the user's to replace
    assert main(["eval", str(run), "--ways", "3", "--queries", "1", "--episodes-count", "2",
                 "--json", str(tmp_path / "mine" / "index.html")]) == 0


def test_cli_reports_typed_errors_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["eval", str(tmp_path / "missing-run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing-run" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.toml").write_text("label = \n")
    assert main(["inspect", str(tmp_path / "bad")]) != 0


def test_cli_eval_on_another_dataset_uses_the_runs_preprocessing(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    _, run = trained
    other = tmp_path / "other"
    assert main(["make-synthetic", str(other), "--classes", "12", "--per-class", "6",
                 "--image-size", "16", "--seed", "11"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(other), "--split", "all", "--ways", "3",
                 "--queries", "2", "--episodes-count", "30", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["split"] == "all" and result["episodes"] == 30



def test_eval_warns_when_the_data_splits_the_runs_training_classes_into_test(
        trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    other = tmp_path / "swapped"  # the same samples, the run's train and test groups swapped
    shutil.copytree(data, other, ignore=shutil.ignore_patterns(".metamodal-cache"))
    splits = tomllib.loads((data / "splits.toml").read_text())
    swapped = {"train": splits["test"], "val": splits["val"], "test": splits["train"]}
    (other / "splits.toml").write_text("".join(f"{k} = {json.dumps(v)}\n"
                                               for k, v in swapped.items()))
    with pytest.warns(UserWarning, match=r"(\d+) of the \1 test classes of the data were "
                                         "classes the run trained on"):
        api.evaluate(str(run), data=str(other), episodes_count=2, ways=3, queries=2,
                     baseline=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # its own data: no such warning
        api.evaluate(str(run), episodes_count=2, ways=3, queries=2, baseline=False,
                     progress=False)


def test_a_reader_that_goes_away_is_no_traceback(tmp_path: Path) -> None:
    """`metamodal cache info | head -1`: the table's print raised a raw BrokenPipeError."""
    env = {**os.environ, "METAMODAL_CACHE": str(tmp_path / "cache")}
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    done = subprocess.run([sys.executable, "-m", "metamodal", "cache", "info"], stdout=write,
                          stderr=subprocess.PIPE, env=env, timeout=300, text=True)
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141

"""The benchmark scripts at their smallest: their built-in checks that metamodal and the
reference compute the same thing must hold (nothing here looks at timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize(
    "script,args",
    [
        ("episodes.py", ["--steps", "1", "--repeats", "1", "--warmup", "1",
                         "--fusions", "mean,gated,late", "--classes", "30", "--per-class", "20"]),
        ("data.py", ["--tasks", "10", "--repeats", "1", "--check", "5", "--classes", "15",
                     "--per-class", "8"]),
        # Every workload and side at tiny sizes; learn2learn and higher run where importable
        # and are reported as not importable elsewhere. One thread: on a busy 2-core machine
        # two threads per process can make each update many times slower.
        # The compiled side's graphs are captured whole but run by the aot_eager backend
        # (generating kernels is tests/test_acceleration.py's float64 check).
        ("meta_learners.py", ["--tiny", "--repeats", "1", "--warmup", "0", "--threads", "1",
                              "--compile-backend", "aot_eager"]),
        # Batching on and off answer alike, no request fails, and a server killed with
        # SIGKILL mid-write keeps every acknowledged task and example.
        ("serve.py", ["--tiny"]),
        # The demo's CPU-path changes give the same losses, gradients and logits as the
        # computations they replaced.
        ("cpu_path.py", ["--steps", "1", "--warmup", "1", "--episodes", "10", "--repeats", "1",
                         "--classes", "15", "--threads", "1"]),
    ],
)
def test_benchmark_checks_pass_at_a_tiny_size(script: str, args: list[str]) -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "metamodal" in done.stdout


def test_the_suite_runner_writes_every_table_into_one_json(tmp_path: Path) -> None:
    out = tmp_path / "suite.json"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run.py"), "--device", "cpu",
                           "--quick", "--only", "data,recipe", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["quick"] is True and report["torch"]
    assert set(report["entries"]) == {"data", "recipe"}
    assert "skipped" in report["entries"]["recipe"]  # no --omniglot given
    data = report["entries"]["data"]
    assert data["returncode"] == 0 and data["seconds"] > 0 and data["command"][-1] == "8"
    decode, tasks = data["tables"]  # the script's two tables, as it printed them
    assert decode["title"].startswith("(a) decode") and tasks["title"].startswith("(b)")
    assert decode["header"][0] == "modality" and tasks["header"][2] == "ms per task"
    for table in (decode, tasks):
        assert table["rows"] and all(len(r) == len(table["header"]) for r in table["rows"])
        for row in table["rows"]:  # every printed row appears in the output as cut
            assert row[0] in done.stdout
    assert any(line.startswith("checked:") for line in data["lines"])


def test_features_benchmark_checks_pass_at_a_tiny_size() -> None:
    from metamodal.encoders.pretrained import pretrained_encoders
    from metamodal.errors import MissingExtraError

    try:
        pretrained_encoders.get("minilm").check_installed()
    except MissingExtraError:
        pytest.skip("the pretrained extra is not installed")
    done = subprocess.run([sys.executable, str(BENCHMARKS / "features.py"), "--classes", "15",
                           "--per-class", "16", "--modalities", "caption", "--episodes", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cached and on-the-fly features agree" in done.stdout


def test_omniglot_benchmark_reads_test_time_settings_by_name() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from omniglot import _test_time, test_time_setting

    plain = {"tta": 0, "transduction": 0, "transduction_balance": False}
    assert test_time_setting("plain") == plain
    assert test_time_setting("own") is None  # each run's (each ensemble member's) own
    assert _test_time({"test_time": {"own": True}}) == "each run's own"
    assert _test_time({"test_time": plain}) == "plain"
    assert test_time_setting("tta+transduction") == {**plain, "tta": 8, "transduction": 1}
    assert test_time_setting("tta16+transduction10+reliability0.5") == {
        **plain, "tta": 16, "transduction": 10, "fusion_reliability": 0.5}
    assert test_time_setting("confidence4") == {**plain, "fusion_confidence": 4.0}
    assert test_time_setting("transduction10+balance") == {
        **plain, "transduction": 10, "transduction_balance": True}
    for bad in ("reliability", "tta+colour2", "tta8x"):
        with pytest.raises(ValueError, match="reliability"):
            test_time_setting(bad)


def test_omniglot_benchmark_trains_evaluates_and_resumes(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from omniglot_fixtures import write_archives

    write_archives(tmp_path / "src", "small1",
                   {"Alpha": 5, "Beta": 5, "Tagalog": 5, "Sanskrit": 20}, drawers=16)
    args = [sys.executable, str(BENCHMARKS / "omniglot.py"), "--source", str(tmp_path / "src"),
            "--out", str(tmp_path / "bench"), "--only",
            "images,fused-late-unimodal,strokes-trajectory",
            "--max-steps", "2", "--episodes", "5", "--runs", "2", "--threads", "1",
            "--test-time", "plain,transduction"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    first = done.stdout.split("\n\n")[0]
    rows = [line for line in first.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == [
        "| images", "| images [transduction]", "| fused-late-unimodal",
        "| fused-late-unimodal [transduction]", "| strokes-trajectory",
        "| strokes-trajectory [transduction]"]
    results = [json.loads(line) for line in
               (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    fused = results[2]
    assert set(fused["test_5way_alone"]) == {"image", "strokes"}
    assert 0 <= fused["test_20way_error"]["error"] <= 1
    assert results[3]["test_time"] == {"tta": 0, "transduction": 1,
                                       "transduction_balance": False}
    for row in results:  # Lake-style runs within the validation and every test alphabet
        # (with strokes in the strokes-only run)
        assert 0 <= row["val_within_error"]["error"] <= 1
        assert list(row["test_within_by_alphabet"]) == ["Sanskrit"]
    cells = fused["within_modalities"]
    assert {"val_fused", "val_image", "val_strokes", "test_fused", "test_image",
            "test_strokes"} <= set(cells)
    gap = next(v for k, v in cells.items() if k.startswith("test_fused_minus_"))
    assert gap["ci95"] >= 0
    assert "| fused-late-unimodal | plain | test |" in done.stdout  # the fusion table
    line = next(x for x in done.stdout.splitlines()
                if x.startswith("| fused-late-unimodal | plain | test |"))
    image, both = fused["test_within_accuracies"], fused["fused_within_accuracies"]["test"]
    gained = round(100 * sum(i - f for i, f in zip(image, both, strict=True)) / len(image), 1) + 0.0
    assert f"| Sanskrit {gained:+.1f} ± " in line  # fused - image within the test alphabet
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)  # resumes: no
    assert again.returncode == 0 and "trained in" not in again.stderr  # training again
    elsewhere = [*args[:args.index("--only")], "--run", f"reuse={tmp_path / 'bench/runs/images'}",
                 "--episodes", "5", "--runs", "2", "--threads", "1"]
    before = sorted((tmp_path / "bench/runs/images").rglob("*"))
    measured = subprocess.run(elsewhere, capture_output=True, text=True, timeout=600)
    assert measured.returncode == 0, measured.stderr[-2000:]
    assert "| reuse | - |" in measured.stdout and "trained in" not in measured.stderr
    assert sorted((tmp_path / "bench/runs/images").rglob("*")) == before  # only read
    assert (tmp_path / "bench/episodes/test-within-all.jsonl").is_file()
    runs = tmp_path / "bench" / "runs"
    paired = [*elsewhere, "--run", f"same={runs / 'images'}",
              "--run", f"fused={runs / 'fused-late-unimodal'}",
              "--run", f"refused={runs / 'fused-late-unimodal'}", "--baseline", "reuse"]
    compared = subprocess.run(paired, capture_output=True, text=True, timeout=600)
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "| same | plain | +0.0 ± 0.0 | +0.0 ± 0.0 | - | - |" in compared.stdout  # itself
    rows = {json.loads(line)["name"]: json.loads(line) for line in
            (tmp_path / "bench" / "results.jsonl").read_text().splitlines()}
    base, fused = rows["reuse"], rows["fused"]  # the fused run's image branch: error gained
    gained = 100 * (sum(base["val_within_accuracies"]) - sum(fused["val_within_accuracies"]))
    mean = round(gained / len(base["val_within_accuracies"]), 1) + 0.0  # never "-0.0"
    assert f"| fused | plain | {mean:+.1f} ± " in compared.stdout
    assert len(fused["fused_within_accuracies"]["test"]) == len(fused["test_within_accuracies"])
    # a fused row against a baseline on images alone: both modalities against its images
    lost = [b - f for b, f in zip(base["test_within_accuracies"],
                                  fused["fused_within_accuracies"]["test"], strict=True)]
    both_cell = f"{round(100 * sum(lost) / len(lost), 1) + 0.0:+.1f} ± "
    fused_line = next(x for x in compared.stdout.split("Paired against")[1].splitlines()
                      if x.startswith("| fused | plain |"))
    assert fused_line.split(" | ")[-1].startswith(both_cell)
    earlier = subprocess.run([*elsewhere, "--baseline", "fused"], capture_output=True, text=True,
                             timeout=600)  # a row measured by an earlier call
    assert earlier.returncode == 0, earlier.stderr[-2000:]
    assert "| reuse | plain | " in earlier.stdout.split("Paired against fused:")[1]
    both = subprocess.run([*paired[:-1], "fused"], capture_output=True, text=True, timeout=600)
    assert both.returncode == 0, both.stderr[-2000:]  # two fused runs: both modalities paired
    assert "| refused | plain | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 | +0.0 ± 0.0 |" \
        in both.stdout
    assert "| reuse | plain | " in both.stdout and " | - | - |" in both.stdout
    against_row = subprocess.run([*elsewhere, "--test-time", "plain,transduction",
                                  "--baseline", "reuse [transduction]"],
                                 capture_output=True, text=True, timeout=600)
    assert against_row.returncode == 0, against_row.stderr[-2000:]
    assert "Paired against reuse [transduction]:" in against_row.stdout
    assert "| reuse | plain | " in against_row.stdout  # the same run without the setting
    assert "| reuse [transduction] | " not in against_row.stdout.split("Paired against")[1]
    same_setting = subprocess.run([*elsewhere, "--run", f"same={runs / 'images'}",
                                   "--test-time", "plain,transduction", "--baseline", "reuse"],
                                  capture_output=True, text=True, timeout=600)
    assert same_setting.returncode == 0, same_setting.stderr[-2000:]
    paired_rows = same_setting.stdout.split("Paired against")[1]
    assert "| same [transduction] | transduction 1 | +0.0 ± 0.0 | +0.0 ± 0.0 |" in paired_rows
    assert "| reuse [transduction] | " not in paired_rows  # against itself: left out
    unknown = subprocess.run([*elsewhere, "--baseline", "nothing"], capture_output=True,
                             text=True, timeout=600)
    assert unknown.returncode == 2 and "--baseline nothing" in unknown.stderr


def test_balanced_transduction_benchmark_pairs_even_and_uneven_queries(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from omniglot_fixtures import write_archives

    from metamodal import api
    from metamodal.datasets.omniglot import import_omniglot

    write_archives(tmp_path / "src", "small1", {"Alpha": 5, "Tagalog": 5, "Sanskrit": 6},
                   drawers=8)
    data = import_omniglot(tmp_path / "src", tmp_path / "data", image_size=14,
                           val_groups=["Tagalog"], test_groups=["Sanskrit"]).path
    small = {"modalities": ["image"], "steps": 2, "ways": 2, "queries": 1, "dim": 8,
             "val_every": 0, "device": "cpu", "cache": False, "progress": False}
    run = api.train(tmp_path / "run", data=str(data), transduction=2, **small).run_dir
    script = [sys.executable, str(BENCHMARKS / "balanced_transduction.py"), "--run", str(run),
              "--split", "test", "--runs", "3", "--threads", "1", "--out", str(tmp_path / "bt")]
    done = subprocess.run(script, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[:3] for r in rows] == [  # 6-way runs within Sanskrit
        ["| even", "3", "18"], ["| random classes", "3", "18"], ["| half the classes", "3", "18"]]
    files = {kind: [json.loads(line) for line in (tmp_path / "bt" / f"test-{kind}.jsonl")
                    .read_text().splitlines()]
             for kind in ("even", "random-classes", "half-the-classes")}
    supports = [[e["support"] for e in episodes] for episodes in files.values()]
    assert supports[0] == supports[1] == supports[2]  # the rows pair on the same supports

    def per_class(episode: dict) -> list[int]:  # an Omniglot id is CLASS/DRAWING
        queries = [q.rsplit("/", 1)[0] for q in episode["query"]]
        return sorted(queries.count(s.rsplit("/", 1)[0]) for s in episode["support"])

    assert [per_class(e) for e in files["even"]] == [[1] * 6] * 3
    assert [per_class(e) for e in files["half-the-classes"]] == [[0, 0, 0, 2, 2, 2]] * 3
    assert all(sum(per_class(e)) == 6 and per_class(e) != [1] * 6
               for e in files["random-classes"][:1])
    plain = api.train(tmp_path / "plain", data=str(data), **small).run_dir
    refused = subprocess.run([*script[:3], str(plain), *script[4:]], capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "transduction = 0" in refused.stderr


def test_ensemble_benchmark_evaluates_each_ensemble_with_and_without_joint_steps(
        tmp_path: Path) -> None:
    """``--transduction`` fits each ensemble once and evaluates it both ways on the same
    episodes (the script asserts the episodes are the same), pairing joint against own."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "ensemble.py"), "--out",
                           str(tmp_path), "--steps", "2", "--episodes", "6", "--val-episodes",
                           "4", "--transduction", "2", "--balance"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    table = done.stdout.split("2 balanced transduction steps; chance 20%")[1]
    shown = [line.split("  ")[0].split(":")[0] for line in table.splitlines()
             if line.startswith("ensemble (")]
    assert shown == ["ensemble (mean)", "ensemble (mean, joint)", "ensemble (stack)",
                     "ensemble (stack, joint)", "ensemble (mean)", "ensemble (stack)"]
    assert table.count("joint transduction against each member's own steps, paired") == 2
    assert sorted(p.name for p in tmp_path.glob("ensemble-*")) == [
        "ensemble-mean-t2b-2", "ensemble-stack-t2b-2"]  # one fit each


def test_omniglot_benchmark_rows_are_the_shipped_recipes() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    import omniglot

    from metamodal.config import TrainConfig, load_config

    def row(name: str) -> dict:
        return TrainConfig(data="d", steps=omniglot.STEPS.get(name, 2000)).updated(
            {**omniglot.BASE, **omniglot.CONFIGS[name]}).to_dict()

    for name, path in (("recipe", "configs/omniglot.toml"),
                       ("fused-recipe", "configs/omniglot-fused.toml")):
        assert row(name) == load_config(omniglot.REPO / path).updated({"data": "d"}).to_dict()
    fused, frozen = row("fused-recipe"), row("fused-recipe-on-recipe")
    assert {k for k in fused if fused[k] != frozen[k]} == {"freeze", "encoder_options"}
    assert frozen["encoder_options"] == {**fused["encoder_options"],
                                         "image": row("recipe")["encoder_options"]["image"]}
    assert row("recipe-w32")["encoder_options"] == {}  # the encoder's default widths
    known = set(omniglot.CONFIGS)
    assert set(omniglot.STARTS_FROM) <= known and set(omniglot.STARTS_FROM.values()) <= known
    assert all(set(spec["runs"]) <= known for spec in omniglot.ENSEMBLES.values())
    assert not known & set(omniglot.ENSEMBLES)


def test_omniglot_benchmark_trains_what_a_row_starts_from_or_combines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(BENCHMARKS))
    import omniglot
    from omniglot_fixtures import write_archives

    from metamodal.runs.directory import load_run

    write_archives(tmp_path / "src", "small1",
                   {"Alpha": 5, "Beta": 5, "Tagalog": 5, "Sanskrit": 6}, drawers=16)
    small = {"modalities": ["image"], "dim": 8, "cache": False}
    monkeypatch.setitem(omniglot.CONFIGS, "small", small)
    monkeypatch.setitem(omniglot.CONFIGS, "small-seed1", {**small, "seed": 1})
    monkeypatch.setitem(omniglot.CONFIGS, "small-frozen", {**small, "freeze": ["image"]})
    monkeypatch.setitem(omniglot.STARTS_FROM, "small-frozen", "small")
    monkeypatch.setitem(omniglot.ENSEMBLES, "small-x2", {
        "runs": ["small", "small-seed1"], "method": "mean", "ways": 5, "queries": 5,
        "episodes_count": 3})
    out = tmp_path / "bench"
    args = ["--source", str(tmp_path / "src"), "--out", str(out), "--only",
            "small-frozen,small-x2", "--max-steps", "2", "--episodes", "3", "--runs", "2",
            "--threads", "1"]
    assert omniglot.main(args) == 0
    trained = capsys.readouterr().err
    assert sorted(line.split(":")[0] for line in trained.splitlines()
                  if "trained in" in line) == ["small", "small-frozen", "small-seed1"]
    runs = out / "runs"
    frozen, source = load_run(runs / "small-frozen"), load_run(runs / "small")
    assert frozen.config.init_from == str(runs / "small") and frozen.config.steps == 2
    image = {k: v for k, v in source.model.state_dict().items() if ".image." in k}
    assert image and all(torch.equal(v, frozen.model.state_dict()[k])
                         for k, v in image.items())  # loaded, then held fixed
    assert not all(torch.equal(v, load_run(runs / "small-seed1").model.state_dict()[k])
                   for k, v in image.items())  # a seed of its own
    combined = load_run(runs / "small-x2")
    assert combined.ensemble is not None
    assert combined.ensemble["sources"] == [str(runs / "small"), str(runs / "small-seed1")]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["small-frozen", "small-x2"]
    assert rows[1]["selection_val"] is None and rows[1]["train_seconds"] > 0
    assert omniglot.main(args) == 0  # measured already: nothing is trained again
    assert "trained in" not in capsys.readouterr().err

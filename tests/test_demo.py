"""The demo end to end at a tiny size, and resume after a real kill of a training process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metamodal.api import DemoSettings
from metamodal.api import demo as run_demo
from metamodal.api.demo import ALIGN, FUSED, JOINT, MAML
from metamodal.datasets.synthetic import make_synthetic
from metamodal.evaluate.retrieval import ALIGNED, RANDOM
from metamodal.train.checkpoint import CHECKPOINT_FILE


def test_demo_compares_every_method_on_the_same_episodes(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = DemoSettings(classes=30, per_class=20, steps=20, baseline_steps=20, episodes=50,
                            robustness_episodes=20, dim=16, maml_steps=10, align_steps=20,
                            am3_steps=20)
    result = run_demo(tmp_path, settings=settings, progress=False, echo=lines.append)
    methods = {FUSED, MAML, "baseline: nearest-centroid", "baseline: finetune"} | {
        f"protonet, only {m}" for m in ("image", "caption", "sound", "track", "measurements")}
    for key in ("5-way 1-shot", "5-way 5-shot"):
        assert set(result.results[key]) == methods
        digests = {r.episode_digest for r in result.results[key].values()}
        assert len(digests) == 1, "methods must be compared on the same episodes"
        assert all(r.episodes == 50 for r in result.results[key].values())
    one = result.results["5-way 1-shot"]
    best = max((r for k, r in one.items() if "only" in k), key=lambda r: r.accuracy)
    fused = one[FUSED]
    assert result.fused_beats_best_single == (fused.accuracy - fused.ci95
                                              > best.accuracy + best.ci95)
    assert set(result.training_seconds) == {FUSED, MAML, "baseline-pretrained",
                                            "baseline: finetune", ALIGN, JOINT} | {
        f"protonet+only-{m}" for m in ("image", "caption", "sound", "track", "measurements")}
    assert all(seconds > 0 for seconds in result.training_seconds.values())
    html = (result.report / "index.html").read_text()
    assert "Training time" in html and MAML in html
    for image in ("methods.png", "robustness.png", "learning_curve.png", "ablation.png",
                  "imputation.png", "joint_space.png"):
        assert (result.report / image).is_file() and image in html
    # the cross-modal part: retrieval both ways with baselines, zero-shot, AM3, imputation
    assert "Cross-modal retrieval" in html and "Zero-shot and few+zero-shot" in html
    rows = result.retrieval.rows
    for direction in ("caption->image", "image->caption"):
        aligned = result.retrieval.row(ALIGNED, direction, "class").recall[1]
        random = result.retrieval.row(RANDOM, direction, "class").recall[1]
        assert 0 <= random[0] <= 1 and 0 <= aligned[0] <= 1
    assert any(r.method.startswith("baseline: ridge") for r in rows)
    assert any(r.method.startswith("baseline: cca") for r in rows)
    assert result.retrieval_beats_random == all(
        result.retrieval.row(ALIGNED, d, "class").recall[1][0]
        - result.retrieval.row(ALIGNED, d, "class").recall[1][1]
        > sum(result.retrieval.row(RANDOM, d, "class").recall[1])
        for d in ("caption->image", "image->caption"))
    assert set(result.zero_shot.results) == {"0-shot", "1-shot", "5-shot"}
    assert all(r.episodes == 50 for rs in result.zero_shot.results.values() for r in rs.values())
    gain, ci = result.zero_shot.gains["1-shot"]
    assert result.am3_beats_prototypes == (gain > ci)
    assert set(result.imputation) == {"image", "caption", "sound", "track", "measurements"}
    assert any("worked prediction" in line for line in lines)
    # a second run reuses the finished models instead of training again
    before = (tmp_path / "runs" / FUSED / "model.safetensors").stat().st_mtime_ns
    run_demo(tmp_path, settings=settings, progress=False)
    assert (tmp_path / "runs" / FUSED / "model.safetensors").stat().st_mtime_ns == before


def _train_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metamodal.cli", "train", "--data", str(data), "--out",
            str(out), "--steps", "300", "--ways", "3", "--shots", "1", "--queries", "2",
            "--dim", "16", "--val-every", "100", "--val-episodes", "10", "--checkpoint-every",
            "5", "--modalities", "caption,measurements", "--no-progress", "--device", "cpu",
            *extra]


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "data", classes=24, per_class=8, seed=4, image_size=16)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_command(data, tmp_path / "full"), check=True, env=env,
                   capture_output=True)
    process = subprocess.Popen(_train_command(data, tmp_path / "killed"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / CHECKPOINT_FILE
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(checkpoint, weights_only=False)["progress"]["step"]
    assert 0 < killed_at < 300, "the process must be killed mid-run"
    subprocess.run(_train_command(data, tmp_path / "killed", "--resume"), check=True, env=env,
                   capture_output=True)
    full = torch.load(tmp_path / "full" / CHECKPOINT_FILE, weights_only=False)
    resumed = torch.load(checkpoint, weights_only=False)
    assert resumed["progress"]["step"] == full["progress"]["step"] == 300
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    def records(run: str) -> list[dict]:  # the same, except the wall-clock time
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
                for line in lines]

    assert records("full") == records("killed")


@pytest.mark.parametrize("flag", ["--help"])
def test_every_verb_has_help(flag: str) -> None:
    from metamodal.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse internals
    for verb in ("demo", "inspect", "make-synthetic", "train", "eval", "predict", "report"):
        assert verb in verbs
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([verb, flag])
        assert exit_.value.code == 0

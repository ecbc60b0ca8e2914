"""Omniglot, images + pen strokes, whole alphabets held out: every configuration tried for the
real-data table (`docs/omniglot.md`), trained and evaluated in one run.

The shared Omniglot background sets (``images_background_small1/2``, ``strokes_background_small1/2``
archives: eight alphabets) are imported with ``metamodal import omniglot``: six alphabets train,
Tagalog validates (every setting was chosen on it), Sanskrit tests. Each configuration is
trained with `metamodal.train.trainer.Trainer` and measured on:

- **5-way 1-shot** (600 episodes, 15 queries per class) on the validation and the test alphabet,
  with the modalities it was trained on, and for fused models also with each modality alone;
- **20-way within-alphabet one-shot** on the test alphabet, Lake et al. (2015)-style runs (20
  characters of one alphabet, one drawer's drawing as support, another's as query), images
  only, reported as the error over all query items with a 95% interval over runs.

Results go to ``OUT/results.jsonl`` (one line per configuration; a configuration already there
is not run again, so an interrupted benchmark resumes) and print as a table.

    python benchmarks/omniglot.py --source PATH/TO/omniglot --out omniglot-bench
    python benchmarks/omniglot.py --source ... --out ... --only images,fused-late --max-steps 200

The configuration with the best validation accuracy is ``configs/omniglot.toml`` (usable as
``metamodal train --config configs/omniglot.toml --data DIR``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from metamodal.config import TrainConfig
from metamodal.data.episode_files import protocol_episodes, read_episode_file, write_episode_file
from metamodal.datasets.omniglot import import_omniglot
from metamodal.evaluate.protocol import evaluate, evaluate_episodes
from metamodal.evaluate.stats import pooled_error
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer

VAL, TEST = "Tagalog", "Sanskrit"
STROKES = {"coords": [0, 1], "follow": "image", "frame": [0, 0, 105, -105], "discrete": [3]}
"""Omniglot strokes are pixel coordinates of the 105 x 105 drawing, y pointing up."""
OWN_FRAME = {k: v for k, v in STROKES.items() if k != "follow"}
"""Strokes without an image to follow: their own affine maps, in the drawing's frame."""
AFFINE = {"rotate": 10, "shift": 0.1, "scale": 0.15, "shear": 10}
TRAJECTORY = {"strokes": "trajectory"}
TRAJECTORY_OPTIONS = {"strokes": {"pen": 3}}

WIDE_VAL = {"val_ways": 17, "val_queries": 5}
"""20-way training validates within Tagalog's 17 characters."""
BASE: dict[str, Any] = {"learner": "protonet", "ways": 5, "shots": 1, "queries": 15,
                        "val_every": 500, "val_episodes": 200, "checkpoint_every": 500}
CONFIGS: dict[str, dict[str, Any]] = {
    # 5-way 1-shot: each modality alone, then fused
    "images": {"modalities": ["image"]},
    "strokes-tcn": {"modalities": ["strokes"], "encoders": {"strokes": "tcn"}},
    "strokes-gru": {"modalities": ["strokes"], "encoders": {"strokes": "gru"}},
    "strokes-trajectory": {"modalities": ["strokes"], "encoders": TRAJECTORY,
                           "encoder_options": TRAJECTORY_OPTIONS},
    "fused-gated-tcn": {"encoders": {"strokes": "tcn"}},
    "fused-gated": {"encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS},
    "fused-late": {"fusion": "late", "encoders": TRAJECTORY,
                   "encoder_options": TRAJECTORY_OPTIONS},
    "fused-gated-dropout": {"encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS,
                            "augment": {"modality_dropout": 0.3}},
    "fused-late-dropout": {"fusion": "late", "encoders": TRAJECTORY,
                           "encoder_options": TRAJECTORY_OPTIONS,
                           "augment": {"modality_dropout": 0.3}},
    "fused-late-unimodal": {"fusion": "late", "fusion_options": {"unimodal_loss": 1.0},
                            "encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS},
    # the same three with class rotations and affine maps (strokes follow their image)
    "images-aug": {"modalities": ["image"],
                   "augment": {"rotate_classes": True, "image": AFFINE}},
    "strokes-aug": {"modalities": ["strokes"], "encoders": TRAJECTORY,
                    "encoder_options": TRAJECTORY_OPTIONS,
                    "augment": {"rotate_classes": True,
                                "strokes": {**OWN_FRAME, **AFFINE}}},
    "fused-late-unimodal-aug": {"fusion": "late", "fusion_options": {"unimodal_loss": 1.0},
                                "encoders": TRAJECTORY, "encoder_options": TRAJECTORY_OPTIONS,
                                "augment": {"rotate_classes": True, "image": AFFINE,
                                            "strokes": STROKES}},
    # 20-way within-alphabet one-shot (images at test time)
    "images-20way": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL},
    "images-20way-rot": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL,
                         "augment": {"rotate_classes": True}},
    "images-20way-rot-affine": {"modalities": ["image"], "ways": 20, "queries": 5, **WIDE_VAL,
                                "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-60way-rot-affine": {"modalities": ["image"], "ways": 60, "queries": 5, **WIDE_VAL,
                                "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-56px": {"modalities": ["image"], "ways": 20, "queries": 5,
                                     **WIDE_VAL, "preprocess": {"image": {"size": 56}},
                                     "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-resnet12": {"modalities": ["image"], "ways": 20, "queries": 5,
                                         **WIDE_VAL, "encoders": {"image": "resnet12"},
                                         "augment": {"rotate_classes": True, "image": AFFINE}},
    "images-20way-rot-affine-resnet12-4000": {"modalities": ["image"], "ways": 20, "queries": 5,
                                              **WIDE_VAL, "val_every": 1000,
                                              "encoders": {"image": "resnet12"},
                                              "augment": {"rotate_classes": True,
                                                          "image": AFFINE}},
    "images-20way-rot-affine-5000": {"modalities": ["image"], "ways": 20, "queries": 5,
                                     **WIDE_VAL, "val_every": 1000,
                                     "augment": {"rotate_classes": True, "image": AFFINE}},
    "images+strokes-20way-rot-affine": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-20way-rot-affine-unimodal": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0},
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-20way-rot-affine-unimodal-resnet12-4000": {
        "ways": 20, "queries": 5, **WIDE_VAL, "val_every": 1000, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0},
        "encoders": {**TRAJECTORY, "image": "resnet12"}, "encoder_options": TRAJECTORY_OPTIONS,
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
    "images+strokes-20way-rot-affine-align": {
        "ways": 20, "queries": 5, **WIDE_VAL, "encoders": TRAJECTORY,
        "encoder_options": TRAJECTORY_OPTIONS, "fusion": "late",
        "fusion_options": {"unimodal_loss": 1.0}, "align_weight": 0.5,
        "augment": {"rotate_classes": True, "image": AFFINE, "strokes": STROKES}},
}
STEPS = {"images-60way-rot-affine": 1000, "images-20way-rot-affine-56px": 1000,
         "images-20way-rot-affine-resnet12": 2000, "images-20way-rot-affine-5000": 5000,
         "images-20way-rot-affine-resnet12-4000": 4000,
         "images+strokes-20way-rot-affine-unimodal-resnet12-4000": 4000}
"""Steps of a configuration when not the default (``--steps``; ``--max-steps`` caps both)."""


def _row(name: str, config: TrainConfig, run_dir: Path, seconds: float, best_val: float, *,
         episodes: int, runs: int) -> dict[str, Any]:
    """Evaluate a trained run: 5-way 1-shot on val / test, Lake-style 20-way on test."""
    run = load_run(run_dir)
    prepared = load_run_data(run)
    split, store, model = prepared.split, prepared.store, run.model
    modalities = list(run.model.backbone.modalities)
    row: dict[str, Any] = {"name": name, "train_seconds": round(seconds, 1),
                           "steps": config.steps, "modalities": modalities,
                           "selection_val": best_val,
                           "selection_shape": f"{config.val_ways or config.ways}-way"}

    def five_way(classes: list[str], only: list[str] | None) -> dict[str, float]:
        result = evaluate(model, store, classes, ways=5, shots=1, queries=15, episodes=episodes,
                          seed=0, modalities=only)
        return {"accuracy": result.accuracy, "ci95": result.ci95}

    row["val_5way"] = five_way(split.val, None)
    row["test_5way"] = five_way(split.test, None)
    if len(modalities) > 1:
        row["test_5way_alone"] = {m: five_way(split.test, [m]) for m in modalities}
        row["val_5way_alone"] = {m: five_way(split.val, [m]) for m in modalities}
    if "image" in modalities:
        lake = protocol_episodes(store.ids, store.labels, ways=20, shots=1, queries=1,
                                 runs=runs, seed=0, classes=split.test,
                                 groups=prepared.dataset.groups, within=[TEST])
        path = write_episode_file(run_dir / "lake-20way.jsonl", lake)
        result = evaluate_episodes(model, store, read_episode_file(path, store),
                                   modalities=["image"])
        error, half = pooled_error(result.accuracies, [len(e.query_ids) for e in lake])
        row["test_20way_error"] = {"error": error, "ci95": half}
    return row


def _cell(value: dict[str, float] | None, key: str = "accuracy") -> str:
    if not value:
        return "-"
    return f"{100 * value[key]:.1f} ± {100 * value['ci95']:.1f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    """The table of `docs/omniglot.md`: accuracy / error with 95% intervals, training time."""
    print("| configuration | validation in training | val 5-way 1-shot | test 5-way 1-shot | "
          "test, each modality alone | test 20-way within-alphabet error (images) | training |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        alone = row.get("test_5way_alone")
        alone_text = ", ".join(f"{m} {_cell(v)}" for m, v in alone.items()) if alone else "-"
        selection = f"{100 * row['selection_val']:.1f} ({row['selection_shape']})"
        print(f"| {row['name']} | {selection} | {_cell(row['val_5way'])} | "
              f"{_cell(row['test_5way'])} | "
              f"{alone_text} | {_cell(row.get('test_20way_error'), 'error')} | "
              f"{row['steps']} steps, {row['train_seconds'] / 60:.1f} min |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder of the Omniglot archives")
    parser.add_argument("--out", required=True, help="work folder (dataset, runs, results)")
    parser.add_argument("--only", help="comma-separated configurations (default: all)")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps of a configuration without its own count in "
                        "STEPS (default 2000)")
    parser.add_argument("--max-steps", type=int,
                        help="cap every configuration's steps (a smoke run)")
    parser.add_argument("--episodes", type=int, default=600, help="5-way test episodes")
    parser.add_argument("--runs", type=int, default=100, help="20-way within-alphabet runs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "omniglot"
    if not (data / "dataset.toml").exists():
        import_omniglot(args.source, data, val_groups=[VAL], test_groups=[TEST],
                        progress=False)
    names = args.only.split(",") if args.only else list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    results_file = out / "results.jsonl"
    done = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            row = json.loads(line)
            done[row["name"]] = row
    for name in names:
        if name in done:
            continue
        steps = STEPS.get(name, args.steps)
        if args.max_steps is not None:
            steps = min(steps, args.max_steps)
        config = TrainConfig(data=str(data), steps=steps).updated({**BASE, **CONFIGS[name]})
        started = time.perf_counter()
        result = Trainer(config, out / "runs" / name, progress=False).fit(resume=True)
        print(f"{name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        row = _row(name, config, result.run_dir, result.seconds, result.best_val_accuracy,
                   episodes=args.episodes, runs=args.runs)
        done[name] = row
        with results_file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
    print_table([done[n] for n in names if n in done])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

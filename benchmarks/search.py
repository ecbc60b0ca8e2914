"""A TPE search on Omniglot within a stated budget, set against the hand-written grid of
``benchmarks/omniglot.py`` and the fused recipe it chose on this split
(``images+strokes-20way-rot-affine-unimodal-resnet12-4000``).

The dataset is imported as in ``benchmarks/omniglot.py`` (six alphabets train, Tagalog
validates, Sanskrit tests). ``metamodal search`` runs ``--trials`` trials of ``--steps`` steps
each over the space below, every trial scored on the same fixed 5-way 1-shot validation
episodes of Tagalog. The best trial's run is then measured by ``benchmarks/omniglot.py``'s own
evaluation (the same 600 validation and test episodes, seed 0, and the same 100 Lake-style
20-way within-alphabet runs on Sanskrit), so its row compares directly with the grid's rows.
The grid's rows are read from ``--grid-results`` (the ``results.jsonl`` of a
``benchmarks/omniglot.py`` run) or, without it, from the table in ``docs/omniglot.md`` that
such a run produced.

    python benchmarks/search.py --source PATH/TO/omniglot --out search-bench
    python benchmarks/search.py --source ... --out ... --trials 2 --steps 20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import omniglot as grid  # noqa: E402  (benchmarks/omniglot.py)

from metamodal import api  # noqa: E402
from metamodal.config import load_config  # noqa: E402
from metamodal.datasets.omniglot import import_omniglot  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GRID_CHOICE = "images+strokes-20way-rot-affine-unimodal-resnet12-4000"
"""The grid's fused choice on this split (the fused recipe until 60-way training)."""

SPACE = """\
# Settings the grid of benchmarks/omniglot.py varied by hand, at conv4's cost; every
# combination is a valid model.
fusion = { choices = ["gated", "late", "mean", "attention"] }
ways = { choices = [5, 20] }
dim = { choices = [64, 128] }
lr = { low = 3e-4, high = 3e-3, log = true }
"augment.rotate_classes" = { choices = [true, false] }
"augment.modality_dropout" = { low = 0.0, high = 0.5 }
"""

BASE = {"learner": "protonet", "modalities": ["image", "strokes"], "shots": 1, "queries": 5,
        "val_ways": 17, "val_queries": 5, "val_episodes": 100, "checkpoint_every": 500,
        "encoders": {"image": "conv4", "strokes": "trajectory"},
        "encoder_options": {"strokes": {"pen": 3}},
        "augment": {"image": dict(grid.AFFINE), "strokes": dict(grid.STROKES)}}
"""Every trial: ProtoNet on images (conv4) and strokes (trajectory), the grid's affine maps
(strokes follow their image); the space decides the rest."""


def grid_rows(results: Path | None) -> list[dict[str, Any]]:
    """The grid's rows: from a results.jsonl, or parsed from docs/omniglot.md's table."""
    if results is not None:
        return [json.loads(line) for line in results.read_text().splitlines() if line]
    rows = []
    cell = re.compile(r"([\d.]+) ± ([\d.]+)")
    for line in (ROOT / "docs" / "omniglot.md").read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) != 7 or not cell.search(parts[2]):
            continue

        def value(text: str, key: str) -> dict[str, float] | None:
            found = cell.search(text)
            return {key: float(found[1]) / 100, "ci95": float(found[2]) / 100} if found else None

        rows.append({"name": parts[0], "val_5way": value(parts[2], "accuracy"),
                     "test_5way": value(parts[3], "accuracy"),
                     "test_20way_error": value(parts[5], "error"),
                     "steps": int(parts[6].split()[0])})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, help="folder of the Omniglot archives")
    parser.add_argument("--out", required=True, help="work folder")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500, help="training steps per trial")
    parser.add_argument("--grid-results", type=Path, help="results.jsonl of the grid")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = out / "omniglot"
    if not (data / "dataset.toml").exists():
        import_omniglot(args.source, data, val_groups=[grid.VAL], test_groups=[grid.TEST],
                        progress=False)
    space = out / "space.toml"
    space.write_text(SPACE)
    started = time.perf_counter()
    result = api.search(data, space=str(space), out=str(out / "search"), trials=args.trials,
                        sampler="tpe", sampler_seed=0, pruner="median", steps=args.steps,
                        val_every=max(1, args.steps // 4), config=None,
                        objective_ways=5, objective_queries=15, objective_episodes=200,
                        **BASE)
    seconds = time.perf_counter() - started
    print(result.table())
    if result.best is None:
        print("no trial completed")
        return 1
    best = load_config(out / "search" / "best.toml")
    row = grid._row(f"TPE best of {args.trials} x {args.steps} steps", best,
                    Path(result.best["run"]), seconds, result.best["score"],
                    episodes=args.episodes, runs=args.runs)
    rows = grid_rows(args.grid_results)
    chosen = next((r for r in rows if r["name"] == GRID_CHOICE), None)
    print(f"\nsearch: {args.trials} trials x {args.steps} steps = "
          f"{args.trials * args.steps} steps, {seconds / 60:.1f} min; grid: {len(rows)} "
          f"configurations, {sum(r['steps'] for r in rows)} steps; its choice: "
          f"{chosen['steps'] if chosen else '?'} steps of resnet12")
    print("\n| configuration | val 5-way 1-shot | test 5-way 1-shot | test 20-way "
          "within-alphabet error | steps |")
    print("|---|---|---|---|---|")
    shown = [row] + ([dict(chosen, name=f"{GRID_CHOICE} (grid's choice)")]
                     if chosen else [])
    best_grid = max(rows, key=lambda r: r["val_5way"]["accuracy"]) if rows else None
    if best_grid is not None and best_grid is not chosen:
        shown.append(dict(best_grid, name=f"grid's best 5-way validation: {best_grid['name']}"))
    for r in shown:
        print(f"| {r['name']} | {grid._cell(r['val_5way'])} | {grid._cell(r['test_5way'])} | "
              f"{grid._cell(r.get('test_20way_error'), 'error')} | {r['steps']} |")
    (out / "search-row.json").write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

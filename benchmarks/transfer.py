"""Does ``--init-from`` help? Transfer across datasets whose classes and modalities differ.

A source run is meta-trained on one synthetic dataset (seed 0) with image + caption; three
runs on another synthetic dataset (seed 1: other species, other captions) with image + sound
then train for the same small number of steps: from scratch, initialised from the source
(``--init-from``: the image encoder is reused, the sound encoder and the fusion are new), and
initialised with the image encoder frozen (``--freeze image``). Each is evaluated on the same
600 test episodes of the target's test split (5-way 1-shot, 15 queries); the table gives the
mean accuracy with its 95% interval, and the paired difference to training from scratch with
its 95% interval (per-episode differences on identical episodes).

Run (a few CPU minutes)::

    python benchmarks/transfer.py [--source-steps 300] [--steps 50] [--episodes 600]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

from metamodal import api
from metamodal.datasets.synthetic import make_synthetic

COMMON = {"ways": 5, "shots": 1, "queries": 5, "val_every": 0, "val_episodes": 20,
          "device": "cpu", "cache": False, "progress": False, "seed": 0}


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` and the half width of its 95% interval (normal approximation)."""
    diff = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(diff), 1.96 * statistics.stdev(diff) / math.sqrt(len(diff))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--classes", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        run_all(Path(tmp), args)


def run_all(root: Path, args: argparse.Namespace) -> None:
    """Make the data, train the source and the three target runs, print the table."""
    data = {seed: make_synthetic(root / f"data{seed}", classes=args.classes, per_class=20,
                                 image_size=16, seed=seed) for seed in (0, 1)}
    source = root / "source"
    api.train(source, data=str(data[0]), modalities=["image", "caption"],
              steps=args.source_steps, **COMMON)
    variants = {"from scratch": {}, "--init-from": {"init_from": str(source)},
                "--init-from --freeze image": {"init_from": str(source), "freeze": ["image"]}}
    results = {}
    for name, options in variants.items():
        run = root / name.replace(" ", "").replace("-", "_")
        report = api.train(run, data=str(data[1]), modalities=["image", "sound"],
                           steps=args.steps, **COMMON, **options)
        if report.transfer and name == "--init-from":
            print(report.table().split("\n", 1)[1], "\n")
        results[name] = api.evaluate(run, ways=5, shots=1, queries=15,
                                     episodes_count=args.episodes, baseline=False,
                                     progress=False).result
    base = results["from scratch"].accuracies
    print(f"target: image + sound on synthetic seed 1, {args.steps} steps each; source: image "
          f"+ caption on seed 0, {args.source_steps} steps; 5-way 1-shot, "
          f"{args.episodes} test episodes")
    print(f"{'variant':28s} {'accuracy':>16s} {'vs scratch (paired)':>22s}")
    for name, result in results.items():
        acc = f"{result.accuracy:.3f} ± {result.ci95:.3f}"
        if name == "from scratch":
            print(f"{name:28s} {acc:>16s}")
            continue
        mean, half = paired(result.accuracies, base)
        print(f"{name:28s} {acc:>16s} {f'{mean:+.3f} ± {half:.3f}':>22s}")


if __name__ == "__main__":
    main()

"""Multi-task benchmark: one model trained on species and genus against two single-task models.

On the embedded synthetic dataset at its default size (`metamodal.api.make_synthetic`: 100
species in 20 families, 20 samples each; ``genus`` groups a family's species of one body shape,
52 genera), three kinds of model are trained for the same number of optimisation steps (500 by
default), ProtoNet over gated fusion, 5-way 1-shot, seed 0:

- ``species only``: the main label alone (one species episode per step);
- ``genus only``: a copy of the dataset whose ``label`` is ``genus`` (same family split, hence
  the same meta-train / test samples; one genus episode per step);
- ``species+genus``: ``tasks = ["species", "genus"]``, equal fixed weights; each step draws one
  episode of each task, so it sees twice the episodes of a single-task model at equal steps;
- with ``--uncertainty`` also ``species+genus (uncertainty)``: learned log-variances.

Each model is evaluated on each task it can serve: 600 test episodes of 5-way 1-shot with 15
queries, mean accuracy with its 95% interval. The episodes of a task are the same for every
model (same seed, same classes, same samples: their digests are checked), so the differences
against the single-task model are paired (per-episode, 95% interval).

    PYTHONPATH=src python benchmarks/multitask.py            # about 10 min on 2 CPU cores
    PYTHONPATH=src python benchmarks/multitask.py --steps 100 --episodes 100   # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import tomli_w

from metamodal import api
from metamodal.evaluate.stats import paired_difference
from metamodal.io import loads_toml


def genus_dataset(root: Path, out: Path) -> Path:
    """A copy of ``root`` whose main (and only) label is ``genus``."""
    shutil.copytree(root, out, ignore=shutil.ignore_patterns(".metamodal-cache"))
    schema = loads_toml((out / "dataset.toml").read_text())
    schema["label"] = "genus"
    schema.pop("labels", None)
    (out / "dataset.toml").write_text(tomli_w.dumps(schema))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--uncertainty", action="store_true")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="metamodal-multitask-"))
    data = work / "data"
    if not (data / "dataset.toml").exists():
        api.make_synthetic(data)
    genus_data = work / "data-genus"
    if not (genus_data / "dataset.toml").exists():
        genus_dataset(data, genus_data)
    common = dict(steps=args.steps, learner="protonet", fusion="gated", ways=5, shots=1,
                  queries=15, seed=0, device="cpu", progress=False)
    runs = {
        "species only": dict(data=str(data)),
        "genus only": dict(data=str(genus_data)),
        "species+genus": dict(data=str(data), tasks=["species", "genus"]),
    }
    if args.uncertainty:
        runs["species+genus (uncertainty)"] = dict(data=str(data), tasks=["species", "genus"],
                                                   task_weighting="uncertainty")
    results: dict[str, dict[str, object]] = {}
    seconds: dict[str, float] = {}
    for name, options in runs.items():
        out = work / name.replace(" ", "-").replace("+", "-").strip("()")
        started = time.perf_counter()
        api.train(out=str(out), overwrite=True, **common, **options)
        seconds[name] = time.perf_counter() - started
        shape = dict(ways=5, shots=1, queries=15, episodes_count=args.episodes, seed=0,
                     baseline=False, progress=False)
        if name == "genus only":
            results[name] = {"genus": api.evaluate(out, **shape).result}
        elif name == "species only":
            results[name] = {"species": api.evaluate(out, **shape).result}
        else:
            report = api.evaluate(out, **shape)
            results[name] = {"species": report.result, **(report.tasks or {})}
    print(f"{args.steps} optimisation steps each; protonet+gated, 5-way 1-shot, "
          f"{args.episodes} test episodes per task (seed 0)")
    print("| model | episodes seen | species acc (%) | genus acc (%) | train s* |")
    print("|---|---|---|---|---|")
    for name, found in results.items():
        seen = args.steps * (2 if "+" in name else 1)
        cells = [f"{100 * found[t].accuracy:.2f} ± {100 * found[t].ci95:.2f}" if t in found
                 else "-" for t in ("species", "genus")]
        print(f"| {name} | {seen} | {cells[0]} | {cells[1]} | {seconds[name]:.0f} |")
    print("\n* training seconds, taken on a shared machine\n")
    print("| paired difference (per episode, 95% interval) | species (pp) | genus (pp) |")
    print("|---|---|---|")
    for name in [n for n in results if "+" in n]:
        cells = []
        for task, single in (("species", "species only"), ("genus", "genus only")):
            a, b = results[name][task], results[single][task]
            if a.episode_digest != b.episode_digest:
                cells.append("episodes differ")
                continue
            d = paired_difference(a, b)
            cells.append(f"{100 * d.mean:+.2f} ± {100 * d.ci95:.2f}"
                         + (" (significant)" if d.significant else ""))
        print(f"| {name} - single-task | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()

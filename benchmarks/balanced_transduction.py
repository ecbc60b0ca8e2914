"""Balanced transduction when an episode's queries are, and are not, spread evenly over its
classes.

``transduction_balance`` assumes the queries of an episode are spread evenly over its classes,
as in Lake et al.'s one-shot runs (one query per class). This measures what it gains where that
holds and what it costs where it does not, on one trained run, with the run's own test-time
settings and the balance on and off, on three kinds of one-shot runs within one alphabet (Lake
et al.'s protocol, ``metamodal episodes --within``):

- ``even``: one query per class;
- ``random classes``: as many queries, each of a class drawn at random (some classes get none,
  others two or more);
- ``half the classes``: as many queries, two from each of half the classes and none from the
  others.

The three kinds share every run's classes and support drawings (checked), so each row pairs
the two settings, and the rows compare, on the same supports. It prints the error over all
queries with a 95% interval over runs, and the paired difference balanced - unbalanced::

    python benchmarks/balanced_transduction.py --run runs/omniglot --split val
    python benchmarks/balanced_transduction.py --run runs/omniglot --split test --runs 60
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from omniglot import alphabets_holding, within_ways  # noqa: E402  (benchmarks/omniglot.py)

from metamodal.data.episode_files import (  # noqa: E402
    EpisodeIds,
    protocol_episodes,
    read_episode_file,
    write_episode_file,
)
from metamodal.evaluate.protocol import evaluate_episodes  # noqa: E402
from metamodal.evaluate.stats import paired_difference, pooled_error  # noqa: E402
from metamodal.runs.directory import Run, load_run, load_run_data  # noqa: E402

KINDS = ("even", "random classes", "half the classes")
POOL = 6
"""Query drawings drawn per class, of which each kind takes some (at most ``POOL``)."""


def query_counts(kind: str, ways: int, rng: np.random.Generator) -> list[int]:
    """Queries of each of ``ways`` classes in a run of ``kind``, ``ways`` in all (fewer only
    where ``random classes`` draws one class more than ``POOL`` times).

    Example:
        >>> query_counts("half the classes", 4, np.random.default_rng(0))
        [2, 0, 2, 0]
    """
    if kind == "even":
        return [1] * ways
    if kind == "random classes":
        return np.minimum(rng.multinomial(ways, [1 / ways] * ways), POOL).tolist()
    counts = [0] * ways
    for c in rng.permutation(ways)[: (ways + 1) // 2]:
        counts[int(c)] = 2
    return counts


def uneven_runs(runs: list[EpisodeIds], labels: dict[str, str], kind: str,
                seed: int) -> list[EpisodeIds]:
    """``runs`` (each with ``POOL`` queries per class, grouped by class in its ``classes``
    order) with the queries of ``kind``: the same supports, the queries a subset of theirs."""
    out = []
    for k, run in enumerate(runs):
        rng = np.random.default_rng((seed, k))
        by_class = {c: [q for q in run.query_ids if labels[q] == c] for c in run.classes}
        counts = query_counts(kind, len(run.classes), rng)
        queries = [q for c, n in zip(run.classes, counts, strict=True) for q in by_class[c][:n]]
        out.append(dataclasses.replace(run, query_ids=queries))
    return out


def measure(loaded: dict[bool, Run], split: str, runs: int, seed: int,
            out: Path) -> list[dict[str, Any]]:
    """Each kind of run, with the run loaded unbalanced and balanced (``loaded[False]``,
    ``loaded[True]``): errors, their intervals, the paired difference and the per-run
    accuracies."""
    prepared = load_run_data(loaded[False])
    store, dataset = prepared.store, prepared.dataset
    classes = getattr(prepared.split, split)
    groups = alphabets_holding(classes, dataset.groups)
    pool = protocol_episodes(store.ids, store.labels, ways=within_ways(classes, groups),
                             shots=1, queries=POOL, runs=runs, seed=seed, classes=classes,
                             groups=dataset.groups, within=groups)
    labels = dict(zip(store.ids, store.labels, strict=True))
    models = {balance: run.model for balance, run in loaded.items()}
    rows = []
    for kind in KINDS:
        episodes = uneven_runs(pool, labels, kind, seed)
        if [e.support_ids for e in episodes] != [e.support_ids for e in pool]:
            raise AssertionError(f"{kind}: the supports changed")  # the rows must pair
        path = write_episode_file(out / f"{split}-{kind.replace(' ', '-')}.jsonl", episodes)
        read = read_episode_file(path, store)
        sizes = [len(e.query_ids) for e in episodes]
        results = {b: evaluate_episodes(model, store, read) for b, model in models.items()}
        row = {"kind": kind, "queries": sum(sizes), "runs": len(episodes)}
        for balance, result in results.items():
            error, half = pooled_error(result.accuracies, sizes)
            row["balanced" if balance else "unbalanced"] = {
                "error": error, "ci95": half, "accuracies": list(result.accuracies)}
        gap = paired_difference(results[False], results[True])  # accuracy lost = error gained
        row["difference"] = {"points": 100 * gap.mean, "ci95": 100 * gap.ci95}
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], run_dir: str, split: str) -> None:
    print(f"\nOne-shot runs within an alphabet ({split} split of {run_dir}), the run's test-time "
          "settings with transduction_balance off and on: error in % over all queries, 95% "
          "interval over runs; balanced - unbalanced paired per run, in points (negative: the "
          "balance helps)\n")
    print("| queries | runs | query items | unbalanced | balanced | balanced - unbalanced |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        cells = [f"{100 * row[k]['error']:.1f} ± {100 * row[k]['ci95']:.1f}"
                 for k in ("unbalanced", "balanced")]
        gap = row["difference"]
        print(f"| {row['kind']} | {row['runs']} | {row['queries']} | {cells[0]} | {cells[1]} | "
              f"{round(gap['points'], 1) + 0.0:+.1f} ± {gap['ci95']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a trained run with transduction")
    parser.add_argument("--split", choices=("val", "test"), default="val",
                        help="the classes the runs are drawn from (default val)")
    parser.add_argument("--runs", type=int, default=100, help="runs (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs (default 0)")
    parser.add_argument("--out", default="balanced-transduction",
                        help="folder for the episode files (default balanced-transduction)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = {balance: load_run(args.run, test_time={"transduction_balance": balance})
              for balance in (False, True)}
    if not loaded[False].config.transduction:
        print(f"{args.run} has transduction = 0: the balance changes nothing; give a run "
              "with transduction (or retrain with it)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print_table(measure(loaded, args.split, args.runs, args.seed, out), args.run, args.split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Does an ensemble of trained runs beat its best member? Each member and the ``mean`` and
``stack`` ensembles of them, evaluated on the SAME test episodes, with 95% intervals and the
paired difference of each ensemble against the best member (by test accuracy, which favours
the member: the comparison is conservative for the ensemble).

The embedded synthetic dataset (``make_synthetic``: 100 classes x 20 samples, five
modalities), three ProtoNet members that differ in fusion (gated, late, mean), each trained
``--steps`` steps at 5-way 1-shot; both ensembles fitted on 300 validation episodes of the
members' own validation classes; every model evaluated at 5-way 1-shot, 15 queries, 600 test
episodes (seed 0).

With ``--transduction STEPS`` (and ``--balance``) every model takes that many soft k-means steps
at test time (the members evaluated with them, the ensembles fitted with them), and each
ensemble is also evaluated with ``joint_transduction``: its members' steps take their
assignments from the ensemble's combined probabilities; the script then prints the paired
difference of each ensemble's joint steps against its members' own.

    python benchmarks/ensemble.py --out ensemble-bench            # about 10 minutes on 2 cores
    python benchmarks/ensemble.py --out ensemble-bench --steps 100  # a quick look
    python benchmarks/ensemble.py --out ensemble-bench --transduction 10 --balance

Trained runs are kept in ``OUT`` and reused when the script runs again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from text_table import print_table  # noqa: E402

from metamodal import api  # noqa: E402
from metamodal.config import TrainConfig  # noqa: E402
from metamodal.evaluate.stats import paired_difference  # noqa: E402
from metamodal.runs.directory import CONFIG_FILE  # noqa: E402
from metamodal.train.trainer import Trainer  # noqa: E402

MEMBERS = {"protonet+gated": "gated", "protonet+late": "late", "protonet+mean": "mean"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="ensemble-bench", help="where data and runs go")
    parser.add_argument("--steps", type=int, default=400, help="training steps per member")
    parser.add_argument("--episodes", type=int, default=600, help="test episodes")
    parser.add_argument("--val-episodes", type=int, default=300,
                        help="validation episodes the ensembles are fitted on")
    parser.add_argument("--within", metavar="GROUP",
                        help="also Lake-style 20-way one-shot runs within this group of the "
                        "test split (Omniglot: an alphabet), images only, as the error over "
                        "all query items")
    parser.add_argument("--lake-runs", type=int, default=100, help="20-way runs (--within)")
    parser.add_argument("--runs", nargs="+", metavar="RUN",
                        help="ensemble these trained runs (e.g. the demo's) instead of "
                        "training the three members")
    parser.add_argument("--transduction", type=int, default=0, metavar="STEPS",
                        help="soft k-means steps at test time for every model, and each "
                        "ensemble evaluated with joint transduction too")
    parser.add_argument("--balance", action="store_true",
                        help="those steps balanced over the classes (transduction_balance)")
    args = parser.parse_args(argv)
    test_time = ({"transduction": args.transduction, "transduction_balance": args.balance}
                 if args.transduction else {})
    suffix = (f"-t{args.transduction}{'b' if args.balance else ''}"
              if args.transduction else "")
    out = Path(args.out)
    members = []
    names = MEMBERS
    if args.runs:
        names = {Path(r).name: "" for r in args.runs}
        members = [str(r) for r in args.runs]
    else:
        data = out / "data"
        if not (data / "dataset.toml").is_file():
            api.make_synthetic(str(data))
    for name, fusion in ({} if args.runs else MEMBERS).items():
        run = out / f"{name.replace('+', '-')}-{args.steps}"
        if not (run / CONFIG_FILE).is_file():
            start = time.perf_counter()
            Trainer(TrainConfig(data=str(data), learner="protonet", fusion=fusion,
                                steps=args.steps, ways=5, shots=1, queries=15, dim=64,
                                val_every=0, seed=0, device="cpu"), run, progress=False).fit()
            print(f"trained {name} in {time.perf_counter() - start:.0f} s "
                  "(taken on a shared machine)", flush=True)
        members.append(str(run))
    models = [(name, run, test_time) for name, run in zip(names, members, strict=True)]
    for method in ("mean", "stack"):
        target = out / (f"ensemble-{method}{suffix}" + ("" if args.runs else f"-{args.steps}"))
        fitted = api.ensemble(members, out=str(target), method=method, ways=5, queries=15,
                              episodes_count=args.val_episodes, seed=1, overwrite=True,
                              **test_time)
        print(fitted.table(), flush=True)
        models.append((f"ensemble ({method})", str(target), {}))
        if args.transduction:
            models.append((f"ensemble ({method}, joint)", str(target),
                           {"joint_transduction": True}))
    results = {}
    for name, run, options in models:
        report = api.evaluate(run, ways=5, shots=1, queries=15, episodes_count=args.episodes,
                              seed=0, baseline=False, progress=False, **options)
        results[name] = report.result
    digests = {r.episode_digest for r in results.values()}
    assert len(digests) == 1, "the models were not evaluated on the same episodes"
    lake = {}
    if args.within:
        episodes = api.episodes(api.run_info(members[0]).data, out=str(out / "lake.jsonl"),
                                within=args.within, split="test", ways=20, shots=1,
                                queries=1, runs=args.lake_runs, seed=0).path
        for name, run, options in models:
            lake[name] = api.evaluate(run, episodes=str(episodes), modalities=["image"],
                                      baseline=False, progress=False, **options)
    best = max(names, key=lambda n: results[n].accuracy)
    rows = []
    for name, result in results.items():
        if name in names:
            versus = "best member" if name == best else ""
        else:
            diff = paired_difference(result.accuracies, results[best].accuracies)
            versus = (f"{100 * diff.mean:+.2f} ± {100 * diff.ci95:.2f}"
                      + (" (significant)" if diff.significant else ""))
        row = [name, f"{100 * result.accuracy:.2f} ± {100 * result.ci95:.2f}", versus]
        if lake:
            pooled = lake[name].pooled
            row.append(f"{100 * pooled['error']:.1f} ± {100 * (pooled['error_ci95'] or 0):.1f}")
            if name not in names:
                diff = paired_difference(lake[name].result.accuracies,
                                         lake[best].result.accuracies)
                row.append(f"{100 * diff.mean:+.2f} ± {100 * diff.ci95:.2f}")
            else:
                row.append("")
        rows.append(row)
    trained = ("the given runs" if args.runs else
               f"members trained {args.steps} steps each")
    steps = (f"; {args.transduction}{' balanced' if args.balance else ''} transduction steps"
             if args.transduction else "")
    print_table(f"5-way 1-shot, {args.episodes} test episodes (seed 0), {trained}{steps}; "
                "chance 20%",
                ["model", "accuracy % (95% CI)", f"paired difference vs {best}",
                 *([f"20-way within {args.within}: error %", "accuracy vs best, paired"]
                   if lake else [])], rows)
    for method in ("mean", "stack") if args.transduction else ():
        own, joint = results[f"ensemble ({method})"], results[f"ensemble ({method}, joint)"]
        diff = paired_difference(joint.accuracies, own.accuracies)
        print(f"ensemble ({method}): joint transduction against each member's own steps, "
              f"paired: {100 * diff.mean:+.2f} ± {100 * diff.ci95:.2f}"
              + (" (significant)" if diff.significant else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The learned LSTM optimiser against plain SGD with the same number of inner steps, on
held-out classes of the embedded dataset.

Three rows, all evaluated on the same test episodes (classes never seen in training):

1. ``maml``: MAML, whose inner loop is plain SGD, meta-trained with ``--inner-steps`` steps;
2. ``lstm-optimizer``: the same backbone meta-trained with the coordinate-wise LSTM proposing
   the ``--inner-steps`` updates;
3. ``lstm-optimizer, SGD at test``: the second run's meta-learned initial weights adapted with
   plain SGD at its learned learning rate (the LSTM's proposals switched off), which isolates
   what the learned optimiser adds over SGD from what its meta-learned initialisation adds.

Accuracy is the mean over ``--episodes`` test episodes with a 95% interval; the paired
differences use the same episodes. Example (a few minutes on 2 CPU cores)::

    python benchmarks/learned_optimizer.py --steps 300 --inner-steps 3
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.evaluate.protocol import evaluate
from metamodal.evaluate.stats import paired_difference
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="dataset directory (default: generate the embedded one)")
    parser.add_argument("--out", help="where runs go (default: a temporary directory)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--inner-steps", type=int, default=3)
    parser.add_argument("--inner-lr", type=float, default=0.5)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--modalities", default="image,measurements,caption")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="learned-optimizer-"))
    data = Path(args.data) if args.data else out / "data"
    if not (data / "dataset.toml").exists():
        make_synthetic(data, classes=100, per_class=20, seed=args.seed, image_size=16)
    base = TrainConfig(data=str(data), steps=args.steps, seed=args.seed, dim=64, fusion="gated",
                       modalities=args.modalities.split(","), val_every=max(1, args.steps // 3),
                       val_episodes=100, preprocess={"image": {"size": 16}}, device="cpu")
    options = {"inner_steps": args.inner_steps, "inner_lr": args.inner_lr}
    results, seconds = {}, {}
    for learner in ("maml", "lstm-optimizer"):
        trained = Trainer(base.updated({"learner": learner, "learner_options": options}),
                          out / learner, progress=False).fit(resume=True)
        seconds[learner] = trained.seconds
        run = load_run(out / learner)
        prepared = load_run_data(run)
        results[learner] = evaluate(run.model, prepared.store, prepared.split.test, ways=5,
                                    shots=1, queries=15, episodes=args.episodes,
                                    seed=args.seed + 100, name=learner)
        if learner == "lstm-optimizer":
            # scale multiplies the LSTM's proposals; without them the update is -lr * g
            run.model.learner.scale = 0.0
            results["lstm-optimizer, SGD at test"] = evaluate(
                run.model, prepared.store, prepared.split.test, ways=5, shots=1, queries=15,
                episodes=args.episodes, seed=args.seed + 100, name="sgd at test")
            learned_lr = float(run.model.learner.log_lr.detach().exp())
    print(f"5-way 1-shot on held-out classes, {args.episodes} test episodes, "
          f"{args.inner_steps} inner steps in training and at test, modalities "
          f"{args.modalities}, {args.steps} meta-updates each:")
    print(f"{'method':<30} {'accuracy (%)':>14} {'train s':>8}")
    for name, result in results.items():
        train_s = seconds.get(name, seconds["lstm-optimizer"])
        print(f"{name:<30} {100 * result.accuracy:6.2f} ± {100 * result.ci95:4.2f} "
              f"{train_s:8.0f}")
    for a, b in (("lstm-optimizer", "maml"), ("lstm-optimizer", "lstm-optimizer, SGD at test")):
        d = paired_difference(results[a], results[b])
        print(f"{a} minus {b}: {100 * d.mean:+.2f} points (paired 95% interval "
              f"±{100 * d.ci95:.2f})")
    print(f"learned inner learning rate of the LSTM optimiser: {learned_lr:.3f} "
          f"(start {args.inner_lr})")


if __name__ == "__main__":
    main()

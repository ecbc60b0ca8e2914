"""Omniglot drawings redrawn from their pen strokes, each stroke moved a little: an experiment
(not a library feature) on whether the strokes help the image model as further drawings of the
same character, at test time and in training. Results: ``docs/omniglot.md``.

Redrawing: every stroke of a drawing (in Omniglot's 105 x 105 frame) is rotated and scaled
about its centre and shifted at random (standard deviations 8 degrees, 10% and 3 pixels), bent
by a smooth random offset (linear between four knots along the stroke, 1.5 pixels), and drawn
with a round pen 4.6 to 5.8 pixels wide; the image loader then resizes it as it resizes the
image files. Unmoved and 5 pixels wide, the drawings cover the published images' ink with an
intersection over union of 0.8.

- ``test-time``: a trained images run (``--run``, e.g. ``OUT/runs/recipe`` of
  ``benchmarks/omniglot.py``) embeds every drawing of the validation alphabet's one-shot runs
  (17 ways within Tagalog, one query a class) as the mean over it and ``--copies`` copies:
  the run's affine maps (its test-time augmentation), redrawn copies, or redrawn copies each
  under an affine map; then the error with prototypes alone and with 10 balanced soft k-means
  steps (the recipe's test-time settings). Validation only: it chooses.
- ``train``: the images recipe (``configs/omniglot.toml``, the ``recipe`` configuration of
  ``benchmarks/omniglot.py``) with each drawing of each training episode replaced by a
  redrawn copy with probability ``--probability`` (before the affine maps); its validation in
  training (``OUT/metrics.jsonl``) is read beside the recipe's own run.

    python benchmarks/omniglot_redraw.py test-time --data OUT/omniglot --run OUT/runs/recipe
    python benchmarks/omniglot_redraw.py train --data OUT/omniglot --out OUT/runs/redraw
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from metamodal.data import augment
from metamodal.data.batch import ModalityBatch
from metamodal.data.episode_files import protocol_episodes
from metamodal.data.episodes import Episode
from metamodal.data.loaders.image import ImageLoader
from metamodal.evaluate.stats import pooled_error
from metamodal.learners.embeddings import Embeddings
from metamodal.model.test_time import tta_augmentation
from metamodal.runs.directory import load_run, load_run_data

FRAME = 105
"""Side of Omniglot's drawing frame, in pixels."""
MOVES = {"shift": 3.0, "scale": 0.1, "rotate": 8.0, "bend": 1.5}
"""Standard deviations of each stroke's random shift (pixels), log scale, rotation (degrees)
and bend (pixels)."""
PEN = (4.6, 5.8)
"""Range of the pen's width, in pixels."""
VAL = "Tagalog"


def strokes_of(points: np.ndarray) -> list[np.ndarray]:
    """The strokes of an imported drawing (``[T, 4]``: x, y up, t, pen-down flag), each
    ``[n, 2]`` as (column, row) in the frame."""
    starts = [*np.flatnonzero(points[:, 3] > 0.5).tolist(), len(points)]
    return [points[a:b, :2] * np.array([1.0, -1.0]) for a, b in pairwise(starts)]


def moved(strokes: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each stroke rotated, scaled and shifted at random, and bent (`MOVES`)."""
    out = []
    for stroke in strokes:
        centre = stroke.mean(0)
        angle = math.radians(rng.normal(0, MOVES["rotate"]))
        size = math.exp(rng.normal(0, MOVES["scale"]))
        turn = size * np.array([[math.cos(angle), -math.sin(angle)],
                                [math.sin(angle), math.cos(angle)]])
        points = (stroke - centre) @ turn.T + centre + rng.normal(0, MOVES["shift"], 2)
        if len(points) > 1:
            knots = rng.normal(0, MOVES["bend"], (4, 2))
            along = np.linspace(0, 3, len(points))
            points = points + np.stack([np.interp(along, np.arange(4), knots[:, d])
                                        for d in range(2)], 1)
        out.append(points)
    return out


def drawn(strokes: list[np.ndarray], width: float) -> Image.Image:
    """The strokes in black on white, ``FRAME`` x ``FRAME`` pixels, with a round pen."""
    image = Image.new("L", (FRAME, FRAME), 255)
    pen = ImageDraw.Draw(image)
    radius = width / 2
    for stroke in strokes:
        points = [(float(x), float(y)) for x, y in stroke]
        if len(points) > 1:
            pen.line(points, fill=0, width=round(width), joint="curve")
        for x, y in (points[0], points[-1]):
            pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=0)
    return image


class Redrawer:
    """Redrawn copies of a dataset's drawings, as the run's image loader decodes images.

    Args:
        data: the imported Omniglot dataset (``samples.csv`` with ``id`` and ``strokes``).
        loader: the fitted image loader (size and normalisation).
    """

    def __init__(self, data: Path, loader: ImageLoader) -> None:
        with (data / "samples.csv").open(newline="") as f:
            self.files = {row["id"]: data / row["strokes"] for row in csv.DictReader(f)}
        self.loader = loader
        self.strokes: dict[str, list[np.ndarray]] = {}

    def copy(self, sample_id: str, rng: np.random.Generator) -> torch.Tensor:
        """A redrawn copy of the drawing ``sample_id`` (``ID@rotA``: rotated by A degrees, as
        class rotations rotate it), normalised, ``[1, H, W]``."""
        base, _, angle = sample_id.partition("@rot")
        if base not in self.strokes:
            self.strokes[base] = strokes_of(np.load(self.files[base]))
        image = drawn(moved(self.strokes[base], rng), rng.uniform(*PEN))
        pixels = torch.from_numpy(self.loader._pixels(image)).permute(2, 0, 1) / 255.0
        mean, std = self.loader.mean_[0], self.loader.std_[0]
        return torch.rot90((pixels - mean) / std, int(angle or 0) // 90, dims=(-2, -1))


def one_shot_error(model: Any, z: torch.Tensor, position: dict[str, int], episodes: list,
                   labels: dict[str, str], steps: int) -> tuple[float, float]:
    """Error and 95% interval over ``episodes`` (one support and one query a class) of the
    run's learner with ``steps`` balanced soft k-means steps (its ``transduction`` and
    ``transduction_balance``); ``z`` ``[N, D]`` holds each drawing's embedding."""
    learner = model.learner
    learner.transduction, learner.balance = steps, True
    accuracies = []
    for episode in episodes:
        classes = [labels[i] for i in episode.support_ids]
        truth = torch.tensor([classes.index(labels[i]) for i in episode.query_ids])
        support, query = ([position[i] for i in ids]
                          for ids in (episode.support_ids, episode.query_ids))
        with torch.no_grad():
            logits = learner.logits(model.backbone, embedded(z[support]), torch.arange(
                len(support)), embedded(z[query]), len(support))
        accuracies.append(float((logits.argmax(-1) == truth).float().mean()))
    return pooled_error(accuracies, [len(e.query_ids) for e in episodes])


def embedded(z: torch.Tensor) -> Embeddings:
    """``z`` ``[B, D]`` as the embeddings of ``B`` drawings with their image."""
    return Embeddings(z, torch.ones(len(z), 1, dtype=torch.bool), None, ["image"])


def test_time(args: argparse.Namespace) -> None:
    """Print the validation error of each way of embedding a drawing (see the module)."""
    run = load_run(args.run)
    prepared = load_run_data(run)
    store, model = prepared.store, run.model.eval()
    loader = prepared.preprocessor.loaders["image"]
    affine = tta_augmentation(run.config.augment, prepared.preprocessor)
    redrawer = Redrawer(Path(args.data), loader)
    episodes = protocol_episodes(store.ids, store.labels, ways=17, shots=1, queries=1,
                                 runs=args.runs, seed=0, classes=prepared.split.val,
                                 groups=prepared.dataset.groups, within=[VAL])
    ids = sorted({i for e in episodes for i in e.support_ids + e.query_ids})
    index = store.index_of()
    images = store.batch(torch.tensor([index[i] for i in ids]), ["image"])["image"].values
    labels = {i: store.labels[index[i]] for i in ids}
    position = {i: k for k, i in enumerate(ids)}
    everywhere = torch.ones(len(ids), dtype=torch.bool)

    def embed(values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.backbone({"image": ModalityBatch(values, everywhere, None)}).z.float()

    print(f"{'copies':24s} {'prototypes':>14s} {'+ 10 k-means steps':>20s}")
    for way in ("none", "affine", "redrawn", "redrawn+affine"):
        started = time.perf_counter()
        generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
        total = embed(images)
        for _ in range(0 if way == "none" else args.copies):
            values = images
            if way.startswith("redrawn"):
                values = torch.stack([redrawer.copy(i, rng) for i in ids])
            if way.endswith("affine"):
                values = affine.batch({"image": ModalityBatch(values, everywhere, None)},
                                      generator)["image"].values
            total += embed(values)
        z = total / (1 if way == "none" else args.copies + 1)
        cells = [one_shot_error(model, z, position, episodes, labels, steps)
                 for steps in (0, 10)]
        print(f"{way:24s} " + " ".join(f"{100 * e:8.2f} +- {100 * h:4.2f}" for e, h in cells)
              + f"   ({time.perf_counter() - started:.0f} s)", flush=True)


def train(args: argparse.Namespace) -> None:
    """Train the images recipe with redrawn drawings in its episodes (see the module)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import omniglot as benchmark

    from metamodal.config import TrainConfig
    from metamodal.runs.prepared import prepare_data
    from metamodal.train.trainer import Trainer

    config = TrainConfig(data=args.data).updated({**benchmark.BASE,
                                                  **benchmark.CONFIGS["recipe"]})
    if args.max_steps:
        config = config.updated({"steps": args.max_steps})
    loader = prepare_data(args.data, modalities=["image"],
                          preprocess=config.preprocess).preprocessor.loaders["image"]
    redrawer = Redrawer(Path(args.data), loader)
    affine_maps = augment.Augmentation.episode

    def redrawn(batch: dict, ids: list[str], generator: torch.Generator) -> dict:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        values = batch["image"].values.clone()
        for k, sample_id in enumerate(ids):
            if rng.random() < args.probability:
                values[k] = redrawer.copy(sample_id, rng)
        return {**batch, "image": ModalityBatch(values, batch["image"].present, None)}

    def episode(self: augment.Augmentation, e: Episode, generator: torch.Generator) -> Episode:
        e = Episode(redrawn(e.support, e.support_ids, generator),
                    redrawn(e.query, e.query_ids, generator), e.support_labels,
                    e.query_labels, e.classes, e.support_ids, e.query_ids, e.name)
        return affine_maps(self, e, generator)

    augment.Augmentation.episode = episode
    result = Trainer(config, args.out, progress=False).fit(resume=True)
    print(f"trained in {result.seconds:.0f} s; best validation {result.best_val_accuracy:.4f} "
          f"(per step: {Path(args.out) / 'metrics.jsonl'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    measure = verbs.add_parser("test-time", help="embed with redrawn copies (validation)")
    measure.add_argument("--data", required=True, help="the imported Omniglot dataset")
    measure.add_argument("--run", required=True, help="a trained images run")
    measure.add_argument("--runs", type=int, default=300, help="one-shot runs within Tagalog")
    measure.add_argument("--copies", type=int, default=16, help="copies per drawing")
    fit = verbs.add_parser("train", help="train the recipe with redrawn drawings")
    fit.add_argument("--data", required=True, help="the imported Omniglot dataset")
    fit.add_argument("--out", required=True, help="the run directory")
    fit.add_argument("--probability", type=float, default=0.5,
                     help="chance that a drawing of an episode is redrawn")
    fit.add_argument("--max-steps", type=int, help="fewer steps than the recipe's")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    (test_time if args.verb == "test-time" else train)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

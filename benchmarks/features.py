"""Pretrained frozen encoders: features computed on the fly in every episode versus read from
the feature cache, and how fast the cache is built.

Needs the ``pretrained`` extra. On the synthetic dataset (`make_synthetic`; caption, image and
sound modalities, about 10% of the cells missing), with ``minilm`` (captions),
``efficientnet-lite0`` (images, resized to ``--size``, 224 by default) and ``resemblyzer``
(sounds), it prints two tables:

(1) cache build per modality: samples per second to fill an empty cache (read each file, hash
    it, decode, run the frozen network, write the shard) and to read every sample back from it
    (hash each file, look it up, read the shard);
(2) one epoch of ProtoNet meta-training (5-way 1-shot, 15 queries; as many episodes as it
    takes to draw as many samples as the meta-train classes hold) with a trainable adapter per
    modality and mean fusion: (a) the frozen encoders run on the raw inputs of every episode
    (what a training loop without a cache does), (b) the episodes are cut from the features
    prepared once through the cache. Both sides start from the same weights and see the same
    episodes; before the timings are trusted, the script asserts that every on-the-fly feature
    equals the cached one (the frozen network's raw output, within float rounding of different
    batch sizes: at most 1e-4; the largest difference is printed) and that both sides' losses
    agree.

Run::

    python benchmarks/features.py [--classes 20] [--per-class 20] [--size 224] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from text_table import print_table

from metamodal.data.batch import Episode
from metamodal.data.episodes import EpisodeSampler
from metamodal.datasets.synthetic import make_synthetic
from metamodal.encoders.cache import FeatureCache
from metamodal.encoders.features import PretrainedLoader
from metamodal.model import FewShotModel
from metamodal.runs.prepared import prepare_data

ENCODERS = {"caption": "minilm", "image": "efficientnet-lite0", "sound": "resemblyzer"}
WAYS, SHOTS, QUERIES = 5, 1, 15
TOLERANCE = 1e-4


def build_throughput(prepared, modalities, root: Path) -> list[list[str]]:
    """Samples/s to fill an empty cache, then to read it back, per modality."""
    rows = []
    for name in modalities:
        loader = PretrainedLoader.from_state(prepared.preprocessor.loaders[name].state_dict())
        loader.cache = FeatureCache(root / f"build-{name}", limit=0)
        loader.progress = False
        cells = prepared.dataset.cells(name)
        present = sum(cell is not None for cell in cells)
        loader.encoder.model()  # loading the weights is not part of the throughput
        start = time.perf_counter()
        cold, _ = loader.features(cells, prepared.dataset.context(name))
        build = time.perf_counter() - start
        computed = loader.computed
        start = time.perf_counter()
        warm, _ = loader.features(cells, prepared.dataset.context(name))
        read = time.perf_counter() - start
        assert torch.equal(cold, warm), f"{name}: features read back differ from those written"
        assert loader.computed == computed, f"{name}: the second pass was not all cache hits"
        rows.append([name, loader.encoder_name, f"{present:,}", f"{present / build:,.1f}",
                     f"{present / read:,.0f}", f"{build / read:,.0f}x"])
    return rows


def on_the_fly(episode: Episode, prepared, loaders, index) -> Episode:
    """The episode with every pretrained modality encoded now from its raw inputs."""
    support, query = dict(episode.support), dict(episode.query)
    for part, ids in ((support, episode.support_ids), (query, episode.query_ids)):
        rows = [index[i] for i in ids]
        subset = prepared.dataset.subset(rows)
        for name, loader in loaders.items():
            part[name] = loader.decode(subset.cells(name), subset.context(name))
    return Episode(support, query, episode.support_labels, episode.query_labels,
                   episode.classes, episode.support_ids, episode.query_ids, episode.name)


def train_epoch(prepared, modalities, episodes: int, seed: int) -> list[list[str]]:
    """Time one epoch both ways; check features and losses agree."""
    store = prepared.store
    model = FewShotModel.build(kinds=prepared.preprocessor.kinds(),
                               input_info=prepared.preprocessor.input_info(), dim=64,
                               encoders={m: ENCODERS[m] for m in modalities}, fusion="mean",
                               learner="protonet")
    models = {"on the fly": model, "cached": copy.deepcopy(model)}
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    sampler = EpisodeSampler(store, prepared.split.train, WAYS, SHOTS, QUERIES, seed=seed)
    index = store.index_of()
    fly = {}
    for name in modalities:  # the same fitted loader, without a cache: computes every time
        fly[name] = PretrainedLoader.from_state(prepared.preprocessor.loaders[name].state_dict())
        fly[name].cache, fly[name].progress = None, False
        fly[name].encoder.model()
    times = {"on the fly": 0.0, "cached": 0.0}
    worst_feature, worst_loss, first_loss = 0.0, 0.0, None
    for step in range(-1, episodes):  # step -1 warms both sides up, untimed
        if step == 0:
            times = {"on the fly": 0.0, "cached": 0.0}
        episode = sampler[1_000_000 if step < 0 else step]
        start = time.perf_counter()
        fresh = on_the_fly(episode, prepared, fly, index)
        torch.manual_seed(seed + step)  # the same dropout masks on both sides
        loss_fly, _ = models["on the fly"].loss(fresh)
        optimizers["on the fly"].zero_grad()
        loss_fly.backward()
        optimizers["on the fly"].step()
        times["on the fly"] += time.perf_counter() - start
        start = time.perf_counter()
        cached = sampler[1_000_000 if step < 0 else step]
        torch.manual_seed(seed + step)
        loss_cached, _ = models["cached"].loss(cached)
        optimizers["cached"].zero_grad()
        loss_cached.backward()
        optimizers["cached"].step()
        times["cached"] += time.perf_counter() - start
        for name in modalities:
            std = torch.tensor(fly[name].std_ or [1.0])  # compare unstandardised features
            for a, b in ((fresh.support, cached.support), (fresh.query, cached.query)):
                assert torch.equal(a[name].present, b[name].present)
                difference = ((a[name].values - b[name].values).abs() * std).max()
                worst_feature = max(worst_feature, float(difference))
        gap = abs(loss_fly.item() - loss_cached.item())
        first_loss = gap if first_loss is None else first_loss
        worst_loss = max(worst_loss, gap)
    assert worst_feature <= TOLERANCE, f"on-the-fly features differ by {worst_feature}"
    # the first step sees the same weights on both sides: its losses differ only through the
    # features; later steps follow two optimisers whose rounding drifts apart a little
    assert first_loss is not None and first_loss <= 1e-3, f"losses differ by {first_loss}"
    assert worst_loss <= 1e-2, f"losses drift apart by {worst_loss}"
    fly_s, cached_s = times["on the fly"], times["cached"]
    return [[f"{episodes} episodes ({episodes * WAYS * (SHOTS + QUERIES)} samples)",
             f"{fly_s:.2f} s", f"{1000 * cached_s:.1f} ms", f"{fly_s / cached_s:,.0f}x",
             f"{worst_feature:.1e}", f"{worst_loss:.1e}"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=224, help="EfficientNet input side")
    parser.add_argument("--modalities", default="caption,image,sound")
    parser.add_argument("--episodes", type=int, default=0,
                        help="episodes of the epoch (default: one pass over meta-train)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    print(f"metamodal pretrained features benchmark: {platform.machine()}, torch "
          f"{torch.__version__}, {args.threads} threads, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_synthetic(root / "data", classes=args.classes, per_class=args.per_class,
                              seed=args.seed)
        preprocess = {"image": {"size": args.size}} if "image" in modalities else None
        os.environ["METAMODAL_CACHE"] = str(root / "features")
        prepared = prepare_data(data, seed=args.seed, modalities=modalities, cache=False,
                                encoders={m: ENCODERS[m] for m in modalities},
                                preprocess=preprocess)
        print_table(
            f"(1) feature cache build and read, {len(prepared.store)} samples "
            f"(images {args.size}x{args.size})",
            ["modality", "encoder", "present", "build (samples/s)", "read (samples/s)",
             "read / build"],
            build_throughput(prepared, modalities, root), text_columns=2)
        train = sum(label in set(prepared.split.train) for label in prepared.store.labels)
        episodes = args.episodes or math.ceil(train / (WAYS * (SHOTS + QUERIES)))
        print_table(
            f"(2) one epoch of ProtoNet meta-training over {', '.join(modalities)} "
            f"({WAYS}-way {SHOTS}-shot, {QUERIES} queries, adapters + mean fusion)",
            ["epoch", "encoders on the fly", "from the cache", "speed-up",
             "max feature diff", "max loss diff"],
            train_epoch(prepared, modalities, episodes, args.seed))
    print("metamodal: cached and on-the-fly features agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few-shot model benchmark: ProtoNet meta-training and adaptation speed, every fusion,
metamodal against the same computation written in plain PyTorch.

Prints four tables, on a synthetic dataset (`metamodal.datasets.synthetic.make_synthetic`,
five modalities: image, caption, sound, track, measurements; about 10% of the cells missing):

(1a) ProtoNet meta-training, 5-way 1-shot 15-query, episodes per second (forward, backward and
     an Adam step), end to end: every modality's encoder runs on the decoded tensors of the
     episode, then the fusion, then the head;
(1b) the same on cached embeddings: the (frozen) encoders ran once over every sample, and only
     the fusion and the head are trained;
(2a) milliseconds to adapt to a 5-way 5-shot task and predict its 75 queries (eval mode, no
     gradient), end to end: encode support and query, fuse, prototypes, logits;
(2b) the same on cached per-modality embeddings: index them, fuse (`FewShotModel.fuse`),
     prototypes, logits.

Each table holds one row per fusion with metamodal's time, the time of a plain-PyTorch
reference of the same computation, the speed-up and the largest logit difference between the
two. The reference is what a user writes without metamodal: per modality, the same encoder
module encodes the rows that have it; a per-sample Python loop fuses the embeddings each
sample has with the same fusion parameters (attention runs the same transformer once per
sample on its present tokens); a per-class loop computes the prototypes and
``-torch.cdist(query, prototypes) ** 2`` the logits (late fusion: per modality, per class and
per query loops). Both sides get the same weights (copies of one model) and the same
pre-sampled episodes; before anything is timed, the script asserts that both give the same
logits on the same episode (and, for training, the same loss and gradients). Episode
sampling itself is not timed (see ``benchmarks/data.py``).

Times are medians of per-iteration ``time.perf_counter`` readings after warm-up iterations,
the two sides interleaved so that both see the same machine load. Run::

    python benchmarks/episodes.py [--steps 20] [--repeats 30] [--threads 1] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from text_table import print_table
from torch import Tensor

from metamodal.data.batch import Episode, ModalityBatch, TensorStore
from metamodal.data.episodes import EpisodeSampler
from metamodal.datasets.synthetic import make_synthetic
from metamodal.evaluate.protocol import embed_store
from metamodal.fusion.base import Fusion
from metamodal.learners.embeddings import Embeddings
from metamodal.model import FewShotModel
from metamodal.runs.prepared import prepare_data

FUSIONS = ("concat", "mean", "gated", "attention", "tensor", "lowrank", "late")
WAYS, TRAIN_SHOTS, EVAL_SHOTS, QUERIES = 5, 1, 5, 15

Sample = dict[int, Tensor]
"""One sample for the plain-PyTorch side: modality position -> its embedding ``[dim]``, only
for the modalities the sample has."""


# --- table printing and timing --------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that the clock reads finished work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_pair(
    first: Callable[[int], object],
    second: Callable[[int], object],
    warmup: int,
    repeats: int,
    device: torch.device,
) -> tuple[float, float]:
    """Median seconds of ``first(i)`` and ``second(i)`` over ``repeats`` calls each, after
    ``warmup`` untimed calls of each; the two are interleaved (alternating which goes first)
    so that both see the same machine load."""
    for i in range(warmup):
        first(i)
        second(i)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup, warmup + repeats):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for side in order:
            run = first if side == 0 else second
            synchronize(device)
            start = time.perf_counter()
            run(i)
            synchronize(device)
            times[side].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


# --- data -----------------------------------------------------------------------------------


@dataclass
class Task:
    """One episode as rows of the store (for cached embeddings), for both sides.

    Args:
        rows: long ``[S + Q]``: support rows then query rows, on the device.
        row_list: the same rows as Python ints (what the plain-PyTorch side iterates over).
        n_support: ``S``.
        support_labels: long ``[S]`` in ``0..ways-1``, on the device.
        query_labels: long ``[Q]``, on the device.
    """

    rows: Tensor
    row_list: list[int]
    n_support: int
    support_labels: Tensor
    query_labels: Tensor


def sample_episodes(
    store: TensorStore, classes: Sequence[str], shots: int, n: int, seed: int,
    device: torch.device,
) -> tuple[list[Episode], list[Task]]:
    """Episodes ``0..n-1`` of a ``WAYS``-way ``shots``-shot ``QUERIES``-query sampler, both as
    decoded `Episode` batches and as store rows."""
    sampler = EpisodeSampler(store, list(classes), WAYS, shots, QUERIES, seed=seed)
    episodes, tasks = [], []
    for i in range(n):
        episode = sampler[i].to(device)
        support, query, _ = sampler.indices(i)
        rows = torch.cat([support, query])
        episodes.append(episode)
        tasks.append(
            Task(rows.to(device), rows.tolist(), len(support), episode.support_labels,
                 episode.query_labels)
        )
    return episodes, tasks


# --- metamodal side -------------------------------------------------------------------------


def metamodal_cached_logits(model: FewShotModel, cache: Embeddings, task: Task) -> Tensor:
    """Query logits ``[Q, ways]`` from cached per-modality embeddings: index the episode's
    rows, `Backbone.fuse`, learner."""
    present = cache.present.index_select(0, task.rows)
    both = model.backbone.fuse(
        {name: part.index_select(0, task.rows) for name, part in cache.parts.items()},
        dict(zip(cache.modalities, present.unbind(1), strict=True)),
    )
    support, query = both.split([task.n_support, len(both) - task.n_support])
    return model.logits(support, task.support_labels, query, WAYS)


# --- plain-PyTorch side ---------------------------------------------------------------------


def plain_encode(
    model: FewShotModel, support: Mapping[str, ModalityBatch], query: Mapping[str, ModalityBatch]
) -> list[Sample]:
    """Encode support and query samples together: per modality, the encoder runs once on the
    samples that have it; returns one `Sample` per sample (support first)."""
    samples: list[Sample] = []
    for k, (name, encoder) in enumerate(model.backbone.encoders.items()):
        values = torch.cat([support[name].values, query[name].values])
        present = torch.cat([support[name].present, query[name].present]).tolist()
        if not samples:
            samples = [{} for _ in present]
        rows = [i for i, has in enumerate(present) if has]
        if not rows:
            continue
        index = torch.tensor(rows, device=values.device)
        lengths = None
        if support[name].lengths is not None:
            lengths = torch.cat([support[name].lengths, query[name].lengths])[index]
        out = encoder.encode(values[index], lengths)
        for j, i in enumerate(rows):
            samples[i][k] = out[j]
    return samples


def plain_cached(features: Sequence[Tensor], has: Sequence[Sequence[bool]], rows: list[int]
                 ) -> list[Sample]:
    """`Sample` s of store ``rows`` from cached per-modality embeddings ``features[k]``
    ``[N, dim]`` and presence ``has[row][k]``."""
    return [
        {k: features[k][r] for k in range(len(features)) if has[r][k]} for r in rows
    ]


def fuse_mean(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """Mean of the sample's embeddings."""
    return torch.stack(list(sample.values())).mean(0) if sample else zero


def fuse_gated(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """Softmax of one gate MLP score per present modality; weighted sum of the embeddings."""
    if not sample:
        return zero
    scores = []
    for k, z in sample.items():
        hidden = torch.relu(z @ fusion.gate_in[k] + fusion.gate_in_bias[k])
        scores.append(hidden @ fusion.gate_out[k] + fusion.gate_out_bias[k])
    weights = torch.softmax(torch.stack(scores), 0)
    return (weights.unsqueeze(1) * torch.stack(list(sample.values()))).sum(0)


def fuse_concat(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """Concatenate (a learned token where a modality is missing), then the projection."""
    if not sample:
        return zero
    count = len(fusion.modalities)
    slots = [sample[k] if k in sample else fusion.missing_tokens[k] for k in range(count)]
    return fusion.project(torch.cat(slots))


def fuse_attention(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """The transformer over [CLS, present tokens] of this sample alone; the CLS output."""
    if not sample:
        return zero
    tokens = [fusion.cls[0, 0]] + [z + fusion.type_embedding[k] for k, z in sample.items()]
    return fusion.encoder(torch.stack(tokens).unsqueeze(0))[0, 0]


def fuse_tensor(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """Outer product of the ``[projected z; 1]`` of every modality (``[0; 1]`` if missing)."""
    if not sample:
        return zero
    one = zero.new_ones(1)
    extended = []
    for k in range(len(fusion.modalities)):
        if k in sample:
            small = sample[k] @ fusion.reduce[k] + fusion.reduce_bias[k]
        else:
            small = zero.new_zeros(fusion.rank_dim)
        extended.append(torch.cat([small, one]))
    product = extended[0]
    for e in extended[1:]:
        product = torch.outer(product, e).flatten()
    return fusion.project(product)


def fuse_lowrank(fusion: Fusion, sample: Sample, zero: Tensor) -> Tensor:
    """Product over modalities of the rank factors applied to ``[z; 1]``, then mixed."""
    if not sample:
        return zero
    one = zero.new_ones(1)
    fused = None
    for k in range(len(fusion.modalities)):
        z = sample.get(k, zero)
        factor = torch.einsum("i,rio->ro", torch.cat([z, one]), fusion.factors[k])
        fused = factor if fused is None else fused * factor
    return fusion.fusion_weights[0] @ fused + fusion.fusion_bias


PLAIN_FUSIONS: dict[str, Callable[[Fusion, Sample, Tensor], Tensor]] = {
    "mean": fuse_mean,
    "gated": fuse_gated,
    "concat": fuse_concat,
    "attention": fuse_attention,
    "tensor": fuse_tensor,
    "lowrank": fuse_lowrank,
}


def plain_protonet(
    support: Tensor, support_labels: Tensor, query: Tensor, ways: int, temperature: Tensor
) -> Tensor:
    """Prototypes by a per-class loop, logits ``-cdist ** 2 / temperature``."""
    prototypes = torch.stack([support[support_labels == k].mean(0) for k in range(ways)])
    return -torch.cdist(query, prototypes) ** 2 / temperature


def plain_late(
    model: FewShotModel, support: list[Sample], labels: list[int], query: list[Sample],
    ways: int, zero: Tensor,
) -> Tensor:
    """Late fusion: one ProtoNet per modality over the samples that have it (a modality is
    used only when every class has a support sample with it), then per query a softmax of the
    learned mixing scores over its usable modalities."""
    fusion, temperature = model.backbone.fusion, model.learner.log_temperature.exp()
    per_modality: list[dict[int, Tensor] | None] = []
    for k in range(len(fusion.modalities)):
        groups = [
            [s[k] for s, y in zip(support, labels, strict=True) if y == c and k in s]
            for c in range(ways)
        ]
        if not all(groups):
            per_modality.append(None)
            continue
        prototypes = torch.stack([torch.stack(g).mean(0) for g in groups])
        rows = [j for j, q in enumerate(query) if k in q]
        if not rows:
            per_modality.append({})
            continue
        vectors = torch.stack([query[j][k] for j in rows])
        logits = -torch.cdist(vectors, prototypes) ** 2 / temperature
        per_modality.append({j: logits[n] for n, j in enumerate(rows)})
    out = []
    for j in range(len(query)):
        valid = [k for k, m in enumerate(per_modality) if m is not None and j in m]
        if not valid:
            out.append(zero.new_zeros(ways))
            continue
        weights = torch.softmax(fusion.mix[valid], 0)
        out.append(sum(w * per_modality[k][j] for w, k in zip(weights, valid, strict=True)))
    return torch.stack(out)


def plain_logits(
    model: FewShotModel, samples: list[Sample], n_support: int, support_labels: Tensor,
    ways: int,
) -> Tensor:
    """Query logits ``[Q, ways]`` of an episode given as `Sample` s (support first)."""
    zero = next(iter(samples[0].values())).new_zeros(model.backbone.fusion.dim)
    support, query = samples[:n_support], samples[n_support:]
    if model.late:
        return plain_late(model, support, support_labels.tolist(), query, ways, zero)
    fuse = PLAIN_FUSIONS[model.spec["fusion"]]
    z = torch.stack([fuse(model.backbone.fusion, s, zero) for s in samples])
    temperature = model.learner.log_temperature.exp()
    return plain_protonet(z[:n_support], support_labels, z[n_support:], ways, temperature)


# --- checks ---------------------------------------------------------------------------------


def max_difference(ours: Tensor, plain: Tensor, what: str, tolerance: float) -> float:
    """Assert ``ours`` and ``plain`` agree to ``tolerance`` relative to the largest value;
    return their largest absolute difference."""
    scale = max(1.0, float(ours.abs().max()))
    torch.testing.assert_close(
        plain, ours, rtol=tolerance, atol=tolerance * scale, msg=lambda m: f"{what}: {m}"
    )
    return float((ours - plain).abs().max())


def check_gradients(ours: FewShotModel, plain: FewShotModel, what: str, tolerance: float
                    ) -> None:
    """Assert that every parameter has the same gradient on both sides (None = zero), to
    ``tolerance`` relative to the largest gradient of the model (a gradient that is zero in
    exact arithmetic, e.g. of a convolution bias followed by BatchNorm, is rounding noise)."""
    theirs = dict(plain.named_parameters())
    grads = {
        name: (torch.zeros_like(p) if p.grad is None else p.grad,
               torch.zeros_like(theirs[name]) if theirs[name].grad is None
               else theirs[name].grad)
        for name, p in ours.named_parameters()
    }
    scale = max([1e-3] + [float(a.abs().max()) for a, _ in grads.values()])
    for name, (a, b) in grads.items():
        torch.testing.assert_close(
            b, a, rtol=tolerance, atol=tolerance * scale,
            msg=lambda m, n=name: f"{what}, gradient of {n}: {m}",
        )


# --- the four measurements ------------------------------------------------------------------


@dataclass
class Setup:
    """Everything one fusion's measurements share."""

    base: FewShotModel
    train_episodes: list[Episode]
    train_tasks: list[Task]
    eval_episodes: list[Episode]
    eval_tasks: list[Task]
    cache: Embeddings
    features: list[Tensor]
    has: list[list[bool]]
    warmup: int
    steps: int
    repeats: int
    device: torch.device
    tolerance: float


def adam(parameters: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimiser of both sides."""
    return torch.optim.Adam(parameters, lr=1e-3)


def train_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """Backward and one optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def training(setup: Setup, cached: bool) -> tuple[float, float, float]:
    """Seconds per training step, metamodal then plain, and the checked logit difference."""
    ours, plain = copy.deepcopy(setup.base), copy.deepcopy(setup.base)
    ours.train()
    plain.train()
    if cached:
        trained = [list(m.backbone.fusion.parameters()) + list(m.learner.parameters())
                   for m in (ours, plain)]
    else:
        trained = [list(ours.parameters()), list(plain.parameters())]
    opt_ours, opt_plain = adam(trained[0]), adam(trained[1])
    episodes, tasks = setup.train_episodes, setup.train_tasks

    def ours_loss(i: int) -> tuple[Tensor, Tensor]:
        if cached:
            logits = metamodal_cached_logits(ours, setup.cache, tasks[i])
            return ours.learner.query_loss(logits, tasks[i].query_labels), logits
        return ours.loss(episodes[i])

    def plain_loss(i: int) -> tuple[Tensor, Tensor]:
        task = tasks[i]
        if cached:
            samples = plain_cached(setup.features, setup.has, task.row_list)
        else:
            samples = plain_encode(plain, episodes[i].support, episodes[i].query)
        logits = plain_logits(plain, samples, task.n_support, task.support_labels, WAYS)
        return F.cross_entropy(logits, task.query_labels), logits

    what = f"{ours.spec['fusion']}, training, {'cached' if cached else 'end to end'}"
    loss_a, logits_a = ours_loss(0)
    loss_b, logits_b = plain_loss(0)
    difference = max_difference(logits_a.detach(), logits_b.detach(), what, setup.tolerance)
    max_difference(loss_a.detach(), loss_b.detach(), f"{what}, loss", setup.tolerance)
    for p in trained[0] + trained[1]:
        p.grad = None
    loss_a.backward()
    loss_b.backward()
    check_gradients(ours, plain, what, 10 * setup.tolerance)

    seconds = median_pair(
        lambda i: train_step(opt_ours, ours_loss(i)[0]),
        lambda i: train_step(opt_plain, plain_loss(i)[0]),
        setup.warmup, setup.steps, setup.device,
    )
    return seconds[0], seconds[1], difference


def adaptation(setup: Setup, cached: bool) -> tuple[float, float, float]:
    """Seconds per adapt+predict, metamodal then plain, and the checked logit difference."""
    model = copy.deepcopy(setup.base).eval()
    episodes, tasks = setup.eval_episodes, setup.eval_tasks

    def ours(i: int) -> Tensor:
        if cached:
            return metamodal_cached_logits(model, setup.cache, tasks[i])
        return model.episode_logits(episodes[i])

    def plain(i: int) -> Tensor:
        task = tasks[i]
        if cached:
            samples = plain_cached(setup.features, setup.has, task.row_list)
        else:
            samples = plain_encode(model, episodes[i].support, episodes[i].query)
        return plain_logits(model, samples, task.n_support, task.support_labels, WAYS)

    what = f"{model.spec['fusion']}, adapt+predict, {'cached' if cached else 'end to end'}"
    with torch.no_grad():
        difference = max_difference(ours(0), plain(0), what, setup.tolerance)
        seconds = median_pair(ours, plain, setup.warmup, setup.repeats, setup.device)
    return seconds[0], seconds[1], difference


# --- main -----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20,
                        help="timed training steps per side and fusion (median)")
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed adapt+predict tasks per side and fusion (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations before timing")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--fusions", default=",".join(FUSIONS),
                        help="comma-separated fusions to measure")
    parser.add_argument("--classes", type=int, default=60, help="synthetic classes")
    parser.add_argument("--per-class", type=int, default=20, help="synthetic samples per class")
    parser.add_argument("--dim", type=int, default=64, help="embedding size")
    parser.add_argument("--seed", type=int, default=0, help="seeds data, weights and episodes")
    args = parser.parse_args(argv)
    fusion_names = [f.strip() for f in args.fusions.split(",") if f.strip()]
    unknown = [f for f in fusion_names if f not in FUSIONS]
    if unknown:
        parser.error(f"unknown fusions {unknown}; choose from {', '.join(FUSIONS)}")
    if args.steps < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--steps, --repeats and --warmup must be at least 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda given but CUDA is not available")
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine()
    )
    print(f"device {device} ({name}), torch {torch.__version__}, "
          f"torch.set_num_threads({torch.get_num_threads()}), Python {sys.version.split()[0]}")
    print("numbers vary by tens of per cent from run to run on a shared machine; compare "
          "columns of one run, not runs")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "synthetic", classes=args.classes,
                              per_class=args.per_class, seed=args.seed, image_size=16,
                              track_length=32)
        data = prepare_data(root, seed=args.seed, cache=False,
                            preprocess={"image": {"size": 16}, "sound": {"sample_rate": 8000}})
    store = data.store
    shapes = ", ".join(
        f"{m} {list(store.modalities[m].values.shape[1:])}" for m in store.modalities
    )
    print(f"data: {len(store)} samples of {args.classes} classes ({shapes}), "
          f"{len(data.split.train)} meta-train / {len(data.split.test)} meta-test classes")

    train_episodes, train_tasks = sample_episodes(
        store, data.split.train, TRAIN_SHOTS, args.warmup + args.steps, args.seed, device)
    eval_episodes, eval_tasks = sample_episodes(
        store, data.split.test, EVAL_SHOTS, args.warmup + args.repeats, args.seed, device)
    tolerance = 1e-4 if device.type == "cpu" else 1e-3

    tables: dict[str, list[list[str]]] = {key: [] for key in ("1a", "1b", "2a", "2b")}
    for fusion in fusion_names:
        torch.manual_seed(args.seed)
        base = FewShotModel.build(
            kinds=data.preprocessor.kinds(), input_info=data.preprocessor.input_info(),
            dim=args.dim, fusion=fusion, learner="protonet",
            learner_options={"learn_temperature": True},
        ).to(device)
        cache = embed_store(base, store, torch.arange(len(store)), device=device)
        setup = Setup(
            base=base, train_episodes=train_episodes, train_tasks=train_tasks,
            eval_episodes=eval_episodes, eval_tasks=eval_tasks, cache=cache,
            features=[cache.parts[m] for m in cache.modalities],
            has=cache.present.tolist(), warmup=args.warmup, steps=args.steps,
            repeats=args.repeats, device=device, tolerance=tolerance,
        )
        for key, measure, cached in (
            ("1a", training, False), ("1b", training, True),
            ("2a", adaptation, False), ("2b", adaptation, True),
        ):
            ours, plain, difference = measure(setup, cached)
            if key.startswith("1"):
                numbers = [f"{1 / ours:,.1f}", f"{1 / plain:,.1f}"]
            else:
                numbers = [f"{1e3 * ours:,.2f}", f"{1e3 * plain:,.2f}"]
            tables[key].append([fusion, *numbers, f"{plain / ours:.2f}x", f"{difference:.1e}"])
        print(f"  {fusion}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    train_header = ["fusion", "metamodal ep/s", "plain PyTorch ep/s", "speed-up",
                    "max |logit diff|"]
    eval_header = ["fusion", "metamodal ms", "plain PyTorch ms", "speed-up", "max |logit diff|"]
    steps = f"median of {args.steps} steps after {args.warmup} warm-up"
    tasks = f"median of {args.repeats} tasks after {args.warmup} warm-up"
    print_table(f"(1a) ProtoNet meta-training, {WAYS}-way {TRAIN_SHOTS}-shot {QUERIES}-query, "
                f"end to end (encoders + fusion + head; forward + backward + Adam), {steps}",
                train_header, tables["1a"])
    print_table(f"(1b) the same on cached per-modality embeddings (frozen encoders; fusion + "
                f"head trained), {steps}", train_header, tables["1b"])
    print_table(f"(2a) adapt + predict one {WAYS}-way {EVAL_SHOTS}-shot task of "
                f"{WAYS * QUERIES} queries, eval mode, no grad, end to end, {tasks}",
                eval_header, tables["2a"])
    print_table("(2b) the same on cached per-modality embeddings (index, fuse, prototypes, "
                f"logits), {tasks}", eval_header, tables["2b"])
    print(
        "plain PyTorch: per modality the same encoder module encodes the samples that have it; "
        "a per-sample\nPython loop fuses with the same fusion parameters (attention: the "
        "transformer once per sample on its\npresent tokens; late: per-modality, per-class and "
        "per-query loops); prototypes by a per-class loop;\nlogits -torch.cdist(query, "
        "prototypes) ** 2 / temperature. Before timing, every row asserted equal logits\n"
        "(and, for training, loss and gradients) on the same episode and weights; the last "
        "column is the\nlargest logit difference found. ProtoNet learns its temperature "
        "(so that mean fusion has a parameter\nto train on cached embeddings). "
        f"Total {time.perf_counter() - started:.0f} s."
    )


if __name__ == "__main__":
    main()

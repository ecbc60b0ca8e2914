"""The CPU path of the demo, before and after, side by side in one run.

Three changes that `docs/speed.md` ("The CPU path") describes, each measured here against the
computation it replaced, on the embedded dataset at the demo's sizes (five modalities, 5-way
1-shot 15-query episodes, 64-d embeddings, ProtoNet with gated fusion):

(1) a training step of the fused model (forward, backward): the audio encoder's BatchNorm as
    masked element-wise arithmetic with an all-valid mask (before) against the native kernel
    it now runs when every clip fills the window; and the image encoder in the plain memory
    layout (before) against ``channels_last``, which it now also trains in (with the precision
    of each layout's float32 gradients against float64);
(2) a training step with the cross-modal alignment loss (the demo's ``protonet+gated+align``):
    the episode's samples encoded a second time for the alignment loss (before) against the
    encoder outputs the ProtoNet loss already computed (`FewShotModel.loss_and_parts`);
(3) the fine-tune baseline's evaluation (a linear head fitted on each episode's support
    features, 100 Adam steps): one episode after the other (before) against up to 100
    episodes fitted together (`FineTune.logits_many`);
(4) a training step in float32 against the encoders and fusion under bfloat16 autocast
    (``precision = "bf16"``, what ``auto`` picks on a CPU with AMX or AVX512-BF16), for the
    demo's fused model and for ``resnet12`` at the Omniglot recipe's shape, as
    ``configs/omniglot.toml`` sets it (its widths, ways and queries; 1-shot episodes of 28 x 28
    images).

Before anything is timed, each pair is checked to compute the same thing in float64: the same
loss and gradients (1, 2), the same logits (3). bfloat16 (4) rounds to 8 bits of mantissa: its
gradient is checked against float64 to lie within `BF16_TOLERANCE` (relative, all weights as
one vector), beside float32's error. Times are medians of interleaved readings
after warm-up; take them with nothing else running on the machine. Run::

    python benchmarks/cpu_path.py [--steps 20] [--episodes 600] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from episodes import median_pair
from text_table import print_table
from torch import Tensor, nn

from metamodal.config import TrainConfig, load_config
from metamodal.data.batch import Episode, cat_batches
from metamodal.data.episodes import EpisodeSampler
from metamodal.datasets.synthetic import make_synthetic
from metamodal.encoders.layers import MaskedBatchNorm
from metamodal.learners.baselines import FineTune
from metamodal.learners.embeddings import Embeddings
from metamodal.mapping.aligner import Aligner
from metamodal.model import FewShotModel
from metamodal.runs.prepared import PreparedData, prepare_data
from metamodal.train.acceleration import backbone_precision

CPU = torch.device("cpu")
BF16_TOLERANCE = 0.5
"""The largest relative error of a bfloat16 training step's gradient (all weights as one
vector) against float64 that the precision check accepts: bfloat16 keeps 8 bits of mantissa,
and through a freshly initialised network a step's rounding adds up to several percent of the
gradient (about a quarter for ``resnet12``, printed below), while a side that computed
something else (a layer left out, a wrong cast) errs by about 100%."""


class AlwaysMasked(MaskedBatchNorm):
    """`MaskedBatchNorm` as it ran before: the masked arithmetic even when every position is
    valid (an all-true mask where the encoder now passes none)."""

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            mask = torch.ones((x.shape[0], 1, 1, x.shape[-1]), dtype=torch.bool)
        return super().forward(x, mask)


def always_masked(model: FewShotModel) -> FewShotModel:
    """A copy of ``model`` whose every `MaskedBatchNorm` takes the masked arithmetic."""
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if type(module) is MaskedBatchNorm:
            module.__class__ = AlwaysMasked
    return copied


def plain_layout(model: FewShotModel) -> FewShotModel:
    """A copy of ``model`` whose image encoders train in the plain (NCHW) layout, as they did
    before."""
    copied = copy.deepcopy(model)
    for encoder in copied.backbone.encoders.values():
        if hasattr(encoder, "channels_last"):
            encoder.channels_last = lambda values: values
    return copied


def fused_model(data: PreparedData, dtype: torch.dtype) -> FewShotModel:
    """The demo's fused model: every modality, gated fusion, ProtoNet, 64-d."""
    torch.manual_seed(0)
    return FewShotModel.build(kinds=data.preprocessor.kinds(),
                              input_info=data.preprocessor.input_info(), dim=64,
                              fusion="gated", learner="protonet").to(dtype).train()


def as_dtype(episode: Episode, dtype: torch.dtype) -> Episode:
    """``episode`` with its floating-point inputs in ``dtype``."""
    def cast(batch: dict) -> dict:
        return {m: type(b)(*(t.to(dtype) if t is not None and t.is_floating_point() else t
                             for t in (b.values, b.present, b.lengths)))
                for m, b in batch.items()}
    return Episode(cast(episode.support), cast(episode.query), episode.support_labels,
                   episode.query_labels, episode.classes, episode.support_ids,
                   episode.query_ids)


def largest_difference(first: Sequence[Tensor], second: Sequence[Tensor]) -> float:
    """The largest absolute difference between paired tensors, relative to the largest
    magnitude of the pair."""
    return max(float((a - b).abs().max()) / max(1.0, float(a.abs().max()))
               for a, b in zip(first, second, strict=True))


def step_sides(data: PreparedData, episodes: list[Episode], kind: str, dtype: torch.dtype
               ) -> tuple[Callable[[int], Tensor], Callable[[int], Tensor], list[nn.Module]]:
    """The before and after sides of comparison ``kind`` (``"batchnorm"``, ``"layout"`` or
    ``"align"``): two functions ``step(i) -> loss`` that backpropagate episode ``i``, and the
    modules whose gradients they fill (before's, after's)."""
    after = fused_model(data, dtype)
    if kind in ("batchnorm", "layout"):
        before = (always_masked if kind == "batchnorm" else plain_layout)(after)

        def step(model: FewShotModel, i: int) -> Tensor:
            loss = model.loss(as_dtype(episodes[i], dtype))[0]
            loss.backward()
            return loss

        return (lambda i: step(before, i), lambda i: step(after, i), [before, after])
    torch.manual_seed(1)
    aligner = Aligner(after.modalities, dim=64, positives="class").to(dtype)
    before, before_aligner = copy.deepcopy(after), copy.deepcopy(aligner)

    def with_alignment(model: FewShotModel, align: Aligner, reuse: bool, i: int) -> Tensor:
        task = as_dtype(episodes[i], dtype)
        labels = torch.cat([task.support_labels, task.query_labels])
        if reuse:
            loss, _, parts, present = model.loss_and_parts(task)
        else:  # the samples encoded again for the alignment loss
            loss = model.loss(task)[0]
            parts, present = model.backbone.encode(cat_batches([task.support, task.query]))
        total = loss + 0.5 * align.loss(parts, present, labels)
        total.backward()
        return total

    return (lambda i: with_alignment(before, before_aligner, False, i),
            lambda i: with_alignment(after, aligner, True, i), [before, after])


def check_step(data: PreparedData, episodes: list[Episode], kind: str) -> float:
    """Run one step of both sides of ``kind`` in float64 on the same episode and weights;
    raise unless their losses and gradients agree; return the largest gradient difference."""
    before_step, after_step, (before, after) = step_sides(data, episodes, kind, torch.float64)
    before_loss, after_loss = before_step(0), after_step(0)
    if abs(float((before_loss - after_loss).detach())) > 1e-9:
        raise SystemExit(f"{kind}: the losses differ: {float(before_loss)} "
                         f"vs {float(after_loss)}")
    grads = ([p.grad for p in before.parameters() if p.grad is not None],
             [p.grad for p in after.parameters() if p.grad is not None])
    if len(grads[0]) != len(grads[1]) or not grads[0]:
        raise SystemExit(f"{kind}: the two sides trained different parameters")
    difference = largest_difference(*grads)
    if difference > 1e-8:
        raise SystemExit(f"{kind}: the gradients differ by {difference:.1e}")
    return difference


def float32_errors(data: PreparedData, episodes: list[Episode]) -> tuple[float, float]:
    """The largest relative error (gradient norm, over the weights of the image encoder) of
    one float32 training step in the plain layout and in ``channels_last``, against the same
    step in float64."""
    def image_grads(model: FewShotModel) -> list[Tensor]:
        return [p.grad.double() for p in model.backbone.encoders["image"].parameters()]

    reference = fused_model(data, torch.float64)
    reference.loss(as_dtype(episodes[0], torch.float64))[0].backward()
    errors = []
    for side in (plain_layout, lambda model: model):
        model = side(fused_model(data, torch.float32))
        model.loss(as_dtype(episodes[0], torch.float32))[0].backward()
        errors.append(max(float((got - want).norm() / want.norm())
                          for got, want in zip(image_grads(model), image_grads(reference),
                                               strict=True) if float(want.norm()) > 1e-6))
    return errors[0], errors[1]


def precision_step(model: FewShotModel, episode: Episode, precision: str) -> Tensor:
    """One training step (forward, backward) of ``model`` on ``episode`` in ``precision``."""
    with backbone_precision(model.backbone, precision, CPU):
        loss = model.loss(episode)[0]
    loss.backward()
    return loss


def precision_errors(build: Callable[[torch.dtype], FewShotModel], episode: Episode
                     ) -> tuple[float, float]:
    """The relative error of one training step's gradient (every weight's, as one vector) in
    float32 and under bfloat16 autocast, against the same step in float64; raises past
    `BF16_TOLERANCE`."""
    def grads(model: FewShotModel) -> list[Tensor]:
        return [p.grad.double() for p in model.parameters() if p.grad is not None]

    reference = build(torch.float64)
    precision_step(reference, as_dtype(episode, torch.float64), "fp32")
    want = torch.cat([g.flatten() for g in grads(reference)])
    errors = []
    for precision in ("fp32", "bf16"):
        model = build(torch.float32)
        precision_step(model, as_dtype(episode, torch.float32), precision)
        got = torch.cat([g.flatten() for g in grads(model)])
        errors.append(float((got - want).norm() / want.norm()))
    if errors[1] > BF16_TOLERANCE:
        raise SystemExit(f"bf16: the gradients err by {errors[1]:.1e} against float64")
    return errors[0], errors[1]


def time_precisions(build: Callable[[torch.dtype], FewShotModel], episodes: list[Episode],
                    warmup: int, steps: int) -> tuple[float, float]:
    """Median seconds of one float32 training step and of one under bfloat16 autocast."""
    model = build(torch.float32)

    def side(precision: str) -> Callable[[int], object]:
        def run(i: int) -> object:
            model.zero_grad(set_to_none=True)
            return precision_step(model, episodes[i % len(episodes)], precision)
        return run

    return median_pair(side("fp32"), side("bf16"), warmup, steps, CPU)


RECIPE = Path(__file__).resolve().parent.parent / "configs" / "omniglot.toml"


def resnet12_model(data: PreparedData, recipe: TrainConfig, dtype: torch.dtype) -> FewShotModel:
    """The Omniglot recipe's model: ``resnet12`` on the images alone at ``recipe``'s widths
    and embedding size, ProtoNet."""
    torch.manual_seed(0)
    return FewShotModel.build(kinds=data.preprocessor.kinds(),
                              input_info=data.preprocessor.input_info(), dim=recipe.dim,
                              encoders={"image": "resnet12"}, fusion="mean",
                              encoder_options=recipe.encoder_options,
                              learner=recipe.learner).to(dtype).train()


def time_steps(data: PreparedData, episodes: list[Episode], kind: str, warmup: int,
               steps: int) -> tuple[float, float]:
    """Median seconds of one training step (forward, backward) of each side in float32."""
    before_step, after_step, modules = step_sides(data, episodes, kind, torch.float32)

    def clear(step: Callable[[int], Tensor]) -> Callable[[int], object]:
        def run(i: int) -> object:
            for module in modules:
                module.zero_grad(set_to_none=True)
            return step(i % len(episodes))
        return run

    return median_pair(clear(before_step), clear(after_step), warmup, steps, CPU)


def finetune_episodes(count: int, seed: int, dtype: torch.dtype
                      ) -> list[tuple[Embeddings, Tensor, Embeddings]]:
    """``count`` 5-way 1-shot 15-query episodes of 64-d features (class means apart by about
    their noise), as the fine-tune baseline sees its backbone's embeddings."""
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(count):
        means = torch.randn(5, 64, generator=generator, dtype=dtype)
        support_labels = torch.arange(5)
        query_labels = torch.arange(5).repeat_interleave(15)

        def embed(labels: Tensor, means: Tensor = means) -> Embeddings:
            z = means[labels] + torch.randn(len(labels), 64, generator=generator, dtype=dtype)
            return Embeddings(z, torch.ones(len(labels), 1, dtype=torch.bool))

        made.append((embed(support_labels), support_labels, embed(query_labels)))
    return made


def finetune_sides(episodes: list[tuple[Embeddings, Tensor, Embeddings]], chunk: int
                   ) -> tuple[Callable[[], list[Tensor]], Callable[[], list[Tensor]]]:
    """One by one (before) and ``chunk`` episodes at a time (after), each returning every
    episode's logits ``[75, 5]``."""
    head = FineTune().to(episodes[0][0].z.dtype)
    backbone = nn.Module()

    def one_by_one() -> list[Tensor]:
        return [head.logits(backbone, s, labels, q, 5) for s, labels, q in episodes]

    def together() -> list[Tensor]:
        return [logits for start in range(0, len(episodes), chunk)
                for logits in head.logits_many(backbone, episodes[start:start + chunk], 5)]

    return one_by_one, together


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20,
                        help="timed training steps per side (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--episodes", type=int, default=600,
                        help="test episodes of the fine-tune comparison")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes over those episodes per side (median)")
    parser.add_argument("--classes", type=int, default=30, help="classes of the dataset")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads")
    args = parser.parse_args(argv)
    if min(args.steps, args.warmup, args.episodes, args.repeats) < 1 or args.classes < 15:
        parser.error("--steps, --warmup, --episodes and --repeats must be at least 1, "
                     "--classes at least 15")
    torch.set_num_threads(args.threads)
    print(f"device cpu ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, torch.set_num_threads({torch.get_num_threads()}), Python "
          f"{sys.version.split()[0]}")
    recipe = load_config(RECIPE)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic(Path(tmp) / "data", classes=args.classes, per_class=20, seed=0,
                              image_size=16, track_length=32)
        data = prepare_data(root, seed=0, cache=False)
        root = make_synthetic(Path(tmp) / "images", classes=max(args.classes, recipe.ways),
                              per_class=20, seed=0, image_size=28, track_length=32)
        images = prepare_data(root, seed=0, cache=False, modalities=["image"])
    sampler = EpisodeSampler(data.store, data.split.train + data.split.val + data.split.test,
                             5, 1, 15, seed=0)
    episodes = [sampler[i] for i in range(args.warmup + args.steps)]
    shapes = ", ".join(f"{m} {list(b.values.shape[1:])}"
                       for m, b in data.store.modalities.items())
    print(f"data: the embedded dataset, {len(data.store)} samples ({shapes}); 5-way 1-shot "
          "15-query episodes")

    rows = []
    for kind, title, before, after in (
        ("batchnorm", "fused ProtoNet training step", "masked BatchNorm", "native BatchNorm"),
        ("layout", "fused ProtoNet training step", "images NCHW", "images channels_last"),
        ("align", "with the alignment loss", "samples encoded twice", "encoder outputs reused"),
    ):
        difference = check_step(data, episodes, kind)
        slow, fast = time_steps(data, episodes, kind, args.warmup, args.steps)
        rows.append([title, before, after, f"{1e3 * slow:,.1f}", f"{1e3 * fast:,.1f}",
                     f"{slow / fast:.2f}x", f"{difference:.1e}"])
    print_table(f"Training steps, ms (median of {args.steps} after {args.warmup} warm-up; "
                "check: float64 gradients, largest relative difference)",
                ["step", "before", "after", "before ms", "after ms", "speed-up", "grad diff"],
                rows, text_columns=3)
    plain, channels_last = float32_errors(data, episodes)
    print(f"image encoder, float32 training gradients against float64 (largest relative error "
          f"over its weights): NCHW {plain:.1e}, channels_last {channels_last:.1e}")

    checked = finetune_episodes(min(args.episodes, 20), seed=1, dtype=torch.float64)
    slow_side, fast_side = finetune_sides(checked, chunk=8)
    difference = largest_difference(slow_side(), fast_side())
    if difference > 1e-9:
        raise SystemExit(f"finetune: the logits differ by {difference:.1e}")
    slow_side, fast_side = finetune_sides(finetune_episodes(args.episodes, seed=2,
                                                            dtype=torch.float32), chunk=100)
    slow, fast = median_pair(lambda i: slow_side(), lambda i: fast_side(), 0, args.repeats, CPU)
    print_table(f"Fine-tune baseline, {args.episodes} test episodes, s (median of "
                f"{args.repeats}; check: float64 logits, largest relative difference)",
                ["evaluation", "before", "after", "before s", "after s", "speed-up",
                 "logit diff"],
                [["5-way 1-shot, 100 Adam steps", "one by one", "100 episodes at once",
                  f"{slow:.2f}", f"{fast:.2f}", f"{slow / fast:.2f}x", f"{difference:.1e}"]],
                text_columns=3)
    many_way = EpisodeSampler(images.store, images.split.train + images.split.val
                              + images.split.test, recipe.ways, 1, recipe.queries, seed=0)
    cases = {"fused": (lambda dtype: fused_model(data, dtype), episodes),
             "resnet12": (lambda dtype: resnet12_model(images, recipe, dtype),
                          [many_way[i] for i in range(args.warmup + args.steps)])}
    widths = "-".join(map(str, recipe.encoder_options.get("image", {}).get("widths", [])))
    rows = []
    for name, title in (("fused", "the demo's fused ProtoNet, 5-way 1-shot 15-query"),
                        ("resnet12", f"resnet12 {widths or 'default'}, {recipe.ways}-way "
                         f"1-shot {recipe.queries}-query, 28 x 28 images")):
        build, steps_of = cases[name]
        fp32_error, bf16_error = precision_errors(build, steps_of[0])
        slow, fast = time_precisions(build, steps_of, args.warmup, args.steps)
        rows.append([title, f"{1e3 * slow:,.1f}", f"{1e3 * fast:,.1f}", f"{slow / fast:.2f}x",
                     f"{fp32_error:.1e}", f"{bf16_error:.1e}"])
    print_table(f"Training steps by precision, ms (median of {args.steps} after {args.warmup} "
                "warm-up; check: the gradient's relative error against float64)",
                ["step", "fp32 ms", "bf16 ms", "speed-up", "fp32 error", "bf16 error"],
                rows, text_columns=1)
    print("metamodal: every check passed")


if __name__ == "__main__":
    main()

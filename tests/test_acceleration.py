"""The fast paths compute what the plain path computes: vmap chunks of every size against the
per-task loop, the compiled meta-update against the eager one, fp32 "precision" against no
setting at all (float64 equality); chunk sizing from memory readings; bfloat16 autocast
trains to within a stated distance of float32; typed errors for bad settings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from test_task_batching import QUERIES, WAYS, build, episodes, gradients

from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.errors import ConfigError
from metamodal.learners.task_batching import batched_losses, chunk_sizes
from metamodal.train import acceleration
from metamodal.train.acceleration import (
    ChunkPlan,
    MetaLossCompiler,
    backbone_precision,
    check_precision,
    compiler_missing,
)
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CAPTURES = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13)
"""Whether this torch captures the vmapped meta-update whole: the pinned one (2.13) does;
torch 2.4 (the lowest declared) cannot trace the inner loop's context managers and runs it
eagerly, with a warning, computing the same thing."""


def compiled_whole(compiler: MetaLossCompiler) -> bool:
    """Whether ``compiler`` compiled (not fallen back), required where this torch can."""
    return compiler.failure is None or not CAPTURES

KINDS = {"picture": "image", "numbers": "tabular"}
ENCODERS = {"picture": "conv4", "numbers": "mlp"}


def looped(model, tasks) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and meta-gradient of ``tasks`` by the per-task loop (the plain path)."""
    model.zero_grad()
    total = 0.0
    for task in tasks:
        loss, _ = model.loss(task)
        (loss / len(tasks)).backward()
        total += float(loss)
    return total / len(tasks), gradients(model)


def chunked(model, tasks, sizes: list[int], run=None) -> tuple[float, list[torch.Tensor]]:
    """The same under vmap, ``sizes`` tasks per chunk, one backward per chunk."""
    model.zero_grad()
    total, first = 0.0, 0
    for size in sizes:
        part = tasks[first:first + size]
        first += size
        losses, logits = batched_losses(model.learner, model.backbone, part,
                                        run=run(part[0].ways) if run else None)
        assert logits.shape == (size, WAYS * QUERIES, WAYS)
        (losses.sum() / len(tasks)).backward()
        total += float(losses.sum())
    return total / len(tasks), gradients(model)


def largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("most", [1, 2, 3, 4, 5])
def test_vmap_chunks_of_any_size_equal_the_loop_in_float64(most: int) -> None:
    model = build("maml", KINDS, ENCODERS, "gated")
    tasks = episodes(KINDS, tasks=5)
    loss_a, grads_a = looped(model, tasks)
    loss_b, grads_b = chunked(model, tasks, chunk_sizes(len(tasks), most))
    assert loss_a == pytest.approx(loss_b, abs=1e-12)
    assert largest_difference(grads_a, grads_b) < 1e-9
    assert any(float(g.abs().max()) > 0 for g in grads_b[:-2])  # the backbone learns


def test_chunk_sizes_cover_the_meta_batch_evenly() -> None:
    for total in range(1, 40):
        for most in range(1, 12):
            sizes = chunk_sizes(total, most)
            assert sum(sizes) == total and max(sizes) <= most
            assert len(sizes) == -(-total // most) and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError):
        chunk_sizes(4, 0)


class FakeMemory:
    """Memory readings of a device: ``free`` bytes before, a peak ``per_task`` per probe task
    above ``base``."""

    def __init__(self, free: int, per_task: int, base: int = 1000) -> None:
        self.free, self.per_task, self.base, self.probed = free, per_task, base, 0

    def available(self) -> int:
        return self.free

    def start(self) -> int:
        return self.base

    def peak(self) -> int:
        return self.base + self.per_task * self.probed


def test_chunks_are_sized_from_the_memory_a_probe_chunk_takes() -> None:
    memory = FakeMemory(free=10_000, per_task=1_000)
    plan = ChunkPlan(0, 32, torch.device("cuda"), memory=memory)
    assert plan.size is None
    seen = []
    for chunk in plan.chunks(list(range(32))):
        assert plan.probing == (not seen)  # the probe runs eagerly
        if not seen:  # the probe: the caller runs it before the next chunk is cut
            memory.probed = len(chunk)
        seen.append(chunk)
    assert len(seen[0]) == acceleration.PROBE_TASKS
    assert plan.size == int(acceleration.MEMORY_FRACTION * 10_000 / 1_000)  # 8
    assert [len(c) for c in seen[1:]] == chunk_sizes(30, 8)
    assert sum(seen, []) == list(range(32))  # every task once, in order
    # later meta-batches: the whole meta-batch in even chunks of at most 8
    assert [len(c) for c in plan.chunks(list(range(32)))] == [8, 8, 8, 8]
    # plenty of memory: one chunk; too little for one task: one task per chunk
    for free, size in ((10**12, 32), (10, 1)):
        plan = ChunkPlan(0, 32, torch.device("cuda"), memory=FakeMemory(free, 1_000))
        for i, chunk in enumerate(plan.chunks(list(range(32)))):
            if i == 0:
                plan.memory.probed = len(chunk)
        assert plan.size == size


def test_explicit_and_cpu_chunk_sizes() -> None:
    assert [len(c) for c in ChunkPlan(3, 7, torch.device("cpu")).chunks(range(7))] == [3, 2, 2]
    assert ChunkPlan(0, 20, torch.device("cpu")).size == acceleration.CPU_CHUNK
    assert ChunkPlan(0, 5, torch.device("cpu")).size == 5
    assert ChunkPlan(5, 32, torch.device("cuda"), memory=FakeMemory(1, 1)).size == 5


def test_fp32_precision_changes_nothing_and_bf16_computes_in_bfloat16() -> None:
    torch.manual_seed(0)
    model = build("maml", KINDS, ENCODERS, "gated").float()
    tasks = [t.to(torch.device("cpu")) for t in episodes(KINDS)]
    for task in tasks:
        for side in (task.support, task.query):
            for name, mb in side.items():
                side[name] = type(mb)(mb.values.float(), mb.present, mb.lengths)
    plain = looped(model, tasks)
    with backbone_precision(model.backbone, "fp32", torch.device("cpu")):
        same = looped(model, tasks)
    assert plain[0] == same[0] and largest_difference(plain[1], same[1]) == 0.0
    with backbone_precision(model.backbone, "bf16", torch.device("cpu")):
        low = looped(model, tasks)
        z = model.backbone(tasks[0].support).z
    assert z.dtype == torch.float32 and "forward" not in vars(model.backbone)
    assert low[0] != plain[0]  # bfloat16 did compute something
    assert low[0] == pytest.approx(plain[0], rel=0.05)
    assert all(g.dtype == torch.float32 for g in low[1])


def test_bad_precision_is_a_config_error_naming_the_setting(capsys) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(data="x", precision="fp16").validate()
    assert error.value.column == "precision" and "auto" in error.value.fix
    TrainConfig(data="x", precision="auto").validate()
    with pytest.raises(ConfigError) as error:
        check_precision("half", torch.device("cpu"))
    assert error.value.column == "precision"
    assert main(["train", "--data", "x", "--out", "y", "--precision", "fp8"]) != 0
    assert "precision" in capsys.readouterr().err


needs_compiler = pytest.mark.skipif(compiler_missing(torch.device("cpu")) is not None,
                                    reason="torch.compile's CPU backend needs a C++ compiler")


@needs_compiler
def test_the_compiled_meta_update_equals_the_eager_one_in_float64() -> None:
    model = build("maml", {"numbers": "tabular"}, {"numbers": "mlp"})
    tasks = episodes({"numbers": "tabular"}, tasks=4)
    eager = chunked(model, tasks, [2, 2])
    compiler = MetaLossCompiler(model.learner, model.backbone, torch.device("cpu"))
    compiled = chunked(model, tasks, [2, 2], run=compiler.runner)
    assert compiled_whole(compiler)  # it was compiled, not run eagerly after a failure
    assert eager[0] == pytest.approx(compiled[0], abs=1e-12)
    assert largest_difference(eager[1], compiled[1]) < 1e-9
    again = chunked(model, tasks, [2, 2], run=compiler.runner)  # the same compiled graph
    assert largest_difference(compiled[1], again[1]) < 1e-12


def test_a_meta_update_that_fails_to_compile_runs_eagerly_with_a_warning(monkeypatch) -> None:
    def broken(function, **options):
        def run(*args):
            raise RuntimeError("the backend cannot compile this")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model = build("maml", {"numbers": "tabular"}, {"numbers": "mlp"})
    tasks = episodes({"numbers": "tabular"}, tasks=2)
    compiler = MetaLossCompiler(model.learner, model.backbone, torch.device("cpu"))
    with pytest.warns(RuntimeWarning, match="runs eagerly.*cannot compile"):
        fallback = chunked(model, tasks, [2], run=compiler.runner)
    assert "cannot compile" in compiler.failure
    assert largest_difference(fallback[1], chunked(model, tasks, [2])[1]) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        chunked(model, tasks, [2], run=compiler.runner)
    assert MetaLossCompiler(model.learner, model.backbone, torch.device("cpu"),
                            enabled=False).runner(WAYS) is None


def test_without_a_compiler_the_cpu_backend_is_not_tried(monkeypatch) -> None:
    monkeypatch.setattr(acceleration.shutil, "which", lambda name: None)
    assert "C++ compiler" in compiler_missing(torch.device("cpu"))
    model = build("maml", {"numbers": "tabular"}, {"numbers": "mlp"})
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler"):
        compiler = MetaLossCompiler(model.learner, model.backbone, torch.device("cpu"))
    tasks = episodes({"numbers": "tabular"}, tasks=2)
    assert largest_difference(chunked(model, tasks, [2], run=compiler.runner)[1],
                              chunked(model, tasks, [2])[1]) == 0.0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acceleration") / "data"
    assert main(["make-synthetic", str(root), "--classes", "16", "--per-class", "8",
                 "--image-size", "8", "--seed", "5", "--missing-rate", "0"]) == 0
    return root


def train(data: Path, out: Path, **settings) -> tuple[list[float], float]:
    """Training losses per step and the final validation accuracy."""
    config = TrainConfig(**{
        "data": str(data), "learner": "protonet", "fusion": "mean", "dim": 16, "ways": 3,
        "shots": 1, "queries": 3, "steps": 40, "val_every": 0, "val_episodes": 60,
        "val_ways": 3, "val_shots": 1, "val_queries": 3, "device": "cpu", "cache": False,
        "modalities": ["image", "measurements"], "preprocess": {"image": {"size": 8}},
        "seed": 1, **settings})
    losses: list[float] = []
    result = Trainer(config, out, progress=False,
                     callbacks=[lambda step, values: losses.append(values["train_loss"])]).fit()
    return losses, result.best_val_accuracy


def test_bf16_trains_to_within_a_stated_distance_of_fp32(data: Path, tmp_path: Path) -> None:
    """The same 40 steps and 60 validation episodes (3-way 1-shot, chance 1/3) in float32 and
    with the backbone in bfloat16: validation accuracy within 0.1, both well above chance."""
    fp32_losses, fp32 = train(data, tmp_path / "fp32")
    bf16_losses, bf16 = train(data, tmp_path / "bf16", precision="bf16")
    assert fp32_losses != bf16_losses  # bfloat16 was used
    print(f"validation accuracy: fp32 {fp32:.3f}, bf16 {bf16:.3f}")
    assert fp32 > 0.5 and bf16 > 0.5
    assert abs(fp32 - bf16) <= 0.1


@pytest.mark.parametrize("amx, avx512_bf16, expected", [
    (True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")])
def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it_natively(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        amx: bool, avx512_bf16: bool, expected: str) -> None:
    """``precision = "auto"`` trains as ``bf16`` on a CPU with AMX tiles or AVX512-BF16 and as
    ``fp32`` on one with neither: the same losses, bit for bit."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert acceleration.resolve_precision("auto", torch.device("cpu")) == expected
    common = {"steps": 3, "val_episodes": 5}
    auto, _ = train(data, tmp_path / "auto", precision="auto", **common)
    explicit, _ = train(data, tmp_path / expected, precision=expected, **common)
    other, _ = train(data, tmp_path / "other", **common,
                     precision="fp32" if expected == "bf16" else "bf16")
    assert auto == explicit and auto != other


def test_the_trainer_with_vmap_chunks_and_compile_trains_as_the_loop(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 2 of a meta-batch of 3, chunks sized by the CPU rule, and the compiled
    meta-update (captured whole, run by the ``aot_eager`` backend here: kernel generation is
    the float64 test's) train as the loop does."""
    monkeypatch.setattr(acceleration, "BACKEND", "aot_eager")
    if not CAPTURES:
        warnings.filterwarnings("ignore", "compile: the meta-update runs eagerly")
    common = {"learner": "maml", "meta_batch": 3, "steps": 2, "val_episodes": 5,
              "learner_options": {"inner_steps": 1}}
    loop, _ = train(data, tmp_path / "loop", **common, task_batching="loop")
    for name, extra in (("chunks", {"vmap_chunk": 2}), ("auto", {"vmap_chunk": 0}),
                        ("compiled", {"compile": True})):
        with warnings.catch_warnings():
            if CAPTURES:
                warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager mode
            batched, _ = train(data, tmp_path / name, **common, task_batching="vmap", **extra)
        assert batched == pytest.approx(loop, rel=1e-4), name


def test_bf16_runs_under_vmap_and_in_the_compiled_meta_update(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceleration, "BACKEND", "aot_eager")
    torch.manual_seed(0)
    model = build("maml", {"numbers": "tabular"}, {"numbers": "mlp"}).float()
    tasks = episodes({"numbers": "tabular"}, tasks=2)
    for task in tasks:
        for side in (task.support, task.query):
            side["numbers"] = type(side["numbers"])(side["numbers"].values.float(),
                                                    side["numbers"].present)
    cpu = torch.device("cpu")
    plain = chunked(model, tasks, [2])
    compiler = MetaLossCompiler(model.learner, model.backbone, cpu)
    with backbone_precision(model.backbone, "bf16", cpu):
        batched = chunked(model, tasks, [2])
        with warnings.catch_warnings():
            warnings.simplefilter("error" if CAPTURES else "ignore", RuntimeWarning)
            compiled = chunked(model, tasks, [2], run=compiler.runner)  # compiled, not eager
    for low in (batched, compiled):
        assert low[0] != plain[0] and low[0] == pytest.approx(plain[0], rel=0.05)
        assert all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in low[1])
    assert compiled[0] == pytest.approx(batched[0], rel=1e-3)

"""Meta-batches under `torch.func.vmap`: the same losses and meta-gradients as the per-task loop
(float64) for every optimisation-based learner, encoder and fusion that can be batched; the
fallbacks and typed errors where they cannot; the trainer's two paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.data.batch import Episode, ModalityBatch
from metamodal.errors import ConfigError, DatasetError
from metamodal.fusion.attention import AttentionFusion
from metamodal.learners.inner_loop import task_batch_norm
from metamodal.learners.task_batching import (
    _batch_norm,
    _layer_norm,
    batchable,
    batched_losses,
    obstacles,
    stack_batches,
    uses_vmap,
    vmap_modes,
    vmap_ready,
)
from metamodal.model import FewShotModel
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

WAYS, SHOTS, QUERIES, TASKS = 3, 2, 2, 3
INFO = {
    "image": {"channels": 1, "height": 8, "width": 8},
    "tabular": {"features": 3},
    "text": {"vocab_size": 20, "max_length": 8},
    "sequence": {"features": 3, "max_length": 8},
    "audio": {"n_mels": 8, "max_frames": 9},
}
SMALL = {"conv4": {"hidden": 4}, "resnet12": {"widths": [4, 4, 4, 4]},
         "trajectory": {"channels": 4, "points": 8}, "audio-cnn": {"channels": 4},
         "tcn": {"channels": 4}, "textcnn": {"filters": 4, "embedding_dim": 4},
         "bag": {"embedding_dim": 4}}


def modality(kind: str, n: int, task: int, generator: torch.Generator) -> ModalityBatch:
    """``n`` samples of ``kind``, all present; variable-length kinds get a task-dependent
    padded length, so that stacking tasks pads them further."""
    present = torch.ones(n, dtype=torch.bool)
    if kind == "image":
        return ModalityBatch(torch.randn(n, 1, 8, 8, generator=generator,
                                         dtype=torch.float64), present)
    if kind == "tabular":
        return ModalityBatch(torch.randn(n, 3, generator=generator, dtype=torch.float64),
                             present)
    longest = 4 + task % 3
    lengths = torch.randint(2, longest + 1, (n,), generator=generator)
    valid = torch.arange(longest) < lengths.unsqueeze(1)  # [n, longest]
    if kind == "text":
        return ModalityBatch(torch.randint(1, 20, (n, longest), generator=generator) * valid,
                             present, lengths)
    if kind == "sequence":
        values = torch.randn(n, longest, 3, generator=generator, dtype=torch.float64)
        return ModalityBatch(values * valid.unsqueeze(-1), present, lengths)
    values = torch.randn(n, 8, longest, generator=generator, dtype=torch.float64)
    return ModalityBatch(values * valid.unsqueeze(1), present, lengths)


def episodes(kinds: dict[str, str], tasks: int = TASKS) -> list[Episode]:
    out = []
    for task in range(tasks):
        generator = torch.Generator().manual_seed(task)
        support = {m: modality(k, WAYS * SHOTS, task, generator) for m, k in kinds.items()}
        query = {m: modality(k, WAYS * QUERIES, task, generator) for m, k in kinds.items()}
        labels = torch.arange(WAYS)
        out.append(Episode(support, query, labels.repeat_interleave(SHOTS),
                           labels.repeat_interleave(QUERIES), [str(k) for k in range(WAYS)],
                           [f"s{i}" for i in range(WAYS * SHOTS)],
                           [f"q{i}" for i in range(WAYS * QUERIES)]))
    return out


def build(learner: str, kinds: dict[str, str], encoders: dict[str, str],
          fusion: str = "mean", **options) -> FewShotModel:
    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds=kinds, input_info={m: INFO[k] for m, k in kinds.items()}, dim=8,
        encoders=encoders, fusion=fusion, learner=learner,
        encoder_options={m: SMALL.get(e, {}) for m, e in encoders.items()},
        learner_options=options if learner == "protonet" else {"inner_steps": 2,
                                                               "inner_lr": 0.3, **options})
    return model.double().train()


def gradients(model: FewShotModel) -> list[Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for p in model.parameters()]


def loop_and_vmap(model: FewShotModel, tasks: list[Episode]
                  ) -> tuple[tuple[float, list[Tensor]], tuple[float, list[Tensor]]]:
    """(mean loss, meta-gradient) of ``tasks``, by the per-task loop and under vmap."""
    model.zero_grad()
    total = 0.0
    for task in tasks:
        loss, _ = model.loss(task)
        (loss / len(tasks)).backward()
        total += loss.item()
    looped = (total / len(tasks), gradients(model))
    model.zero_grad()
    losses, logits = batched_losses(model.learner, model.backbone, tasks)
    (losses.sum() / len(tasks)).backward()
    assert logits.shape == (len(tasks), WAYS * QUERIES, WAYS)
    return looped, (losses.mean().item(), gradients(model))


def assert_same(model: FewShotModel, tasks: list[Episode]) -> None:
    (loss_a, grads_a), (loss_b, grads_b) = loop_and_vmap(model, tasks)
    assert loss_a == pytest.approx(loss_b, abs=1e-12)
    assert max(float((a - b).abs().max()) for a, b in zip(grads_a, grads_b, strict=True)) < 1e-9
    assert any(float(g.abs().max()) > 0 for g in grads_b[:-2])  # the backbone learns


@pytest.mark.parametrize("learner", ["maml", "fomaml", "anil", "metasgd", "maml++", "reptile",
                                     "lstm-optimizer"])
def test_vmap_equals_the_loop_for_every_learner(learner: str) -> None:
    kinds = {"picture": "image", "numbers": "tabular"}
    options = {"first_order_until": 0.0} if learner == "maml++" else {}  # second order now
    model = build(learner, kinds, {"picture": "conv4", "numbers": "mlp"}, "gated", **options)
    assert_same(model, episodes(kinds))


@pytest.mark.parametrize(("kind", "encoder"), [
    ("image", "resnet12"), ("text", "bag"), ("text", "textcnn"), ("sequence", "tcn"),
    ("sequence", "trajectory"), ("audio", "audio-cnn")])
def test_vmap_equals_the_loop_for_every_batchable_encoder(kind: str, encoder: str) -> None:
    model = build("maml", {"x": kind}, {"x": encoder})
    assert_same(model, episodes({"x": kind}))


@pytest.mark.parametrize("fusion", ["concat", "attention", "late", "lowrank", "tensor"])
def test_vmap_equals_the_loop_for_every_fusion(fusion: str) -> None:
    kinds = {"picture": "image", "numbers": "tabular"}
    model = build("maml", kinds, {"picture": "conv4", "numbers": "mlp"}, fusion)
    assert_same(model, episodes(kinds))


def test_written_out_norms_equal_torch_layers() -> None:
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    norm = nn.BatchNorm2d(3).double()
    nn.init.uniform_(norm.weight)
    nn.init.uniform_(norm.bias)
    with task_batch_norm(norm.eval()):
        assert torch.allclose(_batch_norm(norm, x), norm(x), atol=1e-12)
    layer = nn.LayerNorm(4).double()
    nn.init.uniform_(layer.weight)
    assert torch.allclose(_layer_norm(layer, x), layer(x), atol=1e-12)


@pytest.mark.parametrize("training", [True, False])
def test_attention_fusion_computes_what_the_torch_transformer_computes(training: bool) -> None:
    torch.manual_seed(0)
    fusion = AttentionFusion(modalities=["a", "b", "c"], dim=8, heads=2, layers=2).double()
    fusion.train(training)
    present = {"a": torch.tensor([1, 1, 0, 0]).bool(), "b": torch.tensor([1, 0, 1, 0]).bool(),
               "c": torch.tensor([0, 1, 1, 0]).bool()}
    parts = {k: torch.randn(4, 8, dtype=torch.float64) for k in "abc"}
    z, mask = fusion.stack(parts, present)
    tokens = torch.where(mask.unsqueeze(-1), z + fusion.type_embedding, 0.0)
    tokens = torch.cat([fusion.cls.expand(4, 1, 8), tokens], 1)
    padding = torch.cat([torch.zeros_like(mask[:, :1]), ~mask], 1)
    expected = fusion.zero_empty(fusion.encoder(tokens, src_key_padding_mask=padding)[:, 0],
                                 mask)
    assert torch.allclose(fusion(parts, present), expected, atol=1e-12)
    with torch.no_grad():  # torch's own layers there
        assert torch.allclose(fusion(parts, present), expected, atol=1e-12)


def test_stacking_pads_every_task_to_the_longest() -> None:
    tasks = episodes({"x": "text"})
    stacked = stack_batches([t.support for t in tasks])["x"]
    longest = max(t.support["x"].values.shape[1] for t in tasks)
    assert stacked[0].shape == (TASKS, WAYS * SHOTS, longest)
    for i, task in enumerate(tasks):
        width = task.support["x"].values.shape[1]
        assert torch.equal(stacked[0][i, :, :width], task.support["x"].values)
        assert not stacked[0][i, :, width:].any()
        assert torch.equal(stacked[2][i], task.support["x"].lengths)


def test_episodes_with_an_absent_modality_are_not_batched() -> None:
    tasks = episodes({"picture": "image", "numbers": "tabular"})
    assert batchable(tasks)
    tasks[1].query["numbers"].present[0] = False
    assert not batchable(tasks)
    assert not batchable([tasks[0], episodes({"picture": "image"})[0]])


def test_models_that_cannot_be_batched_are_named() -> None:
    gru = build("maml", {"x": "text"}, {"x": "gru"})
    assert any("GRUEncoder" in reason for reason in obstacles(gru.learner, gru.backbone))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_vmap("auto", cuda, gru.learner, gru.backbone)
    with pytest.raises(ConfigError, match="GRUEncoder") as error:
        uses_vmap("vmap", cpu, gru.learner, gru.backbone)
    assert error.value.column == "task_batching"
    protonet = build("protonet", {"x": "tabular"}, {"x": "mlp"})
    with pytest.raises(ConfigError, match="ProtoNet"):
        uses_vmap("vmap", cpu, protonet.learner, protonet.backbone)
    maml = build("maml", {"x": "tabular"}, {"x": "mlp"})
    with pytest.raises(ConfigError, match="alignment"):
        uses_vmap("vmap", cpu, maml.learner, maml.backbone, aligns=True)
    assert (uses_vmap("auto", cpu, maml.learner, maml.backbone),
            uses_vmap("auto", cuda, maml.learner, maml.backbone),
            uses_vmap("loop", cuda, maml.learner, maml.backbone)) == (False, True, False)


@pytest.mark.parametrize(("key", "value"), [("task_batching", "batched"), ("vmap_chunk", -1)])
def test_bad_task_batching_settings_are_config_errors(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as error:
        TrainConfig(data="x", **{key: value}).validate()
    assert error.value.column == key


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[float, Path]:
    """Small synthetic datasets without and with absent modalities."""
    root = tmp_path_factory.mktemp("batching")
    out = {}
    for missing in (0.0, 0.3):
        out[missing] = root / f"missing-{missing}"
        assert main(["make-synthetic", str(out[missing]), "--classes", "16", "--per-class",
                     "6", "--image-size", "16", "--seed", "3", "--missing-rate",
                     str(missing)]) == 0
    return out


def train_losses(data: Path, out: Path, batching: str) -> list[float]:
    config = TrainConfig(
        data=str(data), learner="maml", fusion="gated", dim=8, ways=3, shots=1, queries=2,
        steps=3, meta_batch=4, vmap_chunk=3, task_batching=batching, val_every=0,
        val_episodes=2, device="cpu", learner_options={"inner_steps": 2},
        modalities=["image", "measurements", "caption"], preprocess={"image": {"size": 16}},
        encoders={"caption": "bag"})
    losses: list[float] = []
    Trainer(config, out, progress=False,
            callbacks=[lambda step, values: losses.append(values["train_loss"])]).fit()
    return losses


@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_the_trainer_batches_complete_chunks_and_loops_over_the_rest(
    datasets: dict[float, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, missing: float,
) -> None:
    import metamodal.train.trainer as trainer

    calls: list[int] = []

    def counted(learner, backbone, tasks, **options):
        calls.append(len(tasks))
        return batched_losses(learner, backbone, tasks, **options)

    monkeypatch.setattr(trainer, "batched_losses", counted)
    looped = train_losses(datasets[missing], tmp_path / "loop", "loop")
    assert not calls
    batched = train_losses(datasets[missing], tmp_path / "vmap", "vmap")
    assert len(batched) == len(looped) == 3
    if missing:  # every chunk has an absent modality: the loop, the very same numbers
        assert not calls
        assert batched == looped
        assert "lacks a modality" in caplog.text
    else:  # 4 tasks in chunks of at most 3: two chunks of 2 per step (`chunk_sizes`)
        assert calls == [2, 2] * 3
        assert batched == pytest.approx(looped, rel=1e-4)


def test_dropout_draws_its_own_masks_for_every_task() -> None:
    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds={"t": "tabular"}, input_info={"t": INFO["tabular"]}, dim=8, encoders={"t": "mlp"},
        fusion="gated", learner="maml", encoder_options={"t": {"dropout": 0.5}},
        learner_options={"inner_steps": 2}).double().train()
    same = [episodes({"t": "tabular"})[0]] * TASKS  # one task three times
    losses, _ = batched_losses(model.learner, model.backbone, same)
    assert len(set(losses.tolist())) == TASKS  # as the loop, which draws new masks per task
    losses.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("learner", "fusion"), [("maml", "gated"), ("maml", "late"),
                                                 ("lstm-optimizer", "mean")])
def test_nothing_from_inside_vmap_stays_in_the_model(learner: str, fusion: str) -> None:
    import copy

    kinds = {"picture": "image", "numbers": "tabular"}
    model = build(learner, kinds, {"picture": "conv4", "numbers": "mlp"}, fusion)
    losses, _ = batched_losses(model.learner, model.backbone, episodes(kinds))
    losses.sum().backward()
    copy.deepcopy(model)  # every tensor it keeps can be read and copied
    weights = getattr(model.backbone.fusion, "last_weights", None)
    assert weights is None or torch.isfinite(weights).all()


def test_the_vmap_mode_is_on_in_every_module_that_declares_it_and_only_inside() -> None:
    kinds = {"sound": "audio", "numbers": "tabular"}
    model = build("maml", kinds, {"sound": "audio-cnn", "numbers": "mlp"}, "attention")
    declared = vmap_modes(model.learner, model.backbone)
    assert {"MAML", "AudioCNN", "MaskedBatchNorm", "AttentionFusion"} <= {
        type(m).__name__ for m in declared}
    seen = []

    def one_task(x: Tensor) -> Tensor:
        seen.append([m.under_task_vmap for m in declared])
        return x.sum()

    with vmap_ready(model.learner, model.backbone):
        torch.func.vmap(one_task)(torch.zeros(2, 3))
    assert seen == [[True] * len(declared)]
    assert not any(m.under_task_vmap for m in declared)
    losses, _ = batched_losses(model.learner, model.backbone, episodes(kinds))
    assert torch.isfinite(losses).all() and not any(m.under_task_vmap for m in declared)


def test_episodes_that_cannot_be_batched_are_a_typed_error() -> None:
    tasks = episodes({"picture": "image", "numbers": "tabular"})
    model = build("maml", {"picture": "image", "numbers": "tabular"},
                  {"picture": "conv4", "numbers": "mlp"})
    other = episodes({"picture": "image"})[0]
    for bad in ([], [tasks[0], other]):
        with pytest.raises(DatasetError, match="cannot be batched"):
            batched_losses(model.learner, model.backbone, bad)


def test_the_alignment_fix_says_to_drop_the_alignment_loss() -> None:
    maml = build("maml", {"x": "tabular"}, {"x": "mlp"})
    with pytest.raises(ConfigError) as error:
        uses_vmap("vmap", torch.device("cpu"), maml.learner, maml.backbone, aligns=True)
    assert "align_weight = 0" in error.value.fix and "gru" not in error.value.fix

"""Tests of `FewShotModel`: embedding, logits (fused and late), losses, building and training."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping

import pytest
import tomli_w
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.data.batch import Episode, ModalityBatch, TensorStore, cat_batches
from metamodal.errors import ConfigError, InsufficientSamplesError, ModalityError, UnknownNameError
from metamodal.learners import (
    Embeddings,
    EpisodeContext,
    LearnerCapabilities,
    ProtoNet,
    Siamese,
    embed_pair,
    learners,
)
from metamodal.model import Backbone, FewShotModel
from metamodal.registry import Registry

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest.py)


# ----------------------------------------------------------------------------- stand-ins


class LinearEncoder(nn.Module):
    """Linear map of tabular values (does not zero absent rows itself)."""

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, dim)

    def forward(self, batch: ModalityBatch) -> Tensor:
        return self.linear(batch.values)


class MaskedMean(nn.Module):
    """Mean over present modalities."""

    late = False

    def __init__(self, modalities: list[str], dim: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = dim

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        z = torch.stack([embeddings[m] for m in self.modalities], 1)
        mask = torch.stack([present[m] for m in self.modalities], 1).unsqueeze(2).to(z.dtype)
        return (z * mask).sum(1) / mask.sum(1).clamp_min(1)


class RecordingLate(nn.Module):
    """Late fusion that averages the valid per-modality logits and records its inputs."""

    late = True

    def __init__(self, modalities: list[str], dim: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.out_dim = dim
        self.seen: tuple[Tensor, Tensor] | None = None

    def forward(self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> Tensor:
        return torch.stack([embeddings[m] for m in self.modalities], 1)

    def combine(self, logits: Tensor, valid: Tensor) -> Tensor:
        self.seen = (logits, valid)
        weights = valid.unsqueeze(2).to(logits.dtype)
        return (logits * weights).sum(1) / weights.sum(1).clamp_min(1)


def tabular(values: list[list[float]], present: list[bool] | None = None) -> ModalityBatch:
    tensor = torch.tensor(values)
    mask = torch.ones(len(values), dtype=torch.bool) if present is None else torch.tensor(present)
    return ModalityBatch(tensor, mask)


def stand_in_model(fusion: nn.Module | None = None, head: nn.Module | None = None) -> FewShotModel:
    torch.manual_seed(0)
    return FewShotModel(
        Backbone({"a": LinearEncoder(2, 3), "b": LinearEncoder(1, 3)},
                 fusion or MaskedMean(["a", "b"], 3)),
        head or ProtoNet(),
    )


# ----------------------------------------------------------------------------- embed


def test_embed_shapes_presence_and_zeroed_parts() -> None:
    model = stand_in_model()
    batch = {
        "a": tabular([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [True, True, False]),
        "b": tabular([[2.0], [0.0], [3.0]], [True, False, True]),
    }
    emb = model.embed(batch)
    assert emb.z.shape == (3, 3) and emb.modalities == ["a", "b"]
    assert emb.present.tolist() == [[True, True], [True, False], [False, True]]
    assert emb.parts is not None
    assert emb.parts["a"][2].abs().sum() == 0 and emb.parts["b"][1].abs().sum() == 0
    expected_a = model.backbone.encoders["a"](batch["a"])
    expected_b = model.backbone.encoders["b"](batch["b"])
    assert torch.allclose(emb.z[0], (expected_a[0] + expected_b[0]) / 2)
    assert torch.allclose(emb.z[1], expected_a[1]) and torch.allclose(emb.z[2], expected_b[2])


def test_embed_treats_a_missing_model_modality_as_absent() -> None:
    model = stand_in_model()
    emb = model.embed({"a": tabular([[1.0, 0.0], [0.0, 1.0]])})
    assert emb.present.tolist() == [[True, False], [True, False]]
    assert emb.parts is not None and emb.parts["b"].shape == (2, 3)
    assert emb.parts["b"].abs().sum() == 0
    assert torch.allclose(emb.z, model.backbone.encoders["a"](tabular([[1.0, 0.0], [0.0, 1.0]])))


def test_embed_rejects_unknown_modalities_and_empty_or_ragged_input() -> None:
    model = stand_in_model()
    with pytest.raises(ModalityError) as info:
        model.embed({"a": tabular([[1.0, 0.0]]), "sound": tabular([[1.0]])})
    message = str(info.value)
    assert "sound" in message and "a, b" in message and info.value.fix
    with pytest.raises(ModalityError, match="no modality"):
        model.embed({})
    with pytest.raises(ModalityError, match="different sample counts"):
        model.embed({"a": tabular([[1.0, 0.0]]), "b": tabular([[1.0], [2.0]])})


@pytest.mark.parametrize("fusion", ["gated", "late"])
def test_fuse_of_encoded_parts_is_embed_and_works_on_cached_rows(fusion: str) -> None:
    torch.manual_seed(0)
    model = FewShotModel.build(kinds={"a": "tabular", "b": "tabular"}, input_info=input_info(),
                               dim=8, fusion=fusion).eval()
    batch = {
        "a": ModalityBatch(torch.randn(6, 16), torch.tensor([1, 1, 0, 1, 1, 1]).bool()),
        "b": ModalityBatch(torch.randn(6, 4), torch.tensor([1, 0, 1, 1, 0, 1]).bool()),
    }
    parts, present = model.backbone.encode(batch)
    assert list(parts) == list(present) == ["a", "b"]
    assert parts["a"][2].abs().sum() == 0 and present["b"].tolist() == batch["b"].present.tolist()
    embedded = model.embed(batch)
    fused = model.backbone.fuse(parts, present)
    assert torch.equal(fused.z, embedded.z) and torch.equal(fused.present, embedded.present)
    # cached per-modality embeddings: index rows, fuse; no encoder runs again
    rows = torch.tensor([5, 0, 3])
    cached = model.backbone.fuse({m: p[rows] for m, p in parts.items()},
                        {m: p[rows] for m, p in present.items()})
    torch.testing.assert_close(cached.z, model.embed({m: mb.index(rows)
                                                      for m, mb in batch.items()}).z)
    # a modality left out counts as absent everywhere
    only_a = model.backbone.fuse({"a": parts["a"]}, {"a": present["a"]})
    assert only_a.present[:, 1].sum() == 0 and only_a.modalities == ["a", "b"]
    torch.testing.assert_close(only_a.z, model.embed({"a": batch["a"]}).z)


def test_fuse_rejects_mismatched_unknown_or_ragged_input() -> None:
    model = stand_in_model()
    z, yes = torch.zeros(2, 3), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ModalityError, match="present has"):
        model.backbone.fuse({"a": z, "b": z}, {"a": yes})
    with pytest.raises(ModalityError, match="sound"):
        model.backbone.fuse({"a": z, "sound": z}, {"a": yes, "sound": yes})
    with pytest.raises(ModalityError, match="no modality"):
        model.backbone.fuse({}, {})
    with pytest.raises(ModalityError, match="row counts"):
        model.backbone.fuse({"a": z, "b": torch.zeros(3, 3)}, {"a": yes, "b": yes})
    with pytest.raises(ModalityError, match="row counts"):
        model.backbone.fuse({"a": z}, {"a": torch.ones(3, dtype=torch.bool)})


def test_model_follows_the_fusion_order_and_checks_it() -> None:
    model = FewShotModel(
        Backbone({"b": LinearEncoder(1, 3), "a": LinearEncoder(2, 3)}, MaskedMean(["a", "b"], 3)),
        ProtoNet(),
    )
    assert model.modalities == ["a", "b"] and not model.late
    assert model.capabilities().training == "episodic" and model.spec is None
    with pytest.raises(ConfigError, match="fusion combines"):
        Backbone({"a": LinearEncoder(2, 3)}, MaskedMean(["a", "b"], 3))


# ----------------------------------------------------------------------------- logits


def test_logits_apply_the_head_to_fused_embeddings() -> None:
    model = stand_in_model()
    support = Embeddings(torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]),
                         torch.ones(2, 2, dtype=torch.bool))
    query = Embeddings(torch.tensor([[1.0, 0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert model.logits(support, torch.tensor([0, 1]), query, 2).tolist() == [[-1.0, -1.0]]
    with pytest.raises(InsufficientSamplesError, match="no support sample"):
        model.logits(support, torch.tensor([0, 0]), query, 2)


def count_host_transfers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every tensor-to-Python conversion (each is a device-to-host sync on a GPU)."""
    calls: list[str] = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__", "__index__"):
        original = getattr(torch.Tensor, name)

        def spy(self: Tensor, *args: object, _original: object = original, _name: str = name
                ) -> object:
            calls.append(_name)
            return _original(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(torch.Tensor, name, spy)
    return calls


@pytest.mark.parametrize("late", [False, True], ids=["fused", "late"])
def test_logits_check_the_support_once(late: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    model = stand_in_model(fusion=RecordingLate(["a", "b"], 2) if late else None)
    if late:
        support, labels, query = late_embeddings()
    else:
        support = Embeddings(torch.randn(4, 3), torch.ones(4, 2, dtype=torch.bool))
        query = Embeddings(torch.randn(2, 3), torch.ones(2, 2, dtype=torch.bool))
        labels = torch.tensor([0, 1, 1, 0])
    expected = model.logits(support, labels, query, 2)
    calls = count_host_transfers(monkeypatch)
    logits = model.logits(support, labels, query, 2)
    # one transfer checks the support (the head's own check is skipped); a second one decides
    # (fused) whether some support sample has no modality at all, or (late) for every modality
    # at once whether each class has a support sample with it
    assert len(calls) == 2, calls
    monkeypatch.undo()
    assert torch.equal(logits, expected)
    with pytest.raises(InsufficientSamplesError, match="no support sample"):
        model.logits(support, torch.zeros_like(labels), query, 2)


def late_embeddings() -> tuple[Embeddings, Tensor, Embeddings]:
    # modality 0 ("a"): every support sample has it; modality 1 ("b"): support 1 lacks it
    zs = torch.tensor([
        [[0.0, 0.0], [0.0, 0.0]],
        [[4.0, 0.0], [9.0, 9.0]],
        [[0.0, 0.0], [4.0, 0.0]],
    ])
    support = Embeddings(zs, torch.tensor([[True, True], [True, False], [True, True]]),
                         modalities=["a", "b"])
    labels = torch.tensor([0, 1, 1])
    zq = torch.tensor([[[1.0, 0.0], [7.0, 7.0]], [[3.0, 0.0], [1.0, 0.0]]])
    query = Embeddings(zq, torch.tensor([[True, False], [True, True]]), modalities=["a", "b"])
    return support, labels, query


def test_late_fusion_logits_ignore_modalities_a_query_lacks() -> None:
    fusion = RecordingLate(["a", "b"], 2)
    model = stand_in_model(fusion=fusion)
    support, labels, query = late_embeddings()
    logits = model.logits(support, labels, query, 2)
    assert fusion.seen is not None
    per_modality, valid = fusion.seen
    assert valid.tolist() == [[True, False], [True, True]]
    # modality a: prototypes [0, 0] and [2, 0]; modality b: support 1 excluded -> [0, 0], [4, 0]
    assert per_modality[:, 0].tolist() == [[-1.0, -1.0], [-9.0, -1.0]]
    assert per_modality[1, 1].tolist() == [-1.0, -9.0]
    assert logits[0].tolist() == [-1.0, -1.0]  # only modality a counts for query 0
    assert logits[1].tolist() == [-5.0, -5.0]
    # what query 0 holds in its absent modality, or support 1 in its, changes nothing
    query.z[0, 1] = 100.0
    support.z[1, 1] = -50.0
    assert torch.equal(model.logits(support, labels, query, 2), logits)


def test_late_fusion_drops_a_modality_some_class_lacks_in_the_support() -> None:
    fusion = RecordingLate(["a", "b"], 2)
    model = stand_in_model(fusion=fusion)
    support, labels, query = late_embeddings()
    support.present[2, 1] = False  # class 1 now has no support sample with modality b
    logits = model.logits(support, labels, query, 2)
    assert fusion.seen is not None
    assert fusion.seen[1].tolist() == [[True, False], [True, False]]
    assert logits[1].tolist() == [-9.0, -1.0]


# ----------------------------------------------------------------------------- episodes


def gaussian_store(classes: int, per_class: int, seed: int) -> TensorStore:
    """Tabular samples: class signal in 4 features, 12 features of loud noise; a second
    tabular modality "b" (a noisy copy of the signal) that a third of the samples lack."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 4, generator=generator) * 2
    labels = torch.arange(classes).repeat_interleave(per_class)
    signal = centres[labels] + 0.5 * torch.randn(len(labels), 4, generator=generator)
    noise = 3 * torch.randn(len(labels), 12, generator=generator)
    a = torch.cat([signal, noise], dim=1)
    b = signal + torch.randn(len(labels), 4, generator=generator)
    present_b = torch.rand(len(labels), generator=generator) > 0.33
    b = torch.where(present_b.unsqueeze(1), b, torch.zeros(()))
    return TensorStore(
        [f"s{i}" for i in range(len(labels))],
        [f"c{int(k)}" for k in labels],
        {
            "a": ModalityBatch(a, torch.ones(len(labels), dtype=torch.bool)),
            "b": ModalityBatch(b, present_b),
        },
        {"a": "tabular", "b": "tabular"},
    )


def sample_episode(
    store: TensorStore, classes: list[str], generator: torch.Generator, ways: int = 5,
    shots: int = 1, queries: int = 5, modalities: list[str] | None = None,
) -> Episode:
    by_class = store.class_indices()
    chosen = torch.randperm(len(classes), generator=generator)[:ways].tolist()
    support, query = [], []
    for k in chosen:
        rows = by_class[classes[k]]
        picked = rows[torch.randperm(len(rows), generator=generator)[: shots + queries]]
        support.append(picked[:shots])
        query.append(picked[shots:])
    support_idx, query_idx = torch.cat(support), torch.cat(query)
    return Episode(
        store.batch(support_idx, modalities),
        store.batch(query_idx, modalities),
        torch.arange(ways).repeat_interleave(shots),
        torch.arange(ways).repeat_interleave(queries),
        [classes[k] for k in chosen],
        [store.ids[i] for i in support_idx.tolist()],
        [store.ids[i] for i in query_idx.tolist()],
    )


def test_embed_episode_matches_separate_embedding_and_loss_adds_extra() -> None:
    store = gaussian_store(6, 6, seed=1)
    generator = torch.Generator().manual_seed(0)
    classes = sorted(set(store.labels))
    model = FewShotModel(
        Backbone({"a": LinearEncoder(16, 4), "b": LinearEncoder(4, 4)}, MaskedMean(["a", "b"], 4)),
        Siamese(),
    )
    episode = sample_episode(store, classes, generator, ways=3, shots=2, queries=2)
    support, query = embed_pair(model.backbone, episode.support, episode.query)
    alone = model.embed(episode.query)
    assert torch.allclose(query.z, alone.z) and query.present.tolist() == alone.present.tolist()
    assert len(support) == 6
    logits = model.episode_logits(episode)
    assert torch.allclose(logits, model.logits(support, episode.support_labels, query, 3))
    loss, loss_logits = model.loss(episode)
    expected = model.learner.extra_loss(support, episode.support_labels, query,
                                     episode.query_labels)
    assert torch.allclose(loss, expected) and torch.allclose(loss_logits, logits)

    model.learner = ProtoNet()
    loss, logits = model.loss(episode)
    assert torch.allclose(loss, F.cross_entropy(logits, episode.query_labels))


@pytest.mark.parametrize("learner", ["protonet", "maml"])
@pytest.mark.parametrize("fusion", ["gated", "late"])
def test_loss_and_parts_is_the_loss_with_the_encoders_outputs(learner: str,
                                                              fusion: str) -> None:
    """A metric learner hands back the embeddings its loss used (one encoder pass); others
    encode once more: either way the loss and logits are `loss`'s, the parts `encode`'s, and
    the parts carry gradients to the encoders."""
    torch.manual_seed(0)
    store = gaussian_store(6, 5, seed=2)
    episode = sample_episode(store, sorted(set(store.labels)), torch.Generator().manual_seed(1),
                             ways=3, shots=2, queries=2)
    model = FewShotModel.build(kinds={"a": "tabular", "b": "tabular"}, input_info=input_info(),
                               dim=8, fusion=fusion, learner=learner).eval()
    loss, logits, parts, present = model.loss_and_parts(episode)
    expected_loss, expected_logits = model.loss(episode)
    expected_parts, expected_present = model.backbone.encode(
        cat_batches([episode.support, episode.query]))
    assert torch.allclose(loss, expected_loss, atol=1e-6)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    assert list(parts) == list(expected_parts) == ["a", "b"]
    for m in parts:
        assert parts[m].shape == (12, 8) and torch.allclose(parts[m], expected_parts[m])
        assert present[m].tolist() == expected_present[m].tolist()
    sum(p.sum() for p in parts.values()).backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.backbone.encoders.parameters())


# ----------------------------------------------------------------------------- build


def input_info() -> dict[str, dict]:
    return {"a": {"features": 16}, "b": {"features": 4}, "t": {"features": 2, "max_length": 8}}


KINDS = {"a": "tabular", "b": "tabular", "t": "sequence"}


def test_model_capabilities_are_the_learners_with_what_the_encoders_allow() -> None:
    def caps(learner: str, encoder: str) -> LearnerCapabilities:
        return FewShotModel.build(kinds=KINDS, input_info=input_info(), dim=8,
                                  encoders={"t": encoder}, fusion="mean",
                                  learner=learner).capabilities()

    assert caps("protonet", "tcn") == LearnerCapabilities(embeds_once=True)
    assert caps("maml", "tcn") == LearnerCapabilities(embeds_once=False, batches_tasks=True)
    # a GRU packs its sequences by lengths read on the host: no vmap over tasks
    assert caps("maml", "gru") == LearnerCapabilities(embeds_once=False)
    assert caps("nearest-centroid", "gru").training == "supervised"
    assert caps("am3", "gru").uses_class_semantics
    assert not hasattr(FewShotModel, "caches_embeddings")
    assert not hasattr(FewShotModel, "training_mode")


def test_build_spec_round_trips_through_toml() -> None:
    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds=KINDS, input_info=input_info(), dim=8, fusion="gated", learner="matchingnet",
        encoders={"b": "mlp"}, encoder_options={"a": {"hidden": [8]}},
        learner_options={"scale": 5.0},
    )
    assert model.modalities == ["a", "b", "t"]
    assert model.spec is not None
    assert model.spec["encoders"] == {"a": "mlp", "b": "mlp", "t": "tcn"}
    assert model.spec["encoder_options"] == {"a": {"hidden": [8]}, "b": {}, "t": {}}
    assert model.spec["learner_options"] == {"scale": 5.0} and model.spec["dim"] == 8
    spec = tomllib.loads(tomli_w.dumps(model.spec))
    rebuilt = FewShotModel.build(**spec)
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    batch = {
        "a": ModalityBatch(torch.randn(3, 16), torch.tensor([True, True, False])),
        "t": ModalityBatch(torch.randn(3, 8, 2), torch.ones(3, dtype=torch.bool),
                           torch.tensor([8, 3, 5])),
    }
    with torch.no_grad():
        assert torch.allclose(model.embed(batch).z, rebuilt.embed(batch).z)


def test_build_reports_unknown_names_and_mismatched_encoders() -> None:
    info = input_info()
    with pytest.raises(UnknownNameError, match="protonet"):
        FewShotModel.build(kinds=KINDS, input_info=info, learner="protonett")
    with pytest.raises(UnknownNameError, match="gated"):
        FewShotModel.build(kinds=KINDS, input_info=info, fusion="nope")
    with pytest.raises(UnknownNameError, match="mlp"):
        FewShotModel.build(kinds=KINDS, input_info=info, encoders={"a": "nope"})
    with pytest.raises(ConfigError, match="conv4") as info_error:
        FewShotModel.build(kinds=KINDS, input_info=info, encoders={"a": "conv4"})
    assert not isinstance(info_error.value, UnknownNameError) and "mlp" in str(info_error.value)
    with pytest.raises(ConfigError, match="does not use: z"):
        FewShotModel.build(kinds=KINDS, input_info=info, encoders={"z": "mlp"})
    with pytest.raises(ConfigError, match="input_info"):
        FewShotModel.build(kinds=KINDS, input_info={"a": info["a"]})
    with pytest.raises(ConfigError, match="hyper-parameter"):
        FewShotModel.build(kinds=KINDS, input_info=info, learner_options={"temprature": 2.0})
    # An option's error names the config table that holds it, not the component.
    for options, key in [({"learner_options": {"temperature": 0.0}}, "learner_options"),
                         ({"fusion": "late", "fusion_options": {"distill": -1.0}},
                          "fusion_options"),
                         ({"fusion_options": {"hiden": 4}}, "fusion_options"),
                         ({"encoder_options": {"a": {"depth": 2}}}, "encoder_options.a"),
                         # ranges the components check themselves (`OptionError`)
                         ({"encoder_options": {"a": {"hidden": [0]}}}, "encoder_options.a"),
                         ({"fusion": "lowrank", "fusion_options": {"rank": 0}},
                          "fusion_options")]:
        with pytest.raises(ConfigError) as located:
            FewShotModel.build(kinds=KINDS, input_info=info, **options)
        assert located.value.column == key, options
    assert str(located.value) == ("key fusion_options: lowrank: rank must be >= 1, got 0 "
                                  "(fix: use e.g. rank=4)")  # the component's own words
    assert info_error.value.column is None  # data prepared for another encoder: no option
    with pytest.raises(ConfigError, match="at least one modality"):
        FewShotModel.build(kinds={}, input_info={})


@pytest.mark.parametrize("options,key,words", [
    ({"fusion_options": {"hidden": "wide"}}, "fusion_options",
     "fusion 'gated': hidden = 'wide' is not of type int"),
    ({"fusion_options": {"hidden": -1}}, "fusion_options", "gated needs hidden >= 1, got -1"),
    ({"fusion_options": {"hidden": 10**12}}, "fusion_options", "is over 16,777,216 in magnitude"),
    ({"fusion_options": {"hidden": 10**6}}, "fusion_options", "wider than 8,192"),
    ({"encoder_options": {"a": {"hidden": [64, 8193]}}}, "encoder_options.a", "wider than 8,192"),
    ({"fusion": "attention", "fusion_options": {"layers": 10**6}}, "fusion_options",
     "attention needs layers in 1..64"),
    ({"fusion": "concat", "fusion_options": {"hidden": -1}}, "fusion_options",
     "concat needs hidden >= 0"),
    ({"encoder_options": {"a": {"hidden": [64] * 65}}}, "encoder_options.a", "has over 64 items"),
    ({"encoder_options": {"a": {"dropout": float("nan")}}}, "encoder_options.a",
     "is not a finite number"),
    ({"encoder_options": {"a": {"hidden": True}}}, "encoder_options.a", "is not of type"),
    ({"encoders": {"t": "gru"}, "encoder_options": {"t": {"layers": 65}}}, "encoder_options.t",
     "gru needs hidden, embedding_dim >= 1, layers in 1..64"),
    ({"learner": "relationnet", "learner_options": {"layers": 100}}, "learner_options",
     "layers in 1..64"),
    ({"learner": "finetune", "learner_options": {"lr": 0.0}}, "learner_options",
     "lr and scale must be > 0"),
    ({"learner": "am3", "learner_options": {"hidden": 0}}, "learner_options",
     "hidden must be >= 1"),
    # each was taken: a low-rank fusion of 1.4 TB, an inner loop holding 10 MB a step
    ({"fusion": "lowrank", "fusion_options": {"rank": 20_000}}, "fusion_options",
     "wider than 8,192"),
    ({"learner": "maml", "learner_options": {"inner_steps": 101}}, "learner_options.inner_steps",
     "inner_steps must be an integer of 1 to 100"),
    ({"learner": "maml", "learner_options": {"eval_steps": 1001}}, "learner_options.eval_steps",
     "eval_steps must be an integer of 1 to 1,000"),
])
def test_component_options_of_the_wrong_type_or_out_of_range_are_located_config_errors(
        options: dict, key: str, words: str) -> None:
    """Caught before anything is built (types, bounds) or by the component itself (its
    ranges), never a raw TypeError or torch's RuntimeError, nor a model of 10^12 units."""
    with pytest.raises(ConfigError) as located:
        FewShotModel.build(kinds=KINDS, input_info=input_info(), **options)
    assert located.value.column == key and words in str(located.value), str(located.value)
    FewShotModel.build(kinds=KINDS, input_info=input_info(),  # an int for mlp's widths
                       encoder_options={"a": {"hidden": 32}})


def test_options_of_a_component_whose_hints_do_not_resolve_are_not_type_checked() -> None:

    def factory(*, dim: int, thing: OnlyForTypeCheckers | None = None,  # noqa: F821
                scale: float = 1.0) -> None:
        pass

    third_party = Registry("learner")
    third_party.register("third-party")(factory)
    third_party.check_options("third-party", {"scale": "x"})  # no type check
    with pytest.raises(ConfigError, match="is not a finite number"):  # the bounds still hold
        third_party.check_options("third-party", {"scale": float("nan")})


@pytest.mark.parametrize("learner", learners.names())
@pytest.mark.parametrize("fusion", ["mean", "late"])
def test_every_learner_trains_through_a_built_model(learner: str, fusion: str) -> None:
    torch.manual_seed(0)
    store = gaussian_store(6, 5, seed=2)
    episode = sample_episode(store, sorted(set(store.labels)), torch.Generator().manual_seed(1),
                             ways=3, shots=2, queries=2)
    model = FewShotModel.build(
        kinds={"a": "tabular", "b": "tabular"}, input_info=input_info(), dim=8, fusion=fusion,
        learner=learner, learner_options={"steps": 5} if learner == "finetune" else None,
    )
    assert model.late == (fusion == "late")
    context = None
    if model.capabilities().uses_class_semantics:  # AM3: the classes' descriptions
        context = EpisodeContext(class_semantics=torch.randn(3, model.backbone.fusion.out_dim))
    loss, logits = model.loss(episode, context)
    assert logits.shape == (6, 3) and torch.isfinite(loss)
    if model.capabilities().training == "episodic":
        loss.backward()
        grads = [p.grad for p in model.backbone.encoders.parameters() if p.grad is not None]
        assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def accuracy(model: FewShotModel, store: TensorStore, classes: list[str], episodes: int,
             seed: int, modalities: list[str] | None = None) -> float:
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    correct = 0.0
    with torch.no_grad():
        for _ in range(episodes):
            episode = sample_episode(store, classes, generator, modalities=modalities)
            logits = model.episode_logits(episode)
            correct += float((logits.argmax(1) == episode.query_labels).float().mean())
    model.train()
    return correct / episodes


def test_protonet_meta_training_generalises_to_held_out_classes() -> None:
    store = gaussian_store(30, 12, seed=0)
    classes = sorted(set(store.labels))
    train_classes, test_classes = classes[:20], classes[20:]
    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds={"a": "tabular"}, input_info=input_info(), dim=16, fusion="mean",
        learner="protonet",
    )
    before = accuracy(model, store, test_classes, 30, seed=7, modalities=["a"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        episode = sample_episode(store, train_classes, generator, modalities=["a"])
        loss, _ = model.loss(episode)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy(model, store, test_classes, 30, seed=7, modalities=["a"])
    assert after > 0.65  # chance is 0.2 (5-way)
    assert after > before + 0.3  # learned to ignore the noise features


def test_support_samples_without_any_modality_do_not_shape_prototypes() -> None:
    from metamodal.learners.protonet import ProtoNet

    class Identity(nn.Module):
        def forward(self, b):
            return b.values

    class Passthrough(nn.Module):
        modalities = ["x"]

        def forward(self, embeddings, present):
            return embeddings["x"] * present["x"].unsqueeze(1)

    model = FewShotModel(Backbone({"x": Identity()}, Passthrough()), ProtoNet())
    z = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    present = torch.tensor([[True], [False], [True], [False]])
    support = Embeddings(z, present, modalities=["x"])
    labels = torch.tensor([0, 0, 1, 1])
    query = Embeddings(torch.tensor([[4.0, 0.0]]), torch.ones(1, 1, dtype=torch.bool),
                       modalities=["x"])
    logits = model.logits(support, labels, query, 2)
    # prototypes are [4, 0] and [0, 4]; an empty sample would have pulled them to [2, 0], [0, 2]
    assert torch.allclose(logits, torch.tensor([[0.0, -32.0]]))
    # a class whose only support sample is empty keeps it rather than vanishing
    only_empty = model.logits(support.index(torch.tensor([0, 3])), torch.tensor([0, 1]), query, 2)
    assert torch.allclose(only_empty, torch.tensor([[0.0, -16.0]]))

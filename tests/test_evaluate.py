"""Tests of metamodal.evaluate: statistics, protocols, ablation and robustness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from metamodal.data.batch import Episode, ModalityBatch, TensorStore
from metamodal.data.episode_files import read_episode_file, write_episode_file
from metamodal.data.episodes import EpisodeSampler
from metamodal.errors import (
    ConfigError,
    DatasetError,
    InsufficientSamplesError,
    MetamodalError,
    ModalityError,
)
from metamodal.evaluate import (
    EvalResult,
    PairedDifference,
    confusion_matrices,
    drop_mask,
    embed_store,
    evaluate,
    evaluate_episodes,
    macro_f1,
    macro_f1_from_confusion,
    mean_ci95,
    missing_modality_curve,
    modality_ablation,
    paired_difference,
    select_modalities,
)
from metamodal.learners.embeddings import Embeddings

N_CLASSES = 8
PER_CLASS = 20
CLASSES = [f"c{k}" for k in range(N_CLASSES)]


def make_store(noise_scale: float = 0.3, seed: int = 0) -> TensorStore:
    """``signal``: one-hot of the class (perfect features); ``noise``: pure noise;
    ``rowid``: the row number (lets a model see which samples it embeds)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(N_CLASSES).repeat_interleave(PER_CLASS)
    n = y.numel()
    ones = torch.ones(n, dtype=torch.bool)
    modalities = {
        "signal": ModalityBatch(nn.functional.one_hot(y, N_CLASSES).float() * 3.0, ones),
        "noise": ModalityBatch(torch.randn(n, 4, generator=gen) * noise_scale, ones.clone()),
        "rowid": ModalityBatch(torch.arange(n, dtype=torch.float32).unsqueeze(1), ones.clone()),
    }
    kinds = {name: "tabular" for name in modalities}
    return TensorStore([f"s{i}" for i in range(n)], [CLASSES[k] for k in y], modalities, kinds)


class StandIn(nn.Module):
    """A few-shot model stand-in: embedding = concatenated tabular values of its modalities,
    logits = ProtoNet (negative squared distance to class means). Records what it embeds."""

    def __init__(self, modalities: list[str], track: bool = False) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.track = track
        self.scale = nn.Parameter(torch.ones(()))
        self.embed_calls = 0
        self.seen_rows: list[Tensor] = []
        self.seen_present: dict[str, list[Tensor]] = {m: [] for m in modalities}
        self.seen_values: dict[str, list[Tensor]] = {m: [] for m in modalities}
        self.training_during_embed: list[bool] = []

    def embed(self, batch: dict[str, ModalityBatch]) -> Embeddings:
        self.embed_calls += 1
        self.training_during_embed.append(self.training)
        for m in self.modalities:
            self.seen_present[m].append(batch[m].present.clone())
            self.seen_values[m].append(batch[m].values.clone())
        if self.track:
            self.seen_rows.append(batch["rowid"].values[:, 0].long())
        used = [m for m in self.modalities if m != "rowid"]
        z = torch.cat([batch[m].values for m in used], 1) * self.scale
        present = torch.stack([batch[m].present for m in self.modalities], 1)
        return Embeddings(z, present, modalities=list(self.modalities))

    def logits(
        self, support: Embeddings, support_labels: Tensor, query: Embeddings, ways: int
    ) -> Tensor:
        one_hot = nn.functional.one_hot(support_labels, ways).float()
        protos = one_hot.T @ support.z / one_hot.sum(0).unsqueeze(1)
        return -(query.z.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


@pytest.fixture(scope="module")
def store() -> TensorStore:
    return make_store()


# ----------------------------------------------------------------------------- stats


def test_mean_ci95_known_values() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    # sample std of 1..4 is sqrt(5/3); 1.96 * sqrt(5/3) / sqrt(4)
    assert half == pytest.approx(1.96 * math.sqrt(5 / 3) / 2)
    assert mean_ci95(torch.tensor([0.5, 0.5, 0.5])) == (pytest.approx(0.5), 0.0)


def test_mean_ci95_single_value_is_nan_and_empty_is_error() -> None:
    mean, half = mean_ci95([0.7])
    assert mean == pytest.approx(0.7) and math.isnan(half)
    with pytest.raises(ConfigError):
        mean_ci95([])


def test_macro_f1_matches_hand_computation() -> None:
    pred = [0, 0, 1, 1, 2, 2]
    target = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 0 fn 1 -> 0.8; class 2: tp 1 fp 1 -> 2/3
    expected = (0.5 + 0.8 + 2 / 3) / 3
    assert macro_f1(pred, target, 3) == pytest.approx(expected)
    # a class absent from both predictions and targets is left out of the mean
    assert macro_f1(torch.tensor(pred), torch.tensor(target), 5) == pytest.approx(expected)
    assert macro_f1([1, 0], [1, 0], 2) == 1.0


def test_macro_f1_rejects_bad_input() -> None:
    with pytest.raises(ConfigError):
        macro_f1([0, 1], [0], 2)
    with pytest.raises(ConfigError):
        macro_f1([0, 3], [0, 1], 2)


def test_confusion_matrices_by_group() -> None:
    pred = torch.tensor([0, 1, 1, 1])
    target = torch.tensor([0, 1, 0, 1])
    group = torch.tensor([0, 0, 1, 1])
    conf = confusion_matrices(pred, target, group, 2, 2)
    assert conf.tolist() == [[[1, 0], [0, 1]], [[0, 1], [0, 1]]]
    f1 = macro_f1_from_confusion(conf)
    assert f1[0].item() == 1.0
    assert f1[1].item() == pytest.approx((0.0 + 2 / 3) / 2)


def test_paired_difference() -> None:
    a = [0.9, 0.8, 0.85, 0.95]
    b = [0.7, 0.65, 0.7, 0.75]
    d = paired_difference(a, b)
    assert isinstance(d, PairedDifference)
    mean, half = mean_ci95([x - y for x, y in zip(a, b, strict=True)])
    assert d.mean == pytest.approx(mean) and d.ci95 == pytest.approx(half)
    assert d.significant
    assert not paired_difference([0.5, 0.6, 0.4], [0.55, 0.5, 0.45]).significant
    with pytest.raises(ConfigError):
        paired_difference([0.5, 0.6], [0.5])


def test_paired_difference_accepts_results() -> None:
    ra = EvalResult(0.85, 0.1, 0.8, 3, 5, 1, 15, 0, [0.8, 0.9, 0.85])
    rb = EvalResult(0.75, 0.1, 0.7, 3, 5, 1, 15, 0, [0.7, 0.8, 0.75])
    assert paired_difference(ra, rb).mean == pytest.approx(0.1)
    assert paired_difference(ra, rb).ci95 == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- protocol


def test_perfect_features_give_accuracy_one(store: TensorStore) -> None:
    r = evaluate(StandIn(["signal"]), store, CLASSES, ways=5, shots=1, queries=5, episodes=50)
    assert r.accuracy == 1.0 and r.ci95 == 0.0 and r.macro_f1 == 1.0
    assert (r.episodes, r.ways, r.shots, r.queries, r.seed) == (50, 5, 1, 5, 0)
    assert r.accuracies == [1.0] * 50
    assert r.modalities == ["signal"]
    d = r.to_dict()
    assert {"accuracy", "ci95", "episodes", "ways", "shots"} <= set(d)
    assert EvalResult.from_dict(d) == r


def test_random_features_give_chance(store: TensorStore) -> None:
    r = evaluate(StandIn(["noise"]), store, CLASSES, ways=4, shots=1, queries=10, episodes=400)
    assert r.accuracy == pytest.approx(0.25, abs=0.04)
    assert 0.0 < r.ci95 < 0.03
    assert len(r.accuracies) == 400
    assert r.accuracy == pytest.approx(sum(r.accuracies) / 400)


def test_each_needed_sample_is_embedded_once(store: TensorStore) -> None:
    model = StandIn(["signal", "rowid"], track=True)
    r = evaluate(model, store, CLASSES, ways=3, shots=2, queries=3, episodes=40, batch_size=32)
    sampler = EpisodeSampler(store, CLASSES, 3, 2, 3, seed=0, episodes=40)
    needed = torch.cat([torch.cat(sampler.indices(i)[:2]) for i in range(40)]).unique()
    seen = torch.cat(model.seen_rows)
    assert seen.numel() == needed.numel()  # each sample once ...
    assert torch.equal(seen.sort().values, needed)  # ... and exactly the needed ones
    assert model.embed_calls == math.ceil(needed.numel() / 32)
    assert r.episodes == 40


def test_same_seed_same_episodes_different_seed_different(store: TensorStore) -> None:
    kw = dict(ways=5, shots=1, queries=3, episodes=30)
    a = evaluate(StandIn(["noise"]), store, CLASSES, seed=3, **kw)
    b = evaluate(StandIn(["noise"]), store, CLASSES, seed=3, **kw)
    c = evaluate(StandIn(["signal"]), store, CLASSES, seed=3, **kw)
    d = evaluate(StandIn(["noise"]), store, CLASSES, seed=4, **kw)
    assert a.accuracies == b.accuracies and a.episode_digest == b.episode_digest
    assert c.episode_digest == a.episode_digest  # another model, same episodes: pairable
    assert d.episode_digest != a.episode_digest


def test_progress_bar_does_not_change_results(store: TensorStore) -> None:
    kw = dict(ways=3, shots=1, queries=2, episodes=10, device=torch.device("cpu"))
    quiet = evaluate(StandIn(["noise"]), store, CLASSES, **kw)
    shown = evaluate(StandIn(["noise"]), store, CLASSES, progress=True, **kw)
    assert shown.accuracies == quiet.accuracies


def test_eval_mode_no_grad_and_training_mode_restored(store: TensorStore) -> None:
    model = StandIn(["signal"])
    model.train()
    emb = embed_store(model, store, torch.arange(10))
    assert model.training_during_embed == [False]
    assert model.training
    assert not emb.z.requires_grad
    model.eval()
    evaluate(model, store, CLASSES, ways=2, shots=1, queries=1, episodes=2)
    assert not model.training


def test_embed_store_keeps_order(store: TensorStore) -> None:
    rows = torch.tensor([5, 0, 41, 5])
    emb = embed_store(StandIn(["signal", "noise"]), store, rows, batch_size=3)
    expected = torch.cat([store.modalities["signal"].values, store.modalities["noise"].values], 1)
    assert torch.equal(emb.z, expected[rows])


def test_drop_mask_exact_nested_and_seeded() -> None:
    rows = torch.arange(200)
    quarter = drop_mask(300, rows, 0.25, seed=0, modality="a")
    half = drop_mask(300, rows, 0.5, seed=0, modality="a")
    assert quarter.sum().item() == 50 and half.sum().item() == 100
    assert bool((half | ~quarter).all())  # what 25% hides, 50% hides too
    assert torch.equal(quarter, drop_mask(300, rows, 0.25, seed=0, modality="a"))
    assert not torch.equal(quarter, drop_mask(300, rows, 0.25, seed=1, modality="a"))
    assert not torch.equal(quarter, drop_mask(300, rows, 0.25, seed=0, modality="b"))
    dup = drop_mask(300, torch.tensor([3, 3, 7]), 0.5, seed=0, modality="a")
    assert dup[0] == dup[1]


def test_drop_removes_the_right_fraction(store: TensorStore) -> None:
    model = StandIn(["signal", "noise"])
    rows = torch.arange(len(store))
    embed_store(model, store, rows, drop={"signal": 0.3}, batch_size=50)
    present = torch.cat(model.seen_present["signal"])
    values = torch.cat(model.seen_values["signal"])
    assert (~present).sum().item() == round(0.3 * len(store))
    assert bool((values[~present] == 0).all())  # hidden rows carry no data
    assert bool(torch.cat(model.seen_present["noise"]).all())

    model = StandIn(["signal", "noise"])
    r = evaluate(
        model, store, CLASSES, ways=5, shots=1, queries=5, episodes=30, drop={"signal": 0.5}
    )
    present = torch.cat(model.seen_present["signal"])
    assert (~present).sum().item() == round(0.5 * present.numel())
    assert r.drop == {"signal": 0.5}


def test_modalities_restriction_hides_the_others(store: TensorStore) -> None:
    model = StandIn(["signal", "noise"])
    r = evaluate(
        model, store, CLASSES, ways=5, shots=1, queries=5, episodes=40, modalities=["noise"]
    )
    assert not bool(torch.cat(model.seen_present["signal"]).any())
    assert bool((torch.cat(model.seen_values["signal"]) == 0).all())
    assert r.modalities == ["noise"]
    assert r.accuracy < 0.5  # the signal never reached the model


def test_bad_arguments_raise_typed_errors(store: TensorStore) -> None:
    model = StandIn(["signal"])
    with pytest.raises(ModalityError):
        evaluate(model, store, CLASSES, modalities=["noise"], episodes=2)
    with pytest.raises(ModalityError):
        evaluate(model, store, CLASSES, drop={"nope": 0.5}, episodes=2)
    with pytest.raises(ConfigError):
        evaluate(model, store, CLASSES, drop={"signal": 1.5}, episodes=2)
    with pytest.raises(ConfigError):
        evaluate(model, store, CLASSES, episodes=0)
    with pytest.raises(InsufficientSamplesError):
        evaluate(model, store, CLASSES, shots=10, queries=15, episodes=2)
    with pytest.raises(ModalityError):
        select_modalities(StandIn(["image"]), store)
    assert select_modalities(model, store) == ["signal"]


def test_wrong_logits_shape_is_reported(store: TensorStore) -> None:
    class Broken(StandIn):
        def logits(self, support, support_labels, query, ways):  # type: ignore[override]
            return torch.zeros(len(query), ways + 1)

    with pytest.raises(MetamodalError, match="logits"):
        evaluate(Broken(["signal"]), store, CLASSES, ways=2, shots=1, queries=1, episodes=1)


def test_tensor_embeddings_are_supported(store: TensorStore) -> None:
    class Plain(StandIn):
        def embed(self, batch):  # type: ignore[override]
            return super().embed(batch).z

        def logits(self, support, support_labels, query, ways):  # type: ignore[override]
            wrap = lambda z: Embeddings(z, torch.ones(len(z), 1, dtype=torch.bool))  # noqa: E731
            return super().logits(wrap(support), support_labels, wrap(query), ways)

    r = evaluate(
        Plain(["signal"]), store, CLASSES, ways=3, shots=1, queries=2, episodes=5, batch_size=7
    )
    assert r.accuracy == 1.0


def test_evaluate_episodes_matches_sampled_evaluation(store: TensorStore, tmp_path) -> None:
    model = StandIn(["signal", "noise"])
    kw = dict(ways=4, shots=2, queries=3)
    sampled = evaluate(model, store, CLASSES, episodes=12, seed=5, **kw)
    sampler = EpisodeSampler(store, CLASSES, seed=5, episodes=12, **kw)
    path = write_episode_file(tmp_path / "episodes.jsonl", [sampler[i] for i in range(12)])
    fixed = evaluate_episodes(model, store, read_episode_file(path, store))
    assert fixed.accuracies == sampled.accuracies
    assert (fixed.ways, fixed.shots, fixed.queries, fixed.episodes) == (4, 2, 3, 12)


def test_evaluate_episodes_with_uneven_episodes(store: TensorStore) -> None:
    ids = store.ids
    # 2-way: class c0 = rows 0..19, class c1 = rows 20..39; then a 3-way episode
    e1 = Episode(
        {},
        {},
        torch.tensor([0, 1]),
        torch.tensor([0, 1, 1]),
        ["c0", "c1"],
        [ids[0], ids[20]],
        [ids[1], ids[21], ids[22]],
        "two",
    )
    e2 = Episode(
        {},
        {},
        torch.tensor([0, 0, 1, 2]),
        torch.tensor([2, 0]),
        ["c0", "c1", "c2"],
        [ids[2], ids[3], ids[23], ids[40]],
        [ids[41], ids[4]],
        "three",
    )
    r = evaluate_episodes(StandIn(["signal"]), store, [e1, e2])
    assert r.accuracies == [1.0, 1.0] and r.episodes == 2
    assert r.ways is None and r.shots is None
    bad = Episode({}, {}, torch.tensor([0]), torch.tensor([0]), ["c0"], ["nope"], [ids[0]], "x")
    with pytest.raises(DatasetError, match="nope"):
        evaluate_episodes(StandIn(["signal"]), store, [bad])


def test_macro_f1_in_result_is_mean_per_episode(store: TensorStore) -> None:
    ids = store.ids
    # the noise model answers by noise; compute the expected per-episode macro-F1 by hand
    eps = [
        Episode(
            {},
            {},
            torch.tensor([0, 1]),
            torch.tensor([0, 0, 1, 1]),
            ["c0", "c1"],
            [ids[0], ids[20]],
            [ids[1], ids[2], ids[21], ids[22]],
            "a",
        ),
        Episode(
            {},
            {},
            torch.tensor([0, 1]),
            torch.tensor([0, 1]),
            ["c2", "c3"],
            [ids[40], ids[60]],
            [ids[41], ids[61]],
            "b",
        ),
    ]
    model = StandIn(["noise"])
    r = evaluate_episodes(model, store, eps)
    emb = embed_store(model, store, torch.arange(len(store)))
    expected = []
    for ep in eps:
        s = emb.index(torch.tensor([store.ids.index(i) for i in ep.support_ids]))
        q = emb.index(torch.tensor([store.ids.index(i) for i in ep.query_ids]))
        pred = model.logits(s, ep.support_labels, q, ep.ways).argmax(1)
        expected.append(macro_f1(pred, ep.query_labels, ep.ways))
    assert r.macro_f1 == pytest.approx(sum(expected) / 2)


# ----------------------------------------------------------------------------- ablation


def test_modality_ablation_finds_the_informative_modality(store: TensorStore) -> None:
    model = StandIn(["signal", "noise"])
    results = modality_ablation(model, store, CLASSES, ways=5, shots=1, queries=8, episodes=150)
    by_name = {r.name: r for r in results}
    assert list(by_name) == ["all", "only:signal", "only:noise", "without:signal", "without:noise"]
    assert by_name["all"].accuracy > 0.9
    assert by_name["only:signal"].accuracy == pytest.approx(by_name["all"].accuracy, abs=0.05)
    assert by_name["without:signal"].accuracy == pytest.approx(0.2, abs=0.05)
    assert by_name["without:signal"].accuracies == by_name["only:noise"].accuracies
    assert by_name["without:signal"].modalities == ["noise"]
    assert len({r.episode_digest for r in results}) == 1  # all on the same episodes
    diff = paired_difference(by_name["all"], by_name["without:signal"])
    assert diff.significant and diff.mean > 0.5


def test_modality_ablation_single_modality(store: TensorStore) -> None:
    results = modality_ablation(
        StandIn(["signal"]), store, CLASSES, ways=3, shots=1, queries=2, episodes=3
    )
    assert [r.name for r in results] == ["all", "only:signal"]


# ----------------------------------------------------------------------------- robustness


def test_missing_modality_curve(store: TensorStore) -> None:
    model = StandIn(["signal", "noise"])
    rates = (0.0, 0.5, 0.9)
    curves = missing_modality_curve(
        model, store, CLASSES, rates=rates, ways=5, shots=1, queries=8, episodes=80
    )
    assert list(curves) == ["signal", "noise"]
    signal, noise = curves["signal"], curves["noise"]
    assert [r.drop for r in signal] == [{"signal": r} for r in rates]
    assert [r.name for r in noise] == ["drop:noise=0", "drop:noise=0.5", "drop:noise=0.9"]
    assert signal[0].accuracies == noise[0].accuracies  # rate 0 is one evaluation
    assert signal[0].accuracy > signal[1].accuracy > signal[2].accuracy
    assert signal[2].accuracy < 0.6
    assert min(r.accuracy for r in noise) > 0.9  # the noise modality does not matter
    with pytest.raises(ConfigError):
        missing_modality_curve(model, store, CLASSES, rates=(0.5, 2.0), episodes=2)


# ----------------------------------------------------------------------------- real model


def test_with_the_real_few_shot_model(store: TensorStore) -> None:
    from metamodal.encoders import build_encoder
    from metamodal.learners import ProtoNet
    from metamodal.model import Backbone, FewShotModel

    class MeanFusion(nn.Module):
        out_dim = 16

        def forward(self, embeddings, present):  # type: ignore[no-untyped-def]
            stacked = torch.stack(list(embeddings.values()), 1)
            weight = torch.stack(list(present.values()), 1).float().unsqueeze(2)
            return (stacked * weight).sum(1) / weight.sum(1).clamp_min(1)

    torch.manual_seed(0)
    encoders = {
        m: build_encoder("tabular", "mlp", dim=16, input_info={"features": f}, modality=m)
        for m, f in (("signal", N_CLASSES), ("noise", 4))
    }
    model = FewShotModel(Backbone(encoders, MeanFusion()), ProtoNet())
    kw = dict(ways=5, shots=1, queries=5, episodes=60)
    full = evaluate(model, store, CLASSES, **kw)
    only_noise = evaluate(model, store, CLASSES, modalities=["noise"], **kw)
    # an untrained MLP still separates one-hot inputs well; noise alone is near chance
    assert full.accuracy > 0.6
    assert only_noise.accuracy == pytest.approx(0.2, abs=0.1)
    assert full.episode_digest == only_noise.episode_digest
    assert full.modalities == ["signal", "noise"]


def test_episodes_in_chunks_give_what_one_by_one_gives(store: TensorStore) -> None:
    """A model with ``logits_many`` gets up to EPISODE_CHUNK episodes of one ``ways`` at a
    time (FineTune fits them together); the logits equal those of ``logits`` one by one (float64),
    in
    the plan's order, across chunk boundaries and changes of ``ways``."""
    from metamodal.encoders import build_encoder
    from metamodal.evaluate.episode_plans import EpisodePlan, sampled_episodes
    from metamodal.evaluate.protocol import EPISODE_CHUNK, episode_logits
    from metamodal.learners import FineTune
    from metamodal.model import Backbone, FewShotModel

    class Only(nn.Module):
        out_dim = 8

        def forward(self, embeddings, present):  # type: ignore[no-untyped-def]
            return next(iter(embeddings.values()))

    torch.manual_seed(0)
    encoder = build_encoder("tabular", "mlp", dim=8, input_info={"features": 4},
                            modality="noise")
    model = FewShotModel(Backbone({"noise": encoder}, Only()), FineTune(steps=10)).double()
    noise = store.modalities["noise"]
    store = TensorStore(store.ids, store.labels, {"noise": ModalityBatch(
        noise.values.double(), noise.present)}, {"noise": "tabular"})
    plans = [sampled_episodes(store, CLASSES, ways, 1, 2, seed, count) for ways, seed, count
             in ((3, 0, EPISODE_CHUNK + 5), (2, 1, 4), (3, 2, 3))]
    plan = EpisodePlan(*(sum((getattr(p, f) for p in plans), []) for f in
                         ("support", "query", "support_labels", "query_labels", "ways")))
    calls: list[int] = []
    logits_many = model.logits_many

    def counting(episodes, ways):  # type: ignore[no-untyped-def]
        calls.append(len(episodes))
        return logits_many(episodes, ways)

    model.logits_many = counting  # type: ignore[method-assign]
    together = episode_logits(model, store, plan, modalities=["noise"])
    assert calls == [EPISODE_CHUNK, 5, 4, 3]
    model.logits_many = None  # type: ignore[assignment]  # a model without it: one by one
    one_by_one = episode_logits(model, store, plan, modalities=["noise"])
    assert len(together) == len(one_by_one) == EPISODE_CHUNK + 12
    for a, b in zip(together, one_by_one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_untrained_baseline_rebuilds_the_architecture_with_fresh_weights() -> None:
    from metamodal.evaluate.baseline import untrained_baseline
    from metamodal.model import FewShotModel

    spec = dict(kinds={"x": "tabular"}, input_info={"x": {"features": 3}}, dim=8,
                learner="matchingnet", fusion="gated")
    trained = FewShotModel.build(**spec)
    before = torch.get_rng_state()
    a, b = untrained_baseline(trained, seed=1), untrained_baseline(trained, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert type(a.learner).__name__ == "ProtoNet" and not a.training
    state_a, state_b, state_t = a.state_dict(), b.state_dict(), trained.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    shared = [k for k in state_a if k in state_t and state_a[k].is_floating_point()
              and state_a[k].numel() > 1]
    assert any(not torch.equal(state_a[k], state_t[k]) for k in shared)

"""Tests of cross-modal mapping: the objectives, the aligner, retrieval metrics, linear maps,
descriptions, zero-shot, AM3 and imputation."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from metamodal import losses
from metamodal.data.batch import ModalityBatch, TensorStore
from metamodal.errors import ConfigError, DatasetError
from metamodal.learners import AM3, EpisodeContext, ProtoNet
from metamodal.learners import siamese as siamese_module
from metamodal.mapping import (
    Aligner,
    BagOfWords,
    DescriptionMap,
    cca,
    contrastive,
    fit_am3,
    fit_description_map,
    info_nce,
    read_descriptions,
    regression_loss,
    require_descriptions,
    retrieval_ranks,
    ridge_map,
    zero_shot_logits,
)
from metamodal.mapping.joint import ImputingModel, encode_store
from metamodal.mapping.retrieval import first_positive_rank
from metamodal.model import FewShotModel

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest.py)


# ----------------------------------------------------------------------------- objectives


def test_the_siamese_learner_and_the_margin_alignment_share_one_contrastive_loss() -> None:
    assert siamese_module.contrastive_loss is contrastive.contrastive_loss is \
        losses.contrastive_loss


def test_info_nce_is_low_for_matching_pairs_and_log_n_for_unrelated_ones() -> None:
    x = torch.eye(8)
    scale = torch.tensor(math.log(50.0))
    assert float(info_nce(x, x, scale)) < 0.01
    # constant similarities: every target equally likely -> log N
    assert float(info_nce(torch.ones(8, 3), torch.ones(8, 3), scale)) == pytest.approx(
        math.log(8), rel=1e-4)
    log_scale = torch.tensor(0.0, requires_grad=True)
    info_nce(torch.randn(6, 4), torch.randn(6, 4), log_scale).backward()
    assert log_scale.grad is not None and float(log_scale.grad) != 0.0  # the temperature learns


def test_info_nce_with_labels_counts_every_sample_of_the_class_as_positive() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    scale = torch.tensor(math.log(100.0))
    # instance positives cannot tell rows 0 and 1 apart: loss ~ log 2; class positives can
    assert float(info_nce(a, a, scale)) == pytest.approx(math.log(2), abs=1e-3)
    assert float(info_nce(a, a, scale, labels)) < 1e-3


# ----------------------------------------------------------------------------- the aligner


def _two_views(n: int, seed: int, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Two modalities of the same ``n`` samples: different linear views of a shared latent."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g)
    mix_a = torch.randn(4, 6, generator=torch.Generator().manual_seed(100))
    mix_b = torch.randn(4, 5, generator=torch.Generator().manual_seed(101))
    return (z @ mix_a + noise * torch.randn(n, 6, generator=g),
            z @ mix_b + noise * torch.randn(n, 5, generator=g))


def _store(a: torch.Tensor, b: torch.Tensor, labels: list[str]) -> TensorStore:
    n = len(a)
    on = torch.ones(n, dtype=torch.bool)
    return TensorStore([f"s{i}" for i in range(n)], labels,
                       {"a": ModalityBatch(a, on), "b": ModalityBatch(b, on.clone())},
                       {"a": "tabular", "b": "tabular"})


def _model() -> FewShotModel:
    return FewShotModel.build(kinds={"a": "tabular", "b": "tabular"},
                              input_info={"a": {"features": 6}, "b": {"features": 5}}, dim=16,
                              fusion="mean")


def _instance_recall(model: FewShotModel, store: TensorStore) -> float:
    parts, _ = encode_store(model.backbone, store, torch.arange(len(store)))
    ranks = retrieval_ranks(parts["a"], parts["b"], torch.arange(len(store)))
    return float(ranks.recall(1).mean())


def test_contrastive_alignment_trains_on_small_generated_data() -> None:
    """Fails if alignment does not train: held-out Recall@1 must rise far above chance."""
    torch.manual_seed(0)
    train_a, train_b = _two_views(256, seed=1)
    test_a, test_b = _two_views(100, seed=2)
    test = _store(test_a, test_b, [str(i) for i in range(100)])
    model = _model()
    aligner = Aligner(["a", "b"], dim=16)
    before = _instance_recall(model, test)
    optimizer = torch.optim.Adam([*model.parameters(), *aligner.parameters()], lr=3e-3)
    on = torch.ones(64, dtype=torch.bool)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        rows = torch.randperm(256, generator=g)[:64]
        parts, present = model.backbone.encode({"a": ModalityBatch(train_a[rows], on),
                                                "b": ModalityBatch(train_b[rows], on)})
        loss = aligner.loss(parts, present)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _instance_recall(model, test)
    assert before < 0.2  # chance is 1 %
    assert after > 0.6, f"held-out Recall@1 {after:.2f} after alignment (before {before:.2f})"
    assert aligner.temperature != pytest.approx(0.07)  # the temperature was learned


def test_regression_objective_and_maps_predict_the_other_modality() -> None:
    torch.manual_seed(0)
    a, b = _two_views(200, seed=4, noise=0.0)
    aligner = Aligner(["a", "b"], dim=5, objective="regression", direction="a->b",
                      regression_loss="mse")
    source = torch.nn.Linear(6, 5)
    target = b  # a fixed target space
    optimizer = torch.optim.Adam([*source.parameters(), *aligner.parameters()], lr=1e-2)
    on = torch.ones(200, dtype=torch.bool)
    first = None
    for _ in range(300):
        loss = aligner.loss({"a": source(a), "b": target}, {"a": on, "b": on})
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1 * first
    with pytest.raises(ConfigError, match="SOURCE->TARGET"):
        Aligner(["a", "b"], dim=4, objective="regression", direction="a")
    with pytest.raises(ConfigError, match="not aligned"):
        Aligner(["a", "b"], dim=4, objective="regression", direction="a->c")
    with pytest.raises(ConfigError, match="joins two modalities"):  # was a KeyError in training
        Aligner(["a", "b"], dim=4, objective="regression", direction="a->a")


def per_pair_alignment_loss(aligner: Aligner, parts: dict, present: dict,
                            labels: torch.Tensor) -> torch.Tensor:
    """`Aligner.loss` written out pair by pair, on each pair's samples having both
    modalities: `info_nce` of every pair, then every map's `regression_loss`."""
    objective, used = torch.zeros((), dtype=torch.float64), 0
    for a, b in aligner.pairs():
        rows = (present[a] & present[b]).nonzero().squeeze(1)
        if len(rows) >= 2:
            same = labels[rows] if aligner.positives == "class" else None
            objective = objective + info_nce(parts[a][rows], parts[b][rows],
                                             aligner.log_scale, same)
            used += 1
    maps, count = torch.zeros((), dtype=torch.float64), 0
    for a, b in itertools.permutations(aligner.modalities, 2):
        rows = (present[a] & present[b]).nonzero().squeeze(1)
        if len(rows) >= 1:
            prediction = aligner.maps[f"{a}->{b}"](parts[a][rows].detach())
            maps = maps + regression_loss(prediction, parts[b][rows].detach(),
                                          aligner.regression_kind)
            count += 1
    return objective / max(used, 1) + maps / max(count, 1)


@pytest.mark.parametrize("positives", ["instance", "class"])
@pytest.mark.parametrize("regression", ["mse", "cosine"])
def test_the_batched_alignment_loss_is_the_per_pair_loss(positives: str,
                                                         regression: str) -> None:
    """Every pair and map at once computes the per-pair loss and its gradients (float64), with
    modalities missing from some samples: one pair has a single sample with both (no
    negative: left out) and one map none."""
    torch.manual_seed(0)
    names = ["a", "b", "c", "d"]
    aligner = Aligner(names, dim=6, positives=positives, regression_loss=regression,
                      learn_temperature=True).double()
    for layer in aligner.maps.values():  # maps away from the identity they start at
        torch.nn.init.normal_(layer.net[2].weight, std=0.3)
    batch = 9
    parts = {m: torch.randn(batch, 6, dtype=torch.float64, requires_grad=True) for m in names}
    present = {m: torch.rand(batch) < 0.8 for m in names}
    present["c"] = torch.zeros(batch, dtype=torch.bool)
    present["c"][[0, 1, 2]] = True
    present["d"] = torch.zeros(batch, dtype=torch.bool)
    present["d"][[3, 4]] = True
    present["a"][[0, 3]] = True
    present["a"][4] = False
    labels = torch.tensor([0, 1, 0, 2, 1, 2, 0, 1, 2])
    results = []
    for loss in (aligner.loss, lambda *args: per_pair_alignment_loss(aligner, *args)):
        aligner.zero_grad()
        value = loss(parts, present, labels)
        weights = [parts[m] for m in names] + list(aligner.parameters())
        results.append((value, torch.autograd.grad(value, weights, allow_unused=True)))
    (batched, batched_grads), (reference, reference_grads) = results
    assert abs(float((batched - reference).detach())) < 1e-12
    for got, want in zip(batched_grads, reference_grads, strict=True):
        if want is None:
            assert got is None or float(got.abs().max()) == 0.0
        else:
            assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_aligner_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="two or more"):
        Aligner(["a"], dim=4)
    with pytest.raises(ConfigError, match="objective"):
        Aligner(["a", "b"], dim=4, objective="triplet")
    with pytest.raises(ConfigError, match="positives"):
        Aligner(["a", "b"], dim=4, positives="group")
    with pytest.raises(ConfigError, match="labels"):
        Aligner(["a", "b"], dim=4, positives="class").loss(
            {"a": torch.randn(3, 4), "b": torch.randn(3, 4)},
            {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(3, dtype=torch.bool)})


def test_impute_fills_only_missing_rows_from_the_present_modalities() -> None:
    aligner = Aligner(["a", "b", "c"], dim=3)
    with torch.no_grad():  # make b->a and c->a recognisable maps: f(x) = x + 1
        for key in ("b->a", "c->a"):
            aligner.maps[key].net[2].bias.fill_(1.0)
    parts = {"a": torch.zeros(3, 3), "b": torch.full((3, 3), 2.0), "c": torch.full((3, 3), 4.0)}
    present = {"a": torch.tensor([True, False, False]),
               "b": torch.tensor([True, True, False]),
               "c": torch.tensor([True, True, False])}
    filled, now = aligner.impute(parts, present)
    assert filled["a"][0].tolist() == [0.0, 0.0, 0.0]  # present: unchanged
    assert filled["a"][1].tolist() == [4.0, 4.0, 4.0]  # mean of b + 1 = 3 and c + 1 = 5
    assert now["a"].tolist() == [True, True, False]  # row 2 has no source: stays missing


def test_imputing_model_fills_in_before_fusion() -> None:
    torch.manual_seed(0)
    model = _model().eval()
    aligner = Aligner(["a", "b"], dim=16)
    with torch.no_grad():  # an untrained map is the identity, which mean fusion would hide
        aligner.maps["a->b"].net[2].bias.fill_(1.0)
    a, b = _two_views(4, seed=5)
    batch = {"a": ModalityBatch(a, torch.ones(4, dtype=torch.bool)),
             "b": ModalityBatch(b, torch.tensor([True, False, True, False]))}
    plain = model.embed(batch)
    imputed = ImputingModel(model, aligner).embed(batch)
    assert imputed.present.all() and not plain.present.all()
    assert torch.allclose(imputed.z[0], plain.z[0])  # a complete sample is unchanged
    assert not torch.allclose(imputed.z[1], plain.z[1])


# ----------------------------------------------------------------------------- retrieval


def test_ranks_count_ties_against_the_query_and_score_both_levels() -> None:
    scores = torch.zeros(2, 3)
    assert first_positive_rank(scores, torch.eye(2, 3, dtype=torch.bool)).tolist() == [3, 3]
    q = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    t = torch.tensor([[0.9, 0.1], [1.0, 0.0], [0.0, 1.0]])
    ranks = retrieval_ranks(q, t, torch.tensor([0, 0, 1]))
    assert ranks.instance.tolist() == [2, 2, 1]  # rows 0 and 1 swapped their nearest
    assert ranks.category.tolist() == [1, 1, 1]
    assert ranks.median_rank() == 2.0 and float(ranks.recall(1, "class").mean()) == 1.0


def test_ridge_and_cca_recover_a_linear_relation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    w_true = torch.randn(4, 3, generator=g, dtype=torch.float64)
    w, b = ridge_map(x, x @ w_true + 2.0, alpha=1e-6)
    assert torch.allclose(w, w_true, atol=1e-4)
    assert torch.allclose(b, torch.full((3,), 2.0, dtype=b.dtype), atol=1e-4)
    a, bb, mx, my, rho = cca(x, x @ w_true, k=3)
    assert rho.min() > 0.99
    cx, cy = (x - mx) @ a, (x @ w_true - my) @ bb
    assert torch.corrcoef(torch.stack([cx[:, 0], cy[:, 0]]))[0, 1] > 0.99


# ----------------------------------------------------------------------------- descriptions


def test_descriptions_file_errors_name_the_class_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "descriptions.toml"
    path.write_text('cat = "small furry"\ndog = "loyal"\n')
    assert read_descriptions(tmp_path, ["cat", "dog", "cow"]) == {"cat": "small furry",
                                                                 "dog": "loyal"}
    with pytest.raises(DatasetError, match="'dog', which the dataset does not have") as error:
        read_descriptions(path, ["cat"])
    assert error.value.column == "dog" and "remove the line" in error.value.fix
    path.write_text('cat = "  ,, "\n')
    with pytest.raises(DatasetError, match="empty"):
        read_descriptions(path)
    path.write_text('cat = "пушистый"\n')  # was refused as empty: its words were dropped
    assert read_descriptions(path) == {"cat": "пушистый"}
    path.write_text("cat = 3\n")
    with pytest.raises(DatasetError, match="not a string"):
        read_descriptions(path)
    with pytest.raises(DatasetError, match="not found"):
        read_descriptions(tmp_path / "nothing.toml")
    with pytest.raises(DatasetError, match="no description: cow") as error:
        require_descriptions({"cat": "x"}, ["cat", "cow"])
    assert '"cow" = ' in error.value.fix


def test_description_map_generalises_to_new_attribute_combinations() -> None:
    """Classes are pairs (colour, shape); the map learns each word's direction on some pairs
    and recognises unseen pairs zero-shot."""
    colours, shapes = ["red", "blue", "green"], ["round", "square", "star"]
    g = torch.Generator().manual_seed(0)
    word = {w: torch.randn(8, generator=g) for w in colours + shapes}
    pairs = [(c, s) for c in colours for s in shapes]
    train, test = pairs[:6] + pairs[7:8], [pairs[6], pairs[8]]
    proto = {p: word[p[0]] + word[p[1]] for p in pairs}
    texts = {p: f"a {p[0]} {p[1]} thing" for p in pairs}
    words = BagOfWords().fit(texts[p] for p in train)
    mapped = DescriptionMap(alpha=1e-3).fit(words.transform([texts[p] for p in train]),
                                            torch.stack([proto[p] for p in train]))
    semantic = mapped.transform(words.transform([texts[p] for p in test]))
    query = torch.stack([proto[p] for p in test])
    assert zero_shot_logits(query, semantic).argmax(1).tolist() == [0, 1]
    assert BagOfWords().fit(["A b", "b c"]).vocab_ == ["a", "b", "c"]
    # words of every script count: Cyrillic ones were dropped (zero-shot fell to chance)
    assert BagOfWords().fit(["красный шар", "синий шар"]).vocab_ == ["красный", "синий", "шар"]
    assert BagOfWords().fit(["café crème"]).vocab_ == ["café", "crème"]  # not "caf", "cr"


def test_cross_fitted_semantics_leave_each_class_out_of_its_own_map() -> None:
    z = torch.randn(12, 4)
    labels = [f"c{i % 6}" for i in range(12)]
    texts = [f"word{k} common" for k in range(6)]
    features = BagOfWords().fit(texts).transform(texts)
    full, crossed = fit_description_map(features, z, labels, [f"c{k}" for k in range(6)],
                                        folds=3)
    # each class's own word is unseen by the map that maps it: only the shared word is left
    assert not torch.allclose(crossed, full.transform(features))
    assert torch.allclose(crossed[0], crossed[3])  # fold 0 holds out c0 and c3: same features


def test_a_description_modality_describes_a_class_without_the_episodes_queries() -> None:
    from metamodal.evaluate.zeroshot import _ModalityFeatures

    z = torch.arange(8.0).unsqueeze(1).repeat(1, 2)  # row i embeds to [i, i]
    present = torch.tensor([True, True, False, True, True, True, True, False])
    labels = ["a", "a", "a", "b", "b", "c", "c", "c"]
    features = _ModalityFeatures(z, present, labels, ["a", "b"], ["c"], "caption")
    assert features.train.tolist() == [[0.5, 0.5], [3.5, 3.5]]  # row 2 lacks the caption
    # an episode of classes (c, a) with one query each (rows 5 and 0): each is left out
    episode = features.episode(["c", "a"], torch.tensor([5, 0]), 1)
    assert episode.tolist() == [[6.0, 6.0], [1.0, 1.0]]
    with pytest.raises(DatasetError, match="'c' has no sample with modality 'caption'"):
        features.episode(["c"], torch.tensor([5, 6]), 2)


# ----------------------------------------------------------------------------- AM3


def test_am3_needs_a_context_is_protonet_without_semantics_and_mixes_with_them() -> None:
    torch.manual_seed(0)
    head = AM3(dim=4)
    s, q = torch.randn(6, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with pytest.raises(ConfigError, match="EpisodeContext"):
        head.scores(s, labels, q, 3)  # not told: no silent ProtoNet
    none = EpisodeContext()  # told explicitly: no semantics
    assert torch.allclose(head.scores(s, labels, q, 3, context=none),
                          ProtoNet().scores(s, labels, q, 3))
    mixed = head.scores(s, labels, q, 3, context=EpisodeContext(class_semantics=torch.randn(3, 4)))
    assert not torch.allclose(mixed, ProtoNet().scores(s, labels, q, 3))
    _, lam = head.mixture(torch.zeros(3, 4), torch.randn(3, 4))
    assert lam.shape == (3, 1) and bool(((lam > 0) & (lam < 1)).all())


def test_am3_training_learns_to_use_informative_descriptions() -> None:
    """Noisy samples around class centres, semantics = the exact centres: after training, AM3
    beats the prototypes alone at 1 shot on held-out classes."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, 8, generator=g) * 2
    labels = torch.arange(40).repeat_interleave(10)
    z = centres[labels] + 2.0 * torch.randn(400, 8, generator=g)
    train = labels < 30
    head = AM3(dim=8)
    losses = fit_am3(head, z[train], labels[train], centres[:30], ways=5, shots=1, queries=5,
                     steps=150, seed=0)
    assert sum(losses[-20:]) < sum(losses[:20])
    correct_am3 = correct_proto = 0
    with torch.no_grad():
        for start in range(30, 40, 5):
            classes = torch.arange(start, start + 5)
            s = torch.stack([z[labels == c][0] for c in classes])
            q = torch.cat([z[labels == c][1:] for c in classes])
            ql = torch.arange(5).repeat_interleave(9)
            described = EpisodeContext(class_semantics=centres[classes])
            correct_am3 += int((head.scores(s, torch.arange(5), q, 5, context=described)
                                .argmax(1) == ql).sum())
            correct_proto += int((ProtoNet().scores(s, torch.arange(5), q, 5).argmax(1)
                                  == ql).sum())
    assert correct_am3 > correct_proto

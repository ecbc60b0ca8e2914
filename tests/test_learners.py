"""Tests of the few-shot heads, the `Embeddings` container and the baselines."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metamodal.errors import ConfigError, DatasetError, InsufficientSamplesError
from metamodal.learners import (
    Embeddings,
    FineTune,
    LearnerCapabilities,
    MatchingNet,
    NearestCentroid,
    ProtoNet,
    RelationNet,
    Siamese,
    SupervisedClassifier,
    check_support,
    class_means,
    learners,
)
from metamodal.losses import contrastive_loss
from metamodal.ops import (
    euclidean_distances,
    l2_normalize,
    safe_sqrt,
    squared_distances,
    tiny,
)


def toy_episode(
    generator: torch.Generator, ways: int = 3, shots: int = 2, queries: int = 4, features: int = 6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian clusters: class centres apart in the first two features only, the others are
    loud noise that a learned embedding has to ignore."""
    centres = torch.zeros(ways, features)
    centres[:, :2] = torch.randn(ways, 2, generator=generator) * 3
    support_labels = torch.arange(ways).repeat_interleave(shots)
    query_labels = torch.arange(ways).repeat_interleave(queries)
    noise = torch.ones(features)
    noise[2:] = 4.0
    support = centres[support_labels] + noise * torch.randn(
        len(support_labels), features, generator=generator
    )
    query = centres[query_labels] + noise * torch.randn(
        len(query_labels), features, generator=generator
    )
    return support, support_labels, query, query_labels


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (see conftest.py)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_learner_and_their_capabilities() -> None:
    metric = ["am3", "finetune", "matchingnet", "nearest-centroid", "protonet", "relationnet",
              "siamese"]
    gradient = ["anil", "fomaml", "lstm-optimizer", "maml", "maml++", "metasgd", "reptile"]
    assert learners.names() == sorted(metric + gradient)
    built = {name: learners.create(name, dim=4) for name in learners.names()}
    capabilities = {name: learner.capabilities() for name, learner in built.items()}
    assert all(isinstance(c, LearnerCapabilities) for c in capabilities.values())
    assert {name: c.training for name, c in capabilities.items()} == {
        "finetune": "supervised", "nearest-centroid": "supervised",
        **{name: "episodic" for name in ["am3", "matchingnet", "protonet", "relationnet",
                                         "siamese", *gradient]},
    }
    assert {name for name, c in capabilities.items() if c.embeds_once} == set(metric)
    assert {name for name, c in capabilities.items() if c.batches_tasks} == set(gradient)
    assert {name for name, c in capabilities.items() if c.uses_class_semantics} == {"am3"}
    for learner in built.values():  # the one method replaced these flags
        assert not any(hasattr(learner, old) for old in ("training_mode", "caches_embeddings",
                                                         "batches_tasks"))


def test_default_loss_is_cross_entropy_and_extra_loss_is_zero() -> None:
    head = ProtoNet()
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    assert torch.allclose(head.query_loss(logits, labels), F.cross_entropy(logits, labels))
    emb = Embeddings(torch.ones(2, 3), torch.ones(2, 1, dtype=torch.bool))
    assert float(head.extra_loss(emb, labels, emb, labels)) == 0.0


# ----------------------------------------------------------------------------- Embeddings


def test_embeddings_index_cat_detach_to_len() -> None:
    z = torch.arange(12.0).view(4, 3).requires_grad_()
    present = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    parts = {"a": torch.arange(12.0).view(4, 3) + 100, "b": torch.arange(12.0).view(4, 3) - 100}
    emb = Embeddings(z, present, parts)
    assert len(emb) == 4 and emb.modalities == ["a", "b"] and not emb.late

    picked = emb.index(torch.tensor([3, 1]))
    assert picked.z.tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]
    assert picked.present.tolist() == [[True, True], [True, True]]
    assert picked.parts is not None and picked.parts["b"][0].tolist() == [-91.0, -90.0, -89.0]

    both = Embeddings.cat([emb, picked])
    assert len(both) == 6 and both.present.shape == (6, 2)
    assert both.parts is not None and both.parts["a"].shape == (6, 3)
    assert torch.equal(both.z[4:], picked.z)
    # parts dropped when one item lacks them
    assert Embeddings.cat([emb, Embeddings(z, present)]).parts is None

    detached = emb.detach()
    assert emb.z.requires_grad and not detached.z.requires_grad
    moved = emb.to("cpu")
    assert moved.z.device.type == "cpu" and moved.modalities == ["a", "b"]
    late = Embeddings(torch.zeros(4, 2, 3), present, modalities=["a", "b"])
    assert late.late and late.index(torch.tensor([0])).z.shape == (1, 2, 3)
    with pytest.raises(ValueError):
        Embeddings.cat([])


def test_embeddings_split_gives_views_of_consecutive_rows() -> None:
    z = torch.arange(12.0).view(4, 3)
    present = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    emb = Embeddings(z, present, {"a": z + 100, "b": z - 100})
    head, tail = emb.split([1, 3])
    assert len(head) == 1 and len(tail) == 3 and tail.modalities == ["a", "b"]
    for part, rows in ((head, torch.tensor([0])), (tail, torch.tensor([1, 2, 3]))):
        expected = emb.index(rows)
        assert torch.equal(part.z, expected.z) and torch.equal(part.present, expected.present)
        assert part.parts is not None and expected.parts is not None
        assert all(torch.equal(part.parts[m], expected.parts[m]) for m in ("a", "b"))
    assert tail.z.data_ptr() == z[1:].data_ptr()  # nothing copied
    assert all(block.parts is None for block in Embeddings(z, present).split([2, 2]))
    with pytest.raises(ValueError, match="add up to 4"):
        emb.split([1, 2])  # the sizes must cover every row


# ----------------------------------------------------------------------------- helpers


def test_check_support_counts_and_errors() -> None:
    assert check_support(torch.tensor([1, 0, 1]), 2).tolist() == [1, 2]
    with pytest.raises(InsufficientSamplesError, match=r"\[2\].*no support sample") as info:
        check_support(torch.tensor([0, 1, 1]), 3)
    assert info.value.fix
    with pytest.raises(DatasetError, match="0..1"):
        check_support(torch.tensor([0, 2]), 2)


def test_given_counts_skip_the_check_and_missing_ones_are_checked() -> None:
    labels = torch.tensor([0, 1, 1])
    support = torch.tensor([[0.0], [2.0], [4.0]])
    counts = check_support(labels, 2)
    assert class_means(support, labels, 2, counts=counts).tolist() == [[0.0], [3.0]]
    # the counts divide as given: the caller vouches for them, nothing is checked again
    assert class_means(support, labels, 2, counts=torch.tensor([1, 1])).tolist() == [[0.0],
                                                                                      [6.0]]
    with pytest.raises(InsufficientSamplesError):
        class_means(support, labels, 3)  # without counts the labels are checked
    with pytest.raises(InsufficientSamplesError):
        ProtoNet().scores(support, labels, support, 3)
    assert torch.equal(ProtoNet().scores(support, labels, support, 2, counts=counts),
                       ProtoNet().scores(support, labels, support, 2))
    with pytest.raises(DatasetError, match="0..1"):
        check_support(torch.tensor([-1, 0, 1]), 2)


def test_class_means_and_distances_by_hand() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    means = class_means(support, torch.tensor([0, 0, 1, 1]), 2)
    assert means.tolist() == [[1.0, 0.0], [0.0, 3.0]]
    query = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    assert squared_distances(query, means).tolist() == [[1.0, 5.0], [20.0, 10.0]]
    assert torch.allclose(euclidean_distances(query, means),
                          torch.tensor([[1.0, 5.0], [20.0, 10.0]]).sqrt())


# ----------------------------------------------------------------------------- ProtoNet


def test_protonet_logits_by_hand() -> None:
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])  # prototypes [1, 0] and [0, 3]
    query = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    logits = ProtoNet().scores(support, labels, query, 2)
    assert logits.tolist() == [[-1.0, -5.0], [-10.0, -0.0]]
    warm = ProtoNet(temperature=2.0).scores(support, labels, query, 2)
    assert torch.allclose(warm, logits / 2)


def test_protonet_learned_temperature_gets_a_gradient() -> None:
    head = ProtoNet(learn_temperature=True, temperature=0.5)
    assert [name for name, _ in head.named_parameters()] == ["log_temperature"]
    assert math.isclose(float(head.log_temperature.detach().exp()), 0.5, rel_tol=1e-6)
    logits = head.scores(torch.eye(2), torch.tensor([0, 1]), torch.tensor([[0.9, 0.1]]), 2)
    head.query_loss(logits, torch.tensor([0])).backward()
    assert head.log_temperature.grad is not None and head.log_temperature.grad != 0
    assert [name for name, _ in ProtoNet().named_parameters()] == []
    with pytest.raises(ValueError):
        ProtoNet(temperature=0.0)


def test_protonet_missing_class_raises() -> None:
    with pytest.raises(InsufficientSamplesError):
        ProtoNet().scores(torch.eye(2), torch.tensor([0, 0]), torch.eye(2), 2)


# ----------------------------------------------------------------------------- MatchingNet


def test_matchingnet_logits_by_hand() -> None:
    support = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])
    scale = 2.0
    cosines = [1.0, 0.0, 1 / math.sqrt(2)]
    weights = [math.exp(scale * c) for c in cosines]
    total = sum(weights)
    expected = [math.log(weights[0] / total), math.log((weights[1] + weights[2]) / total)]
    logits = MatchingNet(scale=scale).scores(support, labels, query, 2)
    assert torch.allclose(logits, torch.tensor([expected]), atol=1e-6)
    assert torch.allclose(logits.exp().sum(1), torch.ones(1))


def test_matchingnet_learned_scale_and_gradients_are_finite() -> None:
    head = MatchingNet(learn_scale=True)
    support = torch.randn(6, 4, requires_grad=True)
    logits = head.scores(support, torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(5, 4), 3)
    head.query_loss(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert head.log_scale.grad is not None
    assert support.grad is not None and torch.isfinite(support.grad).all()


# ----------------------------------------------------------------------------- RelationNet


def test_relationnet_shapes_loss_and_pooling() -> None:
    torch.manual_seed(0)
    head = RelationNet(dim=4, hidden=8)
    support, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    query, query_labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    logits = head.scores(support, labels, query, 3)
    assert logits.shape == (5, 3)
    target = F.one_hot(query_labels, 3).float()
    assert torch.allclose(head.query_loss(logits, query_labels),
                          ((torch.sigmoid(logits) - target) ** 2).mean())
    summed = RelationNet(dim=4, hidden=8, pool="sum")
    summed.load_state_dict(head.state_dict())
    assert not torch.allclose(summed.scores(support, labels, query, 3), logits)
    one_shot = torch.tensor([0, 1, 2])
    assert torch.allclose(summed.scores(support[::2], one_shot, query, 3),
                          head.scores(support[::2], one_shot, query, 3))
    with pytest.raises(ValueError):
        RelationNet(dim=4, pool="max")


def train_head(head: nn.Module, embed: nn.Module, steps: int, seed: int = 0,
               extra: bool = False) -> tuple[float, float, float]:
    """Train ``embed`` (+ head) on toy episodes; return the mean loss of the first and of the
    last 10 steps, and the mean query accuracy of the last 20."""
    generator = torch.Generator().manual_seed(seed)
    params = list(embed.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses, accuracies = [], []
    for _ in range(steps):
        support, sl, query, ql = toy_episode(generator)
        zs, zq = embed(support), embed(query)
        logits = head.scores(zs, sl, zq, 3)
        loss = head.query_loss(logits, ql)
        if extra:
            es = Embeddings(zs, torch.ones(len(zs), 1, dtype=torch.bool))
            eq = Embeddings(zq, torch.ones(len(zq), 1, dtype=torch.bool))
            loss = loss + head.extra_loss(es, sl, eq, ql)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        accuracies.append(float((logits.argmax(1) == ql).float().mean()))
    first = sum(losses[:10]) / 10
    last = sum(losses[-10:]) / 10
    return first, last, sum(accuracies[-20:]) / 20


def test_relationnet_loss_decreases_on_toy_problem() -> None:
    torch.manual_seed(0)
    first, last, accuracy = train_head(RelationNet(dim=8, hidden=16), nn.Linear(6, 8), steps=120)
    assert last < 0.7 * first
    assert accuracy > 0.6  # chance: 1/3


# ----------------------------------------------------------------------------- Siamese


def test_contrastive_loss_by_hand() -> None:
    sq = torch.tensor([[0.25, 0.04, 4.0, 9.0]])
    same = torch.tensor([[True, False, False, True]])
    valid = torch.tensor([[True, True, True, False]])
    # positives: 0.25/2; negatives: (1-0.2)^2/2 = 0.32 and 0 (beyond margin)
    balanced = contrastive_loss(sq, same, valid, margin=1.0)
    assert math.isclose(float(balanced), 0.125 + (0.32 + 0.0) / 2, rel_tol=1e-5)
    plain = contrastive_loss(sq, same, valid, margin=1.0, balance=False)
    assert math.isclose(float(plain), (0.125 + 0.32) / 3, rel_tol=1e-5)
    nothing = torch.zeros(1, 4, dtype=torch.bool)
    assert float(contrastive_loss(sq, same, nothing, margin=1.0)) == 0.0


def test_siamese_prediction_mean_and_nearest_by_hand() -> None:
    support = torch.tensor([[0.0], [4.0], [1.0], [10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[2.0]])
    mean = Siamese(normalize=False).scores(support, labels, query, 2)
    assert torch.allclose(mean, torch.tensor([[-2.0, -4.5]]))
    nearest = Siamese(normalize=False, predict="nearest").scores(support, labels, query, 2)
    assert torch.allclose(nearest, torch.tensor([[-2.0, -1.0]]))
    with pytest.raises(ValueError):
        Siamese(predict="vote")


def test_siamese_loss_is_in_extra_loss_and_decreases() -> None:
    torch.manual_seed(0)
    head = Siamese(margin=1.0)
    assert float(head.query_loss(torch.randn(3, 2), torch.tensor([0, 1, 0]))) == 0.0
    first, last, accuracy = train_head(head, nn.Linear(6, 8), steps=120, extra=True)
    assert last < 0.7 * first
    assert accuracy > 0.6  # chance: 1/3


def test_siamese_cross_modal_pairs_use_only_present_modalities() -> None:
    torch.manual_seed(0)
    head = Siamese()
    names = ["a", "b"]
    s_parts = {"a": torch.randn(4, 3), "b": torch.randn(4, 3)}
    q_parts = {"a": torch.randn(2, 3), "b": torch.randn(2, 3)}
    s_present = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    q_present = torch.tensor([[True, True], [True, False]])
    sl, ql = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])
    s = Embeddings(torch.randn(4, 3), s_present, s_parts, names)
    q = Embeddings(torch.randn(2, 3), q_present, q_parts, names)
    with_parts = head.extra_loss(s, sl, q, ql)
    fused_only = head.extra_loss(Embeddings(s.z, s_present), sl, Embeddings(q.z, q_present), ql)
    assert float(with_parts) > float(fused_only)  # the cross-modal term adds something
    # changing what an absent modality holds changes nothing
    s_parts2 = dict(s_parts, b=s_parts["b"].clone())
    s_parts2["b"][1] = 100.0
    q_parts2 = dict(q_parts, b=q_parts["b"].clone())
    q_parts2["b"][1] = -100.0
    again = head.extra_loss(
        Embeddings(s.z, s_present, s_parts2, names), sl,
        Embeddings(q.z, q_present, q_parts2, names), ql,
    )
    assert torch.allclose(with_parts, again)
    # and the cross-modal term alone matches a direct computation over the valid pairs
    off = Siamese(cross_modal_weight=0.0).extra_loss(s, sl, q, ql)
    assert torch.allclose(off, fused_only)
    flat = F.normalize(torch.cat([torch.cat([s_parts[n], q_parts[n]]) for n in names]), dim=1)
    present = torch.cat([torch.cat([s_present[:, m], q_present[:, m]]) for m in range(2)])
    labels = torch.cat([sl, ql]).repeat(2)
    modality = torch.arange(2).repeat_interleave(6)
    valid = present[:, None] & present[None] & (modality[:, None] != modality[None])
    same = labels[:, None] == labels[None]
    direct = contrastive_loss(squared_distances(flat, flat), same, valid, margin=1.0)
    assert torch.allclose(with_parts - fused_only, direct, atol=1e-6)


def test_siamese_late_fusion_pairs_stay_within_modality() -> None:
    torch.manual_seed(0)
    head = Siamese()
    present_s = torch.tensor([[True, False], [True, True]])
    present_q = torch.tensor([[True, True], [False, True]])
    zs, zq = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    sl, ql = torch.tensor([0, 1]), torch.tensor([1, 0])
    loss = head.extra_loss(Embeddings(zs, present_s), sl, Embeddings(zq, present_q), ql)
    zs2 = zs.clone()
    zs2[0, 1] = 50.0  # absent: must not matter
    again = head.extra_loss(Embeddings(zs2, present_s), sl, Embeddings(zq, present_q), ql)
    assert torch.isfinite(loss) and torch.allclose(loss, again)


# ----------------------------------------------------------------------------- baselines


def test_nearest_centroid_by_hand_and_feature_mean_buffer() -> None:
    head = NearestCentroid(dim=2)
    assert head.feature_mean.tolist() == [0.0, 0.0]
    support = torch.tensor([[3.0, 1.0], [1.0, 1.0], [1.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[1.0, 2.0]])
    head.set_feature_mean(torch.tensor([1.0, 1.0]))
    # centred + normalised support: [1, 0], [0, 0] (zero stays zero), [0, 1]
    # centroids: [0.5, 0] and [0, 1]; query -> [0, 1]
    logits = head.scores(support, labels, query, 2)
    assert torch.allclose(logits, torch.tensor([[-math.sqrt(0.25 + 1.0), 0.0]]), atol=1e-5)
    assert "feature_mean" in head.state_dict()
    uncentred = NearestCentroid(dim=2).scores(support, labels, query, 2)
    assert not torch.allclose(uncentred, logits)
    with pytest.raises(ValueError):
        head.set_feature_mean(torch.zeros(3))


@pytest.mark.parametrize(
    ("options"),
    [{}, {"cosine": True}, {"optimizer": "sgd", "lr": 0.5}, {"optimizer": "lbfgs", "lr": 1.0,
                                                              "steps": 30}],
)
def test_finetune_fits_separable_support_and_is_deterministic(options: dict) -> None:
    generator = torch.Generator().manual_seed(3)
    support, labels, query, _ = toy_episode(generator, ways=5, shots=5, features=16)
    head = FineTune(**options)
    with torch.no_grad():
        logits = head.scores(support, labels, support, 5)
    assert float((logits.argmax(1) == labels).float().mean()) == 1.0
    again = FineTune(**options).scores(support, labels, support, 5)
    assert torch.equal(logits, again.detach())
    with torch.inference_mode():
        inference = head.scores(support, labels, query, 5)
    assert inference.shape == (len(query), 5)
    other_seed = FineTune(**options, seed=1).scores(support, labels, support, 5)
    if options.get("optimizer") != "lbfgs":  # LBFGS converges to (nearly) one optimum
        assert not torch.equal(logits, other_seed)


@pytest.mark.parametrize("cosine", [False, True])
def test_finetunes_hand_written_adam_fits_what_torch_adam_fits(cosine: bool) -> None:
    """FineTune's Adam (without an optimiser object, for speed) gives torch.optim.Adam's
    classifier: the same arithmetic, in float64 and float32."""
    import torch.nn.functional as F

    from metamodal.ops import l2_normalize

    for dtype, tolerance in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        generator = torch.Generator().manual_seed(4)
        support, labels, _, _ = toy_episode(generator, ways=5, shots=3, features=16)
        support = support.to(dtype)
        head = FineTune(cosine=cosine, steps=60, lr=0.05)
        weight, bias = head.fit(support, labels, 5)
        x = l2_normalize(support, dim=1)
        w = (torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
             * 0.01).requires_grad_()
        b = torch.zeros(5, dtype=dtype, requires_grad=True)
        params = [w] if cosine else [w, b]
        optimizer = torch.optim.Adam(params, lr=0.05)
        for _ in range(60):
            optimizer.zero_grad()
            F.cross_entropy(head._classify(x, w, b), labels).backward()
            optimizer.step()
        assert float((weight - w).abs().max()) < tolerance * max(1.0, float(w.abs().max()))
        assert float((bias - b).abs().max()) < tolerance


@pytest.mark.parametrize("options", [{}, {"cosine": True}, {"optimizer": "sgd", "lr": 0.5},
                                     {"weight_decay": 0.01, "normalize": False}],
                         ids=["adam", "cosine", "sgd", "decay"])
def test_finetune_fits_many_episodes_at_once_as_one_by_one(options: dict) -> None:
    """``logits_many`` fits every episode's classifier in one batched run: in float64 the
    same logits as `logits` episode by episode."""
    from metamodal.learners.embeddings import Embeddings

    generator = torch.Generator().manual_seed(12)
    head = FineTune(steps=30, **options).double()
    episodes = []
    for _ in range(4):
        support, labels, query, _ = toy_episode(generator, ways=3, shots=2, features=6)
        episodes.append((Embeddings(support.double(), torch.ones(len(support), 1).bool()),
                         labels, Embeddings(query.double(), torch.ones(len(query), 1).bool())))
    one_by_one = [head.logits(nn.Module(), s, labels, q, 3) for s, labels, q in episodes]
    together = head.logits_many(nn.Module(), episodes, 3)
    for a, b in zip(together, one_by_one, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="L-BFGS"):
        FineTune(optimizer="lbfgs").fit(torch.stack([episodes[0][0].z] * 2),
                                         torch.stack([episodes[0][1]] * 2), 3)
    lbfgs = FineTune(optimizer="lbfgs", steps=5).double()  # one by one, as its own logits
    for a, (s, labels, q) in zip(lbfgs.logits_many(nn.Module(), episodes, 3), episodes,
                                 strict=True):
        torch.testing.assert_close(a, lbfgs.logits(nn.Module(), s, labels, q, 3))
    with pytest.raises(InsufficientSamplesError):  # every episode's support is checked
        bad = (episodes[1][0], torch.zeros_like(episodes[1][1]), episodes[1][2])
        head.logits_many(nn.Module(), [episodes[0], bad], 3)


def test_finetune_gradient_reaches_query_not_support() -> None:
    support = torch.randn(4, 3, requires_grad=True)
    query = torch.randn(2, 3, requires_grad=True)
    logits = FineTune(steps=5).scores(support, torch.tensor([0, 0, 1, 1]), query, 2)
    logits.sum().backward()
    assert query.grad is not None and support.grad is None
    with pytest.raises(ValueError):
        FineTune(optimizer="rmsprop")


def test_supervised_classifier_linear_and_cosine() -> None:
    torch.manual_seed(0)
    features = torch.randn(5, 8)
    linear = SupervisedClassifier(8, 3)
    assert torch.allclose(linear(features), linear.linear(features))
    cosine = SupervisedClassifier(8, 3, cosine=True, scale=4.0)
    out = cosine(features)
    assert out.shape == (5, 3) and float(out.detach().abs().max()) <= 4.0 + 1e-5
    expected = 4.0 * F.normalize(features, dim=1) @ F.normalize(cosine.weight, dim=1).T
    assert torch.allclose(out, expected)
    # it learns: a few steps reduce the loss on a fixed batch
    labels = torch.tensor([0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(cosine.parameters(), lr=0.5)
    before = F.cross_entropy(cosine(features), labels).item()
    for _ in range(20):
        optimizer.zero_grad()
        F.cross_entropy(cosine(features), labels).backward()
        optimizer.step()
    assert F.cross_entropy(cosine(features), labels).item() < before


# ----------------------------------------------------------------------------- half precision


def test_l2_normalize_and_safe_sqrt_keep_zero_rows_finite_in_float16() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float16, requires_grad=True)
    unit = l2_normalize(x, dim=1)
    assert unit.dtype == torch.float16 and torch.isfinite(unit).all()
    assert unit[1].tolist() == [0.0, 0.0]
    assert torch.allclose(unit[0].float(), torch.tensor([0.6, 0.8]), atol=1e-3)
    root = safe_sqrt((x * x).sum(1))
    (unit.sum() + root.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # float32 and float64 keep the usual 1e-12 guard
    assert tiny(torch.float32) == tiny(torch.float64) == 1e-12
    assert tiny(torch.float16) > 0 and torch.tensor(tiny(torch.float16), dtype=torch.float16) > 0


@pytest.mark.parametrize(
    "head",
    [MatchingNet(), Siamese(), Siamese(predict="nearest"), NearestCentroid(dim=4),
     FineTune(steps=3), FineTune(steps=3, cosine=True)],
    ids=["matchingnet", "siamese", "siamese-nearest", "nearest-centroid", "finetune",
         "finetune-cosine"],
)
def test_normalising_heads_stay_finite_in_float16_with_zero_embeddings(head: nn.Module) -> None:
    # A sample with no modality has the embedding 0 (so does every absent modality under late
    # fusion); F.normalize's eps=1e-12 is 0 in float16 and would turn it into NaN.
    generator = torch.Generator().manual_seed(0)
    support = torch.randn(4, 4, generator=generator).half()
    query = torch.randn(3, 4, generator=generator).half()
    support[1] = 0.0
    query[0] = 0.0
    support.requires_grad_()
    query.requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    head = head.half()
    logits = head.scores(support, labels, query, 2)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()
    loss = head.query_loss(logits, torch.tensor([0, 1, 1])) + logits.float().square().mean()
    assert torch.isfinite(loss)
    loss.backward()
    # the rows of real embeddings get finite gradients (a zero row is a placeholder, whose
    # gradient the model's masks drop)
    if support.grad is not None:  # FineTune fits on detached support features
        assert torch.isfinite(support.grad[torch.tensor([True, False, True, True])]).all()
    assert query.grad is not None
    assert torch.isfinite(query.grad[torch.tensor([False, True, True])]).all()


def test_siamese_pair_loss_is_finite_in_float16_with_zero_embeddings() -> None:
    generator = torch.Generator().manual_seed(1)
    zs = torch.randn(4, 4, generator=generator).half()
    zq = torch.randn(2, 4, generator=generator).half()
    zs[1] = 0.0
    zq[0] = 0.0  # a zero pair of different classes: distance 0, a negative pair
    zs.requires_grad_()
    zq.requires_grad_()
    present_s = torch.ones(4, 1, dtype=torch.bool)
    present_q = torch.ones(2, 1, dtype=torch.bool)
    loss = Siamese(normalize=False).extra_loss(
        Embeddings(zs, present_s), torch.tensor([0, 0, 1, 1]),
        Embeddings(zq, present_q), torch.tensor([1, 0]),
    )
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(zs.grad).all() and torch.isfinite(zq.grad).all()


def test_siamese_fused_pairs_leave_out_samples_without_any_modality() -> None:
    generator = torch.Generator().manual_seed(2)
    zs = torch.randn(4, 3, generator=generator)
    zq = torch.randn(2, 3, generator=generator)
    present_s = torch.ones(4, 2, dtype=torch.bool)
    present_q = torch.ones(2, 2, dtype=torch.bool)
    sl, ql = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1])
    head = Siamese(normalize=False, cross_modal_weight=0.0)
    loss = head.extra_loss(Embeddings(zs, present_s), sl, Embeddings(zq, present_q), ql)
    # one more support sample of class 0 that has no modality: its fused embedding is the
    # placeholder 0, which must not be pulled towards (or pushed from) anything
    zs_more = torch.cat([zs, torch.zeros(1, 3)])
    present_more = torch.cat([present_s, torch.zeros(1, 2, dtype=torch.bool)])
    sl_more = torch.cat([sl, torch.tensor([0])])
    again = head.extra_loss(Embeddings(zs_more, present_more), sl_more,
                            Embeddings(zq, present_q), ql)
    assert torch.allclose(loss, again)


def _late_model(**fusion_options: float) -> Any:
    """A ProtoNet with late fusion over two tabular modalities ``a`` and ``b``, the same
    weights whatever ``fusion_options``."""
    from metamodal.model import FewShotModel

    torch.manual_seed(0)
    return FewShotModel.build(kinds={"a": "tabular", "b": "tabular"},
                              input_info={"a": {"features": 3}, "b": {"features": 3}}, dim=4,
                              fusion="late", learner="protonet",
                              fusion_options=fusion_options or None)


def _late_episode(ways: int) -> Any:
    """An episode of ``ways`` classes, one support and one query each, for `_late_model`;
    query 0 lacks modality ``b``."""
    from metamodal.data.batch import Episode, ModalityBatch

    generator = torch.Generator().manual_seed(1)
    present = torch.ones(2 * ways, dtype=torch.bool)
    batch = {m: ModalityBatch(torch.randn(2 * ways, 3, generator=generator), present.clone())
             for m in ("a", "b")}
    batch["b"] = batch["b"].with_present(present.clone().index_fill_(0, torch.tensor([ways]),
                                                                     False))
    labels = torch.arange(ways)
    names = [str(i) for i in range(2 * ways)]
    return Episode({k: v.index(torch.arange(ways)) for k, v in batch.items()},
                   {k: v.index(torch.arange(ways, 2 * ways)) for k, v in batch.items()},
                   labels, labels.clone(), [f"c{i}" for i in range(ways)], names[:ways],
                   names[ways:])


def _branch_logits(model: Any, episode: Any) -> tuple[Tensor, Tensor]:
    """Each modality's query logits ``[Q, M, ways]`` and which are valid ``[Q, M]``."""
    s, q = model.backbone(episode.support), model.backbone(episode.query)
    return model.learner.late_logits(s, episode.support_labels, q, episode.ways)


def test_late_fusion_unimodal_loss_adds_each_modalitys_own_query_loss() -> None:
    plain, weighted, episode = _late_model(), _late_model(unimodal_loss=0.5), _late_episode(3)
    labels = episode.query_labels
    base, logits = plain.loss(episode)
    total, same_logits = weighted.loss(episode)
    assert torch.allclose(logits, same_logits)
    per_modality, valid = _branch_logits(weighted, episode)
    assert valid[:, 1].tolist() == [False, True, True]  # query 0 lacks b
    own = [torch.nn.functional.cross_entropy(per_modality[valid[:, m], m], labels[valid[:, m]])
           for m in range(2)]
    assert torch.allclose(total, base + 0.5 * (own[0] + own[1]) / 2)
    with pytest.raises(ConfigError, match="unimodal_loss"):
        _late_model(unimodal_loss=-1)


def test_late_fusion_distill_pulls_each_modality_toward_the_fixed_fused_posterior() -> None:
    plain, both, episode = _late_model(), _late_model(unimodal_loss=0.5, distill=2.0), \
        _late_episode(4)
    labels = episode.query_labels
    base, logits = plain.loss(episode)
    total, same_logits = both.loss(episode)
    assert torch.allclose(logits, same_logits)
    per_modality, valid = _branch_logits(both, episode)
    assert valid[:, 1].tolist() == [False, True, True, True]  # query 0 lacks b
    fused = logits.softmax(-1)
    terms = []
    for m in range(2):
        rows = valid[:, m]
        own = torch.nn.functional.cross_entropy(per_modality[rows, m], labels[rows])
        log_q = per_modality[rows, m].log_softmax(-1)
        kl = (fused[rows] * (fused[rows].log() - log_q)).sum(-1).mean()
        assert kl > 0  # the branches disagree with the fused posterior
        terms.append(0.5 * own + 2.0 * kl)
    assert torch.allclose(total, base + (terms[0] + terms[1]) / 2, atol=1e-6)
    # The fused posterior is a fixed target: the distillation term sends no gradient to the
    # mixing weights (the branches' logits do not depend on them), only to the encoders.
    only = _late_model(distill=1.0)
    only.loss(episode)[0].backward()
    plain.loss(episode)[0].backward()
    assert torch.allclose(only.backbone.fusion.mix.grad, plain.backbone.fusion.mix.grad)
    encoder = only.backbone.encoders["a"].net[0].weight
    assert not torch.allclose(encoder.grad, plain.backbone.encoders["a"].net[0].weight.grad)
    with pytest.raises(ConfigError, match="distill"):
        _late_model(distill=float("nan"))

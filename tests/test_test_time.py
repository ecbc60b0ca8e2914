"""Test-time augmentation, confidence- and reliability-weighted late fusion and transduction
(`metamodal.model.test_time`): the arithmetic, the config keys and flags, typed errors, and
that training is left unchanged."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metamodal import api
from metamodal import config as config_module
from metamodal.cli import main
from metamodal.config import TestTime, TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError
from metamodal.fusion.late import LateFusion
from metamodal.learners.embeddings import Embeddings
from metamodal.learners.protonet import ProtoNet, soft_assignment
from metamodal.model.test_time import TTA_SEED, averaged_embedding, tta_augmentation
from metamodal.ops import balanced_softmax, squared_distances
from metamodal.runs.directory import load_run, load_run_data
from metamodal.runs.weights import WEIGHTS_FILE

SMALL = {"ways": 2, "shots": 1, "queries": 2, "dim": 8, "val_every": 0, "val_episodes": 3,
         "device": "cpu", "cache": False}
AUGMENT = {"image": {"rotate": 15, "shift": 0.1}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A dataset, a run trained with tta = 2 and transduction = 1, and one trained without."""
    root = tmp_path_factory.mktemp("test_time")
    data = make_synthetic(root / "data", classes=12, per_class=4, image_size=8)
    with_test_time = root / "tt"
    api.train(with_test_time, data=str(data), modalities=["image", "caption"], fusion="late",
              steps=3, augment=AUGMENT, tta=2, transduction=1, progress=False, **SMALL)
    plain = root / "plain"
    api.train(plain, data=str(data), modalities=["image", "caption"], fusion="late",
              steps=3, augment=AUGMENT, progress=False, **SMALL)
    return {"data": data, "tt": with_test_time, "plain": plain, "root": root}


# ---------------------------------------------------------------------------- arithmetic

def _by_hand(supports: list[torch.Tensor], labels: torch.Tensor, queries: list[torch.Tensor],
             steps: int, assign=lambda logits: logits.softmax(-1)) -> torch.Tensor:
    """Soft k-means over views with equal weights (mean of the views' logits), by hand,
    each step's assignment ``assign(logits)``."""
    def logits_of(prototypes: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([-squared_distances(q, p) for q, p in zip(queries, prototypes,
                                                                      strict=True)]).mean(0)

    prototypes = [torch.stack([s[labels == k].mean(0) for k in range(3)]) for s in supports]
    for _ in range(steps):
        w = assign(logits_of(prototypes))  # one assignment for every view
        prototypes = [torch.stack([
            (s[labels == k].sum(0) + (w[:, k:k + 1] * q).sum(0))
            / ((labels == k).sum() + w[:, k].sum()) for k in range(3)])
            for s, q in zip(supports, queries, strict=True)]
    return logits_of(prototypes)


def test_soft_kmeans_refines_prototypes_as_ren_et_al() -> None:
    torch.manual_seed(0)
    support, labels = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 2, 2])
    query = torch.randn(5, 4, dtype=torch.float64)
    s = Embeddings(support, torch.ones(6, 1, dtype=torch.bool))
    q = Embeddings(query, torch.ones(5, 1, dtype=torch.bool))
    head = ProtoNet().double().eval()
    plain = head.logits(None, s, labels, q, 3)
    head.transduction = 2
    refined = head.logits(None, s, labels, q, 3)
    torch.testing.assert_close(refined, _by_hand([support], labels, [query], 2), rtol=0,
                               atol=1e-12)
    assert not torch.allclose(refined, plain)
    head.train()  # training is never transductive
    torch.testing.assert_close(head.logits(None, s, labels, q, 3), plain)


def test_balanced_softmax_spreads_the_mass_evenly_over_the_classes() -> None:
    p = balanced_softmax(torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    # a 2 x 2 doubly stochastic [[x, 1-x], [1-x, x]] keeps the odds ratio e^2 / e^1 of exp(logits)
    x = math.sqrt(math.e) / (1 + math.sqrt(math.e))
    torch.testing.assert_close(p, torch.tensor([[x, 1 - x], [1 - x, x]], dtype=torch.float64),
                               rtol=0, atol=1e-6)
    logits = torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 3
    p = balanced_softmax(logits)
    torch.testing.assert_close(p.sum(1), torch.ones(12), rtol=0, atol=1e-5)
    torch.testing.assert_close(p.sum(0), torch.full((4,), 3.0), rtol=0, atol=1e-3)
    assert not torch.allclose(p, logits.softmax(-1), atol=1e-2)


@pytest.mark.parametrize("scale", [50.0, 200.0])
def test_balanced_softmax_keeps_going_until_sharp_logits_are_balanced(scale: float) -> None:
    logits = torch.randn(20, 20, generator=torch.Generator().manual_seed(0)) * scale
    logits[:5, 0] += scale  # five items agree on one class
    fixed = balanced_softmax(logits, max_iterations=100)  # 100 normalisations, no more
    assert (fixed.sum(0) - 1).abs().max() > 0.03  # not balanced yet
    p = balanced_softmax(logits)
    torch.testing.assert_close(p.sum(1), torch.ones(20), rtol=0, atol=1e-5)
    assert (p.sum(0) - 1).abs().max() < 0.011  # every class within 1% of its share
    easy = torch.randn(6, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(balanced_softmax(easy), balanced_softmax(easy, max_iterations=100),
                               rtol=0, atol=0)  # converged within 100: the same 100 steps


def test_balanced_transduction_gives_each_class_its_share_of_the_queries() -> None:
    """Three classes, one query each: unbalanced soft k-means lets two queries crowd one
    prototype and gets one right; balanced, each class takes one and all three are right."""
    support = torch.tensor([[-0.82, 0.64], [0.13, -0.85], [0.77, -0.11]], dtype=torch.float64)
    query = torch.tensor([[-1.22, -1.14], [1.12, -0.72], [1.82, -0.11]], dtype=torch.float64)
    labels = torch.arange(3)
    s = Embeddings(support, torch.ones(3, 1, dtype=torch.bool))
    q = Embeddings(query, torch.ones(3, 1, dtype=torch.bool))
    head = ProtoNet().double().eval()
    head.transduction = 3
    assert head.logits(None, s, labels, q, 3).argmax(-1).tolist() == [1, 2, 2]
    head.balance = True
    balanced = head.logits(None, s, labels, q, 3)
    assert balanced.argmax(-1).tolist() == [0, 1, 2]
    torch.testing.assert_close(balanced, _by_hand([support], labels, [query], 3,
                                                  assign=balanced_softmax), rtol=0, atol=1e-12)
    head.transduction = 0  # balance only shapes transduction's assignments
    torch.testing.assert_close(head.logits(None, s, labels, q, 3), -squared_distances(
        query, support))
    head.transduction = 3  # fewer queries than classes: refined unbalanced
    two = Embeddings(query[:2], torch.ones(2, 1, dtype=torch.bool))
    head.balance = False
    unbalanced = head.logits(None, s, labels, two, 3)
    head.balance = True
    torch.testing.assert_close(head.logits(None, s, labels, two, 3), unbalanced)


def test_under_late_fusion_the_fused_assignment_refines_every_modality() -> None:
    torch.manual_seed(1)
    supports = [torch.randn(6, 4, dtype=torch.float64) for _ in range(2)]
    queries = [torch.randn(5, 4, dtype=torch.float64) for _ in range(2)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    backbone = torch.nn.Module()
    backbone.fusion = LateFusion(modalities=["a", "b"], dim=4).double()  # equal weights
    s = Embeddings(torch.stack(supports, 1), torch.ones(6, 2, dtype=torch.bool))
    q = Embeddings(torch.stack(queries, 1), torch.ones(5, 2, dtype=torch.bool))
    head = ProtoNet().double().eval()
    head.transduction = 1
    torch.testing.assert_close(head.logits(backbone, s, labels, q, 3),
                               _by_hand(supports, labels, queries, 1), rtol=0, atol=1e-12)


def test_confidence_weighting_moves_each_querys_weight_off_an_uncertain_modality() -> None:
    """Weights ``softmax(mix - c * entropy)`` per query, in evaluation only; c = 0 is the
    learned mix."""
    fusion = LateFusion(modalities=["a", "b"], dim=4).double()
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.0, 0.5], dtype=torch.float64))
    # query 0: a sure of class 0, b undecided; query 1: both sure, of different classes
    logits = torch.tensor([[[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]],
                           [[3.0, 0.0, 0.0], [0.0, 0.0, 5.0]]], dtype=torch.float64)
    valid = torch.ones(2, 2, dtype=torch.bool)
    learned = fusion.combine(logits, valid)
    fusion.confidence = 2.0
    assert torch.equal(fusion.combine(logits, valid), learned)  # training: the learned mix
    fusion.eval()
    got = fusion.combine(logits, valid)
    p = logits.softmax(-1)
    entropy = -(p * p.log()).sum(-1)
    weights = (fusion.mix.detach() - 2.0 * entropy).softmax(-1)
    torch.testing.assert_close(got, (weights.unsqueeze(-1) * logits).sum(1), rtol=0,
                               atol=1e-12)
    assert fusion.last_weights[0, 0] > 0.75 > 0.5 > torch.softmax(fusion.mix.detach(), 0)[0]
    assert got[0].argmax() == 0
    fusion.confidence = 0.0
    torch.testing.assert_close(fusion.combine(logits, valid), learned, rtol=0, atol=0)
    # a query with one valid modality keeps it alone, whatever its entropy
    fusion.confidence = 5.0
    one = fusion.combine(logits, torch.tensor([[False, True], [True, True]]))
    torch.testing.assert_close(one[0], logits[0, 1], rtol=0, atol=0)


def test_reliability_weighting_mixes_each_class_by_each_modalitys_agreement() -> None:
    """Per class c: weights ``softmax(mix + r * log A[:, c])`` over the modalities, ``A[m, c]``
    the probability modality m gives c on the queries the fused posterior puts in c."""
    fusion = LateFusion(modalities=["a", "b"], dim=4).double()
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.2, -0.2], dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 2, 3, generator=g, dtype=torch.float64) * 2  # [Q, M, W]
    valid = torch.ones(6, 2, dtype=torch.bool)
    valid[5, 1] = False  # the last query lacks b
    learned = fusion.combine(logits, valid)
    fusion.reliability = 1.5
    assert torch.equal(fusion.combine(logits, valid), learned)  # training: the learned mix
    fusion.eval()
    got = fusion.combine(logits, valid)
    expected = torch.empty(6, 3, dtype=torch.float64)
    mix = fusion.mix.detach()
    for q in range(6):
        ms = [m for m in range(2) if valid[q, m]]
        fused = (mix[ms].softmax(0).unsqueeze(-1) * logits[q, ms]).sum(0)
        expected[q] = fused
    posterior = expected.softmax(-1)  # the fused posterior of the learned mix
    for q in range(6):
        ms = [m for m in range(2) if valid[q, m]]
        for c in range(3):
            agreement = []
            for m in ms:
                has = valid[:, m]
                p_m = logits[has, m].softmax(-1)[:, c]
                agreement.append((posterior[has, c] * p_m).sum() / posterior[has, c].sum())
            weights = (mix[ms] + 1.5 * torch.stack(agreement).log()).softmax(0)
            expected[q, c] = (weights * logits[q, ms, c]).sum()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert fusion.last_weights.shape == (6, 2, 3)
    torch.testing.assert_close(got[5], logits[5, 0], rtol=0, atol=0)  # one modality: alone
    fusion.reliability = 0.0
    torch.testing.assert_close(fusion.combine(logits, valid), learned, rtol=0, atol=0)


def test_reliability_weighting_leans_on_the_modality_that_tells_each_class_apart() -> None:
    """Modality a separates classes 0-1 and confuses 2 with 3, b the reverse: per class,
    the weights follow the modality that knows it, where a fixed mix cannot."""
    labels = torch.arange(4).repeat(5)  # 20 queries, 5 per class
    g = torch.Generator().manual_seed(0)
    sure = torch.nn.functional.one_hot(labels, 4).double() * 4

    def confused(pair: list[int]) -> torch.Tensor:
        out = sure.clone()
        rows = (labels == pair[0]) | (labels == pair[1])
        out[rows] = 0.0
        out[rows.nonzero().squeeze(1).unsqueeze(1), torch.tensor(pair)] = 2.0
        return out + 0.1 * torch.randn(out.shape, generator=g, dtype=torch.float64)

    logits = torch.stack([confused([2, 3]), confused([0, 1])], 1)  # [20, 2, 4]
    valid = torch.ones(20, 2, dtype=torch.bool)
    fusion = LateFusion(modalities=["a", "b"], dim=4).double().eval()
    plain = fusion.combine(logits, valid)
    fusion.reliability = 2.0
    weighted = fusion.combine(logits, valid)
    assert (weighted.argmax(-1) == labels).all()
    weights = fusion.last_weights[0]  # [M, W] for query 0
    assert weights[0, 0] > 0.5 > weights[0, 2] and weights[1, 2] > 0.5 > weights[1, 0]

    def margin(scores: torch.Tensor) -> torch.Tensor:  # true class over the best other
        true = scores.gather(1, labels.unsqueeze(1)).squeeze(1)
        return true - scores.scatter(1, labels.unsqueeze(1), -math.inf).amax(1)

    assert (margin(weighted) > margin(plain) + 0.5).all()  # each class told apart further


def test_test_time_settings_are_checked() -> None:
    for bad in ({"tta": -1}, {"tta": 65}, {"tta": True}, {"transduction": 21},
                {"transduction": 1.5}, {"fusion_confidence": -0.5},
                {"fusion_confidence": 101}, {"fusion_confidence": "high"},
                {"fusion_confidence": True}, {"fusion_reliability": -1},
                {"fusion_reliability": 101}, {"fusion_reliability": "some"},
                {"transduction_balance": 1}, {"transduction_balance": "yes"}):
        key = next(iter(bad))
        with pytest.raises(ConfigError) as error:
            TestTime(**bad).check()
        assert error.value.column == key and error.value.fix
        with pytest.raises(ConfigError) as error:
            TrainConfig(data="x", **bad).validate(source="config.toml")
        assert error.value.column == key


def test_tta_embedding_is_the_mean_over_the_sample_and_its_copies(setup) -> None:
    run = load_run(setup["tt"])
    model = run.model
    assert model.test_time == TestTime(tta=2, transduction=1)
    assert model.learner.transduction == 1
    store = load_run_data(run).store
    from metamodal.evaluate.embedding import masked_batch

    names = list(model.modalities)
    batch = masked_batch(store, torch.arange(6), names, names, {})
    augmentation = tta_augmentation(run.config.augment, run.preprocessor)
    with torch.no_grad():
        got = model.embed(batch)
        copies = [model.backbone(batch)] + [
            model.backbone(c) for c in augmentation.sample_copies(batch, 2, seed=TTA_SEED)]
        expected = torch.stack([c.z for c in copies]).mean(0)
        assert not torch.allclose(copies[0].z, copies[1].z)  # the copies differ
        torch.testing.assert_close(got.z, expected, rtol=0, atol=1e-6)
        assert torch.equal(got.present, copies[0].present)
        again = averaged_embedding(model.backbone, batch, 2, augmentation)
        torch.testing.assert_close(again.z, got.z, rtol=0, atol=0)  # reproducible
        training = copy.deepcopy(model).train()  # training embeds each sample once
        torch.testing.assert_close(training.embed(batch).z,
                                   copy.deepcopy(model).train().backbone(batch).z)


def test_a_samples_tta_embedding_does_not_depend_on_its_batch(setup) -> None:
    """Each sample's copies are drawn from its own generator: the same sample embeds the same
    alone, after others, and twice in one batch. Drawn from one generator per batch, a
    sample's copies depended on the samples before it (a server answered a query by what
    other clients sent at the same moment)."""
    run = load_run(setup["tt"])
    store = load_run_data(run).store
    from metamodal.evaluate.embedding import masked_batch

    names = list(run.model.modalities)
    with torch.no_grad():
        alone = run.model.embed(masked_batch(store, torch.tensor([3]), names, names, {})).z
        for rows in ([0, 1, 3], [3, 3], [5, 3, 2]):
            batch = masked_batch(store, torch.tensor(rows), names, names, {})
            z = run.model.embed(batch).z
            for at in [i for i, row in enumerate(rows) if row == 3]:
                torch.testing.assert_close(z[at:at + 1], alone, rtol=0, atol=1e-5)
        two = run.model.embed(masked_batch(store, torch.tensor([3, 4]), names, names, {})).z
        assert not torch.allclose(two[0], two[1])  # other samples, other embeddings


def test_tta_embeds_once_where_no_shown_modality_has_a_transform(setup) -> None:
    run = load_run(setup["tt"])
    store = load_run_data(run).store
    from metamodal.evaluate.embedding import masked_batch

    names = list(run.model.modalities)
    augmentation = tta_augmentation(run.config.augment, run.preprocessor)
    assert set(augmentation.modalities) == {"image"}  # the caption has no transform
    calls = []

    def counted(batch):
        calls.append(1)
        return run.model.backbone(batch)

    with torch.no_grad():
        for selected, passes in ((["caption"], 1), (names, 3)):
            calls.clear()
            batch = masked_batch(store, torch.arange(6), names, selected, {})
            got = averaged_embedding(counted, batch, 2, augmentation)
            assert len(calls) == passes
            torch.testing.assert_close(got.z, run.model.backbone(batch).z if passes == 1
                                       else run.model.embed(batch).z, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------- config and flags

def test_training_is_unchanged_by_test_time_settings(setup) -> None:
    """The weights of the run trained with tta and transduction equal those of the plain run:
    both only act at evaluation."""
    a, b = load_file(str(setup["tt"] / WEIGHTS_FILE)), load_file(str(setup["plain"] / WEIGHTS_FILE))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_eval_uses_the_runs_settings_and_flags_override_them(setup) -> None:
    with_run = api.evaluate(setup["tt"], episodes_count=20, baseline=False, progress=False)
    overridden = api.evaluate(setup["tt"], episodes_count=20, baseline=False, progress=False,
                              tta=0, transduction=0)
    plain = api.evaluate(setup["plain"], episodes_count=20, baseline=False, progress=False)
    on_plain = api.evaluate(setup["plain"], episodes_count=20, baseline=False, progress=False,
                            tta=2, transduction=1)
    assert overridden.result.accuracies == plain.result.accuracies
    assert with_run.result.accuracies == on_plain.result.accuracies
    run = load_run(setup["plain"], test_time={"tta": 2, "transduction": None})
    assert run.model.test_time == TestTime(tta=2, transduction=0)
    from metamodal.evaluate.episode_plans import sampled_episodes
    from metamodal.evaluate.protocol import episode_logits

    api.evaluate(setup["plain"], episodes_count=5, baseline=False, progress=False,
                 fusion_confidence=50)
    logits = {}
    for confidence in (0, 50):
        run = load_run(setup["plain"], test_time={"fusion_confidence": confidence})
        assert run.model.backbone.fusion.confidence == confidence
        assert run.model.test_time == TestTime(fusion_confidence=confidence)
        prepared = load_run_data(run)
        plan = sampled_episodes(prepared.store, prepared.split.test, 4, 1, 3, 0, 5)
        logits[confidence] = torch.cat(episode_logits(run.model, prepared.store, plan))
    assert not torch.allclose(logits[0], logits[50])  # the weights moved
    assert main(["eval", str(setup["plain"]), "--fusion-reliability", "1", "--episodes-count",
                 "5", "--no-baseline", "--no-progress"]) == 0
    run = load_run(setup["plain"], test_time={"fusion_reliability": 1})
    assert run.model.backbone.fusion.reliability == 1
    moved = torch.cat(episode_logits(run.model, prepared.store, plan))
    assert not torch.allclose(moved, logits[0])  # the per-class weights moved them too


def test_under_another_learner_eval_keeps_the_settings_and_checks_them_against_it(
        setup) -> None:
    shape = {"episodes_count": 20, "baseline": False, "progress": False}
    own = api.evaluate(setup["tt"], **shape)  # the run's protonet, tta 2, transduction 1
    again = api.evaluate(setup["tt"], learner="protonet", **shape)
    assert again.result.accuracies == own.result.accuracies  # its settings kept
    plain = api.evaluate(setup["plain"], learner="protonet", tta=2, transduction=1, **shape)
    assert plain.result.accuracies == own.result.accuracies  # the flags reach the new learner
    with pytest.raises(ConfigError, match="--learner finetune") as error:
        api.evaluate(setup["tt"], learner="finetune", tta=0, **shape)
    assert error.value.column == "transduction"  # finetune has no prototypes to refine
    api.evaluate(setup["tt"], learner="finetune", tta=0, transduction=0, episodes_count=2,
                 baseline=False, progress=False)


def test_cli_flags_and_typed_errors(setup, capsys) -> None:
    assert main(["eval", str(setup["plain"]), "--tta", "2", "--transduction", "1",
                 "--episodes-count", "5", "--no-baseline", "--no-progress"]) == 0
    assert main(["eval", str(setup["plain"]), "--tta", "99", "--episodes-count", "5",
                 "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "tta" in err and "0..64" in err
    with pytest.raises(ConfigError) as error:
        api.evaluate(setup["plain"], transduction=-1, progress=False)
    assert error.value.column == "transduction"


def test_balanced_transduction_is_a_setting_and_a_flag_both_ways(setup, tmp_path) -> None:
    """``transduction_balance`` in a run's config, ``--transduction-balance`` to turn it on
    for one command and ``--no-transduction-balance`` off; it moves the logits of episodes
    whose queries are spread evenly over the classes."""
    from metamodal.evaluate.episode_plans import sampled_episodes
    from metamodal.evaluate.protocol import episode_logits

    balanced = api.train(tmp_path / "balanced", data=str(setup["data"]),
                         modalities=["image", "caption"], fusion="late", steps=3,
                         augment=AUGMENT, transduction=3, transduction_balance=True,
                         progress=False, **SMALL).run_dir
    assert load_run(balanced).config.transduction_balance
    logits = {}
    for balance in (True, False, None):
        run = load_run(balanced, test_time={"transduction_balance": balance})
        assert run.model.learner.balance is (balance is not False)
        prepared = load_run_data(run)
        plan = sampled_episodes(prepared.store, prepared.split.test, 4, 1, 3, 0, 5)
        logits[balance] = torch.cat(episode_logits(run.model, prepared.store, plan))
    assert not torch.allclose(logits[True], logits[False])
    torch.testing.assert_close(logits[None], logits[True])
    for flags in (["--no-transduction-balance"], ["--transduction-balance"]):
        assert main(["eval", str(balanced), *flags, "--episodes-count", "5", "--no-baseline",
                     "--no-progress"]) == 0
    overrides = config_module.test_time_overrides(
        api.EvalSettings(run="x", transduction_balance=False))
    assert load_run(balanced, test_time=overrides).model.learner.balance is False


def test_tta_without_transforms_and_transduction_without_prototypes_are_refused(
        setup) -> None:
    root = setup["root"]
    with pytest.raises(ConfigError) as error:
        api.train(root / "no-augment", data=str(setup["data"]), modalities=["image"], steps=1,
                  tta=2, progress=False, **SMALL)
    assert error.value.column == "tta" and "augment" in error.value.fix
    with pytest.raises(ConfigError) as error:
        api.train(root / "matching", data=str(setup["data"]), modalities=["image"], steps=1,
                  learner="matchingnet", transduction=1, progress=False, **SMALL)
    assert error.value.column == "transduction"
    with pytest.raises(ConfigError) as error:
        api.train(root / "matching-balanced", data=str(setup["data"]), modalities=["image"],
                  steps=1, learner="matchingnet", transduction_balance=True, progress=False,
                  **SMALL)
    assert error.value.column == "transduction_balance"
    with pytest.raises(ConfigError) as error:
        api.train(root / "gated", data=str(setup["data"]), modalities=["image", "caption"],
                  steps=1, fusion="gated", fusion_confidence=2, progress=False, **SMALL)
    assert error.value.column == "fusion_confidence" and "late" in error.value.fix
    gated = api.train(root / "gated-plain", data=str(setup["data"]),
                      modalities=["image", "caption"], steps=1, fusion="gated",
                      progress=False, **SMALL).run_dir
    with pytest.raises(ConfigError) as error:  # an override the run cannot honour names it
        api.evaluate(gated, fusion_confidence=1, progress=False)
    assert error.value.column == "fusion_confidence"
    with pytest.raises(ConfigError) as error:
        api.evaluate(gated, fusion_reliability=1, progress=False)
    assert error.value.column == "fusion_reliability" and "late" in error.value.fix
    assert str(error.value.file) == str(gated)


def test_the_classifier_takes_the_settings(setup) -> None:
    from metamodal.classifier import FewShotClassifier

    clf = FewShotClassifier(setup["plain"], tta=2, transduction=1, fusion_confidence=3,
                            transduction_balance=True)
    assert clf.get_params()["tta"] == 2
    assert clf.loaded_run().model.test_time == TestTime(tta=2, transduction=1,
                                                        transduction_balance=True,
                                                        fusion_confidence=3)
    assert clf.loaded_run().model.learner.balance
    from metamodal import load_dataset

    dataset = load_dataset(setup["data"])
    rows = {c: [i for i, label in enumerate(dataset.labels) if label == c]
            for c in load_run(setup["plain"]).split.test[:3]}
    support = dataset.subset([r[0] for r in rows.values()])
    query = dataset.subset([i for r in rows.values() for i in r[1:]])
    clf.fit(support, support.labels)
    with pytest.warns(UserWarning, match="spread evenly over the 3 classes"):
        clf.predict(query)  # the balance's assumption is named where it applies
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="transduction_balance")
        clf.predict(query.subset([0, 1]))  # fewer queries than classes: refined unbalanced
        clf.set_params(transduction_balance=False).fit(support, support.labels).predict(query)


class _Kill(Exception):
    pass


def test_resume_with_test_time_settings_is_bit_identical(setup, tmp_path: Path) -> None:
    """Validation runs with tta and balanced transduction; a killed run resumed ends with the
    same weights and the same validation record as an uninterrupted one."""
    from metamodal.train.checkpoint import CHECKPOINT_FILE
    from metamodal.train.trainer import Trainer

    config = TrainConfig(data=str(setup["data"]), modalities=["image", "caption"],
                         fusion="late", steps=6, augment=AUGMENT, tta=2, transduction=1,
                         transduction_balance=True,
                         **{**SMALL, "val_every": 2, "checkpoint_every": 2})
    Trainer(config, tmp_path / "full", progress=False).fit()

    def die(step: int, values: dict) -> None:
        if step == 4:
            raise _Kill

    with pytest.raises(_Kill):
        Trainer(config, tmp_path / "killed", progress=False, callbacks=[die]).fit()
    Trainer(config, tmp_path / "killed", progress=False).fit(resume=True)
    full, resumed = (torch.load(tmp_path / run / CHECKPOINT_FILE, weights_only=False)["model"]
                     for run in ("full", "killed"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)

    def validations(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [row["val_acc"] for row in map(json.loads, lines) if "val_acc" in row]

    assert validations("full") and validations("full") == validations("killed")


def test_adapt_predict_uses_the_same_embeddings_as_evaluation(setup) -> None:
    """An episode run through adapt_predict (as an ensemble member is) gets the logits of
    the embed-once path: both average each sample with its copies."""
    run = load_run(setup["tt"])
    store = load_run_data(run).store
    from metamodal.evaluate.embedding import masked_batch

    names = list(run.model.modalities)
    support = masked_batch(store, torch.arange(4), names, names, {})
    query = masked_batch(store, torch.arange(4, 8), names, names, {})
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        direct = run.model.adapt_predict(support, labels, query, 4)
        embedded = run.model.logits(run.model.embed(support), labels, run.model.embed(query), 4)
        plain = load_run(setup["tt"], test_time={"tta": 0}).model.adapt_predict(
            support, labels, query, 4)
    torch.testing.assert_close(direct, embedded)
    assert not torch.allclose(direct, plain)


def test_tta_with_a_learner_that_adapts_weights_is_refused(setup) -> None:
    with pytest.raises(ConfigError) as error:
        api.train(setup["root"] / "maml", data=str(setup["data"]), modalities=["image"],
                  steps=1, learner="maml", augment=AUGMENT, tta=2, progress=False, **SMALL)
    assert error.value.column == "tta"


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("balance", [False, True])
def test_transduction_is_refinement_steps_driven_by_its_own_assignments(late: bool,
                                                                       balance: bool) -> None:
    """`ProtoNet.refinement` starts from the plain logits, and stepping it with
    `soft_assignment` of its own logits is the learner's transduction, step for step: the
    path an ensemble drives from outside (joint transduction) is the same arithmetic."""
    torch.manual_seed(2)
    views = 2 if late else 1
    support = torch.randn(6, views, 4, dtype=torch.float64)
    query = torch.randn(6, views, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    backbone = torch.nn.Module()
    backbone.fusion = LateFusion(modalities=["a", "b"], dim=4).double()
    if late:
        s = Embeddings(support, torch.ones(6, 2, dtype=torch.bool))
        q = Embeddings(query, torch.ones(6, 2, dtype=torch.bool))
    else:
        s = Embeddings(support[:, 0], torch.ones(6, 1, dtype=torch.bool))
        q = Embeddings(query[:, 0], torch.ones(6, 1, dtype=torch.bool))
    head = ProtoNet().double().eval()
    refinement = head.refinement(backbone, s, labels, q, 3)
    torch.testing.assert_close(refinement.logits(), head.logits(backbone, s, labels, q, 3))
    head.transduction, head.balance = 3, balance
    for _ in range(3):
        refinement.step(soft_assignment(refinement.logits(), balance=balance))
    torch.testing.assert_close(refinement.logits(), head.logits(backbone, s, labels, q, 3),
                               rtol=0, atol=1e-12)

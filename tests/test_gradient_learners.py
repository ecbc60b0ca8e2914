"""The optimisation-based learners: meta-gradients against independent autograd loops (float64),
Reptile against its definition, BatchNorm and masking inside the inner loop, typed errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metamodal.config import TrainConfig
from metamodal.data.batch import Episode, ModalityBatch
from metamodal.errors import ConfigError, InsufficientSamplesError
from metamodal.learners import learners
from metamodal.learners.inner_loop import masked_cross_entropy, sgd_step
from metamodal.model import FewShotModel

pytestmark = pytest.mark.usefixtures("one_thread")

WAYS, SHOTS, QUERIES, FEATURES, HIDDEN, DIM = 3, 2, 4, 3, 5, 4


def build(learner: str, **options) -> FewShotModel:
    """A float64 model over one tabular modality: Linear(3, 5) -> ReLU -> Linear(5, 4) ->
    output layer (zero at the start of every task)."""
    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds={"m": "tabular"}, input_info={"m": {"features": FEATURES}}, dim=DIM,
        fusion="mean", learner=learner, encoder_options={"m": {"hidden": [HIDDEN]}},
        learner_options=options,
    ).double()
    return model.train()


def backbone_weights(model: FewShotModel) -> list[Tensor]:
    """The four weights of the backbone, in order."""
    return list(model.backbone.parameters())


def episode(seed: int) -> Episode:
    generator = torch.Generator().manual_seed(seed)

    def batch(n: int) -> dict[str, ModalityBatch]:
        values = torch.randn(n, FEATURES, generator=generator, dtype=torch.float64)
        return {"m": ModalityBatch(values, torch.ones(n, dtype=torch.bool))}

    labels = torch.arange(WAYS)
    return make_episode(batch(WAYS * SHOTS), labels.repeat_interleave(SHOTS),
                        batch(WAYS * QUERIES), labels.repeat_interleave(QUERIES))


def make_episode(support: dict, support_labels: Tensor, query: dict,
                 query_labels: Tensor) -> Episode:
    ways = int(support_labels.max()) + 1
    return Episode(support, query, support_labels, query_labels,
                   classes=[str(k) for k in range(ways)],
                   support_ids=[f"s{i}" for i in range(len(support_labels))],
                   query_ids=[f"q{i}" for i in range(len(query_labels))])


# ------------------------------------------------------------- an independent MAML, by hand


def plain_net(params: list[Tensor], x: Tensor) -> Tensor:
    """Linear -> ReLU -> Linear -> output layer."""
    w1, b1, w2, b2, weight, bias = params
    return (F.relu(x @ w1.T + b1) @ w2.T + b2) @ weight.T + bias


def zero_head() -> list[Tensor]:
    return [torch.zeros(WAYS, DIM, dtype=torch.float64, requires_grad=True),
            torch.zeros(WAYS, dtype=torch.float64, requires_grad=True)]


def plain_meta_gradient(model: FewShotModel, episodes: list[Episode], *, steps: int, lr,
                        second_order: bool, head_only: bool = False) -> list[Tensor]:
    """The mean query loss after ``steps`` SGD steps per task, differentiated by a plain
    autograd loop over tasks; ``lr`` one number or one tensor per weight (4 backbone weights,
    then the output layer's weight and bias)."""
    theta = [p.detach().clone().requires_grad_() for p in backbone_weights(model)]
    rates = lr if isinstance(lr, list) else [lr] * 6
    total = 0.0
    for ep in episodes:
        xs, xq = ep.support["m"].values, ep.query["m"].values
        fast = zero_head()
        if head_only:
            zs = F.relu(xs @ theta[0].T + theta[1]) @ theta[2].T + theta[3]
            zq = F.relu(xq @ theta[0].T + theta[1]) @ theta[2].T + theta[3]
            for _ in range(steps):
                loss = F.cross_entropy(zs @ fast[0].T + fast[1], ep.support_labels)
                grads = torch.autograd.grad(loss, fast, create_graph=second_order)
                fast = [p - r * g for p, r, g in zip(fast, rates[4:], grads, strict=True)]
            total = total + F.cross_entropy(zq @ fast[0].T + fast[1], ep.query_labels)
            continue
        fast = theta + fast
        for _ in range(steps):
            loss = F.cross_entropy(plain_net(fast, xs), ep.support_labels)
            grads = torch.autograd.grad(loss, fast, create_graph=second_order)
            fast = [p - r * g for p, r, g in zip(fast, rates, grads, strict=True)]
        total = total + F.cross_entropy(plain_net(fast, xq), ep.query_labels)
    return list(torch.autograd.grad(total / len(episodes), theta))


def learner_meta_gradient(model: FewShotModel, episodes: list[Episode]) -> list[Tensor]:
    """What the trainer does: one backward per task of ``loss / tasks``; the backbone's
    meta-gradient."""
    model.zero_grad(set_to_none=True)
    for ep in episodes:
        loss, _ = model.loss(ep)
        (loss / len(episodes)).backward()
    return [p.grad for p in backbone_weights(model)]


def max_difference(a: list[Tensor], b: list[Tensor]) -> float:
    return max(float((x - y).detach().abs().max()) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("name", "second_order"), [("maml", True), ("fomaml", False)])
def test_maml_meta_gradient_equals_a_plain_autograd_loop(name: str, second_order: bool) -> None:
    model = build(name, inner_steps=3, inner_lr=0.3)
    tasks = [episode(1), episode(2)]
    ours = learner_meta_gradient(model, tasks)
    plain = plain_meta_gradient(model, tasks, steps=3, lr=0.3, second_order=second_order)
    assert max_difference(ours, plain) < 1e-6
    assert all(float(g.abs().max()) > 1e-4 for g in ours)  # every term is exercised


def test_second_and_first_order_differ_where_they_must() -> None:
    tasks = [episode(1)]
    second = learner_meta_gradient(build("maml", inner_steps=2, inner_lr=0.5), tasks)
    first = learner_meta_gradient(build("fomaml", inner_steps=2, inner_lr=0.5), tasks)
    # the encoder's first layer feels the Hessian terms
    assert float((second[0] - first[0]).abs().max()) > 1e-4
    plain_first = plain_meta_gradient(build("maml"), tasks, steps=2, lr=0.5, second_order=False)
    assert max_difference(first, plain_first) < 1e-6


def test_anil_adapts_only_the_output_layer() -> None:
    model = build("anil", inner_steps=4, inner_lr=0.4)
    tasks = [episode(3), episode(4)]
    ours = learner_meta_gradient(model, tasks)
    plain = plain_meta_gradient(model, tasks, steps=4, lr=0.4, second_order=True,
                                head_only=True)
    assert max_difference(ours, plain) < 1e-6


def test_metasgd_learns_its_rates_and_matches_a_plain_loop() -> None:
    model = build("metasgd", inner_steps=2, inner_lr=0.2)
    rates = model.learner.rates
    with torch.no_grad():  # distinct rates per weight, so that the test sees them used
        for rate in rates.values():
            rate.uniform_(0.1, 0.4)
    names = ["backbone__encoders__m__net__0__weight", "backbone__encoders__m__net__0__bias",
             "backbone__encoders__m__net__3__weight", "backbone__encoders__m__net__3__bias",
             "head__weight", "head__bias"]
    names = [n.removeprefix("backbone__") for n in names]
    assert sorted(rates) == sorted(names)
    tasks = [episode(5)]
    ours = learner_meta_gradient(model, tasks)
    lr = [rates[n].detach().clone().requires_grad_() for n in names]
    plain = plain_meta_gradient(model, tasks, steps=2, lr=lr, second_order=True)
    assert max_difference(ours, plain) < 1e-6
    # the rates get meta-gradients too
    assert all(rates[n].grad is not None and float(rates[n].grad.abs().max()) > 0 for n in names)


def test_reptile_equals_its_definition() -> None:
    model = build("reptile", inner_steps=3, inner_lr=1.0)
    ep = episode(6)
    theta = [p.detach().clone() for p in backbone_weights(model)]
    # phi: plain SGD on all of the episode's samples, by hand
    x = torch.cat([ep.support["m"].values, ep.query["m"].values])
    y = torch.cat([ep.support_labels, ep.query_labels])
    fast = [t.clone().requires_grad_() for t in theta] + zero_head()
    for _ in range(3):
        grads = torch.autograd.grad(F.cross_entropy(plain_net(fast, x), y), fast)
        fast = [(p - 1.0 * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)]
    phi = [p.detach() for p in fast[:4]]
    epsilon = 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=epsilon)
    optimizer.zero_grad()
    loss, logits = model.loss(ep)
    loss.backward()
    optimizer.step()
    expected = [t + epsilon * (f - t) for t, f in zip(theta, phi, strict=True)]
    assert max_difference(backbone_weights(model), expected) < 1e-9
    assert float((phi[0] - theta[0]).abs().max()) > 1e-4  # the task moved the weights
    assert logits.shape == (WAYS * QUERIES, WAYS)


def test_lstm_optimizer_meta_gradient_reaches_its_own_weights() -> None:
    model = build("lstm-optimizer", inner_steps=3, inner_lr=0.1)
    loss, _ = model.loss(episode(7))
    loss.backward()
    own = dict(model.learner.named_parameters())
    for name in ("cell.weight_ih", "cell.weight_hh", "cell.bias_ih", "proposal.weight",
                 "log_lr"):
        assert own[name].grad is not None and float(own[name].grad.abs().max()) > 0, name
    # the backbone's initial weights are meta-learned too
    first = backbone_weights(model)[0]
    assert first.grad is not None and float(first.grad.abs().max()) > 0


def test_maml_plus_plus_multi_step_loss_and_per_step_rates() -> None:
    model = build("maml++", inner_steps=3, inner_lr=0.2, msl_until=0.5,
                  first_order_until=0.0)
    weights_start = model.learner.loss_weights(3)
    model.learner.on_step(0, 100)
    weights_start = model.learner.loss_weights(3)
    model.learner.on_step(60, 100)
    weights_late = model.learner.loss_weights(3)
    assert torch.allclose(weights_start, torch.full((3,), 1 / 3))
    assert weights_late.tolist() == [0.0, 0.0, 1.0]
    model.learner.on_step(0, 100)
    loss, _ = model.loss(episode(8))
    loss.backward()
    rates = model.learner.rates["head__weight"]
    assert rates.shape == (3,) and bool((rates.grad.abs() > 0).all())


def test_batch_norm_running_statistics_stay_untouched() -> None:
    torch.manual_seed(0)
    model = FewShotModel.build(kinds={"img": "image"}, input_info={"img": {
        "channels": 1, "height": 8, "width": 8}}, dim=8, fusion="mean", learner="maml",
        encoder_options={"img": {"hidden": 4}}, learner_options={"inner_steps": 2}).train()
    before = {n: b.clone() for n, b in model.named_buffers()}
    labels = torch.arange(2).repeat_interleave(2)
    support = {"img": ModalityBatch(torch.randn(4, 1, 8, 8), torch.ones(4, dtype=torch.bool))}
    loss, _ = model.loss(make_episode(support, labels, support, labels))
    loss.backward()
    model.eval()
    with torch.no_grad():
        model.adapt_predict(support, labels, support, 2)
    after = dict(model.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not model.training  # evaluation mode restored


def test_absent_modalities_are_masked_inside_the_inner_loop() -> None:
    torch.manual_seed(0)
    model = FewShotModel.build(kinds={"a": "tabular", "b": "tabular"}, input_info={
        "a": {"features": 3}, "b": {"features": 2}}, dim=4, fusion="gated", learner="maml",
        learner_options={"inner_steps": 2}).double().eval()
    present_b = torch.tensor([True, False, True, False, True, True])
    a = ModalityBatch(torch.randn(6, 3, dtype=torch.float64), torch.ones(6, dtype=torch.bool))

    def run(fill: float) -> Tensor:
        values = torch.randn(6, 2, dtype=torch.float64)
        values[~present_b] = fill
        batch = {"a": a, "b": ModalityBatch(values if fill == 0 else values.clone(), present_b)}
        torch.manual_seed(1)
        batch["b"].values[present_b] = torch.randn(4, 2, dtype=torch.float64)
        with torch.no_grad():
            return model.adapt_predict(batch, torch.tensor([0, 1, 2, 0, 1, 2]), batch, 3)

    clean = run(0.0)
    assert torch.allclose(run(float("nan")), clean) and torch.allclose(run(1e6), clean)


def recomputing(model: FewShotModel) -> FewShotModel:
    """``model`` with an inner update that is plain SGD but not the class's own: the inner loop
    then updates every weight at every step and embeds the support set again at each one."""
    learner = model.learner

    class Recomputing(type(learner)):  # type: ignore[misc]
        def update(self, step, params, grads):
            return sgd_step(params, grads, self.steps_and_lr()[1])

    learner.__class__ = Recomputing
    assert not learner._plain_sgd()
    return model


def multimodal(learner: str, fusion: str, dropout: float = 0.0) -> FewShotModel:
    torch.manual_seed(0)
    return FewShotModel.build(
        kinds={"a": "tabular", "b": "tabular"}, input_info={"a": {"features": 3},
                                                             "b": {"features": 2}},
        dim=4, fusion=fusion, learner=learner, learner_options={"inner_steps": 3},
        encoder_options={"a": {"hidden": [5], "dropout": dropout}},
    ).double().train()


def multimodal_episode(seed: int, everyone: bool) -> Episode:
    """Two modalities; ``b`` is missing from some samples, and with ``everyone`` False ``a``
    too, so that one support sample and one query have no modality at all."""
    g = torch.Generator().manual_seed(seed)

    def batch(n: int) -> dict[str, ModalityBatch]:
        has_b = torch.rand(n, generator=g) < 0.6
        has_a = torch.ones(n, dtype=torch.bool)
        if not everyone:
            has_a[1] = has_b[1] = False
            has_a[2] = False
            has_b[2] = True
        return {"a": ModalityBatch(torch.randn(n, 3, generator=g, dtype=torch.float64), has_a),
                "b": ModalityBatch(torch.randn(n, 2, generator=g, dtype=torch.float64), has_b)}

    labels = torch.arange(WAYS)
    return make_episode(batch(WAYS * SHOTS), labels.repeat_interleave(SHOTS),
                        batch(WAYS * QUERIES), labels.repeat_interleave(QUERIES))


@pytest.mark.parametrize("fusion", ["mean", "gated", "late"])
@pytest.mark.parametrize("learner", ["maml", "fomaml", "reptile"])
@pytest.mark.parametrize(("everyone", "dropout"), [(True, 0.0), (False, 0.0), (True, 0.3)])
def test_reusing_the_first_steps_embeddings_changes_nothing(learner: str, fusion: str,
                                                            everyone: bool,
                                                            dropout: float) -> None:
    """Plain SGD keeps the backbone's weights through the first step and the second step reuses
    its support embeddings (not with dropout, which embeds again): the same meta-gradient and
    predictions as updating every weight and embedding again at every step, with and without
    absent modalities."""
    tasks = [multimodal_episode(1, everyone), multimodal_episode(2, everyone)]
    fast = multimodal(learner, fusion, dropout)
    slow = recomputing(multimodal(learner, fusion, dropout))
    assert fast.learner._plain_sgd()
    gradients = []
    for model in (fast, slow):
        torch.manual_seed(5)  # the same dropout masks on both sides
        model.zero_grad(set_to_none=True)
        for ep in tasks:
            loss, _ = model.loss(ep)
            (loss / len(tasks)).backward()
        gradients.append([p.grad for p in model.backbone.parameters() if p.grad is not None])
    assert len(gradients[0]) == len(gradients[1]) > 0
    assert max_difference(*gradients) < 1e-12
    with torch.no_grad():
        predicted = [m.eval().episode_logits(tasks[0]) for m in (fast, slow)]
    assert max_difference(predicted[0:1], predicted[1:2]) < 1e-12


@pytest.mark.parametrize(("dropout", "expected"), [(0.0, 3), (0.3, 4)])
def test_support_embeddings_are_reused_only_without_randomness(dropout: float,
                                                                expected: int) -> None:
    """Three inner steps embed the support set twice (the second step reuses the first one's
    embeddings), then the query once; with dropout every step embeds again."""
    model = multimodal("maml", "mean", dropout)
    calls: list[int] = []
    model.backbone.encoders["a"].register_forward_hook(lambda *_: calls.append(1))
    model.loss(multimodal_episode(3, True))
    assert len(calls) == expected


@pytest.mark.parametrize("fusion", ["mean", "late"])
@pytest.mark.parametrize("everyone", [True, False])
def test_one_evaluation_step_embeds_without_a_graph_what_the_inner_loop_embeds(
        fusion: str, everyone: bool) -> None:
    """One plain SGD step from the zero output layer leaves the backbone's weights as they are,
    so evaluation embeds the support and the query with the backbone itself, each in its own
    pass (BatchNorm on each one's statistics, as in the inner loop) and without a graph: the
    same logits as updating every weight and embedding with the updated ones (float64, a
    conv4 image encoder with BatchNorm beside a tabular one, with absent modalities)."""
    def image_model() -> FewShotModel:
        torch.manual_seed(0)
        return FewShotModel.build(
            kinds={"a": "image", "b": "tabular"},
            input_info={"a": {"channels": 1, "height": 8, "width": 8}, "b": {"features": 2}},
            dim=4, fusion=fusion, learner="maml", encoder_options={"a": {"hidden": 3}},
            learner_options={"inner_steps": 2, "eval_steps": 1, "eval_lr": 0.5},
        ).double().eval()

    tabular = multimodal_episode(4, everyone)
    g = torch.Generator().manual_seed(4)

    def with_images(batch: dict[str, ModalityBatch]) -> dict[str, ModalityBatch]:
        values = torch.randn(len(batch["a"].present), 1, 8, 8, generator=g, dtype=torch.float64)
        return {"a": ModalityBatch(values, batch["a"].present), "b": batch["b"]}

    task = make_episode(with_images(tabular.support), tabular.support_labels,
                        with_images(tabular.query), tabular.query_labels)
    fast, slow = image_model(), recomputing(image_model())
    recorded: list[bool] = []
    fast.backbone.encoders["a"].register_forward_hook(
        lambda module, args, out: recorded.append(out.requires_grad))
    with torch.no_grad():
        logits = [model.episode_logits(task) for model in (fast, slow)]
    assert recorded == [False, False]  # support and query, each once, no graph
    assert max_difference(logits[0:1], logits[1:2]) < 1e-12
    assert float(logits[0].std()) > 0  # the output layer did adapt


def test_masked_cross_entropy_without_a_mask_is_the_all_kept_one() -> None:
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    masked = masked_cross_entropy(logits, labels, torch.ones(6, dtype=torch.bool))
    plain = masked_cross_entropy(logits, labels, None)
    assert torch.equal(masked, plain)
    assert torch.equal(torch.autograd.grad(masked, logits)[0],
                       torch.autograd.grad(plain, logits)[0])


def test_one_model_serves_any_number_of_ways() -> None:
    model = build("maml", inner_steps=1).eval()
    batch = {"m": ModalityBatch(torch.randn(10, FEATURES, dtype=torch.float64),
                                torch.ones(10, dtype=torch.bool))}
    with torch.no_grad():
        logits = model.adapt_predict(batch, torch.arange(5).repeat(2), batch, 5)
    assert logits.shape == (10, 5) and torch.isfinite(logits).all()


def test_evaluation_adapts_without_a_graph_and_with_its_own_steps() -> None:
    model = build("maml", inner_steps=1, inner_lr=0.1, eval_steps=4, eval_lr=0.3).eval()
    ep = episode(9)
    with torch.no_grad():
        logits = model.episode_logits(ep)
    assert not logits.requires_grad
    fast = [p.detach().clone().requires_grad_() for p in backbone_weights(model)] + zero_head()
    for _ in range(4):
        grads = torch.autograd.grad(F.cross_entropy(plain_net(fast, ep.support["m"].values),
                                                    ep.support_labels), fast)
        fast = [(p - 0.3 * g).detach().requires_grad_() for p, g in zip(fast, grads, strict=True)]
    expected = plain_net(fast, ep.query["m"].values)
    assert torch.allclose(logits, expected, atol=1e-9)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("options", "key"), [
    ({"inner_steps": 0}, "inner_steps"), ({"inner_steps": -2}, "inner_steps"),
    ({"inner_steps": 1.5}, "inner_steps"), ({"eval_steps": 0}, "eval_steps"),
    ({"inner_lr": 0.0}, "inner_lr"), ({"inner_lr": -0.1}, "inner_lr"),
    ({"eval_lr": float("nan")}, "eval_lr"), ({"adapt": 3}, "adapt"),
])
def test_bad_inner_loop_options_are_typed_errors(options: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key) as info:
        learners.create("maml", dim=4, **options)
    assert info.value.column == f"learner_options.{key}" and info.value.fix


def test_adapting_a_modality_the_model_lacks_is_a_typed_error() -> None:
    with pytest.raises(ConfigError, match="sound") as info:
        build("maml", adapt=["sound"])
    assert "adapt" in str(info.value)


def test_reptile_cannot_be_second_order_or_adapt_no_backbone_weight() -> None:
    with pytest.raises(ConfigError, match="first order"):
        learners.create("reptile", dim=4, first_order=False)
    with pytest.raises(ConfigError, match="adapts none"):
        build("reptile", adapt="head")


def test_meta_batch_zero_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="meta_batch"):
        TrainConfig(data="x", meta_batch=0).validate()


def test_lstm_optimizer_refuses_too_many_coordinates() -> None:
    with pytest.raises(ConfigError, match="max_coordinates"):
        build("lstm-optimizer", max_coordinates=10)
    assert build("lstm-optimizer", max_coordinates=10, adapt="head") is not None


def test_a_class_without_support_is_a_typed_error() -> None:
    model = build("maml")
    ep = episode(1)
    with pytest.raises(InsufficientSamplesError):
        model.adapt_predict(ep.support, torch.zeros(WAYS * SHOTS, dtype=torch.long), ep.query,
                            WAYS)


def test_precomputed_embeddings_are_refused_for_weight_adapting_learners() -> None:
    model = build("maml")
    ep = episode(1)
    embedded = model.embed(ep.support)
    with pytest.raises(ConfigError, match="adapt_predict"):
        model.logits(embedded, ep.support_labels, embedded, WAYS)


def test_swapping_weights_in_place_equals_functional_call(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """The inner loop swaps the task's weights into the backbone's parameter slots; a
    recurrent encoder (whose flat weights are refreshed from them) gives the meta-gradient of
    `torch.func.functional_call`."""
    import metamodal.learners.gradient as gradient_module

    torch.manual_seed(0)
    model = FewShotModel.build(
        kinds={"t": "text"}, input_info={"t": {"vocab_size": 20, "max_length": 6}}, dim=4,
        encoders={"t": "gru"}, fusion="mean", learner="maml",
        learner_options={"inner_steps": 3}).double().train()
    tokens = torch.randint(1, 20, (6, 6), generator=torch.Generator().manual_seed(1))
    batch = {"t": ModalityBatch(tokens, torch.ones(6, dtype=torch.bool), torch.full((6,), 6))}
    labels = torch.arange(3).repeat(2)
    ep = make_episode(batch, labels, batch, labels)
    found = []
    for slots in (True, False):
        if not slots:
            monkeypatch.setattr(gradient_module, "parameter_slots", lambda backbone: None)
        model.zero_grad(set_to_none=True)
        model.loss(ep)[0].backward()
        found.append([p.grad for p in model.backbone.parameters()])
    assert max_difference(*found) == 0.0
    assert all(isinstance(p, torch.nn.Parameter) for p in model.backbone.parameters())

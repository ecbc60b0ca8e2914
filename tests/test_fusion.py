"""Fusion modules: shapes, masking of absent modalities, gradients, registry checks, learning."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from metamodal.errors import ConfigError, ModalityError, UnknownNameError
from metamodal.fusion import Fusion, build_fusion, fusions, masked_softmax
from metamodal.fusion.tensor import default_rank_dim

torch.set_num_threads(1)

MODALITIES = ["image", "text", "audio"]
DIM = 8
CASES: list[tuple[str, dict[str, Any]]] = [
    ("concat", {}),
    ("concat", {"missing": "indicator", "hidden": 8}),
    ("mean", {}),
    ("gated", {"hidden": 8}),
    ("attention", {"heads": 2}),
    ("attention", {"heads": 2, "layers": 2, "pool": "mean"}),
    ("tensor", {"rank_dim": 3}),
    ("tensor", {"hidden": 6}),
    ("lowrank", {"rank": 3}),
    ("late", {}),
    ("late", {"project": True}),
]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, hyper = case
    return name + "".join(f"-{k}={v}" for k, v in hyper.items())


def build(case: tuple[str, dict[str, Any]], modalities: list[str] = MODALITIES) -> Fusion:
    torch.manual_seed(0)
    name, hyper = case
    return build_fusion(name, modalities=modalities, dim=DIM, **hyper)


# rows: all present, one absent, only one present, none present, two absent, all present
PRESENT = {
    "image": torch.tensor([True, True, True, False, False, True]),
    "text": torch.tensor([True, False, False, False, True, True]),
    "audio": torch.tensor([True, True, False, False, False, True]),
}


def embeddings(generator: torch.Generator, fill: str = "zeros") -> dict[str, torch.Tensor]:
    """Random embeddings; absent rows hold zeros, random values or NaN as ``fill`` says."""
    out = {}
    for name, present in PRESENT.items():
        z = torch.randn(len(present), DIM, generator=generator)
        junk = {"zeros": torch.zeros(len(present), DIM),
                "random": torch.randn(len(present), DIM, generator=generator) * 50,
                "nan": torch.full((len(present), DIM), float("nan"))}[fill]
        out[name] = torch.where(present.unsqueeze(1), z, junk)
    return out


def test_every_registered_fusion_is_tested() -> None:
    assert {name for name, _ in CASES} == set(fusions.names())
    assert set(fusions.names()) == {"concat", "mean", "gated", "attention", "tensor",
                                    "lowrank", "late"}


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_output_shape_and_late_flag(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case)
    out = fusion(embeddings(torch.Generator().manual_seed(0)), PRESENT)
    assert fusion.late == (case[0] == "late")
    assert fusion.out_dim == DIM
    if fusion.late:
        assert out.shape == (6, len(MODALITIES), DIM)
    else:
        assert out.shape == (6, DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_values_of_absent_modalities_never_matter(
    case: tuple[str, dict[str, Any]], train: bool
) -> None:
    fusion = build(case).train(train)
    outs = [fusion(embeddings(torch.Generator().manual_seed(1), fill), PRESENT)
            for fill in ("zeros", "random", "nan")]
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2])


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_absent_modalities_do_change_nothing_but_present_ones_do(
    case: tuple[str, dict[str, Any]]
) -> None:
    fusion = build(case).eval()
    g = torch.Generator().manual_seed(2)
    base = embeddings(g)
    moved = dict(base, text=base["text"] + 1.0)
    before, after = fusion(base, PRESENT), fusion(moved, PRESENT)
    if fusion.late:
        before, after = before[:, 1], after[:, 1]
    text_present = PRESENT["text"]
    assert torch.all((before[text_present] - after[text_present]).abs().sum(-1) > 0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sample_without_any_modality_gives_zeros(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case)
    out = fusion(embeddings(torch.Generator().manual_seed(3)), PRESENT)
    assert torch.all(out[3] == 0)  # row 3 has no modality


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_modality_left_out_of_the_dict_is_absent(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case).eval()
    z = embeddings(torch.Generator().manual_seed(4))
    without = {k: v for k, v in z.items() if k != "audio"}
    present_without = {k: v for k, v in PRESENT.items() if k != "audio"}
    explicit = dict(PRESENT, audio=torch.zeros(6, dtype=torch.bool))
    torch.testing.assert_close(fusion(without, present_without), fusion(z, explicit))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradient_reaches_every_parameter(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case)
    g = torch.Generator().manual_seed(5)
    z = {k: v.requires_grad_() for k, v in embeddings(g).items()}
    out = fusion(z, PRESENT)
    if fusion.late:
        logits = out @ torch.randn(DIM, 4, generator=g)  # [B, M, 4]
        valid = torch.stack([PRESENT[m] for m in MODALITIES], 1)
        out = fusion.combine(logits, valid)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    for name, value in z.items():
        assert torch.all(value.grad[~PRESENT[name]] == 0), name
        assert torch.all(value.grad[PRESENT[name]].abs().sum(1) > 0), name


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_nan_in_absent_rows_gives_finite_gradients(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case)
    z = embeddings(torch.Generator().manual_seed(6), "nan")
    z = {k: v.requires_grad_() for k, v in z.items()}
    fusion(z, PRESENT).sum().backward()
    for name, parameter in fusion.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name
    for name, value in z.items():
        assert torch.isfinite(value.grad).all(), name


def test_wrong_inputs_raise_modality_error() -> None:
    fusion = build(("mean", {}))
    with pytest.raises(ModalityError, match="video"):
        fusion({"video": torch.zeros(2, DIM)}, {})
    with pytest.raises(ModalityError, match=r"\(2, 5\)"):
        fusion({"image": torch.zeros(2, 5)}, {})
    with pytest.raises(ModalityError, match="no embeddings"):
        fusion({}, {})


def test_registry_and_hyperparameter_errors() -> None:
    with pytest.raises(UnknownNameError) as info:
        fusions.create("bilinear", modalities=MODALITIES, dim=DIM)
    for name in fusions.names():
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="hidden=32"):
        build_fusion("gated", modalities=MODALITIES, dim=DIM, width=3)
    with pytest.raises(ConfigError, match="divisible"):
        build_fusion("attention", modalities=MODALITIES, dim=DIM, heads=3)
    with pytest.raises(ConfigError, match="distinct"):
        build_fusion("mean", modalities=["a", "a"], dim=DIM)
    with pytest.raises(ConfigError, match="lowrank"):
        build_fusion("tensor", modalities=list("abcde"), dim=DIM, rank_dim=15)
    with pytest.raises(ConfigError, match="indicator"):
        build_fusion("concat", modalities=MODALITIES, dim=DIM, missing="drop")


def test_masked_softmax_handles_rows_without_valid_entries() -> None:
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    weights = masked_softmax(scores, mask)
    expected = torch.softmax(torch.tensor([1.0, 3.0]), 0)
    torch.testing.assert_close(weights[0, [0, 2]], expected)
    assert weights[0, 1] == 0 and torch.all(weights[1] == 0)
    (weights * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_mean_is_the_masked_mean() -> None:
    fusion = build(("mean", {}))
    z = embeddings(torch.Generator().manual_seed(7), "random")
    out = fusion(z, PRESENT)
    torch.testing.assert_close(out[1], (z["image"][1] + z["audio"][1]) / 2)
    torch.testing.assert_close(out[2], z["image"][2])
    torch.testing.assert_close(out[0], (z["image"][0] + z["text"][0] + z["audio"][0]) / 3)


def test_gated_weights_are_a_softmax_over_present_modalities() -> None:
    fusion = build(("gated", {}))
    z = embeddings(torch.Generator().manual_seed(8))
    out = fusion(z, PRESENT)
    weights = fusion.last_weights
    mask = torch.stack([PRESENT[m] for m in MODALITIES], 1)
    assert weights.shape == (6, 3)
    assert torch.all(weights[~mask] == 0)
    torch.testing.assert_close(weights.sum(1), mask.any(1).float())
    stacked = torch.stack([z[m] for m in MODALITIES], 1)
    torch.testing.assert_close(out, (weights.unsqueeze(-1) * stacked).sum(1))


def test_concat_token_mode_puts_the_learned_token_in_absent_slots() -> None:
    fusion = build(("concat", {}))
    z = embeddings(torch.Generator().manual_seed(9))
    out = fusion(z, PRESENT)
    slots = torch.cat([z["image"][1], fusion.missing_tokens[1], z["audio"][1]])
    torch.testing.assert_close(out[1], fusion.project(slots))


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_attention_output_equals_attention_over_present_tokens_only(pool: str) -> None:
    fusion = build(("attention", {"heads": 2, "pool": pool})).eval()
    z = embeddings(torch.Generator().manual_seed(16))
    out = fusion(z, PRESENT)
    for row in range(6):
        kept = [m for m, name in enumerate(MODALITIES) if PRESENT[name][row]]
        if not kept:
            continue
        tokens = [fusion.cls[0, 0]] + [z[MODALITIES[m]][row] + fusion.type_embedding[m]
                                       for m in kept]
        alone = fusion.encoder(torch.stack(tokens).unsqueeze(0))[0]
        expected = alone[0] if pool == "cls" else alone[1:].mean(0)
        torch.testing.assert_close(out[row], expected)


def test_tensor_fusion_is_the_outer_product_with_a_constant_one() -> None:
    fusion = build(("tensor", {"rank_dim": 2}), ["a", "b"])
    with torch.no_grad():
        fusion.reduce_bias.normal_()  # an absent modality must still become [0, 0; 1]
    g = torch.Generator().manual_seed(10)
    za, zb = torch.randn(3, DIM, generator=g), torch.randn(3, DIM, generator=g)
    present = {"a": torch.ones(3, dtype=torch.bool), "b": torch.tensor([True, False, True])}
    small_a = za @ fusion.reduce[0] + fusion.reduce_bias[0]
    small_b = zb @ fusion.reduce[1] + fusion.reduce_bias[1]
    one = torch.ones(3, 1)
    ha, hb = torch.cat([small_a, one], 1), torch.cat([small_b, one], 1)
    hb[1] = torch.tensor([0.0, 0.0, 1.0])  # absent -> [0, 0; 1]
    expected = torch.einsum("bi,bj->bij", ha, hb).flatten(1)
    stacked = torch.stack([za, zb], 1) * torch.stack([present["a"], present["b"]], 1)[..., None]
    mask = torch.stack([present["a"], present["b"]], 1)
    torch.testing.assert_close(fusion.product(stacked, mask), expected)
    torch.testing.assert_close(fusion({"a": za, "b": zb}, present), fusion.project(expected))


def test_default_rank_dim_keeps_the_product_small() -> None:
    for count in range(1, 7):
        r = default_rank_dim(count)
        assert (r + 1) ** count <= 4096 and r >= 1
    fusion = build_fusion("tensor", modalities=list("abcde"), dim=DIM)
    assert fusion.features == 5**5


def test_lowrank_equals_tensor_fusion_with_the_rebuilt_weight() -> None:
    fusion = build(("lowrank", {"rank": 3}), ["a", "b"])
    g = torch.Generator().manual_seed(11)
    za, zb = torch.randn(4, DIM, generator=g), torch.randn(4, DIM, generator=g)
    present = {"a": torch.ones(4, dtype=torch.bool), "b": torch.tensor([True, False, True, True])}
    out = fusion({"a": za, "b": zb}, present)
    factors, weights = fusion.factors.detach(), fusion.fusion_weights.detach()[0]
    # the full tensor-fusion weight that the factors stand for: [dim+1, dim+1, dim]
    full = torch.einsum("r,rio,rjo->ijo", weights, factors[0], factors[1])
    one = torch.ones(4, 1)
    ha = torch.cat([za, one], 1)
    hb = torch.cat([zb * present["b"][:, None], one], 1)
    expected = torch.einsum("bi,bj,ijo->bo", ha, hb, full) + fusion.fusion_bias.detach()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_late_combine_mixes_valid_modalities_only() -> None:
    fusion = build(("late", {}))
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.0, 1.0, 2.0]))
    logits = torch.randn(4, 3, 5)
    logits[1, 2] = float("nan")
    valid = torch.tensor([[True, True, True], [True, True, False], [False, False, True],
                          [False, False, False]])
    out = fusion.combine(logits, valid)
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(out[0], (w[:, None] * logits[0]).sum(0))
    w2 = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    torch.testing.assert_close(out[1], (w2[:, None] * logits[1, :2]).sum(0))
    torch.testing.assert_close(out[2], logits[2, 2])
    assert torch.all(out[3] == 0)
    assert fusion.last_weights.shape == (4, 3)


def test_late_forward_stacks_in_modality_order() -> None:
    fusion = build(("late", {}))
    z = embeddings(torch.Generator().manual_seed(12))
    out = fusion(z, PRESENT)
    for m, name in enumerate(MODALITIES):
        torch.testing.assert_close(out[:, m], z[name])


def two_modality_task(generator: torch.Generator, size: int = 64, noise_b: float = 0.5
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
    """Two classes; modality ``a`` and ``b`` each carry the class with noise; random
    missingness, every sample keeps at least one modality."""
    labels = torch.arange(size) % 2
    centres = torch.randn(2, 2, DIM, generator=generator) * 1.5
    za = centres[0, labels] + 0.5 * torch.randn(size, DIM, generator=generator)
    zb = centres[1, labels] + noise_b * torch.randn(size, DIM, generator=generator)
    drop = torch.randint(0, 3, (size,), generator=generator)  # 0 none, 1 a, 2 b dropped
    present = {"a": drop != 1, "b": drop != 2}
    return {"a": za, "b": zb}, present, labels


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fusion_learns_a_toy_task(case: tuple[str, dict[str, Any]]) -> None:
    fusion = build(case, ["a", "b"])
    head = nn.Linear(DIM, 2)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(13)
    z, present, labels = two_modality_task(g)

    def logits_of(z: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        out = fusion(z, present)
        if fusion.late:
            valid = torch.stack([present["a"], present["b"]], 1)
            return fusion.combine(head(out), valid)
        return head(out)

    for _ in range(60):
        loss = nn.functional.cross_entropy(logits_of(z, present), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (logits_of(z, present).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.9


def test_gated_fusion_learns_to_trust_the_informative_modality() -> None:
    torch.manual_seed(0)
    fusion = build_fusion("gated", modalities=["signal", "noise"], dim=DIM, hidden=8)
    head = nn.Linear(DIM, 2)
    optimizer = torch.optim.Adam([*fusion.parameters(), *head.parameters()], lr=1e-2)
    g = torch.Generator().manual_seed(14)
    labels = torch.arange(128) % 2
    centres = torch.randn(2, DIM, generator=g) * 2
    z = {"signal": centres[labels] + 0.3 * torch.randn(128, DIM, generator=g),
         "noise": 2 * torch.randn(128, DIM, generator=g)}
    present = {name: torch.ones(128, dtype=torch.bool) for name in z}
    fusion(z, present)
    before = fusion.last_weights[:, 0].mean().item()
    for _ in range(200):
        loss = nn.functional.cross_entropy(head(fusion(z, present)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = fusion.last_weights[:, 0].mean().item()
    assert after > 0.8 and after > before


def test_late_fusion_learns_to_trust_the_informative_modality() -> None:
    fusion = build_fusion("late", modalities=["signal", "noise"], dim=DIM)
    optimizer = torch.optim.Adam(fusion.parameters(), lr=5e-2)
    g = torch.Generator().manual_seed(15)
    labels = torch.arange(64) % 3
    good = nn.functional.one_hot(labels, 3).float() * 3 + torch.randn(64, 3, generator=g)
    bad = torch.randn(64, 3, generator=g) * 3
    logits = torch.stack([good, bad], 1)
    valid = torch.ones(64, 2, dtype=torch.bool)
    for _ in range(100):
        loss = nn.functional.cross_entropy(fusion.combine(logits, valid), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert fusion.last_weights[0, 0] > 0.8

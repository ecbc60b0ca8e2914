"""Encoders: shapes, padding and absent-row invariance, gradients, registry checks, learning."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from metamodal.data.batch import ModalityBatch
from metamodal.data.kinds import kinds
from metamodal.encoders import (
    DEFAULT_ENCODERS,
    ENCODER_KINDS,
    Encoder,
    audio,
    build_encoder,
    check_encoder,
    encoders,
    encoders_for,
    image,
)
from metamodal.encoders.layers import (
    MaskedBatchNorm,
    length_mask,
    masked_max,
    masked_mean,
    masked_pool,
    to_channels_last,
)
from metamodal.errors import ConfigError, ModalityError, UnknownNameError
from metamodal.registry import hyperparameters

torch.set_num_threads(1)

VOCAB = 30
MAX_LEN = 12


@dataclass
class Case:
    name: str
    kind: str
    info: dict[str, Any]
    hyper: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.kind}"

    def build(self, dim: int = 8) -> Encoder:
        return build_encoder(self.kind, self.name, dim=dim, input_info=self.info, **self.hyper)


CASES = [
    Case("conv4", "image", {"channels": 1, "height": 16, "width": 16}, {"hidden": 8}),
    Case("resnet12", "image", {"channels": 3, "height": 12, "width": 12},
         {"widths": (4, 8, 8, 8)}),
    Case("bag", "text", {"vocab_size": VOCAB, "max_length": MAX_LEN}, {"embedding_dim": 8}),
    Case("textcnn", "text", {"vocab_size": VOCAB, "max_length": MAX_LEN},
         {"embedding_dim": 8, "filters": 6}),
    Case("gru", "text", {"vocab_size": VOCAB, "max_length": MAX_LEN},
         {"embedding_dim": 8, "hidden": 6}),
    Case("gru", "sequence", {"features": 3, "max_length": MAX_LEN}, {"hidden": 6}),
    Case("tcn", "sequence", {"features": 3, "max_length": MAX_LEN}, {"channels": 6}),
    Case("trajectory", "sequence", {"features": 3, "max_length": MAX_LEN},
         {"channels": 6, "points": 8, "pen": 2}),
    Case("stroke-set", "sequence", {"features": 3, "max_length": MAX_LEN},
         {"channels": 6, "points": 8, "pen": 2}),
    Case("stroke-image", "sequence", {"features": 3, "max_length": MAX_LEN},
         {"points": 16, "size": 8, "widths": [8, 8], "pen": 2}),
    Case("audio-cnn", "audio", {"n_mels": 8, "max_frames": MAX_LEN}, {"channels": 4}),
    Case("mlp", "tabular", {"features": 5}, {"hidden": [8]}),
]
VARIABLE = [c for c in CASES if c.kind in ("text", "sequence", "audio")]


def make_batch(
    case: Case,
    size: int,
    generator: torch.Generator,
    present: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> ModalityBatch:
    """Random valid inputs of ``case``'s kind; absent rows zero."""
    info = case.info
    if lengths is None and case.kind in ("text", "sequence", "audio"):
        lengths = torch.randint(1, MAX_LEN + 1, (size,), generator=generator)
    if case.kind == "image":
        values = torch.randn(size, info["channels"], info["height"], info["width"],
                             generator=generator)
    elif case.kind == "text":
        values = torch.randint(1, VOCAB, (size, MAX_LEN), generator=generator)
        values = values * length_mask(lengths, MAX_LEN)
    elif case.kind == "sequence":
        values = torch.randn(size, MAX_LEN, info["features"], generator=generator)
        values = values * length_mask(lengths, MAX_LEN).unsqueeze(-1)
    elif case.kind == "audio":
        values = torch.randn(size, info["n_mels"], MAX_LEN, generator=generator)
        values = values * length_mask(lengths, MAX_LEN).unsqueeze(1)
    else:
        values = torch.randn(size, info["features"], generator=generator)
    if present is None:
        present = torch.ones(size, dtype=torch.bool)
    return ModalityBatch(values, present, lengths).with_present(present)


def pad_more(case: Case, batch: ModalityBatch, extra: int, generator: torch.Generator
             ) -> ModalityBatch:
    """The same samples with ``extra`` more padded steps holding random garbage."""
    values = batch.values
    if case.kind == "text":
        garbage = torch.randint(1, VOCAB, (values.shape[0], extra), generator=generator)
        return ModalityBatch(torch.cat([values, garbage], 1), batch.present, batch.lengths)
    if case.kind == "sequence":
        garbage = torch.randn(values.shape[0], extra, values.shape[2], generator=generator)
        return ModalityBatch(torch.cat([values, garbage], 1), batch.present, batch.lengths)
    garbage = torch.randn(values.shape[0], values.shape[1], extra, generator=generator)
    return ModalityBatch(torch.cat([values, garbage], 2), batch.present, batch.lengths)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_output_shape_and_absent_rows_are_zero(case: Case) -> None:
    g = torch.Generator().manual_seed(0)
    encoder = case.build(dim=7)
    present = torch.tensor([True, False, True, True, False, True])
    out = encoder(make_batch(case, 6, g, present))
    assert out.shape == (6, 7)
    assert torch.all(out[~present] == 0)
    assert torch.all(out[present].abs().sum(1) > 0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_values_of_absent_rows_never_matter(case: Case, train: bool) -> None:
    g = torch.Generator().manual_seed(1)
    encoder = case.build()
    encoder.train(train)
    present = torch.tensor([True, False, True, False, True])
    batch = make_batch(case, 5, g, present)
    noisy_values = make_batch(case, 5, g).values
    if noisy_values.is_floating_point():
        noisy_values = noisy_values * 100
    noisy = ModalityBatch(torch.where(present.view(-1, *[1] * (batch.values.dim() - 1)),
                                      batch.values, noisy_values),
                          present, batch.lengths)
    torch.manual_seed(0)
    clean_out = encoder(batch)
    torch.manual_seed(0)
    noisy_out = encoder(noisy)
    torch.testing.assert_close(clean_out, noisy_out)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_all_rows_absent_gives_zeros(case: Case) -> None:
    g = torch.Generator().manual_seed(2)
    encoder = case.build()
    out = encoder(make_batch(case, 3, g, torch.zeros(3, dtype=torch.bool)))
    assert out.shape == (3, 8) and torch.all(out == 0)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", VARIABLE, ids=lambda c: c.id)
def test_padding_never_changes_an_embedding(case: Case, train: bool) -> None:
    g = torch.Generator().manual_seed(3)
    encoder = case.build()
    encoder.train(train)
    lengths = torch.tensor([1, 2, 5, 7, 12, 3])
    batch = make_batch(case, 6, g, lengths=lengths)
    longer = pad_more(case, batch, 9, g)
    torch.testing.assert_close(encoder(batch), encoder(longer))
    # one sample alone, padded exactly to its length, matches its row in the batch
    encoder.eval()
    alone_len = 5
    values = batch.values[2:3, :alone_len] if case.kind != "audio" else \
        batch.values[2:3, :, :alone_len]
    alone = ModalityBatch(values, batch.present[2:3], lengths[2:3])
    torch.testing.assert_close(encoder(alone)[0], encoder(longer)[2])


def test_text_without_lengths_uses_the_nonzero_tokens() -> None:
    case = CASES[2]
    encoder = case.build().eval()
    values = torch.tensor([[4, 9, 0, 0], [7, 0, 0, 0]])
    with_lengths = ModalityBatch(values, torch.ones(2, dtype=torch.bool), torch.tensor([2, 1]))
    without = ModalityBatch(values, torch.ones(2, dtype=torch.bool), None)
    torch.testing.assert_close(encoder(with_lengths), encoder(without))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_gradient_reaches_every_parameter(case: Case) -> None:
    g = torch.Generator().manual_seed(4)
    encoder = case.build()
    present = torch.tensor([True, True, False, True, True, True])
    out = encoder(make_batch(case, 6, g, present))
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_encoding_all_rows_matches_encoding_present_rows(case: Case) -> None:
    g = torch.Generator().manual_seed(5)
    encoder = case.build().eval()
    present = torch.tensor([True, False, True, True])
    batch = make_batch(case, 4, g, present)
    skipped = encoder(batch)
    encoder.skip_absent = False
    torch.testing.assert_close(encoder(batch), skipped)


def test_absent_rows_do_not_enter_batchnorm_statistics() -> None:
    g = torch.Generator().manual_seed(6)
    case = CASES[0]
    encoder = case.build().train()
    present = torch.tensor([True, False, False, True, True])
    batch = make_batch(case, 5, g, present)
    encoder(batch)
    reference = case.build()
    reference.load_state_dict({k: v for k, v in encoder.state_dict().items()
                               if "running" not in k and "num_batches" not in k}, strict=False)
    reference.train()
    reference(batch.index(present.nonzero().squeeze(1)))
    bn, ref_bn = encoder.features[1], reference.features[1]
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)


@pytest.mark.parametrize("size", [8, 16, 21, 28, 32])
def test_image_encoders_accept_small_sizes(size: int) -> None:
    info = {"channels": 3, "height": size, "width": size}
    batch = ModalityBatch(torch.randn(2, 3, size, size), torch.ones(2, dtype=torch.bool))
    for name, hyper in (("conv4", {"hidden": 4}), ("resnet12", {"widths": [4, 4, 4, 4]})):
        encoder = encoders.create(name, dim=5, input_info=info, **hyper)
        assert encoder(batch).shape == (2, 5)


def test_conv4_paper_layout_on_84_pixels() -> None:
    encoder = encoders.create("conv4", dim=16,
                              input_info={"channels": 3, "height": 84, "width": 84})
    assert encoder.project.in_features == 64 * 5 * 5  # 1600 features as in the papers
    convs = [m for m in encoder.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 64, 64]


@pytest.mark.parametrize("train", [True, False])
def test_conv4_pooling_before_relu_equals_the_textbook_order(train: bool) -> None:
    """conv -> BatchNorm -> max-pool -> ReLU gives exactly the values and gradients of
    conv -> BatchNorm -> ReLU -> max-pool, ties at zero included."""
    torch.manual_seed(0)
    encoder = encoders.create("conv4", dim=6, input_info={"channels": 1, "height": 16,
                                                          "width": 16}, hidden=4)
    encoder = encoder.double().train(train)
    # the textbook order: each pool after the ReLU that follows it in the encoder
    textbook: list[nn.Module] = []
    pending: nn.Module | None = None
    for layer in copy.deepcopy(encoder.features):
        if isinstance(layer, nn.MaxPool2d):
            pending = layer
            continue
        textbook.append(layer)
        if isinstance(layer, nn.ReLU) and pending is not None:
            textbook.append(pending)
            pending = None
    reference = nn.Sequential(*textbook).train(train)
    assert [type(m) for m in reference][:4] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    images = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    images[:, :, :8] = 0.0  # flat regions: ties in the pooling windows
    ours = encoder.features(images)
    theirs = reference(images)
    assert torch.equal(ours, theirs)
    direction = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * direction).sum(), list(encoder.features.parameters()))
    expected = torch.autograd.grad((theirs * direction).sum(), list(reference.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, expected, strict=True))


def test_wrong_input_shape_raises_modality_error() -> None:
    info = {"channels": 1, "height": 16, "width": 16}
    encoder = encoders.create("conv4", dim=4, input_info=info)
    with pytest.raises(ModalityError, match=r"\(1, 16, 16\)"):
        encoder(ModalityBatch(torch.randn(2, 3, 16, 16), torch.ones(2, dtype=torch.bool)))
    tcn = encoders.create("tcn", dim=4, input_info={"features": 3})
    with pytest.raises(ModalityError, match="float"):
        tcn(ModalityBatch(torch.randn(2, 5, 4), torch.ones(2, dtype=torch.bool)))
    bag = encoders.create("bag", dim=4, input_info={"vocab_size": 10})
    with pytest.raises(ModalityError, match="token ids"):
        bag(ModalityBatch(torch.randn(2, 5), torch.ones(2, dtype=torch.bool)))


def test_missing_input_info_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="input_info\\['height'\\]"):
        encoders.create("conv4", dim=4, input_info={"channels": 3, "width": 8})
    with pytest.raises(ConfigError, match="features"):
        encoders.create("mlp", dim=4, input_info={})


def test_registry_lists_names_and_unknown_name_lists_them() -> None:
    expected = {"conv4", "resnet12", "bag", "textcnn", "gru", "tcn", "trajectory", "stroke-set",
                "stroke-image", "audio-cnn", "mlp"}
    assert expected <= set(encoders.names())
    with pytest.raises(UnknownNameError) as info:
        encoders.create("vit", dim=4, input_info={})
    for name in expected:
        assert name in str(info.value)


def test_every_kind_has_a_default_encoder_that_fits_it() -> None:
    infos = {"image": {"channels": 1, "height": 8, "width": 8},
             "text": {"vocab_size": 10, "max_length": 4},
             "audio": {"n_mels": 4, "max_frames": 4},
             "sequence": {"features": 2, "max_length": 4},
             "tabular": {"features": 2},
             "video": {"frames": 2, "channels": 1, "height": 8, "width": 8}}
    assert set(DEFAULT_ENCODERS) == set(kinds.names()) == set(infos)
    for kind, name in DEFAULT_ENCODERS.items():
        assert kind in ENCODER_KINDS[name]
        encoder = build_encoder(kind, dim=4, input_info=infos[kind])
        assert isinstance(encoder, encoders.get(name))


def test_encoder_kind_checks() -> None:
    assert encoders_for("text") == ["bag", "gru", "minilm", "textcnn"]
    assert encoders_for("sequence") == ["gru", "stroke-image", "stroke-set", "tcn",
                                          "trajectory"]
    check_encoder("gru", "sequence")
    with pytest.raises(ConfigError, match="bag, gru, minilm, textcnn"):
        check_encoder("tcn", "text", "caption")
    with pytest.raises(ConfigError, match="caption"):
        build_encoder("text", "conv4", dim=4, input_info={}, modality="caption")
    with pytest.raises(ConfigError, match="image, sequence, tabular, text, video"):
        build_encoder("hologram", dim=4, input_info={})


def test_hyperparameters_are_listed_and_unknown_ones_rejected() -> None:
    assert hyperparameters(encoders.get("tcn")) == {
        "channels": 64, "levels": 3, "kernel_size": 3, "dropout": 0.0, "pool": "meanmax"}
    with pytest.raises(ConfigError, match="channels=64"):
        build_encoder("sequence", "tcn", dim=4, input_info={"features": 2}, width=3)
    with pytest.raises(ConfigError, match="dim"):
        encoders.create("mlp", dim=0, input_info={"features": 2})


def test_length_mask_and_masked_pooling() -> None:
    assert length_mask(torch.tensor([0, 2]), 3).tolist() == [[False] * 3, [True, True, False]]
    x = torch.tensor([[[1.0, -1.0], [3.0, 5.0], [9.0, 9.0]], [[2.0, 2.0], [7.0, 7.0],
                                                               [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).tolist() == [[2.0, 2.0], [0.0, 0.0]]
    assert masked_max(x, mask).tolist() == [[3.0, 5.0], [0.0, 0.0]]
    assert masked_pool(x, mask, "meanmax").shape == (2, 4)


def test_masked_batchnorm_uses_only_valid_positions() -> None:
    torch.manual_seed(0)
    norm = MaskedBatchNorm(3, momentum=1.0)
    x = torch.randn(4, 3, 6)
    mask = length_mask(torch.tensor([6, 2, 4, 1]), 6).unsqueeze(1)  # [4, 1, 6]
    out = norm(x, mask)
    valid = x.transpose(1, 2)[mask.squeeze(1)]  # [valid positions, 3]
    expected = (valid - valid.mean(0)) / torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(out.transpose(1, 2)[mask.squeeze(1)], expected)
    assert torch.all(out.transpose(1, 2)[~mask.squeeze(1)] == 0)
    torch.testing.assert_close(norm.running_mean, valid.mean(0))
    torch.testing.assert_close(norm.running_var, valid.var(0, unbiased=True))
    norm.eval()
    torch.testing.assert_close(norm(x, mask).transpose(1, 2)[mask.squeeze(1)],
                               expected * torch.sqrt(valid.var(0, unbiased=False) + 1e-5)
                               / torch.sqrt(valid.var(0, unbiased=True) + 1e-5))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_masked_batchnorm_matches_the_textbook_formula(train: bool, layout: str) -> None:
    g = torch.Generator().manual_seed(8)
    norm = MaskedBatchNorm(4, momentum=0.5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
        norm.bias.uniform_(-1.0, 1.0, generator=g)
        norm.running_mean.uniform_(-1.0, 1.0, generator=g)
        norm.running_var.uniform_(0.5, 2.0, generator=g)
    old_mean, old_var = norm.running_mean.clone(), norm.running_var.clone()
    norm.train(train)
    x = torch.randn(3, 4, 5, 6, generator=g) * 2 + 1  # [B, C, mels, frames]
    mask = length_mask(torch.tensor([6, 2, 4]), 6)[:, None, None, :]  # [B, 1, 1, frames]
    given = x if layout == "contiguous" else x.contiguous(memory_format=torch.channels_last)
    given.requires_grad_(True)
    out = norm(given, mask)
    upstream = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * upstream).sum(), [given, norm.weight, norm.bias])

    # the textbook formula in float64 over the valid positions only
    x64 = x.double().requires_grad_(True)
    weight, bias = norm.weight.double(), norm.bias.double()
    full = mask.expand(3, 1, 5, 6)
    valid = x64.permute(0, 2, 3, 1)[full.squeeze(1)]  # [valid positions, C]
    if train:
        mean, var = valid.mean(0), valid.var(0, unbiased=False)
    else:
        mean, var = old_mean.double(), old_var.double()
    view = (1, -1, 1, 1)
    normalised = (x64 - mean.view(view)) / torch.sqrt(var.view(view) + norm.eps)
    expected = torch.where(full, normalised * weight.view(view) + bias.view(view), 0.0)
    expected_grads = torch.autograd.grad((expected * upstream.double()).sum(),
                                         [x64, norm.weight, norm.bias])

    torch.testing.assert_close(out, expected.float())
    assert torch.all(out.masked_select(~full) == 0)
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want.float())
    if train:
        torch.testing.assert_close(norm.running_mean, torch.lerp(old_mean, mean.float(), 0.5))
        torch.testing.assert_close(
            norm.running_var, torch.lerp(old_var, valid.var(0, unbiased=True).float(), 0.5))
    else:
        assert torch.equal(norm.running_mean, old_mean)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_channels_last_keeps_values_and_marks_the_layout(channels: int) -> None:
    x = torch.randn(2, channels, 4, 5)
    y = to_channels_last(x)
    assert torch.equal(y, x) and y.shape == x.shape
    assert y.stride(1) == 1 and y.is_contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(channels, 6, 3, padding=1)
    out = conv(y)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    if channels == 1:
        assert y.data_ptr() == x.data_ptr()  # one channel: nothing copied


CHANNELS_LAST_CASES = [
    Case("conv4", "image", {"channels": 1, "height": 16, "width": 16}, {"hidden": 8}),
    Case("conv4", "image", {"channels": 3, "height": 12, "width": 10}, {"hidden": 8}),
    Case("resnet12", "image", {"channels": 3, "height": 12, "width": 12},
         {"widths": (4, 8, 8, 8)}),
    Case("audio-cnn", "audio", {"n_mels": 8, "max_frames": MAX_LEN}, {"channels": 4}),
]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("case", CHANNELS_LAST_CASES,
                         ids=lambda c: f"{c.name}-{c.info.get('channels', 1)}ch")
def test_channels_last_encoders_match_the_plain_layout(
    case: Case, train: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    encoder = case.build().train(train)
    with torch.no_grad():  # non-trivial normalisation in eval mode
        for name, tensor in encoder.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0, generator=g)
            elif name.endswith("running_mean"):
                tensor.uniform_(-0.5, 0.5, generator=g)
    plain = copy.deepcopy(encoder)
    batch = make_batch(case, 5, g, torch.tensor([True, True, False, True, True]))
    layouts: list[bool] = []  # per convolution whose output layout is unambiguous

    def record(module: nn.Module, inputs: object, out: torch.Tensor) -> None:
        if out.is_contiguous() != out.is_contiguous(memory_format=torch.channels_last):
            layouts.append(out.is_contiguous(memory_format=torch.channels_last))

    hooks = [conv.register_forward_hook(record)
             for conv in encoder.modules() if isinstance(conv, nn.Conv2d)]
    out = encoder(batch)
    for hook in hooks:
        hook.remove()
    assert layouts and all(layouts)  # every encoder, in training and evaluation
    assert out.is_contiguous()

    for module in (audio, image):  # the same encoder without the conversion: NCHW throughout
        monkeypatch.setattr(module, "to_channels_last", lambda x, **_: x)
    expected = plain(batch)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * upstream).sum(), list(encoder.parameters()))
    plain_grads = torch.autograd.grad((expected * upstream).sum(), list(plain.parameters()))
    scale = max(float(p.abs().max()) for p in plain_grads)
    for got, want in zip(grads, plain_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale)
    for (name, got), want in zip(encoder.state_dict().items(), plain.state_dict().values(),
                                 strict=True):
        torch.testing.assert_close(got, want, msg=name)


def toy_task(case: Case, size: int, generator: torch.Generator
             ) -> tuple[ModalityBatch, torch.Tensor]:
    """Two classes that each kind's encoder can separate: labels ``[size]`` in {0, 1}."""
    labels = torch.arange(size) % 2
    batch = make_batch(case, size, generator)
    values, lengths = batch.values.clone(), batch.lengths
    sign = labels.float() * 2 - 1
    if case.kind == "image":
        half = values.shape[2] // 2
        values[:, :, :half] += 2 * sign.view(-1, 1, 1, 1)
    elif case.kind == "text":
        values[:, 0] = 2 + labels  # the first token says the class
    elif case.kind == "sequence":
        steps = torch.arange(MAX_LEN).float().view(1, -1, 1) / MAX_LEN
        values = values * 0.3 + sign.view(-1, 1, 1) * steps * 3
        values = values * length_mask(lengths, MAX_LEN).unsqueeze(-1)
    elif case.kind == "audio":
        values[:, :4] += 2 * sign.view(-1, 1, 1)
        values = values * length_mask(lengths, MAX_LEN).unsqueeze(1)
    else:
        values[:, 0] = 2 * sign
    return ModalityBatch(values, batch.present, lengths), labels


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_encoder_learns_a_toy_task(case: Case) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    encoder = case.build(dim=8)
    head = nn.Linear(8, 2)
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
    batch, labels = toy_task(case, 32, g)
    first = None
    for _ in range(40):
        loss = nn.functional.cross_entropy(head(encoder(batch)), labels)
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    test_batch, test_labels = toy_task(case, 32, g)
    accuracy = (head(encoder(test_batch)).argmax(1) == test_labels).float().mean().item()
    assert loss.item() < first * 0.5
    assert accuracy >= 0.9


def test_textcnn_ignores_windows_made_only_of_padding() -> None:
    encoder = encoders.create("textcnn", dim=4, input_info={"vocab_size": 10},
                              embedding_dim=3, filters=2, widths=[2])
    with torch.no_grad():
        encoder.embed.table.weight.abs_()
        encoder.convs[0].weight.copy_(-encoder.convs[0].weight.abs())
        encoder.convs[0].bias.fill_(0.5)  # a window of padding only would score 0.5
    tokens = torch.tensor([[3, 4, 5]])
    tight = ModalityBatch(tokens, torch.ones(1, dtype=torch.bool), torch.tensor([3]))
    padded = ModalityBatch(torch.cat([tokens, torch.zeros(1, 6, dtype=torch.long)], 1),
                           torch.ones(1, dtype=torch.bool), torch.tensor([3]))
    torch.testing.assert_close(encoder(tight), encoder(padded))


def test_register_encoder_rejects_unknown_kinds() -> None:
    from metamodal.encoders import register_encoder

    with pytest.raises(ValueError, match="hologram"):
        register_encoder("hologram-net", ["hologram"])
    assert "hologram-net" not in encoders


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize("size", [4, 8])
def test_tiny_images_train_with_a_single_present_image(name: str, size: int) -> None:
    from metamodal.encoders import build_encoder

    encoder = build_encoder("image", name, dim=8,
                            input_info={"channels": 3, "height": size, "width": size})
    encoder.train()
    values = torch.randn(3, 3, size, size)
    present = torch.tensor([False, True, False])
    out = encoder(ModalityBatch(values, present))
    assert out.shape == (3, 8) and torch.all(out[~present] == 0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_batchnorm_without_a_mask_equals_an_all_valid_mask_in_float64(train: bool,
                                                                      layout: str) -> None:
    """``mask=None`` (the native kernel) computes what an all-True mask does: outputs,
    gradients and running statistics."""
    g = torch.Generator().manual_seed(9)
    norms = [MaskedBatchNorm(4, momentum=0.3).double().train(train) for _ in range(2)]
    with torch.no_grad():
        for p in norms[0].parameters():
            p.uniform_(0.5, 1.5, generator=g)
    norms[1].load_state_dict(norms[0].state_dict())
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * 2 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    results = []
    for norm, mask in zip(norms, [None, torch.ones(3, 1, 1, 6, dtype=torch.bool)], strict=True):
        given = x.clone().requires_grad_(True)
        out = norm(given, mask)
        grads = torch.autograd.grad((out * upstream).sum(), [given, norm.weight, norm.bias])
        results.append([out, *grads, norm.running_mean, norm.running_var])
    for fast, masked in zip(*results, strict=True):
        torch.testing.assert_close(fast, masked, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_full_length_audio_skips_the_mask_with_the_same_results(
        train: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clips that all fill the window take BatchNorm's native kernel: the same embeddings
    and gradients (float64) as the masked arithmetic they replace."""
    torch.manual_seed(3)
    encoder = audio.AudioCNN(dim=8, input_info={"n_mels": 16, "max_frames": 20}, channels=4)
    encoder = encoder.double().train(train)
    values = torch.randn(5, 16, 20, dtype=torch.float64)
    lengths = torch.full((5,), 20)
    calls: list[bool] = []
    masked_forward = MaskedBatchNorm.forward

    def recording(self: MaskedBatchNorm, x: torch.Tensor, mask: torch.Tensor | None):
        calls.append(mask is None)
        return masked_forward(self, x, mask)

    def run() -> list[torch.Tensor]:
        encoder.zero_grad()
        out = encoder.encode(values, lengths)
        out.square().sum().backward()
        return [out.detach(), *(p.grad.clone() for p in encoder.parameters())]

    state = copy.deepcopy(encoder.state_dict())
    monkeypatch.setattr(MaskedBatchNorm, "forward", recording)
    fast = run()
    assert calls and all(calls)  # the native path was taken in every block
    encoder.load_state_dict(state)

    def always_masked(self: MaskedBatchNorm, x: torch.Tensor, mask: torch.Tensor | None):
        if mask is None:
            mask = torch.ones(x.shape[0], 1, 1, x.shape[3], dtype=torch.bool)
        return masked_forward(self, x, mask)

    monkeypatch.setattr(MaskedBatchNorm, "forward", always_masked)
    for got, want in zip(fast, run(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    shorter = lengths.clone()
    shorter[0] = 11
    calls.clear()
    monkeypatch.setattr(MaskedBatchNorm, "forward", recording)
    encoder.encode(values, shorter)
    assert calls and not any(calls)  # one short clip: the masked path

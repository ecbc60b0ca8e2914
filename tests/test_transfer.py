"""Transfer (``--init-from`` any run, across datasets) and freezing (``--freeze``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from metamodal import api
from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError, RunError
from metamodal.model import FewShotModel
from metamodal.runs.directory import load_run
from metamodal.runs.prepared import prepare_data
from metamodal.runs.weights import WEIGHTS_FILE
from metamodal.train.checkpoint import CHECKPOINT_FILE
from metamodal.train.trainer import Trainer
from metamodal.train.transfer import TRANSFER_FILE, transfer_weights

SMALL = {"ways": 2, "shots": 1, "queries": 1, "dim": 8, "val_every": 0, "val_episodes": 3,
         "device": "cpu", "cache": False}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Dataset A (seed 0), dataset B (seed 1: other captions, other vocabulary) and a source
    run on A with image + caption."""
    root = tmp_path_factory.mktemp("transfer")
    a = make_synthetic(root / "a", classes=12, per_class=3, image_size=8, seed=0)
    b = make_synthetic(root / "b", classes=12, per_class=3, image_size=8, seed=1)
    source = root / "source"
    api.train(source, data=str(a), modalities=["image", "caption"], steps=3, progress=False,
              **SMALL)
    return {"a": a, "b": b, "source": source, "root": root}


def _part(transfer: dict, part: str) -> dict:
    return next(row for row in transfer["parts"] if row["part"] == part)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / WEIGHTS_FILE))


def test_the_image_encoder_is_reused_across_datasets(setup) -> None:
    source = _weights(setup["source"])
    data = prepare_data(setup["b"], seed=0, modalities=["image", "sound"], preprocess={},
                        cache=False, encoders={})
    model = FewShotModel.build(kinds=data.preprocessor.kinds(),
                               input_info=data.preprocessor.input_info(), dim=8)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    transfer = transfer_weights(model, setup["source"],
                                data.preprocessor.state_dict()["loaders"])
    state = model.state_dict()
    image = [k for k in state if k.startswith("backbone.encoders.image.")]
    assert any("running_mean" in k for k in image)  # buffers are carried over too
    assert all(torch.equal(state[k], source[k]) for k in image)
    assert not all(torch.equal(fresh[k], source[k]) for k in image)
    sound = [k for k in state if k.startswith("backbone.encoders.sound.")]
    assert sound and all(torch.equal(state[k], fresh[k]) for k in sound)
    rows = {row.part: row for row in transfer.rows}
    assert rows["encoder image"].status == "reused"
    assert rows["encoder sound"].status == "newly initialised"
    assert "no counterpart in the source" in rows["encoder sound"].why
    assert rows["encoder caption"].status == "dropped" and rows["encoder caption"].dropped
    assert rows["fusion"].status == "newly initialised"
    assert "fused modalities differ" in rows["fusion"].why


def test_train_prints_and_writes_the_transfer_table(setup, tmp_path: Path, capsys) -> None:
    out = tmp_path / "b"
    assert main(["train", "--data", str(setup["b"]), "--out", str(out), "--modalities",
                 "image,sound", "--init-from", str(setup["source"]), "--steps", "1",
                 "--ways", "2", "--shots", "1", "--queries", "1", "--dim", "8",
                 "--val-every", "0", "--val-episodes", "3", "--device", "cpu",
                 "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert f"initialised from {setup['source']}" in printed
    lines = {line.split()[1]: line for line in printed.splitlines()
             if line.startswith("encoder ")}
    assert "reused" in lines["image"] and "dropped" in lines["caption"]
    assert "newly initialised" in lines["sound"]
    saved = json.loads((out / TRANSFER_FILE).read_text())
    assert saved["source"] == str(setup["source"])
    assert _part(saved, "encoder image")["status"] == "reused"
    assert _part(saved, "encoder caption")["status"] == "dropped"
    assert _part(saved, "encoder sound")["status"] == "newly initialised"
    assert saved["tensors"]["backbone.encoders.caption.embed.table.weight"]["status"] == \
        "dropped"


def test_a_loader_that_differs_is_newly_initialised(setup, tmp_path: Path) -> None:
    # dataset B's captions have another vocabulary; the image size differs too
    report = api.train(tmp_path / "r", data=str(setup["b"]), modalities=["image", "caption"],
                       init_from=str(setup["source"]), preprocess={"image": {"size": 16}},
                       steps=1, progress=False, **SMALL)
    image, caption = (_part(report.transfer, f"encoder {m}") for m in ("image", "caption"))
    assert image["status"] == caption["status"] == "newly initialised"
    assert image["why"] == "loader differs: size 8x8 -> 16x16"
    assert caption["why"] == "loader differs: vocabulary"
    assert _part(report.transfer, "fusion")["status"] == "reused"  # same modalities
    assert "loader differs: vocabulary" in report.table()


@pytest.mark.parametrize("learner", ["protonet", "maml"])
def test_frozen_weights_stay_bit_identical(setup, tmp_path: Path, learner: str) -> None:
    source = _weights(setup["source"])
    options = {"learner_options": {"inner_steps": 1}} if learner == "maml" else {}
    report = api.train(tmp_path / "r", data=str(setup["a"]), modalities=["image", "caption"],
                       init_from=str(setup["source"]), freeze=["image"], learner=learner,
                       steps=4, lr=1e-2, progress=False,
                       **{**SMALL, "val_every": 2}, **options)
    assert _part(report.transfer, "encoder image")["frozen"]
    after = _weights(tmp_path / "r")
    image = [k for k in after if k.startswith("backbone.encoders.image.")]
    assert image and all(torch.equal(after[k], source[k]) for k in image)  # BN stats too
    caption = [k for k in after if k.startswith("backbone.encoders.caption.")]
    assert any(not torch.equal(after[k], source[k]) for k in caption)
    run = load_run(tmp_path / "r")  # a loaded run keeps the frozen weights out of adaptation
    assert not any(p.requires_grad for p in run.model.backbone.encoders["image"].parameters())
    if learner == "maml":
        assert "encoders.image.features.0.weight" not in run.model.learner.adapting(
            run.model.backbone)
        assert "encoders.caption.head.0.weight" in run.model.learner.adapting(run.model.backbone)


def test_freezing_random_weights_is_warned_about(setup, tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="metamodal.train.trainer"):
        report = api.train(tmp_path / "r", data=str(setup["a"]), modalities=["image", "caption"],
                           freeze=["encoders"], steps=2, progress=False, **SMALL)
    assert "frozen at a random initialisation" in caplog.text
    assert report.transfer["source"] == "" and report.transfer["freeze"] == ["encoders"]
    assert "not initialised from a run; frozen: encoders" in report.table()


class Killed(RuntimeError):
    pass


def test_resume_does_not_initialise_from_the_source_again(setup, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(setup["source"], source)
    config = TrainConfig(data=str(setup["b"]), modalities=["image", "sound"],
                         init_from=str(source), steps=4, checkpoint_every=2, lr=1e-2, **SMALL)
    Trainer(config, tmp_path / "whole", progress=False).fit()

    def kill(step: int, values: dict) -> None:
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        Trainer(config, tmp_path / "r", progress=False, callbacks=[kill]).fit()
    assert (tmp_path / "r" / CHECKPOINT_FILE).is_file()
    (source / WEIGHTS_FILE).write_bytes(b"damaged")  # resuming must not read the source
    result = Trainer(config, tmp_path / "r", progress=False).fit(resume=True)
    assert result.steps == 4
    assert result.transfer is not None and result.transfer.source == str(source)
    whole, resumed = _weights(tmp_path / "whole"), _weights(tmp_path / "r")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    image = "backbone.encoders.image.features.0.weight"
    assert not torch.equal(resumed[image], _weights(setup["source"])[image])  # trained on


def test_init_from_a_missing_or_damaged_run_is_a_run_error(setup, tmp_path: Path) -> None:
    with pytest.raises(RunError, match="--init-from needs a finished run") as error:
        api.train(tmp_path / "r", data=str(setup["a"]), init_from=str(tmp_path / "none"),
                  steps=1, progress=False, **SMALL)
    assert str(tmp_path / "none") in str(error.value.file)
    damaged = tmp_path / "damaged"
    shutil.copytree(setup["source"], damaged)
    (damaged / WEIGHTS_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(RunError, match="damaged") as error:
        api.train(tmp_path / "r", data=str(setup["a"]), init_from=str(damaged), steps=1,
                  progress=False, **SMALL)
    assert str(damaged) in str(error.value.file)
    (damaged / WEIGHTS_FILE).write_bytes((setup["source"] / WEIGHTS_FILE).read_bytes())
    (damaged / "config.toml").write_text("not = [toml")
    with pytest.raises(RunError, match="config.toml is corrupt"):
        api.train(tmp_path / "r", data=str(setup["a"]), init_from=str(damaged), steps=1,
                  progress=False, **SMALL)
    assert not (tmp_path / "r").exists()


def test_init_from_an_ensemble_is_a_run_error(setup, tmp_path: Path) -> None:
    """An ensemble's config.toml has no [model] table: a bare KeyError 'model'."""
    ensemble, copy = tmp_path / "ensemble", tmp_path / "copy"
    shutil.copytree(setup["source"], copy)
    api.ensemble([str(setup["source"]), str(copy)], out=str(ensemble), ways=2, queries=1,
                 episodes_count=2, seed=1)
    with pytest.raises(RunError, match="ensemble") as error:
        api.train(tmp_path / "r", data=str(setup["a"]), init_from=str(ensemble), steps=1,
                  progress=False, **SMALL)
    assert error.value.file == str(ensemble / "config.toml")
    assert str(setup["source"]) in error.value.fix  # the runs it was made of, not its members
    assert not (tmp_path / "r").exists()


def test_an_unknown_freeze_name_is_a_config_error(setup, tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as error:
        api.train(tmp_path / "r", data=str(setup["a"]), modalities=["image", "caption"],
                  freeze=["imgae"], steps=1, progress=False, **SMALL)
    assert error.value.column == "freeze"
    assert "encoders, backbone, image, caption" in error.value.fix
    assert main(["train", "--data", str(setup["a"]), "--out", str(tmp_path / "r"),
                 "--freeze", "backbone", "--fusion", "mean", "--learner", "maml",
                 "--steps", "1"]) == 2
    assert "leaves no weight of this model to train" in capsys.readouterr().err

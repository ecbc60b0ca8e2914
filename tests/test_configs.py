"""The shipped config files load, validate and train on the data they are written for."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from omniglot_fixtures import write_archives

from metamodal.config import load_config
from metamodal.datasets.omniglot import import_omniglot
from metamodal.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["omniglot.toml", "omniglot-fused.toml"])
def test_omniglot_config_trains_on_an_omniglot_import(tmp_path: Path, name: str) -> None:
    write_archives(tmp_path / "src", "small1", {"Alpha": 4, "Beta": 4, "Gamma": 4}, drawers=4)
    data = import_omniglot(tmp_path / "src", tmp_path / "omniglot", image_size=14,
                           val_groups=["Gamma"]).path
    config = load_config(CONFIGS / name).updated(
        {"data": str(data), "steps": 2, "ways": 2, "queries": 1, "dim": 8, "val_episodes": 2,
         "val_ways": 2, "val_queries": 1, "device": "cpu"})
    run = Trainer(config, tmp_path / "run", progress=False).fit().run_dir
    saved = tomllib.loads((run / "config.toml").read_text())["train"]
    shipped = load_config(CONFIGS / name)
    assert saved["augment"] == shipped.augment
    assert saved["encoder_options"] == shipped.encoder_options
    test_time = (saved["tta"], saved["transduction"], saved["transduction_balance"])
    assert test_time == (shipped.tta, shipped.transduction, shipped.transduction_balance)
    assert shipped.transduction == 10 and shipped.transduction_balance


def test_a_config_files_out_of_range_value_names_the_file(tmp_path: Path) -> None:
    from metamodal.errors import ConfigError

    path = tmp_path / "bad.toml"
    path.write_text("[train]\nways = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path) and caught.value.column == "ways"
    path.write_text('device = "gpu"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.file == str(path) and caught.value.column == "device"


@pytest.mark.parametrize("text,key", [
    ('steps = 2\nlearner = "maml"\n[train]\nlr = 0.5\n', "learner"),
    ("[train]\nsteps = 2\n[learner_options]\ninner_steps = 3\n", "learner_options"),
    ("[train]\nsteps = 2\n[nosuch]\nx = 1\n", "nosuch"),
])
def test_a_setting_beside_a_train_table_is_refused_not_passed_over(
        tmp_path: Path, text: str, key: str) -> None:
    """A file with a [train] table was read for that table alone: keys above it and tables
    beside it ([learner_options], [augment], as the docs write them without [train]) were
    passed over without a word, and a run trained with other settings than the file's."""
    from metamodal.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="outside the .train. table") as caught:
        load_config(path)
    assert caught.value.file == str(path) and caught.value.column == key
    path.write_text("[train]\nsteps = 2\n[train.learner_options]\ninner_steps = 3\n")
    assert load_config(path).learner_options == {"inner_steps": 3}


def test_a_runs_config_file_is_a_config(tmp_path: Path) -> None:
    """A run's config.toml (its [train] table beside [model], [split], [dataset]) loads as
    the run's training settings."""
    from metamodal.datasets.synthetic import make_synthetic

    data = make_synthetic(tmp_path / "data", classes=15, per_class=3, image_size=8, seed=1)
    config = load_config(CONFIGS / "omniglot.toml").updated(
        {"data": str(data), "steps": 1, "ways": 2, "queries": 1, "val_ways": 2, "val_queries": 1,
         "dim": 8, "val_episodes": 1, "device": "cpu", "modalities": ["image"],
         "encoders": {"image": "conv4"}, "encoder_options": {}, "tta": 0})
    run = Trainer(config, tmp_path / "run", progress=False).fit().run_dir
    assert set(tomllib.loads((run / "config.toml").read_text())) > {"train", "model", "split"}
    assert load_config(run / "config.toml").steps == 1


def test_a_config_files_value_found_bad_once_training_begins_names_the_file(
        tmp_path: Path) -> None:
    """An unknown fusion or a component option out of its range, set in a config file, was
    found when the model was built and named only the key; the rule for config files is that
    the error names the file. A flag's value (given over the file's) names no file."""
    from metamodal import api
    from metamodal.datasets.synthetic import make_synthetic
    from metamodal.errors import ConfigError

    data = make_synthetic(tmp_path / "data", classes=15, per_class=3, image_size=8, seed=1)
    path = tmp_path / "c.toml"
    for text, key in (('fusion = "nosuch"\n', "fusion"),
                      ("[fusion_options]\nhidden = -1\n", "fusion_options")):
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            api.train(tmp_path / "run", config=str(path), data=str(data), steps=1,
                      progress=False)
        assert caught.value.file == str(path) and caught.value.column == key
    path.write_text('fusion = "nosuch"\n')
    with pytest.raises(ConfigError) as caught:
        api.train(tmp_path / "run", config=str(path), data=str(data), fusion="other",
                  steps=1, progress=False)
    assert caught.value.file is None and "other" in caught.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_config_error_naming_the_device(tmp_path: Path) -> None:
    from metamodal.config import TrainConfig, resolve_device
    from metamodal.datasets.synthetic import make_synthetic
    from metamodal.errors import ConfigError
    from metamodal.runs.directory import load_run

    for name in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available") as caught:
            resolve_device(name)
        assert caught.value.column == "device" and "cpu" in caught.value.fix
    data = make_synthetic(tmp_path / "data", classes=15, per_class=3, image_size=8, seed=1,
                          track_length=8)
    config = TrainConfig(data=str(data), steps=1, ways=2, shots=1, queries=1, dim=8,
                         val_every=0, val_episodes=1, cache=False, modalities=["measurements"])
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Trainer(config.updated({"device": "cuda"}), tmp_path / "gpu", progress=False).fit()
    assert not (tmp_path / "gpu").exists()
    Trainer(config.updated({"device": "cpu"}), tmp_path / "run", progress=False).fit()
    with pytest.raises(ConfigError, match="CUDA is not available"):
        load_run(tmp_path / "run", device="cuda")
    assert load_run(tmp_path / "run", device="auto").model is not None

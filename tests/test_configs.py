"""The shipped config files load, validate and train on the data they are written for."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from omniglot_fixtures import write_archives

from metamodal.config import load_config
from metamodal.datasets.omniglot import import_omniglot
from metamodal.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_omniglot_config_trains_on_an_omniglot_import(tmp_path: Path) -> None:
    write_archives(tmp_path / "src", "small1", {"Alpha": 4, "Beta": 4, "Gamma": 4}, drawers=4)
    data = import_omniglot(tmp_path / "src", tmp_path / "omniglot", image_size=14,
                           val_groups=["Gamma"]).path
    config = load_config(CONFIGS / "omniglot.toml").updated(
        {"data": str(data), "steps": 2, "ways": 2, "queries": 1, "dim": 8, "val_episodes": 2,
         "val_ways": 2, "val_queries": 1, "device": "cpu"})
    run = Trainer(config, tmp_path / "run", progress=False).fit().run_dir
    saved = tomllib.loads((run / "config.toml").read_text())["train"]
    assert saved["augment"] == load_config(CONFIGS / "omniglot.toml").augment

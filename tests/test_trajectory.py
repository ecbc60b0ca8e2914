"""The pen-trajectory encoder: what it ignores (position, size, sampling rate, padding), what it
keeps (pen-up jumps are not path), and the Omniglot import choosing it for strokes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch
from omniglot_fixtures import write_archives

from metamodal.config import TrainConfig, with_dataset_encoders
from metamodal.data.batch import ModalityBatch
from metamodal.data.schema import DatasetSchema
from metamodal.datasets.omniglot import import_omniglot
from metamodal.encoders.trajectory import TrajectoryEncoder, resample_trajectory
from metamodal.errors import ConfigError, DatasetError, ModalityError
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _drawing(points: list[tuple[float, float, float]], pad: int = 0) -> ModalityBatch:
    """One drawing ``[1, T + pad, 3]``: x, y and a stroke-start flag (1 / 0)."""
    values = torch.tensor(points + [(0.0, 0.0, 0.0)] * pad).unsqueeze(0)
    return ModalityBatch(values, torch.ones(1, dtype=torch.bool), torch.tensor([len(points)]))


@pytest.fixture
def encoder() -> TrajectoryEncoder:
    torch.manual_seed(0)
    return TrajectoryEncoder(dim=8, input_info={"features": 3, "max_length": 40}, pen=2,
                             points=32, channels=8).eval()


L_SHAPE = [(0.0, 0.0, 1.0), (0.0, 4.0, 0.0), (3.0, 4.0, 0.0), (5.0, 1.0, 1.0), (7.0, 1.0, 0.0)]


def test_position_size_and_padding_do_not_change_the_embedding(
    encoder: TrajectoryEncoder,
) -> None:
    base = encoder(_drawing(L_SHAPE))
    moved = [(10 + 2.5 * x, -3 + 2.5 * y, p) for x, y, p in L_SHAPE]
    assert torch.allclose(encoder(_drawing(moved)), base, atol=1e-5)
    assert torch.allclose(encoder(_drawing(L_SHAPE, pad=9)), base, atol=1e-5)
    mirrored = [(-x, y, p) for x, y, p in L_SHAPE]
    assert not torch.allclose(encoder(_drawing(mirrored)), base, atol=1e-3)


def test_sampling_rate_does_not_change_the_embedding(encoder: TrajectoryEncoder) -> None:
    dense = []
    for (x0, y0, p0), (x1, y1, p1) in zip(L_SHAPE, L_SHAPE[1:], strict=False):
        if p1:  # a new stroke begins: no points on the pen-up jump
            dense.append((x0, y0, p0))
            continue
        dense += [(x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4, p0 if k == 0 else 0.0)
                  for k in range(4)]
    dense.append(L_SHAPE[-1])
    assert len(dense) > 2 * len(L_SHAPE)
    assert torch.allclose(encoder(_drawing(dense)), encoder(_drawing(L_SHAPE)), atol=1e-4)


def test_resampled_points_never_lie_on_a_pen_up_jump() -> None:
    points = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]]])
    starts = torch.tensor([[True, False, True, False]])
    out, first = resample_trajectory(points, starts, torch.tensor([4]), 9)
    x = out[0, :, 0]
    assert ((x <= 1.0 + 1e-6) | (x >= 10.0 - 1e-6)).all(), x
    assert first[0].sum() == 2  # the second stroke's start is marked
    assert x[0] == 0 and x[-1] == 11


def test_bad_columns_and_inputs_are_typed_errors() -> None:
    with pytest.raises(ConfigError, match="columns"):
        TrajectoryEncoder(dim=4, input_info={"features": 3}, coords=[0, 5])
    enc = TrajectoryEncoder(dim=4, input_info={"features": 3}, points=8, channels=2)
    with pytest.raises(ModalityError, match="float"):
        enc(ModalityBatch(torch.zeros(2, 5, 2), torch.ones(2, dtype=torch.bool)))


def test_schema_suggests_an_encoder_the_config_can_override() -> None:
    schema = DatasetSchema.from_dict({"name": "d", "label": "y", "modalities": {
        "s": {"kind": "sequence", "column": "s", "encoder": "trajectory",
              "encoder_options": {"pen": 3}},
        "i": {"kind": "image", "column": "i"}}})
    assert DatasetSchema.from_dict(schema.to_dict()) == schema
    chosen = with_dataset_encoders(TrainConfig(), schema)
    assert chosen.encoders == {"s": "trajectory"} and chosen.encoder_options["s"] == {"pen": 3}
    own = with_dataset_encoders(TrainConfig(encoders={"s": "gru"}), schema)
    assert own.encoders == {"s": "gru"} and "s" not in own.encoder_options
    unused = with_dataset_encoders(TrainConfig(modalities=["i"]), schema)
    assert unused.encoders == {}
    with pytest.raises(DatasetError, match="encoder_options"):
        DatasetSchema.from_dict({"label": "y", "modalities": {
            "s": {"kind": "sequence", "column": "s", "encoder_options": {"pen": 3}}}})


def test_omniglot_import_trains_strokes_with_the_trajectory_encoder(tmp_path: Path) -> None:
    write_archives(tmp_path / "src", "small1", {"Alpha": 4, "Beta": 4, "Gamma": 4}, drawers=4)
    out = tmp_path / "omniglot"
    import_omniglot(tmp_path / "src", out, image_size=14, val_groups=["Gamma"])
    schema = tomllib.loads((out / "dataset.toml").read_text())
    assert schema["modalities"]["strokes"]["encoder"] == "trajectory"
    config = TrainConfig(data=str(out), steps=2, ways=2, queries=1, dim=8, val_episodes=2,
                         device="cpu")
    run = Trainer(config, tmp_path / "run", progress=False).fit().run_dir
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["train"]["encoders"] == {"strokes": "trajectory"}
    assert saved["model"]["encoders"]["strokes"] == "trajectory"

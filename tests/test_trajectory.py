"""The pen-trajectory encoders: what they ignore (position, size, sampling rate, padding; for
``stroke-set`` also the strokes' order and direction), what they keep (pen-up jumps are not
path), and the Omniglot import choosing ``trajectory`` for strokes."""

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
from metamodal.encoders.trajectory import (
    StrokeImageEncoder,
    StrokeSetEncoder,
    TrajectoryEncoder,
    render_motion,
    resample_trajectory,
    split_strokes,
)
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


def _densified(steps: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """The same drawing recorded four times as often (no points on the pen-up jumps)."""
    dense = []
    for (x0, y0, p0), (x1, y1, p1) in zip(steps, steps[1:], strict=False):
        if p1:  # a new stroke begins: no points on the pen-up jump
            dense.append((x0, y0, p0))
            continue
        dense += [(x0 + (x1 - x0) * k / 4, y0 + (y1 - y0) * k / 4, p0 if k == 0 else 0.0)
                  for k in range(4)]
    dense.append(steps[-1])
    assert len(dense) > 2 * len(steps)
    return dense


def test_sampling_rate_does_not_change_the_embedding(encoder: TrajectoryEncoder) -> None:
    assert torch.allclose(encoder(_drawing(_densified(L_SHAPE))), encoder(_drawing(L_SHAPE)),
                          atol=1e-4)


def test_resampled_points_never_lie_on_a_pen_up_jump() -> None:
    points = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [11.0, 0.0]]])
    starts = torch.tensor([[True, False, True, False]])
    out, first = resample_trajectory(points, starts, torch.tensor([4]), 9)
    x = out[0, :, 0]
    assert ((x <= 1.0 + 1e-6) | (x >= 10.0 - 1e-6)).all(), x
    assert first[0].sum() == 2  # the second stroke's start is marked
    assert x[0] == 0 and x[-1] == 11


def test_bad_columns_and_inputs_are_typed_errors() -> None:
    for bad in ({"coords": [0, 5]}, {"coords": [0, 0]}, {"pen": 0}, {"pen": 1}, {"pen": -2}):
        with pytest.raises(ConfigError, match="different columns"):  # x, y and pen apart
            TrajectoryEncoder(dim=4, input_info={"features": 3}, **bad)
    with pytest.raises(ConfigError, match="points in 4..4096"):  # not gigabytes per drawing
        TrajectoryEncoder(dim=4, input_info={"features": 3}, points=1 << 24)
    enc = TrajectoryEncoder(dim=4, input_info={"features": 3}, points=8, channels=2)
    with pytest.raises(ModalityError, match="float"):
        enc(ModalityBatch(torch.zeros(2, 5, 2), torch.ones(2, dtype=torch.bool)))


def _stroke_set() -> StrokeSetEncoder:
    """A `StrokeSetEncoder` whose BatchNorm statistics come from random drawings, in eval mode."""
    torch.manual_seed(0)
    encoder = StrokeSetEncoder(dim=8, input_info={"features": 3, "max_length": 40}, pen=2,
                               points=16, channels=8)
    for _ in range(5):
        values = torch.randn(16, 12, 3)
        values[..., 2] = (torch.rand(16, 12) < 0.3).float()
        encoder(ModalityBatch(values, torch.ones(16, dtype=torch.bool),
                              torch.randint(2, 13, (16,))))
    return encoder.eval()


def _redrawn(strokes: list[list[tuple[float, float]]]) -> list[tuple[float, float, float]]:
    """Strokes (lists of points) as steps: x, y and a flag on each stroke's first point."""
    return [(x, y, float(i == 0)) for stroke in strokes for i, (x, y) in enumerate(stroke)]


THREE_STROKES = [[(0.0, 0.0), (0.0, 4.0), (3.0, 4.0)], [(5.0, 1.0), (7.0, 1.0)],
                 [(1.0, -2.0), (2.0, -3.0), (4.0, -3.5), (6.0, -2.0)]]


def test_stroke_set_ignores_the_order_and_direction_of_strokes() -> None:
    encoder = _stroke_set()
    base = encoder(_drawing(_redrawn(THREE_STROKES)))
    redrawn = [THREE_STROKES[2][::-1], THREE_STROKES[0], THREE_STROKES[1][::-1]]
    assert torch.allclose(encoder(_drawing(_redrawn(redrawn))), base, atol=1e-5)
    moved = [[(10 + 2.5 * x, -3 + 2.5 * y) for x, y in s] for s in redrawn]
    assert torch.allclose(encoder(_drawing(_redrawn(moved), pad=7)), base, atol=1e-5)
    # what it keeps: where each stroke lies, and the strokes' shapes
    shifted = [THREE_STROKES[0], [(x, y + 3) for x, y in THREE_STROKES[1]], THREE_STROKES[2]]
    assert not torch.allclose(encoder(_drawing(_redrawn(shifted))), base, atol=1e-3)
    mirrored = [[(-x, y) for x, y in s] for s in THREE_STROKES]
    assert not torch.allclose(encoder(_drawing(_redrawn(mirrored))), base, atol=1e-3)
    # the whole-drawing encoder sees a reordered drawing as another one
    trajectory = TrajectoryEncoder(dim=8, input_info={"features": 3}, pen=2, points=32)
    trajectory.eval()
    assert not torch.allclose(trajectory(_drawing(_redrawn(redrawn))),
                              trajectory(_drawing(_redrawn(THREE_STROKES))), atol=1e-3)


def test_split_strokes_keeps_extra_strokes_in_the_last_row_without_their_jumps() -> None:
    steps = _drawing(_redrawn(THREE_STROKES), pad=2)
    xy, starts = steps.values[..., :2], steps.values[..., 2] > 0
    rows, row_starts, counts = split_strokes(xy, starts, steps.lengths, 4)
    assert counts.tolist() == [[3, 2, 4, 0]]
    assert rows[0, 1, :2].tolist() == [[5.0, 1.0], [7.0, 1.0]]
    assert rows[0, 1, 2:].eq(torch.tensor([7.0, 1.0])).all()  # padded with its last step
    rows, row_starts, counts = split_strokes(xy, starts, steps.lengths, 2)
    assert counts.tolist() == [[3, 6]]
    assert row_starts[0, 1, :6].tolist() == [True, False, True, False, False, False]
    out, _ = resample_trajectory(rows[:, 1], row_starts[:, 1], counts[:, 1], 20)
    y = out[0, :, 1]
    assert ((y >= 1.0 - 1e-6) | (y <= -2.0 + 1e-6)).all(), out  # nothing on the jump


def test_stroke_set_options_are_checked() -> None:
    for bad in ({"pen": 3}, {"pen": 0}, {"coords": [1, 1]}):
        with pytest.raises(ConfigError, match="different columns"):
            StrokeSetEncoder(dim=4, input_info={"features": 3}, **bad)
    for bad in ({"points": 3}, {"max_strokes": 0}, {"max_strokes": 10**6},
                {"attention": -1}, {"dropout": 1.0}):
        with pytest.raises(ConfigError, match="stroke-set needs"):
            StrokeSetEncoder(dim=4, input_info={"features": 3}, **bad)
    enc = StrokeSetEncoder(dim=4, input_info={"features": 3}, points=8, channels=2,
                           attention=0)
    with pytest.raises(ModalityError, match="float"):
        enc(ModalityBatch(torch.zeros(2, 5, 2), torch.ones(2, dtype=torch.bool)))



def _render(steps: list[tuple[float, float, float]], size: int = 9) -> torch.Tensor:
    """`StrokeImageEncoder`'s grid ``[4, size, size]`` of one drawing (x, y, stroke start)."""
    drawing = _drawing(steps)
    xy, starts = drawing.values[..., :2], drawing.values[..., 2] > 0
    resampled, first = resample_trajectory(xy, starts, drawing.lengths, 64)
    centred = resampled - resampled.mean(1, keepdim=True)
    normal = centred / centred.square().sum(-1).mean().sqrt()
    return render_motion(normal, first, size, 2.0)[0]


def test_stroke_image_renders_ink_direction_and_progress() -> None:
    grid = _render(L_SHAPE)
    ink, dx, dy, progress = grid
    assert ink.amax() == 1 and (ink >= 0).all() and (ink > 0).sum() >= 9
    # the first stroke goes up, then right; the second right: no ink moves left or down
    assert dx.min() >= -1e-6 and dy.min() >= -1e-6 and dy.max() > 0.2 and dx.max() > 0.2
    # the second stroke is drawn last: its cells hold later progress than the first's
    late = progress / ink.clamp_min(1e-6)
    assert late[:, 7][ink[:, 7] > 0.5].min() > 0.8 and late[:, 2][ink[:, 2] > 0.2].max() < 0.5
    # drawn backwards: about the same ink (resampled from the other end), the directions
    # negated, the progress reversed
    backwards = _render([(x, y, float(i in (0, 2))) for i, (x, y, _) in
                         enumerate(L_SHAPE[4:2:-1] + L_SHAPE[2::-1])])
    assert torch.allclose(backwards[0], ink, atol=0.15)
    assert torch.allclose(backwards[1:3], -grid[1:3], atol=0.15)
    assert (backwards[3] - progress).abs().max() > 0.5


def test_stroke_image_ignores_position_size_sampling_and_padding() -> None:
    torch.manual_seed(0)
    encoder = StrokeImageEncoder(dim=8, input_info={"features": 3, "max_length": 40}, pen=2,
                                 points=64, size=12, widths=[4, 8]).eval()
    base = encoder(_drawing(L_SHAPE))
    moved = [(10 + 2.5 * x, -3 + 2.5 * y, p) for x, y, p in L_SHAPE]
    assert torch.allclose(encoder(_drawing(moved, pad=5)), base, atol=1e-4)
    assert torch.allclose(encoder(_drawing(_densified(L_SHAPE))), base, atol=1e-4)
    redrawn = [THREE_STROKES[1], THREE_STROKES[0][::-1], THREE_STROKES[2]]
    # what it keeps: the mirror image and the order of the strokes
    assert not torch.allclose(encoder(_drawing([(-x, y, p) for x, y, p in L_SHAPE])), base,
                              atol=1e-3)
    assert not torch.allclose(encoder(_drawing(_redrawn(redrawn))),
                              encoder(_drawing(_redrawn(THREE_STROKES))), atol=1e-3)


def test_stroke_image_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="different columns"):
        StrokeImageEncoder(dim=4, input_info={"features": 3}, pen=0)
    for bad in ({"points": 3}, {"size": 10**6}, {"size": 2}, {"extent": 0.0},
                {"extent": float("nan")}):
        with pytest.raises(ConfigError, match="stroke-image needs"):
            StrokeImageEncoder(dim=4, input_info={"features": 3}, **bad)
    with pytest.raises(ConfigError, match="widths"):
        StrokeImageEncoder(dim=4, input_info={"features": 3}, widths=[])
    enc = StrokeImageEncoder(dim=4, input_info={"features": 3}, size=8, widths=[2])
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

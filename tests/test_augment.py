"""Training-time augmentation: determinism, resume, training episodes only, geometry shared by
an image and its trajectory, and typed errors for options that cannot apply."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.data.augment import Augmentation, step_generator
from metamodal.data.batch import Episode, ModalityBatch, TensorStore
from metamodal.datasets.synthetic import make_synthetic
from metamodal.errors import ConfigError
from metamodal.train.checkpoint import CHECKPOINT_FILE
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 33
FRAME = [0, 0, SIZE, SIZE]  # pixel i spans [i, i + 1]; y points down
PAIR_KINDS = {"image": "image", "strokes": "sequence"}
GEOMETRY = {"image": {"rotate": 40, "shift": 0.15, "scale": 0.2, "shear": 15, "flip": "both"},
            "strokes": {"coords": [0, 1], "follow": "image", "frame": FRAME}}
ALL = torch.ones(1, dtype=torch.bool)


def _dot_pair(x: int, y: int, copies: int = 1) -> dict[str, ModalityBatch]:
    """An image with one bright 3x3 blob centred on pixel (x, y), and a one-point trajectory
    at the blob's centre, ``copies`` times."""
    image = torch.zeros(copies, 1, SIZE, SIZE)
    image[:, 0, y - 1 : y + 2, x - 1 : x + 2] = 1.0
    points = torch.tensor([[x + 0.5, y + 0.5, 1.0]]).repeat(copies, 1, 1)
    present = torch.ones(copies, dtype=torch.bool)
    return {"image": ModalityBatch(image, present),
            "strokes": ModalityBatch(points, present, torch.ones(copies, dtype=torch.long))}


def _ink_centre(image: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre ``[B, 2]`` (x, y in pixel units) of ``[B, 1, H, W]``."""
    weights = image[:, 0].clamp_min(0)
    grid = torch.arange(SIZE, dtype=torch.float32) + 0.5
    total = weights.sum((1, 2))
    return torch.stack([(weights.sum(1) * grid).sum(1) / total,
                        (weights.sum(2) * grid).sum(1) / total], 1)


def test_geometric_augmentation_moves_image_and_trajectory_together() -> None:
    aug = Augmentation(GEOMETRY, PAIR_KINDS, widths={"strokes": 3})
    batch = _dot_pair(12, 20, copies=16)
    out = aug.batch(batch, step_generator(0, 3))
    moved_points = out["strokes"].values[:, 0, :2]
    assert (moved_points - batch["strokes"].values[:, 0, :2]).norm(dim=1).mean() > 2  # it moved
    inside = ((moved_points > 3) & (moved_points < SIZE - 3)).all(1)
    assert inside.sum() >= 8
    error = (_ink_centre(out["image"].values) - moved_points).norm(dim=1)[inside]
    assert error.max() < 0.75, error  # within a pixel, after bilinear resampling


def _strokes_of(steps: torch.Tensor) -> list[list[float]]:
    """The strokes of one drawing ``[T, 3]`` (x, step number, pen), each as its step numbers."""
    strokes: list[list[float]] = []
    for _x, number, pen in steps.tolist():
        if pen > 0 or not strokes:
            strokes.append([])
        strokes[-1].append(number)
    return strokes


def test_reordered_strokes_are_the_same_strokes_in_another_order_and_direction() -> None:
    drawings, lengths = [], []
    generator = torch.Generator().manual_seed(1)
    for _ in range(64):  # random strokes; padding (-7) past each length
        count = int(torch.randint(1, 6, (1,), generator=generator))
        sizes = torch.randint(1, 5, (count,), generator=generator).tolist()
        steps = [[float(s), float(len(lengths) * 100 + s), 0.0] for s in range(sum(sizes))]
        at = 0
        for size in sizes:
            steps[at][2] = 1.0
            at += size
        lengths.append(len(steps))
        drawings.append(steps + [[-7.0, -7.0, -7.0]] * (20 - len(steps)))
    values = torch.tensor(drawings)
    mb = ModalityBatch(values, torch.ones(len(values), dtype=torch.bool), torch.tensor(lengths))
    aug = Augmentation({"strokes": {"pen": 2, "shuffle_strokes": 0.5, "reverse_strokes": 0.5}},
                       {"strokes": "sequence"}, widths={"strokes": 3})
    out = aug.batch({"strokes": mb}, step_generator(0, 1))["strokes"].values
    reversed_seen = reordered_seen = False
    for before, after, length in zip(values, out, lengths, strict=True):
        assert torch.equal(after[length:], before[length:])  # padding untouched
        old, new = _strokes_of(before[:length]), _strokes_of(after[:length])
        assert sorted(sorted(s) for s in new) == sorted(sorted(s) for s in old)
        for stroke in new:
            assert stroke in old or stroke[::-1] in old  # whole strokes, maybe backwards
            reversed_seen |= len(stroke) > 1 and stroke not in old
        reordered_seen |= [min(s) for s in new] != sorted(min(s) for s in new)
    assert reversed_seen and reordered_seen


def test_class_rotations_turn_image_and_trajectory_alike() -> None:
    aug = Augmentation({**GEOMETRY, "rotate_classes": True}, PAIR_KINDS,
                       widths={"strokes": 3})
    pair = _dot_pair(6, 10)
    store = TensorStore(["a"], ["c"], pair, dict(PAIR_KINDS))
    expanded, classes = aug.expand_classes(store, ["c"])
    assert classes == ["c", "c@rot90", "c@rot180", "c@rot270"]
    assert expanded.labels == classes and expanded.ids[1] == "a@rot90"
    images = expanded.modalities["image"].values
    points = expanded.modalities["strokes"].values[:, 0, :2]
    assert torch.allclose(_ink_centre(images), points, atol=1e-4)
    assert torch.allclose(points[2], torch.tensor([SIZE - 6.5, SIZE - 10.5]))  # 180 degrees


def test_same_seed_and_episode_give_the_same_transforms() -> None:
    aug = Augmentation(GEOMETRY, PAIR_KINDS, widths={"strokes": 3})
    batch = _dot_pair(12, 20, copies=4)
    first = aug.batch(batch, step_generator(7, 11))
    again = aug.batch(batch, step_generator(7, 11))
    other = aug.batch(batch, step_generator(7, 12))
    for name in batch:
        assert torch.equal(first[name].values, again[name].values)
    assert not torch.equal(first["image"].values, other["image"].values)
    assert torch.equal(batch["image"].values, _dot_pair(12, 20, copies=4)["image"].values)


def test_modality_dropout_keeps_one_modality_per_sample() -> None:
    aug = Augmentation({"modality_dropout": 0.9}, PAIR_KINDS)
    out = aug.batch(_dot_pair(12, 20, copies=200), step_generator(0, 0))
    present = torch.stack([out[n].present for n in PAIR_KINDS], 1)
    assert present.any(1).all()
    assert (~present).sum() > 100  # most samples lost one of the two
    hidden = ~out["image"].present
    assert out["image"].values[hidden].abs().sum() == 0  # hidden rows are zeroed


def test_token_dropout_packs_the_kept_tokens_and_keeps_one() -> None:
    aug = Augmentation({"caption": {"token_dropout": 0.9}}, {"caption": "text"})
    tokens = torch.arange(1, 9).repeat(50, 1)
    batch = {"caption": ModalityBatch(tokens, torch.ones(50, dtype=torch.bool),
                                      torch.full((50,), 8))}
    out = aug.batch(batch, step_generator(0, 0))["caption"]
    assert (out.lengths >= 1).all() and out.lengths.float().mean() < 3
    for row, length in zip(out.values, out.lengths, strict=True):
        kept = row[:length]
        assert (kept > 0).all() and (row[length:] == 0).all()
        assert torch.equal(kept, kept.sort().values)  # order kept


def test_audio_masks_stay_inside_the_valid_frames() -> None:
    aug = Augmentation({"sound": {"time_shift": 0.5, "gain_db": 6, "freq_mask": 3,
                                  "time_mask": 4}}, {"sound": "audio"})
    values = torch.randn(8, 10, 20)
    lengths = torch.full((8,), 12)
    values[:, :, 12:] = 0
    batch = {"sound": ModalityBatch(values, torch.ones(8, dtype=torch.bool), lengths)}
    out = aug.batch(batch, step_generator(0, 0))["sound"].values
    assert (out[:, :, 12:] == 0).all()
    assert not torch.equal(out[:, :, :12], values[:, :, :12])


@pytest.mark.parametrize(("options", "key", "needle"), [
    ({"caption": {"rotate": 10}}, "augment.caption.rotate", "text modality has no 'rotate'"),
    ({"image": {"rotate": 400}}, "augment.image.rotate", "out of range"),
    ({"image": {"shift": -0.1}}, "augment.image.shift", "out of range"),
    ({"image": {"flip": "diagonal"}}, "augment.image.flip", "unknown"),
    ({"sound": {"token_dropout": 0.1}}, "augment.sound.token_dropout", "text"),
    ({"modality_dropout": 1.0}, "augment.modality_dropout", "out of range"),
    ({"imag": {"rotate": 5}}, "augment.imag", "no such modality"),
    ({"strokes": {"coords": [0, 1], "follow": "image"}}, "augment.strokes.frame", "frame"),
    ({"strokes": {"jitter": 0.1}}, "augment.strokes.coords", "coordinate columns"),
    ({"strokes": {"coords": [0, 7]}}, "augment.strokes.coords", "column"),
    ({"rotate_classes": "yes"}, "augment.rotate_classes", "true or false"),
    ({"strokes": {"reverse_strokes": 0.5}}, "augment.strokes.pen", "where each stroke starts"),
    ({"strokes": {"pen": 3, "shuffle_strokes": 1.5}}, "augment.strokes.shuffle_strokes",
     "out of range"),
    ({"strokes": {"pen": True}}, "augment.strokes.pen", "one column number"),
    ({"strokes": {"pen": -1}}, "augment.strokes.pen", "names a column"),
    ({"caption": {"pen": 0}}, "augment.caption.pen", "text modality has no 'pen'"),
    ({"rotate_classes": True, "caption": {}}, "augment.rotate_classes", "cannot rotate the text"),
])
def test_inapplicable_or_out_of_range_options_are_typed_errors(
    options: dict, key: str, needle: str
) -> None:
    kinds = {**PAIR_KINDS, "caption": "text", "sound": "audio"}
    if options.get("rotate_classes") is True:
        options = {**options, "strokes": {"coords": [0, 1]}}
    with pytest.raises(ConfigError) as caught:
        Augmentation(options, kinds, widths={"strokes": 3})
    assert caught.value.column == key
    assert needle in str(caught.value) and "fix:" in str(caught.value)


def test_rotate_classes_refuses_non_square_images() -> None:
    aug = Augmentation({"rotate_classes": True}, {"image": "image"})
    store = TensorStore(["a"], ["c"], {"image": ModalityBatch(torch.zeros(1, 1, 4, 6), ALL)},
                        {"image": "image"})
    with pytest.raises(ConfigError, match="square"):
        aug.expand_classes(store, ["c"])


# -- in training ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("data") / "tiny", classes=24, per_class=8,
                          seed=5, image_size=16)


AUGMENT = {"modality_dropout": 0.3, "image": {"rotate": 20, "shift": 0.1},
           "track": {"coords": [0, 1], "rotate": 30, "time_warp": 0.2, "jitter": 0.05},
           "caption": {"token_dropout": 0.2}, "measurements": {"noise": 0.1}}


def _config(data: Path, **values) -> TrainConfig:
    base = dict(data=str(data), steps=12, ways=3, shots=1, queries=2, dim=8, val_every=6,
                val_episodes=6, checkpoint_every=4, seed=2, device="cpu",
                modalities=["image", "track", "caption", "measurements"], augment=AUGMENT)
    base.update(values)
    return TrainConfig(**base)


class _Kill(Exception):
    pass


def test_augmented_training_resumes_bit_identically(tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_data)
    Trainer(config, tmp_path / "full", progress=False).fit()

    def die(step: int, values: dict) -> None:
        if step == 7:
            raise _Kill

    with pytest.raises(_Kill):
        Trainer(config, tmp_path / "killed", progress=False, callbacks=[die]).fit()
    Trainer(config, tmp_path / "killed", progress=False).fit(resume=True)
    full, resumed = (torch.load(tmp_path / run / CHECKPOINT_FILE, weights_only=False)["model"]
                     for run in ("full", "killed"))
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    plain = Trainer(_config(tiny_data, augment={}), tmp_path / "plain", progress=False).fit()
    unaugmented = torch.load(plain.run_dir / CHECKPOINT_FILE, weights_only=False)["model"]
    assert any(not torch.equal(full[k], unaugmented[k]) for k in full)  # it did augment


def test_augmentation_touches_training_episodes_only(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    episodes: list[Episode] = []
    batches: list[int] = []
    episode, batch = Augmentation.episode, Augmentation.batch

    def spy_episode(self: Augmentation, item: Episode, generator: torch.Generator) -> Episode:
        episodes.append(item)
        return episode(self, item, generator)

    def spy_batch(self: Augmentation, item: dict, generator: torch.Generator) -> dict:
        batches.append(len(next(iter(item.values()))))
        return batch(self, item, generator)

    monkeypatch.setattr(Augmentation, "episode", spy_episode)
    monkeypatch.setattr(Augmentation, "batch", spy_batch)
    config = _config(tiny_data, meta_batch=2)
    Trainer(config, tmp_path / "run", progress=False).fit()  # validates twice, 6 episodes each
    assert len(episodes) == config.steps * config.meta_batch
    assert len(batches) == 2 * len(episodes)  # their support and query sets, nothing else
    train = set(tomllib.loads((tmp_path / "run" / "config.toml").read_text())["split"]["train"])
    assert all(set(e.classes) <= train for e in episodes)


def test_cli_augment_flags_reach_the_run_config(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = main(["train", "--data", str(tiny_data), "--out", str(out), "--steps", "2",
                 "--ways", "3", "--queries", "2", "--dim", "8", "--val-episodes", "2",
                 "--modalities", "image,track", "--no-progress",
                 "--augment", "image.rotate=15", "--augment", "image.flip=horizontal",
                 "--augment", "track.coords=[0, 1]", "--augment", "track.jitter=0.01",
                 "--augment", "modality_dropout=0.2"])
    assert code == 0
    augment = tomllib.loads((out / "config.toml").read_text())["train"]["augment"]
    assert augment["image"] == {"rotate": 15, "flip": "horizontal"}
    assert augment["track"] == {"coords": [0, 1], "jitter": 0.01}
    assert math.isclose(augment["modality_dropout"], 0.2)


def test_cli_rejects_a_rotation_of_text_with_the_key(tiny_data: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--no-progress", "--augment", "caption.rotate=10"])
    assert code != 0
    err = capsys.readouterr().err
    assert "augment.caption.rotate" in err and "fix" in err


def test_cli_huge_or_deeply_nested_augment_values_are_typed_errors(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for value in ("9" * 5000, "[" * 3000 + "]" * 3000):
        code = main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"),
                     "--steps", "2", "--no-progress", "--augment", f"image.rotate={value}"])
        assert code == 2
        assert "augment.image.rotate" in capsys.readouterr().err


def test_sample_copies_are_each_samples_own_whatever_its_batch_and_padding() -> None:
    """`Augmentation.sample_copies` (test-time augmentation): a sample's copies are the same
    alone and in a batch padded to a longer sample, for token dropout over padded text and
    jitter over padded sequences (draws whose shapes follow the padding); two samples of one
    batch get copies of their own."""
    aug = Augmentation({"words": {"token_dropout": 0.3},
                        "track": {"jitter": 0.05, "coords": [0, 1]}},
                       {"words": "text", "track": "sequence"}, widths={"track": 2})
    present = torch.ones(2, dtype=torch.bool)
    tokens = torch.zeros(2, 12, dtype=torch.long)
    tokens[0, :12] = torch.arange(2, 14)
    tokens[1, :5] = torch.arange(20, 25)
    steps = torch.zeros(2, 30, 2)
    steps[0] = torch.rand(30, 2)
    steps[1, :7] = torch.rand(7, 2)
    both = {"words": ModalityBatch(tokens, present, torch.tensor([12, 5])),
            "track": ModalityBatch(steps, present, torch.tensor([30, 7]))}
    one = torch.ones(1, dtype=torch.bool)
    alone = {"words": ModalityBatch(tokens[1:, :5], one, torch.tensor([5])),
             "track": ModalityBatch(steps[1:, :7], one, torch.tensor([7]))}
    for joined, single in zip(aug.sample_copies(both, 3), aug.sample_copies(alone, 3),
                              strict=True):
        for name, length_axis in (("words", 1), ("track", 1)):
            got, want = joined[name], single[name]
            n = int(want.lengths[0])
            assert int(got.lengths[1]) == n
            torch.testing.assert_close(got.values[1:].narrow(length_axis, 0, n),
                                       want.values.narrow(length_axis, 0, n), rtol=0, atol=0)
        assert not torch.equal(joined["track"].values[0, :7], joined["track"].values[1, :7])


def test_sample_copies_do_not_follow_a_samples_last_bits() -> None:
    """A sound decoded beside others can differ from itself decoded alone in its last bits;
    seeded by the sample's values, its copies were other transforms then (a different answer
    alone than in a batch). They follow its shape only."""
    aug = Augmentation({"v": {"noise": 0.1}}, {"v": "tabular"})
    one = torch.ones(1, dtype=torch.bool)
    values = torch.rand(1, 5)
    nudged = values + 1e-6
    copy, again = (next(aug.sample_copies({"v": ModalityBatch(v, one)}, 1))["v"].values - v
                   for v in (values, nudged))
    torch.testing.assert_close(copy, again, rtol=0, atol=1e-5)  # the same noise drawn

"""Tests of the image loader: pixel values, normalisation, resizing, errors, state round-trip."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metamodal.data.loaders import DecodeContext, ImageLoader, loaders
from metamodal.data.loaders.image import decoded_pixels
from metamodal.errors import ConfigError, DatasetError


def context(root: Path, n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(root, "samples.csv", list(range(1, n + 1)), "photo", problems)


def save(root: Path, name: str, pixels: np.ndarray, mode: str | None = None) -> str:
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(root / name)
    return name


def test_registered_under_kind() -> None:
    assert loaders.names() == ["audio", "image", "sequence", "tabular", "text", "video"]
    assert isinstance(loaders.create("image", size=8), ImageLoader)


def test_known_gray_image_decodes_to_expected_normalised_pixels(tmp_path: Path) -> None:
    name = save(tmp_path, "g.png", np.array([[0, 255], [255, 0]], dtype=np.uint8))
    loader = ImageLoader(size=2, channels=1)
    loader.fit([name], context(tmp_path, 1))
    assert loader.mean_ == pytest.approx([0.5])
    assert loader.std_ == pytest.approx([0.5])
    batch = loader.decode([name, None], context(tmp_path, 2))
    assert batch.values.shape == (2, 1, 2, 2)
    assert batch.values.dtype == torch.float32
    assert batch.values[0, 0].tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    assert batch.values[1].abs().sum() == 0  # absent rows stay zero after normalising
    assert batch.present.tolist() == [True, False]
    assert batch.lengths is None


def test_rgb_values_are_channel_first_in_unit_range(tmp_path: Path) -> None:
    pixels = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [51, 102, 204]]], np.uint8)
    name = save(tmp_path, "c.png", pixels)
    values = ImageLoader(size=2, normalize=False).decode([name], context(tmp_path, 1)).values
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
    assert torch.allclose(values[0], expected)


def test_per_channel_statistics_over_all_meta_train_pixels(tmp_path: Path) -> None:
    black = save(tmp_path, "k.png", np.zeros((4, 4, 3), np.uint8))
    red = save(tmp_path, "r.png", np.tile(np.array([255, 0, 51], np.uint8), (4, 4, 1)))
    loader = ImageLoader(size=4)
    loader.fit([black, None, red], context(tmp_path, 3))
    assert loader.mean_ == pytest.approx([0.5, 0.0, 0.1])
    assert loader.std_ == pytest.approx([0.5, 1.0, 0.1])  # constant channel keeps std 1
    values = loader.decode([red], context(tmp_path, 1)).values
    assert values[0, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 1.0], abs=1e-5)


def test_grayscale_and_colour_conversions(tmp_path: Path) -> None:
    gray = save(tmp_path, "g.png", np.full((3, 3), 102, np.uint8))
    red = save(tmp_path, "r.png", np.tile(np.array([255, 0, 0], np.uint8), (3, 3, 1)))
    rgb = ImageLoader(size=3, normalize=False).decode([gray], context(tmp_path, 1)).values
    assert torch.allclose(rgb, torch.full((1, 3, 3, 3), 0.4))  # gray copied to R, G and B
    luma = ImageLoader(size=3, channels=1, normalize=False).decode([red], context(tmp_path, 1))
    assert luma.values.shape == (1, 1, 3, 3)
    assert torch.allclose(luma.values, torch.full((1, 1, 3, 3), 76 / 255))  # ITU-R 601-2


def test_resize_to_height_width_keeps_layout(tmp_path: Path) -> None:
    pixels = np.zeros((4, 10), np.uint8)
    pixels[:, 5:] = 255  # left half black, right half white
    name = save(tmp_path, "lr.png", pixels)
    values = ImageLoader(size=[2, 4], channels=1, normalize=False).decode(
        [name], context(tmp_path, 1)).values
    assert values.shape == (1, 1, 2, 4)
    assert (values[0, 0, :, :2] < 0.1).all() and (values[0, 0, :, 2:] > 0.9).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((2, 4), np.uint8)
    pixels[:, 2:] = 255  # 4 wide, 2 tall; left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    values = ImageLoader(size=[4, 2], channels=1, normalize=False).decode(
        ["o.png"], context(tmp_path, 1)).values
    assert (values[0, 0, :2] < 0.1).all() and (values[0, 0, 2:] > 0.9).all()


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2, 4), np.uint8)  # black, fully transparent...
    pixels[0, 0] = [0, 0, 0, 255]  # ...except one opaque black pixel
    name = save(tmp_path, "a.png", pixels)
    values = ImageLoader(size=2, normalize=False).decode([name], context(tmp_path, 1)).values
    assert values[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert values[0, :, 1, 1].tolist() == [1.0, 1.0, 1.0]


def test_sixteen_bit_grayscale_uses_full_range(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)).save(tmp_path / "d.png")
    values = ImageLoader(size=[1, 2], channels=1, normalize=False).decode(
        ["d.png"], context(tmp_path, 1)).values
    assert values.flatten().tolist() == pytest.approx([0.0, 1.0])


def test_missing_file_names_path_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found") as info:
        ImageLoader().decode([None, "img/none.png"], context(tmp_path, 2))
    assert (info.value.file, info.value.row, info.value.column) == ("img/none.png", 2, "photo")
    assert info.value.fix


def test_corrupt_files_are_reported_with_their_path(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    good = save(tmp_path, "ok.png", np.full((8, 8), 200, np.uint8))
    (tmp_path / "cut.png").write_bytes((tmp_path / good).read_bytes()[:40])
    with pytest.raises(DatasetError, match="cannot decode image") as info:
        ImageLoader().decode(["bad.png"], context(tmp_path, 1))
    assert info.value.file == "bad.png"
    assert "(the path is in samples.csv)" in info.value.message  # the row is the table's
    problems: list[DatasetError] = []
    batch = ImageLoader(size=2).decode(["cut.png", good, "bad.png", "gone.png"],
                                       context(tmp_path, 4, problems))
    assert [(p.file, p.row) for p in problems] == [("cut.png", 1), ("bad.png", 3),
                                                   ("gone.png", 4)]
    assert batch.present.tolist() == [False, True, False, False]
    assert batch.values[[0, 2, 3]].abs().sum() == 0


def test_state_dict_round_trip_decodes_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = [save(tmp_path, f"{k}.png", rng.integers(0, 256, (6, 5, 3), dtype=np.uint8))
             for k in range(3)]
    loader = ImageLoader(size=[4, 3])
    loader.fit(names, context(tmp_path, 3))
    state = json.loads(json.dumps(loader.state_dict()))
    again = ImageLoader.from_state(state)
    assert again.is_fitted and again.input_info() == {"channels": 3, "height": 4, "width": 3}
    first = loader.decode([*names, None], context(tmp_path, 4))
    second = again.decode([*names, None], context(tmp_path, 4))
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.present, second.present)


def test_decode_before_fit_uses_identity_normalisation(tmp_path: Path) -> None:
    name = save(tmp_path, "w.png", np.full((2, 2), 255, np.uint8))
    loader = ImageLoader(size=2)
    assert not loader.is_fitted
    assert torch.equal(loader.decode([name], context(tmp_path, 1)).values,
                       torch.ones(1, 3, 2, 2))


def test_fit_without_images_warns_and_keeps_identity(tmp_path: Path) -> None:
    loader = ImageLoader(size=2, channels=1)
    with pytest.warns(UserWarning, match="no meta-train images"):
        loader.fit([None, None], context(tmp_path, 2))
    assert (loader.mean_, loader.std_) == ([0.0], [1.0])


@pytest.mark.parametrize("options", [{"channels": 2}, {"size": 0}, {"size": [1, 2, 3]},
                                     {"size": True}, {"normalize": "yes"}])
def test_invalid_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError):
        ImageLoader(**options)


@pytest.mark.parametrize("channels", [3, 1])
def test_large_jpeg_is_shrunk_to_the_right_colour(tmp_path: Path, channels: int) -> None:
    Image.new("RGB", (640, 480), (200, 100, 50)).save(tmp_path / "big.jpg", quality=95)
    values = ImageLoader(size=8, channels=channels, normalize=False).decode(
        ["big.jpg"], context(tmp_path, 1)).values
    expected = [200, 100, 50] if channels == 3 else [0.299 * 200 + 0.587 * 100 + 0.114 * 50]
    assert values.shape == (1, channels, 8, 8)
    assert torch.allclose(values[0].mean(dim=(1, 2)), torch.tensor(expected) / 255, atol=0.02)


def test_empty_batch_has_zero_rows(tmp_path: Path) -> None:
    batch = ImageLoader(size=4).decode([], context(tmp_path, 0))
    assert batch.values.shape == (0, 3, 4, 4) and batch.present.shape == (0,)


def test_decoded_pixels_count_a_jpeg_at_the_loader_s_draft() -> None:
    """serve's per-request pixel budget counted every JPEG at its smallest draft (1/8 a side),
    which a loader of a large size does not decode it to."""
    jpeg = io.BytesIO()
    Image.new("RGB", (800, 800), (10, 200, 30)).save(jpeg, "JPEG")
    assert decoded_pixels(jpeg.getvalue()) == 100 * 100
    assert decoded_pixels(jpeg.getvalue(), "RGB", 400) == 400 * 400
    assert decoded_pixels(jpeg.getvalue(), "RGB", 800) == 800 * 800
    assert decoded_pixels(b"not an image") == 0

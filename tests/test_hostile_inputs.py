"""Hostile inputs: paths leading out of the dataset, special files, absurd sizes, deep nesting.

Each test builds a small valid dataset, breaks one thing and checks that the result is a typed
error that names the file (and row / column where there is one), never a hang or a raw
exception.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

from metamodal.config import load_config
from metamodal.data.dataset import load_dataset
from metamodal.data.inspect import inspect_dataset
from metamodal.data.preprocess import Preprocessor
from metamodal.data.splits import load_split
from metamodal.errors import ConfigError, DatasetError

SCHEMA = 'label = "y"\n{extra}\n[modalities.photo]\nkind = "image"\ncolumn = "photo"\nsize = 8\n'


def _dataset(root: Path, photo: str = "a.png", extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 5), (200, 10, 10)).save(root / "a.png")
    (root / "dataset.toml").write_text(SCHEMA.format(extra=extra))
    (root / "samples.csv").write_text(f"id,y,photo\na,P,a.png\nb,Q,{photo}\n")
    return root


def _decode(root: Path):
    dataset = load_dataset(root)
    pre = Preprocessor(dataset.schema).fit(dataset, dataset.classes)
    return pre.transform(dataset)


def _outside_image(tmp_path: Path) -> Path:
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    return tmp_path / "secret.png"


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_media_path_outside_the_dataset_is_refused(tmp_path: Path, how: str) -> None:
    secret = _outside_image(tmp_path)
    root = tmp_path / "ds"
    root.mkdir()
    if how == "symlink":
        (root / "link.png").symlink_to(secret)
    cell = {"dotdot": "../secret.png", "absolute": str(secret), "symlink": "link.png"}[how]
    _dataset(root, cell)
    with pytest.raises(DatasetError, match="outside the dataset directory") as caught:
        _decode(root)
    assert (caught.value.file, caught.value.row, caught.value.column) == (cell, 2, "photo")
    assert "allow_outside_paths" in caught.value.fix
    report = inspect_dataset(root)
    assert not report.ok and any("outside" in p.message for p in report.problems)


def test_allow_outside_paths_lets_the_user_opt_in(tmp_path: Path) -> None:
    _outside_image(tmp_path)
    root = _dataset(tmp_path / "ds", "../secret.png", extra="allow_outside_paths = true")
    assert _decode(root).modalities["photo"].present.tolist() == [True, True]


def test_samples_outside_the_dataset_is_refused(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", extra='samples = "../elsewhere.csv"')
    (tmp_path / "elsewhere.csv").write_text("id,y,photo\na,P,a.png\n")
    with pytest.raises(DatasetError, match="outside") as caught:
        load_dataset(root)
    assert caught.value.file.endswith("dataset.toml") and caught.value.column == "samples"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_special_files_are_refused_without_being_opened(tmp_path: Path, kind: str) -> None:
    root = _dataset(tmp_path / "ds", "special.png")
    if kind == "fifo":
        os.mkfifo(root / "special.png")
    else:
        (root / "special.png").mkdir()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            _decode(root)
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            outcome.append(error)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # unblock the reader, then fail
        with open(root / "special.png", "wb"):
            pass
        pytest.fail("decoding a FIFO hung")
    assert isinstance(outcome[0], DatasetError)
    assert outcome[0].file == "special.png" and outcome[0].row == 2
    assert ("FIFO" if kind == "fifo" else "directory") in outcome[0].message


def test_a_5000_character_path_is_a_typed_error(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", "a/" * 2500)
    with pytest.raises(DatasetError, match="5000 characters") as caught:
        _decode(root)
    assert caught.value.row == 2 and caught.value.column == "photo"


def test_a_sample_table_that_is_a_directory_says_so(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "samples.csv").unlink()
    (root / "samples.csv").mkdir()
    with pytest.raises(DatasetError, match="directory") as caught:
        load_dataset(root)
    assert caught.value.file == str(root / "samples.csv")


def test_a_splits_file_that_is_a_directory_is_a_problem(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "splits.toml").mkdir()
    with pytest.raises(DatasetError, match="directory") as caught:
        load_split(root, ["P", "Q"])
    assert caught.value.file == str(root / "splits.toml")
    report = inspect_dataset(root)
    assert not report.ok and any("splits.toml" in str(p.file) for p in report.problems)


DEEP_TOML = "a = " + "[" * 5000 + "]" * 5000 + "\n"
LONG_INT = "a = " + "9" * 5000 + "\n"


@pytest.mark.parametrize("text", [DEEP_TOML, LONG_INT], ids=["deep", "long-int"])
def test_deep_or_huge_toml_is_a_typed_error(tmp_path: Path, text: str) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "dataset.toml").write_text(text)
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert caught.value.file == str(root / "dataset.toml")
    (root / "dataset.toml").write_text(SCHEMA.format(extra=""))
    (root / "splits.toml").write_text(text)
    with pytest.raises(DatasetError) as caught:
        load_split(root, ["P", "Q"])
    assert caught.value.file == str(root / "splits.toml")
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "c.toml")
    assert caught.value.file == str(tmp_path / "c.toml")


@pytest.mark.parametrize("line", ["[" * 5000 + "]" * 5000, '{"id": ' + "9" * 5000 + "}"],
                         ids=["deep", "long-int"])
def test_deep_or_huge_json_lines_are_a_typed_error(tmp_path: Path, line: str) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "samples.csv").unlink()
    (root / "samples.jsonl").write_text('{"id": "a", "y": "P", "photo": "a.png"}\n' + line + "\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert caught.value.file == str(root / "samples.jsonl") and caught.value.row == 2


def _classes(root: Path, n: int, per_class: int = 2, photo: str = "a.png") -> Path:
    _dataset(root)
    rows = [f"s{c}_{k},c{c},{photo}" for c in range(n) for k in range(per_class)]
    (root / "samples.csv").write_text("id,y,photo\n" + "\n".join(rows) + "\n")
    return root


def test_inspect_agrees_with_train_on_the_split(tmp_path: Path) -> None:
    from metamodal.cli import main

    root = _classes(tmp_path / "ds", 20)
    assert inspect_dataset(root).ok and main(["inspect", str(root)]) == 0
    few = _classes(tmp_path / "few", 4)
    report = inspect_dataset(few)
    assert not report.ok and any("meta-train split has" in p.message for p in report.problems)
    assert main(["inspect", str(few)]) == 1
    (root / "splits.toml").write_text('train = []\nval = ["c0", "c1"]\ntest = ["c2"]\n')
    report = inspect_dataset(root)
    (problem,) = report.problems
    assert problem.file == str(root / "splits.toml") and problem.column == "train"
    (root / "splits.toml").write_text('train = ["c0", "c1", "c2", "c3", "c4"]\nval = ["c5"]\n')
    (problem,) = inspect_dataset(root).problems
    assert problem.column == "val" and "validation" in problem.message


def test_rows_without_any_modality_make_the_dataset_unusable(tmp_path: Path) -> None:
    root = _classes(tmp_path / "ds", 20, photo="")
    report = inspect_dataset(root)
    assert not report.ok
    assert {p.row for p in report.problems if "no modality" in p.message} == set(range(1, 41))


MEDIA_SCHEMA = '''label = "y"
[modalities.photo]
kind = "image"
column = "photo"
size = 8
[modalities.sound]
kind = "audio"
column = "sound"
sample_rate = 8000
n_fft = 64
hop_length = 32
n_mels = 8
[modalities.track]
kind = "sequence"
column = "track"
[modalities.note]
kind = "text"
column = "note"
'''


@pytest.mark.parametrize(("modality", "option"), [
    ("photo", "channels = 3.0"), ("photo", "size = 100000"), ("photo", "size = [8, 0]"),
    ("sound", "sample_rate = 2147483647"), ("sound", "n_fft = 1073741824"),
    ("sound", "n_mels = 100000"), ("sound", "max_seconds = 1e9"),
    ("sound", "hop_length = 1073741824"), ("track", "max_length = 1073741824"),
    ("note", "max_length = 1073741824"), ("note", "max_vocab = 1e3"),
])
def test_loader_options_are_bounded(tmp_path: Path, modality: str, option: str) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    key = option.split(" ")[0]
    blocks = MEDIA_SCHEMA.split("[modalities.")
    blocks = [
        "\n".join(line for line in block.splitlines() if not line.startswith(f"{key} ="))
        + f"\n{option}\n" if block.startswith(f"{modality}]") else block for block in blocks]
    schema = "[modalities.".join(blocks)
    (root / "dataset.toml").write_text(schema)
    (root / "samples.csv").write_text("id,y,photo,sound,track,note\na,P,,,,hi\n")
    with pytest.raises(DatasetError) as caught:
        load_dataset(root)
    assert caught.value.file == str(root / "dataset.toml")
    assert caught.value.column.startswith(f"modalities.{modality}")


def _wav_header(rate: int) -> bytes:
    import struct

    data = b"\x00\x00" * 16
    fmt = struct.pack("<HHIIHH", 1, 1, rate, (rate * 2) & 0xFFFFFFFF, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _media_dataset(root: Path, column: str, cell: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(MEDIA_SCHEMA)
    cells = {"photo": "", "sound": "", "track": "", column: cell}
    (root / "samples.csv").write_text(
        "id,y,photo,sound,track,note\n"
        f"a,P,{cells['photo']},{cells['sound']},{cells['track']},hi\n")
    return root


def test_an_audio_header_claiming_2147483647_hz_is_a_typed_error(tmp_path: Path) -> None:
    root = _media_dataset(tmp_path / "ds", "sound", "fast.wav")
    (root / "fast.wav").write_bytes(_wav_header(2_147_483_647))
    with pytest.raises(DatasetError) as caught:
        _decode(root)
    assert caught.value.file == "fast.wav" and caught.value.row == 1
    assert caught.value.column == "sound"


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    root = _media_dataset(tmp_path / "ds", "photo", "bomb.png")
    Image.new("1", (9000, 8000)).save(root / "bomb.png")
    with pytest.raises(DatasetError, match="pixels") as caught:
        _decode(root)
    assert caught.value.file == "bomb.png" and caught.value.column == "photo"


def test_nan_pixels_of_a_float_image_name_the_file(tmp_path: Path) -> None:
    import numpy as np

    root = _media_dataset(tmp_path / "ds", "photo", "float.tiff")
    pixels = np.full((6, 6), 100.0, dtype=np.float32)
    pixels[2, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(root / "float.tiff")
    with pytest.raises(DatasetError, match="NaN") as caught:
        _decode(root)
    assert caught.value.file == "float.tiff" and caught.value.row == 1

"""The video kind: decoding with PyAV, bounds, inspection, augmentation, import, training."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from metamodal.config import TrainConfig
from metamodal.data.augment import Augmentation
from metamodal.data.batch import ModalityBatch
from metamodal.data.dataset import load_dataset
from metamodal.data.inspect import format_inspection, inspect_dataset
from metamodal.data.kinds import modality_kind
from metamodal.data.loaders.base import DecodeContext
from metamodal.data.loaders.video import VideoLoader, sample_indices
from metamodal.datasets.importers import import_dataset
from metamodal.encoders import DEFAULT_ENCODERS, build_encoder, encoders
from metamodal.errors import ConfigError, DatasetError
from metamodal.evaluate.protocol import evaluate
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer


def write_video(path: Path, frames: int = 12, size: int = 32, rate: int = 8,
                codec: str = "mpeg4", colour: tuple[int, int, int] = (0, 0, 0)) -> Path:
    """A small video whose frame ``i`` has red ``20 * i`` plus ``colour``, with a white square
    in its top-left quarter (so that geometric augmentation shows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.zeros((size, size, 3), np.uint8)
            image[...] = colour
            image[..., 0] = min(255, 20 * i + colour[0])
            image[: size // 3, : size // 3] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    """A Matroska file holding one audio stream and no video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def context(root: Path, n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(root, "samples.csv", list(range(1, n + 1)), "clip", problems=problems,
                         noun="video")


def test_decode_shape_and_uniform_sampling(tmp_path: Path) -> None:
    write_video(tmp_path / "a.mp4", frames=12)
    batch = VideoLoader(frames=4, size=8).decode(["a.mp4", None], context(tmp_path, 2))
    assert batch.values.shape == (2, 4, 3, 8, 8) and batch.present.tolist() == [True, False]
    assert float(batch.values.min()) >= 0 and float(batch.values.max()) <= 1
    assert bool((batch.values[1] == 0).all())
    # frame i has red 20 * i: the centres of 4 segments of 12 frames are 1, 4, 7, 10
    assert sample_indices(12, 4) == [1, 4, 7, 10]
    red = batch.values[0, :, 0, 4:, 4:].mean((1, 2))  # away from the white square
    assert red.tolist() == pytest.approx([20 * i / 255 for i in (1, 4, 7, 10)], abs=0.03)
    gray = VideoLoader(frames=2, size=[8, 6], channels=1).decode(["a.mp4"], context(tmp_path, 1))
    assert gray.values.shape == (1, 2, 1, 8, 6)
    short = VideoLoader(frames=6, size=8).decode([str(write_video(tmp_path / "s.mp4", frames=2)
                                                    .name)], context(tmp_path, 1))
    assert short.values.shape == (1, 6, 3, 8, 8)  # a short video repeats frames


def test_webm_and_h264_decode(tmp_path: Path) -> None:
    write_video(tmp_path / "a.webm", codec="libvpx")
    write_video(tmp_path / "b.mp4", codec="libx264")
    batch = VideoLoader(frames=4, size=8).decode(["a.webm", "b.mp4"], context(tmp_path, 2))
    assert batch.present.tolist() == [True, True]
    red = batch.values[:, :, 0, 4:, 4:].mean((2, 3))
    assert red[0].tolist() == pytest.approx(red[1].tolist(), abs=0.03)


def test_corrupt_truncated_empty_and_audio_only_files_are_named(tmp_path: Path) -> None:
    data = write_video(tmp_path / "good.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_audio_only(tmp_path / "sound.mka")
    cells = ["truncated.mp4", "corrupt.mp4", "empty.mp4", "sound.mka", "missing.mp4", "good.mp4"]
    problems: list[DatasetError] = []
    batch = VideoLoader(frames=2, size=8).decode(cells, context(tmp_path, 6, problems))
    assert batch.present.tolist() == [False] * 5 + [True]
    assert [(p.file, p.row, p.column) for p in problems] == [
        (cell, row, "clip") for row, cell in enumerate(cells[:5], start=1)]
    messages = [p.message for p in problems]
    assert "truncated" in messages[0] and "cannot decode" in messages[1]
    assert "empty" in messages[2] and "audio only" in messages[3]
    assert "not found" in messages[4] and all(p.fix for p in problems)
    with pytest.raises(DatasetError, match="corrupt.mp4, row 1, column clip"):
        VideoLoader().decode(["corrupt.mp4"], context(tmp_path, 1))


def test_sizes_are_bounded_before_and_while_decoding(tmp_path: Path) -> None:
    write_video(tmp_path / "big.mp4", frames=12, size=64)
    write_video(tmp_path / "long.webm", frames=40, size=16, codec="libvpx")

    def problem(cell: str, **options: int | float) -> str:
        problems: list[DatasetError] = []
        VideoLoader(frames=2, size=8, **options).decode([cell], context(tmp_path, 1, problems))
        assert len(problems) == 1 and problems[0].file == cell
        return problems[0].message

    assert "max_side = 32" in problem("big.mp4", max_side=32)
    assert "max_bytes" in problem("big.mp4", max_bytes=100)
    assert "max_seconds = 1" in problem("big.mp4", max_seconds=1)
    # WebM states no frame count: the bound holds while the packets are counted
    with av.open(str(tmp_path / "long.webm")) as container:
        assert container.streams.video[0].frames == 0
    assert "max_source_frames = 10" in problem("long.webm", max_source_frames=10)
    with pytest.raises(ConfigError, match="frames"):
        VideoLoader(frames=0)
    with pytest.raises(ConfigError, match="max_side"):
        VideoLoader(max_side=10**9)


def test_a_path_out_of_the_dataset_is_refused(tmp_path: Path) -> None:
    write_video(tmp_path / "outside.mp4")
    root = tmp_path / "ds"
    root.mkdir()
    # a playlist inside the dataset that names a video outside it
    (root / "list.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n../outside.mp4\n#EXT-X-ENDLIST\n")
    problems: list[DatasetError] = []
    batch = VideoLoader(frames=2, size=8).decode(["../outside.mp4", "list.m3u8"],
                                                 context(root, 2, problems))
    assert batch.present.tolist() == [False, False]
    assert [p.file for p in problems] == ["../outside.mp4", "list.m3u8"]
    assert "formats read" in problems[1].message


def video_dataset(root: Path, classes: int = 10, per_class: int = 4,
                  corrupt: bool = False) -> Path:
    """Videos of a colour per class plus a tabular modality, in ``root``."""
    rows = ["id,label,clip,a,b"]
    rng = np.random.default_rng(0)
    for c in range(classes):
        colour = (0, (37 * c) % 200, (91 * c) % 200)
        for j in range(per_class):
            name = f"videos/c{c}_{j}.mp4"
            write_video(root / name, frames=6, size=16, colour=colour)
            a, b = rng.normal(c, 0.3, 2)
            rows.append(f"s{c}_{j},c{c},{name},{a:.3f},{b:.3f}")
    if corrupt:
        (root / "videos/c0_0.mp4").write_bytes(b"broken")
    (root / "samples.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.toml").write_text(
        'name = "clips"\nlabel = "label"\n'
        '[modalities.clip]\nkind = "video"\ncolumn = "clip"\nframes = 4\nsize = 8\n'
        '[modalities.fields]\nkind = "tabular"\ncolumns = ["a", "b"]\n')
    return root


def test_inspect_reports_codec_frames_and_the_corrupt_file(tmp_path: Path) -> None:
    report = inspect_dataset(video_dataset(tmp_path, classes=2, per_class=2, corrupt=True))
    details = report.modalities["clip"].details
    assert details["codec"] == "mpeg4" and details["decoded_shape"] == [4, 3, 8, 8]
    assert details["source_frames"]["max"] == 6 and details["source_width"]["min"] == 16
    assert details["seconds"]["max"] == pytest.approx(0.75, abs=0.2)
    assert details["unreadable"] == 1
    corrupt = [p for p in report.problems if p.column == "clip"]
    assert [(p.file, p.row) for p in corrupt] == [("videos/c0_0.mp4", 1)]
    text = format_inspection(report)
    assert "codec mpeg4" in text and "videos/c0_0.mp4" in text


def test_augmentation_crops_time_and_moves_every_frame_alike(tmp_path: Path) -> None:
    frames = torch.rand(1, 1, 3, 16, 16).repeat(2, 5, 1, 1, 1)  # 5 identical frames
    batch = {"clip": ModalityBatch(frames, torch.tensor([True, False]))}
    geometric = Augmentation({"clip": {"rotate": 40, "shift": 0.2, "flip": "both"}},
                             {"clip": "video"})
    out = geometric.batch(batch, torch.Generator().manual_seed(3))["clip"].values
    assert not torch.allclose(out[0], frames[0])  # moved
    assert torch.allclose(out[0], out[0, :1].expand_as(out[0]))  # every frame alike
    assert torch.equal(out[1], frames[1])  # an absent sample is left alone

    steps = torch.arange(8.0).view(1, 8, 1, 1, 1).expand(3, 8, 1, 2, 2).clone()
    crop = Augmentation({"clip": {"temporal_crop": 0.75}}, {"clip": "video"})
    cropped = crop.batch({"clip": ModalityBatch(steps, torch.ones(3, dtype=torch.bool))},
                         torch.Generator().manual_seed(0))["clip"].values[:, :, 0, 0, 0]
    assert cropped.shape == (3, 8) and not torch.equal(cropped, steps[:, :, 0, 0, 0])
    for row in cropped:  # a contiguous window, in order, resampled to 8 frames
        assert bool((row[1:] >= row[:-1]).all()) and set(row.tolist()) == set(
            range(int(row.min()), int(row.max()) + 1))
    with pytest.raises(ConfigError, match="augment.clip.noise"):
        Augmentation({"clip": {"noise": 0.1}}, {"clip": "video"})


def test_import_videofolder(tmp_path: Path) -> None:
    source = tmp_path / "clips"
    for label in ("wave", "jump"):
        for i in range(3):
            write_video(source / label / f"{i}.mp4", frames=4, size=16)
    (source / "wave" / "notes.txt").write_text("not a video")
    result = import_dataset("videofolder", source, tmp_path / "ds", frames=3, skip_other=True)
    assert (result.samples, result.classes, result.modalities) == (6, 2, {"video": "video"})
    assert (tmp_path / "ds/videos/jump/2.mp4").is_file()
    dataset = load_dataset(tmp_path / "ds")
    assert dataset.schema.modalities["video"].options == {"frames": 3}
    with pytest.raises(ConfigError, match="frames"):
        import_dataset("videofolder", source, tmp_path / "bad", frames=0)


def test_the_video_encoder_is_the_default_and_masks_absent_rows() -> None:
    assert DEFAULT_ENCODERS["video"] == modality_kind("video").default_encoder == "video-conv"
    info = {"frames": 3, "channels": 3, "height": 8, "width": 8}
    for temporal in ("mean", "conv"):
        encoder = build_encoder("video", dim=6, input_info=info, hidden=4, temporal=temporal)
        batch = ModalityBatch(torch.rand(3, 3, 3, 8, 8), torch.tensor([True, False, True]))
        out = encoder(batch)
        assert out.shape == (3, 6) and bool((out[1] == 0).all()) and bool(out[0].abs().sum())


def test_train_and_evaluate_a_video_and_tabular_dataset(tmp_path: Path) -> None:
    data = video_dataset(tmp_path / "clips")
    config = TrainConfig(data=str(data), ways=2, shots=1, queries=1, steps=3, val_every=0,
                         val_episodes=4, encoder_options={"clip": {"hidden": 4, "blocks": 2}},
                         augment={"clip": {"temporal_crop": 0.5, "rotate": 10}}, dim=8)
    Trainer(config, tmp_path / "run", progress=False).fit()
    run = load_run(tmp_path / "run")
    assert run.preprocessor.kinds() == {"clip": "video", "fields": "tabular"}
    prepared = load_run_data(run)
    assert prepared.store.modalities["clip"].values.shape[1:] == (4, 3, 8, 8)
    result = evaluate(run.model, prepared.store, prepared.split.test, ways=2, shots=1,
                      queries=1, episodes=6)
    assert result.episodes == 6 and 0 <= result.accuracy <= 1 and not math.isnan(result.ci95)
    trained = {k: v for k, v in run.model.state_dict().items() if "clip" in k}
    assert any("frame_encoder" in k for k in trained)  # the video-conv encoder was trained
    assert isinstance(run.model.backbone.encoders["clip"], encoders.get("video-conv"))

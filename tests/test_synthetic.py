"""Tests of the embedded synthetic multimodal dataset (decoded with Pillow/soundfile/NumPy only)."""

from __future__ import annotations

import csv
import io
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from metamodal.datasets._render import (
    ATTRIBUTES,
    render_call,
    render_caption,
    render_image,
    render_measurements,
    render_track,
)
from metamodal.datasets.synthetic import (
    MEASUREMENTS,
    MODALITY_ATTRIBUTES,
    MODALITY_KINDS,
    attribute_names,
    class_attributes,
    describe_synthetic,
    make_synthetic,
    value_positions,
)
from metamodal.errors import ConfigError, OutputError

MEDIA = ("image", "sound", "track")
ORDER = tuple(ATTRIBUTES)


def read_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "samples.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def all_files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def is_missing(row: dict[str, str], modality: str) -> bool:
    if modality == "measurements":
        cells = [row[c] for c in MEASUREMENTS]
        assert len(set(map(bool, cells))) == 1, "tabular columns are missing together"
        return not cells[0]
    return not row[modality]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("syn") / "small", classes=15, per_class=4,
                          missing_rate=0.2, image_size=16, workers=1)


def test_same_arguments_give_byte_identical_files_and_seed_changes_them(
    tmp_path: Path, small: Path
) -> None:
    again = make_synthetic(tmp_path / "again", classes=15, per_class=4, missing_rate=0.2,
                           image_size=16, workers=2)  # a process pool must not change a byte
    reference = all_files(small)
    assert all_files(again) == reference
    other = all_files(make_synthetic(tmp_path / "other", classes=15, per_class=4,
                                     missing_rate=0.2, image_size=16, seed=1))
    assert other["samples.csv"] != reference["samples.csv"]
    shared = [name for name in reference if name.startswith("images/") and name in other]
    assert shared and all(other[name] != reference[name] for name in shared)


def test_growing_the_dataset_keeps_earlier_samples(tmp_path: Path, small: Path) -> None:
    bigger = make_synthetic(tmp_path / "big", classes=20, per_class=4, missing_rate=0.2,
                            image_size=16)
    old, new = read_rows(small), read_rows(bigger)
    assert new[: len(old)] == old
    before, after = all_files(small), all_files(bigger)
    media = [name for name in before if name.split("/")[0] in ("images", "audio", "tracks")]
    assert media and all(after[name] == before[name] for name in media)


def test_directory_follows_the_dataset_contract(small: Path) -> None:
    schema = tomllib.loads((small / "dataset.toml").read_text(encoding="utf-8"))
    assert (schema["label"], schema["group"], schema["samples"]) == ("species", "family",
                                                                     "samples.csv")
    kinds = {name: table["kind"] for name, table in schema["modalities"].items()}
    assert kinds == MODALITY_KINDS
    assert schema["modalities"]["measurements"]["columns"] == list(MEASUREMENTS)

    rows = read_rows(small)
    assert len(rows) == 15 * 4
    assert len({row["id"] for row in rows}) == len(rows)
    sound = schema["modalities"]["sound"]
    for row in rows:
        if not is_missing(row, "image"):
            pixels = np.asarray(Image.open(small / row["image"]))
            assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        if not is_missing(row, "sound"):
            wave, rate = soundfile.read(small / row["sound"])
            assert rate == sound["sample_rate"]
            assert wave.shape == (round(rate * sound["max_seconds"]),)
        if not is_missing(row, "track"):
            track = np.load(small / row["track"])
            assert track.dtype == np.float32 and track.shape == (64, 2)
            assert np.isfinite(track).all()
        if not is_missing(row, "measurements"):
            assert all(math.isfinite(float(row[c])) for c in MEASUREMENTS)
        if not is_missing(row, "caption"):
            assert row["caption"] == row["caption"].strip().lower()
    media = {row[m] for row in rows for m in MEDIA if row[m]}
    on_disk = {str(p.relative_to(small)) for d in ("images", "audio", "tracks")
               for p in (small / d).iterdir()}
    assert media == on_disk  # every path exists and no file is orphaned

    splits = tomllib.loads((small / "splits.toml").read_text(encoding="utf-8"))
    parts = [set(splits[name]) for name in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {row["family"] for row in rows}
    family_of = {row["species"]: row["family"] for row in rows}
    assert len(family_of) == 15 and len(set(family_of.values())) == 3


def test_classes_table_matches_the_class_attributes(small: Path) -> None:
    with open(small / "classes.csv", newline="", encoding="utf-8") as handle:
        listed = list(csv.DictReader(handle))
    names = attribute_names(3)
    expected = class_attributes(15, seed=0, attribute_values=3)
    got = np.array([[names[a].index(row[a]) for a in ORDER] for row in listed])
    assert (got == expected).all()
    assert all(row[a] in row["description"] for row in listed for a in ("colour", "habitat"))


def test_missing_rate_is_respected_and_never_all_missing(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "m", classes=15, per_class=20, missing_rate=0.3,
                          image_size=8, track_length=8, audio_seconds=0.1)
    rows = read_rows(root)
    missing = np.array([[is_missing(row, m) for m in MODALITY_KINDS] for row in rows])
    assert not missing.all(axis=1).any()
    assert abs(missing.mean() - 0.3) < 0.05
    assert (np.abs(missing.mean(axis=0) - 0.3) < 0.1).all()

    full = read_rows(make_synthetic(tmp_path / "f", classes=15, per_class=20, missing_rate=0.0,
                                    image_size=8, track_length=8, audio_seconds=0.1))
    assert not any(is_missing(row, m) for row in full for m in MODALITY_KINDS)
    # a present cell does not depend on the missing rate
    assert all(a["caption"] == b["caption"] for a, b in zip(rows, full, strict=True)
               if a["caption"])


def test_each_modality_confuses_some_classes_but_the_full_tuple_does_not() -> None:
    table = class_attributes(500, seed=0, attribute_values=3)
    assert len({tuple(row) for row in table.tolist()}) == 500
    seen = set()
    for modality, attributes in MODALITY_ATTRIBUTES.items():
        columns = [ORDER.index(a) for a in attributes]
        views = [tuple(row) for row in table[:, columns].tolist()]
        assert len(set(views)) < len(views), f"{modality} tells every class apart"
        assert len(set(attributes)) < len(ORDER)
        seen |= set(attributes)
    assert seen == set(ORDER)
    # even a small dataset has, for every modality, two classes it cannot tell apart
    small = class_attributes(15, seed=0)
    for attributes in MODALITY_ATTRIBUTES.values():
        views = [tuple(row) for row in small[:, [ORDER.index(a) for a in attributes]].tolist()]
        assert len(set(views)) < len(views)


def test_class_choice_is_a_seeded_prefix_and_checks_the_space() -> None:
    assert (class_attributes(10, seed=3) == class_attributes(200, seed=3)[:10]).all()
    assert not (class_attributes(50, seed=3) == class_attributes(50, seed=4)).all()
    assert class_attributes(729, seed=0).max() == 2
    with pytest.raises(ConfigError, match="730 classes"):
        class_attributes(730, seed=0, attribute_values=3)
    assert len(class_attributes(4096, seed=0, attribute_values=4)) == 4096
    assert value_positions(2).tolist() == [0, 4]
    assert attribute_names(3)["shape"] == ("circle", "square", "triangle")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 800}, "distinct species"),
        ({"classes": 10}, "too few"),
        ({"noise": -1.0}, "noise"),
        ({"missing_rate": 1.0}, "missing_rate"),
        ({"attribute_values": 6}, "attribute_values"),
        ({"seed": -2}, "seed"),
        ({"image_size": 4}, "image_size"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        make_synthetic(tmp_path / "x", **{"classes": 15, "per_class": 1, **kwargs})
    assert caught.value.fix
    assert not (tmp_path / "x").exists()


def test_existing_output_needs_overwrite_and_must_be_a_dataset(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "d", classes=15, per_class=1, image_size=8)
    with pytest.raises(ConfigError, match="overwrite"):
        make_synthetic(root, classes=15, per_class=1, image_size=8)
    make_synthetic(root, classes=15, per_class=2, image_size=8, overwrite=True)
    assert len(read_rows(root)) == 30
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary directory left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no dataset.toml"):
        make_synthetic(other, classes=15, per_class=1, overwrite=True)
    assert (other / "keep.txt").read_text() == "mine"



def test_an_overwrite_replaces_the_dataset_s_entries_only(tmp_path: Path) -> None:
    """Every entry of the directory was deleted: a .git, runs, the user's notes."""
    root = make_synthetic(tmp_path / "d", classes=15, per_class=1, image_size=8)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / "runs" / "mine").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "samples.jsonl").write_text('{"id": "stale"}\n')  # an old table of another format
    make_synthetic(root, classes=15, per_class=2, image_size=8, overwrite=True)
    assert len(read_rows(root)) == 30 and not (root / "samples.jsonl").exists()
    assert (root / ".git" / "config").read_text() == "[core]"
    assert (root / "runs" / "mine").is_dir() and (root / "notes.txt").read_text() == "mine"
    assert not any(p.name.startswith(".old-") or p.name.startswith(".d.")
                   for p in root.iterdir())

def test_an_overwrite_that_fails_midway_leaves_the_old_dataset_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old entries were deleted before the new ones were moved in: a move that failed
    there left a directory with neither dataset."""
    import os

    root = make_synthetic(tmp_path / "d", classes=15, per_class=1, image_size=8)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    entries = sorted(p.name for p in root.iterdir())
    real = os.replace
    calls = {"in": 0}

    def failing(src, dst, *args, **kwargs):
        if Path(src).parent.name.startswith(".d."):  # a new entry moved in from the staging
            calls["in"] += 1
            if calls["in"] == 2:
                raise OSError("the disk went away")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk went away"):
        make_synthetic(root, classes=15, per_class=2, image_size=8, overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert after == before and calls["in"] == 2
    assert sorted(p.name for p in root.iterdir()) == entries  # nothing staged or aside is left
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_output_can_be_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert make_synthetic(".", classes=15, per_class=1, image_size=8) == Path(".")
    assert len(read_rows(here)) == 15
    make_synthetic(".", classes=15, per_class=2, image_size=8, overwrite=True)
    assert len(read_rows(here)) == 30 and not any(p.name.startswith(".") for p in here.iterdir())
    assert Path.cwd() == here and (Path.cwd() / "dataset.toml").is_file()


def test_describe_synthetic_names_every_modality_and_what_it_reveals() -> None:
    text = describe_synthetic()
    for modality, attributes in MODALITY_ATTRIBUTES.items():
        line = next(x for x in text.splitlines() if x.startswith(f"| {modality} |"))
        assert f"| {MODALITY_KINDS[modality]} |" in line
        assert ", ".join(attributes) in line
    assert "noise" in text and "attribute_values" in text


# --- renderers: each shows its attributes ---------------------------------------------------


def test_image_shows_the_colour_and_is_a_function_of_the_generator() -> None:
    a = render_image(0, 4, np.random.default_rng(5), size=24, noise=0.5)
    assert (a == render_image(0, 4, np.random.default_rng(5), size=24, noise=0.5)).all()
    pixels = a.reshape(-1, 3).astype(float)
    blueish = pixels[:, 2] - pixels[:, :2].max(axis=1) > 80  # shape is blue (position 4)
    assert blueish.mean() > 0.05
    clean = render_image(2, 0, np.random.default_rng(1), size=32, noise=0.0)
    red = clean[..., 0].astype(int) - clean[..., 1:].max(axis=-1) > 100
    assert 0.05 < red.mean() < 0.7
    _, counts = np.unique(clean[~red], axis=0, return_counts=True)
    assert counts.max() > 0.85 * (~red).sum()  # one flat background colour at noise 0


def test_caption_names_colour_and_habitat_by_synonym() -> None:
    captions = [render_caption(4, 2, np.random.default_rng(i), noise=0.0) for i in range(30)]
    assert all(any(w in c.split() for w in ("blue", "azure", "cobalt")) for c in captions)
    assert all(any(w in c.split() for w in ("marsh", "swamp", "wetland")) for c in captions)
    assert len(set(captions)) > 5
    noisy = [render_caption(4, 2, np.random.default_rng(i), noise=1.0) for i in range(30)]
    assert np.mean([len(c.split()) for c in noisy]) > np.mean([len(c.split()) for c in captions])


def test_call_pitch_sets_the_spectral_peak() -> None:
    peaks = []
    for pitch in range(5):
        wave = render_call(pitch, 0, np.random.default_rng(0), sample_rate=8000, seconds=0.5,
                           noise=0.0)
        assert wave.dtype == np.float32 and abs(np.abs(wave).max() - 0.9) < 1e-5
        spectrum = np.abs(np.fft.rfft(wave))
        freqs = np.fft.rfftfreq(len(wave), 1 / 8000)
        band = freqs > 200  # above the forest ambience
        peaks.append(freqs[band][spectrum[band].argmax()])
    assert all(abs(p / (220 * 1.52**i) - 1) < 0.1 for i, p in enumerate(peaks))
    buffer = io.BytesIO()
    soundfile.write(buffer, wave, 8000, subtype="PCM_16", format="WAV")
    assert buffer.getvalue()[:4] == b"RIFF"


def test_track_scale_follows_size_and_measurements_follow_size_and_shape() -> None:
    def spread(size: int) -> float:
        paths = [render_track(3, size, np.random.default_rng(i), length=64, noise=0.5)
                 for i in range(20)]
        return float(np.mean([np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()) for p in paths]))

    spreads = [spread(s) for s in range(5)]
    assert all(b > 1.3 * a for a, b in zip(spreads, spreads[1:], strict=False))
    length, width, weight, _ = render_measurements(4, 2, np.random.default_rng(0), noise=0.0)
    assert length > width and weight > 0
    small = render_measurements(4, 0, np.random.default_rng(0), noise=0.0)
    assert small[0] < length and abs(small[0] / small[1] - length / width) < 0.05


# --- the point of the dataset: fusion beats every single modality ---------------------------


def _hand_features(root: Path, rows: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """Simple per-modality features, no learning: colour, words, spectrum, path stats, values."""
    colour = []
    for row in rows:
        pixels = np.asarray(Image.open(root / row["image"]), dtype=float).reshape(-1, 3) / 255
        saturation = pixels.max(1) - pixels.min(1)
        colour.append(pixels[saturation >= np.quantile(saturation, 0.85)].mean(0))
    vocabulary = sorted({w for row in rows for w in row["caption"].split()})
    words = np.array([[row["caption"].split().count(w) for w in vocabulary] for row in rows])
    edges = np.geomspace(100, 3900, 25)
    bands = []
    for row in rows:
        wave, rate = soundfile.read(root / row["sound"])
        power, freqs = np.abs(np.fft.rfft(wave)) ** 2, np.fft.rfftfreq(len(wave), 1 / rate)
        bands.append([np.log(power[(freqs >= lo) & (freqs < hi)].mean() + 1e-9)
                      for lo, hi in zip(edges[:-1], edges[1:], strict=True)])
    paths = []
    for row in rows:
        p = np.load(root / row["track"]).astype(float)
        steps = np.diff(p, axis=0)
        heading = np.arctan2(steps[:, 1], steps[:, 0])
        turn = np.angle(np.exp(1j * np.diff(heading)))
        length = np.hypot(*steps.T)
        paths.append([np.log(length.mean()), np.log(np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())),
                      np.abs(turn).mean(), abs(turn.sum()) / len(turn),
                      np.log(np.hypot(*(p[-1] - p[0])) / length.sum() + 1e-3)])
    table = [[math.log(float(row[c])) for c in MEASUREMENTS[:3]] + [float(row[MEASUREMENTS[3]])]
             for row in rows]
    return {"image": np.array(colour), "caption": words.astype(float), "sound": np.array(bands),
            "track": np.array(paths), "measurements": np.array(table)}


def _nearest_centroid_accuracy(labels: np.ndarray, x: np.ndarray, *, ways: int = 5,
                               shots: int = 5, episodes: int = 200) -> float:
    rng = np.random.default_rng(0)
    classes, hits, total = np.unique(labels), 0, 0
    for _ in range(episodes):
        chosen = rng.choice(classes, ways, replace=False)
        centroids, queries, answers = [], [], []
        for k, c in enumerate(chosen):
            idx = rng.permutation(np.flatnonzero(labels == c))
            centroids.append(x[idx[:shots]].mean(0))
            queries.append(x[idx[shots:]])
            answers += [k] * (len(idx) - shots)
        q = np.concatenate(queries)
        guess = ((q[:, None] - np.stack(centroids)[None]) ** 2).sum(-1).argmin(1)
        hits += int((guess == np.array(answers)).sum())
        total += len(answers)
    return hits / total


def test_all_modalities_together_beat_every_single_modality(tmp_path: Path) -> None:
    root = make_synthetic(tmp_path / "e", classes=30, per_class=10, missing_rate=0.0)
    rows = read_rows(root)
    labels = np.array([row["species"] for row in rows])

    def standard(x: np.ndarray) -> np.ndarray:
        x = (x - x.mean(0)) / (x.std(0) + 1e-9)
        return x / math.sqrt(x.shape[1])  # every modality weighs the same in the concatenation

    features = {m: standard(x) for m, x in _hand_features(root, rows).items()}
    single = {m: _nearest_centroid_accuracy(labels, x) for m, x in features.items()}
    fused = _nearest_centroid_accuracy(labels, np.concatenate(list(features.values()), axis=1))
    assert all(acc > 0.25 for acc in single.values()), single  # each modality is informative
    assert fused > max(single.values()) + 0.1, (fused, single)
    assert fused > 0.85


def test_families_are_near_equal_groups_of_classes(tmp_path: Path) -> None:
    rows = read_rows(make_synthetic(tmp_path / "g", classes=17, per_class=1, image_size=8,
                                    classes_per_family=5))
    sizes = sorted(np.unique([row["family"] for row in rows], return_counts=True)[1].tolist())
    assert sizes == [4, 4, 4, 5]


def test_a_full_disk_is_an_output_error_and_leaves_nothing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that fills while the dataset is written ended in a bare OSError (the half-written
    folder was already removed). It is an OutputError naming the output; another OSError is
    not relabelled."""
    import errno

    from metamodal.datasets import synthetic

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synthetic.np, "save", full)
    with pytest.raises(OutputError, match="No space left") as raised:
        make_synthetic(tmp_path / "d", classes=15, per_class=2)
    assert raised.value.file == str(tmp_path / "d") and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic.np, "save", lambda *a, **k: (_ for _ in ()).throw(
        OSError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        make_synthetic(tmp_path / "d", classes=15, per_class=2)
    assert list(tmp_path.iterdir()) == []


def test_an_error_naming_a_staged_file_names_it_in_the_output(tmp_path: Path) -> None:
    """An importer's error about a file it was writing named the hidden staging folder,
    removed by the time the message is read. It names the file in the output."""
    from metamodal.datasets._output import staged_directory

    with pytest.raises(OutputError) as raised, staged_directory(tmp_path / "out") as tmp:
        raise OutputError("cannot write (File too large)", file=tmp / "images" / "a.png")
    assert raised.value.file == str(tmp_path / "out" / "images" / "a.png")
    assert str(tmp_path / "out" / "images" / "a.png") in str(raised.value)
    assert list(tmp_path.iterdir()) == []

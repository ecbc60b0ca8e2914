"""Importers: image / audio folders, tables and Omniglot (fixtures and the real archives)."""

from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
from omniglot_fixtures import (
    SHARED_OMNIGLOT,
    drawing_png,
    drawings,
    stroke_text,
    write_all_runs,
    write_archives,
)
from PIL import Image

from metamodal.cli import main
from metamodal.data.episode_files import read_episode_file
from metamodal.data.episodes import EpisodeSampler
from metamodal.data.inspect import inspect_dataset
from metamodal.datasets._archives import extract_zip
from metamodal.datasets.importers import import_dataset, import_folder, import_table
from metamodal.datasets.omniglot import import_omniglot, parse_strokes, read_stroke_file
from metamodal.errors import ConfigError, DatasetError
from metamodal.runs.prepared import prepare_data

pytestmark = pytest.mark.usefixtures("one_thread")


def _usable(report) -> bool:
    """No problem but the split being too small for default 5-way training episodes, which
    these tiny fixtures always are (that check is tested in test_hostile_inputs.py)."""
    return not [p for p in report.problems if " split has " not in p.message]


def _rows(path: Path) -> list[dict[str, str]]:
    with (path / "samples.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _round_trip(out: Path, ways: int = 2, shots: int = 1, queries: int = 1) -> None:
    """import -> inspect (usable) -> decode -> one episode whose ids are the dataset's."""
    report = inspect_dataset(out)
    assert _usable(report), report.problems
    data = prepare_data(out, cache=False)
    classes = data.split.train + data.split.val + data.split.test
    sampler = EpisodeSampler(data.store, classes, ways, shots, queries, seed=0)
    episode = sampler[0]
    assert len(episode.support_ids) == ways * shots
    assert set(episode.support_ids + episode.query_ids) <= set(data.store.ids)


# ----------------------------------------------------------------------------- strokes


def test_stroke_parser_on_a_hand_written_file(tmp_path: Path) -> None:
    path = tmp_path / "0108_01.txt"
    path.write_bytes(b"START\r\n18.5,-43.25,0\r\n19,-41,56\r\n\r\nBREAK\r\n"
                     b"30,-30,900\r\n31.5,-29,950\r\n32,-28,990\r\nBREAK\r\n")
    strokes = read_stroke_file(path)
    assert strokes.dtype == np.float32
    np.testing.assert_array_equal(strokes, [
        [18.5, -43.25, 0, 1], [19, -41, 56, 0],
        [30, -30, 900, 1], [31.5, -29, 950, 0], [32, -28, 990, 0]])
    # a point before any START starts a stroke; the pen flag marks every stroke's first point
    assert parse_strokes("1,2,3\n4,5,6\nBREAK\n7,8,9\n")[:, 3].tolist() == [1, 0, 1]


@pytest.mark.parametrize("content,where", [
    (b"START\n1,2,3\n4,5\n", "line 3"),
    (b"START\n1,2,3\nstart over\n", "line 3"),
    (b"START\n1,nan,3\n", "line 2"),
    (b"START\n1,2,3\n1e39,2,3\n", "line 3"),  # finite, but inf once stored as float32
    (b"START\nBREAK\n", "no point"),
    (b"START\n1,2,3\n\xff\xfe\n", "not UTF-8"),
])
def test_unreadable_stroke_file_is_a_typed_error(tmp_path: Path, content: bytes,
                                                 where: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=where) as caught:
        read_stroke_file(path)
    assert caught.value.file == str(path) and caught.value.fix


# ----------------------------------------------------------------------------- omniglot fixtures


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sets sharing the alphabet Beta (as the small sets share Greek and Latin)."""
    root = tmp_path_factory.mktemp("omniglot-src")
    write_archives(root, "small1", {"Alpha": 3, "Beta": 2})
    write_archives(root, "small2", {"Beta": 2, "Gamma": 3})
    return root


def test_omniglot_archives_import_once_each_drawing_with_its_strokes(
    archives: Path, tmp_path: Path
) -> None:
    out = tmp_path / "omni"
    result = import_omniglot(archives, out, image_size=14, val_groups=["Gamma"])
    expected = drawings({"Alpha": 3, "Beta": 2, "Gamma": 3}, 4)
    assert (result.samples, result.classes, result.groups) == (32, 8, 3)
    assert result.modalities == {"image": "image", "strokes": "sequence"}
    rows = _rows(out)
    assert [r["id"] for r in rows] == sorted(f"{a}/{c}/{s}" for a, c, s, _ in expected)
    by_id = {r["id"]: r for r in rows}
    for alphabet, character, stem, seed in expected:
        row = by_id[f"{alphabet}/{character}/{stem}"]
        assert (row["character"], row["alphabet"], row["drawer"]) == (
            f"{alphabet}/{character}", alphabet, stem[-2:])
        assert (out / row["image"]).read_bytes() == drawing_png(seed)
        np.testing.assert_array_equal(np.load(out / row["strokes"]),
                                      parse_strokes(stroke_text(seed)))
    assert not list(out.rglob("*DS_Store*")) and not list(out.rglob("__MACOSX"))
    split = (out / "splits.toml").read_text()
    assert 'val = [\n    "Gamma",\n]' in split and '"Alpha"' in split
    _round_trip(out, ways=3, shots=1, queries=2)


def test_unpacked_folders_import_like_the_archives(archives: Path, tmp_path: Path) -> None:
    folders = tmp_path / "unpacked"
    folders.mkdir()
    for archive in sorted(archives.glob("*.zip")):
        extract_zip(archive, folders / archive.stem)
    from_zips = import_omniglot(archives, tmp_path / "a", image_size=14)
    from_folders = import_omniglot(folders, tmp_path / "b", image_size=14)
    assert from_zips.samples == from_folders.samples == 32
    assert (tmp_path / "a/samples.csv").read_text() == (tmp_path / "b/samples.csv").read_text()
    for row in _rows(tmp_path / "a"):
        for column in ("image", "strokes"):
            assert (tmp_path / "a" / row[column]).read_bytes() == \
                (tmp_path / "b" / row[column]).read_bytes()


def _without(archive: Path, dest: Path, drop: str) -> Path:
    """A copy of ``archive`` without the members whose name ends with ``drop``."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            if not info.filename.endswith(drop):
                out.writestr(info, src.read(info))
    return dest


def test_a_drawing_without_its_strokes_or_image_is_a_typed_error(tmp_path: Path) -> None:
    src = write_archives(tmp_path / "src", "small1", {"Alpha": 2}, drawers=3)
    stem = drawings({"Alpha": 2}, 3)[0][2]
    lacking_strokes = tmp_path / "no-strokes"
    lacking_strokes.mkdir()
    (lacking_strokes / src["images"].name).write_bytes(src["images"].read_bytes())
    _without(src["strokes"], lacking_strokes / src["strokes"].name, f"{stem}.txt")
    with pytest.raises(DatasetError, match="an image but no stroke file") as caught:
        import_omniglot(lacking_strokes, tmp_path / "out1")
    assert "--allow-unmatched" in caught.value.fix and stem in str(caught.value)

    lacking_image = tmp_path / "no-image"
    lacking_image.mkdir()
    (lacking_image / src["strokes"].name).write_bytes(src["strokes"].read_bytes())
    _without(src["images"], lacking_image / src["images"].name, f"{stem}.png")
    with pytest.raises(DatasetError, match="a stroke file but no image"):
        import_omniglot(lacking_image, tmp_path / "out2")
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists()

    result = import_omniglot(lacking_image, tmp_path / "out3", allow_unmatched=True,
                             image_size=14)
    rows = {r["id"]: r for r in _rows(tmp_path / "out3")}
    assert result.samples == 6 and rows[f"Alpha/character01/{stem}"]["image"] == ""
    assert _usable(inspect_dataset(tmp_path / "out3"))


def test_an_unreadable_stroke_file_in_an_archive_names_the_member(tmp_path: Path) -> None:
    src = write_archives(tmp_path / "src", "small1", {"Alpha": 2}, drawers=2)
    stem = drawings({"Alpha": 2}, 2)[1][2]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / src["images"].name).write_bytes(src["images"].read_bytes())
    with zipfile.ZipFile(src["strokes"]) as z, zipfile.ZipFile(bad / src["strokes"].name,
                                                               "w") as out:
        for info in z.infolist():
            data = z.read(info)
            out.writestr(info, b"START\n1,2,3\n4;5;6\n" if info.filename.endswith(
                f"{stem}.txt") else data)
    with pytest.raises(DatasetError, match="line 3") as caught:
        import_omniglot(bad, tmp_path / "out")
    assert caught.value.file.endswith(f"strokes_small1.zip:strokes_small1/Alpha/character01/"
                                      f"{stem}.txt")
    assert caught.value.row == 3


def test_an_archive_member_leading_out_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "images_background.zip", "w") as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", drawing_png(1))
        z.writestr("images_background/../../escaped.png", drawing_png(2))
    with pytest.raises(DatasetError, match="unsafe archive member"):
        import_omniglot(src, tmp_path / "out")
    with pytest.raises(DatasetError, match="unsafe archive member"):
        extract_zip(src / "images_background.zip", tmp_path / "x")
    assert not list(tmp_path.rglob("escaped.png"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("member", ["images_background/Alpha",  # a file and a folder
                                    "images_background/" + "/".join(["d" * 200] * 30) + "/f"])
def test_an_archive_member_that_cannot_be_placed_is_a_typed_error(tmp_path: Path,
                                                                  member: str) -> None:
    """A raw NotADirectoryError / OSError (file name too long) ended the unpacking."""
    archive = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", drawing_png(1))
        z.writestr(member, b"x")
        z.writestr("images_background/Alpha/x.png", drawing_png(2))
    with pytest.raises(DatasetError, match="cannot be written to the output") as caught:
        extract_zip(archive, tmp_path / "x")
    assert str(caught.value.file).startswith(f"{archive}:") and "rename" in caught.value.fix
    assert not (tmp_path / "x").exists()


def test_a_source_without_omniglot_data_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="no Omniglot data found") as caught:
        import_omniglot(tmp_path / "src", tmp_path / "out")
    assert "download" in caught.value.fix
    empty = tmp_path / "empty"
    empty.mkdir()
    with zipfile.ZipFile(empty / "images_background.zip", "w") as z:
        z.writestr("images_background/README", b"nothing")
    with pytest.raises(DatasetError, match="no classes found"):
        import_omniglot(empty, tmp_path / "out")


def test_lakes_all_runs_layout_becomes_a_dataset_with_its_episode_file(tmp_path: Path) -> None:
    runs = write_all_runs(tmp_path / "src", runs=2, ways=3)
    out = tmp_path / "runs"
    result = import_omniglot(runs, out, image_size=14)
    assert result.episodes == out / "episodes.jsonl"
    assert (result.samples, result.classes, result.groups) == (12, 6, 2)
    lines = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [line["episode"] for line in lines] == ["run01", "run02"]
    assert lines[0]["support"] == [f"run01/training/class{c:02d}" for c in (1, 2, 3)]
    assert lines[0]["query"] == [f"run01/test/item{k:02d}" for k in (1, 2, 3)]
    with pytest.warns(UserWarning, match="no meta-train sequences in column 'strokes'"):
        data = prepare_data(out, cache=False)  # the runs have no strokes: an empty column
    episodes = read_episode_file(out / "episodes.jsonl", data.store)
    for episode in episodes:
        for query_id, label in zip(episode.query_ids, episode.query_labels.tolist(),
                                   strict=True):
            k = int(query_id[-2:])  # item k belongs to class k % 3 + 1 (see the fixture)
            assert episode.support_ids[label].endswith(f"class{k % 3 + 1:02d}")
    assert _usable(inspect_dataset(out))


def test_all_runs_beside_the_background_sets_go_to_their_own_dataset(
    archives: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for archive in archives.glob("*small1.zip"):
        (src / archive.name).write_bytes(archive.read_bytes())
    write_all_runs(src, runs=1, ways=3)
    result = import_omniglot(src, tmp_path / "out", image_size=14)
    assert result.samples == 20 and "all_runs" in "\n".join(result.notes)
    assert (tmp_path / "out/all_runs/episodes.jsonl").is_file()
    assert len(_rows(tmp_path / "out/all_runs")) == 6


def test_all_runs_label_line_naming_a_missing_image(tmp_path: Path) -> None:
    runs = write_all_runs(tmp_path / "src", runs=1, ways=3)
    labels = runs / "run01" / "class_labels.txt"
    labels.write_text(labels.read_text() + "run01/test/item09.png run01/training/class01.png\n")
    with pytest.raises(DatasetError, match="item09.png") as caught:
        import_omniglot(runs, tmp_path / "out")
    assert caught.value.row == 4


def test_all_runs_listing_a_test_item_twice_or_another_run_s_image_is_refused(
        tmp_path: Path) -> None:
    """The import wrote a dataset holding one id twice, with two labels, and exited 0."""
    runs = write_all_runs(tmp_path / "src", runs=2, ways=3)
    labels = runs / "run01" / "class_labels.txt"
    original = labels.read_text()
    labels.write_text(original + "run01/test/item01.png run01/training/class02.png\n")
    with pytest.raises(DatasetError, match="listed twice") as caught:
        import_omniglot(runs, tmp_path / "out")
    assert caught.value.row == 4 and caught.value.file.endswith("class_labels.txt")
    labels.write_text(original)
    other = runs / "run02" / "class_labels.txt"
    other.write_text(other.read_text() + "run02/test/item01.png run01/training/class01.png\n")
    with pytest.raises(DatasetError, match="another run's"):
        import_omniglot(runs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- class folders


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), (value, 255 - value, 0)).save(path)


def test_imagefolder_round_trip_with_and_without_a_group_level(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    for c, label in enumerate(["cat", "dog", "owl"]):
        for i in range(3):
            _png(flat / label / f"{i}.png", 40 * c + i)
    (flat / "README.txt").write_text("loose files at the top are skipped")
    with pytest.warns(UserWarning, match="outside any class folder"):
        result = import_folder(flat, tmp_path / "flat-ds", image_size=8)
    assert (result.samples, result.classes, result.groups) == (9, 3, None)
    rows = _rows(tmp_path / "flat-ds")
    assert rows[0] == {"id": "cat/0.png", "label": "cat", "image": "images/cat/0.png"}
    _round_trip(tmp_path / "flat-ds")

    nested = tmp_path / "nested"
    for g, group in enumerate(["birds", "mammals"]):
        for c in range(2):  # class names repeat across groups: labels are qualified
            for i in range(2):
                _png(nested / group / f"c{c}" / "sub" / f"{i}.jpg", 10 * g + c + i)
    result = import_folder(nested, tmp_path / "nested-ds", val_groups=["birds"])
    assert (result.samples, result.classes, result.groups) == (8, 4, 2)
    rows = _rows(tmp_path / "nested-ds")
    assert rows[0]["label"] == "birds/c0" and rows[0]["group"] == "birds"
    assert rows[0]["image"] == "images/birds/c0/sub/0.jpg"
    assert (tmp_path / "nested-ds/splits.toml").is_file()
    assert _usable(inspect_dataset(tmp_path / "nested-ds"))


def test_a_class_folder_with_mixed_file_types_is_a_typed_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("a", "b"):
        for i in range(2):
            _png(src / label / f"{i}.png", i)
    (src / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="mixed file types") as caught:
        import_folder(src, tmp_path / "out")
    assert caught.value.file == str(src / "b") and "--skip-other-files" in caught.value.fix
    assert not (tmp_path / "out").exists()
    result = import_folder(src, tmp_path / "out", skip_other=True)
    assert result.samples == 4 and "skipped 1" in result.summary()


def test_a_file_that_cannot_be_decoded_is_refused_or_left_out(tmp_path: Path,
                                                               capsys) -> None:
    """A corrupt, empty or cut image was copied and counted as imported (training then
    failed on it): every copy is decoded once; the import is refused, naming the source
    file, or with --skip-bad-files the file is left out and the summary says so."""
    src = tmp_path / "src"
    for label in ("a", "b", "c"):
        for i in range(2):
            _png(src / label / f"{i}.png", i)
    (src / "a" / "bad.png").write_bytes(b"not an image")
    (src / "b" / "empty.png").write_bytes(b"")
    (src / "c" / "cut.png").write_bytes((src / "c" / "0.png").read_bytes()[:40])
    with pytest.raises(DatasetError, match="3 file.s. cannot be read as images") as caught:
        import_folder(src, tmp_path / "out")
    assert caught.value.file == str(src / "a" / "bad.png")
    assert "--skip-bad-files" in caught.value.fix and ".out." not in caught.value.message
    assert not (tmp_path / "out").exists()
    assert main(["import", "imagefolder", str(src), str(tmp_path / "out"),
                 "--skip-bad-files", "--no-progress"]) == 0
    assert "skipped 3 file(s) that cannot be read as images" in capsys.readouterr().out
    assert [row["id"] for row in _rows(tmp_path / "out")] == [
        f"{label}/{i}.png" for label in "abc" for i in range(2)]
    assert not (tmp_path / "out" / "images" / "a" / "bad.png").exists()
    problems = inspect_dataset(tmp_path / "out").problems  # only the split is too small
    assert not [p for p in problems if str(p.file).endswith(".png")]


def test_an_import_source_with_no_classes_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no classes found") as caught:
        import_folder(tmp_path / "empty", tmp_path / "out")
    assert "one folder per class" in caught.value.fix
    (tmp_path / "wrong" / "cat").mkdir(parents=True)
    (tmp_path / "wrong" / "cat" / "meow.wav").write_bytes(b"RIFF")
    with pytest.raises(DatasetError, match="mixed file types"):
        import_folder(tmp_path / "wrong", tmp_path / "out")
    with pytest.raises(DatasetError, match="no classes found"), \
            pytest.warns(UserWarning, match="without image files: cat"):
        import_folder(tmp_path / "wrong", tmp_path / "out", skip_other=True)
    assert main(["import", "imagefolder", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2


def test_mixed_levels_are_refused_unless_the_level_is_given(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _png(src / "cat" / "0.png", 1)
    _png(src / "birds" / "owl" / "0.png", 2)
    with pytest.raises(DatasetError, match="one level"):
        import_folder(src, tmp_path / "out")
    result = import_folder(src, tmp_path / "out", group_level=False)
    assert result.classes == 2 and {r["label"] for r in _rows(tmp_path / "out")} == {
        "cat", "birds"}


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks on this system")
def test_symlinks_out_of_the_source_are_never_followed(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("a", "b"):
        _png(src / label / "0.png", 1)
    secret = tmp_path / "secret.png"
    _png(secret, 9)
    (src / "a" / "leak.png").symlink_to(secret)
    (src / "a" / "inside.png").symlink_to(src / "b" / "0.png")
    (src / "c").symlink_to(tmp_path, target_is_directory=True)
    with pytest.warns(UserWarning, match="symlink"):
        result = import_folder(src, tmp_path / "out")
    ids = [r["id"] for r in _rows(tmp_path / "out")]
    assert ids == ["a/0.png", "a/inside.png", "b/0.png"] and result.classes == 2


def test_audiofolder_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "calls"
    t = np.arange(400) / 8000.0
    for c, label in enumerate(["lark", "wren"]):
        (src / label).mkdir(parents=True)
        for i in range(3):
            soundfile.write(src / label / f"{i}.wav", np.sin(2 * np.pi * (300 + 200 * c + i)
                                                              * t), 8000)
    result = import_folder(src, tmp_path / "ds", kind="audio")
    assert result.modalities == {"audio": "audio"} and result.samples == 6
    schema = (tmp_path / "ds/dataset.toml").read_text()
    (tmp_path / "ds/dataset.toml").write_text(
        schema + "n_mels = 8\nn_fft = 64\nhop_length = 32\nsample_rate = 8000\n")
    _round_trip(tmp_path / "ds")


def test_out_is_never_overwritten_without_asking(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for label in ("a", "b"):
        _png(src / label / "0.png", 1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    for overwrite in (False, True):  # the first's fix was --overwrite, then refused
        with pytest.raises(ConfigError, match="no dataset.toml") as caught:
            import_folder(src, tmp_path / "busy", overwrite=overwrite)
        assert "--overwrite" not in caught.value.fix
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep"
    import_folder(src, tmp_path / "ds")
    with pytest.raises(ConfigError, match="not empty") as caught:
        import_folder(src, tmp_path / "ds")
    assert "--overwrite" in caught.value.fix
    # a stale split of the old dataset named its classes: the new one was unusable
    (tmp_path / "ds" / "splits.toml").write_text('train = ["x"]\nval = ["y"]\ntest = ["z"]\n')
    _png(src / "c" / "0.png", 2)
    assert import_folder(src, tmp_path / "ds", overwrite=True).classes == 3
    assert not (tmp_path / "ds" / "splits.toml").exists()


# ----------------------------------------------------------------------------- tables


def _table_source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "photos").mkdir(parents=True)
    (root / "tracks").mkdir()
    rows = []
    for c, label in enumerate(["fox", "owl", "elk"]):
        for i in range(3):
            name = f"{label}{i}"
            _png(root / "photos" / f"{name}.png", 30 * c + i)
            np.save(root / "tracks" / f"{name}.npy", np.full((4, 2), c + i, np.float32))
            rows.append({"sample": name, "species": label, "family": "F" if c < 2 else "G",
                         "caption": f"a {label} number {i}" if i else "",
                         "length": str(10 * c + i), "weight": str(c),
                         "photo": f"photos/{name}.png", "track": f"tracks/{name}.npy",
                         "ignored": "x"})
    with (root / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_table_round_trip_with_every_role(tmp_path: Path) -> None:
    root = _table_source(tmp_path)
    result = import_table(root / "table.csv", tmp_path / "ds", label="species",
                          id_column="sample", group="family", text="caption",
                          numeric=["length,weight"], image="photo", sequence="track")
    assert (result.samples, result.classes, result.groups) == (9, 3, 2)
    assert result.modalities == {"caption": "text", "numeric": "tabular", "photo": "image",
                                 "track": "sequence"}
    assert "ignored" in result.summary()
    rows = _rows(tmp_path / "ds")
    assert rows[0]["id"] == "fox0" and rows[0]["photo"] == "media/photo/photos/fox0.png"
    assert rows[0]["caption"] == "" and rows[1]["caption"] == "a fox number 1"
    np.testing.assert_array_equal(np.load(tmp_path / "ds" / rows[4]["track"]),
                                  np.full((4, 2), 2, np.float32))
    _round_trip(tmp_path / "ds")


def test_parquet_table_through_the_command_line(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = _table_source(tmp_path)
    with (root / "table.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    table = pa.table({"species": [r["species"] for r in rows],
                      "length": [float(r["length"]) for r in rows],
                      "photo": [r["photo"] for r in rows]})
    pq.write_table(table, root / "table.parquet")
    assert main(["import", "table", str(root / "table.parquet"), str(tmp_path / "ds"),
                 "--label", "species", "--numeric", "length", "--image", "photo",
                 "--val-groups", "owl", "--test-groups", "elk", "--no-progress"]) == 0
    assert [r["id"] for r in _rows(tmp_path / "ds")][:2] == ["row1", "row2"]
    assert 'test = [\n    "elk",\n]' in (tmp_path / "ds/splits.toml").read_text()
    assert _usable(inspect_dataset(tmp_path / "ds"))


def test_table_errors_name_row_and_column(tmp_path: Path) -> None:
    root = _table_source(tmp_path)
    table = root / "table.csv"
    text = table.read_text()
    with pytest.raises(ConfigError, match="no modality column"):
        import_table(table, tmp_path / "o", label="species")
    with pytest.raises(DatasetError, match="column not found") as caught:
        import_table(table, tmp_path / "o", label="species", text="colour")
    assert caught.value.column == "colour"
    with pytest.raises(ConfigError, match="named twice"):
        import_table(table, tmp_path / "o", label="species", text="species")

    table.write_text(text.replace("photos/owl1.png", "../secret.png"))
    (tmp_path / "secret.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="leads out of the source") as caught:
        import_table(table, tmp_path / "o", label="species", image="photo")
    assert (caught.value.row, caught.value.column) == (5, "photo")

    # a NUL, an over-long name or path: a raw ValueError / OSError (File name too long)
    for bad, words in (("photos/o\x00wl.png", "NUL"), ("photos/" + "o" * 300 + ".png",
                                                      "longer than"),
                       ("photos/" + "o/" * 2500 + "owl.png", "characters long")):
        table.write_text(text.replace("photos/owl1.png", bad))
        with pytest.raises(DatasetError, match=words) as caught:
            import_table(table, tmp_path / "o", label="species", image="photo")
        assert (caught.value.row, caught.value.column) == (5, "photo")

    table.write_text(text.replace("photos/owl1.png", "photos/gone.png"))
    with pytest.raises(DatasetError, match="not found") as caught:
        import_table(table, tmp_path / "o", label="species", image="photo")
    assert "--allow-missing-files" in caught.value.fix
    with pytest.warns(UserWarning, match="missing files"):
        result = import_table(table, tmp_path / "o", label="species", image="photo",
                              allow_missing_files=True)
    assert result.samples == 9 and _rows(tmp_path / "o")[4]["photo"] == ""

    table.write_text(text.replace("photos/owl1.png", "tracks/owl1.npy"))
    with pytest.raises(DatasetError, match="not an image file"):
        import_table(table, tmp_path / "o2", label="species", image="photo")
    table.write_text(text.replace(",20,", ",twenty,"))
    with pytest.raises(DatasetError, match="not a finite number") as caught:
        import_table(table, tmp_path / "o2", label="species", numeric="length")
    assert (caught.value.row, caught.value.column) == (7, "length")
    table.write_text(text.replace("owl2", "owl1"))
    with pytest.raises(DatasetError, match="duplicate id"):
        import_table(table, tmp_path / "o2", label="species", id_column="sample",
                     text="caption")


# ----------------------------------------------------------------------------- real archives


@pytest.fixture(scope="module")
def real_omniglot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if SHARED_OMNIGLOT is None:
        pytest.skip("the real Omniglot archives (shared/data/omniglot beside the repository) "
                    "are absent")
    out = tmp_path_factory.mktemp("real") / "omniglot"
    assert main(["import", "omniglot", str(SHARED_OMNIGLOT), str(out), "--image-size", "14",
                 "--val-groups", "Tagalog", "--test-groups", "Sanskrit", "--no-progress"]) == 0
    return out


def test_real_omniglot_imports_4840_drawings_of_242_characters(real_omniglot: Path,
                                                               capsys) -> None:
    capsys.readouterr()
    assert main(["inspect", str(real_omniglot)]) == 0
    text = capsys.readouterr().out
    assert "samples 4840, classes 242" in text and "groups 8" in text
    assert any(line.split()[:2] == ["strokes", "sequence"] for line in text.splitlines())
    rows = _rows(real_omniglot)
    assert len({r["alphabet"] for r in rows}) == 8
    assert all(r["image"] and r["strokes"] for r in rows)
    strokes = np.load(real_omniglot / rows[0]["strokes"])
    assert strokes.ndim == 2 and strokes.shape[1] == 4 and strokes[0, 3] == 1
    assert set(np.unique(strokes[:, 3])) <= {0.0, 1.0}


def test_twenty_way_training_on_real_omniglot_validates_on_tagalog(
    real_omniglot: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("dim = 16\nval_episodes = 2\n[encoder_options.image]\nhidden = 8\n")
    with pytest.warns(UserWarning, match="ways 20 -> 17"):
        assert main(["train", "--data", str(real_omniglot), "--out", str(tmp_path / "run"),
                     "--config", str(config), "--modalities", "image", "--ways", "20",
                     "--shots", "1", "--queries", "1", "--steps", "2", "--val-every", "2",
                     "--no-progress", "--device", "cpu"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text()
               .splitlines()]
    assert any("val_acc" in m for m in metrics) and metrics[-1].get("event") == "end"


def test_python_misuse_of_import_dataset_is_a_config_error(tmp_path: Path) -> None:
    """A column list holding a number, a number as the source or no output directory were
    an AttributeError or a TypeError from pathlib."""
    table = tmp_path / "t.csv"
    table.write_text("label,title\na,x\nb,y\n")
    with pytest.raises(ConfigError, match="text must name columns") as caught:
        import_dataset("table", str(table), str(tmp_path / "o"), label="label",
                       text=["title", 3])
    assert caught.value.column == "text"
    for source, out in ((123, str(tmp_path / "o")), (str(table), None)):
        with pytest.raises(ConfigError, match="must be a path"):
            import_dataset("table", source, out, label="label")
    assert not (tmp_path / "o").exists()

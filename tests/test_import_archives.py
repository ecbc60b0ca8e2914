"""Class-folder imports from zip and tar archives: the same dataset as from the folder, and
every damaged or hostile archive a typed error (or a skipped member) with nothing left behind."""

from __future__ import annotations

import csv
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metamodal.cli import main
from metamodal.datasets.importers import import_folder
from metamodal.errors import ConfigError, DatasetError

pytestmark = pytest.mark.usefixtures("one_thread")


def _source(root: Path) -> Path:
    """``root/GROUP/CLASS/i.png``: two groups of two classes, three images each."""
    for g, group in enumerate(["birds", "fish"]):
        for c, label in enumerate([f"{group}-a", f"{group}-b"]):
            for i in range(3):
                path = root / group / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("L", (6, 6), 40 * g + 10 * c + i).save(path)
    return root


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _members(root: Path, top: str = "") -> list[tuple[str, bytes]]:
    return [(top + p.relative_to(root).as_posix(), p.read_bytes())
            for p in sorted(root.rglob("*.png"))]


def _dataset(out: Path) -> tuple[list[dict[str, str]], dict[str, bytes]]:
    with (out / "samples.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, {r["image"]: (out / r["image"]).read_bytes() for r in rows}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("name,mode,top", [
    ("src.tar", "w", "src/"),
    ("src.tar.gz", "w:gz", "src/"),
    ("src.tgz", "w:gz", ""),
    ("src.tar.bz2", "w:bz2", "src/"),
    ("src.tar.xz", "w:xz", ""),
    ("src.zip", None, "src/"),
    ("src.ZIP", None, ""),
])
def test_an_archive_imports_the_dataset_its_folder_does(tmp_path: Path, name: str,
                                                        mode: str | None, top: str) -> None:
    """Only folders could be imported; an archive of the folder (its files below one top
    folder or not, any tar compression) now gives the same rows, files, groups and splits."""
    folder = _source(tmp_path / "src")
    expected = import_folder(folder, tmp_path / "from-folder", val_groups=["fish"])
    archive = tmp_path / "archives" / name
    archive.parent.mkdir()
    if mode is None:
        with zipfile.ZipFile(archive, "w") as z:
            for member, data in _members(folder, top):
                z.writestr(member, data)
    else:
        _tar(archive, _members(folder, top), mode)
    out = tmp_path / "out" / "from-archive"
    result = import_folder(archive, out, val_groups=["fish"])
    assert (result.samples, result.classes, result.groups) == (
        expected.samples, expected.classes, expected.groups) == (12, 4, 2)
    assert _dataset(out) == _dataset(tmp_path / "from-folder")
    assert (out / "splits.toml").read_text() == (
        tmp_path / "from-folder" / "splits.toml").read_text()
    assert 'name = "src"' in (out / "dataset.toml").read_text()  # the archive's name
    assert _leftovers(out.parent) == []  # a tar's scratch folder is gone


def test_an_archive_imports_through_the_command_line(tmp_path: Path, capsys) -> None:
    folder = _source(tmp_path / "src")
    _tar(tmp_path / "pets.tar.gz", _members(folder), "w:gz")
    assert main(["import", "imagefolder", str(tmp_path / "pets.tar.gz"), str(tmp_path / "ds"),
                 "--test-groups", "fish", "--no-progress"]) == 0
    assert "imported 12 samples of 4 classes" in capsys.readouterr().out
    assert 'name = "pets"' in (tmp_path / "ds" / "dataset.toml").read_text()


def test_a_damaged_tar_is_refused_not_cut_short(tmp_path: Path) -> None:
    """tarfile takes a damaged header after the first member for the archive's end: the
    members after it would have been dropped silently."""
    folder = _source(tmp_path / "src")
    whole = _tar(tmp_path / "whole.tar", _members(folder)).read_bytes()
    damaged = bytearray(whole)
    second = 512 + 512 * ((len(_members(folder)[0][1]) + 511) // 512)
    damaged[second + 3] ^= 0xFF  # in the second member's name: its checksum fails
    (tmp_path / "damaged.tar").write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match="damaged after 1 file") as caught:
        import_folder(tmp_path / "damaged.tar", tmp_path / "out" / "ds")
    assert caught.value.file == str(tmp_path / "damaged.tar")
    assert "download or pack the archive again" in caught.value.fix

    gz = _tar(tmp_path / "whole.tar.gz", _members(folder), "w:gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "noise.tar.xz").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "empty.tgz").write_bytes(b"")
    for name, said in (("cut.tar.gz", "damaged after"), ("noise.tar.xz", "not a readable tar"),
                       ("empty.tgz", "not a readable tar")):
        with pytest.raises(DatasetError, match=said) as caught:
            import_folder(tmp_path / name, tmp_path / "out" / "ds")
        assert caught.value.file == str(tmp_path / name)
    assert list((tmp_path / "out").iterdir()) == []  # no dataset, no scratch folder


def test_hostile_tar_members_are_refused_or_skipped(tmp_path: Path) -> None:
    folder = _source(tmp_path / "src")
    good = _members(folder)
    with pytest.raises(DatasetError, match="unsafe archive member name '../evil.png'"):
        import_folder(_tar(tmp_path / "slip.tar", [*good, ("../evil.png", b"x")]),
                      tmp_path / "out" / "ds")
    assert not (tmp_path / "evil.png").exists()
    with pytest.raises(DatasetError, match="unsafe archive member name '/abs.png'"):
        import_folder(_tar(tmp_path / "abs.tar", [("/abs.png", b"x")]), tmp_path / "out" / "ds")

    with tarfile.open(tmp_path / "links.tar", "w") as tar:
        for name, data in good:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind, target in ((tarfile.SYMTYPE, "/etc/passwd"), (tarfile.LNKTYPE, good[0][0]),
                             (tarfile.FIFOTYPE, "")):
            info = tarfile.TarInfo(f"birds/birds-a/link{kind.decode()}.png")
            info.type, info.linkname = kind, target
            tar.addfile(info)
    with pytest.warns(UserWarning, match="skipped 3 link, device or FIFO member"):
        result = import_folder(tmp_path / "links.tar", tmp_path / "out" / "links")
    assert result.samples == 12

    big = [*good, ("birds/birds-a/big.png", b"x" * 5000)]
    with pytest.raises(DatasetError, match="larger than the import limit of 4000") as caught:
        import_folder(_tar(tmp_path / "big.tar", big), tmp_path / "out" / "big",
                      max_file_bytes=4000)
    assert caught.value.file == f"{tmp_path / 'big.tar'}:birds/birds-a/big.png"

    both = [*good, ("birds/birds-a/0.png/x.png", b"x")]  # a file and a folder of one name
    with pytest.raises(DatasetError, match="name of a folder"):
        import_folder(_tar(tmp_path / "both.tar", both), tmp_path / "out" / "both")
    assert _leftovers(tmp_path / "out") == []


def test_a_name_given_twice_keeps_the_last_member_as_tar_does(tmp_path: Path) -> None:
    folder = _source(tmp_path / "src")
    good = _members(folder)
    replaced = good[0][0]
    import_folder(_tar(tmp_path / "twice.tar", [*good, (replaced, good[-1][1])]),
                  tmp_path / "ds")
    rows, files = _dataset(tmp_path / "ds")
    assert len(rows) == 12 and files[f"images/{replaced}"] == good[-1][1]


def test_a_source_that_is_neither_folder_nor_archive_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "photos.rar").write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match="neither a folder nor an archive") as caught:
        import_folder(tmp_path / "photos.rar", tmp_path / "ds")
    assert ".tar.gz" in caught.value.fix
    with pytest.raises(DatasetError, match="source not found"):
        import_folder(tmp_path / "missing.tar", tmp_path / "ds")
    for fifo in ("photos.tar", "photos.zip"):  # reading one waited for a writer forever
        os.mkfifo(tmp_path / fifo)
        with pytest.raises(DatasetError, match="nor a regular file"):
            import_folder(tmp_path / fifo, tmp_path / "ds")


def test_the_output_is_checked_before_an_archive_is_unpacked(tmp_path: Path) -> None:
    folder = _source(tmp_path / "src")
    archive = _tar(tmp_path / "src.tar", _members(folder))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match="no dataset.toml"):
        import_folder(archive, tmp_path / "busy" / ".")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["mine.txt"]
    assert _leftovers(tmp_path) == []

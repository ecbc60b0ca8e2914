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
from metamodal.datasets.importers import import_folder, import_table
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


def _dataset(out: Path, column: str = "image") -> tuple[list[dict[str, str]], dict[str, bytes]]:
    with (out / "samples.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows, {r[column]: (out / r[column]).read_bytes() for r in rows}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file the importers' copies open for writing fails as a full disk does."""
    import errno

    import metamodal.datasets._sources as sources

    class Full(io.BufferedWriter):
        def write(self, data):  # noqa: ANN001, ANN202
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sources, "open", lambda path, mode: Full(io.FileIO(path, mode)),
                        raising=False)


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
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()  # nothing made


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
    with pytest.warns(UserWarning, match="skipped 2 link, device or FIFO member.*link2.png"):
        result = import_folder(tmp_path / "links.tar", tmp_path / "out" / "links")
    assert result.samples == 13  # the hard link to a member is a copy of it

    big = [*good, ("birds/birds-a/big.png", b"x" * 5000)]
    with pytest.raises(DatasetError, match="larger than the import limit of 4000") as caught:
        import_folder(_tar(tmp_path / "big.tar", big), tmp_path / "out" / "big",
                      max_file_bytes=4000)
    assert caught.value.file == f"{tmp_path / 'big.tar'}:birds/birds-a/big.png"

    both = [*good, ("birds/birds-a/0.png/x.png", b"x")]  # a file and a folder of one name
    with pytest.raises(DatasetError, match="name of a folder"):
        import_folder(_tar(tmp_path / "both.tar", both), tmp_path / "out" / "both")
    assert _leftovers(tmp_path / "out") == []


def test_a_tar_cut_where_a_member_begins_is_refused(tmp_path: Path) -> None:
    """A plain tar cut exactly at a member's header (no end-of-archive marker) imported the
    members before the cut, silently: a class was lost with exit status 0."""
    members = _members(_source(tmp_path / "src"))
    whole = _tar(tmp_path / "whole.tar", members).read_bytes()
    block = 512 + 512 * ((len(members[0][1]) + 511) // 512)  # header + data of one member
    (tmp_path / "cut.tar").write_bytes(whole[: 6 * block])
    with pytest.raises(DatasetError, match="damaged after 6 file.*end-of-archive marker"):
        import_folder(tmp_path / "cut.tar", tmp_path / "ds")


def test_a_zip_whose_directory_lost_members_is_refused(tmp_path: Path) -> None:
    """zipfile reads a damaged central directory up to the damage and lists fewer members:
    the import succeeded with a class missing."""
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for member, data in _members(_source(tmp_path / "src")):
            z.writestr(member, data)
    data = bytearray(archive.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    declared = int.from_bytes(data[end + 10:end + 12], "little")
    data[end + 8:end + 12] = (declared + 1).to_bytes(2, "little") * 2  # one more than listed
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=f"declares {declared + 1} members, {declared} could"):
        import_folder(archive, tmp_path / "ds")


def test_zip_members_come_in_folder_order_and_a_path_given_twice_once(tmp_path: Path) -> None:
    """A zip was read in the order of its raw names ('cat-1/' before 'cat/'), so the same
    files gave other rows, and other seeded episodes, than their folder; a path given twice
    (or as a//b and a/./b) became two rows with one id, a dataset inspect then refused."""
    folder = tmp_path / "src"
    for label in ("cat", "cat-1", "cat.b", "dog"):
        for i in range(2):
            path = folder / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (6, 6), 30 * i + len(label)).save(path)
    import_folder(folder, tmp_path / "from-folder")
    members = _members(folder)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as z:
        for member, data in members:
            z.writestr(member, b"stale" if member == "cat/0.png" else data)
        z.writestr("cat/0.png", dict(members)["cat/0.png"])  # the last copy counts
        z.writestr("dog//./1.png", dict(members)["dog/1.png"])
    import_folder(tmp_path / "src.zip", tmp_path / "from-zip")
    assert _dataset(tmp_path / "from-zip") == _dataset(tmp_path / "from-folder")


def test_damaged_or_unusual_zip_members_are_typed_errors(tmp_path: Path) -> None:
    members = _members(_source(tmp_path / "src"))
    deflated = tmp_path / "deflated.zip"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members:
            z.writestr(member, data)
    data = bytearray(deflated.read_bytes())
    for k in range(40, 48):  # inside the first member's compressed data
        data[k] ^= 0x5A
    deflated.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="cannot read file") as caught:  # was a zlib.error
        import_folder(deflated, tmp_path / "ds")
    assert caught.value.file.startswith(f"{deflated}:")

    method = tmp_path / "deflate64.zip"  # what Windows writes for large archives
    with zipfile.ZipFile(method, "w") as z:
        for member, payload in members:
            z.writestr(member, payload)
    data = bytearray(method.read_bytes())
    for header, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = data.find(header)
        while start >= 0:
            data[start + at:start + at + 2] = (9).to_bytes(2, "little")
            start = data.find(header, start + 4)
    method.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="not supported") as caught:
        import_folder(method, tmp_path / "ds")
    assert "pack the archive again" in caught.value.fix

    utf8 = tmp_path / "names.zip"  # flagged UTF-8, but a name is not: a UnicodeDecodeError
    with zipfile.ZipFile(utf8, "w") as z:
        for member, payload in members:
            z.writestr(member.replace("0.png", "\u00e90.png"), payload)
    utf8.write_bytes(utf8.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    with pytest.raises(DatasetError, match="not a readable zip archive"):
        import_folder(utf8, tmp_path / "ds")

    windows = tmp_path / "windows.zip"
    with zipfile.ZipFile(windows, "w") as z:
        z.writestr("set\\cat\\0.png", members[0][1])
    with pytest.raises(DatasetError, match="a backslash in it .a zip made on Windows"):
        import_folder(windows, tmp_path / "ds")

    fifo = tmp_path / "fifo-member.zip"  # a Unix FIFO's mode: skipped, like a tar's FIFO
    with zipfile.ZipFile(fifo, "w") as z:
        for member, payload in members:
            z.writestr(member, payload)
        info = zipfile.ZipInfo("birds/birds-a/pipe.png")
        info.external_attr = (0o010644 << 16)
        z.writestr(info, b"")
    with pytest.warns(UserWarning, match="skipped 1 link, device or FIFO member.*pipe.png"):
        assert import_folder(fifo, tmp_path / "ds").samples == 12


def test_a_tar_name_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    """A file name that is not UTF-8 reached samples.csv and failed it with a raw
    UnicodeEncodeError (from a tar, or a folder)."""
    members = _members(_source(tmp_path / "src"))
    bad = os.fsdecode(b"birds/birds-a/\xff.png")
    with tarfile.open(tmp_path / "names.tar", "w", format=tarfile.GNU_FORMAT,
                      errors="surrogateescape") as tar:
        for name, data in [*members, (bad, members[0][1])]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DatasetError, match="is not valid UTF-8") as caught:
        import_folder(tmp_path / "names.tar", tmp_path / "ds")
    assert "\\udcff" in str(caught.value)
    folder = _source(tmp_path / "folder")
    (folder / "birds" / "birds-a" / os.fsdecode(b"\xff.png")).write_bytes(members[0][1])
    with pytest.raises(DatasetError, match="is not valid UTF-8"):
        import_folder(folder, tmp_path / "ds")


def test_links_inside_a_tar_are_copies_of_their_members(tmp_path: Path) -> None:
    """A folder's link that stays inside it is followed, and a tar of that folder's link was
    dropped: a hard link, and a symbolic link (also to a link, and to a later member), are
    copies of the member they name; one leading out is skipped."""
    members = _members(_source(tmp_path / "src"))

    def link(tar: tarfile.TarFile, name: str, kind: bytes, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)

    with tarfile.open(tmp_path / "links.tar", "w") as tar:
        link(tar, "fish/fish-a/early.png", tarfile.SYMTYPE, "../fish-b/0.png")  # before it
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link(tar, "birds/birds-a/hard.png", tarfile.LNKTYPE, "birds/birds-b/1.png")
        link(tar, "birds/birds-a/soft.png", tarfile.SYMTYPE, "hard.png")  # a link to a link
        link(tar, "birds/birds-a/out.png", tarfile.SYMTYPE, "../../../outside.png")
    with pytest.warns(UserWarning, match="skipped 1 link.*out.png"):
        import_folder(tmp_path / "links.tar", tmp_path / "ds")
    _, files = _dataset(tmp_path / "ds")
    content = dict(members)
    assert files["images/birds/birds-a/hard.png"] == content["birds/birds-b/1.png"]
    assert files["images/birds/birds-a/soft.png"] == content["birds/birds-b/1.png"]
    assert files["images/fish/fish-a/early.png"] == content["fish/fish-b/0.png"]
    assert len(files) == 15


def test_the_top_folder_is_said_and_can_be_kept(tmp_path: Path) -> None:
    """An archive of one group's folder lost that group to the top-folder rule, and a README
    beside the top folder turned it into a group: the rule now ignores loose files, says when
    it applies, and --keep-top-folder turns it off."""
    folder = _source(tmp_path / "src")
    birds = [(f"birds/{m}", d) for m, d in _members(folder / "birds")]
    _tar(tmp_path / "one-group.tar", [*birds, ("README.md", b"notes")])
    with pytest.warns(UserWarning, match="1 file.s. at the top"):
        result = import_folder(tmp_path / "one-group.tar", tmp_path / "stripped")
    assert result.groups is None and result.classes == 2
    assert "read the archive's top folder birds/ as its root" in result.summary()
    with pytest.warns(UserWarning, match="1 file.s. at the top"):
        kept = import_folder(tmp_path / "one-group.tar", tmp_path / "kept",
                             keep_top_folder=True)
    assert (kept.groups, kept.classes) == (1, 2)
    assert main(["import", "imagefolder", str(tmp_path / "one-group.tar"),
                 str(tmp_path / "cli"), "--keep-top-folder", "--no-progress"]) == 0
    assert "group" in (tmp_path / "cli" / "dataset.toml").read_text()


def test_errors_about_a_class_folder_name_its_place_in_the_archive(tmp_path: Path) -> None:
    members = [*_members(_source(tmp_path / "src"), "pets/"), ("pets/fish/fish-a/notes.txt", b"")]
    _tar(tmp_path / "pets.tgz", members, "w:gz")
    with pytest.raises(DatasetError, match="mixed file types") as caught:
        import_folder(tmp_path / "pets.tgz", tmp_path / "ds")
    assert caught.value.file == f"{tmp_path / 'pets.tgz'}:pets/fish/fish-a"


def test_a_full_disk_is_the_output_s_fault_not_the_archive_s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No space left while a tar was unpacked was reported as a damaged archive (with the fix
    to download it again); a folder's copy as an unreadable file."""
    import errno

    import metamodal.datasets._sources as sources

    folder = _source(tmp_path / "src")
    archive = _tar(tmp_path / "src.tar.gz", _members(folder), "w:gz")

    _disk_full(monkeypatch)
    with pytest.raises(ConfigError, match="cannot write .No space left on device") as caught:
        import_folder(archive, tmp_path / "ds")
    assert "free space" in caught.value.fix and ".unpack-" not in str(caught.value)
    assert caught.value.file == f"{archive}:birds/birds-a/0.png"  # not the temporary copy

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sources.shutil, "copyfile", full)
    with pytest.raises(ConfigError, match="cannot write .No space left on device"):
        import_folder(folder, tmp_path / "ds")
    assert _leftovers(tmp_path) == []


def test_a_missing_source_makes_no_folder(tmp_path: Path) -> None:
    for source in ("missing.tar", "missing"):
        with pytest.raises(DatasetError, match="not found"):
            import_folder(tmp_path / source, tmp_path / "p" / "q" / "out")
        assert sorted(p.name for p in tmp_path.iterdir()) == []


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


def test_sigterm_cleans_up_the_unpacked_archive(tmp_path: Path) -> None:
    """SIGTERM (a timeout, `docker stop`, a batch system) killed the command at once, leaving
    the tar's scratch folder (up to the archive's size) beside OUT; it now ends as Ctrl-C
    does: cleaned up, with exit status 143."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    archive = _tar(tmp_path / "src.tar", _members(_source(tmp_path / "src")))
    marker, out = tmp_path / "unpacked", tmp_path / "out" / "ds"
    script = textwrap.dedent(f"""
        import sys, time
        import metamodal.datasets._archives as archives
        unpack = archives.tar_files
        def slow(*args, **kwargs):
            files = unpack(*args, **kwargs)
            open({str(marker)!r}, "w").close()
            time.sleep(60)
            return files
        archives.tar_files = slow
        from metamodal.cli import main
        sys.argv = ["metamodal", "import", "imagefolder", {str(archive)!r}, {str(out)!r}]
        sys.exit(main())
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                               text=True)
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert marker.exists() and [p.name for p in tmp_path.glob(".unpack-*")]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "terminated (SIGTERM)" in err
    assert _leftovers(tmp_path) == [] and not out.exists()


def test_an_archive_of_the_other_kind_is_named_so(tmp_path: Path) -> None:
    members = _members(_source(tmp_path / "src"))
    _tar(tmp_path / "photos.zip", members)
    with zipfile.ZipFile(tmp_path / "photos.tar.gz", "w") as z:
        for member, data in members:
            z.writestr(member, data)
    for name, hint in (("photos.zip", "it is a tar archive: name it .tar"),
                       ("photos.tar.gz", "it is a zip archive: name it .zip")):
        with pytest.raises(DatasetError, match=hint):
            import_folder(tmp_path / name, tmp_path / "ds")


def _shop(root: Path) -> Path:
    """``root/shop/items.csv`` naming ``photos/*.png`` beside it: 3 classes of 3."""
    folder = root / "shop"
    (folder / "photos").mkdir(parents=True)
    lines = ["sample,species,title,photo"]
    for c, label in enumerate(["fox", "owl", "elk"]):
        for i in range(3):
            Image.new("L", (6, 6), 30 * c + i).save(folder / "photos" / f"{label}{i}.png")
            lines.append(f"{label}{i},{label},a {label},photos/{label}{i}.png")
    (folder / "items.csv").write_text("\n".join(lines) + "\n")
    return folder


def _pack(folder: Path, archive: Path, extra: list[tuple[str, bytes]] = ()) -> Path:
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        for member, data in extra:
            z.writestr(member, data)
    return archive


def test_a_table_in_an_archive_imports_as_from_its_folder(tmp_path: Path, capsys) -> None:
    """`import table` read only a table in a folder: a dataset published as one archive of
    its table and files had to be unpacked by hand first."""
    folder = _shop(tmp_path / "src")
    options = dict(label="species", id_column="sample", text="title", image="photo")
    import_table(folder / "items.csv", tmp_path / "from-folder", **options)
    archive = _pack(folder, tmp_path / "shop.zip")
    result = import_table(archive, tmp_path / "out" / "from-zip", **options)
    assert (result.samples, result.classes) == (9, 3)
    assert _dataset(tmp_path / "out" / "from-zip", "photo") == _dataset(
        tmp_path / "from-folder", "photo")
    assert 'name = "shop"' in (tmp_path / "out" / "from-zip" / "dataset.toml").read_text()
    assert _leftovers(tmp_path / "out") == []
    _tar(tmp_path / "shop.tar.gz", [(f"shop/{p.relative_to(folder).as_posix()}", p.read_bytes())
                                    for p in sorted(folder.rglob("*")) if p.is_file()], "w:gz")
    assert main(["import", "table", str(tmp_path / "shop.tar.gz"), str(tmp_path / "from-tar"),
                 "--label", "species", "--id", "sample", "--text", "title", "--image", "photo",
                 "--table", "shop/items.csv", "--no-progress"]) == 0
    assert "imported 9 samples of 3 classes" in capsys.readouterr().out
    assert _dataset(tmp_path / "from-tar", "photo") == _dataset(tmp_path / "from-folder", "photo")


def test_a_table_archive_s_errors_name_its_members(tmp_path: Path) -> None:
    folder = _shop(tmp_path / "src")
    options = dict(label="species", id_column="sample", image="photo")
    two = _pack(folder, tmp_path / "two.zip", [("shop/old.csv", b"a,b\n")])
    with pytest.raises(DatasetError, match="holds 2 tables .shop/items.csv, shop/old.csv") as e:
        import_table(two, tmp_path / "ds", **options)
    assert "--table" in e.value.fix
    with pytest.raises(DatasetError, match="holds no file 'shop/new.csv'"):
        import_table(two, tmp_path / "ds", table_in_archive="shop/new.csv", **options)
    for key, value in (("table_in_archive", "../x.csv"), ("root", "/etc")):
        with pytest.raises(ConfigError, match="is not a path inside the archive") as caught:
            import_table(two, tmp_path / "ds", **{key: value}, **options)
        assert caught.value.column == key.removesuffix("_in_archive")
    with pytest.raises(DatasetError, match="holds no table"):
        import_table(_pack(folder / "photos", tmp_path / "photos.zip"), tmp_path / "ds",
                     **options)

    (folder / "items.csv").write_text((folder / "items.csv").read_text()
                                      + "elk3,elk,x,../../outside.png\n")
    bad = _pack(folder, tmp_path / "bad.zip")
    with pytest.raises(DatasetError, match="leads out of the source folder") as caught:
        import_table(bad, tmp_path / "ds", **options)
    assert caught.value.file == f"{bad}:shop/items.csv" and caught.value.row == 10
    assert ".unpack-" not in str(caught.value)
    with pytest.raises(ConfigError, match="not a folder") as caught:
        import_table(bad, tmp_path / "ds", root="shop/nothing", **options)
    assert caught.value.file == f"{bad}:shop/nothing"
    with pytest.raises(ConfigError, match="the source is not one"):
        import_table(folder / "items.csv", tmp_path / "ds", table_in_archive="items.csv",
                     **options)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "ds").exists()


def test_two_columns_naming_one_file_each_get_their_copy(tmp_path: Path) -> None:
    """The copies were keyed by the source file: the second column's cells pointed at a copy
    never written (inspect: unreadable), and the import said it succeeded."""
    folder = _shop(tmp_path / "src")
    text = (folder / "items.csv").read_text().splitlines()
    rows = [f"{text[0]},again"] + [f"{line},{line.rsplit(',', 1)[1]}" for line in text[1:]]
    (folder / "items.csv").write_text("\n".join(rows) + "\n")
    import_table(_pack(folder, tmp_path / "shop.zip"), tmp_path / "ds", label="species",
                 image="photo,again")
    from metamodal.data.inspect import inspect_dataset

    rows_out, photos = _dataset(tmp_path / "ds", "photo")
    _, again = _dataset(tmp_path / "ds", "again")
    assert list(photos.values()) == list(again.values()) and len(again) == 9
    assert inspect_dataset(tmp_path / "ds").modalities["again"].details["unreadable"] == 0


def test_an_archive_table_may_name_hidden_files_links_and_sequence_csvs(tmp_path: Path) -> None:
    """A hidden file the table names was dropped as noise ('not found'); a zip's symbolic link
    to a member was skipped (a tar's was a copy); a sequence's .csv beside deeper files made
    the table ambiguous."""
    folder = _shop(tmp_path / "src")
    (folder / "photos" / ".fox0.png").write_bytes((folder / "photos" / "fox0.png").read_bytes())
    (folder / "items.csv").write_text((folder / "items.csv").read_text().replace(
        "photos/fox0.png", "photos/.fox0.png").replace("photos/owl0.png", "photos/link.png"))
    (folder / "photos" / "seq.csv").write_text("1,2\n3,4\n")
    archive = _pack(folder, tmp_path / "shop.zip")
    with zipfile.ZipFile(archive, "a") as z:
        info = zipfile.ZipInfo("shop/photos/link.png")
        info.external_attr = (0o120777 << 16)  # a Unix symbolic link
        z.writestr(info, "owl0.png")
    import_table(archive, tmp_path / "ds", label="species", image="photo")
    _, photos = _dataset(tmp_path / "ds", "photo")
    assert photos["media/photo/photos/.fox0.png"] == (folder / "photos/fox0.png").read_bytes()
    assert photos["media/photo/photos/link.png"] == (folder / "photos/owl0.png").read_bytes()


def test_a_table_archive_checks_the_options_before_unpacking_and_names_members(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the roles was reported only after the whole archive was unpacked; an error
    of writing the unpacked files named the temporary folder."""
    with pytest.raises(ConfigError, match="no modality column"):  # the archive is not read
        import_table(tmp_path / "missing.zip", tmp_path / "ds", label="species")
    archive = _pack(_shop(tmp_path / "src"), tmp_path / "shop.zip")

    _disk_full(monkeypatch)
    with pytest.raises(ConfigError, match="No space left") as caught:
        import_table(archive, tmp_path / "ds", label="species", image="photo")
    assert caught.value.file.startswith(f"{archive}:shop/") and ".unpack-" not in str(
        caught.value)
    assert _leftovers(tmp_path) == []


def test_an_output_behind_a_link_is_written_there_and_a_loop_is_typed(tmp_path: Path) -> None:
    """An OUT that is a link to a folder not yet made ended, after all the copying, in a raw
    NotADirectoryError; a loop of links in a raw RuntimeError."""
    folder = _source(tmp_path / "src")
    (tmp_path / "datasets").mkdir()
    (tmp_path / "latest").symlink_to("datasets/new")
    import_folder(folder, tmp_path / "latest")
    assert (tmp_path / "latest").is_symlink()
    assert (tmp_path / "datasets" / "new" / "dataset.toml").is_file()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(ConfigError, match="symbolic link that leads nowhere"):
        import_folder(folder, tmp_path / "loop")
    with pytest.raises(ConfigError, match="cannot be resolved"):
        import_folder(folder, tmp_path / "loop" / "x")


def test_unpacking_a_tar_shows_its_progress_when_asked(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A large tar archive was unpacked for minutes without a sign: the import's progress
    bar now follows the archive's bytes read (not shown with --no-progress)."""
    import metamodal.datasets._archives as archives

    bars: list[tuple[bool, object]] = []
    real = archives.tqdm

    def recording(*args, disable: bool = False, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bar = real(*args, disable=False, file=io.StringIO(), **kwargs)
        bars.append((not disable, bar))
        return bar

    monkeypatch.setattr(archives, "tqdm", recording)
    archive = _tar(tmp_path / "src.tar.gz", _members(_source(tmp_path / "src")), "w:gz")
    for shown in (True, False):
        bars.clear()
        import_folder(archive, tmp_path / f"ds-{shown}", progress=shown)
        [(drawn, bar)] = bars
        assert drawn is shown and bar.total == archive.stat().st_size
        assert bar.n >= bar.total * 0.9  # the compressed bytes read, as far as the reader went


def test_the_last_member_of_a_path_wins_link_or_not(tmp_path: Path) -> None:
    """A link member before a regular member of the same path was followed at the end, over
    the later member (tar -x keeps the later one): an updated archive imported stale
    content."""
    members = _members(_source(tmp_path / "src"))
    content = dict(members)
    with tarfile.open(tmp_path / "order.tar", "w") as tar:
        link = tarfile.TarInfo("birds/birds-a/0.png")
        link.type, link.linkname = tarfile.SYMTYPE, "1.png"
        tar.addfile(link)
        for name, data in [*members[1:], members[0]]:  # the regular 0.png comes last
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        again = tarfile.TarInfo("fish/fish-a/0.png")  # and here a link comes last
        again.type, again.linkname = tarfile.SYMTYPE, "2.png"
        tar.addfile(again)
    import_folder(tmp_path / "order.tar", tmp_path / "ds")
    _, files = _dataset(tmp_path / "ds")
    assert files["images/birds/birds-a/0.png"] == content["birds/birds-a/0.png"]
    assert files["images/fish/fish-a/0.png"] == content["fish/fish-a/2.png"]


def test_tar_archives_joined_with_cat_are_refused(tmp_path: Path) -> None:
    """tar reads up to the first end-of-archive marker: the second of two joined archives was
    left out with exit status 0 (zeros padding a record, and other trailing bytes, are fine)."""
    members = _members(_source(tmp_path / "src"))
    first = _tar(tmp_path / "a.tar", members[:6]).read_bytes()
    second = _tar(tmp_path / "b.tar", members[6:]).read_bytes()
    (tmp_path / "joined.tar").write_bytes(first + second)
    with pytest.raises(DatasetError, match="another archive after its end-of-archive marker"):
        import_folder(tmp_path / "joined.tar", tmp_path / "ds")
    (tmp_path / "padded.tar").write_bytes(first + bytes(20480) + b"trailing notes")
    assert import_folder(tmp_path / "padded.tar", tmp_path / "ok").samples == 6


def test_a_progress_bar_that_cannot_be_drawn_does_not_stop_the_unpacking(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing the unpack bar to a closed pipe raised inside the tar reader: a sound archive
    was reported damaged."""
    import metamodal.datasets._archives as archives

    real = archives.tqdm

    class Broken(real):  # type: ignore[misc, valid-type]
        def update(self, n=1):  # noqa: ANN001, ANN202
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(archives, "tqdm", lambda *a, **k: Broken(*a, **{**k, "disable": False,
                                                                       "file": io.StringIO()}))
    archive = _tar(tmp_path / "src.tar.gz", _members(_source(tmp_path / "src")), "w:gz")
    assert import_folder(archive, tmp_path / "ds", progress=True).samples == 12


def test_a_table_cell_naming_a_loop_of_links_is_a_typed_error(tmp_path: Path) -> None:
    folder = _shop(tmp_path / "src")
    (folder / "photos" / "loop.png").symlink_to("loop.png")
    (folder / "items.csv").write_text((folder / "items.csv").read_text()
                                      + "elk3,elk,x,photos/loop.png\n")
    with pytest.raises(DatasetError, match="cannot be examined") as caught:
        import_table(folder / "items.csv", tmp_path / "ds", label="species", image="photo")
    assert (caught.value.row, caught.value.column) == (10, "photo")

"""Downloads against an HTTP server on 127.0.0.1 serving fixture archives (no network)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from omniglot_fixtures import SHARED_OMNIGLOT, write_archives

from metamodal.cli import main
from metamodal.datasets.download import OMNIGLOT_SHA256, download_omniglot, fetch
from metamodal.errors import ChecksumError, ConfigError, DownloadError


class _Server:
    """Serves ``files`` (name -> bytes) with Range support; records each request's Range
    header; ``cut_after`` makes the next response stop after that many bytes (a dropped
    connection); ``ignore_range`` answers every request with the whole file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: int | None = None
        self.ignore_range = False
        self.partial_unsaid = False  # answer 206 without a Content-Range
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                name = self.path.lstrip("/")
                requested = self.headers.get("Range")
                server.requests.append((name, requested))
                data = server.files.get(name)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if server.partial_unsaid:
                    self.send_response(206)
                elif requested and not server.ignore_range:
                    start = int(requested.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/"
                                     f"{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body, server.cut_after = body[: server.cut_after], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def fixture_archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Omniglot-layout archives under the names of the small official ones."""
    root = tmp_path_factory.mktemp("archives")
    write_archives(root, "background_small1", {"Alpha": 3, "Beta": 2}, drawers=3)
    write_archives(root, "background_small2", {"Beta": 2, "Gamma": 2}, drawers=3)
    return {p.name: p.read_bytes() for p in sorted(root.glob("*.zip"))}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_resumes_a_partial_download_with_a_range_request(server: _Server,
                                                               tmp_path: Path) -> None:
    data = bytes(range(256)) * 1000
    server.files["a.zip"] = data
    dest = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(data[:100_000])
    path, digest = fetch(server.url + "a.zip", dest, sha256=_sha(data))
    assert server.requests == [("a.zip", "bytes=100000-")]
    assert path.read_bytes() == data and digest == _sha(data)
    assert not (tmp_path / "a.zip.part").exists()
    fetch(server.url + "a.zip", dest, sha256=_sha(data))  # present and verified: no request
    assert len(server.requests) == 1


def test_a_dropped_connection_keeps_the_part_and_the_next_call_resumes(
    server: _Server, tmp_path: Path
) -> None:
    data = b"omniglot" * 50_000
    server.files["a.zip"] = data
    server.cut_after = 123_456
    with pytest.raises(DownloadError, match="123456 of 400000") as caught:
        fetch(server.url + "a.zip", tmp_path / "a.zip", sha256=_sha(data))
    assert "again to resume" in caught.value.fix
    assert (tmp_path / "a.zip.part").stat().st_size == 123_456
    fetch(server.url + "a.zip", tmp_path / "a.zip", sha256=_sha(data))
    assert server.requests[-1] == ("a.zip", "bytes=123456-")
    assert (tmp_path / "a.zip").read_bytes() == data


def test_a_server_that_ignores_range_restarts_the_file(server: _Server,
                                                       tmp_path: Path) -> None:
    data = b"0123456789" * 1000
    server.files["a.zip"] = data
    server.ignore_range = True
    (tmp_path / "a.zip.part").write_bytes(b"garbage-that-must-not-stay")
    fetch(server.url + "a.zip", tmp_path / "a.zip", sha256=_sha(data))
    assert (tmp_path / "a.zip").read_bytes() == data


def test_a_checksum_mismatch_is_a_typed_error_and_leaves_nothing(
    server: _Server, tmp_path: Path, fixture_archives: dict[str, bytes]
) -> None:
    name = "images_background_small1.zip"
    server.files[name] = fixture_archives[name]  # not the official bytes
    with pytest.raises(ChecksumError, match=OMNIGLOT_SHA256[name]) as caught:
        download_omniglot(tmp_path / "omni", base_url=server.url, sets=["images_background_small1"])
    assert "--sha256" in caught.value.fix and caught.value.file == server.url + name
    assert not list((tmp_path / "omni" / "archives").iterdir())
    assert main(["download", "omniglot", str(tmp_path / "omni"), "--url", server.url,
                 "--sets", "images_background_small1", "--no-progress"]) == 2


def test_download_omniglot_fetches_verifies_unpacks_and_imports(
    server: _Server, tmp_path: Path, fixture_archives: dict[str, bytes]
) -> None:
    server.files.update(fixture_archives)
    checksums = [f"{name}={_sha(data)}" for name, data in fixture_archives.items()]
    args = ["download", "omniglot", str(tmp_path / "omni"), "--url", server.url,
            "--val-groups", "Gamma", "--image-size", "14", "--no-progress"]
    for pair in checksums:
        args += ["--sha256", pair]
    assert main(args) == 0
    dataset = tmp_path / "omni" / "dataset"
    lines = (dataset / "samples.csv").read_text().splitlines()
    assert len(lines) - 1 == 3 * (3 + 2 + 2)  # Beta is in both sets and imported once
    assert (tmp_path / "omni/unpacked/images_background_small1/Alpha/character01").is_dir()
    assert not list((tmp_path / "omni/unpacked").rglob("__MACOSX"))
    from metamodal.data.inspect import inspect_dataset

    report = inspect_dataset(dataset)
    assert not [p for p in report.problems if " split has " not in p.message]  # tiny fixture
    assert report.groups == 3 and report.modalities["strokes"].kind == "sequence"
    count = len(server.requests)
    assert main(args) == 0  # all there: nothing fetched again
    assert len(server.requests) == count


def test_archives_without_a_known_checksum_are_trusted_on_first_use(
    server: _Server, tmp_path: Path, fixture_archives: dict[str, bytes]
) -> None:
    data = fixture_archives["images_background_small1.zip"]
    server.files["images_background.zip"] = data
    assert OMNIGLOT_SHA256["images_background.zip"] is None
    with pytest.warns(UserWarning, match="trust on first use"):
        result = download_omniglot(tmp_path / "omni", base_url=server.url,
                                   sets=["images_background"], import_data=False)
    assert result.recorded == ["images_background.zip"]
    record = tmp_path / "omni/archives/images_background.zip.sha256"
    assert record.read_text().split()[0] == _sha(data)
    # the archive is damaged later: the recorded checksum catches it
    (tmp_path / "omni/archives/images_background.zip").write_bytes(data[:-10] + b"0" * 10)
    with pytest.raises(ChecksumError, match="recorded"):
        download_omniglot(tmp_path / "omni", base_url=server.url, sets=["images_background"],
                          import_data=False)


def test_other_archives_are_unpacked_again_and_their_dataset_imported_only_when_asked(
    server: _Server, tmp_path: Path, fixture_archives: dict[str, bytes]
) -> None:
    """The folder unpacked from a first archive survived a second, different archive (its
    checksum verified), and the dataset was built from the first one's content: the folder is
    unpacked again from the verified archive, and a dataset of other archives is a typed error
    until --overwrite imports the new ones."""
    names = ["images_background_small1.zip", "strokes_background_small1.zip"]
    first = {name: fixture_archives[name] for name in names}
    second = {name: fixture_archives[name.replace("small1", "small2")] for name in names}

    def download(archives: dict[str, bytes], **options) -> Path:
        server.files.update(archives)
        result = download_omniglot(tmp_path / "omni", base_url=server.url,
                                   sets=[n[:-4] for n in names],
                                   sha256={n: _sha(d) for n, d in archives.items()}, **options)
        return result.dataset

    def alphabets(dataset: Path) -> set[str]:
        lines = (dataset / "samples.csv").read_text().splitlines()[1:]
        return {line.split("/")[0] for line in lines}

    assert alphabets(download(first)) == {"Alpha", "Beta"}
    (tmp_path / "omni/archives/images_background_small1.zip").unlink()  # fetched again
    (tmp_path / "omni/archives/strokes_background_small1.zip").unlink()
    with pytest.raises(ConfigError, match="other archives") as caught:
        download(second)
    assert "--overwrite" in caught.value.fix
    unpacked = tmp_path / "omni/unpacked/images_background_small1"
    assert sorted(p.name for p in unpacked.iterdir()) == ["Beta", "Gamma"]
    assert alphabets(download(second, overwrite=True)) == {"Beta", "Gamma"}
    assert alphabets(download(second)) == {"Beta", "Gamma"}  # the same archives: as it is
    # an unpacked folder damaged since: --overwrite unpacks it again (it was trusted)
    shutil.rmtree(unpacked / "Gamma")
    assert alphabets(download(second, overwrite=True)) == {"Beta", "Gamma"}


def test_a_partial_answer_that_does_not_say_which_part_is_a_typed_error(
        server: _Server, tmp_path: Path) -> None:
    """Its fix said to delete a .part file that did not exist."""
    server.files["a.bin"] = b"x" * 100
    server.partial_unsaid = True
    with pytest.raises(DownloadError, match="without saying which part") as caught:
        fetch(server.url + "a.bin", tmp_path / "a.bin")
    assert "--url" in caught.value.fix and ".part" not in caught.value.fix


@pytest.mark.parametrize("record", ["imported.json", "unpacked/images_background.sha256",
                                    "archives/images_background.zip.sha256"])
@pytest.mark.parametrize("what", ["fifo", "folder", "link"])
def test_a_record_that_is_not_a_regular_file_is_refused_without_blocking(
    server: _Server, tmp_path: Path, fixture_archives: dict[str, bytes], record: str,
    what: str
) -> None:
    """A FIFO at imported.json or at an archive's checksum record blocked for ever; a folder
    there was a raw IsADirectoryError; a link was written through."""
    server.files["images_background.zip"] = fixture_archives["images_background_small1.zip"]
    server.files["strokes_background.zip"] = fixture_archives["strokes_background_small1.zip"]
    options = dict(base_url=server.url, sets=["images_background", "strokes_background"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trust on first use
        download_omniglot(tmp_path / "omni", **options)
        path = tmp_path / "omni" / record
        path.unlink()
        if what == "fifo":
            os.mkfifo(path)
        elif what == "folder":
            path.mkdir()
        else:
            path.symlink_to(tmp_path / "elsewhere")
        with pytest.raises(DownloadError, match="not a regular file") as caught:
            download_omniglot(tmp_path / "omni", **options)
    assert caught.value.file == str(path) and "remove it" in caught.value.fix
    assert not (tmp_path / "elsewhere").exists()


def test_unreachable_or_missing_files_and_bad_arguments(server: _Server,
                                                        tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="404"):
        fetch(server.url + "nothing.zip", tmp_path / "n.zip")
    with pytest.raises(ConfigError, match="unsupported URL"):
        fetch("file:///etc/passwd", tmp_path / "p")
    with pytest.raises(ConfigError, match="64 hexadecimal"):
        fetch(server.url + "a.zip", tmp_path / "a.zip", sha256="abc")
    with pytest.raises(ConfigError, match="unknown Omniglot set"):
        download_omniglot(tmp_path, sets=["images_everything"])
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch(f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip", timeout=5)


def test_bad_urls_timeouts_records_and_folders_in_the_way_are_typed_errors(
        server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each was a raw ValueError, OverflowError, UnicodeDecodeError or IsADirectoryError
    (the last after the whole download)."""
    for url in ("http://[::1", "http://127.0.0.1:99999/"):
        with pytest.raises(ConfigError, match="invalid URL"):
            download_omniglot(tmp_path / "d", base_url=url)
    for timeout in ("-1", "nan", "inf", "1e309", "0"):
        assert main(["download", "omniglot", str(tmp_path / "d"), "--url", server.url,
                     "--timeout", timeout]) == 2
        assert "timeout" in capsys.readouterr().err
    server.files["a.zip"] = b"archive"
    (tmp_path / "a.zip.sha256").write_bytes(b"\xff")
    with pytest.raises(DownloadError, match="recorded checksum") as caught:
        fetch(server.url + "a.zip", tmp_path / "a.zip", record=True)
    assert caught.value.file == str(tmp_path / "a.zip.sha256")
    for in_the_way in ("b.zip", "b.zip.part"):
        (tmp_path / in_the_way).mkdir()
        with pytest.raises(DownloadError, match="not a file") as caught:
            fetch(server.url + "a.zip", tmp_path / "b.zip")
        assert caught.value.file == str(tmp_path / in_the_way)
        (tmp_path / in_the_way).rmdir()
    assert server.requests == []  # refused before any request


def test_the_built_in_checksums_match_the_real_small_archives(server: _Server,
                                                              tmp_path: Path) -> None:
    if SHARED_OMNIGLOT is None:
        pytest.skip("the real Omniglot archives (shared/data/omniglot beside the repository) "
                    "are absent")
    for path in SHARED_OMNIGLOT.glob("*_background_small*.zip"):
        server.files[path.name] = path.read_bytes()
    assert len(server.files) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no trust-on-first-use warning: all four are known
        result = download_omniglot(tmp_path, base_url=server.url, import_data=False)
    assert sorted(p.name for p in result.archives) == sorted(server.files)
    assert result.recorded == [] and len(result.unpacked) == 4
    assert (tmp_path / "unpacked/strokes_background_small2/Tagalog").is_dir()

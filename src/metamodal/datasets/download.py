"""Downloading datasets: resumable HTTP(S) fetches with SHA-256 checks, then unpack and import.

`fetch` downloads one file into ``NAME.part`` (resuming a partial one with an HTTP ``Range``
request), checks its SHA-256 and only then renames it to its final name, so a file with the
final name is always complete and verified. `download_omniglot` fetches the official Omniglot
archives, unpacks them safely (`metamodal.datasets._archives.extract_zip`) and imports them
(`metamodal.datasets.omniglot.import_omniglot`)::

    DIR/archives/<name>.zip            the archives as downloaded (+ <name>.zip.sha256 records)
    DIR/unpacked/<name>/...            their content (+ <name>.sha256: the archive unpacked)
    DIR/dataset/                       the imported dataset
    DIR/imported.json                  the archives (name -> SHA-256) the dataset was made of

An unpacked folder whose record names another archive (or none: an older layout) is unpacked
again from the verified archive, replacing the old folder once complete; a dataset imported
from other archives is imported again only with ``overwrite`` (else a `ConfigError` says so).

Checksums: the SHA-256 of the four ``*_background_small*`` archives is recorded in
`OMNIGLOT_SHA256` (computed from copies of the archives as published). The full background and
evaluation archives could not be verified when this was written, so their checksum is *trust on
first use*: the first download records its SHA-256 in ``<name>.zip.sha256`` (with a warning
saying so), and every later run checks the archive against that record. Pass ``sha256=`` (or
``--sha256 NAME=HEX``) to check any archive against a checksum you trust.

Only the standard library (``urllib``) downloads; tqdm shows progress.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metamodal.datasets.common import image_options
from metamodal.errors import ChecksumError, ConfigError, DownloadError
from metamodal.io import (
    atomic_write_json,
    atomic_write_text,
    loads_json,
    make_directory,
    replace_directory,
    sha256_file,
)

log = logging.getLogger(__name__)

OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
"""Where the authors publish the Omniglot archives (Lake et al. 2015)."""

OMNIGLOT_SHA256: dict[str, str | None] = {
    "images_background_small1.zip":
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    "images_background_small2.zip":
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    "strokes_background_small1.zip":
        "8cb3960fb6cf4ccf5f064ad83169f828c36c36782a0f6e7faacb7ecfae4468a2",
    "strokes_background_small2.zip":
        "345bf2141efbea062833dbb2828abbc23d9e07825e46f2afdd4daecddfed6e78",
    # Not verified here: recorded on first download (trust on first use), or pass sha256=.
    "images_background.zip": None,
    "strokes_background.zip": None,
    "images_evaluation.zip": None,
    "strokes_evaluation.zip": None,
}
"""Archive name -> expected SHA-256 (``None``: recorded on first download)."""

OMNIGLOT_SETS: dict[str, tuple[str, ...]] = {
    "background-small": ("images_background_small1.zip", "images_background_small2.zip",
                         "strokes_background_small1.zip", "strokes_background_small2.zip"),
    "background": ("images_background.zip", "strokes_background.zip"),
    "evaluation": ("images_evaluation.zip", "strokes_evaluation.zip"),
}
"""Named groups of archives: the small background subsets, the background and evaluation sets."""

MAX_DOWNLOAD_BYTES = 1 << 32
"""Largest file `fetch` accepts (4 GiB)."""

_CHUNK = 1 << 16
_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass
class DownloadResult:
    """What `download_omniglot` did.

    Args:
        archives: the verified archives.
        unpacked: their unpacked folders.
        dataset: the imported dataset directory, or ``None`` when not imported.
        recorded: archives whose checksum was recorded on first use (not verified).
        summary: the importer's summary.
    """

    archives: list[Path]
    unpacked: list[Path]
    dataset: Path | None
    recorded: list[str] = field(default_factory=list)
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain data (paths as strings)."""
        return {"archives": [str(p) for p in self.archives],
                "unpacked": [str(p) for p in self.unpacked],
                "dataset": None if self.dataset is None else str(self.dataset),
                "recorded": list(self.recorded), "summary": self.summary}

    def table(self) -> str:
        """One line per archive, then the importer's summary."""
        lines = [f"archive: {path}" + (" (checksum recorded on first download)"
                                       if path.name in self.recorded else "")
                 for path in self.archives]
        return "\n".join(lines + ([self.summary] if self.summary else []))


def _check_hex(name: str, value: str) -> str:
    value = value.strip().lower()
    if not _HEX.fullmatch(value):
        raise ConfigError(f"invalid SHA-256 for {name}: {value!r}", column="sha256",
                          fix="give 64 hexadecimal digits, e.g. --sha256 NAME=<hex>")
    return value


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check (a port out of range raises)
    except ValueError as error:  # an unclosed IPv6 bracket, a bad port
        raise ConfigError(f"invalid URL {url!r}: {error}", column="url",
                          fix="give an http:// or https:// address") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"unsupported URL {url!r}", column="url",
                          fix="give an http:// or https:// address")


def _mismatch(dest: Path, url: str, expected: str, actual: str, source: str) -> ChecksumError:
    return ChecksumError(
        f"SHA-256 mismatch: expected {expected} ({source}), got {actual}",
        file=url,
        fix=f"run the command again to download {dest.name} afresh (the bad copy was removed); "
        "if it persists the file changed at the source: check it and pass --sha256 "
        f"{dest.name}=<hex> with a checksum you trust",
    )


def fetch(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    record: bool = False,
    progress: bool = False,
    timeout: float = 60.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> tuple[Path, str]:
    """Download ``url`` to ``dest``, resuming a partial download, and check its SHA-256.

    The bytes go to ``dest.part``; an existing ``.part`` is continued with an HTTP ``Range``
    request (a server that ignores it sends the whole file, which then replaces the part).
    When complete, the SHA-256 is checked against ``sha256`` and the part renamed to ``dest``.
    A ``dest`` that already exists is not downloaded again, only checked. Without ``sha256``
    and with ``record``, the checksum of the first download is written to ``dest.sha256`` and
    checked on every later call (trust on first use).

    Args:
        url: an ``http://`` or ``https://`` address.
        dest: the final file.
        sha256: the expected hex SHA-256, or None.
        record: keep (and use) ``dest.sha256`` when ``sha256`` is None.
        progress: show a progress bar.
        timeout: seconds to wait on the network.
        max_bytes: the largest file accepted.

    Returns:
        ``(dest, hex_sha256)``.

    Raises:
        ChecksumError: the SHA-256 differs (the bad file is removed, so that a new call starts
            afresh).
        DownloadError: the server is unreachable, answers with an error, or sends less than it
            announced (the part is kept: call again to resume).
        ConfigError: the URL is not HTTP(S) or ``sha256`` is not 64 hex digits.

    Example:
        >>> fetch("https://example.org/data.zip", "data.zip")  # doctest: +SKIP
    """
    _check_url(url)
    dest = Path(dest)
    make_directory(dest.parent)
    record_path = dest.with_name(dest.name + ".sha256")
    source = "given"
    if record:
        check_record(record_path)
    if sha256 is not None:
        expected: str | None = _check_hex(dest.name, sha256)
    elif record and record_path.is_file():
        fix = f"delete it (the next download records it again) or pass --sha256 {dest.name}=<hex>"
        try:
            words = record_path.read_text(encoding="utf-8").split()
            expected = _check_hex(dest.name, words[0] if words else "")
        except (OSError, UnicodeDecodeError, ConfigError) as error:
            said = error.message if isinstance(error, ConfigError) else error
            raise DownloadError(f"cannot read the recorded checksum: {said}", file=record_path,
                                fix=fix) from None
        source = f"recorded in {record_path.name} on first download"
    else:
        expected = None
    part = dest.with_name(dest.name + ".part")
    for path in (dest, part):
        if path.exists() and not path.is_file():
            raise DownloadError("is not a file (a directory?), where the download goes",
                                file=path, fix="move it away, then run the command again")
    if dest.is_file():
        actual = sha256_file(dest)
        if expected is not None and actual != expected:
            dest.unlink()
            raise _mismatch(dest, url, expected, actual, source)
        if expected is None and record:
            _record(record_path, dest, actual)
        return dest, actual

    digest = _download(url, part, progress=progress, timeout=timeout, max_bytes=max_bytes)
    actual = digest.hexdigest()
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise _mismatch(dest, url, expected, actual, source)
    os.replace(part, dest)
    if expected is None and record:
        _record(record_path, dest, actual)
    return dest, actual


def _record(record_path: Path, dest: Path, actual: str) -> None:
    """Trust on first use: keep the SHA-256 of a file that had no known checksum, and say so."""
    atomic_write_text(record_path, f"{actual}  {dest.name}\n")
    warnings.warn(
        f"{dest.name}: no known checksum; recorded its SHA-256 {actual} in {record_path.name} "
        "(trust on first use: later runs check against it; compare it with a source you "
        "trust)",
        stacklevel=3,
    )


def _download(url: str, part: Path, *, progress: bool, timeout: float,
              max_bytes: int) -> Any:
    """Fill ``part`` from ``url``, resuming; returns the SHA-256 digest of the whole file."""
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "metamodal-download"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - scheme checked
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the part is already whole
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            return digest
        raise DownloadError(f"the server answered {err.code} {err.reason}", file=url,
                            fix="check the address (--url) and that the file exists") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach the server: {reason}", file=url,
                            fix="check the network connection and the address (--url), then "
                            "run the command again") from None
    with response:
        status = getattr(response, "status", 200)
        start = 0
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            start = int(match.group(1)) if match else -1
            if start != have:
                said = (f"resumed at byte {start}" if start >= 0 else
                        "answered 206 (part of the file) without saying which part")
                raise DownloadError(
                    f"the server {said}, not from byte {have}", file=url,
                    fix=(f"delete {part} and run the command again" if have else
                         "the server does not serve the file as asked; try another --url"))
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(f"file of {total} bytes exceeds the limit of {max_bytes}",
                                file=url, fix="check the address (--url)")
        if start:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
        received = start
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, delay=1.0,
                       desc=part.name[: -len(".part")], leave=False)
        try:
            with open(part, "ab" if start else "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, ValueError) as err:
                        raise DownloadError(
                            f"connection lost after {received} bytes: {err}", file=url,
                            fix="run the same command again to resume the download") from None
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > max_bytes:
                        raise DownloadError(f"more than {max_bytes} bytes received", file=url,
                                            fix="check the address (--url)")
                    out.write(chunk)
                    digest.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and received < total:
            raise DownloadError(f"connection closed after {received} of {total} bytes",
                                file=url, fix="run the same command again to resume the "
                                "download")
    return digest


def omniglot_archives(sets: Sequence[str]) -> list[str]:
    """Archive names of named sets (`OMNIGLOT_SETS`) and/or archive names, in order.

    Example:
        >>> omniglot_archives(["background", "images_evaluation"])
        ['images_background.zip', 'strokes_background.zip', 'images_evaluation.zip']
    """
    names: list[str] = []
    for item in sets:
        if item in OMNIGLOT_SETS:
            names += OMNIGLOT_SETS[item]
            continue
        name = item if item.endswith(".zip") else f"{item}.zip"
        if name not in OMNIGLOT_SHA256:
            raise ConfigError(f"unknown Omniglot set or archive {item!r}", column="sets",
                              fix=f"use {', '.join(OMNIGLOT_SETS)} or archive names: "
                              f"{', '.join(n[:-4] for n in OMNIGLOT_SHA256)}")
        names.append(name)
    return list(dict.fromkeys(names))


def _parse_checksums(sha256: Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for key, value in (sha256 or {}).items():
        name = key if key.endswith(".zip") else f"{key}.zip"
        out[name] = _check_hex(name, value)
    return out


def download_omniglot(
    directory: str | Path,
    *,
    sets: Sequence[str] = ("background-small",),
    base_url: str = OMNIGLOT_URL,
    sha256: Mapping[str, str] | None = None,
    import_data: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    timeout: float = 60.0,
    **import_options: Any,
) -> DownloadResult:
    """Download, verify, unpack and import the official Omniglot archives into ``directory``.

    Archives already downloaded (and verified) or unpacked are not fetched or unpacked again;
    a partial download resumes. See the module docstring for the layout and for which
    checksums are known.

    Args:
        directory: where everything goes (``archives/``, ``unpacked/``, ``dataset/``).
        sets: named sets (``background-small``, ``background``, ``evaluation``) or archive
            names (``images_background``, ...).
        base_url: the folder URL the archive names are appended to (default: the authors').
        sha256: archive name -> expected hex SHA-256, overriding the known ones.
        import_data: import the unpacked archives into ``directory/dataset``.
        overwrite: re-import over an existing ``directory/dataset``.
        progress: show progress bars.
        timeout: seconds to wait on the network.
        **import_options: passed to `metamodal.datasets.omniglot.import_omniglot`
            (``val_groups``, ``test_groups``, ``image_size``, ...).

    Returns:
        a `DownloadResult`.

    Raises:
        ChecksumError: an archive's SHA-256 differs from the expected one.
        DownloadError: a download failed (call again to resume).
        DatasetError: an archive is unsafe or not Omniglot.
        ConfigError: an unknown set, a bad checksum or URL.

    Example:
        >>> download_omniglot("omniglot", val_groups=["Tagalog"])  # doctest: +SKIP
    """
    from metamodal.runs.directory import check_not_inside_run

    directory = Path(directory)
    check_not_inside_run(directory, "dir", itself=True)  # a run's --overwrite would delete it
    if import_data:  # an option the import refuses, before anything is fetched
        image_options(import_options.get("image_size"), None)
    names = omniglot_archives(sets)
    checksums = {**{n: h for n, h in OMNIGLOT_SHA256.items() if h}, **_parse_checksums(sha256)}
    unknown = sorted(set(_parse_checksums(sha256)) - set(names))
    if unknown:
        raise ConfigError(f"checksum given for an archive not asked for: {', '.join(unknown)}",
                          column="sha256", fix="name archives of the chosen sets")
    _check_url(base_url)
    base = base_url if base_url.endswith("/") else base_url + "/"
    archives, unpacked, recorded, digests = [], [], [], {}
    for name in names:
        expected = checksums.get(name)
        if expected is None and not (directory / "archives" / f"{name}.sha256").is_file():
            recorded.append(name)
        path, digests[name] = fetch(urllib.parse.urljoin(base, name),
                                    directory / "archives" / name, sha256=expected,
                                    record=expected is None, progress=progress,
                                    timeout=timeout)
        archives.append(path)
        unpacked.append(_unpacked(path, directory / "unpacked" / name[: -len(".zip")],
                                  digests[name], again=overwrite and import_data))
    result = DownloadResult(archives, unpacked, None, recorded)
    if not import_data:
        return result
    dataset, record = directory / "dataset", directory / IMPORTED_FILE
    check_record(record)
    if (dataset / "dataset.toml").is_file() and not overwrite:
        made_of = _read_record(record)
        if made_of is not None and made_of != digests:
            raise ConfigError(f"{dataset} was imported from other archives than the ones now "
                              "verified", file=record, column="overwrite",
                              fix="pass --overwrite to import the verified archives again")
        result.dataset = dataset
        result.summary = f"{dataset} already imported (pass --overwrite to import again)"
        return result
    from metamodal.datasets.omniglot import import_omniglot

    imported = import_omniglot(unpacked, dataset, overwrite=overwrite, progress=progress,
                               **import_options)
    atomic_write_json(record, digests)
    result.dataset = dataset
    result.summary = imported.summary()
    return result


IMPORTED_FILE = "imported.json"
"""Beside ``dataset/``: the archives (name -> SHA-256) it was imported from."""


def _unpacked(archive: Path, folder: Path, digest: str, *, again: bool = False) -> Path:
    """``folder`` holding the content of ``archive`` (SHA-256 ``digest``): unpacked unless
    its record (``folder`` + ``.sha256``) names that digest (or ``again``: an import with
    ``overwrite`` trusts no folder it did not just unpack); an old folder is replaced only
    once the new one is complete."""
    from metamodal.datasets._archives import extract_zip

    record = folder.with_name(f"{folder.name}.sha256")
    check_record(record)
    if (not again and folder.is_dir() and record.is_file()
            and _read_text(record).strip() == digest):
        return folder
    if not folder.exists():
        extract_zip(archive, folder)
    else:  # another archive's content, or an older layout without a record
        fresh = folder.with_name(f".{folder.name}.unpacking")
        if fresh.exists():
            shutil.rmtree(fresh)  # a former attempt's leftover
        replace_directory(extract_zip(archive, fresh), folder)
    atomic_write_text(record, digest + "\n")
    return folder


def _read_record(path: Path) -> dict[str, str] | None:
    """`IMPORTED_FILE`'s archives, or None where there is none (a dataset imported before
    the record was kept) or it cannot be read."""
    try:
        record = loads_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _read_text(path: Path) -> str:
    """A record's text ("" when it cannot be read: the record is then written again)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return ""


def check_record(path: Path) -> None:
    """Refuse a record download keeps (``NAME.zip.sha256``, ``unpacked/NAME.sha256``,
    ``imported.json``) that is a link, a FIFO or a folder: reading a FIFO blocks for ever,
    writing through a link writes elsewhere.

    Raises:
        DownloadError: naming the record, with the fix to remove it.
    """
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise DownloadError("is not a regular file (a link, a FIFO or a folder), where "
                            "download keeps a record", file=path,
                            fix="remove it (download writes it again), then run the command "
                            "again")

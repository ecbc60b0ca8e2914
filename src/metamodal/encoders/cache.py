"""On-disk cache of frozen-encoder features, shared by every run and dataset of a user.

A frozen pretrained encoder (`metamodal.encoders.pretrained`) is expensive on a CPU, so each
input is encoded once and its feature vector is kept here. An entry is found by

* its **namespace**: a hash of the encoder's name, its weights version and its preprocessing
  options (`FeatureCache.namespace`); every entry of a namespace has the same feature size;
* its **content key**: the SHA-256 of the raw input (the bytes of an image or audio file, the
  UTF-8 of a text), so a renamed or copied file is found again and an edited one is not.

Changing the encoder, its weights or an option changes the namespace (every entry of that
encoder misses, no other); changing a file changes only that file's key.

Layout: ``ROOT/<namespace>/<shard>.safetensors``. A shard holds one float32 tensor
``features`` ``[n, F]`` and, in its metadata, the ``n`` content keys (JSON), the SHA-256 of the
tensor's bytes, and the encoder name, version and options. Shards are immutable: a writer fills
a temporary file in the same directory and renames it into place (``os.replace``), so a reader
sees a whole shard or none, and two processes filling one cache at once never lose or tear an
entry (when both compute the same input, both shards hold it, and either copy is used). The
index is the shard files themselves: each process reads the headers of the shards it has not
seen yet, so there is no index file to corrupt. A shard that cannot be read, whose bytes do
not match their hash (a truncated or damaged file), whose features are not float32 ``[n, F]``
with the namespace's ``F``, or that holds a NaN or infinite feature, is deleted and its entries
are computed again: nothing from it is trusted. Only regular files are shards: a folder, FIFO,
device or symbolic link named like one is never opened (which could fail, block, or leave the
cache) and never deleted. Shards are never unpickled (safetensors only).

Size: when the cache grows past its limit, whole shards are deleted, least recently used first
(a shard's modification time is set on every read). Location and limit come from the
environment: ``METAMODAL_CACHE`` (the directory; default
``$XDG_CACHE_HOME/metamodal/features``, i.e. ``~/.cache/metamodal/features``) and
``METAMODAL_CACHE_LIMIT`` (bytes, or a size such as ``500MB`` / ``2GiB``; default 2 GiB).
``metamodal cache info`` and ``metamodal cache clear`` show and empty it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import stat
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from metamodal.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_ENV = "METAMODAL_CACHE"
"""Environment variable naming the cache directory."""
LIMIT_ENV = "METAMODAL_CACHE_LIMIT"
"""Environment variable holding the size limit (bytes, or e.g. ``500MB``)."""
DEFAULT_LIMIT = 2 * 1024**3
"""Default size limit: 2 GiB."""
SHARD_ENTRIES = 4096
"""Most entries written into one shard."""

_FORMAT = "1"
_SUFFIX = ".safetensors"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 3600.0
_NAMESPACE_NAME = re.compile(r"[0-9a-f]{24}")
_SHARD_NAME = re.compile(r"[0-9]{20}-[0-9]+-[0-9a-f]{8}\.safetensors")
"""The names the cache gives its folders and shards: nothing else in its directory is read
or deleted (a cache directory pointed at a folder of runs leaves their weights alone)."""
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
MAX_SIZE = 10**18
"""The largest cache size limit (1 EB): far beyond any disk, and exact as a float."""


def parse_size(text: str | int) -> int:
    """Bytes of a size written as an integer or with a unit (``KB``, ``MiB``, ``GB``, ...).

    Fractions of a byte are dropped; a size above 0 but below one byte is refused, since it
    would be 0, which means "no limit".

    Raises:
        ConfigError: the text is not a size, is negative, or is between 0 and 1 byte.

    Example:
        >>> parse_size("500MB"), parse_size("2GiB"), parse_size(1024)
        (500000000, 2147483648, 1024)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(f"not a size: {text!r}", column=LIMIT_ENV,
                              fix="give bytes, or a number with KB, MB, GB, TB, KiB, MiB, GiB "
                              "or TiB")
        amount = float(match.group(1)) * _UNITS[unit]
        if amount > MAX_SIZE:  # inf too (hundreds of digits)
            raise ConfigError(f"a size must be at most 1 EB, got {text[:40]!r}",
                              column=LIMIT_ENV, fix="give a size below 1 EB, e.g. 2GiB")
        value = int(amount)
        if 0 < amount < 1:
            raise ConfigError(f"a size must be 0 (no limit) or at least 1 byte, got {text!r}",
                              column=LIMIT_ENV, fix="give a size of 1 byte or more, e.g. "
                              "2GiB, or 0 for no limit")
    if not 0 <= value <= MAX_SIZE:
        raise ConfigError(f"a size must be from 0 to 1 EB, got {text!r}", column=LIMIT_ENV,
                          fix="give a positive size below 1 EB, e.g. 2GiB")
    return value


def expanded(path: str | Path, key: str) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded; `ConfigError` naming ``key`` where
    there is no such home directory (pathlib's RuntimeError).

    Example:
        >>> expanded("/tmp/cache", "dir")
        PosixPath('/tmp/cache')
    """
    try:
        return Path(path).expanduser()
    except RuntimeError as error:
        raise ConfigError(f"cannot expand {str(path)!r}: {error}", column=key,
                          fix="give the cache directory as an absolute path") from None


def default_cache_dir() -> Path:
    """``$METAMODAL_CACHE``, else ``$XDG_CACHE_HOME/metamodal/features`` (``~/.cache/...``).

    Example:
        >>> default_cache_dir().name  # doctest: +SKIP
        'features'
    """
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return expanded(configured, CACHE_ENV)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "metamodal" / "features"


def content_key(data: bytes) -> str:
    """The content key of one raw input: the hex SHA-256 of its bytes.

    Example:
        >>> content_key(b"a red bird")[:12]
        'b858e86ff86e'
    """
    return hashlib.sha256(data).hexdigest()


@dataclass
class CacheStats:
    """What one `FeatureCache` object did, counted (tests and benchmarks read these).

    Args:
        hits: entries found.
        misses: entries asked for and not found.
        written: entries written.
        shards_written: shards written.
        corrupt: shards found unreadable or damaged (deleted).
        evicted: shards deleted to stay under the size limit.
    """

    hits: int = 0
    misses: int = 0
    written: int = 0
    shards_written: int = 0
    corrupt: int = 0
    evicted: int = 0


@dataclass
class NamespaceInfo:
    """One encoder configuration in the cache: name, weights version, options and size."""

    namespace: str
    encoder: str
    version: str
    options: dict[str, Any]
    entries: int
    shards: int
    bytes: int


@dataclass
class CacheInfo:
    """The cache's location, limit, size and content (``metamodal cache info``)."""

    root: Path
    limit: int
    bytes: int
    shards: int
    entries: int
    namespaces: list[NamespaceInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for JSON."""
        return {"root": str(self.root), "limit": self.limit, "bytes": self.bytes,
                "shards": self.shards, "entries": self.entries,
                "namespaces": [vars(n) for n in self.namespaces]}

    def table(self) -> str:
        """Location, size against the limit, and one line per encoder configuration."""
        limit = human_size(self.limit) if self.limit else "none"
        lines = [f"feature cache: {self.root}",
                 f"size: {human_size(self.bytes)} of {limit}, {self.entries} entries in "
                 f"{self.shards} shards"]
        if self.namespaces:
            lines.append("encoder             entries  shards  size        version / options")
            lines += [f"{n.encoder:<18}  {n.entries:>7}  {n.shards:>6}  "
                      f"{human_size(n.bytes):>10}  {n.version} {n.options}"
                      for n in self.namespaces]
        return "\n".join(lines)


def human_size(size: float) -> str:
    """``size`` bytes in B, KiB, MiB or GiB.

    Example:
        >>> human_size(512), human_size(3 * 1024 ** 2)
        ('512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


class FeatureCache:
    """Feature vectors of frozen encoders on disk, keyed by namespace and content hash.

    Args:
        root: the cache directory (default `default_cache_dir`).
        limit: the size limit in bytes, or a size such as ``"500MB"`` (default
            ``$METAMODAL_CACHE_LIMIT`` or 2 GiB). 0 means no limit.

    Attributes:
        stats: `CacheStats` of this object's reads and writes.

    Example:
        >>> import tempfile
        >>> cache = FeatureCache(tempfile.mkdtemp())
        >>> ns = FeatureCache.namespace("toy", "1.0", {"size": 8})
        >>> keys = [content_key(b"a"), content_key(b"b")]
        >>> cache.put(ns, dict(zip(keys, torch.eye(2))), encoder="toy", version="1.0",
        ...           options={"size": 8})
        >>> found = cache.get(ns, [keys[1], content_key(b"c")])
        >>> list(found) == [keys[1]], found[keys[1]].tolist()
        (True, [0.0, 1.0])
        >>> cache.stats.hits, cache.stats.misses
        (1, 1)
    """

    def __init__(self, root: str | Path | None = None, limit: int | str | None = None) -> None:
        self.root = expanded(root, "dir") if root is not None else default_cache_dir()
        if limit is None:
            limit = os.environ.get(LIMIT_ENV) or DEFAULT_LIMIT
        self.limit = parse_size(limit)
        self.stats = CacheStats()
        self._headers: dict[Path, list[str]] = {}
        self._unreadable: set[Path] = set()  # namespace folders that cannot be listed

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, limit={self.limit})"

    @staticmethod
    def namespace(encoder: str, version: str, options: Mapping[str, Any]) -> str:
        """The namespace of an encoder configuration: hex SHA-256 of its name, weights
        version and options (JSON, sorted keys), 24 characters.

        Example:
            >>> a = FeatureCache.namespace("minilm", "1", {"max_length": 256})
            >>> a == FeatureCache.namespace("minilm", "1", {"max_length": 128})
            False
        """
        text = json.dumps({"encoder": encoder, "version": version, "options": dict(options)},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    # -- reading ----------------------------------------------------------------------------

    def get(self, namespace: str, keys: Sequence[str], *,
            width: int | None = None) -> dict[str, torch.Tensor]:
        """The cached feature vector (float32 ``[F]``) of each key of ``keys`` that is present.

        Shards read are marked as used (for LRU eviction); a damaged shard (see `_read`) is
        deleted with a warning and its keys count as missing.

        Args:
            namespace: from `FeatureCache.namespace`.
            keys: content keys.
            width: the feature size ``F`` the namespace's encoder gives, where known: a shard
                of another size is damaged.
        """
        wanted = set(keys)
        found: dict[str, torch.Tensor] = {}
        for shard, shard_keys in self._index(namespace):
            rows = [(i, key) for i, key in enumerate(shard_keys)
                    if key in wanted and key not in found]
            if not rows:
                continue
            features = self._read(shard, width)
            if features is None:
                continue
            for i, key in rows:
                found[key] = features[i]
            _touch(shard)
        self.stats.hits += len(found)
        self.stats.misses += len(wanted) - len(found)
        return found

    def _index(self, namespace: str) -> list[tuple[Path, list[str]]]:
        """(shard, keys) of every readable shard of ``namespace``, newest first."""
        folder = self.root / namespace
        try:
            entries = [e for e in os.scandir(folder) if _SHARD_NAME.fullmatch(e.name)]
        except FileNotFoundError:
            return []
        except OSError as exc:  # a file, FIFO or device where the folder should be, ...
            if folder not in self._unreadable:
                self._unreadable.add(folder)
                warnings.warn(f"feature cache: cannot read {folder} ({exc}); features are "
                              "computed without it", stacklevel=3)
            return []
        shards = []
        for entry in sorted(entries, key=lambda e: e.name, reverse=True):
            path = Path(entry.path)
            keys = self._headers.get(path)
            if keys is None:
                keys = self._read_keys(path)
                if keys is None:
                    continue
                self._headers[path] = keys
            shards.append((path, keys))
        return shards

    def _read_keys(self, path: Path) -> list[str] | None:
        """The content keys in a shard's header; None where it is not there, or damaged (then
        deleted)."""
        try:
            with _open_shard(path) as handle:
                meta = handle.metadata() or {}
                if meta.get("format") != _FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}")
                keys = json.loads(meta["keys"])
                if not isinstance(keys, list):
                    raise ValueError("keys is not a list")
                return [str(k) for k in keys]
        except FileNotFoundError:  # evicted or cleared meanwhile, or not a regular file
            return None
        except Exception as exc:  # truncated, damaged or foreign: never trusted
            self._discard(path, exc)
            return None

    def _read(self, path: Path, width: int | None = None) -> torch.Tensor | None:
        """The ``features`` tensor of a shard, or None where it is gone or damaged (deleted).

        Damaged: unreadable, its bytes do not match their hash, it is not float32 ``[n, F]``
        with one row per key and ``F == width`` (where given), or a feature is NaN or infinite.
        """
        try:
            with _open_shard(path) as handle:
                meta = handle.metadata() or {}
                features = handle.get_tensor("features")
            digest = _digest(features)
            if digest != meta.get("sha256"):
                raise ValueError("the features do not match their hash")
            _check_features(features, len(self._headers.get(path, ())), width)
            return features
        except FileNotFoundError:
            self._headers.pop(path, None)
            return None
        except Exception as exc:
            self._discard(path, exc)
            return None

    def _discard(self, path: Path, reason: Exception) -> None:
        """Warn about a damaged shard, count it and delete it."""
        warnings.warn(f"feature cache: deleting damaged shard {path} ({reason}); its entries "
                      "are computed again", stacklevel=4)
        self.stats.corrupt += 1
        self._headers.pop(path, None)
        if _is_regular(path):
            with contextlib.suppress(OSError):  # gone meanwhile, or a read-only cache
                path.unlink()

    # -- writing ----------------------------------------------------------------------------

    def put(
        self,
        namespace: str,
        features: Mapping[str, torch.Tensor],
        *,
        encoder: str,
        version: str,
        options: Mapping[str, Any],
    ) -> None:
        """Store feature vectors (``[F]`` each, one size per namespace) under their keys.

        Written as new shards of at most `SHARD_ENTRIES` entries, each atomically; then the
        least recently used shards are evicted while the cache is over its limit. A failed
        write warns and is otherwise ignored (the cache is an optimisation). Vectors holding
        a NaN or an infinity are not stored (logged): a shard with one would be damaged.

        Args:
            namespace: from `FeatureCache.namespace` of (encoder, version, options).
            features: content key -> feature vector.
            encoder, version, options: recorded in each shard for ``metamodal cache info``.
        """
        items = [(key, vector) for key, vector in features.items()
                 if bool(torch.isfinite(vector).all())]
        if len(items) < len(features):
            log.warning("feature cache: %d feature vectors with NaN or infinite values are not "
                        "stored", len(features) - len(items))
        if not items:
            return
        folder = self.root / namespace
        meta = {"format": _FORMAT, "encoder": encoder, "version": version,
                "options": json.dumps(dict(options), sort_keys=True)}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for start in range(0, len(items), SHARD_ENTRIES):
                part = items[start:start + SHARD_ENTRIES]
                tensor = torch.stack([v.detach().to("cpu", torch.float32) for _, v in part])
                tensor = tensor.contiguous()
                name = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
                shard_meta = {**meta, "keys": json.dumps([k for k, _ in part]),
                              "sha256": _digest(tensor)}
                _write_atomic(folder / name, {"features": tensor}, shard_meta)
                self.stats.written += len(part)
                self.stats.shards_written += 1
        except OSError as exc:
            warnings.warn(f"feature cache: cannot write to {folder}: {exc}", stacklevel=2)
            return
        self.evict()

    def evict(self) -> int:
        """Delete least recently used shards until the cache is within its limit.

        Also removes temporary files that killed writers left behind over an hour ago.

        Returns:
            the bytes freed.
        """
        if self.limit <= 0:
            return 0
        shards = self._all_shards()
        total = sum(size for _, size, _ in shards)
        freed = 0
        for path, size, _ in sorted(shards, key=lambda s: s[2]):
            if total - freed <= self.limit:
                break
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            self._headers.pop(path, None)
            freed += size
            self.stats.evicted += 1
        return freed

    def _all_shards(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, last use) of every shard; stale temporary files are deleted."""
        shards = []
        now = time.time()
        for folder in _folders(self.root):
            for entry, status in _cache_files(folder):
                if not _is_temporary(entry.name):
                    shards.append((Path(entry.path), status.st_size, status.st_mtime))
                elif now - status.st_mtime > _STALE_TMP_SECONDS:
                    Path(entry.path).unlink(missing_ok=True)
        return shards

    # -- inspecting and clearing ------------------------------------------------------------

    def info(self) -> CacheInfo:
        """Location, limit, size, and entries per encoder configuration.

        Example:
            >>> import tempfile
            >>> FeatureCache(tempfile.mkdtemp(), limit="1MB").info().to_dict()["limit"]
            1000000
        """
        spaces: list[NamespaceInfo] = []
        for folder in _folders(self.root):
            index = self._index(folder.name)
            if not index:
                continue
            described: dict[str, Any] = {}
            size = 0
            keys: set[str] = set()
            for path, shard_keys in index:
                keys.update(shard_keys)
                try:
                    size += path.stat().st_size
                except FileNotFoundError:
                    continue
                if not described:
                    described = _describe(path)
            spaces.append(NamespaceInfo(folder.name, described.get("encoder", "?"),
                                        described.get("version", "?"),
                                        described.get("options", {}), len(keys), len(index),
                                        size))
        spaces.sort(key=lambda n: (n.encoder, n.version, json.dumps(n.options, sort_keys=True)))
        return CacheInfo(self.root, self.limit, sum(n.bytes for n in spaces),
                         sum(n.shards for n in spaces), sum(n.entries for n in spaces), spaces)

    def clear(self, encoder: str | None = None) -> int:
        """Delete every shard (or only those of ``encoder``); returns the bytes freed.

        Example:
            >>> import tempfile
            >>> FeatureCache(tempfile.mkdtemp()).clear()
            0
        """
        freed = 0
        for folder in _folders(self.root):
            if encoder is not None:
                index = self._index(folder.name)
                if not index or _describe(index[0][0]).get("encoder") != encoder:
                    continue
            for entry, status in _cache_files(folder):
                try:
                    Path(entry.path).unlink()
                except FileNotFoundError:
                    continue
                freed += status.st_size
            self._headers = {p: k for p, k in self._headers.items() if p.parent != folder}
            with contextlib.suppress(OSError):  # another process is writing into it
                folder.rmdir()
        return freed


def _is_temporary(name: str) -> bool:
    """True for the name of a shard being written (`_write_atomic`)."""
    return name.startswith(_TMP_PREFIX) and bool(
        _SHARD_NAME.fullmatch(name.removeprefix(_TMP_PREFIX)))


def _is_regular(path: Path) -> bool:
    """True where ``path`` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_shard(path: Path) -> Any:
    """`safe_open` of the shard file ``path``.

    Raises:
        FileNotFoundError: ``path`` is gone, or is not a regular file (a folder, FIFO, device
            or link named like a shard is not one: opening it could fail, block for ever or
            leave the cache).
    """
    if not _is_regular(path):
        raise FileNotFoundError(f"not a shard file: {path}")
    return safe_open(str(path), framework="pt")


def _cache_files(folder: Path) -> list[tuple[os.DirEntry[str], os.stat_result]]:
    """(entry, its status) of the shards and temporary shards in the namespace ``folder``
    that are regular files (anything else named like one is left alone)."""
    files = []
    for entry in os.scandir(folder):
        if not (_SHARD_NAME.fullmatch(entry.name) or _is_temporary(entry.name)):
            continue
        try:
            status = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(status.st_mode):
            files.append((entry, status))
    return files


def _check_features(features: torch.Tensor, rows: int, width: int | None) -> None:
    """Raise ValueError unless ``features`` is float32 ``[rows, width]`` and finite."""
    shape = tuple(features.shape)
    if features.dtype != torch.float32 or features.dim() != 2 or shape[0] != rows:
        raise ValueError(f"features of type {features.dtype} and shape {shape}, not float32 "
                         f"[{rows} keys, F]")
    if width is not None and shape[1] != width:
        raise ValueError(f"features of size {shape[1]}, the encoder gives {width}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features hold NaN or infinite values")


def _folders(root: Path) -> Iterable[Path]:
    """The namespace folders of the cache directory ``root`` (none where it does not exist);
    `ConfigError` where ``root`` is not a directory."""
    try:
        return [Path(e.path) for e in os.scandir(root)
                if e.is_dir() and _NAMESPACE_NAME.fullmatch(e.name)]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(f"the feature cache's directory (--dir, or {CACHE_ENV}) is not a "
                          "directory", file=root, fix="point it at a directory, or at a path "
                          "that does not exist yet") from None


def _describe(path: Path) -> dict[str, Any]:
    """Encoder, version and options recorded in a shard's header ({} where unreadable)."""
    try:
        with _open_shard(path) as handle:
            meta = handle.metadata() or {}
        return {"encoder": meta.get("encoder", "?"), "version": meta.get("version", "?"),
                "options": json.loads(meta.get("options", "{}"))}
    except Exception:
        return {}


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write a shard through a temporary file in the same directory and ``os.replace``."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

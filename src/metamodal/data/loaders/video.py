"""Video loader: MP4 / WebM / AVI / MKV / MOV ... files -> float ``[B, T, C, H, W]`` in ``[0, 1]``.

Each file is decoded with PyAV (FFmpeg). ``frames`` frames are sampled uniformly over the
video: the centre frame of each of ``frames`` equal segments (Wang et al. 2016, "Temporal
Segment Networks: Towards Good Practices for Deep Action Recognition"), a video shorter than
``frames`` repeats frames. Each sampled frame is converted to RGB (``channels = 3``) or gray
(``channels = 1``) and resized to ``size`` by FFmpeg's scaler (bicubic).

Only the container formats of `CONTAINER_FORMATS` are read, and only local files: a playlist
or concat list that would open other files is refused. Every size is bounded before decoding
and again while decoding (container metadata can lie): the file's bytes (``max_bytes``), the
frame size (``max_side`` on width and height), the duration (``max_seconds``) and the number
of frames (``max_source_frames``). A file that is empty, corrupt, truncated, has no video
stream (audio only) or breaks a bound is a `DatasetError` naming the file, row and column.

Decoding runs two passes over the file: one that counts the video packets without decoding
them, one that decodes and keeps the sampled frames only, so that memory stays at ``frames``
frames whatever the video's length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._media import DecodeFailure, file_not_found, read_media
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.errors import ConfigError

MAX_FRAMES = 256
"""The most frames ``frames`` may sample per video."""

MAX_SIZE = 1024
"""The largest decoded frame side (``size``)."""

DEFAULT_MAX_BYTES = 1 << 30
"""Default ``max_bytes``: video files over 1 GiB are refused before they are opened."""

DEFAULT_MAX_SECONDS = 3600.0
"""Default ``max_seconds``: videos over an hour are refused."""

DEFAULT_MAX_SIDE = 4096
"""Default ``max_side``: frames wider or taller than 4096 pixels are refused."""

DEFAULT_MAX_SOURCE_FRAMES = 200_000
"""Default ``max_source_frames``: videos of more frames are refused (an hour at 55 fps)."""

CONTAINER_FORMATS = "mov,mp4,matroska,webm,avi,mpeg,mpegts,ogg,asf,flv,ivf,m4v"
"""The FFmpeg demuxers a video file may be read with (MP4 / MOV, Matroska / WebM, AVI, MPEG
program and transport streams, Ogg, ASF / WMV, FLV, IVF, raw MPEG-4). Others are refused before
they run: a playlist (HLS ``.m3u8``) or concat list would otherwise open the files or URLs it
names, outside the dataset directory."""

_HARD_LIMITS = {"max_bytes": 1 << 36, "max_seconds": 7 * 86400.0, "max_side": 16384,
                "max_source_frames": 10_000_000}
_FIX = "replace it with a valid video file, or leave the cell empty if there is no video"


def _count(name: str, value: Any, low: int, high: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"video {name} must be an integer from {low} to {high:g}, got "
                          f"{value!r}", fix=f"set {name} to an integer in [{low}, {high:g}]")
    return value


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    dims = [size, size] if isinstance(size, int) and not isinstance(size, bool) else (
        list(size) if isinstance(size, list | tuple) else [])
    if len(dims) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                 and 0 < d <= MAX_SIZE for d in dims):
        raise ConfigError(f"video size must be an int or [height, width] from 1 to {MAX_SIZE}, "
                          f"got {size!r}", fix="set size = 32 or size = [32, 48]")
    return dims[0], dims[1]


def open_video(path: str | Path) -> Any:
    """Open a video file with PyAV, reading only `CONTAINER_FORMATS` and local files.

    Raises:
        av.error.FFmpegError: the file is not one of those containers, or is unreadable.

    Example:
        >>> open_video("clip.mp4")  # doctest: +SKIP
    """
    import av

    return av.open(str(path), metadata_errors="ignore",
                   options={"format_whitelist": CONTAINER_FORMATS, "protocol_whitelist": "file"})


def sample_indices(available: int, frames: int) -> list[int]:
    """The indices of ``frames`` frames sampled uniformly from ``available``: the centre of
    each of ``frames`` equal segments (repeats when ``available < frames``).

    Example:
        >>> sample_indices(16, 4), sample_indices(2, 4)
        ([2, 6, 10, 14], [0, 0, 1, 1])
    """
    return [min(available - 1, int((i + 0.5) * available / frames)) for i in range(frames)]


@loaders.register("video")
class VideoLoader(ModalityLoader):
    """Decodes video files into float ``[B, T, C, H, W]`` tensors in ``[0, 1]``.

    Args:
        frames: ``T``, frames sampled uniformly per video (default 8, at most 256).
        size: frame size, an int (square) or ``[height, width]`` (default 32).
        channels: 3 for RGB (default) or 1 for gray.
        max_bytes: the largest file accepted, in bytes (checked before opening it).
        max_seconds: the longest video accepted (from the metadata, and while decoding).
        max_side: the widest / tallest frame accepted, in pixels.
        max_source_frames: the most frames a video may have.

    Nothing is fitted (``fit`` only marks the loader fitted). ``values`` rows of absent
    samples are zeros.

    Example:
        >>> import tempfile, pathlib, av, numpy as np
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with av.open(str(root / "a.mp4"), "w") as out:
        ...     stream = out.add_stream("mpeg4", rate=8)
        ...     stream.width = stream.height = 16
        ...     for i in range(8):
        ...         image = np.full((16, 16, 3), 30 * i, np.uint8)
        ...         for packet in stream.encode(av.VideoFrame.from_ndarray(image, "rgb24")):
        ...             out.mux(packet)
        ...     for packet in stream.encode():
        ...         out.mux(packet)
        >>> ctx = DecodeContext(root, "samples.csv", [1, 2], "clip")
        >>> batch = VideoLoader(frames=4, size=8).decode(["a.mp4", None], ctx)
        >>> batch.values.shape, batch.present.tolist()
        (torch.Size([2, 4, 3, 8, 8]), [True, False])
    """

    kind: ClassVar[str] = "video"

    def __init__(
        self,
        *,
        frames: int = 8,
        size: int | Sequence[int] = 32,
        channels: int = 3,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        max_side: int = DEFAULT_MAX_SIDE,
        max_source_frames: int = DEFAULT_MAX_SOURCE_FRAMES,
    ) -> None:
        self.frames = _count("frames", frames, 1, MAX_FRAMES)
        self.height, self.width = _parse_size(size)
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ConfigError(f"video channels must be 1 or 3, got {channels!r}",
                              fix="set channels = 3 (RGB) or channels = 1 (gray)")
        self.channels = int(channels)
        self.max_bytes = _count("max_bytes", max_bytes, 1, _HARD_LIMITS["max_bytes"])
        if (isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float)
                or not 0 < max_seconds <= _HARD_LIMITS["max_seconds"]):
            raise ConfigError(f"video max_seconds must be a number in (0, "
                              f"{_HARD_LIMITS['max_seconds']:g}], got {max_seconds!r}",
                              fix="set max_seconds = 3600 (an hour)")
        self.max_seconds = float(max_seconds)
        self.max_side = _count("max_side", max_side, 1, _HARD_LIMITS["max_side"])
        self.max_source_frames = _count("max_source_frames", max_source_frames, 1,
                                        _HARD_LIMITS["max_source_frames"])
        self.fitted_ = False

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Nothing to learn: frames stay in ``[0, 1]``."""
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Decode videos into ``values`` float ``[B, T, C, H, W]`` and ``present`` bool ``[B]``.

        A missing, corrupt or oversized file is reported as a `DatasetError` naming the
        file, row and column (raised, or collected in ``context.problems`` and then treated
        as missing).
        """
        shape = (len(cells), self.frames, self.height, self.width, self.channels)
        buffer = np.zeros(shape, np.uint8)
        present = np.zeros(len(cells), dtype=bool)
        for i, _, clip in read_media(cells, context, self._read_file):
            buffer[i] = clip
            present[i] = True
        values = torch.from_numpy(buffer).permute(0, 1, 4, 2, 3).to(torch.float32)
        values.mul_(1.0 / 255.0)
        return ModalityBatch(values.contiguous(), torch.from_numpy(present), None)

    def input_info(self) -> dict[str, Any]:
        """``{"frames": T, "channels": C, "height": H, "width": W}``."""
        return {"frames": self.frames, "channels": self.channels, "height": self.height,
                "width": self.width}

    def state_dict(self) -> dict[str, Any]:
        """Options as JSON-able data (there is no fitted state)."""
        return {"kind": self.kind, "fitted": self.fitted_, "options": {
            "frames": self.frames, "size": [self.height, self.width], "channels": self.channels,
            "max_bytes": self.max_bytes, "max_seconds": self.max_seconds,
            "max_side": self.max_side, "max_source_frames": self.max_source_frames}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VideoLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        loader.fitted_ = bool(state.get("fitted", True))
        return loader

    # -- decoding -------------------------------------------------------------------------

    def _read_file(self, path: Path, root: Path | str) -> np.ndarray:
        """One video's sampled frames as uint8 ``[T, H, W, C]``."""
        import av

        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise file_not_found("video", root) from exc
        except OSError as exc:
            raise DecodeFailure(f"cannot read video file: {exc}", _FIX) from exc
        if size == 0:
            raise DecodeFailure("video file is empty", _FIX)
        if size > self.max_bytes:
            raise DecodeFailure(f"video file is {size:,} bytes, more than max_bytes = "
                                f"{self.max_bytes:,}", "shorten or re-encode the video, or "
                                "raise max_bytes in the modality's options")
        try:
            available = self._count_frames(path)
            return self._sample(path, available)
        except DecodeFailure:
            raise
        except IsADirectoryError as exc:
            raise DecodeFailure("video path is a directory, not a file",
                                "point the cell at a video file") from exc
        except (av.error.FFmpegError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            raise DecodeFailure(f"cannot decode video: {str(exc)[:300]} (formats read: "
                                f"{CONTAINER_FORMATS.replace(',', ', ')})", _FIX) from exc

    def _open(self, path: Path) -> Any:
        """The container and its first video stream, checked against the bounds from the
        metadata (before any frame is decoded)."""
        import av

        container = open_video(path)
        try:
            if not container.streams.video and container.streams.audio:
                raise DecodeFailure("video file holds no video stream (audio only)",
                                    "point the cell at a file with a video track")
            if not container.streams.video:
                raise DecodeFailure("video file holds no stream: it is corrupt or truncated",
                                    _FIX)
            stream = container.streams.video[0]
            self._check_side(stream.codec_context.width, stream.codec_context.height)
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            if seconds is not None:
                self._check_seconds(seconds)
            if stream.frames and stream.frames > self.max_source_frames:
                self._too_many(stream.frames)
        except BaseException:
            container.close()
            raise
        return container, stream

    def _count_frames(self, path: Path) -> int:
        """The video packets of the file (one per frame), counted without decoding."""
        container, stream = self._open(path)
        with container:
            count = 0
            for packet in container.demux(stream):
                if packet.size:
                    count += 1
                    if count > self.max_source_frames:
                        self._too_many(count)
                    if packet.pts is not None and packet.time_base is not None:
                        self._check_seconds(float(packet.pts * packet.time_base))
        if count == 0:
            raise DecodeFailure("video file holds no frame", _FIX)
        return count

    def _sample(self, path: Path, available: int) -> np.ndarray:
        """Decode the file and keep the frames at `sample_indices`."""
        wanted = sample_indices(available, self.frames)
        needed = set(wanted)
        kept: dict[int, np.ndarray] = {}
        form = "gray" if self.channels == 1 else "rgb24"
        container, stream = self._open(path)
        with container:
            index = -1
            for frame in container.decode(stream):
                index += 1
                if index >= self.max_source_frames:
                    self._too_many(index + 1)
                self._check_side(frame.width, frame.height)
                if frame.time is not None:
                    self._check_seconds(float(frame.time))
                if index in needed:
                    image = frame.to_ndarray(width=self.width, height=self.height, format=form,
                                             interpolation="BICUBIC")
                    kept[index] = image.reshape(self.height, self.width, self.channels)
                if index >= wanted[-1]:
                    break
        if not kept:
            raise DecodeFailure("no frame of the video file could be decoded (corrupt or "
                                "truncated)", _FIX)
        last = kept[max(kept)]
        return np.stack([kept.get(i, last) for i in wanted])

    def _check_side(self, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise DecodeFailure(f"video frames are {width} x {height} pixels", _FIX)
        if max(width, height) > self.max_side:
            raise DecodeFailure(f"video frames are {width} x {height} pixels, more than "
                                f"max_side = {self.max_side}", "re-encode the video smaller "
                                "(the loader resizes frames anyway), or raise max_side")

    def _check_seconds(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds > self.max_seconds:
            raise DecodeFailure(f"video lasts {seconds:.1f} s, more than max_seconds = "
                                f"{self.max_seconds:g}", "cut the video shorter, or raise "
                                "max_seconds in the modality's options")

    def _too_many(self, count: int) -> None:
        raise DecodeFailure(f"video has more than max_source_frames = "
                            f"{self.max_source_frames:,} frames (at least {count:,})",
                            "cut the video shorter, or raise max_source_frames")

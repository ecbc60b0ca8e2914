"""Image loader: PNG / JPEG / ... files -> float ``[B, C, H, W]``, normalised per channel.

Each file is decoded with Pillow, turned upright by its EXIF orientation, converted to RGB
(``channels = 3``) or to grayscale (``channels = 1``, ITU-R 601-2 luma), and resized to
``size`` with a Lanczos filter (antialiased when shrinking; the aspect ratio is not kept).
Transparent pixels are composited over white; 16-bit grayscale (modes ``I;16`` and ``I``) is
scaled from 0..65535. Pixels are scaled to ``[0, 1]`` and, with ``normalize`` (the default),
standardised with the per-channel mean and standard deviation (population, over every pixel)
of the meta-train images.

Calling `ImageLoader.decode` before `ImageLoader.fit` is allowed and uses identity
normalisation (mean 0, std 1), so that ``metamodal inspect`` can check files without fitting;
`ImageLoader.is_fitted` tells the two apart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from metamodal.data.batch import ModalityBatch
from metamodal.data.loaders._media import (
    DecodeFailure,
    file_not_found,
    in_chunks,
    read_media,
)
from metamodal.data.loaders._numeric import (
    StandardisingState,
    check_normalize,
    mean_and_std,
    warn_identity,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.errors import ConfigError

RESAMPLE_FILTER = Image.Resampling.LANCZOS
"""Pillow filter used to resize (antialiased Lanczos-3)."""

MAX_SIDE = 4096
"""The largest ``size`` (height or width) a decoded image may have."""

MAX_PIXELS = 64 * 1024 * 1024
"""The most pixels an image file may have (after JPEG draft reduction) to be decoded: 64
megapixels; a larger file is refused before its pixels are read (a decompression bomb would
otherwise take gigabytes)."""

_CHUNK = 512  # images decoded at once while fitting (bounds memory for large datasets)
_SIXTEEN_BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_GRAY_MODES = ("1", "L", "LA", "F", *_SIXTEEN_BIT)


def drafted_size(image: Image.Image, mode: str | None, side: int) -> tuple[int, int]:
    """The ``(width, height)`` Pillow decodes ``image`` into once draft mode has reduced it
    toward ``side`` x ``side`` in ``mode`` (a JPEG only, up to 8 times a side)."""
    image.draft(mode, (side, side))
    return image.size


def decoded_pixels(data: bytes, mode: str | None = None, side: int = 1) -> int:
    """The pixels the image file ``data`` decodes to, read from its header (`drafted_size`);
    0 when the header cannot be read (decoding then refuses the file with its reason). The
    defaults count a JPEG at its smallest draft.

    Example:
        >>> buffer = io.BytesIO()
        >>> Image.new("L", (40, 30)).save(buffer, "PNG")
        >>> decoded_pixels(buffer.getvalue())
        1200
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = drafted_size(image, mode, side)
    except Exception:  # noqa: BLE001 - Pillow raises many types for corrupt files
        return 0
    return width * height


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, bool):
        raise ConfigError(f"image size must be an int or [height, width], got {size!r}",
                          fix="set size = 32 or size = [32, 48]")
    dims = [size, size] if isinstance(size, int) else list(size) if isinstance(
        size, list | tuple) else []
    if len(dims) != 2 or not all(isinstance(d, int) and not isinstance(d, bool)
                                 and 0 < d <= MAX_SIDE for d in dims):
        raise ConfigError(f"image size must be an int or [height, width] from 1 to {MAX_SIDE}, "
                          f"got {size!r}", fix="set size = 32 or size = [32, 48]")
    return dims[0], dims[1]


@loaders.register("image")
class ImageLoader(StandardisingState, ModalityLoader):
    """Decodes image files into float ``[B, C, H, W]`` tensors.

    Args:
        size: output size, an int (square) or ``[height, width]``. Default 32.
        channels: 3 for RGB (default) or 1 for grayscale.
        normalize: standardise each channel with the meta-train mean / std (default True);
            when False, pixels stay in ``[0, 1]``.

    Fitted state: ``mean_`` and ``std_`` (one float per channel, or None without
    ``normalize``). ``values`` rows of absent samples are zeros.

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8), (255, 0, 0)).save(root / "a.png")
        >>> ctx = DecodeContext(root, "samples.csv", [1, 2], "image")
        >>> loader = ImageLoader(size=4, normalize=False)
        >>> batch = loader.decode(["a.png", None], ctx)
        >>> batch.values.shape, batch.present.tolist(), batch.values[0, :, 0, 0].tolist()
        (torch.Size([2, 3, 4, 4]), [True, False], [1.0, 0.0, 0.0])
    """

    kind: ClassVar[str] = "image"

    def __init__(
        self, *, size: int | Sequence[int] = 32, channels: int = 3, normalize: bool = True
    ) -> None:
        self.height, self.width = _parse_size(size)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels not in (1, 3):
            raise ConfigError(f"image channels must be 1 or 3, got {channels!r}",
                              fix="set channels = 3 (RGB) or channels = 1 (grayscale)")
        self.channels = channels
        self.normalize = check_normalize("image", normalize)
        self._clear_statistics()

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn the per-channel mean / std from meta-train images (``None`` cells skipped).

        Args:
            cells: relative image paths or ``None``, ``N`` of them.
            context: where the cells come from; unreadable files are reported through it.
        """
        if self.normalize:
            total = torch.zeros(self.channels, dtype=torch.float64)
            squares = torch.zeros(self.channels, dtype=torch.float64)
            count = 0
            for part, sub in in_chunks(cells, context, _CHUNK):
                pixels, present = self._read_batch(part, sub)
                values = pixels.to(torch.float64)
                total += values.sum(dim=(0, 2, 3))
                squares += values.square().sum(dim=(0, 2, 3))
                count += int(present.sum()) * self.height * self.width
            if count == 0:
                warn_identity("images", "image", context.column)
                self.mean_, self.std_ = [0.0] * self.channels, [1.0] * self.channels
            else:
                self.mean_, self.std_ = mean_and_std(total, squares, count)
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Decode images into ``values`` float ``[B, C, H, W]`` and ``present`` bool ``[B]``.

        A missing file or one Pillow cannot decode is reported as a `DatasetError` naming the
        file, row and column (raised, or collected in ``context.problems`` and then treated as
        missing).
        """
        pixels, present = self._read_batch(cells, context)
        if self.normalize and self.mean_ is not None and self.std_ is not None:
            mean = torch.tensor(self.mean_, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.std_, dtype=torch.float32).view(1, -1, 1, 1)
            pixels = (pixels - mean) / std
            pixels = pixels * present.view(-1, 1, 1, 1)
        return ModalityBatch(pixels, present, None)

    def input_info(self) -> dict[str, Any]:
        """``{"channels": C, "height": H, "width": W}``."""
        return {"channels": self.channels, "height": self.height, "width": self.width}

    def state_dict(self) -> dict[str, Any]:
        """Options and fitted statistics as JSON-able data."""
        return {
            "kind": self.kind,
            "options": {"size": [self.height, self.width], "channels": self.channels,
                        "normalize": self.normalize},
            **self._statistics_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ImageLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        loader._restore_statistics(state, loader.channels)
        return loader

    # -- decoding -------------------------------------------------------------------------

    def _read_batch(self, cells: Sequence[Cell], context: DecodeContext) -> tuple[Tensor, Tensor]:
        """Pixels in ``[0, 1]`` as float ``[B, C, H, W]`` (zeros where absent) and ``present``."""
        buffer = np.zeros((len(cells), self.height, self.width, self.channels), np.float32)
        present = np.zeros(len(cells), dtype=bool)
        for i, _, image in read_media(cells, context, self._read_file):
            buffer[i] = image
            present[i] = True
        pixels = torch.from_numpy(buffer).permute(0, 3, 1, 2).contiguous()
        pixels.mul_(1.0 / 255.0)
        return pixels, torch.from_numpy(present)

    def draft_target(self) -> tuple[str, int]:
        """The mode and side a JPEG is drafted toward before decoding (`drafted_size`)."""
        return "L" if self.channels == 1 else "RGB", max(self.height, self.width)

    def _read_file(self, path: Path, root: Path | str) -> np.ndarray:
        """One image as ``[H, W, C]`` (or ``[H, W, 1]`` broadcastable) float values 0..255."""
        fix = "replace it with a valid image file, or leave the cell empty if there is no image"
        try:
            with Image.open(path) as image:
                width, height = drafted_size(image, *self.draft_target())
                if width * height > MAX_PIXELS:
                    raise DecodeFailure(
                        f"image is {width} x {height} pixels, more than the {MAX_PIXELS:,} "
                        "decoded at most", "shrink the image file (the loader resizes to "
                        f"{self.height} x {self.width} anyway)")
                ImageOps.exif_transpose(image, in_place=True)
                return self._pixels(image)
        except DecodeFailure:
            raise
        except FileNotFoundError as exc:
            raise file_not_found("image", root) from exc
        except IsADirectoryError as exc:
            raise DecodeFailure("image path is a directory, not a file",
                                "point the cell at an image file") from exc
        except Exception as exc:  # Pillow raises many types for corrupt files
            raise DecodeFailure(f"cannot decode image: {exc}", fix) from exc

    def _pixels(self, image: Image.Image) -> np.ndarray:
        """Convert, resize and return ``image`` as float32 ``[H, W, C or 1]`` in 0..255."""
        target = (self.width, self.height)
        if image.mode == "F":  # float images (e.g. 32-bit TIFF) may hold NaN / inf
            raw = np.asarray(image)
            if not np.isfinite(raw).all():
                y, x = (int(v) for v in np.argwhere(~np.isfinite(raw))[0])
                raise DecodeFailure(f"image holds NaN or infinite pixel values (first at x {x}, "
                                    f"y {y})", "re-export the image with finite pixel values")
        has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            "transparency" in image.info
        )
        gray = self.channels == 1 or image.mode in _GRAY_MODES
        if image.mode in _SIXTEEN_BIT:
            image = Image.fromarray(np.asarray(image, dtype=np.float32) * (255.0 / 65535.0))
        elif has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba).convert("L" if gray else "RGB")
        elif image.mode != "F":
            image = image.convert("L" if gray else "RGB")
        if image.size != target:
            image = image.resize(target, RESAMPLE_FILTER, reducing_gap=3.0)
        pixels = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            pixels = np.clip(pixels, 0.0, 255.0)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return pixels


"""Small Omniglot-layout archives and Lake's ``all_runs`` layout, built from their published
format (see ``shared/data/omniglot/README.md``), for the importer and download tests."""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHARED_OMNIGLOT = next(
    (p for p in (Path(__file__).resolve().parents[2] / "shared/data/omniglot",
                 Path(__file__).resolve().parents[1] / "../shared/data/omniglot",
                 Path(__file__).resolve().parents[1] / "shared/data/omniglot")
     if (p / "images_background_small1.zip").is_file()),
    None,
)
"""The real archives beside the repository, or None where they are absent."""


def drawing_png(seed: int) -> bytes:
    """A 105x105 binary PNG with a few random strokes (as the official images are)."""
    rng = np.random.default_rng(seed)
    image = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(5, 100, 4))
        draw.line((x0, y0, x1, y1), fill=0, width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def stroke_text(seed: int) -> str:
    """A stroke file: START, points, BREAK, points, a final BREAK (as the official files)."""
    rng = np.random.default_rng(seed)
    lines, t = [], 0
    for k in range(int(rng.integers(1, 4))):
        lines.append("START" if k == 0 else "BREAK")
        for _ in range(int(rng.integers(2, 6))):
            x, y = rng.uniform(0, 105), -rng.uniform(0, 105)
            lines.append(f"{x:.6f},{y:.6f},{t}")
            t += int(rng.integers(1, 40))
    lines.append("BREAK")
    return "\n".join(lines) + "\n"


def drawings(alphabets: dict[str, int], drawers: int) -> list[tuple[str, str, str, int]]:
    """(alphabet, characterNN, NNNN_DD stem, seed) of every drawing."""
    out = []
    for alphabet, characters in alphabets.items():
        for c in range(1, characters + 1):
            # the same number for a character wherever it appears, as in the official sets
            image_id = (zlib.crc32(alphabet.encode()) % 99 + 1) * 100 + c
            for d in range(1, drawers + 1):
                out.append((alphabet, f"character{c:02d}", f"{image_id:04d}_{d:02d}",
                            zlib.crc32(f"{alphabet}/{c}/{d}".encode())))
    return out


def write_archives(folder: Path, name: str, alphabets: dict[str, int], drawers: int = 4,
                   noise: bool = True) -> dict[str, Path]:
    """``images_<name>.zip`` and ``strokes_<name>.zip`` in the official layout, the strokes
    archive with ``.DS_Store`` and ``__MACOSX`` entries. Seeds depend on the drawing only, so
    an alphabet in two sets has the same files in both."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in ("images", "strokes"):
        top = f"{kind}_{name}"
        path = folder / f"{top}.zip"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"{top}/", b"")
            if noise and kind == "strokes":
                z.writestr(f"{top}/.DS_Store", b"\x00\x00\x00\x01Bud1")
                z.writestr(f"__MACOSX/{top}/._.DS_Store", b"\x00\x05\x16\x07")
            for alphabet, character, stem, seed in drawings(alphabets, drawers):
                member = f"{top}/{alphabet}/{character}/{stem}"
                if kind == "images":
                    z.writestr(member + ".png", drawing_png(seed))
                else:
                    z.writestr(member + ".txt", stroke_text(seed))
        paths[kind] = path
    return paths


def write_all_runs(folder: Path, runs: int = 2, ways: int = 3) -> Path:
    """Lake's ``all_runs`` layout: ``runNN/training/classNN.png``, ``runNN/test/itemNN.png``
    and ``runNN/class_labels.txt`` lines ``runNN/test/itemNN.png runNN/training/classNN.png``.

    The test items are listed in an order other than their classes' (item k belongs to class
    ``(k + 1) % ways``), and each item's image equals its class's training image, so a reader
    can check which class each item was given.
    """
    root = folder / "all_runs"
    for r in range(1, runs + 1):
        run = f"run{r:02d}"
        (root / run / "training").mkdir(parents=True)
        (root / run / "test").mkdir()
        lines = []
        for c in range(1, ways + 1):
            (root / run / "training" / f"class{c:02d}.png").write_bytes(drawing_png(100 * r + c))
        for k in range(1, ways + 1):
            c = k % ways + 1
            (root / run / "test" / f"item{k:02d}.png").write_bytes(drawing_png(100 * r + c))
            lines.append(f"{run}/test/item{k:02d}.png {run}/training/class{c:02d}.png")
        (root / run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root

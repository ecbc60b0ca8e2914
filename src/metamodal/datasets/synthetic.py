"""The embedded synthetic multimodal dataset: a field guide of invented species.

Each class (``species``) is a distinct tuple of six latent attributes -- shape, colour, habitat,
call pitch, gait and size -- and each of the five modalities reveals only two of them, through
noise and nuisance. No single modality can tell every pair of classes apart (two species can
share everything a modality sees), but all five together can, because the tuples are distinct
and every attribute is seen by at least one modality. Fusion therefore beats any single
modality, and dropping a modality removes information that the others cannot fully replace.
Classes are gathered into families (``family``, 5 species each by default) and ``splits.toml``
splits families, so meta-train, meta-val and meta-test classes are disjoint. A second, coarser
label column, ``genus``, groups the species of a family that share a body shape (``genus-03-
oval``: family 3's oval species), so a genus lies inside one family and the genera of the three
splits are disjoint too; ``dataset.toml`` declares ``labels = ["species", "genus"]`` for
multi-task training (`metamodal.train.multitask`). The genus is derived from the species'
attributes and draws nothing at random: the other columns are the same as without it.

{table}

``make_synthetic`` writes a dataset directory in metamodal's format (``dataset.toml``,
``samples.csv``, ``splits.toml``, media under ``images/``, ``audio/``, ``tracks/``) plus
``classes.csv`` (each species' attributes and a one-line description), ``descriptions.toml``
(species -> that description: the class descriptions of zero-shot prediction,
`metamodal.mapping.read_descriptions`) and a ``README.md`` recording the arguments. Output is a
pure function of the arguments: every sample and modality draws from its own generator seeded
by ``(seed, class, sample, modality)``, so files are byte-identical across runs and worker
counts, a present cell does not depend on ``missing_rate``, and growing ``classes`` or
``per_class`` keeps the earlier classes and their samples' media unchanged.
"""

from __future__ import annotations

import csv
import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import tomli_w
from PIL import Image

from metamodal.datasets._output import staged_directory
from metamodal.datasets._render import (
    ATTRIBUTES,
    MEASUREMENTS,
    render_call,
    render_caption,
    render_image,
    render_measurements,
    render_track,
)
from metamodal.datasets.species import (
    ATTRIBUTE_ORDER,
    MODALITY_ATTRIBUTES,
    MODALITY_KINDS,
    MODALITY_ORDER,
    attribute_names,
    class_attributes,
    shared_attributes,
    species_labels,
    value_positions,
)
from metamodal.errors import ConfigError

__all__ = [
    "ATTRIBUTES",
    "MEASUREMENTS",
    "MODALITY_ATTRIBUTES",
    "MODALITY_KINDS",
    "attribute_names",
    "class_attributes",
    "describe_synthetic",
    "make_synthetic",
    "shared_attributes",
    "species_labels",
]

_FOLDERS = {"image": ("images", ".png"), "sound": ("audio", ".wav"), "track": ("tracks", ".npy")}
_PARALLEL_FROM = 2000  # samples; below this a process pool costs more than it saves

_ROWS: tuple[tuple[str, str, str, str, str], ...] = (
    (
        "image", "image", "`images/*.png` RGB", "shape, colour",
        "random position, rotation and scale; background grey level, tint, gradient and "
        "pixel noise; colour jitter; a distractor blob of a random palette colour",
    ),
    (
        "caption", "text", "inline, 4-15 words", "colour, habitat",
        "8 paraphrase templates, 3 synonyms per value, inserted filler words (some are size "
        "and shape words, which carry no information), an attribute sometimes left out",
    ),
    (
        "sound", "audio", "`audio/*.wav` (8 kHz, 0.5 s by default)", "pitch, habitat",
        "pitch is the call's fundamental (harmonic tone, jittered, vibrato); habitat is the "
        "spectral centre of the background ambience; random pulse count, timing, length; hiss",
    ),
    (
        "track", "sequence", "`tracks/*.npy` float32 `[T, 2]` (T = 64)", "gait, size",
        "gait is the motion pattern (loop, spiral, zigzag, figure8, glide), size its scale; "
        "random rotation, mirror, offset, frequency, uneven speed, jitter and drift",
    ),
    (
        "measurements", "tabular", "4 columns", "shape, size",
        "size sets body length and width, shape their ratio (elongation), weight follows; "
        "log-normal measurement error; `air_temp_c` is pure noise",
    ),
)


def describe_synthetic() -> str:
    """A markdown table of what each modality of the synthetic dataset carries, and its knobs.

    Returns:
        markdown text: one row per modality (kind, storage, attributes revealed, nuisance)
        followed by the difficulty knobs of :func:`make_synthetic`.

    Example:
        >>> print(describe_synthetic().splitlines()[0])
        | modality | kind | stored as | reveals | nuisance |
    """
    lines = [
        "| modality | kind | stored as | reveals | nuisance |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {name} | {kind} | {store} | {attrs} | {nuisance} |"
              for name, kind, store, attrs, nuisance in _ROWS]
    values = ", ".join(f"{k} ({'/'.join(v)})" for k, v in ATTRIBUTES.items())
    lines += [
        "",
        f"Attributes (up to five values each): {values}. Each attribute is seen by one or two "
        "modalities; only all five together reveal every attribute (image + sound + track is the "
        "smallest set that does).",
        "",
        "Difficulty knobs of `make_synthetic`:",
        "",
        "| knob | default | effect |",
        "|---|---|---|",
        "| `noise` | 0.5 | nuisance strength in every modality (0 clean, 1-2 hard) |",
        "| `attribute_values` | 3 | values per attribute (2-5): fewer values means more species "
        "share what one modality sees, so single modalities get weaker; allows at most "
        "`attribute_values ** 6` classes |",
        "| `flip_rate` | 0.02 | chance that a modality of a sample shows a random value of an "
        "attribute instead of its species' value |",
        "| `missing_rate` | 0.1 | chance that each modality cell is empty (never all five) |",
        "| `image_size`, `audio_seconds`, `sample_rate`, `track_length` | 32, 0.5, 8000, 64 | "
        "smaller media are faster and harder |",
        "| `classes`, `per_class`, `classes_per_family` | 100, 20, 5 | dataset size and grouping |",
    ]
    return "\n".join(lines)


__doc__ = (__doc__ or "").replace("{table}", describe_synthetic())


@dataclass(frozen=True)
class _Settings:
    """Everything a worker needs to render samples (picklable)."""

    root: str
    seed: int
    missing_rate: float
    noise: float
    flip_rate: float
    attribute_values: int
    image_size: int
    sample_rate: int
    audio_seconds: float
    track_length: int


def make_synthetic(
    out: str | Path,
    *,
    classes: int = 100,
    per_class: int = 20,
    seed: int = 0,
    missing_rate: float = 0.1,
    noise: float = 0.5,
    flip_rate: float = 0.02,
    attribute_values: int = 3,
    classes_per_family: int = 5,
    image_size: int = 32,
    sample_rate: int = 8000,
    audio_seconds: float = 0.5,
    track_length: int = 64,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic five-modality dataset directory (see the module docstring).

    Args:
        out: directory to create; must not exist, or be empty, or (with ``overwrite``) hold a
            dataset (a ``dataset.toml``), which is replaced.
        classes: number of species (at most ``attribute_values ** 6``: 729 by default).
        per_class: samples per species.
        seed: non-negative seed; the output is a pure function of all arguments but ``workers``.
        missing_rate: chance that each modality cell of a sample is empty (0 <= rate < 1);
            a sample never loses all five.
        noise: nuisance strength in every modality (0 clean, 0.5 default, 1-2 hard).
        flip_rate: chance that one attribute shown by one modality of one sample is replaced by
            a uniformly drawn value.
        attribute_values: values per attribute, 2-5.
        classes_per_family: species per family (the group column; splits are by family);
            ``ceil(classes / classes_per_family)`` families of near-equal size, at least three.
        image_size: side of the square RGB images, pixels (8-512).
        sample_rate: audio sample rate, Hz (2000-48000).
        audio_seconds: audio clip length, seconds (0.1-10).
        track_length: points per trajectory (8-4096).
        workers: processes rendering in parallel; None picks up to 2 for large datasets.
            The output does not depend on it.
        overwrite: replace an existing dataset directory at ``out``.

    Returns:
        the dataset directory.

    Raises:
        ConfigError: an argument is out of range, the attribute space is too small for
            ``classes``, or ``out`` exists and may not be replaced.

    Example:
        >>> import tempfile, tomllib
        >>> root = make_synthetic(tempfile.mkdtemp() + "/toy", classes=15, per_class=2)
        >>> sorted(tomllib.loads((root / "dataset.toml").read_text())["modalities"])
        ['caption', 'image', 'measurements', 'sound', 'track']
    """
    _check_arguments(per_class=per_class, missing_rate=missing_rate, noise=noise,
                     flip_rate=flip_rate, classes_per_family=classes_per_family,
                     image_size=image_size, sample_rate=sample_rate,
                     audio_seconds=audio_seconds, track_length=track_length, workers=workers)
    table = class_attributes(classes, seed=seed, attribute_values=attribute_values)
    families = math.ceil(classes / classes_per_family)
    if families < 3:
        raise ConfigError(
            f"{classes} classes in families of {classes_per_family} make {families} "
            "families, too few for class-disjoint train / val / test splits",
            fix=f"use at least {3 * classes_per_family} classes or a smaller classes_per_family",
        )
    out = Path(out)
    with staged_directory(out, overwrite) as tmp:
        _write_dataset(tmp, table, families, per_class, workers,
                       _Settings(str(tmp), seed, float(missing_rate), float(noise),
                                 float(flip_rate), attribute_values, image_size, sample_rate,
                                 float(audio_seconds), track_length))
        _write_readme(tmp, dict(classes=classes, per_class=per_class, seed=seed,
                                missing_rate=float(missing_rate), noise=float(noise),
                                flip_rate=float(flip_rate), attribute_values=attribute_values,
                                classes_per_family=classes_per_family, image_size=image_size,
                                sample_rate=sample_rate, audio_seconds=float(audio_seconds),
                                track_length=track_length))
    return out


def _write_dataset(root: Path, table: np.ndarray, families: int, per_class: int,
                   workers: int | None, settings: _Settings) -> None:
    """Render every sample into ``root`` and write the tables and the schema."""
    classes = len(table)
    positions = value_positions(settings.attribute_values)[table]  # [classes, 6]
    labels = species_labels(classes)
    groups = [f"family-{f:0{max(2, len(str(families - 1)))}d}" for f in range(families)]
    family_of = [groups[c * families // classes] for c in range(classes)]  # sizes differ by <= 1
    names = attribute_names(settings.attribute_values)
    shape = ATTRIBUTE_ORDER.index("shape")
    genus_of = [f"genus-{family_of[c].removeprefix('family-')}-{names['shape'][table[c, shape]]}"
                for c in range(classes)]

    for folder, _ in _FOLDERS.values():
        (root / folder).mkdir()
    total = classes * per_class
    width = max(5, len(str(total - 1)))
    jobs = [(c, j, f"s{c * per_class + j:0{width}d}", tuple(int(p) for p in positions[c]))
            for c in range(classes) for j in range(per_class)]
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if total >= _PARALLEL_FROM else 1
    chunk = max(1, math.ceil(total / (8 * workers)))
    chunks = [jobs[i:i + chunk] for i in range(0, total, chunk)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_render_chunk, [settings] * len(chunks), chunks))
    else:
        results = [_render_chunk(settings, part) for part in chunks]

    header = ["id", "species", "family", "genus", *MODALITY_ORDER[:4], *MEASUREMENTS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for part, rows in zip(chunks, results, strict=True):
        for (c, _, sample_id, _), cells in zip(part, rows, strict=True):
            writer.writerow([sample_id, labels[c], family_of[c], genus_of[c], *cells])
    (root / "samples.csv").write_text(buffer.getvalue(), encoding="utf-8")

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["species", "family", "genus", *ATTRIBUTE_ORDER, "description"])
    for c in range(classes):
        values = {a: names[a][table[c, i]] for i, a in enumerate(ATTRIBUTE_ORDER)}
        writer.writerow([labels[c], family_of[c], genus_of[c], *values.values(),
                         _description(values)])
    (root / "classes.csv").write_text(buffer.getvalue(), encoding="utf-8")
    descriptions = {labels[c]: _description({a: names[a][table[c, i]] for i, a in
                                             enumerate(ATTRIBUTE_ORDER)})
                    for c in range(classes)}
    (root / "descriptions.toml").write_text(tomli_w.dumps(descriptions), encoding="utf-8")

    # 32 ms Hann windows overlapping by half (16 ms hop): a call's shortest pulse (60 ms at
    # 0.5 s) still spans 4 frames, with half the frames (and audio encoder work) of an 8 ms hop
    n_fft = 2 ** round(math.log2(settings.sample_rate * 0.032))
    schema = {
        "name": "synthetic-field-guide",
        "label": "species",
        "labels": ["species", "genus"],
        "group": "family",
        "samples": "samples.csv",
        "modalities": {
            "image": {"kind": "image", "column": "image", "size": settings.image_size,
                      "channels": 3},
            "caption": {"kind": "text", "column": "caption", "max_length": 32},
            "sound": {"kind": "audio", "column": "sound", "sample_rate": settings.sample_rate,
                      "n_mels": 32, "n_fft": n_fft, "hop_length": n_fft // 2,
                      "max_seconds": settings.audio_seconds},
            "track": {"kind": "sequence", "column": "track",
                      "max_length": settings.track_length},
            "measurements": {"kind": "tabular", "columns": list(MEASUREMENTS)},
        },
    }
    (root / "dataset.toml").write_text(tomli_w.dumps(schema), encoding="utf-8")

    order = np.random.default_rng([settings.seed, 2]).permutation(families)
    n_test = n_val = max(1, round(0.2 * families))
    split = {
        "train": sorted(groups[i] for i in order[: families - n_val - n_test]),
        "val": sorted(groups[i] for i in order[families - n_val - n_test: families - n_test]),
        "test": sorted(groups[i] for i in order[families - n_test:]),
    }
    (root / "splits.toml").write_text(tomli_w.dumps(split), encoding="utf-8")


def _render_chunk(settings: _Settings,
                  jobs: list[tuple[int, int, str, tuple[int, ...]]]) -> list[list[str]]:
    """Render and write the media of ``jobs`` ``(class, sample, id, positions)``.

    Returns:
        one row of cells per job: image, caption, sound, track paths/text and the
        measurements ("" where the modality is missing).
    """
    root = Path(settings.root)
    index = {name: i for i, name in enumerate(ATTRIBUTE_ORDER)}
    k = settings.attribute_values
    choices = value_positions(k)
    rows = []
    for c, j, sample_id, positions in jobs:
        missing = _missing_mask(settings, c, j)
        cells: list[str] = []
        for m, modality in enumerate(MODALITY_ORDER):
            if missing[m]:
                cells += [""] * (len(MEASUREMENTS) if modality == "measurements" else 1)
                continue
            rng = np.random.default_rng([settings.seed, 3, c, j, m])
            flip = rng.random(2) < settings.flip_rate
            drawn = choices[rng.integers(k, size=2)]
            a, b = (int(drawn[i]) if flip[i] else positions[index[name]]
                    for i, name in enumerate(MODALITY_ATTRIBUTES[modality]))
            cells += _render_modality(root, modality, sample_id, a, b, rng, settings)
        rows.append(cells)
    return rows


def _missing_mask(settings: _Settings, c: int, j: int) -> np.ndarray:
    """bool ``[5]``: which modalities sample ``(c, j)`` lacks (never all of them)."""
    rng = np.random.default_rng([settings.seed, 4, c, j])
    missing = rng.random(len(MODALITY_ORDER)) < settings.missing_rate
    keep = rng.integers(len(MODALITY_ORDER))
    if missing.all():
        missing[keep] = False
    return missing


def _render_modality(root: Path, modality: str, sample_id: str, a: int, b: int,
                     rng: np.random.Generator, s: _Settings) -> list[str]:
    """Render one modality of one sample (writing its file if it has one); return its cells."""
    if modality == "caption":
        return [render_caption(a, b, rng, noise=s.noise)]
    if modality == "measurements":
        return [f"{v:.2f}" for v in render_measurements(a, b, rng, noise=s.noise)]
    folder, suffix = _FOLDERS[modality]
    relative = f"{folder}/{sample_id}{suffix}"
    if modality == "image":
        pixels = render_image(a, b, rng, size=s.image_size, noise=s.noise)
        Image.fromarray(pixels).save(root / relative, compress_level=1)
    elif modality == "sound":
        wave = render_call(a, b, rng, sample_rate=s.sample_rate, seconds=s.audio_seconds,
                           noise=s.noise)
        # Encode in memory: writing to a path makes libsndfile fsync every file (~10 ms each).
        buffer = io.BytesIO()
        soundfile.write(buffer, wave, s.sample_rate, subtype="PCM_16", format="WAV")
        (root / relative).write_bytes(buffer.getvalue())
    else:
        np.save(root / relative, render_track(a, b, rng, length=s.track_length, noise=s.noise))
    return [relative]


def _description(values: dict[str, str]) -> str:
    """One sentence naming every attribute of a species (for zero-shot class descriptions)."""
    gait = {"figure8": "figure eight"}.get(values["gait"], values["gait"])
    return (f"a {values['size']} {values['colour']} {values['shape']} shaped creature of the "
            f"{values['habitat']} with a {values['pitch']} call that moves in a {gait}")


def _write_readme(root: Path, arguments: dict[str, object]) -> None:
    """Write the generated directory's README: what it is, the arguments, the modality table."""
    text = "\n".join([
        "# synthetic-field-guide",
        "",
        "Synthetic few-shot multimodal dataset written by `metamodal.datasets.synthetic."
        "make_synthetic`. Each species is a distinct tuple of six attributes; each modality "
        "shows two of them. `classes.csv` lists every species' attributes; `descriptions.toml` "
        "holds one sentence per species naming all six (for zero-shot prediction).",
        "",
        "Arguments (re-running with them gives byte-identical files):",
        "",
        "```toml",
        tomli_w.dumps(arguments).rstrip(),
        "```",
        "",
        describe_synthetic(),
        "",
    ])
    (root / "README.md").write_text(text, encoding="utf-8")


MAX_PER_CLASS = 100_000
"""The most samples per class `make_synthetic` writes (`metamodal demo`'s bound too)."""


def _check_arguments(**values: object) -> None:
    """Raise ConfigError naming the first argument outside its range."""
    ranges: dict[str, tuple[type, float, float, str]] = {
        "per_class": (int, 1, MAX_PER_CLASS, f"from 1 to {MAX_PER_CLASS:,}"),
        "missing_rate": (float, 0.0, 0.999999, "in [0, 1)"),
        "noise": (float, 0.0, 100.0, "in [0, 100]"),
        "flip_rate": (float, 0.0, 1.0, "in [0, 1]"),
        "classes_per_family": (int, 1, math.inf, "at least 1"),
        "image_size": (int, 8, 512, "from 8 to 512"),
        "sample_rate": (int, 2000, 48000, "from 2000 to 48000"),
        "audio_seconds": (float, 0.1, 10.0, "from 0.1 to 10"),
        "track_length": (int, 8, 4096, "from 8 to 4096"),
        "workers": (int, 1, 64, "from 1 to 64, or None"),
    }
    for name, value in values.items():
        kind, low, high, words = ranges[name]
        if name == "workers" and value is None:
            continue
        ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok_type or not low <= value <= high:  # type: ignore[operator]
            raise ConfigError(f"{name} must be {words}, got {value!r}",
                              fix=f"pass {name} {words}")

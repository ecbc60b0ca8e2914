"""Omniglot importer: the official archives (images and pen strokes) as a metamodal dataset.

Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept learning through
probabilistic program induction", Science 350(6266)) holds 1,623 handwritten characters of 50
alphabets, each drawn once by 20 people, as a 105x105 image and as pen strokes. The authors
publish it as zip archives (``images_background.zip``, ``strokes_background.zip``, the
``_evaluation`` sets and the small ``_background_small1`` / ``_small2`` subsets) laid out as
``<set>/<alphabet>/<characterNN>/<NNNN_DD>.png`` (or ``.txt`` for strokes; ``DD`` is the
drawer).

`import_omniglot` reads those archives, or their unpacked folders, from a source folder (or one
archive) and writes::

    OUT/dataset.toml      label "character" (alphabet/characterNN), group "alphabet"
    OUT/samples.csv       id, character, alphabet, drawer, image, strokes
    OUT/images/<alphabet>/<characterNN>/<NNNN_DD>.png    the images, as published
    OUT/strokes/<alphabet>/<characterNN>/<NNNN_DD>.npy   float32 [T, 4] (see parse_strokes)
    OUT/splits.toml       when held-out alphabets are named

An image and its stroke file are matched by their stem; a drawing in two archives (Greek and
Latin are in both small sets) is imported once, and must be the same in both. Lake's one-shot
runs (``all_runs.zip`` or its folder: ``runNN/training/classNN.png``, ``runNN/test/itemNN.png``,
``runNN/class_labels.txt``) become a dataset of their own with an ``episodes.jsonl`` of the
runs: in ``OUT`` itself when they are all the source holds, else in ``OUT/all_runs``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metamodal.datasets._archives import open_zip, safe_member_parts, zip_files
from metamodal.datasets._output import (
    holdout_split,
    staged_directory,
    write_samples_csv,
    write_schema,
)
from metamodal.datasets._sources import MAX_FILE_BYTES, SourceFile, walk_folder
from metamodal.datasets.common import ImportResult, few, image_options
from metamodal.datasets.common import progress as progress_bar
from metamodal.datasets.strokes import (
    MAX_STROKE_BYTES,
    STROKE_FEATURES,
    parse_stroke_bytes,
    parse_strokes,
    read_stroke_file,
)
from metamodal.errors import ConfigError, DatasetError
from metamodal.io import make_directory

__all__ = ["MAX_STROKE_BYTES", "STROKE_FEATURES", "import_omniglot", "parse_strokes",
           "read_stroke_file"]

log = logging.getLogger(__name__)

RUNS_LABELS = "class_labels.txt"


# ----------------------------------------------------------------------------- sources


def _set_kind(name: str) -> str | None:
    """``images``, ``strokes``, ``runs`` or None, from an archive's or folder's name."""
    lower = name.lower()
    if lower.startswith("images_"):
        return "images"
    if lower.startswith("strokes_"):
        return "strokes"
    if lower.startswith("all_runs"):
        return "runs"
    return None


@dataclass
class _Set:
    name: str
    kind: str
    origin: str
    files: list[SourceFile]


def _discover(source: Path, stack: ExitStack, max_file_bytes: int) -> list[_Set]:
    """The Omniglot sets (archives or folders) a source holds, by name."""

    def archive(path: Path) -> list[SourceFile]:
        zf = stack.enter_context(open_zip(path))
        return zip_files(zf, max_file_bytes=max_file_bytes)

    if source.is_file():
        if source.suffix.lower() != ".zip":
            raise DatasetError("not a zip archive", file=source,
                               fix="give an official Omniglot archive or the folder holding them")
        return [_Set(source.stem, _set_kind(source.stem) or "images", str(source),
                     archive(source))]
    if not source.is_dir():
        raise DatasetError("source not found", file=source,
                           fix="give the folder holding the Omniglot archives (or one archive)")
    kind = _set_kind(source.name)
    if kind is not None:
        return [_Set(source.name, kind, str(source), list(walk_folder(source)))]
    sets: dict[str, _Set] = {}
    for child in sorted(source.iterdir()):
        if child.is_symlink() or child.name.startswith("."):
            continue
        if child.is_dir() and _set_kind(child.name):
            sets[child.name] = _Set(child.name, str(_set_kind(child.name)), str(child),
                                    list(walk_folder(child)))
    for child in sorted(source.iterdir()):
        if child.is_symlink() or not child.is_file() or child.suffix.lower() != ".zip":
            continue
        if _set_kind(child.stem) is None:
            continue
        if child.stem in sets:
            log.info("using the unpacked folder %s, not %s", sets[child.stem].origin, child)
            continue
        sets[child.stem] = _Set(child.stem, str(_set_kind(child.stem)), str(child),
                                archive(child))
    if not sets:
        files = list(walk_folder(source))
        if any(f.name == RUNS_LABELS for f in files):
            return [_Set(source.name, "runs", str(source), files)]
        raise DatasetError(
            "no Omniglot data found: no images_* / strokes_* / all_runs archive or folder",
            file=source,
            fix="give the folder holding the official archives (e.g. images_background.zip, "
            "strokes_background.zip) or their unpacked folders, or run `metamodal download "
            "omniglot DIR`",
        )
    return list(sets.values())


Key = tuple[str, str, str]  # alphabet, character, stem


def _drawings(sets: list[_Set], kind: str, suffix: str) -> tuple[dict[Key, list[SourceFile]], int]:
    found: dict[Key, list[SourceFile]] = {}
    skipped = 0
    for s in sets:
        if s.kind != kind:
            continue
        for f in s.files:
            if len(f.parts) < 3 or f.suffix != suffix:
                skipped += 1
                continue
            found.setdefault((f.parts[-3], f.parts[-2], f.stem), []).append(f)
    return found, skipped


def _unique_bytes(key: Key, files: list[SourceFile], limit: int) -> bytes:
    """The content of a drawing's file; copies in several archives must agree."""
    data = files[0].read_bytes(limit)
    for other in files[1:]:
        if other.read_bytes(limit) != data:
            raise DatasetError(
                f"drawing {'/'.join(key)} differs between {files[0].origin} and its copy",
                file=other.origin,
                fix="import the two sets into separate datasets, or remove the stale copy",
            )
    return data


def _unmatched(keys: list[Key], have: dict[Key, list[SourceFile]], what: str, other: str,
               flag_fix: str) -> DatasetError:
    first = have[keys[0]][0]
    examples = few(["/".join(k) for k in keys], 3)
    return DatasetError(
        f"{len(keys)} drawing(s) have {what} but no {other}, e.g. {examples}"
        " (an image and its strokes are matched by alphabet, character and file stem)",
        file=first.origin,
        fix=f"add the {other} archive or folder that holds them ({flag_fix}), or pass "
        "--allow-unmatched to import them with that modality missing",
    )


# ----------------------------------------------------------------------------- import


def import_omniglot(
    source: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    image_size: int | None = 28,
    strokes: bool = True,
    allow_unmatched: bool = False,
    val_groups: Sequence[str] = (),
    test_groups: Sequence[str] = (),
    stroke_length: int = 256,
    name: str = "omniglot",
    overwrite: bool = False,
    progress: bool = False,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> ImportResult:
    """Import the official Omniglot archives (or their unpacked folders) as a dataset.

    See the module docstring for what is written. The image modality is ``image`` (grayscale,
    resized to ``image_size``; the files keep their 105x105 pixels), the stroke modality
    ``strokes`` (sequence ``[T, 4]``: x, y, t, pen-down-start flag; cut to ``stroke_length``
    points when decoded). Alphabets are the groups, so splits hold out whole alphabets.

    Args:
        source: a folder holding ``images_*`` / ``strokes_*`` / ``all_runs`` archives or
            unpacked folders, one such folder, one archive, or a list of these.
        out: the dataset directory to write.
        image_size: side of the decoded images (the loader's ``size``); None: the loader's
            default.
        strokes: import the stroke sets (when present).
        allow_unmatched: a drawing with an image but no stroke file (or the reverse) is
            imported with the other modality missing, instead of an error.
        val_groups, test_groups: alphabets held out for meta-validation / meta-test
            (written to ``splits.toml``; the other alphabets train).
        stroke_length: the sequence loader's ``max_length`` written to ``dataset.toml``.
        name: the dataset's name.
        overwrite: replace an existing dataset at ``out``.
        progress: show a progress bar.
        max_file_bytes: the largest archive member or file read.

    Returns:
        an `ImportResult` (its ``episodes`` is set when only ``all_runs`` was imported).

    Raises:
        DatasetError: nothing Omniglot-like in ``source``; an unsafe archive; an unreadable
            stroke file (named, with its line); a drawing with an image but no strokes or the
            reverse (without ``allow_unmatched``); a drawing that differs between archives.
        ConfigError: ``out`` may not be written; an unknown held-out alphabet.

    Example:
        >>> r = import_omniglot("../shared/data/omniglot", "omniglot",
        ...                     val_groups=["Tagalog"])  # doctest: +SKIP
        >>> r.samples, r.classes, r.groups  # doctest: +SKIP
        (4840, 242, 8)
    """
    sources = [Path(source)] if isinstance(source, str | Path) else [Path(s) for s in source]
    if not sources:
        raise ConfigError("no source given", column="source", fix="give a folder or an archive")
    source = sources[0]
    options = image_options(image_size, 1)
    if isinstance(stroke_length, bool) or not isinstance(stroke_length, int) or stroke_length < 1:
        raise ConfigError(f"invalid stroke length {stroke_length!r}", column="stroke_length",
                          fix="give a positive number of points, e.g. 256")
    with ExitStack() as stack:
        sets = [s for path in sources for s in _discover(path, stack, max_file_bytes)]
        runs = [s for s in sets if s.kind == "runs"]
        main = [s for s in sets if s.kind != "runs" and (strokes or s.kind == "images")]
        if len(runs) > 1:
            raise DatasetError(f"{len(runs)} all_runs sets found: {few([s.origin for s in runs])}",
                               file=source, fix="keep one all_runs archive or folder")
        if not main:
            if not runs:
                raise DatasetError("no image set found (only strokes, and strokes are off)",
                                   file=source, fix="add an images_* archive or folder")
            with staged_directory(out, overwrite) as tmp:
                result = _write_runs(runs[0], tmp, options, stroke_length, progress,
                                     max_file_bytes)
            result.path = Path(out)
            result.episodes = Path(out) / "episodes.jsonl"
            return result
        images, skipped_images = _drawings(main, "images", ".png")
        drawn, skipped_strokes = _drawings(main, "strokes", ".txt")
        with_strokes = any(s.kind == "strokes" for s in main)
        if with_strokes and not allow_unmatched:
            lonely = sorted(k for k in images if k not in drawn)
            if lonely:
                raise _unmatched(lonely, images, "an image", "stroke file", "strokes_*")
            lonely = sorted(k for k in drawn if k not in images)
            if lonely:
                raise _unmatched(lonely, drawn, "a stroke file", "image", "images_*")
        keys = sorted(set(images) | set(drawn))
        if not keys:
            raise DatasetError(
                "no classes found: no <alphabet>/<character>/<drawing>.png or .txt in the sets "
                f"{few([s.origin for s in main])}",
                file=source, fix="give the official archives, unchanged, or their folders")
        alphabets = sorted({k[0] for k in keys})
        splits = holdout_split(alphabets, val_groups, test_groups, what="alphabet")
        rows: list[list[str | None]] = []
        with staged_directory(out, overwrite) as tmp:
            for key in progress_bar(keys, progress, "import omniglot"):
                alphabet, character, stem = key
                relative = f"{alphabet}/{character}/{stem}"
                image = stroke = None
                if key in images:
                    image = f"images/{relative}.png"
                    dest = tmp / image
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(_unique_bytes(key, images[key], max_file_bytes))
                if key in drawn:
                    array = parse_stroke_bytes(_unique_bytes(key, drawn[key], MAX_STROKE_BYTES),
                                         drawn[key][0].origin)
                    stroke = f"strokes/{relative}.npy"
                    dest = tmp / stroke
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    np.save(dest, array, allow_pickle=False)
                match = re.fullmatch(r"\d+_(\d+)", stem)
                rows.append([relative, f"{alphabet}/{character}", alphabet,
                             match.group(1) if match else None, image,
                             *([stroke] if with_strokes else [])])
            header = ["id", "character", "alphabet", "drawer", "image",
                      *(["strokes"] if with_strokes else [])]
            write_samples_csv(tmp / "samples.csv", header, rows)
            if splits is not None:
                import tomli_w

                (tmp / "splits.toml").write_text(tomli_w.dumps(splits), encoding="utf-8")
            notes = []
            if runs:
                sub = _write_runs(runs[0], tmp / "all_runs", options, stroke_length, progress,
                                  max_file_bytes)
                notes.append(f"Lake's one-shot runs: {sub.groups} runs of {sub.samples} "
                             f"images as a dataset of their own in {Path(out) / 'all_runs'}, "
                             f"episodes in {Path(out) / 'all_runs' / 'episodes.jsonl'}")
            write_schema(tmp / "dataset.toml", _schema(name, "alphabet", options, stroke_length,
                                                      with_strokes))
    skipped = skipped_images + skipped_strokes
    if skipped:
        notes.append(f"skipped {skipped} file(s) that are not drawings")
    modalities = {"image": "image", **({"strokes": "sequence"} if with_strokes else {})}
    return ImportResult(Path(out), len(rows), len({r[1] for r in rows}), len(alphabets),
                        modalities, notes=notes)


def _schema(name: str, group: str, image_options: dict[str, Any], stroke_length: int,
            with_strokes: bool) -> dict[str, Any]:
    modalities: dict[str, Any] = {"image": {"kind": "image", "column": "image", **image_options}}
    if with_strokes:
        modalities["strokes"] = {"kind": "sequence", "column": "strokes",
                                 "max_length": stroke_length, "encoder": "trajectory",
                                 "encoder_options": {"pen": 3}}
    return {"name": name, "label": "character", "group": group, "samples": "samples.csv",
            "modalities": modalities}


def _write_runs(runs: _Set, out: Path, image_options: dict[str, Any], stroke_length: int,
                progress: bool, max_file_bytes: int) -> ImportResult:
    """Write Lake's one-shot runs as a dataset with an ``episodes.jsonl`` into ``out``.

    Each run's training images are its classes (label ``runNN/classNN``), each test image gets
    the class its ``class_labels.txt`` line names; the group is the run. The schema declares a
    ``strokes`` modality with every cell empty (the runs have no strokes), so that a model
    trained on images and strokes evaluates on the runs' images.
    """
    from metamodal.data.episode_files import EpisodeIds, write_episode_file

    index = {f.parts: f for f in runs.files}
    label_files = sorted((f for f in runs.files if f.name == RUNS_LABELS), key=lambda f: f.parts)
    if not label_files:
        raise DatasetError(f"an all_runs set without any runNN/{RUNS_LABELS}", file=runs.origin,
                           fix="give Lake's all_runs archive or folder unchanged")
    rows: list[list[str | None]] = []
    copies: list[tuple[SourceFile, Path]] = []
    episodes: list[EpisodeIds] = []
    seen_ids: set[str] = set()
    for labels_file in label_files:
        run_parts = labels_file.parts[:-1]
        run = run_parts[-1]
        base = run_parts[:-1]
        try:
            text = labels_file.read_bytes(1 << 20).decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DatasetError("not UTF-8 text", file=labels_file.origin,
                               fix="give the class_labels.txt of the official runs") from None
        training = sorted((f for f in runs.files if f.parts[:-1] == (*run_parts, "training")
                           and f.suffix == ".png"), key=lambda f: f.parts)
        label_of: dict[tuple[str, ...], str] = {}
        for f in training:
            label_of[f.parts] = f"{run}/{f.stem}"
        tests: list[tuple[SourceFile, str, int]] = []
        for line_no, line in enumerate(text.split("\n"), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DatasetError(f"expected two paths 'TEST TRAINING', got {line.strip()!r}",
                                   file=labels_file.origin, row=line_no,
                                   fix="write one 'runNN/test/itemNN.png "
                                   "runNN/training/classNN.png' pair a line")
            found = []
            for path in fields:
                parts = (*base, *safe_member_parts(path, labels_file.origin))
                f = index.get(parts)
                if f is None or f.suffix != ".png":
                    raise DatasetError(f"{path!r} is not an image of the runs",
                                       file=labels_file.origin, row=line_no,
                                       fix="name images relative to the folder holding runNN/")
                found.append(f)
            test, train = found
            if train.parts not in label_of:
                label_of[train.parts] = f"{run}/{train.stem}"
                training.append(train)
            tests.append((test, label_of[train.parts], line_no))
        if not tests:
            raise DatasetError("no test image listed", file=labels_file.origin,
                               fix="give the class_labels.txt of the official runs")
        support, query = [], []
        for f in training:
            sample_id = "/".join(f.parts[len(base):])[: -len(f.suffix)]
            if sample_id in seen_ids:
                raise DatasetError(f"training image {sample_id!r} is another run's too",
                                   file=labels_file.origin,
                                   fix="name the images of this run's own folder")
            support.append(sample_id)
            rows.append([sample_id, label_of[f.parts], run, f"images/{sample_id}.png", None])
            copies.append((f, out / f"images/{sample_id}.png"))
        for f, label, line_no in tests:
            sample_id = "/".join(f.parts[len(base):])[: -len(f.suffix)]
            if sample_id in seen_ids or sample_id in support or sample_id in query:
                raise DatasetError(f"image {sample_id!r} listed twice", file=labels_file.origin,
                                   row=line_no, fix="list each test image once")
            query.append(sample_id)
            rows.append([sample_id, label, run, f"images/{sample_id}.png", None])
            copies.append((f, out / f"images/{sample_id}.png"))
        seen_ids.update(support + query)
        episodes.append(EpisodeIds(run, support, query))
    make_directory(out)
    for f, dest in progress_bar(copies, progress, "import all_runs"):
        f.copy_to(dest, max_file_bytes)
    write_samples_csv(out / "samples.csv", ["id", "character", "run", "image", "strokes"], rows)
    write_episode_file(out / "episodes.jsonl", episodes)
    write_schema(out / "dataset.toml", _schema("omniglot-all-runs", "run", image_options,
                                               stroke_length, True))
    return ImportResult(out, len(rows), len({r[1] for r in rows}), len(episodes),
                        {"image": "image", "strokes": "sequence"},
                        notes=[f"{len(episodes)} one-shot runs; the strokes column is empty "
                               "(the runs have images only)"])


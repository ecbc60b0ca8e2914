"""Fuzzing metamodal with hostile inputs: a table of mutations over every file a user hands over.

The corpus starts from one small valid dataset (the embedded synthetic set: images, text,
audio, sequences, tabular values), one run trained on it and one classifier saved from it, and
derives each case by breaking one thing:

- ``dataset.toml``: unreadable or deeply nested text, missing or mistyped keys, every loader
  option of every modality set out of range, ``samples`` pointing outside the dataset;
- the sample table, as CSV, JSON lines and Parquet: hostile cells (paths leading outside, to
  special files, 5,000 characters long, to files of the wrong kind; NaN / inf / huge numbers;
  duplicate or empty ids and labels) in every modality column, broken structure;
- ``splits.toml``: unreadable, a directory, empty or overlapping splits, unknown groups;
- media files of every kind: truncated, garbage, empty, decompression bombs, NaN pixels or
  samples, absurd audio headers, pickled or misshapen ``.npy`` arrays;
- run directories: ``config.toml`` (its keys, the sizes in ``input_info``, and the encoder,
  fusion and learner options out of type or range), ``preprocessor.json``,
  ``model.safetensors``, ``checkpoint.pt`` (resumed), missing files;
- saved classifiers (``support.json``, ``support.safetensors``) and query tables;
- ``metamodal train`` flags, the other commands' flags and outputs;
- archives given to ``metamodal import imagefolder`` (`ARCHIVES`) and ``import table``
  (`TABLE_ARCHIVES`).

Each case runs the calls a user would make on that input (``prepare_data`` and
``inspect_dataset`` for a dataset, ``FewShotClassifier.load(...).predict`` for a run or a saved
classifier, ``Trainer.fit(resume=True)`` for a checkpoint) and gets one outcome:

- ``typed error``: a `metamodal.errors.MetamodalError` naming the file (and the row where the
  mutation is in a row; flags name their key) — and ``inspect`` agrees that the dataset is
  unusable;
- ``accepted (harmless)``: a mutation that must be accepted (a missing cell, reordered
  columns) was accepted, with the same predictions where there are any;

and the failures: ``raw exception``, ``hang`` (over the per-case time limit), ``silent
acceptance`` (a hostile input accepted), ``error without location``, ``inspect disagrees``,
``files changed`` (an input file changed or vanished), ``wrong predictions``, ``harmless
input refused``.

    python benchmarks/fuzz.py              # the full corpus (>= 1,000 cases); exit 1 on failure
    python benchmarks/fuzz.py --sample 60  # a stratified sample (what CI runs)

``tests/test_fuzz.py`` runs the sample.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUTCOMES_OK = ("typed error", "accepted (harmless)")
OUTCOMES_BAD = ("raw exception", "hang", "silent acceptance", "error without location",
                "inspect disagrees", "files changed", "wrong predictions",
                "harmless input refused")
MEDIA = {"image": "images", "sound": "audio", "track": "tracks"}
TABULAR = ["body_length_cm", "body_width_cm", "weight_g", "air_temp_c"]


@dataclass
class Case:
    """One hostile (or harmless) input.

    Args:
        name: a unique, readable id (``family/what``).
        family: the group of cases it belongs to (sampling is stratified by family).
        op: what runs on it: ``dataset``, ``run``, ``resume``, ``query``, ``flags`` or
            ``command``.
        mutate: changes the case directory (holding ``data/`` and ``run/`` copies).
        expect: ``error`` (hostile) or ``ok`` (must be accepted).
        row: the error must name a row (the mutation is in one row of the sample table).
        flags: extra ``metamodal train`` flags (``flags`` cases), or the whole ``metamodal``
            command line of a ``command`` case, where ``{work}`` is the case directory.
    """

    name: str
    family: str
    op: str
    mutate: Callable[[Path], None]
    expect: str = "error"
    row: bool = False
    flags: tuple[str, ...] = ()


# -- helpers that edit files -------------------------------------------------------------


def _rewrite(path: Path, change: Callable[[str], str]) -> None:
    path.write_text(change(path.read_text(encoding="utf-8")), encoding="utf-8")


def _set_toml_option(path: Path, table: str, key: str, value: str) -> None:
    """Set ``key = value`` in ``[table]`` of a TOML file (replacing a present key)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, inside, done = [], table == "", False
    for line in lines:
        if line.startswith("["):
            if inside and not done:
                out.insert(0 if table == "" else len(out), f"{key} = {value}")
                done = True
            inside = line.strip() == f"[{table}]"
        if inside and line.split("=")[0].strip() == key:
            if not done:
                out.append(f"{key} = {value}")
                done = True
            continue
        out.append(line)
    if inside and not done:
        out.append(f"{key} = {value}")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def _table_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _convert(data: Path, fmt: str) -> Path:
    """Rewrite ``samples.csv`` as ``samples.<fmt>`` (cells as strings) and point the schema
    at it; returns the new table."""
    if fmt == "csv":
        return data / "samples.csv"
    fields, rows = _table_rows(data / "samples.csv")
    (data / "samples.csv").unlink()
    path = data / f"samples.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({f: [r[f] or None for r in rows] for f in fields}), path)
    _set_toml_option(data / "dataset.toml", "", "samples", f'"samples.{fmt}"')
    return path


def _special(data: Path, value: str) -> None:
    """Create the FIFO a hostile cell names."""
    if value == "fifo" and not (data / "fifo").exists():
        os.mkfifo(data / "fifo")


def _set_cell(data: Path, fmt: str, row: int, column: str, value: str) -> None:
    _special(data, value)
    fields, rows = _table_rows(data / "samples.csv")
    rows[row][column] = value
    _write_rows(data / "samples.csv", fields, rows)
    _convert(data, fmt)


def _wav(rate: int, channels: int = 1, frames: int = 16, fmt: int = 1, bits: int = 16,
         payload: bytes | None = None) -> bytes:
    """A WAV file with the header fields given (PCM by default)."""
    block = channels * bits // 8
    data = payload if payload is not None else b"\x00" * (frames * block)
    head = struct.pack("<HHIIHH", fmt, channels, rate & 0xFFFFFFFF,
                       (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + head + b"data"
            + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A ``.npy`` header claiming ``shape`` (with no data behind it)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _media_payloads(tmp: Path) -> dict[str, dict[str, Callable[[Path], None]]]:
    """Hostile file contents for each media kind: name -> writer of the file at a path."""
    from PIL import Image

    def bytes_of(content: bytes) -> Callable[[Path], None]:
        return lambda path: path.write_bytes(content)

    def image(make: Callable[[], Image.Image], fmt: str) -> Callable[[Path], None]:
        buffer = io.BytesIO()
        make().save(buffer, format=fmt)
        return bytes_of(buffer.getvalue())

    nan_image = np.full((6, 6), 50.0, dtype=np.float32)
    nan_image[1, 2] = np.nan
    inf_image = np.full((6, 6), 50.0, dtype=np.float32)
    inf_image[0, 0] = np.inf

    def npy(array: np.ndarray, allow_pickle: bool = False) -> Callable[[Path], None]:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=allow_pickle)
        return bytes_of(buffer.getvalue())

    float_wav_nan = np.zeros(32, dtype="<f4")
    float_wav_nan[3] = np.nan
    png = io.BytesIO()
    Image.new("RGB", (5, 5), (10, 200, 10)).save(png, format="PNG")
    common = {
        "empty": bytes_of(b""),
        "garbage": bytes_of(os.urandom(0) + bytes(range(256)) * 4),
        "text": bytes_of(b"just some text\n"),
    }
    return {
        "image": {
            **common,
            "truncated-png": bytes_of(png.getvalue()[:40]),
            "bomb-png": image(lambda: Image.new("1", (9000, 8000)), "PNG"),
            "nan-tiff": image(lambda: Image.fromarray(nan_image, mode="F"), "TIFF"),
            "inf-tiff": image(lambda: Image.fromarray(inf_image, mode="F"), "TIFF"),
            "wav-as-image": bytes_of(_wav(8000)),
        },
        "sound": {
            **common,
            "rate-2147483647": bytes_of(_wav(2_147_483_647)),
            "rate-0": bytes_of(_wav(0)),
            "rate-4294967295": bytes_of(_wav(4_294_967_295)),
            "channels-0": bytes_of(_wav(8000, channels=0)),
            "channels-65535": bytes_of(_wav(8000, channels=65535, frames=1)),
            "no-samples": bytes_of(_wav(8000, frames=0)),
            "float-nan": bytes_of(_wav(8000, fmt=3, bits=32,
                                       payload=float_wav_nan.tobytes())),
            "size-lies": bytes_of(_wav(8000)[:44] + b"\x00" * 4),
            "png-as-audio": bytes_of(png.getvalue()),
        },
        "track": {
            **common,
            "pickled-object": npy(np.array([{"a": 1}], dtype=object), allow_pickle=True),
            "nan": npy(np.array([[0.0, np.nan]], dtype=np.float32)),
            "inf": npy(np.array([[np.inf, 0.0]], dtype=np.float32)),
            "overflow-f64": npy(np.array([[1e300, 0.0]], dtype=np.float64)),
            "3-d": npy(np.zeros((2, 2, 2), dtype=np.float32)),
            "0-d": npy(np.array(3.0, dtype=np.float32)),
            "empty-array": npy(np.zeros((0, 2), dtype=np.float32)),
            "strings": npy(np.array(["a", "b"])),
            "complex": npy(np.zeros((2, 2), dtype=np.complex64)),
            "huge-shape-header": bytes_of(_npy_header((10**12, 2))),
            "wrong-width": npy(np.zeros((4, 7), dtype=np.float32)),
        },
    }


# -- the corpus ---------------------------------------------------------------------------


HARMLESS_MEDIA = ("size-lies",)
"""Media payloads that must be accepted: a WAV whose data chunk claims more bytes than the file
holds decodes the samples that are there (as every audio tool does)."""

HOSTILE_CELLS: dict[str, str] = {
    "dotdot": "../outside.png",
    "deep-dotdot": "images/../../../../../../etc/passwd",
    "absolute": "/etc/hostname",
    "absolute-outside": "{outside}",
    "symlink-out": "link-out",
    "directory": "images",
    "fifo": "fifo",
    "dev-zero": "/dev/zero",
    "long-5000": "a/" * 2500,
    "long-name": "x" * 300 + ".png",
    "missing": "images/none-such.png",
    "self-table": "samples.csv",
    "schema": "dataset.toml",
}
NUMERIC_CELLS = {"nan": "nan", "inf": "inf", "-inf": "-inf", "1e400": "1e400", "text": "ten",
                 "hex": "0x1F", "long-int": "9" * 5000, "comma": "1,5"}


def build_corpus() -> list[Case]:
    """Every case, in a fixed order (deterministic)."""
    cases: list[Case] = []

    def add(name: str, family: str, op: str, mutate: Callable[[Path], None], **kw) -> None:
        cases.append(Case(name, family, op, mutate, **kw))

    # dataset.toml: text-level
    deep = "a = " + "[" * 5000 + "]" * 5000 + "\n"
    for what, text in {"empty": "", "garbage": "\x00\x01\x02 = = [[", "deep-array": deep,
                       "deep-table": "a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n",
                       "long-int": "label = " + "9" * 5000 + "\n", "no-label": "name = 'x'\n",
                       "label-int": "label = 3\n", "no-modalities": "label = 'species'\n",
                       "modalities-string": "label = 'species'\nmodalities = 'image'\n"}.items():
        add(f"dataset.toml/{what}", "dataset.toml text", "dataset",
            lambda d, t=text: (d / "data" / "dataset.toml").write_text(t))
    add("dataset.toml/not-utf8", "dataset.toml text", "dataset",
        lambda d: (d / "data" / "dataset.toml").write_bytes(b"label = '\xff\xfe'\n"))
    add("dataset.toml/directory", "dataset.toml text", "dataset",
        lambda d: ((d / "data" / "dataset.toml").unlink(), (d / "data" / "dataset.toml").mkdir()))
    for key, value in {"samples": '"../outside.csv"', "samples-abs": '"/etc/hostname"',
                       "samples-missing": '"none.csv"', "samples-schema": '"dataset.toml"',
                       "samples-dir": '"images"', "samples-long": '"' + "a/" * 2500 + '"',
                       "allow_outside_paths": '"yes"', "group": '"no_such_column"',
                       "label": '"no_such_column"', "name": "[1, 2]"}.items():
        add(f"dataset.toml/{key}={value[:20]}", "dataset.toml keys", "dataset",
            lambda d, k=key, v=value: _set_toml_option(
                d / "data" / "dataset.toml", "", k.split("-")[0], v))
    options = {
        "image": {"size": ["0", "-3", "100000", "3.5", '"big"', "[8]", "[8, 8, 8]", "[0, 8]",
                           "true", "nan"],
                  "channels": ["2", "3.0", '"3"', "0", "true", "4"],
                  "normalize": ['"yes"', "1"], "kind": ['"hologram"', "3"],
                  "column": ["3", '""', '"species"']},
        "caption": {"max_length": ["0", "-1", "1073741824", "3.0", '"x"'],
                    "max_vocab": ["-1", "1e3", "100000000000"], "min_count": ["0", "1.5"],
                    "tokenizer": ['"bpe"', "3"]},
        "sound": {"sample_rate": ["0", "-8000", "2147483647", "8000.5", "1e12", '"8k"'],
                  "n_fft": ["0", "1", "1073741824", "256.0"],
                  "n_mels": ["0", "100000", "-2"], "hop_length": ["0", "1073741824"],
                  "max_seconds": ["0", "-1", "1e12", "nan", "inf"],
                  "f_min": ["-1", "nan", "100000"], "f_max": ["0", "1000000", "nan"]},
        "track": {"max_length": ["0", "1073741824", "2.5", "-4"], "normalize": ['"no"']},
        "measurements": {"columns": ["[]", '"weight_g"', '["species"]', "[1, 2]",
                                     '["weight_g", "weight_g"]'],
                         "normalize": ["0"]},
    }
    for modality, keys in options.items():
        for key, values in keys.items():
            for value in values:
                add(f"dataset.toml/{modality}.{key}={value[:16]}", "loader options", "dataset",
                    lambda d, m=modality, k=key, v=value: _set_toml_option(
                        d / "data" / "dataset.toml", f"modalities.{m}", k, v))
    add("dataset.toml/allow_outside_paths=true", "dataset.toml keys", "dataset",
        lambda d: _set_toml_option(d / "data" / "dataset.toml", "", "allow_outside_paths",
                                   "true"), expect="ok")

    # the sample table, in three formats
    for fmt in ("csv", "jsonl", "parquet"):
        for column in ("image", "sound", "track"):
            for what, cell in HOSTILE_CELLS.items():
                for row in (0, 17, 33, 44):
                    add(f"samples.{fmt}/{column}/{what}/row{row + 1}", f"cells {fmt}", "dataset",
                        lambda d, f=fmt, c=column, v=cell, r=row: _set_cell(
                            d / "data", f, r, c, v.format(outside=d / "outside.png")),
                        row=True)
        for column in TABULAR:
            for what, cell in NUMERIC_CELLS.items():
                add(f"samples.{fmt}/{column}/{what}", f"cells {fmt}", "dataset",
                    lambda d, f=fmt, c=column, v=cell: _set_cell(d / "data", f, 5, c, v),
                    row=True)
        for what, (column, cell) in {"dup-id": ("id", "s00000"), "empty-id": ("id", ""),
                                     "empty-label": ("species", ""), "empty-group": ("family", ""),
                                     "class-in-two-groups": ("family", "family-02")}.items():
            add(f"samples.{fmt}/{what}", f"cells {fmt}", "dataset",
                lambda d, f=fmt, c=column, v=cell: _set_cell(d / "data", f, 3, c, v), row=True)
        for what, (column, cell) in {"missing-image": ("image", ""),
                                     "missing-caption": ("caption", ""),
                                     "long-caption": ("caption", "word " * 20000),
                                     "unicode-caption": ("caption", "\u2028\u00e9\U0001f600"),
                                     "missing-number": ("weight_g", "")}.items():
            add(f"samples.{fmt}/{what}", f"harmless {fmt}", "dataset",
                lambda d, f=fmt, c=column, v=cell: _set_cell(d / "data", f, 4, c, v),
                expect="ok")
        add(f"samples.{fmt}/row-without-modality", f"cells {fmt}", "dataset",
            lambda d, f=fmt: _empty_row(d / "data", f, 6), row=True)
        add(f"samples.{fmt}/all-rows-without-modality", f"cells {fmt}", "dataset",
            lambda d, f=fmt: _empty_row(d / "data", f, None))
        add(f"samples.{fmt}/drop-id-column", f"table {fmt}", "dataset",
            lambda d, f=fmt: _drop_column(d / "data", f, "id"))
        add(f"samples.{fmt}/drop-label-column", f"table {fmt}", "dataset",
            lambda d, f=fmt: _drop_column(d / "data", f, "species"))
        add(f"samples.{fmt}/drop-image-column", f"table {fmt}", "dataset",
            lambda d, f=fmt: _drop_column(d / "data", f, "image"))
        add(f"samples.{fmt}/header-only", f"table {fmt}", "dataset",
            lambda d, f=fmt: _keep_rows(d / "data", f, 0))
        add(f"samples.{fmt}/three-classes", f"table {fmt}", "dataset",
            lambda d, f=fmt: _keep_rows(d / "data", f, 6))
        add(f"samples.{fmt}/columns-reordered", f"harmless {fmt}", "dataset",
            lambda d, f=fmt: _reorder_columns(d / "data", f), expect="ok")
        for what, content in {"empty": b"", "garbage": bytes(range(256)) * 3,
                              "not-utf8": b"id,species\n\xff\xfe,\x80\n",
                              "truncated": None}.items():
            add(f"samples.{fmt}/file-{what}", f"table {fmt}", "dataset",
                lambda d, f=fmt, c=content: _replace_table(d / "data", f, c))
        add(f"samples.{fmt}/is-a-directory", f"table {fmt}", "dataset",
            lambda d, f=fmt: _table_special(d / "data", f, "dir"))
        add(f"samples.{fmt}/is-a-fifo", f"table {fmt}", "dataset",
            lambda d, f=fmt: _table_special(d / "data", f, "fifo"))
    csv_text = {"unterminated-quote": 'id,species\n"a,b\n', "nul": "id,species\na\x00,b\n",
                "extra-field": None, "bom-crlf": None, "duplicate-header": "id,id\na,b\n",
                "empty-header": "id,,species\na,b,c\n"}
    for what, text in csv_text.items():
        add(f"samples.csv/{what}", "table csv", "dataset",
            lambda d, w=what, t=text: _csv_structure(d / "data", w, t),
            expect="ok" if what == "bom-crlf" else "error")
    jsonl_lines = {"not-object": "[1, 2]", "deep": "[" * 5000 + "]" * 5000,
                   "long-int": '{"id": ' + "9" * 5000 + "}", "bad-json": "{id: 1}",
                   "nested-cell": '{"id": "zz", "species": "species-000", "family": '
                                  '"family-00", "image": {"a": [1]}}'}
    for what, line in jsonl_lines.items():
        add(f"samples.jsonl/{what}", "table jsonl", "dataset",
            lambda d, t=line: _jsonl_line(d / "data", t), row=True)

    # splits.toml
    for what, text in {"empty": "", "garbage": "[[[", "deep": deep, "unknown-key": "trian = []\n",
                       "train-empty": 'train = []\nval = ["family-01"]\ntest = ["family-02"]\n',
                       "val-empty": 'train = ["family-00"]\nval = []\ntest = ["family-02"]\n',
                       "overlap": 'train = ["family-00"]\nval = ["family-00"]\n',
                       "unknown-group": 'train = ["family-00", "nope"]\n',
                       "train-string": 'train = "family-00"\n', "train-ints": "train = [1, 2]\n",
                       "long-int": "train = " + "9" * 5000 + "\n"}.items():
        add(f"splits.toml/{what}", "splits.toml", "dataset",
            lambda d, t=text: (d / "data" / "splits.toml").write_text(t))
    add("splits.toml/directory", "splits.toml", "dataset",
        lambda d: ((d / "data" / "splits.toml").unlink(), (d / "data" / "splits.toml").mkdir()))
    add("splits.toml/not-utf8", "splits.toml", "dataset",
        lambda d: (d / "data" / "splits.toml").write_bytes(b"train = ['\xff']\n"))

    # media files of every kind: each payload in two rows
    payloads = _media_payloads(Path(tempfile.gettempdir()))
    for column, kinds in payloads.items():
        for what, write in kinds.items():
            for row in (0, 9, 30):
                add(f"media/{column}/{what}/row{row + 1}", f"media {column}", "dataset",
                    lambda d, c=column, w=write, r=row: _media(d / "data", c, r, w), row=True,
                    expect="ok" if what in HARMLESS_MEDIA else "error")

    # run directories, loaded to predict
    run_edits = {
        "config.toml/garbage": lambda r: (r / "config.toml").write_text("[[["),
        "config.toml/deep": lambda r: (r / "config.toml").write_text(deep),
        "config.toml/empty": lambda r: (r / "config.toml").write_text(""),
        "config.toml/directory": lambda r: _to_dir(r / "config.toml"),
        "config.toml/missing": lambda r: (r / "config.toml").unlink(),
        "preprocessor.json/missing": lambda r: (r / "preprocessor.json").unlink(),
        "preprocessor.json/garbage": lambda r: (r / "preprocessor.json").write_text("{"),
        "preprocessor.json/deep": lambda r: (r / "preprocessor.json").write_text(
            "[" * 5000 + "]" * 5000),
        "preprocessor.json/long-int": lambda r: (r / "preprocessor.json").write_text(
            "9" * 5000),
        "preprocessor.json/list": lambda r: (r / "preprocessor.json").write_text("[]"),
        "model.safetensors/missing": lambda r: (r / "model.safetensors").unlink(),
        "model.safetensors/garbage": lambda r: (r / "model.safetensors").write_bytes(
            b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage"),
        "model.safetensors/truncated": lambda r: _truncate(r / "model.safetensors", 100),
        "model.safetensors/huge-header": lambda r: (r / "model.safetensors").write_bytes(
            struct.pack("<Q", 2**62) + b"{}"),
        "model.safetensors/directory": lambda r: _to_dir(r / "model.safetensors"),
    }
    for key, value in {"bogus": "1", "steps": '"many"', "checkpoint_every": "0", "dim": "-1",
                       "lr": "nan", "seed": "-5", "ways": "1.5", "learner": "3",
                       "modalities": '"image"'}.items():
        run_edits[f"config.toml/train.{key}={value}"] = (
            lambda r, k=key, v=value: _set_toml_option(r / "config.toml", "train", k, v))
    for key, value in {"learner": '"no-such-learner"', "fusion": '"no-such-fusion"',
                       "dim": "0", "dim ": "1e9", "dim  ": "10000000", "kinds": "3",
                       "fusion ": '["gated"]', "learner ": "true"}.items():
        run_edits[f"config.toml/model.{key.strip()}={value}"] = (
            lambda r, k=key, v=value: _set_toml_option(r / "config.toml", "model", k.strip(),
                                                       v))
    component_options = [("learner_options", "temperature", value)
                         for value in ("0", "-1", "nan", "inf", '"hot"')]
    component_options += [("fusion_options", "hidden", value)  # the gated fusion's
                          for value in ('"wide"', "-1", "0", "1000000000000", "[32]", "nan")]
    component_options += [("encoder_options.image", key, value)  # conv4's
                          for key, value in (("hidden", "-3"), ("hidden", "2.5"),
                                             ("blocks", "100000"), ("blocks", "true"),
                                             ("depth", "2"))]
    component_options += [("input_info.image", key, value)  # sizes the model is built for
                          for key, value in (("channels", "10000000"), ("height", "-1"),
                                             ("width", '"wide"'))]
    for table in ("encoders", "encoder_options", "fusion_options", "learner_options"):
        run_edits[f"config.toml/model.{table}=text"] = (  # a table replaced by a string
            lambda r, t=table: _replace_model_table(r / "config.toml", t))
    for table, key, value in component_options:
        run_edits[f"config.toml/model.{table}.{key}={value}"] = (
            lambda r, t=table, k=key, v=value: _set_model_option(r / "config.toml", t, k, v))
    for what, change in _preprocessor_edits().items():
        run_edits[f"preprocessor.json/{what}"] = (
            lambda r, c=change: _edit_json(r / "preprocessor.json", c))
    for what, change in _weight_edits().items():
        run_edits[f"model.safetensors/{what}"] = (
            lambda r, c=change: _edit_tensors(r / "model.safetensors", c))
    for what, edit in run_edits.items():
        add(f"run/{what}", "run directory", "run", lambda d, e=edit: e(d / "run"))

    # saved classifiers
    saved_edits: dict[str, Callable[[Path], None]] = {
        "support.json/garbage": lambda r: (r / "support.json").write_text("{"),
        "support.json/deep": lambda r: (r / "support.json").write_text("[" * 5000 + "]" * 5000),
        "support.json/missing": lambda r: (r / "support.json").unlink(),
        "support.safetensors/garbage": lambda r: (r / "support.safetensors").write_bytes(
            b"garbage"),
        "support.safetensors/directory": lambda r: _to_dir(r / "support.safetensors"),
    }
    for what, change in {
        "classes-empty": lambda s: s.update(classes=[]),
        "classes-ints": lambda s: s.update(classes=[1, 2, 3]),
        "classes-duplicated": lambda s: s.update(classes=["a", "a", "b"]),
        "classes-missing": lambda s: s.pop("classes"),
        "modalities-unknown": lambda s: s.update(modalities=["video"]),
        "modalities-string": lambda s: s.update(modalities="image"),
        "form-unknown": lambda s: s.update(form="pickles"),
        "form-samples": lambda s: s.update(form="samples"),
        "list": lambda s: s.clear(),
    }.items():
        saved_edits[f"support.json/{what}"] = (
            lambda r, c=change: _edit_json(r / "support.json", c))
    for what, change in {
        "labels-out-of-range": lambda t: t.update(labels=t["labels"] + 50),
        "labels-negative": lambda t: t.update(labels=t["labels"] - 50),
        "labels-float": lambda t: t.update(labels=t["labels"].float()),
        "labels-missing": lambda t: t.pop("labels"),
        "z-nan": lambda t: t.update(z=t["z"] * float("nan")),
        "z-missing": lambda t: t.pop("z"),
        "z-rows": lambda t: t.update(z=t["z"][:1].contiguous()),
        "present-missing": lambda t: t.pop("present"),
        "present-float": lambda t: t.update(present=t["present"].float()),
        "z-1d": lambda t: t.update(z=t["z"].flatten().contiguous()),
    }.items():
        saved_edits[f"support.safetensors/{what}"] = (
            lambda r, c=change: _edit_tensors(r / "support.safetensors", c))
    for what, edit in saved_edits.items():
        add(f"saved/{what}", "saved classifier", "run", lambda d, e=edit: e(d / "run"))

    # checkpoints, resumed
    checkpoint_edits: dict[str, Callable[[Path], None]] = {
        "garbage": lambda p: p.write_bytes(b"garbage"),
        "empty": lambda p: p.write_bytes(b""),
        "pickle-payload": _pickle_payload,
        "truncated": lambda p: _truncate(p, 200),
        "list": lambda p: _torch_save(p, [1, 2, 3]),
        "no-model": lambda p: _edit_checkpoint(p, lambda s: s.pop("model")),
        "progress-strings": lambda p: _edit_checkpoint(
            p, lambda s: s.update(progress={"step": "x"})),
        "config-unknown-key": lambda p: _edit_checkpoint(
            p, lambda s: s["config"].update(bogus=1)),
        "config-checkpoint_every-0": lambda p: _edit_checkpoint(
            p, lambda s: s["config"].update(checkpoint_every=0)),
        "rng-garbage": lambda p: _edit_checkpoint(p, lambda s: s.update(rng={"python": 1})),
        "optimizer-garbage": lambda p: _edit_checkpoint(
            p, lambda s: s.update(optimizer={"state": 3})),
        "model-wrong-shapes": lambda p: _edit_checkpoint(
            p, lambda s: s.update(model={k: v.flatten()[:1] for k, v in s["model"].items()})),
        "directory": lambda p: _to_dir(p),
    }
    for what, edit in checkpoint_edits.items():
        add(f"checkpoint.pt/{what}", "checkpoint", "resume",
            lambda d, e=edit: e(d / "run" / "checkpoint.pt"))

    # query tables given to predict
    for column in MEDIA:
        for what, cell in HOSTILE_CELLS.items():
            add(f"query.csv/{column}/{what}", "query table", "query",
                lambda d, c=column, v=cell: _query_cell(
                    d, c, v.format(outside=d / "outside.png")), row=True)
    add("query.csv/row-without-modality", "query table", "query",
        lambda d: _query_empty_row(d), row=True)
    add("query.csv/columns-reordered", "query table", "query",
        lambda d: _query_reorder(d), expect="ok")
    add("query.csv/no-modality-columns", "query table", "query",
        lambda d: _query_drop(d, ["image", "caption", "sound", "track", *TABULAR]))
    add("query.csv/no-id", "query table", "query", lambda d: _query_drop(d, ["id"]))

    # train flags
    for flags in (("--checkpoint-every", "0"), ("--ways", "0"), ("--ways", "1"),
                  ("--ways", "1000000000"), ("--shots", "-1"), ("--steps", "0"),
                  ("--dim", "1000000000"), ("--val-ways", "1"), ("--lr", "nan"),
                  ("--lr", "-1"), ("--meta-batch", "0"), ("--batch-size", "0"),
                  ("--val-episodes", "0"), ("--queries", "100000"), ("--patience", "-1"),
                  ("--encoder", "image=no-such-encoder"), ("--learner", "nope"),
                  ("--modalities", "video"), ("--val-ways", "100")):
        add(f"flags/{' '.join(flags)}", "train flags", "flags", lambda d: None, flags=flags)

    # the other commands' flags and outputs (``{work}`` holds data/, run/, run2/ and fifo)
    data, run, run2, table = "{work}/data", "{work}/run", "{work}/run2", "{work}/data/samples.csv"
    few = ("--ways", "2", "--queries", "1")
    for command in (
            ("episodes", data, "--out", "{work}", *few),
            ("episodes", data, "--out", f"{table}/e.jsonl", *few),
            ("episodes", data, "--out", "{work}/out/e.jsonl", *few, "--runs", "100000000"),
            ("episodes", data, "--out", "{work}/out/e.jsonl", "--ways", "2", "--queries", "0"),
            ("eval", run, "--json", data, *few, "--episodes-count", "2"),
            ("eval", run, *few, "--episodes-count", "1000000000"),
            ("eval", run, "--ways", "1"),
            ("eval", run, "--modalities", ","),
            ("eval", run, "--episodes", "{work}/fifo"),
            ("inspect", data, "--json", data),
            ("zero-shot", run, "--shots", "a,b"),
            ("zero-shot", run, "--shots", ""),
            ("ensemble", run, f"{run}/.", "--out", "{work}/out/e", *few),
            ("ensemble", run, run2, "--out", data, "--overwrite", *few),
            ("ensemble", run, run2, "--out", "{work}/out/e", *few, "--episodes-count",
             "1000000000"),
            ("export", run, f"{run}/model.safetensors", "--overwrite", "--format",
             "torchscript"),
            ("serve", run, "--port", "70000"),
            ("serve", run, "--max-request-mb", "nan"),
            ("serve", run, "--max-samples", "-1"),
            ("serve", run, "--state", table),
            ("serve", run, "--cors", "not an origin"),
            ("serve", run, "--host", "999.1.1.1", "--token", "t"),
            ("cache", "info", "--dir", table),
            ("cache", "info", "--limit", "1" + "0" * 400),
            ("demo", "--out", table),
            ("train", "--data", data, "--out", "{work}/out/r", "--config", "{work}/fifo"),
            *[("search", "--data", data, "--space", f"{{work}}/{space}.toml", "--out",
               "{work}/out/s", "--steps", "1", "--trials", "1", "--no-cache", "--sampler",
               "grid" if space.startswith("grid") else "tpe") for space in SEARCH_SPACES],
            ("search", "--data", data, "--space", "{work}/fifo", "--out", "{work}/out/s"),
            *[("search", "--data", data, "--space", "{work}/lr.toml", "--out", "{work}/out/s",
               *flags) for flags in (("--trials", "0"), ("--study", " "),
                                     ("--sampler-seed", "-1"),
                                     ("--objective-episodes", "100000000"))],
            ("search", "--data", data, "--space", "{work}/lr.toml", "--out", table)):
        add(f"command/{' '.join(command)}", "command flags", "command", _command_files,
            flags=command)

    # archives given to the folder importers (each written by `_archive`)
    for name, expect in ARCHIVES.items():
        add(f"import/{name}", "import archives", "command",
            lambda d, n=name: _archive(d, n), expect=expect,
            flags=("import", "imagefolder", f"{{work}}/{name}", "{work}/out/ds", "--no-progress"))
    # an archive of a table and its files given to `import table` (written by `_table_archive`)
    for name, (flags, expect) in TABLE_ARCHIVES.items():
        add(f"import table/{name}", "import archives", "command",
            lambda d, n=name: _table_archive(d, n), expect=expect,
            flags=("import", "table", "{work}/shop.zip", "{work}/out/ds", "--label", "species",
                   "--image", "photo", "--no-progress", *flags))
    return cases


SEARCH_SPACES = {
    "unknown-fusion": 'fusion = { choices = ["nosuch"] }',
    "unknown-encoder": '"encoders.image" = { choices = ["nosuch"] }',
    "option-the-learner-lacks": '"learner_options.inner_steps" = { low = 1, high = 3 }',
    "half-step-of-ints": "dim = { low = 4, high = 8, step = 0.5 }",
    "zero-step": "lr = { low = 0.001, high = 0.01, step = 0.0 }",
    "grid-of-a-billion": "\n".join(f'"augment.image.{key}" = {{ low = 0.0, high = 0.999, '
                                   'step = 0.001 }' for key in ("rotate", "translate", "scale")),
}
"""Search spaces that the search refuses before its first trial (each in ``{work}``)."""


def _command_files(work: Path) -> None:
    """What the ``command`` cases name: a second run, a FIFO, and search spaces."""
    shutil.copytree(work / "run", work / "run2", symlinks=True)
    os.mkfifo(work / "fifo")
    (work / "lr.toml").write_text("lr = { low = 0.0001, high = 0.01, log = true }\n")
    for name, text in SEARCH_SPACES.items():
        (work / f"{name}.toml").write_text(text + "\n")


ARCHIVES = {
    "slip.zip": "error", "absolute.zip": "error", "backslash.zip": "error",
    "slip.tar": "error", "absolute.tar": "error", "damaged-header.tar": "error",
    "cut.tar.gz": "error", "garbage.tar.gz": "error", "empty.tar": "error",
    "zip-inside.tar.gz": "error", "tar-inside.zip": "error", "cut.zip": "error",
    "fifo.tar": "error", "fifo.zip": "error", "only-noise.zip": "error",
    "only-links.tar": "error", "file-and-folder.tar": "error", "encrypted.zip": "error",
    "short-member.tar": "error", "photos.rar": "error",
    "with-links.tar": "ok", "classes.tar.bz2": "ok", "no-top-folder.zip": "ok",
}
"""Archives given to ``import imagefolder`` (`_archive` writes each): hostile ones must end in
a typed error naming the archive, harmless ones import."""


TABLE_ARCHIVES: dict[str, tuple[tuple[str, ...], str]] = {
    "two-tables": ((), "error"), "no-table": ((), "error"), "path-out": ((), "error"),
    "missing-file": ((), "error"), "link-out": ((), "error"), "not-an-image": ((), "error"),
    "table-outside": (("--table", "../items.csv"), "error"),
    "root-absolute": (("--root", "/etc"), "error"), "root-a-file": (("--root", "shop/items.csv"),
                                                                     "error"),
    "no-such-table": (("--table", "shop/nope.csv"), "error"),
    "fine": ((), "ok"), "nested-sequence-csv": ((), "ok"),
}
"""``{work}/shop.zip`` given to ``import table`` with these flags (`_table_archive` writes
it): hostile ones must end in a typed error naming the archive, harmless ones import."""


def _table_archive(work: Path, name: str) -> None:
    """Write ``work/shop.zip`` for the case ``name`` of `TABLE_ARCHIVES`: ``shop/items.csv``
    naming ``photos/*.png`` beside it, broken as the name says."""
    import zipfile

    from PIL import Image

    rows = ["species,photo"]
    members: dict[str, bytes] = {}
    for c in range(3):
        for i in range(2):
            buffer = io.BytesIO()
            Image.new("L", (6, 6), 40 * c + i).save(buffer, format="PNG")
            members[f"shop/photos/{c}{i}.png"] = buffer.getvalue()
            rows.append(f"s{c},photos/{c}{i}.png")
    cell = {"path-out": "../../outside.png", "missing-file": "photos/nope.png",
            "link-out": "photos/link.png", "not-an-image": "items.csv"}.get(name)
    if cell is not None:
        rows.append(f"s0,{cell}")
    if name != "no-table":
        members["shop/items.csv"] = ("\n".join(rows) + "\n").encode()
    if name == "two-tables":
        members["shop/old.csv"] = b"species,photo\n"
    if name == "nested-sequence-csv":
        members["shop/photos/seq/track.csv"] = b"1,2\n3,4\n"
    with zipfile.ZipFile(work / "shop.zip", "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        if name == "link-out":
            info = zipfile.ZipInfo("shop/photos/link.png")
            info.external_attr = 0o120777 << 16  # a Unix symbolic link, leading out
            archive.writestr(info, "../../../outside.png")


def _archive(work: Path, name: str) -> None:
    """Write the archive ``name`` of `ARCHIVES` into ``work``."""
    import tarfile
    import zipfile

    from PIL import Image

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (6, 6), value).save(buffer, format="PNG")
        return buffer.getvalue()

    good = [(f"set/{c}/{i}.png", png(40 * c + i)) for c in range(3) for i in range(3)]
    path = work / name

    def tar(members: list[tuple[str, bytes]], mode: str = "w", target: Path = path,
            extra: Callable[[tarfile.TarFile], None] | None = None) -> None:
        with tarfile.open(target, mode) as archive:
            for member, data in members:
                info = tarfile.TarInfo(member)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            if extra is not None:
                extra(archive)

    def link(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("set/0/link.png")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(info)

    def zipped(members: list[tuple[str, bytes]], target: Path = path) -> None:
        with zipfile.ZipFile(target, "w") as archive:
            for member, data in members:
                archive.writestr(member, data)

    if name.startswith("fifo."):
        os.mkfifo(path)
    elif name in ("slip.zip", "absolute.zip", "backslash.zip"):
        bad = {"slip": "../evil.png", "absolute": "/evil.png", "backslash": "set\\..\\e.png"}
        zipped([*good, (bad[name.split(".")[0]], png(1))])
    elif name in ("slip.tar", "absolute.tar"):
        tar([*good, ("../evil.png" if name == "slip.tar" else "/evil.png", png(1))])
    elif name == "damaged-header.tar":
        tar(good)
        data = bytearray(path.read_bytes())
        data[512 + 512 * ((len(good[0][1]) + 511) // 512) + 3] ^= 0xFF
        path.write_bytes(bytes(data))
    elif name == "cut.tar.gz":
        tar(good, "w:gz")
        path.write_bytes(path.read_bytes()[:200])
    elif name == "garbage.tar.gz":
        path.write_bytes(np.random.default_rng(0).bytes(3000))
    elif name == "empty.tar":
        path.write_bytes(b"")
    elif name == "zip-inside.tar.gz":
        zipped(good)
    elif name == "tar-inside.zip":
        tar(good)
    elif name == "cut.zip":
        zipped(good)
        path.write_bytes(path.read_bytes()[:300])
    elif name == "only-noise.zip":
        zipped([("__MACOSX/set/0/._0.png", b"x"), ("set/.DS_Store", b"x")])
    elif name == "only-links.tar":
        tar([], extra=link)
    elif name == "file-and-folder.tar":
        tar([*good, ("set/0/0.png/inner.png", png(2))])
    elif name == "encrypted.zip":
        zipped(good)
        data = bytearray(path.read_bytes())
        data[6] |= 0x1  # the first member's local header says: encrypted
        data[data.find(b"PK\x01\x02") + 8] |= 0x1  # and so does its central directory entry
        path.write_bytes(bytes(data))
    elif name == "short-member.tar":
        tar(good)
        path.write_bytes(path.read_bytes()[:512 + 20])  # the first member's data cut
    elif name == "photos.rar":
        path.write_bytes(b"Rar!\x1a\x07\x00")
    elif name == "with-links.tar":
        tar(good, extra=link)
    elif name == "classes.tar.bz2":
        tar(good, "w:bz2")
    elif name == "no-top-folder.zip":
        zipped([(member.removeprefix("set/"), data) for member, data in good])
    else:  # pragma: no cover - every name of ARCHIVES is written above
        raise ValueError(name)


# -- edit helpers used above ----------------------------------------------------------------


def _to_dir(path: Path) -> None:
    if path.exists():
        path.unlink()
    path.mkdir()


def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


def _empty_row(data: Path, fmt: str, row: int | None) -> None:
    fields, rows = _table_rows(data / "samples.csv")
    for index in range(len(rows)) if row is None else [row]:
        for column in ("image", "caption", "sound", "track", *TABULAR):
            rows[index][column] = ""
    _write_rows(data / "samples.csv", fields, rows)
    _convert(data, fmt)


def _drop_column(data: Path, fmt: str, column: str) -> None:
    fields, rows = _table_rows(data / "samples.csv")
    fields.remove(column)
    _write_rows(data / "samples.csv", fields, [{f: r[f] for f in fields} for r in rows])
    _convert(data, fmt)


def _keep_rows(data: Path, fmt: str, count: int) -> None:
    fields, rows = _table_rows(data / "samples.csv")
    if fmt == "jsonl" and count == 0:
        _convert(data, fmt)
        (data / "samples.jsonl").write_text("")
        return
    _write_rows(data / "samples.csv", fields, rows[:count])
    _convert(data, fmt)


def _reorder_columns(data: Path, fmt: str) -> None:
    fields, rows = _table_rows(data / "samples.csv")
    _write_rows(data / "samples.csv", fields[::-1], rows)
    _convert(data, fmt)


def _replace_table(data: Path, fmt: str, content: bytes | None) -> None:
    path = _convert(data, fmt)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] if content is None
                     else content)


def _table_special(data: Path, fmt: str, kind: str) -> None:
    path = _convert(data, fmt)
    path.unlink()
    if kind == "dir":
        path.mkdir()
    else:
        os.mkfifo(path)


def _csv_structure(data: Path, what: str, text: str | None) -> None:
    path = data / "samples.csv"
    if what == "extra-field":
        lines = path.read_text().splitlines()
        lines[3] += ",extra"
        path.write_text("\n".join(lines) + "\n")
    elif what == "bom-crlf":
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    else:
        path.write_text(text or "")


def _jsonl_line(data: Path, line: str) -> None:
    path = _convert(data, "jsonl")
    lines = path.read_text().splitlines()
    lines.insert(1, line)
    path.write_text("\n".join(lines) + "\n")


def _media(data: Path, column: str, row: int, write: Callable[[Path], None]) -> None:
    fields, rows = _table_rows(data / "samples.csv")
    suffix = {"image": ".png", "sound": ".wav", "track": ".npy"}[column]
    name = f"{MEDIA[column]}/hostile{suffix}"
    write(data / name)
    rows[row][column] = name
    _write_rows(data / "samples.csv", fields, rows)


def _replace_model_table(path: Path, table: str) -> None:
    """Replace ``[model.TABLE]`` (and its subtables) of a run's ``config.toml`` by ``TABLE =
    "x"`` in ``[model]``."""
    out, skipping = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            skipping = line.strip().startswith(f"[model.{table}")
        if not skipping:
            out.append(line)
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    _set_toml_option(path, "model", table, '"x"')


def _set_model_option(path: Path, table: str, key: str, value: str) -> None:
    """Set ``key = value`` in ``[model.TABLE]`` of a run's ``config.toml``, adding the table
    where it is missing."""
    text = path.read_text()
    if f"[model.{table}]" in text:
        _set_toml_option(path, f"model.{table}", key, value)
    else:
        path.write_text(text.rstrip("\n") + f"\n\n[model.{table}]\n{key} = {value}\n")


def _edit_json(path: Path, change: Callable[[dict], object]) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))


def _preprocessor_edits() -> dict[str, Callable[[dict], object]]:
    loaders = ("image", "sound", "track", "measurements")
    edits: dict[str, Callable[[dict], object]] = {
        "missing-loaders": lambda s: s.pop("loaders"),
        "missing-format": lambda s: s.pop("format"),
        "format-99": lambda s: s.update(format=99),
        "not-fitted": lambda s: s.update(fitted=False),
        "modalities-unknown": lambda s: s.update(modalities=["video"]),
        "caption-vocab-int": lambda s: s["loaders"]["caption"].update(vocab=3),
        "caption-options-bad": lambda s: s["loaders"]["caption"]["options"].update(
            max_length=0),
    }
    for name in loaders:
        edits.update({
            f"{name}-std-zero": lambda s, n=name: s["loaders"][n].update(
                std=[0.0] * len(s["loaders"][n]["std"])),
            f"{name}-std-nan": lambda s, n=name: s["loaders"][n].update(
                std=[float("nan")] * len(s["loaders"][n]["std"])),
            f"{name}-mean-short": lambda s, n=name: s["loaders"][n].update(
                mean=s["loaders"][n]["mean"][:1]),
            f"{name}-mean-long": lambda s, n=name: s["loaders"][n].update(
                mean=s["loaders"][n]["mean"] * 3, std=s["loaders"][n]["std"] * 3),
            f"{name}-std-missing": lambda s, n=name: s["loaders"][n].pop("std"),
            f"{name}-options-missing": lambda s, n=name: s["loaders"][n].pop("options"),
            f"{name}-fitted-string": lambda s, n=name: s["loaders"][n].update(fitted="yes"),
        })
    edits["image-size-huge"] = lambda s: s["loaders"]["image"]["options"].update(
        size=[100000, 100000])
    edits["sound-rate-huge"] = lambda s: s["loaders"]["sound"]["options"].update(
        sample_rate=2_147_483_647)
    edits["track-features-zero"] = lambda s: s["loaders"]["track"].update(features=0)
    edits["measurements-features-string"] = lambda s: s["loaders"]["measurements"].update(
        features="4")
    return edits


def _edit_tensors(path: Path, change: Callable[[dict], object]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _weight_edits() -> dict[str, Callable[[dict], object]]:
    def first(tensors: dict, skip: int = 0) -> str:
        keys = sorted(k for k, v in tensors.items() if v.is_floating_point() and v.numel())
        return keys[skip % len(keys)]

    edits: dict[str, Callable[[dict], object]] = {}
    for skip in range(12):
        edits[f"nan-{skip}"] = lambda t, s=skip: t.update(
            {first(t, s * 7): t[first(t, s * 7)] * float("nan")})
        edits[f"inf-{skip}"] = lambda t, s=skip: t.update(
            {first(t, s * 5 + 1): t[first(t, s * 5 + 1)] + float("inf")})
        edits[f"missing-{skip}"] = lambda t, s=skip: t.pop(first(t, s * 3))
        edits[f"shape-{skip}"] = lambda t, s=skip: t.update(
            {first(t, s * 11): t[first(t, s * 11)].flatten()[:1].clone()})
    edits["extra-tensor"] = lambda t: t.update({"backbone.extra": t[first(t)].clone()})
    return edits


def _torch_save(path: Path, obj: object) -> None:
    import torch

    torch.save(obj, path)


def _edit_checkpoint(path: Path, change: Callable[[dict], object]) -> None:
    import torch

    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


class _Payload:
    """An object whose unpickling would create a file (code execution)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_payload(path: Path) -> None:
    import torch

    torch.save({"config": {}, "model": _Payload(path.parent.parent / "PWNED")}, path)


def _query_path(d: Path) -> Path:
    return d / "data" / "query.csv"


def _query_cell(d: Path, column: str, value: str) -> None:
    _special(d / "data", value)
    fields, rows = _table_rows(_query_path(d))
    rows[1][column] = value
    _write_rows(_query_path(d), fields, rows)


def _query_empty_row(d: Path) -> None:
    fields, rows = _table_rows(_query_path(d))
    for column in ("image", "caption", "sound", "track", *TABULAR):
        rows[1][column] = ""
    _write_rows(_query_path(d), fields, rows)


def _query_reorder(d: Path) -> None:
    fields, rows = _table_rows(_query_path(d))
    _write_rows(_query_path(d), fields[::-1], rows)


def _query_drop(d: Path, columns: list[str]) -> None:
    fields, rows = _table_rows(_query_path(d))
    fields = [f for f in fields if f not in columns]
    _write_rows(_query_path(d), fields, [{f: r[f] for f in fields} for r in rows])


# -- running cases --------------------------------------------------------------------------


class _Timeout(BaseException):
    """The case ran over its time limit."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise `_Timeout` in the main thread after ``seconds`` (also interrupts a blocking
    ``open`` of a FIFO)."""

    def handler(signum, frame):  # noqa: ARG001
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (or the file type) of everything under ``root``, not following
    links; the feature / tensor cache and staging directories are left out."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if ".metamodal-cache" in rel:
            continue
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_fifo():
            out[rel] = "fifo"
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class Base:
    """The valid inputs every case starts from."""

    root: Path
    data: Path
    run: Path
    predictions: list[str]
    clf: object


def make_base(root: Path) -> Base:
    """A small valid dataset (15 classes x 3 samples), a run trained on it for 4 steps with a
    resumable checkpoint, and a classifier fitted on a support table and saved in the run."""
    import torch

    from metamodal.classifier import FewShotClassifier
    from metamodal.config import TrainConfig
    from metamodal.datasets.synthetic import make_synthetic
    from metamodal.train.trainer import Trainer

    torch.set_num_threads(1)
    data = make_synthetic(root / "data", classes=15, per_class=3, image_size=8, seed=4)
    (root / "outside.png").write_bytes((data / "images" / "s00000.png").read_bytes())
    os.symlink(root / "outside.png", data / "link-out")
    fields, rows = _table_rows(data / "samples.csv")
    _write_rows(data / "support.csv", fields, [r for r in rows if r["id"].endswith(("0", "5"))])
    _write_rows(data / "query.csv", fields, rows[1:7])
    config = TrainConfig(data=str(data), steps=4, ways=2, shots=1, queries=1, dim=8,
                         val_every=0, val_episodes=2, checkpoint_every=1, device="cpu",
                         cache=False, preprocess={"image": {"size": 8}})

    class _Stop(Exception):
        pass

    def stop(step, values):  # noqa: ARG001
        if step == 2:
            raise _Stop

    with contextlib.suppress(_Stop):  # a resumable run: its checkpoint is at step 2
        Trainer(config, root / "run", progress=False, callbacks=[stop]).fit()
    shutil.copytree(root / "run", root / "half-run")
    Trainer(config, root / "run", progress=False).fit(resume=True)
    clf = FewShotClassifier(root / "run").fit(data / "support.csv")
    clf.save(root / "run")
    # checkpoint cases resume the half-finished run
    shutil.copy(root / "half-run" / "checkpoint.pt", root / "run" / "checkpoint-half.pt")
    shutil.rmtree(root / "half-run")
    clf = FewShotClassifier.load(root / "run")
    return Base(root, data, root / "run", clf.predict(data / "query.csv"), clf)


def _located(error: BaseException, case: Case) -> bool:
    file = getattr(error, "file", None)
    if case.op in ("flags", "command"):
        return file is not None or getattr(error, "column", None) is not None
    if file is None:
        return False
    if case.row and getattr(error, "row", None) is None:
        # a row-level mutation may also be caught at the file level (a schema key, a table
        # that no longer parses); then the file names the place
        return not str(file).endswith((".csv", ".jsonl", ".parquet")) or "line" in str(error)
    return True


def _run_op(case: Case, work: Path, base: Base) -> tuple[str, object]:
    """Run the case's calls; returns ``("ok", result)``, or raises what they raise."""
    from metamodal.classifier import FewShotClassifier

    if case.op == "dataset":
        from metamodal.config import TrainConfig
        from metamodal.data.episodes import check_class_sizes
        from metamodal.data.inspect import inspect_dataset
        from metamodal.runs.prepared import prepare_data
        from metamodal.train.validation import resolve_validation_shape

        report = inspect_dataset(work / "data")
        try:
            data = prepare_data(work / "data", cache=False)
            # what `metamodal train` checks next, for a default (5-way 1-shot) episode
            default = TrainConfig(ways=5, shots=1, queries=1)
            check_class_sizes(data.store, data.split.train, 5, 1, 1)
            splits = work / "data" / "splits.toml"
            resolve_validation_shape(default, data.store, data.split.val,
                                     file=splits if splits.exists() else work / "data")
        except BaseException as error:
            error.inspect_ok = report.ok  # type: ignore[attr-defined]
            raise
        return "ok", report.ok
    if case.op == "run":
        return "ok", FewShotClassifier.load(work / "run").predict(work / "data" / "query.csv")
    if case.op == "query":
        return "ok", base.clf.predict(work / "data" / "query.csv")
    if case.op == "resume":
        from metamodal.runs.directory import load_run
        from metamodal.train.trainer import Trainer

        config = load_run(base.run).config.updated({"data": str(work / "data")})
        return "ok", Trainer(config, work / "run", progress=False).fit(resume=True)
    if case.op == "flags":
        from metamodal.cli import build_parser

        args = build_parser().parse_args(
            ["train", "--data", str(work / "data"), "--out", str(work / "new-run"),
             "--steps", "1", "--no-cache", "--device", "cpu", "--dim", "8",
             "--val-episodes", "2", "--ways", "2", "--queries", "1", *case.flags])
        args.progress = False
        args.call(args)  # what `metamodal train` runs: api.train with the flags' settings
        return "ok", None
    if case.op == "command":
        from metamodal.cli import build_parser

        args = build_parser().parse_args([a.format(work=work) for a in case.flags])
        return "ok", args.call(args)
    raise ValueError(case.op)


def run_case(case: Case, base: Base, scratch: Path, timeout: float = 30.0) -> tuple[str, str]:
    """Run one case in a fresh copy of the base; returns ``(outcome, detail)``."""
    from metamodal.errors import MetamodalError

    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        shutil.copytree(base.data, work / "data", symlinks=True)
        if case.op in ("run", "resume", "command"):
            shutil.copytree(base.run, work / "run", symlinks=True)
            if case.op == "resume":
                os.replace(work / "run" / "checkpoint-half.pt", work / "run" / "checkpoint.pt")
        (work / "outside.png").write_bytes((base.root / "outside.png").read_bytes())
        case.mutate(work)
        before = _snapshot(work)
        error: BaseException | None = None
        result: object = None
        try:
            with warnings.catch_warnings(), _time_limit(timeout):
                warnings.simplefilter("ignore")
                _, result = _run_op(case, work, base)
        except _Timeout:
            return "hang", f"over {timeout:.0f} s"
        except (Exception, SystemExit) as caught:  # noqa: BLE001 - classified below
            error = caught
        after = _snapshot(work)
        if (work / "PWNED").exists():
            return "raw exception", "a checkpoint ran code"
        if error is not None or case.expect == "error":
            outputs = {"flags": ("new-run",), "command": ("out",)}.get(case.op, ())
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)
                             and not k.startswith(outputs) and not _is_staging(k))
            if changed and not (error is None and case.op == "resume"):
                return "files changed", ", ".join(changed[:3])
        if error is None:
            if case.expect == "error":
                return "silent acceptance", repr(result)[:120]
            if case.op == "dataset" and result is not True:
                return "inspect disagrees", "a harmless change made the dataset unusable"
            if case.op == "query" and result != base.predictions:
                return "wrong predictions", f"{result} != {base.predictions}"
            return "accepted (harmless)", ""
        if not isinstance(error, MetamodalError):
            return "raw exception", f"{type(error).__name__}: {str(error)[:200]}"
        if not _located(error, case):
            return "error without location", f"{type(error).__name__}: {str(error)[:200]}"
        if case.expect == "ok":
            return "harmless input refused", str(error)[:200]
        if case.op == "dataset" and getattr(error, "inspect_ok", False):
            return "inspect disagrees", f"inspect says usable; training: {str(error)[:160]}"
        return "typed error", f"{type(error).__name__}: {str(error)[:160]}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _is_staging(rel: str) -> bool:
    return rel.split(os.sep)[-1].startswith(".") and rel.endswith(".tmp")


def sample_cases(cases: list[Case], size: int) -> list[Case]:
    """A deterministic sample of about ``size`` cases with every family represented."""
    families: dict[str, list[Case]] = {}
    for case in cases:
        families.setdefault(case.family, []).append(case)
    picked: list[Case] = []
    per = max(1, size // len(families))
    for members in families.values():
        step = max(1, len(members) // per)
        picked += members[::step][:per]
    rest = [c for c in cases if c not in picked]
    picked += rest[:: max(1, len(rest) // max(1, size - len(picked)))][: size - len(picked)]
    return picked


def run_corpus(cases: list[Case], *, timeout: float = 30.0, echo: Callable[[str], None] = print,
               ) -> tuple[Counter, list[tuple[str, str, str]]]:
    """Run ``cases``; returns the outcome counts and every ``(case, outcome, detail)``."""
    counts: Counter = Counter()
    records: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = make_base(root / "base")
        scratch = root / "cases"
        scratch.mkdir()
        for case in cases:
            outcome, detail = run_case(case, base, scratch, timeout)
            counts[outcome] += 1
            records.append((case.name, outcome, detail))
            if outcome in OUTCOMES_BAD:
                echo(f"FAIL {case.name}: {outcome}: {detail}")
    return counts, records


def format_counts(counts: Counter, total: int, seconds: float) -> str:
    """The outcome table printed at the end."""
    lines = [f"{total} cases in {seconds:.0f} s", f"{'outcome':<24}{'cases':>7}"]
    for outcome in (*OUTCOMES_OK, *OUTCOMES_BAD):
        lines.append(f"{outcome:<24}{counts.get(outcome, 0):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sample", type=int, help="run a stratified sample of this size")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    parser.add_argument("--match", help="run only cases whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the cases and stop")
    args = parser.parse_args(argv)
    logging.getLogger("metamodal").setLevel(logging.ERROR)  # e.g. "resuming with ..." notes
    cases = build_corpus()
    if args.match:
        cases = [c for c in cases if args.match in c.name]
    if args.sample:
        cases = sample_cases(cases, args.sample)
    if args.list:
        for case in cases:
            print(f"{case.family:<20} {case.expect:<6} {case.name}")
        print(f"{len(cases)} cases")
        return 0
    started = time.perf_counter()
    counts, _ = run_corpus(cases, timeout=args.timeout)
    print(format_counts(counts, len(cases), time.perf_counter() - started))
    return 1 if any(counts.get(o) for o in OUTCOMES_BAD) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Modality kinds: every built-in kind is one registered object, and a kind registered from
outside the package (here, from this file alone) is imported, inspected, trained and evaluated
through its own hooks."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor, nn

from metamodal.config import TrainConfig
from metamodal.data.augment import Augmentation
from metamodal.data.batch import ModalityBatch
from metamodal.data.dataset import load_dataset
from metamodal.data.inspect import inspect_dataset
from metamodal.data.kinds import (
    AugmentContext,
    ModalityAugment,
    ModalityKind,
    kinds,
    modality_kind,
    register_kind,
    summary,
)
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.data.paths import PathRefused, resolve_inside
from metamodal.data.preprocess import Preprocessor
from metamodal.data.schema import valid_kinds
from metamodal.datasets.folders import folder_kinds, import_folder
from metamodal.encoders import DEFAULT_ENCODERS, Encoder, encoders, register_encoder
from metamodal.encoders import base as encoder_base
from metamodal.errors import DatasetError, UnknownNameError
from metamodal.evaluate.protocol import evaluate
from metamodal.runs.directory import load_run, load_run_data
from metamodal.train.trainer import Trainer

MAX_NOTES = 4


# -- the toy kind: a chord (up to four note numbers, "3;7;10") in a .chord file -------------


class ChordLoader(ModalityLoader):
    """Reads ``.chord`` files (note numbers separated by ``;``) into float ``[B, 4]``."""

    kind: ClassVar[str] = "chord"

    def __init__(self, *, notes: int = MAX_NOTES) -> None:
        self.notes = notes

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        return None

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        values = torch.zeros(len(cells), self.notes)
        present = torch.zeros(len(cells), dtype=torch.bool)
        for i, cell in enumerate(cells):
            if cell is None:
                continue
            try:
                numbers = read_chord(context, str(cell))
            except (OSError, ValueError, PathRefused) as exc:
                context.report(DatasetError(f"cannot read chord: {exc}", file=str(cell),
                                            row=context.rows[i], column=context.column,
                                            fix="write note numbers separated by ';'"))
                continue
            kept = numbers[: self.notes]
            values[i, : len(kept)] = torch.tensor(kept)
            present[i] = True
        return ModalityBatch(values, present, None)

    def input_info(self) -> dict[str, Any]:
        return {"notes": self.notes}

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "options": {"notes": self.notes}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ChordLoader:
        return cls(**state["options"])


def read_chord(context: DecodeContext, cell: str) -> list[float]:
    path = resolve_inside(context.root, cell, allow_outside=context.allow_outside)
    return [float(v) for v in path.read_text().split(";")]


class ChordKind(ModalityKind):
    """Chords: media files of note numbers; the inspection flags a chord of too many notes,
    the augmentation transposes."""

    name = "chord"
    loader = "chord"
    default_encoder = "chord-mlp"
    media = True
    suffixes = (".chord",)
    media_folder = "chords"
    augment_options = {"transpose": (0, 12)}
    augmented: ClassVar[int] = 0

    def describe(self, cells: Sequence[Cell], batch: ModalityBatch,
                 context: DecodeContext) -> dict[str, Any]:
        counts = []
        for i, (cell, ok) in enumerate(zip(cells, batch.present.tolist(), strict=True)):
            if not ok:
                continue
            notes = len(read_chord(context, str(cell)))
            counts.append(notes)
            if notes > MAX_NOTES:
                context.report(DatasetError(
                    f"chord has {notes} notes, more than the {MAX_NOTES} a chord may have",
                    file=str(cell), row=context.rows[i], column=context.column,
                    fix="split it into two chords"))
        return {"notes": summary(counts)} if counts else {}

    def augment(self, batch: ModalityBatch, spec: ModalityAugment, generator: torch.Generator,
                context: AugmentContext) -> ModalityBatch:
        type(self).augmented += 1
        bound = int(spec.get("transpose"))
        shift = torch.randint(-bound, bound + 1, (len(batch), 1), generator=generator)
        moved = torch.where(batch.values != 0, batch.values + shift, batch.values)
        return ModalityBatch(moved, batch.present, batch.lengths)


class ChordEncoder(Encoder):
    """A two-layer perceptron over the (sorted) notes of a chord: ``[B, notes] -> [B, dim]``."""

    def __init__(self, *, dim: int, input_info: dict[str, Any], hidden: int = 16) -> None:
        super().__init__(dim=dim, input_info=input_info)
        self.net = nn.Sequential(nn.Linear(input_info["notes"], hidden), nn.ReLU(),
                                 nn.Linear(hidden, dim))

    def encode(self, values: Tensor, lengths: Tensor | None) -> Tensor:
        return self.net(values.sort(dim=1).values / 12)


@pytest.fixture
def chord_kind(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The chord kind, its loader and its encoder registered for one test only."""
    monkeypatch.setattr(kinds, "_entries", dict(kinds._entries))
    monkeypatch.setattr(loaders, "_entries", dict(loaders._entries))
    monkeypatch.setattr(encoders, "_entries", dict(encoders._entries))
    monkeypatch.setattr(encoder_base, "ENCODER_KINDS", dict(encoder_base.ENCODER_KINDS))
    loaders.register("chord")(ChordLoader)
    register_kind(ChordKind)
    register_encoder("chord-mlp", ["chord"])(ChordEncoder)
    ChordKind.augmented = 0
    yield


def write_chords(source: Path, classes: int = 10, per_class: int = 4) -> None:
    """One folder per class of ``.chord`` files; class ``c``'s chords are built on note ``c``.
    A stray text file and one chord of six notes come along."""
    for c in range(classes):
        folder = source / f"chord{c:02d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            notes = [c + 1, c + 4 + j % 2, c + 7]
            (folder / f"{j}.chord").write_text(";".join(str(n) for n in notes))
    (source / "chord00" / "README.txt").write_text("not a chord")
    (source / "chord01" / "0.chord").write_text("1;2;3;4;5;6")


# -- the tests -------------------------------------------------------------------------------


def test_every_built_in_kind_is_one_registered_object() -> None:
    assert kinds.names() == ["audio", "image", "sequence", "tabular", "text", "video"]
    assert valid_kinds() == kinds.names()
    media = {name: modality_kind(name).media for name in kinds.names()}
    assert media == {"audio": True, "image": True, "sequence": True, "tabular": False,
                     "text": False, "video": True}
    assert dict(DEFAULT_ENCODERS) == {name: modality_kind(name).default_encoder
                                      for name in kinds.names()}
    assert modality_kind("tabular").multi_column and not modality_kind("text").multi_column
    assert folder_kinds() == ["audio", "image", "sequence", "video"]
    for name in kinds.names():
        assert modality_kind(name).loader in loaders
    with pytest.raises(UnknownNameError, match="hologram"):
        modality_kind("hologram")


def test_a_kind_registered_from_outside_is_imported_inspected_trained_and_evaluated(
    tmp_path: Path, chord_kind: None
) -> None:
    write_chords(tmp_path / "source")
    # import: the kind's hints pick the files and the folder they go to
    result = import_folder(tmp_path / "source", tmp_path / "ds", kind="chord", skip_other=True)
    assert result.modalities == {"chord": "chord"} and result.samples == 40
    assert result.notes == ["skipped 1 file(s) of other types"]
    assert (tmp_path / "ds/chords/chord03/1.chord").is_file()

    # inspect: the kind's own cell inspection finds the chord of six notes
    report = inspect_dataset(tmp_path / "ds")
    assert report.modalities["chord"].details["notes"] == {"min": 3, "median": 3, "max": 6}
    assert [(p.file, p.message) for p in report.problems] == [
        ("chords/chord01/0.chord", "chord has 6 notes, more than the 4 a chord may have")]

    # the kind says its cells are media files: their modification time enters the cache key
    dataset = load_dataset(tmp_path / "ds")
    preprocessor = Preprocessor(dataset.schema).fit(dataset, dataset.classes)
    key = preprocessor.cache_key(dataset)
    chord = tmp_path / "ds/chords/chord05/2.chord"
    os.utime(chord, ns=(chord.stat().st_atime_ns, chord.stat().st_mtime_ns + 10**9))
    assert preprocessor.cache_key(dataset) != key

    # train with the kind's default encoder and its augmentation, then evaluate the run
    config = TrainConfig(data=str(tmp_path / "ds"), ways=2, shots=1, queries=1, steps=4,
                         val_every=0, val_episodes=4, dim=8,
                         augment={"chord": {"transpose": 2}})
    Trainer(config, tmp_path / "run", progress=False).fit()
    assert ChordKind.augmented >= 4  # one call per training episode at least
    run = load_run(tmp_path / "run")
    assert isinstance(run.model.backbone.encoders["chord"], ChordEncoder)
    prepared = load_run_data(run)
    assert prepared.store.kinds == {"chord": "chord"}
    result = evaluate(run.model, prepared.store, prepared.split.test, ways=2, shots=1,
                      queries=1, episodes=8)
    assert result.episodes == 8 and 0 <= result.accuracy <= 1


def test_the_kind_validates_its_augmentation_options(chord_kind: None) -> None:
    from metamodal.errors import ConfigError

    with pytest.raises(ConfigError, match="a chord modality has no 'rotate' augmentation"):
        Augmentation({"m": {"rotate": 10}}, {"m": "chord"})
    with pytest.raises(ConfigError, match="out of range"):
        Augmentation({"m": {"transpose": 20}}, {"m": "chord"})
    with pytest.raises(ConfigError, match="cannot rotate the chord modality"):
        Augmentation({"rotate_classes": True}, {"m": "chord"})

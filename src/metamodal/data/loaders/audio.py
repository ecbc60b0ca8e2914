"""Audio loader: WAV / FLAC / OGG files -> log-mel spectrograms float ``[B, n_mels, frames]``.

Each file is read with soundfile (only its first ``max_seconds``), averaged to mono, resampled
to ``sample_rate`` by FFT resampling (`resample`: band-limited, so downsampling does not alias),
cut to ``max_seconds`` and turned into a natural-log mel spectrogram (`mel.log_mel_spectrogram`:
Hann window of ``n_fft`` samples, hop ``hop_length``, HTK mel filters between ``f_min`` and
``f_max``). A clip of ``S`` samples gives ``1 + S // hop_length`` frames (even ``n_fft``);
``lengths`` holds that count and frames past it are zeros.

With ``normalize`` (the default) each mel band is standardised with the mean and standard
deviation of that band over every frame of the meta-train clips. Calling `AudioLoader.decode`
before `AudioLoader.fit` is allowed and uses identity normalisation (`AudioLoader.is_fitted`
tells the two apart).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import soundfile
import torch
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
from metamodal.data.loaders.mel import frame_count, log_mel_spectrogram, mel_filterbank
from metamodal.errors import ConfigError

_CHUNK = 64  # clips whose spectrograms are computed in one torch.stft call


def _smooth_at_least(k: int) -> int:
    """The smallest integer >= ``k`` whose prime factors are all 2, 3, 5 or 7 (fast FFT size)."""
    k = max(1, k)
    while True:
        rest = k
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return k
        k += 1


def resample(wave: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample ``wave`` from ``orig_rate`` to ``new_rate`` Hz by band-limited (FFT)
    interpolation, the method of ``scipy.signal.resample``.

    The wave is zero-padded to a length whose FFT is fast and whose resampled length is exact
    (a multiple of ``orig_rate / gcd``), its spectrum is cut (downsampling) or zero-extended
    (upsampling) and transformed back. The result is band-limited to the lower of the two
    Nyquist frequencies, so downsampling does not alias; the signal is taken as silent past
    its end.

    Args:
        wave: float ``[..., S]``.
        orig_rate: sampling rate of ``wave`` (Hz, integer).
        new_rate: wanted sampling rate (Hz, integer).

    Returns:
        ``[..., round(S * new_rate / orig_rate)]`` (at least 1 sample), same dtype as ``wave``.

    Example:
        >>> resample(torch.ones(44100), 44100, 16000).shape
        torch.Size([16000])
    """
    if orig_rate == new_rate:
        return wave
    common = math.gcd(orig_rate, new_rate)
    up, down = new_rate // common, orig_rate // common
    n = wave.shape[-1]
    out_length = max(1, round(n * up / down))
    blocks = _smooth_at_least(math.ceil(n / down))
    n_in, n_out = blocks * down, blocks * up
    padded = torch.nn.functional.pad(wave.to(torch.float64), (0, n_in - n))
    spectrum = torch.fft.rfft(padded, dim=-1)
    kept = torch.zeros(*wave.shape[:-1], n_out // 2 + 1, dtype=spectrum.dtype)
    shared = min(n_in, n_out)
    kept[..., : shared // 2 + 1] = spectrum[..., : shared // 2 + 1]
    if shared % 2 == 0:
        # the Nyquist bin of the shorter signal stands for both +f and -f of the longer one
        kept[..., shared // 2] *= 2.0 if n_out < n_in else 0.5
    resampled = torch.fft.irfft(kept, n=n_out, dim=-1) * (n_out / n_in)
    return resampled[..., :out_length].to(wave.dtype)


MAX_SAMPLE_RATE = 384_000
"""The highest ``sample_rate`` option (Hz)."""

MAX_FILE_RATE = 768_000
"""The highest sampling rate an audio file's header may claim (Hz); a file claiming more is
refused before its samples are read."""

MAX_SECONDS = 600.0
"""The longest ``max_seconds`` option."""

MAX_FFT = 65_536
"""The largest ``n_fft`` and ``hop_length``."""

MAX_MELS = 1024
"""The most mel bands."""

MAX_AMPLITUDE = 1e6
"""The largest magnitude of an audio sample read (a float recording's lie within ±1; PCM is
read scaled to ±1): a larger one overflows the spectrogram's float32 power."""


def _option(name: str, value: Any, kind: type, minimum: float, maximum: float, *,
            strict: bool = True) -> Any:
    ok = isinstance(value, kind | int) if kind is float else isinstance(value, kind)
    if isinstance(value, bool) or not ok or not math.isfinite(value) or (
        value <= minimum if strict else value < minimum
    ) or value > maximum:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"audio {name} must be a number {bound} and <= {maximum}, "
                          f"got {value!r}", fix=f"set {name} to a number {bound}, at most "
                          f"{maximum}")
    return kind(value)


@loaders.register("audio")
class AudioLoader(StandardisingState, ModalityLoader):
    """Decodes audio files into normalised log-mel spectrograms.

    Args:
        sample_rate: rate every clip is resampled to (Hz), default 16000.
        n_mels: mel bands, default 40.
        n_fft: FFT / window size in samples, default 400 (25 ms at 16 kHz).
        hop_length: samples between frames, default 160 (10 ms at 16 kHz).
        max_seconds: clips are cut to this length, default 4.0.
        f_min: lowest frequency of the mel filters (Hz), default 0.
        f_max: highest frequency of the mel filters (Hz), default None = ``sample_rate / 2``.
        normalize: standardise each mel band with meta-train statistics (default True).

    Fitted state: ``mean_`` and ``std_``, one float per mel band (None without ``normalize``).

    Example:
        >>> import tempfile, pathlib, numpy as np, soundfile
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> tone = np.sin(2 * np.pi * 440 * np.arange(8000) / 8000).astype("float32")
        >>> soundfile.write(root / "a.wav", tone, 8000)
        >>> loader = AudioLoader(sample_rate=8000, n_fft=256, hop_length=80, n_mels=20)
        >>> batch = loader.decode(["a.wav", None], DecodeContext(root, "s.csv", [1, 2], "sound"))
        >>> batch.values.shape, batch.lengths.tolist(), batch.present.tolist()
        (torch.Size([2, 20, 101]), [101, 0], [True, False])
    """

    kind: ClassVar[str] = "audio"

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        n_mels: int = 40,
        n_fft: int = 400,
        hop_length: int = 160,
        max_seconds: float = 4.0,
        f_min: float = 0.0,
        f_max: float | None = None,
        normalize: bool = True,
    ) -> None:
        self.sample_rate = _option("sample_rate", sample_rate, int, 0, MAX_SAMPLE_RATE)
        self.n_mels = _option("n_mels", n_mels, int, 0, MAX_MELS)
        self.n_fft = _option("n_fft", n_fft, int, 1, MAX_FFT)
        self.hop_length = _option("hop_length", hop_length, int, 0, MAX_FFT)
        self.max_seconds = _option("max_seconds", max_seconds, float, 0, MAX_SECONDS)
        self.f_min = _option("f_min", f_min, float, 0, MAX_SAMPLE_RATE, strict=False)
        self.f_max = None if f_max is None else _option("f_max", f_max, float, 0,
                                                        MAX_SAMPLE_RATE)
        self.normalize = check_normalize("audio", normalize)
        top = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not self.f_min < top <= self.sample_rate / 2:
            raise ConfigError(
                f"audio needs f_min < f_max <= sample_rate / 2, got f_min={self.f_min}, "
                f"f_max={top}, sample_rate={self.sample_rate}",
                fix="lower f_min, or set f_max at most half the sample rate",
            )
        self.max_samples = max(1, round(self.max_seconds * self.sample_rate))
        self.max_frames = int(self._frames(self.max_samples))
        self.filterbank = mel_filterbank(sample_rate=self.sample_rate, n_fft=self.n_fft,
                                         n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max)
        self._clear_statistics()

    def fit(self, cells: Sequence[Cell], context: DecodeContext) -> None:
        """Learn each mel band's mean / std over all frames of the meta-train clips."""
        if self.normalize:
            total = torch.zeros(self.n_mels, dtype=torch.float64)
            squares = torch.zeros(self.n_mels, dtype=torch.float64)
            count = 0
            for part, sub in in_chunks(cells, context, _CHUNK):
                logmel, _, lengths = self._read_batch(part, sub)
                values = logmel.to(torch.float64)  # frames past each length are zeros
                total += values.sum(dim=(0, 2))
                squares += values.square().sum(dim=(0, 2))
                count += int(lengths.sum())
            if count == 0:
                warn_identity("audio", "audio", context.column)
                self.mean_, self.std_ = [0.0] * self.n_mels, [1.0] * self.n_mels
            else:
                self.mean_, self.std_ = mean_and_std(total, squares, count)
        self.fitted_ = True

    def decode(self, cells: Sequence[Cell], context: DecodeContext) -> ModalityBatch:
        """Log-mel spectrograms float ``[B, n_mels, frames]`` (``frames`` = longest clip in the
        batch, at least 1), ``lengths`` long ``[B]`` frames (0 when absent), ``present`` bool
        ``[B]``. Missing, undecodable, empty or non-finite files are reported as `DatasetError`
        naming the file, row and column."""
        logmel, present, lengths = self._read_batch(cells, context)
        if self.normalize and self.mean_ is not None and self.std_ is not None:
            mean = torch.tensor(self.mean_, dtype=torch.float32).view(1, -1, 1)
            std = torch.tensor(self.std_, dtype=torch.float32).view(1, -1, 1)
            valid = torch.arange(logmel.shape[2]).view(1, 1, -1) < lengths.view(-1, 1, 1)
            logmel = (logmel - mean) / std * valid
        return ModalityBatch(logmel, present, lengths)

    def input_info(self) -> dict[str, Any]:
        """``{"n_mels": n_mels, "max_frames": frames of a max_seconds clip, "sample_rate": sr}``."""
        return {"n_mels": self.n_mels, "max_frames": self.max_frames,
                "sample_rate": self.sample_rate}

    def state_dict(self) -> dict[str, Any]:
        """Options and fitted statistics as JSON-able data."""
        return {
            "kind": self.kind,
            "options": {"sample_rate": self.sample_rate, "n_mels": self.n_mels,
                        "n_fft": self.n_fft, "hop_length": self.hop_length,
                        "max_seconds": self.max_seconds, "f_min": self.f_min,
                        "f_max": self.f_max, "normalize": self.normalize},
            **self._statistics_state(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AudioLoader:
        """Rebuild the loader `state_dict` describes."""
        loader = cls(**state["options"])
        loader._restore_statistics(state, loader.n_mels)
        return loader

    # -- decoding -------------------------------------------------------------------------

    def _read_batch(
        self, cells: Sequence[Cell], context: DecodeContext
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Un-normalised log-mels ``[B, n_mels, frames]`` (zeros past each length), present,
        lengths."""
        waves: list[Tensor | None] = [None] * len(cells)
        for i, _, wave in read_media(cells, context, self._read_file):
            waves[i] = wave
        present = torch.tensor([w is not None for w in waves], dtype=torch.bool)
        samples = torch.tensor([0 if w is None else w.shape[0] for w in waves], dtype=torch.long)
        lengths = torch.where(present, self._frames(samples), 0)
        width = max(1, int(lengths.max()) if len(waves) else 1)
        out = torch.zeros(len(waves), self.n_mels, width)
        for start in range(0, len(waves), _CHUNK):
            chunk = [(i, w) for i, w in enumerate(waves[start:start + _CHUNK], start)
                     if w is not None]
            if not chunk:
                continue
            longest = max(w.shape[0] for _, w in chunk)
            padded = torch.zeros(len(chunk), longest)
            for row, (_, wave) in enumerate(chunk):
                padded[row, : wave.shape[0]] = wave
            logmel = log_mel_spectrogram(padded, filterbank=self.filterbank, n_fft=self.n_fft,
                                         hop_length=self.hop_length)
            index = torch.tensor([i for i, _ in chunk])
            valid = torch.arange(logmel.shape[2]).view(1, 1, -1) < lengths[index].view(-1, 1, 1)
            out[index, :, : logmel.shape[2]] = logmel * valid
        return out, present, lengths

    def _frames(self, samples: int | Tensor) -> int | Tensor:
        return frame_count(samples, n_fft=self.n_fft, hop_length=self.hop_length)

    def _read_file(self, path: Path, root: Path | str) -> Tensor:
        """The first ``max_seconds`` of one file as a mono float32 wave at ``sample_rate``."""
        fix = "replace it with a valid WAV / FLAC / OGG file, or leave the cell empty"
        if not path.exists():
            raise file_not_found("audio", root)
        try:
            with soundfile.SoundFile(path) as sound:
                rate = sound.samplerate
                if not 1 <= rate <= MAX_FILE_RATE or not 1 <= sound.channels <= 64:
                    raise DecodeFailure(
                        f"audio header claims {rate} Hz and {sound.channels} channel(s); at "
                        f"most {MAX_FILE_RATE} Hz and 64 channels are read", fix)
                # a little more than needed, so that resampling's edge effect is cut away
                wanted = math.ceil(self.max_seconds * rate) + rate // 100
                data = sound.read(frames=wanted, dtype="float32", always_2d=True)
        except DecodeFailure:
            raise
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError
            raise DecodeFailure(f"cannot decode audio: {exc}", fix) from exc
        if data.shape[0] == 0:
            raise DecodeFailure("audio file has no samples", fix)
        finite = np.isfinite(data)
        if not finite.all():
            sample, channel = np.argwhere(~finite)[0]
            raise DecodeFailure(
                f"audio holds NaN or infinite values (first at sample {int(sample)}, "
                f"channel {int(channel)})",
                "re-export the recording with finite sample values",
            )
        loud = np.abs(data) > MAX_AMPLITUDE
        if loud.any():
            sample, channel = np.argwhere(loud)[0]
            raise DecodeFailure(
                f"audio sample {int(sample)}, channel {int(channel)} is "
                f"{float(data[sample, channel]):g}, beyond ±{MAX_AMPLITUDE:,.0f}",
                "re-export the recording with samples within -1..1",
            )
        wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))
        wave = resample(wave, rate, self.sample_rate)
        return wave[: self.max_samples]

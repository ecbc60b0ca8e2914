"""Tests of the audio loader, the FFT resampler and the mel filterbank."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from metamodal.data.loaders import AudioLoader, DecodeContext, loaders
from metamodal.data.loaders.audio import resample
from metamodal.data.loaders.mel import (
    LOG_FLOOR,
    frame_count,
    hz_to_mel,
    log_mel_spectrogram,
    mel_band_edges,
    mel_filterbank,
    mel_to_hz,
)
from metamodal.errors import ConfigError, DatasetError

SMALL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 80, "n_mels": 24}


def context(root: Path, n: int, problems: list[DatasetError] | None = None) -> DecodeContext:
    return DecodeContext(root, "samples.csv", list(range(1, n + 1)), "sound", problems)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)
            ).astype(np.float32)


def peak_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(wave.shape[0], dtype=torch.float64))
    return float(spectrum.abs().argmax()) * rate / wave.shape[0]


def nearest_band(freq: float, n_mels: int, f_max: float) -> int:
    centres = mel_band_edges(n_mels, 0.0, f_max)[1:-1]
    return int((centres - freq).abs().argmin())


def test_registered_under_kind() -> None:
    assert isinstance(loaders.create("audio", **SMALL), AudioLoader)


def test_mel_scale_round_trips_and_matches_htk() -> None:
    assert float(hz_to_mel(1000.0)) == pytest.approx(1000.0, abs=0.1)
    assert float(hz_to_mel(0.0)) == 0.0
    assert float(mel_to_hz(hz_to_mel(3210.0))) == pytest.approx(3210.0)


def test_filterbank_shape_triangles_and_monotone_centres() -> None:
    bank = mel_filterbank(sample_rate=16000, n_fft=400, n_mels=40)
    assert bank.shape == (40, 201)
    assert (bank >= 0).all() and (bank <= 1).all() and (bank.amax(dim=1) > 0.5).all()
    edges = mel_band_edges(40, 0.0, 8000.0)
    assert edges[0] == 0 and float(edges[-1]) == pytest.approx(8000.0)
    assert (edges.diff() > 0).all()
    assert (edges.diff()[1:] >= edges.diff()[:-1]).all()  # bands widen with frequency
    peaks = bank.argmax(dim=1)
    assert (peaks.diff() > 0).all()
    freqs = torch.linspace(0, 8000, 201, dtype=torch.float64)
    assert bank[:, freqs > 8000 * 0.999].sum() < 1e-6  # the last band falls to 0 at f_max


def test_filterbank_respects_f_min_f_max_and_warns_on_empty_bands() -> None:
    bank = mel_filterbank(sample_rate=16000, n_fft=512, n_mels=10, f_min=300.0, f_max=4000.0)
    freqs = torch.linspace(0, 8000, 257)
    assert bank[:, (freqs <= 300) | (freqs >= 4000)].sum() == 0
    with pytest.warns(UserWarning, match="no FFT bin"):
        mel_filterbank(sample_rate=16000, n_fft=64, n_mels=64)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3000.0, 6500.0])
def test_pure_tone_peaks_in_the_band_that_contains_it(freq: float) -> None:
    bank = mel_filterbank(sample_rate=16000, n_fft=400, n_mels=40)
    wave = torch.from_numpy(tone(freq, 16000, 0.5))[None]
    logmel = log_mel_spectrogram(wave, filterbank=bank, n_fft=400, hop_length=160)
    band = int(logmel[0, :, 5:-5].mean(dim=1).argmax())
    edges = mel_band_edges(40, 0.0, 8000.0)
    assert edges[band] < freq < edges[band + 2]
    assert band == nearest_band(freq, 40, 8000.0)


@pytest.mark.parametrize("n_fft", [400, 255])
def test_frame_count_and_batch_padding_do_not_change_frames(n_fft: int) -> None:
    bank = mel_filterbank(sample_rate=16000, n_fft=n_fft, n_mels=20)
    short = torch.randn(1234)
    alone = log_mel_spectrogram(short[None], filterbank=bank, n_fft=n_fft, hop_length=100)
    assert alone.shape[2] == frame_count(1234, n_fft=n_fft, hop_length=100)
    batch = torch.zeros(2, 3000)
    batch[0, :1234] = short
    batch[1] = torch.randn(3000)
    together = log_mel_spectrogram(batch, filterbank=bank, n_fft=n_fft, hop_length=100)
    assert torch.allclose(together[0, :, : alone.shape[2]], alone[0], atol=1e-4)


@pytest.mark.parametrize(("orig", "new", "freq"), [(44100, 16000, 3000.0), (8000, 16000, 1000.0),
                                                    (22050, 16000, 440.0), (16000, 8000, 2500.0)])
def test_resample_keeps_a_tones_frequency_and_length(orig: int, new: int, freq: float) -> None:
    wave = torch.from_numpy(tone(freq, orig, 1.0))
    out = resample(wave, orig, new)
    assert out.shape == (new,) and out.dtype == torch.float32
    assert peak_hz(out, new) == pytest.approx(freq, abs=1.5)
    expected = 0.5 * torch.sin(2 * math.pi * freq * torch.arange(new) / new)
    assert (out - expected)[100:-100].abs().max() < 0.01


def test_resample_does_not_alias_when_downsampling() -> None:
    wave = torch.from_numpy(tone(12000.0, 44100, 0.5))  # above the new Nyquist (8 kHz)
    out = resample(wave, 44100, 16000)
    assert out.abs()[50:-50].max() < 0.02  # linear interpolation would alias it to 4 kHz
    assert torch.equal(resample(wave, 44100, 44100), wave)


def test_loader_frames_lengths_padding_and_truncation(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "half.wav", tone(1000, 8000, 0.5), 8000)
    soundfile.write(tmp_path / "long.flac", tone(1000, 8000, 3.0), 8000)
    loader = AudioLoader(**SMALL, max_seconds=1.0, normalize=False)
    batch = loader.decode(["half.wav", None, "long.flac"], context(tmp_path, 3))
    assert batch.values.shape == (3, 24, 101)
    assert batch.lengths.tolist() == [51, 0, 101]
    assert batch.present.tolist() == [True, False, True]
    assert batch.values[0, :, 51:].abs().sum() == 0 and batch.values[1].abs().sum() == 0
    assert loader.input_info() == {"n_mels": 24, "max_frames": 101, "sample_rate": 8000}


def test_loader_resamples_and_mixes_channels_to_mono(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "t.wav", tone(1000, 16000, 0.5), 16000)
    wave = tone(700, 8000, 0.5)
    soundfile.write(tmp_path / "cancel.wav", np.stack([wave, -wave], axis=1), 8000,
                    subtype="FLOAT")
    loader = AudioLoader(**SMALL, normalize=False)
    batch = loader.decode(["t.wav", "cancel.wav"], context(tmp_path, 2))
    assert batch.lengths.tolist() == [51, 51]  # 0.5 s at the loader's 8 kHz
    band = int(batch.values[0, :, 5:-5].mean(dim=1).argmax())
    assert band == nearest_band(1000.0, 24, 4000.0)
    assert torch.allclose(batch.values[1], torch.full((24, 51), math.log(LOG_FLOOR)))


def test_fit_standardises_each_mel_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = []
    for k, freq in enumerate([300, 900, 2000]):
        wave = tone(freq, 8000, 0.3 + 0.2 * k) + 0.05 * rng.standard_normal(
            int(8000 * (0.3 + 0.2 * k))).astype(np.float32)
        soundfile.write(tmp_path / f"{k}.wav", wave, 8000)
        names.append(f"{k}.wav")
    loader = AudioLoader(**SMALL)
    loader.fit([*names, None], context(tmp_path, 4))
    batch = loader.decode(names, context(tmp_path, 3))
    frames = torch.cat([batch.values[i, :, : batch.lengths[i]] for i in range(3)], dim=1)
    assert torch.allclose(frames.mean(dim=1), torch.zeros(24), atol=1e-3)
    assert torch.allclose(frames.std(dim=1, unbiased=False), torch.ones(24), atol=1e-3)
    assert batch.values[0, :, batch.lengths[0]:].abs().sum() == 0


def test_errors_name_the_file_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "bad.wav").write_bytes(b"RIFF but not really a wave file")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 8000)
    nan = tone(440, 8000, 0.1)
    nan[17] = np.nan
    soundfile.write(tmp_path / "nan.wav", nan, 8000, subtype="FLOAT")
    loud = tone(440, 8000, 0.1)
    loud[23] = 1e30  # finite, but its spectrogram's power would overflow float32
    soundfile.write(tmp_path / "loud.wav", loud, 8000, subtype="FLOAT")
    soundfile.write(tmp_path / "ok.wav", tone(440, 8000, 0.1), 8000)
    cells = ["missing.wav", "bad.wav", "empty.wav", "nan.wav", "loud.wav", "ok.wav"]
    for row, (cell, message) in enumerate(zip(cells[:5], ["not found", "cannot decode",
                                                          "no samples", "sample 17",
                                                          "sample 23, channel 0 is 1e[+]30"],
                                              strict=True), start=1):
        with pytest.raises(DatasetError, match=message) as info:
            AudioLoader(**SMALL).decode([None] * (row - 1) + [cell], context(tmp_path, row))
        assert (info.value.file, info.value.row, info.value.column) == (cell, row, "sound")
    problems: list[DatasetError] = []
    batch = AudioLoader(**SMALL).decode(cells, context(tmp_path, 6, problems))
    assert [p.file for p in problems] == cells[:5]
    assert batch.present.tolist() == [False, False, False, False, False, True]


def test_state_dict_round_trip_decodes_identically(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "a.wav", tone(500, 8000, 0.4), 8000)
    soundfile.write(tmp_path / "b.wav", tone(1500, 11025, 0.2), 11025)
    loader = AudioLoader(**SMALL, f_min=50.0, f_max=3800.0)
    loader.fit(["a.wav", "b.wav"], context(tmp_path, 2))
    again = AudioLoader.from_state(json.loads(json.dumps(loader.state_dict())))
    assert again.is_fitted and again.state_dict() == loader.state_dict()
    first = loader.decode(["b.wav", None, "a.wav"], context(tmp_path, 3))
    second = again.decode(["b.wav", None, "a.wav"], context(tmp_path, 3))
    assert torch.equal(first.values, second.values)
    assert torch.equal(first.lengths, second.lengths)


def test_decode_before_fit_is_unnormalised(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "a.wav", tone(500, 8000, 0.2), 8000)
    unfitted = AudioLoader(**SMALL)
    raw = AudioLoader(**SMALL, normalize=False)
    assert not unfitted.is_fitted
    assert torch.equal(unfitted.decode(["a.wav"], context(tmp_path, 1)).values,
                       raw.decode(["a.wav"], context(tmp_path, 1)).values)


@pytest.mark.parametrize("options", [{"f_max": 9000.0}, {"sample_rate": 0}, {"n_mels": 2.0},
                                     {"max_seconds": -1.0}, {"f_min": 9000.0}])
def test_invalid_options_raise_config_error(options: dict) -> None:
    with pytest.raises(ConfigError):
        AudioLoader(**options)

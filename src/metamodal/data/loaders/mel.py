"""Mel filterbank and log-mel spectrogram, built on ``torch.stft`` (no torchaudio needed).

The mel scale is the HTK one, ``mel = 2595 * log10(1 + hz / 700)`` (Young et al., 2006, "The
HTK Book"); filters are triangles on a continuous frequency axis with peak 1 and no area
normalisation, as ``torchaudio.functional.melscale_fbanks(norm=None, mel_scale="htk")``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

LOG_FLOOR = 1e-10
"""Power floor before the logarithm: silence maps to ``log(1e-10)`` (about -23) instead of -inf."""


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """Frequency in Hz -> HTK mel: ``2595 * log10(1 + hz / 700)``.

    Example:
        >>> round(float(hz_to_mel(1000.0)), 1)
        1000.0
    """
    hz = torch.as_tensor(hz, dtype=torch.float64)
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: Tensor | float) -> Tensor:
    """HTK mel -> frequency in Hz, the inverse of `hz_to_mel`.

    Example:
        >>> round(float(mel_to_hz(hz_to_mel(440.0))), 6)
        440.0
    """
    mel = torch.as_tensor(mel, dtype=torch.float64)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_band_edges(n_mels: int, f_min: float, f_max: float) -> Tensor:
    """The ``n_mels + 2`` frequencies (Hz, float64) that delimit the triangular filters.

    Filter ``k`` rises from ``edges[k]`` to its centre ``edges[k + 1]`` and falls to zero at
    ``edges[k + 2]``; the edges are equally spaced on the mel scale.

    Example:
        >>> mel_band_edges(2, 0.0, 8000.0).shape
        torch.Size([4])
    """
    mels = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                          dtype=torch.float64)
    return mel_to_hz(mels)


def mel_filterbank(
    *, sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> Tensor:
    """Triangular mel filters as a matrix that maps a power spectrum to mel band energies.

    Args:
        sample_rate: sampling rate of the audio in Hz.
        n_fft: FFT size; the spectrum has ``n_fft // 2 + 1`` bins from 0 to ``sample_rate / 2``.
        n_mels: number of mel bands.
        f_min: lowest frequency covered (Hz).
        f_max: highest frequency covered (Hz); ``None`` means ``sample_rate / 2``.

    Returns:
        float32 ``[n_mels, n_fft // 2 + 1]``; ``filterbank @ power`` gives band energies. A
        `UserWarning` is issued when a band is narrower than one FFT bin (all-zero row).

    Example:
        >>> mel_filterbank(sample_rate=16000, n_fft=400, n_mels=40).shape
        torch.Size([40, 201])
    """
    nyquist = sample_rate / 2
    f_max = nyquist if f_max is None else float(f_max)
    if not 0.0 <= f_min < f_max <= nyquist:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {f_min}, {f_max}")
    freqs = torch.linspace(0.0, nyquist, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_band_edges(n_mels, f_min, f_max)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    bank = torch.clamp(torch.minimum(rising, falling), min=0.0)
    empty = (bank.amax(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        warnings.warn(
            f"mel bands {empty} contain no FFT bin (n_mels={n_mels} is too many for "
            f"n_fft={n_fft}); use fewer mels or a larger n_fft",
            stacklevel=2,
        )
    return bank.to(torch.float32)


def frame_count(samples: int | Tensor, *, n_fft: int, hop_length: int) -> int | Tensor:
    """Frames `log_mel_spectrogram` yields for ``samples`` samples (``1 + samples // hop_length``
    when ``n_fft`` is even).

    Example:
        >>> frame_count(16000, n_fft=400, hop_length=160)
        101
    """
    return 1 + (samples + 2 * (n_fft // 2) - n_fft) // hop_length


def log_mel_spectrogram(
    waves: Tensor, *, filterbank: Tensor, n_fft: int, hop_length: int
) -> Tensor:
    """Natural-log mel band energies of a batch of waveforms.

    Frames are centred (frame ``t`` covers samples ``t * hop - n_fft // 2`` onwards) with zero
    padding, and a periodic Hann window of ``n_fft`` samples. Because the padding is zeros, a clip
    padded with trailing zeros inside a batch gives exactly the frames it gives alone, up to its
    `frame_count`.

    Args:
        waves: float ``[B, samples]``.
        filterbank: ``[n_mels, n_fft // 2 + 1]`` from `mel_filterbank`.
        n_fft: FFT and window size.
        hop_length: samples between frames.

    Returns:
        float32 ``[B, n_mels, frames]`` (`frame_count` of ``samples``):
        ``log(max(mel power, 1e-10))``.

    Example:
        >>> fb = mel_filterbank(sample_rate=16000, n_fft=400, n_mels=40)
        >>> log_mel_spectrogram(torch.zeros(2, 1600), filterbank=fb, n_fft=400,
        ...                     hop_length=160).shape
        torch.Size([2, 40, 11])
    """
    window = torch.hann_window(n_fft, dtype=waves.dtype, device=waves.device)
    spec = torch.stft(
        waves,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=n_fft,
        window=window,
        center=True,
        pad_mode="constant",
        return_complex=True,
    )
    power = spec.real.square() + spec.imag.square()  # [B, n_freqs, frames]
    mel = torch.matmul(filterbank.to(power.dtype), power)  # [B, n_mels, frames]
    return torch.log(torch.clamp(mel, min=LOG_FLOOR)).to(torch.float32)


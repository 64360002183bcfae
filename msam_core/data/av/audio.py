"""WAV file -> log-magnitude spectrogram ``[1, F, T]``, with scipy and numpy only.

The defaults follow the published audio-visual imbalance code (OGM-GE and its successors):
22 050 Hz, 3 s per clip (shorter clips are repeated, longer ones cut), a 512-point STFT with
hop 353, and ``log(|STFT| + 1e-7)``, which gives a 257 x 188 map.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class AudioConfig:
    """How a clip becomes a spectrogram.

    ``sample_rate`` (Hz) the audio is resampled to; ``duration`` (s) every clip is brought to;
    ``n_fft`` and ``hop_length`` (samples) of the STFT; ``spec_size`` = (F, T) to resize the
    log-spectrogram to (bilinear), or None to keep the STFT's own size.
    """

    sample_rate: int = 22050
    duration: float = 3.0
    n_fft: int = 512
    hop_length: int = 353
    spec_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.duration <= 0:
            raise ValueError(
                f"sample_rate and duration must be positive, got {self.sample_rate}, "
                f"{self.duration}"
            )
        if self.n_fft < 2 or self.hop_length < 1:
            raise ValueError(
                f"need n_fft >= 2 and hop_length >= 1, got {self.n_fft}, {self.hop_length}"
            )
        if self.n_samples < self.n_fft // 2 + 1:
            raise ValueError(
                f"duration {self.duration} s at {self.sample_rate} Hz gives {self.n_samples} "
                f"samples, fewer than the STFT needs for n_fft={self.n_fft}"
            )
        if self.spec_size is not None:
            size = tuple(int(s) for s in self.spec_size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(
                    f"spec_size must be (F, T) with positive entries, got {self.spec_size}"
                )
            object.__setattr__(self, "spec_size", size)

    @property
    def n_samples(self) -> int:
        """Samples per clip after resampling and fitting to ``duration``."""
        return round(self.sample_rate * self.duration)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(1, F, T)`` of the spectrogram this config produces."""
        if self.spec_size is not None:
            return (1, *self.spec_size)
        padded = self.n_samples + 2 * (self.n_fft // 2)  # centred frames
        return (1, self.n_fft // 2 + 1, 1 + (padded - self.n_fft) // self.hop_length)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 in [-1, 1] and its sample rate.

    Integer PCM is scaled by its full range; several channels are averaged.  Raises
    ValueError (from scipy) for a file that is not a readable WAV, and for an empty one.
    """
    from scipy.io import wavfile  # imported here: scipy.io is slow to import, as scipy.signal

    rate, data = wavfile.read(str(path))
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        if info.min == 0:  # unsigned 8-bit PCM is centred on 128
            data = (data.astype(np.float64) - (info.max + 1) / 2) / ((info.max + 1) / 2)
        else:
            data = data.astype(np.float64) / -float(info.min)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if data.size == 0:
        raise ValueError("the WAV file holds no samples")
    return data, int(rate)


def resample(wave: np.ndarray, rate_from: int, rate_to: int) -> np.ndarray:
    """Resample a 1-D signal by the rational factor ``rate_to / rate_from`` (polyphase)."""
    if rate_from == rate_to:
        return wave
    # imported here: scipy.signal is slow to import and only resampling needs it
    from scipy.signal import resample_poly

    g = gcd(rate_from, rate_to)
    return resample_poly(wave, rate_to // g, rate_from // g).astype(np.float32)


def fit_length(wave: np.ndarray, n_samples: int) -> np.ndarray:
    """Repeat a short clip end to end, then cut to exactly ``n_samples``."""
    repeats = -(-n_samples // len(wave))
    return np.tile(wave, repeats)[:n_samples]


def log_spectrogram(wave: Tensor | np.ndarray, config: AudioConfig) -> Tensor:
    """``log(|STFT| + 1e-7)`` of a 1-D signal (periodic Hann window, centred frames with
    reflect padding, as ``torch.stft(center=True)``) -> float32 ``[1, F, T]``.

    Computed with numpy's FFT in float64: the result does not depend on how many threads
    torch uses, so a clip read in a DataLoader worker (one thread) equals the same clip read
    in the main process, bit for bit.
    """
    signal = np.asarray(wave, dtype=np.float64)
    n_fft, hop = config.n_fft, config.hop_length
    padded = np.pad(signal, n_fft // 2, mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop
    starts = hop * np.arange(n_frames)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    magnitude = np.abs(np.fft.rfft(padded[starts + np.arange(n_fft)] * window, axis=1))
    spec = torch.from_numpy(np.log(magnitude.T + 1e-7).astype(np.float32)).unsqueeze(0)
    if config.spec_size is not None and tuple(spec.shape[1:]) != config.spec_size:
        spec = F.interpolate(
            spec.unsqueeze(0), size=config.spec_size, mode="bilinear", align_corners=False
        ).squeeze(0)
    return spec


def wav_to_spectrogram(path: str | Path, config: AudioConfig) -> Tensor:
    """Read, resample, fit to ``config.duration``, clip to [-1, 1], and transform one WAV."""
    wave, rate = read_wav(path)
    wave = np.clip(fit_length(resample(wave, rate, config.sample_rate), config.n_samples), -1, 1)
    return log_spectrogram(wave, config)

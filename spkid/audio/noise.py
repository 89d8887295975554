"""Additive noise for training: built-in synthetic sources, a bank of user noise recordings, mixing at an SNR.

Every generator returns unit-RMS rows ``(n, S)`` drawn from the ``torch.Generator`` it is given; ``mix_at_snr``
scales them against each utterance's own power over its real samples. The held-out test conditions
(``benchmarks/degrade.py``) use other generators (numpy IIR filters, other hum shapes), so a model cannot
pass them by having learnt one synthetic recipe.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spkid.audio.channel import band_gains, fast_len, valid_mask
from spkid.audio.io import load_audio
from spkid.errors import DataError

SAMPLE_RATE = 16000
_TABLE = 2048          # wavetable points per hum period (>= 20 per cycle of a 4 kHz harmonic at 40 Hz)


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.square().mean(dim=1, keepdim=True).sqrt().clamp(min=1e-8)


def coloured_noise(n: int, s: int, beta: torch.Tensor, g: torch.Generator,
                   sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """``1/f^beta`` power-law noise ``(n, S)``, one exponent per row (``beta`` ``(n,)``: 0 white, 1 pink, 2 brown),
    shaped in the frequency domain from Gaussian white noise; flat below 20 Hz so brown noise has no DC drift."""
    m = fast_len(s)
    white = torch.randn(n, m, generator=g)
    freqs = torch.fft.rfftfreq(m, 1.0 / sample_rate).clamp(min=20.0)                 # (m/2 + 1,)
    shape = freqs[None, :] ** (-beta[:, None] / 2.0)                                  # amplitude ~ f^(-beta/2)
    return _unit_rms(torch.fft.irfft(torch.fft.rfft(white) * shape, n=m)[:, :s])


def hum_noise(n: int, s: int, g: torch.Generator, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Hum and engine-like harmonic noise ``(n, S)``: a fundamental log-uniform in 40-300 Hz with harmonics
    up to 4 kHz falling as ``k^-alpha`` (alpha 0.5-2), random phases, a slow +-1 % pitch wobble, and a
    broadband floor 25-40 dB down."""
    u = torch.rand(n, 4, generator=g)
    f0 = 40.0 * (300.0 / 40.0) ** u[:, 0]                                             # (n,)
    alpha = 0.5 + 1.5 * u[:, 1]
    # one period as a wavetable (harmonics summed by an inverse FFT), then read at a wobbling phase
    k = torch.arange(1, _TABLE // 2, dtype=torch.float32)                            # (H,)
    amp = k[None, :] ** (-alpha[:, None]) * (k[None, :] * f0[:, None] < 4000.0)      # (n, H)
    phase = 2 * math.pi * torch.rand(n, k.shape[0], generator=g)
    spec = torch.zeros(n, _TABLE // 2 + 1, dtype=torch.complex64)
    spec[:, 1:_TABLE // 2] = torch.polar(amp, phase)
    table = torch.fft.irfft(spec, n=_TABLE)                                           # (n, TABLE) one period
    t = torch.arange(s, dtype=torch.float32) / sample_rate                            # (S,)
    wobble = 0.01 * torch.sin(2 * math.pi * (0.2 + 2.0 * u[:, 2:3]) * t[None, :])     # (n, S) relative pitch
    cycles = f0[:, None] * (t[None, :] + torch.cumsum(wobble, dim=1) / sample_rate)   # (n, S) fundamental cycles
    pos = torch.frac(cycles) * _TABLE
    i0 = pos.long() % _TABLE
    w = pos - torch.floor(pos)
    hum = torch.gather(table, 1, i0) * (1 - w) + torch.gather(table, 1, (i0 + 1) % _TABLE) * w
    floor_db = -25.0 - 15.0 * u[:, 3:4]
    return _unit_rms(_unit_rms(hum) + 10.0 ** (floor_db / 20.0) * torch.randn(n, s, generator=g))


def band_noise(n: int, s: int, g: torch.Generator, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited noise ``(n, S)``: white noise kept in one band (lower edge log-uniform 100-4000 Hz, width
    a factor 1.3-4), like fans, air conditioning or a band of machinery."""
    m = fast_len(s)
    u = torch.rand(n, 2, generator=g)
    lo = 100.0 * 40.0 ** u[:, 0]
    hi = torch.clamp(lo * (1.3 + 2.7 * u[:, 1]), max=sample_rate / 2 - 100.0)
    spec = torch.fft.rfft(torch.randn(n, m, generator=g))
    freqs = torch.fft.rfftfreq(m, 1.0 / sample_rate)
    return _unit_rms(torch.fft.irfft(spec * band_gains(freqs, lo, hi, width=50.0), n=m)[:, :s])


def mix_at_snr(wav: torch.Tensor, lengths: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``wav + a * noise`` per row, ``a`` chosen so that the speech-to-noise power ratio over each row's real
    samples is exactly ``snr_db`` ``(B,)``. ``wav``, ``noise`` ``(B, S)``; padding stays zero. Rows whose speech is
    silent (power 0) are returned unchanged."""
    keep = valid_mask(lengths, wav.shape[1]).to(wav.dtype)
    n_valid = keep.sum(dim=1).clamp(min=1)
    p_sig = (wav.square() * keep).sum(dim=1) / n_valid
    noise = noise * keep
    p_noise = (noise.square().sum(dim=1) / n_valid).clamp(min=1e-12)
    scale = torch.sqrt(p_sig / (p_noise * 10.0 ** (snr_db / 10.0)))
    return wav + scale[:, None] * noise


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Achieved SNR in dB of one row: ``clean (S,)`` against ``noisy - clean``."""
    noise = noisy - clean
    return float(10.0 * torch.log10(clean.square().sum() / noise.square().sum().clamp(min=1e-20)))


class NoiseBank:
    """Noise recordings from a folder (e.g. MUSAN ``noise/``), decoded once into one float16 array.

    Args:
        audio: ``(N,)`` all recordings back to back (16 kHz), ``offsets`` ``(R + 1,)`` where each starts.
    """

    def __init__(self, audio: torch.Tensor, offsets: torch.Tensor, names: list[str]):
        self.audio, self.offsets, self.names = audio, offsets, names

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, *, max_files: int = 2000, seed: int = 0,
                    progress: bool = False) -> "NoiseBank":
        """Every audio file under ``folder`` (at most ``max_files``, a seeded random choice), resampled to 16 kHz,
        each scaled to unit RMS. Raises ``DataError`` when the folder holds no usable audio."""
        from spkid.data.scan import sample
        files = sample(folder, max_files, seed, "noise")
        chunks, names = [], []
        for f in tqdm(files, desc="noise", unit="file", disable=not progress):
            try:
                w = load_audio(f)
            except DataError:
                continue                    # an unreadable noise file is simply not used
            rms = float(w.square().mean().sqrt())
            if w.shape[0] >= SAMPLE_RATE // 10 and rms > 1e-6:
                chunks.append((w / rms).to(torch.float16))
                names.append(Path(f).name)
        if not chunks:
            raise DataError(f"{folder}: none of its {len(files)} audio files is usable noise (all unreadable, "
                            "silent or under 0.1 s)")
        offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
        return cls(torch.cat(chunks), offsets, names)

    def __len__(self) -> int:
        return len(self.names)

    def draw(self, n: int, s: int, g: torch.Generator) -> torch.Tensor:
        """``n`` random segments ``(n, S)`` (unit RMS): a random recording, a random start, looped when shorter."""
        idx = torch.randint(len(self), (n,), generator=g)
        lengths = self.offsets[idx + 1] - self.offsets[idx]
        starts = (torch.rand(n, generator=g) * lengths).long()
        return _unit_rms(take_segments(self.audio, self.offsets[idx], lengths, starts, s, loop=True))

    @classmethod
    def synthetic(cls, n: int = 400, seconds: float = 4.0, *, hum_share: float = 0.2, band_share: float = 0.2,
                  colour_min: float = 0.0, colour_max: float = 2.0, seed: int = 0) -> "NoiseBank":
        """``n`` generated clips of ``seconds``: hum (``hum_share`` of them), band-limited noise (``band_share``)
        and coloured noise (the rest, exponent uniform in ``[colour_min, colour_max]``). Drawing a random
        segment of a random clip costs a gather instead of an FFT per item (about 1 s to build 400 clips)."""
        g = torch.Generator().manual_seed(seed)
        m = int(seconds * SAMPLE_RATE)
        n_hum, n_band = round(n * hum_share), round(n * band_share)
        n_col = n - n_hum - n_band
        beta = colour_min + (colour_max - colour_min) * torch.rand(n_col, generator=g)
        kinds = [("hum", n_hum, lambda k: hum_noise(k, m, g)), ("band", n_band, lambda k: band_noise(k, m, g)),
                 ("colour", n_col, lambda k: coloured_noise(k, m, beta, g))]
        clips, names = [], []
        for name, k, make in kinds:
            if k > 0:
                clips.append(make(k).reshape(-1))                                     # (k, m) -> (k m,)
                names += [f"{name}{i}" for i in range(k)]
        return cls(torch.cat(clips).to(torch.float16), torch.arange(n + 1) * m, names)


def take_segments(flat: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, width: int,
                  *, loop: bool) -> torch.Tensor:
    """Segments ``(n, width)`` float32 of recordings stored back to back in ``flat`` ``(N,)`` (any dtype; int16 is
    scaled to [-1, 1]): row ``i`` starts ``starts[i]`` samples into the recording at ``offsets[i]`` of length
    ``lengths[i]``. Past a recording's end the row loops back to its start (``loop``) or is zero.

    Contiguous slice copies (the dtype conversion happens in the copy): cheaper than an index gather, which
    needs an int64 index per sample."""
    out = torch.zeros(len(offsets), width)
    for i, (off, n, a) in enumerate(zip(offsets.tolist(), lengths.tolist(), starts.tolist())):
        pos = 0
        while pos < width and n > 0:
            m = min(width - pos, n - a)
            out[i, pos: pos + m] = flat[off + a: off + a + m]
            pos, a = pos + m, 0
            if not loop:
                break
    return out.mul_(1.0 / 32767.0) if flat.dtype == torch.int16 else out


__all__ = ["coloured_noise", "hum_noise", "band_noise", "mix_at_snr", "snr_db", "NoiseBank", "take_segments"]

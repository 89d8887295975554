"""Overlapped-speech detection: which stretches of a recording hold two voices at once.

``OverlapNet`` maps frames ``(B, T, 40 + bins)`` every 10 ms (``overlap_features``: the HW4 log-mel and, when the
network was built with ``spectrum_bins``, the log power of the lowest bins of a 32 ms FFT, fine enough to resolve
the harmonics of two voices) to overlap logits ``(B, T // 2)`` at 20 ms: the chunk's mean removed per band, two 1-D convolutions (the second with stride 2), a two-layer
bidirectional GRU, a linear head. It is trained on simulated conversations of the training speakers, with
rooms, noise and telephone channels (``python -m spkid.diarization.train_overlap``); the weights ship beside this
module as ``overlap.pt``.

``OverlapDetector.probs(stream, speech)`` scores a file in ``CHUNK_S`` chunks every ``HOP_S`` seconds (each chunk
normalised as in training, the middle of each kept), reading only chunks that hold speech, so memory stays that
of a batch of chunks whatever the file's length. ``regions`` turns the probabilities into overlap stretches.
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spkid.audio.frontend import remove_dc
from spkid.errors import DataError

SAMPLE_RATE = 16000
FRAME_S = 0.02                 # one output frame (two 10 ms feature frames)
FRAME = int(FRAME_S * SAMPLE_RATE)   # samples per output frame
CHUNK_S = 8.0                  # seconds the network sees at once (training chunks have this length)
HOP_S = 6.0                    # chunk step at inference: 1 s of context kept on each side
SHIPPED = Path(__file__).with_name("overlap.pt")
SPECTRUM_FFT = 512             # the fine spectrum's FFT (and Hann window): 32 ms, 31.25 Hz per bin


def overlap_features(wav: torch.Tensor, spectrum_bins: int = 0) -> torch.Tensor:
    """Detector input ``(B, T, 40 + spectrum_bins)`` of equal-length waveforms ``(B, S)``, ``T = S // 160 + 1``: the
    HW4 log-mel, then (``spectrum_bins`` > 0) the natural log of the power of FFT bins ``0 .. spectrum_bins - 1``
    (``SPECTRUM_FFT`` points, 10 ms hop, centred, floor 1e-9). 40 mel bands are 40-90 Hz wide where voices' pitch
    harmonics lie, so two voices at once blur into one; the fine bins keep both harmonic combs."""
    from spkid.audio.frontend import frontend_for
    feats, _ = frontend_for(None)(wav, torch.full((wav.shape[0],), wav.shape[1]))   # (B, S) -> (B, T, 40)
    if spectrum_bins <= 0:
        return feats
    spec = torch.stft(wav.float(), SPECTRUM_FFT, 160, SPECTRUM_FFT, torch.hann_window(SPECTRUM_FFT), center=True,
                      pad_mode="reflect", return_complex=True)[:, :spectrum_bins]    # (B, bins, T)
    fine = torch.log(torch.clamp(spec.real.square() + spec.imag.square(), min=1e-9)).transpose(1, 2)
    t = min(feats.shape[1], fine.shape[1])
    return torch.cat([feats[:, :t], fine[:, :t]], dim=2)                           # (B, T, 40 + bins)


class OverlapNet(nn.Module):
    """``overlap_features`` ``(B, T, n_mels + spectrum_bins)`` -> overlap logits ``(B, ceil(T / 2))``."""

    def __init__(self, n_mels: int = 40, channels: int = 64, hidden: int = 64, spectrum_bins: int = 0):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(n_mels + spectrum_bins, channels, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(channels),
            nn.Conv1d(channels, channels, 5, stride=2, padding=2), nn.ReLU(), nn.BatchNorm1d(channels))
        self.rnn = nn.GRU(channels, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, 1)
        self.config = {"n_mels": n_mels, "channels": channels, "hidden": hidden, "spectrum_bins": spectrum_bins}

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = feats - feats.mean(dim=1, keepdim=True)                      # (B, T, F), per-band mean removed
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)                 # (B, T/2, C)
        x, _ = self.rnn(x)                                               # (B, T/2, 2H)
        return self.head(x).squeeze(-1)                                  # (B, T/2)


def load_detector(path: str | Path | None = None) -> "OverlapDetector":
    """The overlap detector at ``path`` (the shipped ``overlap.pt`` when None)."""
    path = Path(path) if path is not None else SHIPPED
    if not path.is_file():
        raise DataError(f"{path}: overlap detector weights not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        net = OverlapNet(**ck["config"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ck["state_dict"].items()})
    except (RuntimeError, KeyError, TypeError, ValueError, pickle.UnpicklingError, EOFError) as e:
        raise DataError(f"{path}: not an overlap detector checkpoint ({str(e).splitlines()[0]})") from None
    return OverlapDetector(net.eval(), ck.get("meta", {}))


@functools.cache
def shipped_detector() -> "OverlapDetector":
    """The shipped detector, loaded once per process."""
    return load_detector()


class OverlapDetector:
    """A trained ``OverlapNet`` and what its training recorded (``meta``: data, validation precision and recall)."""

    def __init__(self, net: OverlapNet, meta: dict | None = None):
        self.net, self.meta = net, meta or {}

    @torch.no_grad()
    def chunk_probs(self, wavs: np.ndarray) -> np.ndarray:
        """Overlap probabilities ``(B, CHUNK_S / FRAME_S)`` of chunks ``wavs`` ``(B, CHUNK_S * 16000)``."""
        x = torch.from_numpy(np.ascontiguousarray(wavs, dtype=np.float32))
        x = torch.stack([remove_dc(row) for row in x]) if len(x) else x               # a chunk's DC offset, if any
        feats = overlap_features(x, self.net.config["spectrum_bins"])                  # (B, S) -> (B, T, F)
        p = torch.sigmoid(self.net(feats)).numpy()
        return p[:, : int(round(CHUNK_S / FRAME_S))]

    def probs(self, stream, speech: list[tuple[int, int]], *, batch: int = 16) -> np.ndarray:
        """Overlap probability of every ``FRAME_S`` frame of ``stream`` (an ``AudioStream``) ``(ceil(S / 320),)``;
        frames of chunks without speech (``speech``: ``[(start, end)]`` samples) stay 0."""
        n_frames = -(-stream.n_samples // FRAME)
        out = np.zeros(n_frames, dtype=np.float32)
        chunk, hop = int(CHUNK_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
        margin = (chunk - hop) // 2
        seg = np.asarray(speech, dtype=np.int64).reshape(-1, 2)                   # sorted, disjoint
        starts = np.arange(0, max(stream.n_samples - margin, 1), hop)
        first = np.searchsorted(seg[:, 1], starts, side="right")                 # first segment ending after s
        has = first < len(seg)
        has[has] = seg[first[has], 0] < starts[has] + chunk
        starts = starts[has].tolist()
        for i in range(0, len(starts), batch):
            group = starts[i: i + batch]
            p = self.chunk_probs(np.stack([stream.read(s, s + chunk) for s in group]))
            for s, row in zip(group, p):
                lo = 0 if s == 0 else margin                                   # keep the chunk's middle
                f0 = (s + lo) // FRAME
                keep = row[lo // FRAME:]
                out[f0: f0 + keep.size] = keep[: max(0, n_frames - f0)]
        return out


def regions(probs: np.ndarray, threshold: float, *, min_s: float = 0.1, smooth: int = 5) -> list[tuple[float, float]]:
    """Overlap stretches ``[(start_s, end_s)]`` where ``probs`` ``(N,)`` (one per ``FRAME_S``), median-smoothed over
    ``smooth`` frames, is at least ``threshold``, lasting at least ``min_s``."""
    if probs.size == 0:
        return []
    if smooth > 1:
        from scipy.ndimage import median_filter
        probs = median_filter(probs, size=smooth, mode="nearest")
    on = np.concatenate([[False], probs >= threshold, [False]])
    edges = np.flatnonzero(on[1:] != on[:-1])
    return [(a * FRAME_S, b * FRAME_S) for a, b in zip(edges[::2], edges[1::2]) if (b - a) * FRAME_S >= min_s]


__all__ = ["OverlapNet", "overlap_features", "OverlapDetector", "load_detector", "shipped_detector", "regions", "SHIPPED", "FRAME_S", "CHUNK_S"]

"""Waveform -> log-mel features: the HW4 feature definition as one batched ``nn.Module``.

HW4 features: 16 kHz audio, 25 ms periodic Hann window (``n_fft`` 400), 10 ms hop (160 samples),
centred frames with reflect padding (``T = S // 160 + 1``), power spectrum, 40 triangular mel filters
on the HTK mel scale (``2595 * log10(1 + f / 700)``) spanning 0-8 kHz with unit peak (no area
normalisation), power floored at 1e-9, natural log. This reproduces the tensors of
``shared/data/speechocean762`` to float16 rounding.

Batching: a short utterance padded into a batch must give the same frames as alone, so the reflect
padding at each utterance's end is built from that utterance's own ``lengths`` (one gather), not from
the batch's padding.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular filters ``(n_freqs, n_mels)`` with peak 1, centres equally spaced on the HTK mel scale.

    Filter ``m`` rises from centre ``m-1`` to centre ``m`` and falls to centre ``m+1`` (centres include
    the two edges ``f_min`` and ``f_max``), evaluated at the FFT bin frequencies ``linspace(0, sr/2)``.
    """
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel range must satisfy 0 <= f_min < f_max <= sample_rate/2, got {f_min}..{f_max}")
    bins = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)        # (n_freqs,)
    mels = torch.linspace(hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64)
    centres = mel_to_hz(mels)                                                         # (n_mels + 2,)
    widths = centres[1:] - centres[:-1]                                               # (n_mels + 1,)
    slopes = centres[None, :] - bins[:, None]                                         # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """Batched log-mel front end (CPU or GPU; no trainable parameters).

    Args:
        sample_rate (int): input sample rate in Hz. (Default: ``16000``)
        n_fft (int): FFT size; also the Hann window length. (Default: ``400``, 25 ms)
        hop (int): frame shift in samples. (Default: ``160``, 10 ms)
        n_mels (int): number of mel bands F. (Default: ``40``)
        f_min (float), f_max (float): mel range in Hz; ``f_max`` None means ``sample_rate / 2``. (Default: 0, None)
        floor (float): power floor before the log. (Default: ``1e-9``)
    """

    def __init__(self, *, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160, n_mels: int = 40,
                 f_min: float = 0.0, f_max: float | None = None, floor: float = 1e-9):
        super().__init__()
        if n_fft < 2 or hop < 1 or n_mels < 1 or floor <= 0:
            raise ValueError(f"need n_fft >= 2, hop >= 1, n_mels >= 1, floor > 0; got {n_fft}, {hop}, {n_mels}, {floor}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels, self.floor = sample_rate, n_fft, hop, n_mels, floor
        f_max = sample_rate / 2 if f_max is None else f_max
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fbank", mel_filterbank(n_fft // 2 + 1, sample_rate, n_mels, f_min, f_max),
                             persistent=False)                                        # (n_fft/2 + 1, F)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames per utterance for centred framing: ``S // hop + 1``."""
        return torch.div(lengths, self.hop, rounding_mode="floor") + 1

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``wav`` ``(B, S)`` float, ``lengths`` ``(B,)`` samples -> ``(feats (B, T, F), frame_lengths (B,))``.

        ``T = S // hop + 1``; frames past an utterance's ``frame_lengths`` are set to 0 and must be masked
        by the caller. Real frames never depend on samples past ``lengths``.
        """
        if wav.dim() != 2 or lengths.dim() != 1 or lengths.shape[0] != wav.shape[0]:
            raise ValueError("expected wav (B, S) and lengths (B,), got " + str(list(wav.shape)) + " and "
                             + str(list(lengths.shape)))
        lengths = lengths.to(device=wav.device, dtype=torch.long)
        if not torch.jit.is_scripting() and not _is_tracing():
            _check_lengths(lengths, wav.shape[1])                                    # eager only: syncs with GPU
        wav = wav.float()
        half = self.n_fft // 2
        padded = _reflect_pad(wav, lengths, half)                                    # (B, S + n_fft)
        spec = torch.stft(padded, self.n_fft, self.hop, self.n_fft, self.window,
                          center=False, return_complex=True)                        # (B, n_fft/2 + 1, T)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.fbank)                       # (B, T, n_fft/2+1) -> (B, T, F)
        feats = torch.log(torch.clamp(mel, min=self.floor))
        n_frames = self.frame_lengths(lengths)
        valid = torch.arange(feats.shape[1], device=wav.device)[None, :] < n_frames[:, None]  # (B, T)
        return feats.masked_fill(~valid[:, :, None], 0.0), n_frames


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


@torch.jit.unused
def _check_lengths(lengths: torch.Tensor, s: int) -> None:
    if bool((lengths < 1).any()) or bool((lengths > s).any()):
        raise ValueError(f"lengths must lie in 1..{s}, got {lengths.tolist()}")


def _fold(p: torch.Tensor, lengths: torch.Tensor, period: torch.Tensor) -> torch.Tensor:
    """Reflect index ``p`` ``(B, K)`` into ``0..L-1`` of each row (``period = 2(L-1)``)."""
    q = torch.remainder(p, period)
    return torch.where(q < lengths, q, period - q)


def _reflect_pad(wav: torch.Tensor, lengths: torch.Tensor, half: int) -> torch.Tensor:
    """Reflect-pad each row ``(B, S)`` by ``half`` on both sides of its own ``lengths``; zeros after that.

    Index ``p`` (relative to the utterance start) maps to the mirror image ``-p`` before the start and
    ``2(L-1) - p`` after the end (as ``torch.stft``'s reflect padding), folded periodically so that
    utterances shorter than ``half`` still get defined values. Returns ``(B, S + 2 half)``.
    """
    b, s = wav.shape
    lengths = lengths[:, None]                                                       # (B, 1)
    body = wav.masked_fill(torch.arange(s, device=wav.device)[None, :] >= lengths, 0.0)
    out = torch.nn.functional.pad(body, (half, half))                                # (B, S + 2 half)
    j = torch.arange(half, device=wav.device)[None, :]                               # (1, half)
    period = torch.clamp(2 * (lengths - 1), min=1)                                   # (B, 1)
    left = torch.gather(wav, 1, _fold((j - half).expand(b, half), lengths, period))  # (B, half)
    right = torch.gather(wav, 1, _fold(lengths + j, lengths, period))                # (B, half)
    out = torch.cat([left, out[:, half:]], dim=1)
    return out.scatter(1, lengths + half + j, right)


def frontend_for(features=None, device: torch.device | str = "cpu") -> nn.Module:
    """The one cached ``LogMel`` per (feature definition, device); ``features`` is a ``FeatureConfig`` (duck-typed)
    or None for the HW4 definition. Every front end in spkid (prepare, inference, audio training) comes from here;
    ``features.kind`` other than ``logmel`` selects another toolkit's definition (``spkid.audio.fbanks``)."""
    key = (None if features is None else (features.kind, features.sample_rate, features.n_fft, features.hop,
                                          features.n_mels, features.f_min, features.f_max, features.floor),
           str(device))
    if key not in _CACHE and features is not None and features.kind != "logmel":
        from spkid.audio.fbanks import build_fbank          # another toolkit's definition (imported models)
        _CACHE[key] = build_fbank(features).to(device)
    if key not in _CACHE:
        kw = {} if features is None else dict(sample_rate=features.sample_rate, n_fft=features.n_fft,
                                              hop=features.hop, n_mels=features.n_mels, f_min=features.f_min,
                                              f_max=features.f_max or None, floor=features.floor)
        _CACHE[key] = LogMel(**kw).to(device)
    return _CACHE[key]


_CACHE: dict[tuple, LogMel] = {}


def logmel(wav: torch.Tensor, features=None) -> torch.Tensor:
    """Features ``(T, F)`` of one utterance ``(S,)`` under the feature definition ``features`` (HW4 when None)."""
    if wav.dim() != 1:
        raise ValueError(f"expected one waveform (S,), got shape {tuple(wav.shape)}")
    frontend = frontend_for(features, wav.device)
    with torch.no_grad():
        feats, _ = frontend(wav[None, :], torch.tensor([wav.shape[0]], device=wav.device))
    return feats[0]


DC_MIN = 1e-3      # an offset below this (of full scale) is left: it moves an embedding by under 0.3 % cosine, while
                   # subtracting every window's own tiny mean moved FSDD windows' embeddings by up to 1.4 %


def remove_dc(wav: torch.Tensor) -> torch.Tensor:
    """One recording ``(S,)`` minus its mean when that is at least ``DC_MIN``: a DC offset (a cheap microphone or
    sound card) leaks through the window into the lowest mel bands; 0.03 of full scale moved a base-model embedding
    to cosine 0.95 of its own (docs/reliability.md, "A DC offset"). Inference applies it to every waveform before
    spkid's own features (an imported model's front end stays its toolkit's, exactly); training data has none."""
    m = float(wav.mean()) if wav.numel() else 0.0
    return wav - m if abs(m) >= DC_MIN else wav


LEVEL_DBFS = -20.0                    # where a waveform outside LEVEL_RANGE_DBFS is brought: the base model's training
LEVEL_RANGE_DBFS = (-30.0, -12.0)     # speech sits at a median active level of -19 to -21 dBFS per corpus, its 10th to
                                      # 90th percentiles from about -31 to -14 (docs/reliability.md, "Quiet and loud")
LEVEL_MAX_GAIN_DB = 40.0              # never raised by more (near-silence stays faint)
LEVEL_FRAME = 512                     # 32 ms frames for the active level
LEVEL_TOP = 0.3                       # the loudest 30 % of them: the speech, not its pauses


def active_level(power: torch.Tensor | np.ndarray) -> float:
    """Active level in dBFS from mean-square powers of ``LEVEL_FRAME`` frames ``(N,)``: the mean power of the
    loudest ``LEVEL_TOP`` of them; ``-inf`` for silence or no frames."""
    p = np.sort(np.asarray(power, dtype=np.float64).ravel())
    if p.size == 0:
        return float("-inf")
    top = float(p[-max(1, int(np.ceil(LEVEL_TOP * p.size))):].mean())
    return 10.0 * np.log10(top) if top > 0 else float("-inf")


def frame_power(wav: torch.Tensor | np.ndarray) -> np.ndarray:
    """Mean-square power of each ``LEVEL_FRAME`` frame of a waveform ``(S,)`` -> ``(ceil(S / LEVEL_FRAME),)`` (the last
    frame over the samples it has)."""
    x = np.asarray(wav.detach().cpu() if isinstance(wav, torch.Tensor) else wav, dtype=np.float32).ravel()
    n = x.size // LEVEL_FRAME                       # squares in the input's float32, sums in float64: no 8-byte copy
    out = np.square(x[: n * LEVEL_FRAME].reshape(n, LEVEL_FRAME)).mean(1, dtype=np.float64)
    return np.append(out, np.square(x[n * LEVEL_FRAME:]).mean(dtype=np.float64)) if x.size > n * LEVEL_FRAME else out


def level_gain(level_db: float) -> float:
    """The gain for a recording at active level ``level_db`` (dBFS): 1 inside ``LEVEL_RANGE_DBFS`` (or for silence),
    else what brings it to ``LEVEL_DBFS``, raising by at most ``LEVEL_MAX_GAIN_DB``."""
    lo, hi = LEVEL_RANGE_DBFS
    if not np.isfinite(level_db) or lo <= level_db <= hi:
        return 1.0
    return float(10.0 ** (min(LEVEL_DBFS - level_db, LEVEL_MAX_GAIN_DB) / 20.0))


def set_level(wav: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """One recording ``(S,)`` brought to ``LEVEL_DBFS`` when its active level is outside ``LEVEL_RANGE_DBFS``; as it is
    otherwise. spkid's log-mel is not level-free: the base model scored a clip against its own copy 10 dB quieter at
    cosine 0.89, 20 dB quieter at 0.72, 30 dB at 0.57 (docs/reliability.md, "Quiet and loud"). Inference applies it
    with ``remove_dc`` (an imported model's front end stays its toolkit's, exactly), and speech detection sees the
    levelled copy: Silero kept 14 of 50 s of speech at -50 dBFS peak, none at -60."""
    g = level_gain(active_level(frame_power(wav)))
    return wav * g if g != 1.0 else wav


__all__ = ["LogMel", "frontend_for", "logmel", "remove_dc", "DC_MIN", "set_level", "level_gain", "active_level",
           "frame_power", "LEVEL_DBFS", "LEVEL_RANGE_DBFS", "LEVEL_MAX_GAIN_DB", "mel_filterbank", "hz_to_mel", "mel_to_hz"]

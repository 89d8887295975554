"""Other toolkits' front ends as spkid feature definitions (``features.kind``), batched with ``lengths``.

Each module maps ``wav (B, S)`` float in [-1, 1] and ``lengths (B,)`` samples to ``(feats (B, T, F), frames (B,))``;
frames past an utterance's own count are 0, and real frames never depend on the samples past its ``lengths`` (an
utterance gives the same features alone or padded in a batch). The sizes come from the ``FeatureConfig``
(``sample_rate``, ``n_fft``, ``hop``, ``n_mels``, ``f_min``, ``f_max``, ``floor``); what each toolkit fixes is
fixed here:

- ``speechbrain``: SpeechBrain's ``Fbank`` (``speechbrain.lobes.features``): centred STFT with zero padding, periodic
  Hamming window of ``n_fft``, power spectrum, its triangular filters (HTK mel centres, each filter as wide on both
  sides as the gap to the centre below), ``10 log10(max(x, floor))`` dB, floored at 80 dB under the utterance's peak.
- ``kaldi``: Kaldi's ``compute-fbank`` as WeSpeaker runs it (``torchaudio.compliance.kaldi.fbank`` with a Hamming
  window, dither 0): int16-scaled samples, frames of ``n_fft`` samples without padding (``snip_edges``), DC removed,
  pre-emphasis 0.97, symmetric Hamming window, FFT zero-padded to a power of two, power, Kaldi mel filters
  (``1127 ln(1 + f / 700)``, from ``f_min``, 20 Hz in Kaldi), natural log floored at float32 epsilon.
- ``resemblyzer``: Resemblyzer's ``wav_to_mel_spectrogram`` (librosa's ``melspectrogram``): centred STFT with zero
  padding, periodic Hann window, power, Slaney mel filters with Slaney area normalisation, no log; quiet audio
  raised to -30 dBFS RMS first (its ``normalize_volume(..., increase_only=True)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("logmel", "speechbrain", "kaldi", "resemblyzer")
TOP_DB = 80.0                       # speechbrain: dynamic range kept under each utterance's peak
KALDI_PREEMPHASIS = 0.97
KALDI_EPS = float(torch.finfo(torch.float32).eps)
RESEMBLYZER_DBFS = -30.0            # target RMS of quieter audio


def _valid(frames: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t, device=frames.device)[None, :] < frames[:, None]      # (B, T)


def _zero_past(wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return wav.masked_fill(torch.arange(wav.shape[1], device=wav.device)[None, :] >= lengths[:, None], 0.0)


def _centred_power(wav: torch.Tensor, lengths: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor):
    """Power spectra ``(B, T, n_fft/2 + 1)`` of frames centred every ``hop`` samples, zeros around each utterance;
    ``T = S // hop + 1`` and per utterance ``L // hop + 1`` frames."""
    padded = nn.functional.pad(_zero_past(wav, lengths), (n_fft // 2, n_fft // 2))     # (B, S + n_fft)
    spec = torch.stft(padded, n_fft, hop, n_fft, window, center=False, return_complex=True)   # (B, n_fft/2+1, T)
    return (spec.real.square() + spec.imag.square()).transpose(1, 2), torch.div(lengths, hop, rounding_mode="floor") + 1


class SpeechBrainFbank(nn.Module):
    """SpeechBrain's ``Fbank(n_mels=..., f_min=..., f_max=..., n_fft=..., win_length=n_fft, hop_length=hop)``."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float,
                 floor: float):
        super().__init__()
        self.n_fft, self.hop, self.floor = n_fft, hop, floor
        self.register_buffer("window", torch.hamming_window(n_fft), persistent=False)
        self.register_buffer("fbank", speechbrain_filters(sample_rate, n_fft, n_mels, f_min, f_max), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)``, ``(B,)`` -> ``(B, T, F)``, ``(B,)``."""
        power, frames = _centred_power(wav.float(), lengths, self.n_fft, self.hop, self.window)
        db = 10.0 * torch.log10(torch.clamp(power @ self.fbank, min=self.floor))            # (B, T, F)
        valid = _valid(frames, db.shape[1])[:, :, None]
        peak = db.masked_fill(~valid, float("-inf")).amax(dim=(1, 2), keepdim=True)         # (B, 1, 1)
        return torch.maximum(db, peak - TOP_DB).masked_fill(~valid, 0.0), frames


def speechbrain_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """SpeechBrain's triangular filters ``(n_fft/2 + 1, n_mels)``, computed in float32 as it does."""
    mel = torch.linspace(2595 * math.log10(1 + f_min / 700), 2595 * math.log10(1 + f_max / 700), n_mels + 2)
    hz = 700 * (10 ** (mel / 2595) - 1)
    band, centre = (hz[1:] - hz[:-1])[:-1], hz[1:-1]                                        # (F,), (F,)
    freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    slope = (freqs[None, :] - centre[:, None]) / band[:, None]                              # (F, n_fft/2+1)
    return torch.clamp(torch.minimum(slope + 1.0, -slope + 1.0), min=0.0).transpose(0, 1).contiguous()


class KaldiFbank(nn.Module):
    """Kaldi fbank as WeSpeaker computes it (see the module docstring); ``n_fft`` is the frame length."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
        super().__init__()
        self.frame, self.hop = n_fft, hop
        self.padded = 1 << (n_fft - 1).bit_length()                                         # 400 -> 512
        self.register_buffer("window", torch.hamming_window(n_fft, periodic=False), persistent=False)
        self.register_buffer("fbank", kaldi_filters(sample_rate, self.padded, n_mels, f_min, f_max),
                             persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)``, ``(B,)`` -> ``(B, T, F)``, ``(B,)`` with ``1 + (L - n_fft) // hop`` frames (0 if shorter)."""
        wav = wav.float() * 32768.0                                                          # int16 scale
        if wav.shape[1] < self.frame:
            wav = nn.functional.pad(wav, (0, self.frame - wav.shape[1]))
        x = wav.unfold(1, self.frame, self.hop)                                             # (B, T, frame)
        x = x - x.mean(dim=-1, keepdim=True)
        x = torch.cat([x[..., :1] * (1 - KALDI_PREEMPHASIS), x[..., 1:] - KALDI_PREEMPHASIS * x[..., :-1]], dim=-1)
        x = nn.functional.pad(x * self.window, (0, self.padded - self.frame))              # (B, T, padded)
        power = torch.fft.rfft(x).abs().pow(2.0)                                            # (B, T, padded/2+1)
        feats = torch.log(torch.clamp(power @ self.fbank, min=KALDI_EPS))                  # (B, T, F)
        frames = torch.clamp(torch.div(lengths - self.frame, self.hop, rounding_mode="floor") + 1, min=0)
        return feats.masked_fill(~_valid(frames, feats.shape[1])[:, :, None], 0.0), frames


def kaldi_filters(sample_rate: int, padded: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Kaldi's mel filters ``(padded/2 + 1, n_mels)`` (the Nyquist bin gets weight 0, as in torchaudio)."""
    def mel(f):
        return 1127.0 * torch.log(1.0 + torch.as_tensor(f, dtype=torch.float32) / 700.0)
    lo, hi = mel(f_min), mel(f_max)
    delta = (hi - lo) / (n_mels + 1)
    left = lo + torch.arange(n_mels, dtype=torch.float32)[:, None] * delta                 # (F, 1)
    centre, right = left + delta, left + 2 * delta
    m = mel(sample_rate / padded * torch.arange(padded // 2, dtype=torch.float32))[None, :]   # (1, padded/2)
    w = torch.clamp(torch.minimum((m - left) / (centre - left), (right - m) / (right - centre)), min=0.0)
    return nn.functional.pad(w, (0, 1)).transpose(0, 1).contiguous()                      # (padded/2+1, F)


class ResemblyzerMel(nn.Module):
    """Resemblyzer's mel power spectrogram (librosa, Slaney filters), after its volume normalisation."""

    def __init__(self, *, sample_rate: int, n_fft: int, hop: int, n_mels: int, f_min: float, f_max: float):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fbank", slaney_filters(sample_rate, n_fft, n_mels, f_min, f_max).float(),
                             persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)``, ``(B,)`` -> ``(B, T, F)`` mel power (no log), ``(B,)``."""
        wav = _zero_past(wav.float(), lengths)
        rms = (wav.double() * 32767).square().sum(1).div(lengths.clamp(min=1)).sqrt()          # (B,)
        change = RESEMBLYZER_DBFS - 20 * torch.log10(rms.clamp(min=1e-12) / 32767)
        gain = torch.where(change > 0, 10 ** (change / 20), torch.ones_like(change)).float()
        power, frames = _centred_power(wav * gain[:, None], lengths, self.n_fft, self.hop, self.window)
        mel = power @ self.fbank                                                             # (B, T, F)
        return mel.masked_fill(~_valid(frames, mel.shape[1])[:, :, None], 0.0), frames


def _slaney_mel(f: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep,
                       f / f_sp)


def _slaney_hz(m: torch.Tensor) -> torch.Tensor:
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_filters(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """librosa's ``filters.mel(htk=False, norm="slaney")`` transposed: ``(n_fft/2 + 1, n_mels)``, float64."""
    freqs = torch.linspace(0, sample_rate / 2, 1 + n_fft // 2, dtype=torch.float64)
    lim = _slaney_mel(torch.tensor([float(f_min), float(f_max)], dtype=torch.float64))
    mel_f = _slaney_hz(torch.linspace(float(lim[0]), float(lim[1]), n_mels + 2, dtype=torch.float64))
    fdiff = mel_f[1:] - mel_f[:-1]                                                           # (F + 1,)
    ramps = mel_f[:, None] - freqs[None, :]                                                  # (F + 2, n_freqs)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    w = torch.clamp(torch.minimum(lower, upper), min=0.0) * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return w.transpose(0, 1).contiguous()


def build_fbank(features) -> nn.Module:
    """The front end of a ``FeatureConfig`` whose ``kind`` is not ``logmel``."""
    kw = dict(sample_rate=features.sample_rate, n_fft=features.n_fft, hop=features.hop, n_mels=features.n_mels,
              f_min=features.f_min, f_max=features.f_max or features.sample_rate / 2)
    if features.kind == "speechbrain":
        return SpeechBrainFbank(**kw, floor=features.floor)
    if features.kind == "kaldi":
        return KaldiFbank(**kw)
    if features.kind == "resemblyzer":
        return ResemblyzerMel(**kw)
    raise ValueError(f"features.kind {features.kind!r}: choose one of {list(KINDS)}")

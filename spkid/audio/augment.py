"""Waveform augmentation of a training batch: reverberation, additive noise, band limitation, telephone.

``Augmenter(cfg)(wav (B, S), lengths (B,), labels (B,), g, babble=...) -> (B, S)`` decides every kind per item
with its probability and draws every value from the ``torch.Generator`` ``g``, so a batch is a pure function
of the generator's seed (the sampler seeds it from ``(seed, rank, step)``: exact resume, different ranks see
different conditions). Order, as in a real recording: pauses (spans of near-silence), room (reverberation),
then background noise (babble or noise recordings or synthetic noise) at an SNR, then the channel (band
limitation, or telephone with G.711 companding), then the level (a random gain, clipped at full scale; off by
default). Two kinds act on the source instead and live in the sampler: speed perturbation
(``speed_perturb``; sped-up copies are extra speakers, ``speed_label``) and codecs (``spkid.audio.codecs``:
real Opus/MP3/GSM coding is too slow per item, so coded copies are made once at start).

Banks are made once, at construction: simulated rooms (``RirBank.simulate``: 200 rooms in about 1 s) or the
responses of ``rir_dir``; noise clips generated once (``NoiseBank.synthetic``: 400 clips of hum, band-limited
and coloured noise, about 1 s) or the recordings of ``noise_dir``. A batch then only takes random segments
of them: an FFT per noisy item cost more than the training step can spare.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from spkid.audio.channel import random_band_limit, resample_batch, telephone
from spkid.audio.codecs import CODECS
from spkid.audio.noise import NoiseBank, mix_at_snr
from spkid.audio.rooms import RirBank, reverberate
from spkid.errors import ConfigError

SAMPLE_RATE = 16000


@dataclass
class WaveAugmentConfig:
    """Waveform augmentation: each kind applies to an item with its probability ``p_*``, independently."""

    # additive noise
    p_noise: float = 0.6
    snr_min_db: float = 0.0
    snr_max_db: float = 20.0
    noise_dir: str = ""              # folder of noise recordings (e.g. MUSAN noise/); "" = built-in synthetic noise
    p_babble: float = 0.35           # share of the noisy items whose noise is babble of other training speakers
    babble_min: int = 3              # talkers summed into one babble
    babble_max: int = 7
    hum_share: float = 0.2           # built-in noise (no noise_dir): share of hum/engine clips,
    band_share: float = 0.2          # ... of band-limited noise clips; the rest is coloured 1/f^beta noise
    noise_clips: int = 400           # built-in noise: 4-second clips generated once at start
    colour_min: float = 0.0          # beta range: 0 white, 1 pink, 2 brown
    colour_max: float = 2.0
    # reverberation
    p_reverb: float = 0.4
    rir_dir: str = ""                # folder of impulse responses; "" = simulated shoebox rooms
    n_rooms: int = 200
    rt60_min: float = 0.2
    rt60_max: float = 1.0
    distance_min: float = 0.5        # source-microphone distance, metres
    distance_max: float = 4.0
    bank_seed: int = 0               # the simulated room and synthetic noise banks depend only on this
    # pauses: spans of the crop replaced by near-silence (a recording's pauses, leading/trailing silence, a muted
    # microphone), so frames without speech do not throw the pooled statistics at inference
    p_pause: float = 0.15
    pause_max: float = 0.4           # a pause covers up to this share of the crop (at least 5 %)
    # speed perturbation (in the sampler): 0.9x / 1.1x copies are extra speakers, Kaldi/WeSpeaker style
    p_speed: float = 0.0             # off by default: it triples the classes, unproven under a 10-minute budget
    speed_slow: float = 0.9
    speed_fast: float = 1.1
    # channel
    p_band: float = 0.1              # random low-pass (cutoff log-uniform in lowpass_min..max) and/or high-pass
    lowpass_min_hz: float = 2000.0
    lowpass_max_hz: float = 7000.0
    p_telephone: float = 0.15        # 8 kHz, 200-400..3000-3600 Hz band, tilt, gain/clipping, mu-law or A-law
    # codecs (in the sampler, from a bank coded once at start)
    p_codec: float = 0.1
    codecs: str = "opus,opus-nb,mp3,gsm"   # comma-separated names from spkid.audio.codecs.CODECS
    codec_per_speaker: int = 2       # utterances of each speaker coded into the bank
    # level: a gain uniform in +-gain_db on the finished item (a near or a far talker, a quiet or a hot input), clipped
    # to full scale as a file would be. A speaker's recordings share one level, so without it the model also learns
    # the level as a voice: two speakers of one conversation at levels of their own split and merge on it
    # (docs/diarization.md, "A model that does not hear the level"). Drawn after every other kind, same generator.
    p_gain: float = 0.0              # off by default: the 10-minute recipes and `base` trained without it
    gain_db: float = 10.0

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad field."""
        for name in ("p_noise", "p_babble", "hum_share", "band_share", "p_reverb", "p_speed", "p_band",
                     "p_telephone", "p_codec", "p_pause", "p_gain"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {v}")
        if self.hum_share + self.band_share > 1.0:
            raise ConfigError(f"augment.hum_share + augment.band_share must be <= 1, got "
                              f"{self.hum_share} + {self.band_share}")
        for lo, hi, low, high in (("snr_min_db", "snr_max_db", -20.0, 60.0), ("colour_min", "colour_max", -2.0, 3.0),
                                  ("rt60_min", "rt60_max", 0.05, 3.0), ("distance_min", "distance_max", 0.1, 8.0),
                                  ("lowpass_min_hz", "lowpass_max_hz", 500.0, SAMPLE_RATE / 2 - 200.0)):
            a, b = getattr(self, lo), getattr(self, hi)
            if not (low <= a <= b <= high and math.isfinite(a) and math.isfinite(b)):
                raise ConfigError(f"augment.{lo}..{hi} must satisfy {low} <= {lo} <= {hi} <= {high}, got {a}..{b}")
        if not (0.0 <= self.gain_db <= 40.0 and math.isfinite(self.gain_db)):
            raise ConfigError(f"augment.gain_db must be in [0, 40], got {self.gain_db}")
        if not 0.05 <= self.pause_max <= 0.9:
            raise ConfigError(f"augment.pause_max must be in [0.05, 0.9], got {self.pause_max}")
        if not 1 <= self.babble_min <= self.babble_max:
            raise ConfigError(f"augment.babble_min..babble_max must satisfy 1 <= min <= max, got "
                              f"{self.babble_min}..{self.babble_max}")
        if self.n_rooms < 1 or self.codec_per_speaker < 1 or self.noise_clips < 1:
            raise ConfigError(f"augment.n_rooms, codec_per_speaker and noise_clips must be >= 1, got "
                              f"{self.n_rooms}, {self.codec_per_speaker}, {self.noise_clips}")
        if not (0.5 <= self.speed_slow < 1.0 < self.speed_fast <= 2.0):
            raise ConfigError(f"augment.speed_slow/speed_fast must satisfy 0.5 <= slow < 1 < fast <= 2, got "
                              f"{self.speed_slow}, {self.speed_fast}")
        bad = [c for c in self.codec_list() if c not in CODECS]
        if bad or (self.p_codec > 0 and not self.codec_list()):
            raise ConfigError(f"augment.codecs={self.codecs!r}: unknown codec {bad[0] if bad else '(none)'}; "
                              f"choose from {sorted(CODECS)}")
        for name in ("noise_dir", "rir_dir"):
            folder = getattr(self, name)
            if folder and not Path(folder).is_dir():
                raise ConfigError(f"{folder}: augment.{name} is not a folder")

    def codec_list(self) -> list[str]:
        return [c.strip() for c in self.codecs.split(",") if c.strip()]

    def speeds(self) -> tuple[float, ...]:
        """Speed factors by class block: index 0 is the original speed, then slow, then fast."""
        return (1.0, self.speed_slow, self.speed_fast) if self.p_speed > 0 else (1.0,)


def speed_label(label: torch.Tensor, speed_index: torch.Tensor, n_speakers: int) -> torch.Tensor:
    """Class of a speed-perturbed item: speaker ``label`` at speed block ``speed_index`` (0 = original) ->
    ``label + n_speakers * speed_index`` (so classes ``0..n_speakers-1`` are the real speakers)."""
    return label + n_speakers * speed_index


def speed_perturb(wav: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``wav (B, S)`` ``factor`` times faster (pitch and tempo, as sox ``speed``): ``(B, ceil(S / factor))``.

    The waveform is treated as sampled at ``16000 * factor`` and resampled to 16 kHz with a windowed-sinc
    polyphase filter, e.g. 1.1 -> ratio 10/11.
    """
    num, den = _ratio(factor)
    return resample_batch(wav, num, den)


def _ratio(factor: float) -> tuple[int, int]:
    """``factor`` as a small fraction ``num/den`` (0.9 -> 9/10, 1.1 -> 11/10)."""
    from fractions import Fraction
    f = Fraction(factor).limit_denominator(100)
    return f.numerator, f.denominator


def pauses(wav: torch.Tensor, lengths: torch.Tensor, g: torch.Generator, *, max_share: float = 0.4) -> torch.Tensor:
    """Replace one span of each row by near-silence: ``(B, S) -> (B, S)``.

    The span covers 5 %..``max_share`` of the row's ``lengths`` samples at a random position; it becomes white
    noise 40-90 dB below the row's RMS, or digital zeros (a quarter of the rows), the two kinds of "nothing"
    recordings contain. Samples past ``lengths`` stay zero.
    """
    b, s = wav.shape
    u = torch.rand(b, 4, generator=g)
    n = lengths.float()
    span = (n * (0.05 + (max_share - 0.05) * u[:, 0])).long()
    start = ((n - span).clamp(min=0) * u[:, 1]).long()
    t = torch.arange(s)[None, :]
    inside = (t >= start[:, None]) & (t < (start + span)[:, None])                      # (B, S)
    rms = (wav.square().sum(1) / n.clamp(min=1)).sqrt()                                # (B,)
    level = rms * 10.0 ** (-(40.0 + 50.0 * u[:, 2]) / 20.0) * (u[:, 3] >= 0.25)         # (B,): 0 = digital zeros
    floor = torch.randn(b, s, generator=g) * level[:, None]
    return torch.where(inside, floor, wav)


BabbleFn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


class Augmenter:
    """Applies ``WaveAugmentConfig`` to padded batches. Builds the room and noise banks once, at construction."""

    def __init__(self, cfg: WaveAugmentConfig, *, progress: bool = False):
        cfg.validate()
        self.cfg = cfg
        self.noise: NoiseBank | None = None
        if cfg.p_noise > 0 and cfg.p_babble < 1:
            self.noise = (NoiseBank.from_folder(cfg.noise_dir, seed=cfg.bank_seed, progress=progress) if cfg.noise_dir
                          else NoiseBank.synthetic(cfg.noise_clips, hum_share=cfg.hum_share, band_share=cfg.band_share,
                                                   colour_min=cfg.colour_min, colour_max=cfg.colour_max,
                                                   seed=cfg.bank_seed))
        self.rirs: RirBank | None = None
        if cfg.p_reverb > 0:
            self.rirs = (RirBank.from_folder(cfg.rir_dir, max_files=cfg.n_rooms, seed=cfg.bank_seed, progress=progress)
                         if cfg.rir_dir else
                         RirBank.simulate(cfg.n_rooms, rt60_min=cfg.rt60_min, rt60_max=cfg.rt60_max,
                                          distance_min=cfg.distance_min, distance_max=cfg.distance_max,
                                          seed=cfg.bank_seed, progress=progress))

    def __call__(self, wav: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor, g: torch.Generator, *,
                 babble: BabbleFn | None = None) -> torch.Tensor:
        """Augment ``wav (B, S)`` (real samples ``lengths (B,)``; speakers ``labels (B,)``) -> ``(B, S)``.

        ``babble(labels (k,), S, g) -> (k, S)`` returns babble that excludes each row's speaker; without it,
        babble items get synthetic noise instead. The random draws per call are a fixed sequence given ``g``.
        """
        c = self.cfg
        b, s = wav.shape
        if b == 0:
            return wav
        u = torch.rand(b, 6, generator=g)
        wav = wav.clone()
        rows, max_share = torch.nonzero(u[:, 5] < c.p_pause).flatten(), c.pause_max
        if len(rows):
            wav[rows] = pauses(wav[rows], lengths[rows], g, max_share=max_share)
        rows = torch.nonzero(u[:, 0] < c.p_reverb).flatten()
        if len(rows) and self.rirs is not None:
            wav[rows] = reverberate(wav[rows], lengths[rows], self.rirs.draw(len(rows), g))
        rows = torch.nonzero(u[:, 1] < c.p_noise).flatten()
        if len(rows):
            noise = self._noise(labels[rows], s, u[rows, 2], g, babble)
            snr = c.snr_min_db + (c.snr_max_db - c.snr_min_db) * torch.rand(len(rows), generator=g)
            wav[rows] = mix_at_snr(wav[rows], lengths[rows], noise, snr)
        rows = torch.nonzero(u[:, 3] < c.p_band).flatten()
        if len(rows):
            wav[rows] = random_band_limit(wav[rows], lengths[rows], g, low_min=c.lowpass_min_hz,
                                          low_max=c.lowpass_max_hz)
        rows = torch.nonzero(u[:, 4] < c.p_telephone).flatten()
        if len(rows):
            wav[rows] = telephone(wav[rows], lengths[rows], g)
        if c.p_gain > 0:                              # drawn only when on: recipes without it see the same batches
            v = torch.rand(b, 2, generator=g)
            rows = torch.nonzero(v[:, 0] < c.p_gain).flatten()
            if len(rows):
                db = c.gain_db * (2.0 * v[rows, 1] - 1.0)
                wav[rows] = torch.clamp(wav[rows] * (10.0 ** (db / 20.0))[:, None], -1.0, 1.0)
        return wav

    def _noise(self, labels: torch.Tensor, s: int, pick: torch.Tensor, g: torch.Generator,
               babble: BabbleFn | None) -> torch.Tensor:
        """Noise ``(k, S)`` for ``k`` noisy items: babble where ``pick (k,) < p_babble`` (and a babble source is
        given), else a random segment of the noise bank (the user's recordings or the synthetic clips)."""
        k = labels.shape[0]
        out = torch.empty(k, s)
        is_babble = (pick < self.cfg.p_babble) if babble is not None else torch.zeros(k, dtype=torch.bool)
        if self.noise is None:                        # p_babble is 1: every noisy item is babble
            is_babble = torch.ones(k, dtype=torch.bool)
        rows = torch.nonzero(is_babble).flatten()
        if len(rows):
            out[rows] = babble(labels[rows], s, g) if babble is not None else 0.0
        rows = torch.nonzero(~is_babble).flatten()
        if len(rows):
            out[rows] = self.noise.draw(len(rows), s, g)
        return out


__all__ = ["WaveAugmentConfig", "Augmenter", "pauses", "speed_perturb", "speed_label"]

"""A synthetic multi-speaker voice corpus for demos and tests (source-filter synthesis, numpy/scipy only).

Each speaker is a ``Voice``: pitch range (F0 85-255 Hz and its variation), vocal-tract length (all formants
scaled together, roughly +-18 %), personal vowel targets, formant bandwidths, glottal open quotient and
spectral tilt, breathiness, jitter and shimmer, speaking rate and fricative colour. An utterance is a random
string of syllables built from phone-like units: vowels (a Rosenberg glottal pulse train through a cascade of
formant resonators), nasals, fricatives (band-shaped noise), aspiration, plosive bursts and pauses, with a
declining, wandering pitch contour. Each file then gets a random recording channel (gain, slight tilt,
background noise) and is written at a random sample rate (8/16/22.05/44.1 kHz) and format (int16 WAV,
FLAC, float32 WAV), a few in stereo, so the raw-audio path meets the variety real folders have.

Everything is drawn from ``numpy.random.default_rng`` seeded by ``(seed, speaker, utterance)``: the same
seed gives the same files (the same samples; float WAVs differ in bytes only by the write time libsndfile
stamps into their PEAK chunk), and speaker ``k`` sounds the same whatever ``n_speakers`` is.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter, sosfilt

# Adult male vowel formants F1-F3 in Hz (Peterson & Barney style averages); F4, F5 follow.
VOWELS = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "e": (530, 1840, 2480), "ae": (660, 1720, 2410),
    "a": (730, 1090, 2440), "o": (570, 840, 2410), "U": (440, 1020, 2240), "u": (300, 870, 2240),
    "V": (640, 1190, 2390), "er": (490, 1350, 1690),
}
NASALS = {"m": (250, 1100, 2300), "n": (250, 1600, 2600)}
FRICATIVES = {"s": (4200.0, 7600.0), "sh": (2200.0, 4800.0), "f": (1200.0, 7800.0)}
PLOSIVES = {"p": (400.0, 1800.0), "t": (3000.0, 6500.0), "k": (1500.0, 3200.0)}
ONSETS = ["s", "sh", "f", "h", "m", "n", "p", "t", "k"]
CODAS = ["s", "m", "n", "t", "k"]
RATES = (16000, 22050, 44100, 8000)
RATE_P = (0.4, 0.2, 0.3, 0.1)               # 8 kHz (telephone band) files are the rare case
FORMATS = (("wav", "PCM_16"), ("flac", "PCM_16"), ("wav", "FLOAT"))
STEREO_P = 0.1
# Target RMS of each kind of phone relative to a vowel (before the stress factor).
LEVELS = {"vowel": 1.0, "nasal": 0.35, "s": 0.22, "sh": 0.25, "f": 0.07, "h": 0.1, "burst": 0.3}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    f0: float                 # mean pitch, Hz
    f0_range: float           # pitch wander, semitones (std of the slow contour)
    vtl: float                # formant scale: > 1 = shorter vocal tract = higher formants
    vowel_shift: np.ndarray   # (n_vowels, 3) personal multipliers of F1-F3 (accent / articulation habits)
    bandwidth: float          # formant bandwidth multiplier
    open_quotient: float      # glottal open phase / period: larger = softer, breathier source
    tilt: float               # one-pole low-pass coefficient on the source: larger = darker voice
    breath: float             # aspiration noise relative to the voiced source
    jitter: float             # period-to-period F0 perturbation (fraction)
    shimmer: float            # period-to-period amplitude perturbation (fraction)
    rate: float               # duration multiplier: > 1 = slower speech
    fricative: float          # fricative band multiplier (front-cavity size)


@dataclass
class SynthCorpus:
    """Where ``synth_corpus`` put its files.

    ``train_dir`` holds ``spkNN/uMM.<ext>`` (the folder layout ``prepare`` reads), ``test_dir`` flat,
    unlabelled files; ``answers`` maps each test file (relative to ``test_dir``) to its speaker, also
    written to ``root/answers.csv`` as ``path,speaker``.
    """

    root: Path
    train_dir: Path
    test_dir: Path
    answers: dict[str, str]
    speakers: list[str]


def synth_corpus(out_dir: str | os.PathLike, *, n_speakers: int = 20, n_train: int = 12, n_test: int = 4,
                 seed: int = 0, seconds: tuple[float, float] = (1.5, 3.5)) -> SynthCorpus:
    """Write ``n_speakers`` x (``n_train`` + ``n_test``) synthetic utterances under ``out_dir``."""
    if n_speakers < 1 or n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise ValueError(f"need n_speakers >= 1 and n_train + n_test >= 1, got {n_speakers}, {n_train}, {n_test}")
    if not 0.2 <= seconds[0] <= seconds[1]:
        raise ValueError(f"seconds must be (min, max) with 0.2 <= min <= max, got {seconds}")
    root = Path(out_dir)
    train_dir, test_dir = root / "train", root / "test"
    speakers = [f"spk{i:02d}" for i in range(n_speakers)]
    order = np.random.default_rng([seed, 2]).permutation(n_speakers * n_test)  # test names hide the speaker
    answers: dict[str, str] = {}
    for i, spk in enumerate(speakers):
        voice = make_voice(np.random.default_rng([seed, 0, i]))
        for j in range(n_train + n_test):
            rng = np.random.default_rng([seed, 1, i, j])
            fs = int(rng.choice(RATES, p=RATE_P))
            ext, subtype = FORMATS[rng.integers(len(FORMATS))]
            wav = synth_utterance(voice, rng, fs, rng.uniform(*seconds))
            if rng.random() < STEREO_P:
                wav = _stereo(wav, rng)
            if j < n_train:
                path = train_dir / spk / f"u{j:02d}.{ext}"
            else:
                name = f"t{order[i * n_test + j - n_train]:04d}.{ext}"
                path, answers[name] = test_dir / name, spk
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), wav, fs, subtype=subtype)
    test_dir.mkdir(parents=True, exist_ok=True)
    with open(root / "answers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        w.writerows(sorted(answers.items()))
    return SynthCorpus(root, train_dir, test_dir, dict(sorted(answers.items())), speakers)


def make_voice(rng: np.random.Generator) -> Voice:
    """Draw one speaker. Pitch and vocal-tract length are correlated, as between children, women and men."""
    f0 = float(np.exp(rng.uniform(np.log(85.0), np.log(255.0))))
    size = np.log(f0 / 147.0) / np.log(3.0)                       # about -0.5 (low voice) .. +0.5 (high voice)
    vtl = float(np.clip(1.0 + 0.3 * size + rng.normal(0.0, 0.05), 0.82, 1.2))
    return Voice(
        f0=f0, f0_range=rng.uniform(0.8, 3.0), vtl=vtl,
        vowel_shift=np.clip(rng.normal(1.0, 0.06, size=(len(VOWELS), 3)), 0.85, 1.15),
        bandwidth=rng.uniform(0.8, 1.6), open_quotient=rng.uniform(0.45, 0.8), tilt=rng.uniform(0.0, 0.75),
        breath=rng.uniform(0.02, 0.4), jitter=rng.uniform(0.003, 0.025), shimmer=rng.uniform(0.02, 0.12),
        rate=rng.uniform(0.75, 1.3), fricative=rng.uniform(0.88, 1.12),
    )


def synth_utterance(voice: Voice, rng: np.random.Generator, fs: int, seconds: float) -> np.ndarray:
    """One utterance ``(S,)`` float32 at ``fs``, about ``seconds`` long, peak below 1."""
    phones = _phone_sequence(voice, rng, seconds)
    bounds = np.round(np.cumsum([0.0] + [d for _, d in phones]) * fs).astype(int)
    n = int(bounds[-1])
    f0 = _pitch_contour(voice, rng, n, fs)
    src, flow = _glottal_source(voice, rng, f0, fs)
    src = src + voice.breath * rng.standard_normal(n) * (0.3 + flow)        # aspiration, stronger when open
    noise = rng.standard_normal(n)
    utt_shift = rng.normal(1.0, 0.02)                                      # day-to-day articulation
    out = np.zeros(n)
    ov = int(0.012 * fs)                                                   # crossfade half-width
    for k, (ph, _) in enumerate(phones):
        a, b = max(bounds[k] - ov, 0), min(bounds[k + 1] + ov, n)
        if ph == "sil" or b - a < 8:
            continue
        if ph in VOWELS or ph in NASALS or ph == "h":
            target = ph if ph != "h" else _next_vowel(phones, k)
            sos = _formant_sos(voice, target, fs, utt_shift)
            x = sosfilt(sos, (noise if ph == "h" else src)[a:b])
            level = LEVELS["vowel" if ph in VOWELS else "nasal" if ph in NASALS else "h"]
        elif ph in FRICATIVES:
            sos = _band_sos(ph, FRICATIVES[ph], voice.fricative, fs)
            x, level = sosfilt(sos, noise[a:b]), LEVELS[ph]
        else:                                                              # plosive burst after its closure
            sos = _band_sos(ph, PLOSIVES[ph], voice.fricative, fs)
            x = sosfilt(sos, noise[a:b]) * np.exp(-np.arange(b - a) / (0.008 * fs))
            level = LEVELS["burst"]
        x *= level * rng.uniform(0.6, 1.0) / (np.sqrt(np.mean(x ** 2)) + 1e-12)
        out[a:b] += x * _fade(b - a, min(2 * ov, (b - a) // 2))
    return _channel(out, rng, fs)


# ---------------------------------------------------------------- utterance structure

def _phone_sequence(voice: Voice, rng: np.random.Generator, seconds: float) -> list[tuple[str, float]]:
    """``(phone, duration_s)`` list: pause, syllables (C)V(C) with pauses between words, pause.

    Syllables are added until the utterance reaches ``seconds``, so it ends at most one syllable later.
    """
    rate = voice.rate * rng.uniform(0.9, 1.1)
    start, end = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2)
    phones = [("sil", start)]
    total, vowels = start + end, list(VOWELS)
    while total < seconds:
        if len(phones) > 1 and rng.random() < 0.3:                         # word boundary
            phones.append(("sil", rate * rng.uniform(0.04, 0.18)))
        syl = [ONSETS[rng.integers(len(ONSETS))]] if rng.random() < 0.65 else []
        syl.append(vowels[rng.integers(len(vowels))])
        if rng.random() < 0.3:
            syl.append(CODAS[rng.integers(len(CODAS))])
        for ph in syl:
            if ph in PLOSIVES:                                              # closure, then burst
                phones.append(("sil", rate * rng.uniform(0.03, 0.06)))
                phones.append((ph, rate * rng.uniform(0.015, 0.03)))
            else:
                lo, hi = (0.08, 0.2) if ph in VOWELS else (0.05, 0.1) if ph in NASALS else (0.06, 0.13)
                phones.append((ph, rate * rng.uniform(lo, hi)))
        total = sum(d for _, d in phones) + end
    phones.append(("sil", end))
    return phones


def _next_vowel(phones: list[tuple[str, float]], k: int) -> str:
    return next((p for p, _ in phones[k:] if p in VOWELS), "a")


def _pitch_contour(voice: Voice, rng: np.random.Generator, n: int, fs: int) -> np.ndarray:
    """F0 in Hz per sample: utterance offset + declination + slow random wander (semitones)."""
    step = 0.15
    knots = np.arange(0.0, n / fs + 2 * step, step)
    wander = rng.normal(0.0, voice.f0_range, size=knots.size)
    wander = np.convolve(wander, np.ones(3) / 3, mode="same")              # smoother phrasing
    t = np.arange(n) / fs
    decl = rng.uniform(1.0, 3.0)
    st = rng.normal(0.0, 0.8) + decl * (0.5 - t / max(t[-1], 1e-3)) + np.interp(t, knots, wander)
    return voice.f0 * 2.0 ** (st / 12.0)


def _glottal_source(voice: Voice, rng: np.random.Generator, f0: np.ndarray, fs: int):
    """(radiated source, normalised glottal flow) ``(S,)``: Rosenberg pulses with jitter and shimmer."""
    n = f0.size
    phase = np.cumsum(f0 / fs)                                              # periods elapsed at each sample
    nominal = np.searchsorted(phase, np.arange(1.0, phase[-1]))             # sample where each period ends
    periods = np.diff(nominal, prepend=0).astype(float)
    periods *= 1.0 + voice.jitter * rng.standard_normal(periods.size)       # jitter: each period on its own
    onsets = np.concatenate([[0.0], np.cumsum(periods)])
    onsets = np.concatenate([onsets[onsets < n], [max(float(n), onsets[-1])]])
    periods = np.maximum(np.diff(onsets), 1.0)                              # (P,)
    amps = np.clip(1.0 + voice.shimmer * rng.standard_normal(periods.size), 0.3, None)
    starts = np.minimum(np.ceil(onsets).astype(int), n)
    starts[-1] = n
    k = np.repeat(np.arange(periods.size), np.diff(starts))                 # period of each sample, (S,)
    ph = (np.arange(n) - onsets[k]) / periods[k]                            # phase in [0, 1)
    table = _rosenberg(voice.open_quotient)
    flow = table[np.minimum((ph * table.size).astype(int), table.size - 1)] * amps[k]
    src = np.diff(flow, prepend=0.0)                                        # lip radiation ~ derivative
    src = lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], src)
    src /= np.sqrt(np.mean(src ** 2)) + 1e-12
    return src, flow / (flow.max() + 1e-12)


def _rosenberg(oq: float, size: int = 2048) -> np.ndarray:
    """One period of Rosenberg glottal flow sampled at ``size`` phases: rise, fall, closed phase."""
    ph = (np.arange(size) + 0.5) / size
    rise = 0.6 * oq
    return np.where(ph < rise, 0.5 * (1.0 - np.cos(np.pi * ph / rise)),
                    np.where(ph < oq, np.cos(0.5 * np.pi * (ph - rise) / (oq - rise)), 0.0))


# ---------------------------------------------------------------- filters

def _formant_sos(voice: Voice, phone: str, fs: int, utt_shift: float) -> np.ndarray:
    """Cascade of Klatt resonators (unit gain at DC) for a vowel or nasal, formants below 0.45 fs."""
    if phone in VOWELS:
        f123 = np.asarray(VOWELS[phone], float) * voice.vowel_shift[list(VOWELS).index(phone)]
        bws = np.array([70.0, 100.0, 150.0, 250.0, 300.0])
    else:
        f123 = np.asarray(NASALS[phone], float)
        bws = np.array([120.0, 300.0, 300.0, 300.0, 350.0])
    freqs = np.concatenate([f123, [3400.0, 4400.0]]) * voice.vtl * utt_shift
    sections = []
    for f, bw in zip(freqs, bws * voice.bandwidth):
        if f >= 0.45 * fs:
            continue
        r = np.exp(-np.pi * bw / fs)
        b1, b2 = 2 * r * np.cos(2 * np.pi * f / fs), -r * r
        sections.append([1.0 - b1 - b2, 0.0, 0.0, 1.0, -b1, -b2])
    return np.asarray(sections)


def _band_sos(name: str, band: tuple[float, float], scale: float, fs: int) -> np.ndarray:
    """Band-pass for a fricative or burst: RBJ high-pass then low-pass biquads (Q 0.707), the band
    scaled by the speaker and kept below Nyquist."""
    hi = min(band[1] * scale, 0.45 * fs)
    lo = min(band[0] * scale, 0.6 * hi)
    return np.stack([_biquad(lo, fs, high=True), _biquad(hi, fs, high=False)])


def _biquad(f: float, fs: int, *, high: bool) -> np.ndarray:
    """One Butterworth-Q section (Audio EQ Cookbook) as an SOS row ``[b0, b1, b2, 1, a1, a2]``."""
    w = 2 * np.pi * f / fs
    alpha, c = np.sin(w) / (2 * np.sqrt(0.5)), np.cos(w)
    b = np.array([1 + c, -(1 + c), 1 + c]) / 2 if high else np.array([1 - c, 1 - c, 1 - c]) * np.array([0.5, 1, 0.5])
    a = np.array([1 + alpha, -2 * c, 1 - alpha])
    return np.concatenate([b / a[0], a / a[0]])


def _fade(n: int, ramp: int) -> np.ndarray:
    w = np.ones(n)
    if ramp > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
        w[:ramp], w[n - ramp:] = r, r[::-1]
    return w


# ---------------------------------------------------------------- recording channel

def _channel(x: np.ndarray, rng: np.random.Generator, fs: int) -> np.ndarray:
    """Random microphone tilt, background noise (SNR 25-45 dB) and peak level 0.3-0.9."""
    a = rng.uniform(-0.3, 0.3)
    x = lfilter([1.0 - abs(a)], [1.0, -a], x)
    rms = np.sqrt(np.mean(x ** 2)) + 1e-12
    x = x + rng.standard_normal(x.size) * rms * 10 ** (-rng.uniform(25.0, 45.0) / 20)
    return (x * rng.uniform(0.3, 0.9) / (np.abs(x).max() + 1e-12)).astype(np.float32)


def _stereo(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(S,)`` -> ``(S, 2)``: the second microphone a little quieter, with its own hiss."""
    right = x * rng.uniform(0.7, 1.0) + rng.standard_normal(x.size).astype(np.float32) * 1e-3
    return np.stack([x, right], axis=1).astype(np.float32)

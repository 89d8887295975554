"""Degraded TEST conditions for ``benchmarks/robustness.py``: ``degrade(wav, condition, rng) -> wav``.

Every condition is built from sources the training augmentation (``spkid.audio.augment``) never uses, so a
model cannot pass by recognising one recipe:

- noise is generated in the time domain with numpy (white), Kellet's IIR pink filter and a leaky integrator
  (brown), where training shapes torch noise in the frequency domain; "machine" noise is a motor (a
  rotating square-ish wave with amplitude modulation), a fan band and mains hum, where training hum is a
  harmonic wavetable; babble is 4-6 talkers taken from the ``babble`` pool the caller passes (TEST-set
  utterances of other speakers), where training babble comes from training utterances;
- rooms: "room-sim" is the full image-source method (pyroomacoustics, every reflection order, air
  absorption) in other room sizes and seeds than training's hybrid image-source + diffuse-tail bank;
  "room-materials" uses frequency-dependent real wall/floor/ceiling materials; "room-synthetic" is an
  exponentially decaying noise response with a different RT60 per frequency band;
- telephone is scipy filtering plus libsndfile's real G.711 mu-law coder at 8 kHz (training: torch FFT
  masks and its own companding); codecs are real libsndfile Opus (~8 kbit/s), GSM 6.10 and mu-law.

SNRs are over the whole utterance. ``python benchmarks/degrade.py --list`` prints the conditions;
``--write AUDIO OUT_DIR`` writes one file through every condition, for listening.
"""
from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import butter, fftconvolve, lfilter, resample_poly, sosfilt, sosfiltfilt

SR = 16000
NOISES = ("white", "pink", "brown", "babble", "machine")
SNRS = (0, 5, 10)
DESCRIPTIONS = {
    "clean": "the utterance as it is",
    **{f"{n}-{s}": f"{n} noise at {s} dB SNR" for n in NOISES for s in SNRS},
    "room-sim": "full image-source shoebox rooms (RT60 0.3-0.8 s nominal, 1-3 m, air absorption)",
    "room-materials": "image-source rooms with real frequency-dependent materials (classroom, office, corridor, hall)",
    "room-synthetic": "exponentially decaying noise response, RT60 0.4-1.0 s, longer at low frequencies",
    "telephone": "8 kHz, 300-3400 Hz band-pass, G.711 mu-law (libsndfile)",
    "opus-8k": "Opus at about 8 kbit/s (libsndfile)",
    "gsm": "GSM 6.10 full rate, 8 kHz (libsndfile)",
    "mulaw-8k": "G.711 mu-law at 8 kHz without band-pass (libsndfile)",
    "silence-pad": "2 s of near-silence before and after, 1 s in the middle (-60 dB noise floor)",
    "room-babble-telephone": "room-sim, then babble at 10 dB, then telephone",
    "crop-1s": "a random 1-second crop",
}
CONDITIONS: list[str] = list(DESCRIPTIONS)

_ROOMS: dict[str, list[np.ndarray]] = {}


def degrade(wav, condition: str, rng: np.random.Generator, *, babble: Sequence | None = None) -> torch.Tensor:
    """``wav`` ``(S,)`` at 16 kHz (numpy or torch) under ``condition`` -> float32 tensor ``(S',)``.

    ``S' = S`` except for "silence-pad" (5 s longer) and "crop-1s" (at most 16000). ``babble`` is a pool of
    waveforms ``(S_i,)`` of OTHER speakers (test-set utterances), needed by the babble conditions.
    """
    if condition not in DESCRIPTIONS:
        raise ValueError(f"unknown condition {condition!r}; choose one of {CONDITIONS}")
    x = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
    x = x.astype(np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"expected one non-empty waveform (S,), got shape {x.shape}")
    return torch.from_numpy(_apply(x, condition, rng, babble).astype(np.float32))


def _apply(x: np.ndarray, condition: str, rng: np.random.Generator, babble) -> np.ndarray:
    name, _, level = condition.rpartition("-")
    if name in NOISES and level.isdigit():
        return mix(x, _noise(name, x.size, rng, babble), float(level))
    if condition == "clean":
        return x
    if condition.startswith("room-") and condition != "room-babble-telephone":
        return reverberate(x, _room(condition, rng))
    if condition == "telephone":
        return telephone(x)
    if condition in ("opus-8k", "gsm", "mulaw-8k"):
        from spkid.audio.codecs import codec_roundtrip
        codec, level = {"opus-8k": ("opus", 0.99), "gsm": ("gsm", None), "mulaw-8k": ("mulaw", None)}[condition]
        return codec_roundtrip(x.astype(np.float32), codec, level=level).astype(np.float64)
    if condition == "silence-pad":
        floor = lambda n: rng.standard_normal(n) * 1e-3 * np.sqrt(np.mean(x ** 2))   # noqa: E731  -60 dB
        half = x.size // 2
        return np.concatenate([floor(2 * SR), x[:half], floor(SR), x[half:], floor(2 * SR)])
    if condition == "room-babble-telephone":
        wet = reverberate(x, _room("room-sim", rng))
        return telephone(mix(wet, _noise("babble", x.size, rng, babble), 10.0))
    if condition == "crop-1s":
        start = int(rng.integers(0, max(1, x.size - SR + 1)))
        return x[start: start + SR]
    raise AssertionError(condition)


def mix(x: np.ndarray, noise: np.ndarray, snr: float) -> np.ndarray:
    """``x + a * noise`` with the power ratio over the whole utterance exactly ``snr`` dB."""
    a = np.sqrt(np.mean(x ** 2) / (np.mean(noise ** 2) * 10 ** (snr / 10)))
    return x + a * noise


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(np.sqrt(np.mean(x ** 2)), 1e-12)


def _noise(kind: str, n: int, rng: np.random.Generator, babble) -> np.ndarray:
    """Unit-RMS test noise ``(n,)``."""
    white = rng.standard_normal(n + SR)                       # one extra second lets the filters settle
    if kind == "white":
        return _unit(white[:n])
    if kind == "pink":                                        # Paul Kellet's 3-pole approximation of 1/f
        b = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
        a = [1.0, -2.494956002, 2.017265875, -0.522189400]
        return _unit(lfilter(b, a, white)[SR:])
    if kind == "brown":                                       # leaky integrator, then a 20 Hz high-pass
        y = lfilter([1.0], [1.0, -0.998], white)
        return _unit(sosfilt(butter(2, 20, "highpass", fs=SR, output="sos"), y)[SR:])
    if kind == "machine":
        return _machine(n, rng, white)
    if kind == "babble":
        if not babble:
            raise ValueError("babble conditions need a pool of other speakers' utterances (babble=...)")
        out = np.zeros(n)
        for i in rng.choice(len(babble), size=min(len(babble), int(rng.integers(4, 7))), replace=False):
            src = babble[int(i)]
            src = src.detach().cpu().numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
            start = int(rng.integers(0, src.size))
            out += _unit(np.tile(src.astype(np.float64), -(-(start + n) // src.size))[start: start + n])
        return _unit(out)
    raise AssertionError(kind)


def _machine(n: int, rng: np.random.Generator, white: np.ndarray) -> np.ndarray:
    """A motor (rotation 25-120 Hz, square-ish, amplitude-modulated at 2-8 Hz), a fan band and mains hum."""
    t = np.arange(n) / SR
    f0 = rng.uniform(25, 120)
    phase = f0 * t + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * t)              # slow speed drift
    motor = np.tanh(4 * np.sin(2 * np.pi * phase)) * (1 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * t))
    lo = rng.uniform(600, 1500)
    fan = sosfilt(butter(2, [lo, lo * rng.uniform(1.5, 3)], "bandpass", fs=SR, output="sos"), white)[SR:]
    mains = rng.choice([50.0, 60.0])
    hum = np.sin(2 * np.pi * mains * t) + 0.5 * np.sin(2 * np.pi * 3 * mains * t + 1.0)
    return _unit(_unit(motor) + rng.uniform(0.3, 0.8) * _unit(fan) + rng.uniform(0.2, 0.5) * _unit(hum))


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Convolve with ``h``, aligned on its direct-path peak, at the input's RMS."""
    peak = int(np.argmax(np.abs(h)))
    y = fftconvolve(x, h)[peak: peak + x.size]
    return y * np.sqrt(np.mean(x ** 2) / max(np.mean(y ** 2), 1e-20))


def telephone(x: np.ndarray) -> np.ndarray:
    """8 kHz, 300-3400 Hz (6th-order Butterworth, zero-phase), level -6 dBFS peak, real G.711 mu-law, back to 16 kHz."""
    narrow = resample_poly(x, 1, 2)
    narrow = sosfiltfilt(butter(6, [300, 3400], "bandpass", fs=8000, output="sos"), narrow)
    narrow = 0.5 * narrow / max(np.abs(narrow).max(), 1e-9)
    buf = io.BytesIO()
    sf.write(buf, narrow.astype(np.float32), 8000, format="WAV", subtype="ULAW")
    buf.seek(0)
    coded, _ = sf.read(buf, dtype="float64")
    return resample_poly(coded, 2, 1)[: x.size]


def _room(family: str, rng: np.random.Generator) -> np.ndarray:
    if family not in _ROOMS:
        _ROOMS[family] = {"room-sim": _sim_rooms, "room-materials": _material_rooms,
                          "room-synthetic": _synthetic_rooms}[family]()
    bank = _ROOMS[family]
    return bank[int(rng.integers(len(bank)))]


def _sim_rooms(n: int = 8, seed: int = 12345) -> list[np.ndarray]:
    """Full-order image-source shoeboxes (about 1 s of CPU each)."""
    import pyroomacoustics as pra
    rng = np.random.default_rng(seed)
    rooms = []
    while len(rooms) < n:
        dims = rng.uniform([4.0, 4.0, 2.6], [12.0, 9.0, 4.5])
        try:
            e_abs, order = pra.inverse_sabine(rng.uniform(0.3, 0.8), dims)
        except ValueError:
            continue
        mic = rng.uniform(0.5, dims - 0.5)
        d = rng.uniform(1.0, 3.0)
        az = rng.uniform(0, 2 * np.pi)
        src = mic + d * np.array([np.cos(az), np.sin(az), 0.0])
        if np.any(src < 0.5) or np.any(src > dims - 0.5):
            continue
        rooms.append(_shoebox(dims, pra.Material(e_abs), order, src, mic))
    return rooms


def _material_rooms() -> list[np.ndarray]:
    """Four furnished rooms: (walls, floor, ceiling, size, source, microphone as fractions of the size)."""
    import pyroomacoustics as pra
    specs = [("brickwork", "linoleum_on_concrete", "ceiling_plasterboard",                       # classroom
              [9.0, 6.0, 3.2], [0.2, 0.5, 0.5], [0.6, 0.4, 0.4]),
             ("plasterboard", "carpet_cotton", "ceiling_fibre_absorber",                        # office
              [5.0, 4.0, 2.7], [0.3, 0.3, 0.5], [0.7, 0.6, 0.45]),
             ("rough_concrete", "linoleum_on_concrete", "hard_surface",                         # corridor
              [14.0, 2.5, 3.0], [0.2, 0.5, 0.5], [0.35, 0.4, 0.5]),
             ("wooden_lining", "stage_floor", "ceiling_perforated_gypsum_board",                # hall
              [16.0, 11.0, 5.0], [0.3, 0.5, 0.3], [0.5, 0.45, 0.3])]
    rooms = []
    for walls, floor, ceiling, dims, src, mic in specs:
        mats = pra.make_materials(ceiling=ceiling, floor=floor, east=walls, west=walls, north=walls, south=walls)
        dims = np.array(dims)
        rooms.append(_shoebox(dims, mats, 30, dims * src, dims * mic))
    return rooms


def _shoebox(dims, materials, order: int, src, mic) -> np.ndarray:
    import pyroomacoustics as pra
    room = pra.ShoeBox(dims, fs=SR, materials=materials, max_order=order, air_absorption=True)
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    return np.asarray(room.rir[0][0], dtype=np.float64)


def _synthetic_rooms(n: int = 8, seed: int = 777) -> list[np.ndarray]:
    """Direct sound, a 3-15 ms gap, then Gaussian noise decaying per octave group at RT60 x (1.3, 1, 0.75, 0.5)
    from low to high frequencies, its level set by a direct-to-reverberant ratio of -3..+6 dB."""
    rng = np.random.default_rng(seed)
    rooms = []
    for _ in range(n):
        rt60 = rng.uniform(0.4, 1.0)
        m = int(1.2 * rt60 * 1.3 * SR)
        t = np.arange(m) / SR
        spec = np.fft.rfft(rng.standard_normal(m))
        f = np.fft.rfftfreq(m, 1 / SR)
        tail = np.zeros(m)
        for (lo, hi), scale in zip(((0, 500), (500, 2000), (2000, 4000), (4000, SR)), (1.3, 1.0, 0.75, 0.5)):
            band = np.fft.irfft(spec * ((f >= lo) & (f < hi)), m)
            tail += band * 10 ** (-3 * t / (rt60 * scale))
        gap = int(rng.uniform(0.003, 0.015) * SR)
        tail[:gap] = 0
        drr = rng.uniform(-3, 6)
        tail *= np.sqrt(10 ** (-drr / 10) / np.sum(tail ** 2))
        tail[0] = 1.0
        rooms.append(tail)
    return rooms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print the conditions and what each does")
    p.add_argument("--write", nargs=2, metavar=("AUDIO", "OUT_DIR"), help="write AUDIO through every condition")
    p.add_argument("--babble", nargs="*", default=[], help="audio files of other speakers for the babble conditions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.list:
        for c in CONDITIONS:
            print(f"{c}\t{DESCRIPTIONS[c]}")
    if args.write:
        from spkid.audio.io import load_audio
        wav = load_audio(args.write[0])
        pool = [load_audio(f) for f in args.babble]
        out = Path(args.write[1])
        out.mkdir(parents=True, exist_ok=True)
        for c in CONDITIONS:
            if "babble" in c and not pool:
                print(f"skipped {c}: give --babble FILES", file=sys.stderr)
                continue
            y = degrade(wav, c, np.random.default_rng(args.seed), babble=pool).numpy()
            sf.write(out / f"{c}.flac", np.clip(y, -1, 1), SR)
            print(out / f"{c}.flac")
    if not (args.list or args.write):
        p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())

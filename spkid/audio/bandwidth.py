"""Where a recording's speech ends in frequency, when the bands above it hold only noise: cut there before listening.

A voice recorded at 8 kHz (a telephone call, FSDD's digits) and stored at 16 kHz has nothing above 4 kHz; noise
added after the upsampling (a room, a fan, a mixing desk) fills those bands. Speech detection then misses speech
the noise covers (45 % of one such conversation, docs/diarization.md) and the embeddings hear a wideband noise
where the training's band-limited voices had silence. ``band_powers`` measures each 32 ms frame's power below
3.5 kHz and in 500 Hz bands above; ``loud_and_quiet`` picks the louder frames (speech) and the quietest (pauses);
``speech_band_edge`` returns the edge above which the speech frames hold no power of their own while the pauses
hold noise (None when speech reaches the top, when nothing but silence lies above, or when the edge is high);
``low_pass`` cuts there. ``spkid diarize`` decides on the first block of a file and hears the whole file so
(``diarization.stream.AudioStream.low_pass``).
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512                 # samples per frame: Silero's 32 ms
EDGES_HZ = np.concatenate([[0.0], np.arange(3500.0, 8001.0, 500.0)])  # bands: 0-3.5 kHz (the voice's core), then
                                                                       # 3.5-4, 4-4.5, ..., 7.5-8 kHz
EXCESS_DB = 1.5             # a band holds speech where its speech frames are at least this far above its pauses
FLOOR_DB = -45.0            # ... by a power at least this far below the speech's own under 3.5 kHz (resampler leakage
                            # of an 8 kHz recording lies at -50 to -65 dB)
NOISE_DB = -50.0            # cut only where the pauses hold at least this much noise above the edge (same reference)
MAX_EDGE_HZ = 6000.0        # and only below this: 2 kHz or more of noise (a voice recorded at 8, 11.025 or 12 kHz)
QUIET_SHARE = 0.1           # the quietest tenth of the frames stand for the pauses
MIN_FRAMES = 64             # about 2 s of speech and of pauses at least, or nothing is decided
FIR_TAPS = 161              # low_pass: a linear-phase FIR, 80 samples (5 ms) each side
CHUNK = 1024                # band_powers: frames transformed at once (a 5-minute block would hold 40 MB of spectra)


def band_powers(wav: np.ndarray) -> np.ndarray:
    """Mean power per 512-sample frame in each band between consecutive ``EDGES_HZ`` of a 16 kHz waveform
    ``(S,)``: ``(ceil(S / 512), len(EDGES_HZ) - 1)`` float32 (the last frame zero-padded)."""
    x = np.asarray(wav, dtype=np.float32)
    n = -(-x.size // FRAME)
    out = np.zeros((n, len(EDGES_HZ) - 1), dtype=np.float32)
    hz = np.fft.rfftfreq(FRAME, 1.0 / SAMPLE_RATE)                                   # (FRAME / 2 + 1,)
    band = np.digitize(hz, EDGES_HZ) - 1
    window = np.hanning(FRAME).astype(np.float32)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        frames = np.zeros((b - a) * FRAME, dtype=np.float32)
        piece = x[a * FRAME: b * FRAME]
        frames[: piece.size] = piece
        spec = np.abs(np.fft.rfft(frames.reshape(b - a, FRAME) * window, axis=1)) ** 2     # (frames, FRAME/2 + 1)
        for k in range(len(EDGES_HZ) - 1):
            out[a:b, k] = spec[:, band == k].mean(1)
    return out


def loud_and_quiet(powers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks ``(F,)`` of the louder half of the frames (mostly speech) and of the quietest ``QUIET_SHARE`` (the
    pauses, or the quietest speech), by total power, from ``band_powers`` ``(F, NB)``: what ``speech_band_edge``
    compares before any speech detection has run."""
    total = powers.sum(1)
    order = np.argsort(total, kind="stable")
    loud, quiet = np.zeros(total.size, dtype=bool), np.zeros(total.size, dtype=bool)
    loud[order[total.size // 2:]] = True
    quiet[order[: int(total.size * QUIET_SHARE)]] = True
    return loud, quiet


def speech_band_edge(powers: np.ndarray, speech: np.ndarray, pauses: np.ndarray, *, excess_db: float = EXCESS_DB,
                     floor_db: float = FLOOR_DB, noise_db: float = NOISE_DB, max_hz: float = MAX_EDGE_HZ,
                     min_frames: int = MIN_FRAMES) -> float | None:
    """The frequency (Hz, one of ``EDGES_HZ[1:]``) above which the speech frames hold no power of their own while
    the pauses hold noise, from ``band_powers`` ``(F, NB)`` and masks ``(F,)`` of speech frames and of pauses
    (``loud_and_quiet``); None when the top band holds speech, when nothing but silence lies above the edge (a
    band-limited recording without noise: nothing to cut), when the edge is above ``max_hz`` (a voice that merely
    fades into the noise near the top: too little to gain), or with fewer than ``min_frames`` of either.

    A band above 3.5 kHz holds speech when its mean power in speech frames is at least ``excess_db`` above its
    mean in the pauses, and that excess is at least ``floor_db`` relative to the speech frames' power below
    3.5 kHz: a resampler's leakage above 4 kHz of a voice recorded at 8 kHz (about -50 to -65 dB) is not speech,
    however quiet the pauses are. The noise is worth cutting when the pauses above the edge hold at least
    ``noise_db`` of that power."""
    n = min(len(powers), len(speech), len(pauses))
    powers = np.asarray(powers[:n], dtype=np.float64)
    speech, pauses = np.asarray(speech[:n], dtype=bool), np.asarray(pauses[:n], dtype=bool)
    if speech.sum() < min_frames or pauses.sum() < min_frames:
        return None
    on, off = powers[speech].mean(0), powers[pauses].mean(0)                        # (NB,)
    if on[0] <= 0:
        return None
    tiny = 1e-30
    holds = ((10 * np.log10((on + tiny) / (off + tiny)) >= excess_db)
             & (on - off >= on[0] * 10 ** (floor_db / 10)))[1:]                     # the bands above 3.5 kHz
    if holds[-1]:
        return None
    top = np.flatnonzero(holds)                       # the highest band that still holds speech
    k = top[-1] + 1 if top.size else 0                # bands above 3.5 kHz from index k on hold no speech
    if EDGES_HZ[1 + k] > max_hz or off[1 + k:].sum() < on[0] * 10 ** (noise_db / 10):
        return None
    return float(EDGES_HZ[1 + k])


def low_pass(wav: np.ndarray, hz: float) -> np.ndarray:
    """A 16 kHz waveform ``(S,)`` low-passed at ``hz``: a linear-phase FIR of ``FIR_TAPS`` taps (Kaiser window;
    flat to ``hz`` - 200 Hz, -6 dB at ``hz``, 70 dB down at ``hz`` + 250 Hz), its delay removed; float32 ``(S,)``.
    Four times as fast on a 5-minute block as the training's FFT band limit (``audio.channel.band_limit``)."""
    from scipy.signal import firwin, oaconvolve
    x = np.asarray(wav, dtype=np.float32)
    if x.size == 0:
        return np.zeros(0, dtype=np.float32)
    h = firwin(FIR_TAPS, float(hz), fs=SAMPLE_RATE, window=("kaiser", 8.0)).astype(np.float32)
    return oaconvolve(x, h, mode="same").astype(np.float32)


__all__ = ["band_powers", "loud_and_quiet", "speech_band_edge", "low_pass", "EDGES_HZ", "EXCESS_DB", "FLOOR_DB",
           "NOISE_DB", "MAX_EDGE_HZ"]

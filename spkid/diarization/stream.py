"""Audio of any length in bounded memory: decoded in blocks, speech detected across blocks, windows cut.

``AudioStream(path)`` decodes a file block by block (``soundfile`` seeks and reads; channels averaged; other
sample rates resampled per block with a margin on each side so the block edges see the same filter as one
long resampling would). Nothing holds more than a block plus a window of audio, so a 3-hour file needs
what a 5-minute one does (and the last stretch decoded, which ``read`` keeps for the passes that come back to it).

``speech_probs_stream`` runs Silero over the blocks: each block is given the previous block's last 2 s as
context (the LSTM warms up on real audio, not on silence), and the context frames' probabilities are dropped. A
file recorded at 8 kHz or below (a telephone call), and a block whose content is narrowband (the same call stored at
16 kHz), gets both of Silero's modes, 16 kHz and 8 kHz, and the larger probability
(``vad.speech_probs_narrowband``): the 16 kHz one alone misses whole calls of some voices.
``windows_over`` places the embedding windows on the detected speech.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from spkid.audio.bandwidth import low_pass
from spkid.audio.frontend import frame_power
from spkid.audio.io import MAX_CHANNELS, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, resample, to_mono
from spkid.audio.vad import FRAME, narrowband_content, speech_probs, speech_probs_narrowband
from spkid.errors import DataError

SAMPLE_RATE = 16000
CONTEXT_FRAMES = 64          # VAD frames (32 ms each, about 2 s) of the previous block given as context
NARROWBAND_RATE = 8000       # Hz: files at this rate or below are narrowband (telephone) for speech detection
RESAMPLE_MARGIN_S = 0.1      # seconds of input read past each block edge for the resampling filter
BAND_MARGIN_S = 0.1          # seconds decoded past each edge of a read for the low-pass (``AudioStream.low_pass``)
CACHE_S = 60.0               # a read shorter than this decodes CACHE_S from its start on, kept for the reads after it


def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Give the heap's free pages back to the system. Between blocks, the freed buffers of the block before
    (ONNX Runtime's and torch's tensors of every window size) otherwise stay in glibc's arenas. With the window
    embeddings preallocated, a 3-hour file went from 903-947 MiB peak RSS to 806-818 MiB (docs/diarization.md, Long
    recordings)."""
    if _TRIM is not None:
        _TRIM(0)


class AudioStream:
    """A decodable audio file read in blocks of 16 kHz mono float32.

    ``duration`` is in seconds at the file's own rate; ``blocks(block_s)`` yields ``(start_sample, wav (S,))``
    in 16 kHz samples, the blocks tiling the file. Raises ``DataError("<path>: ...")`` when the file is missing
    or not decodable (at open or at any block).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: " + ("file not found" if not self.path.exists() else "not a regular file"))
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: not readable as audio ({_first_line(e)})") from None
        if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
            raise DataError(f"{self.path}: sample rate {info.samplerate} Hz is outside "
                            f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
        if not 1 <= info.channels <= MAX_CHANNELS:
            raise DataError(f"{self.path}: {info.channels} channels (at most {MAX_CHANNELS})")
        self.sample_rate, self.frames = info.samplerate, info.frames
        self.duration = info.frames / info.samplerate
        self.n_samples = int(round(info.frames * SAMPLE_RATE / info.samplerate))   # at 16 kHz
        self._file = None                           # opened on the first read, kept open until close()
        self._cache: tuple[int, np.ndarray] | None = None    # (16 kHz start, samples) of the last stretch decoded
        self.band_hz: float | None = None           # every read low-passed here (``low_pass``)

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._cache = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def blocks(self, block_s: float, start_s: float = 0.0) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, wav)`` blocks of ``block_s`` seconds (a whole number of VAD frames) from ``start_s`` on."""
        step = max(FRAME, int(round(block_s * SAMPLE_RATE / FRAME)) * FRAME)        # 16 kHz samples per block
        pos = int(start_s * SAMPLE_RATE) // FRAME * FRAME
        while pos < self.n_samples:
            end = min(pos + step, self.n_samples)
            yield pos, self.read(pos, end)
            pos = end
            release_free_heap()

    def read(self, start: int, end: int) -> np.ndarray:
        """16 kHz samples ``[start, end)`` ``(end - start,)``, zero past the end of the file.

        The last stretch decoded is kept (``CACHE_S`` from a short read on, or the whole of a longer one), so the
        passes that come back to it (the embeddings after speech detection in a file of one block, the overlap
        detector's chunks, the boundaries' short windows) slice it instead of decoding and resampling again."""
        c = self._cache
        if c is not None and c[0] <= start and end <= c[0] + c[1].size:
            return c[1][start - c[0]: end - c[0]].copy()
        # a short read decodes CACHE_S from its start on: the reads after it, later in the file, slice that
        wav = self._decode(start, max(end, start + int(CACHE_S * SAMPLE_RATE)))
        self._cache = (start, wav)
        return wav[: end - start].copy()

    def low_pass(self, hz: float | None) -> None:
        """Every read from now on low-passed at ``hz`` (``audio.bandwidth.low_pass``; None: as recorded), the filter
        run over a stretch ``BAND_MARGIN_S`` longer on each side, so that blocks and windows join as one filtering
        of the whole file would."""
        if hz != self.band_hz:
            self.band_hz = None if hz is None else float(hz)
            self._cache = None

    def _decode(self, start: int, end: int) -> np.ndarray:
        if self.band_hz is None:
            return self._decode_as_recorded(start, end)
        m = int(BAND_MARGIN_S * SAMPLE_RATE)
        lo = max(0, start - m)
        return low_pass(self._decode_as_recorded(lo, end + m), self.band_hz)[start - lo: end - lo]

    def _decode_as_recorded(self, start: int, end: int) -> np.ndarray:
        sr = self.sample_rate
        if sr == SAMPLE_RATE:
            wav = self._read_native(start, end)
        else:
            margin = int(RESAMPLE_MARGIN_S * sr)
            g = math.gcd(sr, SAMPLE_RATE)
            up, down = SAMPLE_RATE // g, sr // g
            a, b = math.floor(start * sr / SAMPLE_RATE), math.ceil(end * sr / SAMPLE_RATE)
            lo = max(0, (a - margin) // down * down)    # a multiple of `down`: its 16 kHz position is a whole sample
            x = self._read_native(lo, b + margin)
            y = resample(x, sr, SAMPLE_RATE)
            off = lo // down * up                       # 16 kHz sample where y starts
            wav = y[start - off: end - off]
        out = np.zeros(end - start, dtype=np.float32)
        out[: wav.size] = wav[: end - start]
        return out

    def _read_native(self, start: int, end: int) -> np.ndarray:
        try:
            if self._file is None:
                self._file = sf.SoundFile(str(self.path))
            self._file.seek(min(start, self.frames))
            data = self._file.read(max(0, min(end, self.frames) - start), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise DataError(f"{self.path}: not readable as audio at {start / self.sample_rate:.1f} s "
                            f"({_first_line(e)})") from None
        x = to_mono(data)                                                     # (S, C) -> (S,)
        if not np.isfinite(x).all():
            raise DataError(f"{self.path}: audio contains NaN or Inf samples near {start / self.sample_rate:.1f} s")
        return x


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0] or type(e).__name__


class SpeechPass(NamedTuple):
    """What the speech pass measures, per 32 ms frame of the file (``F = ceil(S / 512)``): ``probs`` ``(F,)``,
    Silero's speech probability; ``narrow_s``, the seconds of the file that are narrowband; ``power`` ``(F,)``, the
    mean-square power (for the file's speech level, ``audio.frontend.active_level``)."""

    probs: np.ndarray
    narrow_s: float
    power: np.ndarray


def speech_probs_stream(stream: AudioStream, block_s: float, *, threads: int = 1, progress=None) -> SpeechPass:
    """Silero speech probability of every 32 ms frame of the file, block by block, and what else the same pass
    measures (``SpeechPass``). Narrowband: a file recorded at ``NARROWBAND_RATE`` or below, and a block whose
    content is narrowband (``vad.narrowband_content``: a telephone call stored at 16 kHz), gets
    ``speech_probs_narrowband`` (both of Silero's modes).

    ``progress(seconds)`` is called after each block with the seconds of audio it covered."""
    narrow_file = stream.sample_rate <= NARROWBAND_RATE
    out = []
    narrow_s = 0.0
    power = []
    tail = np.zeros(0, dtype=np.float32)
    for start, wav in stream.blocks(block_s):
        power.append(frame_power(wav))
        narrow = narrow_file or narrowband_content(wav)
        narrow_s += wav.size / SAMPLE_RATE if narrow else 0.0
        probs = speech_probs_narrowband if narrow else speech_probs
        p = probs(np.concatenate([tail, wav]), threads)
        out.append(p[tail.size // FRAME: tail.size // FRAME + -(-wav.size // FRAME)])
        tail = wav[-CONTEXT_FRAMES * FRAME:] if wav.size >= CONTEXT_FRAMES * FRAME else np.zeros(0, np.float32)
        if progress is not None:
            progress(wav.size / SAMPLE_RATE)
    return SpeechPass(np.concatenate(out) if out else np.zeros(0, dtype=np.float32), narrow_s,
                      np.concatenate(power) if power else np.zeros(0))


def windows_over(speech: list[tuple[int, int]], window: int, hop: int, min_window: int) -> np.ndarray:
    """Embedding windows ``(W, 2)`` ``[start, end)`` in samples over speech segments ``[(start, end)]``.

    A segment at least ``window`` long gets windows every ``hop`` (the last one aligned to its end); a shorter
    one of at least ``min_window`` gets one window of its own length; shorter ones get none (they take the
    label of the nearest window later).
    """
    out = []
    for s, e in speech:
        n = e - s
        if n < min_window:
            continue
        if n <= window:
            out.append((s, e))
            continue
        starts = list(range(s, e - window + 1, hop))
        if starts[-1] + window < e:
            starts.append(e - window)
        out.extend((a, a + window) for a in starts)
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


__all__ = ["AudioStream", "SpeechPass", "speech_probs_stream", "windows_over", "SAMPLE_RATE"]

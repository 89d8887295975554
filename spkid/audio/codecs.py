"""Real speech codecs through libsndfile, in memory, and a bank of codec-degraded training utterances.

This libsndfile (1.2.2, as bundled with soundfile 0.13) writes Opus (Ogg), MP3 (LAME), GSM 6.10, G.721
ADPCM and G.711 mu-law/A-law to a ``BytesIO``. Measured on one 2-core CPU thread, Opus encodes at only
about 30-50x real time (20-35 ms per second of audio), so a real Opus call per batch item would cost about
40 ms per 1.5 s crop: more than the training step can afford. Training therefore uses a ``CodecBank``:
a few utterances per speaker are coded once at start (each with a codec drawn from the list) and the
sampler takes a codec item's crop from that speaker's coded copies.

Codecs (``CODECS``): ``opus`` wideband 16 kHz at 6-14 kbit/s, ``opus-nb`` 8 kHz at 6-14 kbit/s, ``mp3``
16 kHz at 8-24 kbit/s, ``gsm`` GSM 6.10 (8 kHz, 13 kbit/s), ``g721`` (8 kHz ADPCM, 32 kbit/s),
``mulaw`` / ``alaw`` (G.711, 8 kHz, 64 kbit/s). 8 kHz codecs resample down and back up, so their output
has nothing above 4 kHz.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import multiprocessing
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from spkid.audio.io import resample, to_mono

SAMPLE_RATE = 16000
# name -> (container, subtype, codec sample rate, compression_level range or None)
CODECS: dict[str, tuple[str, str, int, tuple[float, float] | None]] = {
    "opus": ("OGG", "OPUS", 16000, (0.975, 1.0)),        # ~14 .. 6 kbit/s on speech (measured)
    "opus-nb": ("OGG", "OPUS", 8000, (0.975, 1.0)),
    "mp3": ("MP3", "MPEG_LAYER_III", 16000, (0.9, 0.99)),  # constant bit rate ~24 .. 8 kbit/s
    "gsm": ("WAV", "GSM610", 8000, None),
    "g721": ("WAV", "G721_32", 8000, None),
    "mulaw": ("WAV", "ULAW", 8000, None),
    "alaw": ("WAV", "ALAW", 8000, None),
}


def codec_roundtrip(wav: np.ndarray, codec: str, rng: np.random.Generator | None = None, *,
                    level: float | None = None) -> np.ndarray:
    """Encode and decode a 16 kHz waveform ``(S,)`` with ``codec`` -> ``(S,)`` float32, time-aligned.

    ``level`` (libsndfile compression level, 0..1; higher = lower bit rate) is drawn from the codec's range
    with ``rng`` when not given. Input is clipped to [-1, 1] (codecs take fixed-point audio).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    fmt, subtype, rate, levels = CODECS[codec]
    x = np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0)
    if x.size == 0:
        return x
    if levels is not None and level is None:
        rng = rng if rng is not None else np.random.default_rng(0)
        level = float(rng.uniform(*levels))
    coded_in = resample(x, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else x
    buf = io.BytesIO()
    kw = {"compression_level": level} if levels is not None else {}
    if fmt == "MP3":
        kw["bitrate_mode"] = "CONSTANT"
    sf.write(buf, coded_in, rate, format=fmt, subtype=subtype, **kw)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32", always_2d=True)
    y = to_mono(y)
    y = resample(y, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else y
    return _align(x, y)


def _align(ref: np.ndarray, y: np.ndarray, max_lag: int = 2400) -> np.ndarray:
    """``y`` shifted by its best cross-correlation lag against ``ref`` (codec delay) and cut/padded to ``len(ref)``."""
    n = len(ref)
    m = 1 << (n + len(y)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(y, m) * np.conj(np.fft.rfft(ref, m)), m)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    lag = int(lags[np.argmax(xc[lags % m])])
    out = np.zeros(n, dtype=np.float32)
    if lag >= 0:
        seg = y[lag: lag + n]
        out[: len(seg)] = seg
    else:
        seg = y[: n + lag]
        out[-lag: -lag + len(seg)] = seg
    return out


class CodecBank:
    """Codec-degraded copies of some training utterances, stored as int16 back to back.

    ``source[i]`` is the index (into the caller's utterance list) that copy ``i`` was made from,
    ``labels[i]`` its speaker label and ``codec[i]`` the codec used; ``by_label[label]`` lists copy indices.
    """

    def __init__(self, audio: torch.Tensor, offsets: torch.Tensor, source: list[int], labels: list[int],
                 codec: list[str]):
        self.audio, self.offsets, self.source, self.labels, self.codec = audio, offsets, source, labels, codec
        self.by_label: dict[int, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            self.by_label[lab].append(i)

    def __len__(self) -> int:
        return len(self.source)

    def utterance(self, i: int) -> torch.Tensor:
        """Copy ``i`` as float32 ``(S,)``."""
        return self.stored(i).float() / 32767.0

    def stored(self, i: int) -> torch.Tensor:
        """Copy ``i`` as stored: an int16 view ``(S,)``."""
        return self.audio[int(self.offsets[i]): int(self.offsets[i + 1])]

    @classmethod
    def build(cls, utterances: Sequence[torch.Tensor], labels: Sequence[int], *, per_speaker: int,
              codecs: Sequence[str], seed: int = 0, workers: int = 1, progress: bool = False) -> "CodecBank":
        """Code ``per_speaker`` utterances of each label (a seeded choice), each with a codec drawn from
        ``codecs``. ``utterances`` are int16 or float waveforms ``(S_i,)`` at 16 kHz; ``workers`` > 1 codes
        in that many processes. The same arguments give the same bank."""
        rng = np.random.default_rng(seed)
        by_label: dict[int, list[int]] = defaultdict(list)
        for i, lab in enumerate(labels):
            by_label[int(lab)].append(i)
        jobs = []                       # (utterance index, label, codec, compression level)
        for lab in sorted(by_label):
            pick = rng.permutation(by_label[lab])[:per_speaker]
            for i in sorted(pick.tolist()):
                name = codecs[int(rng.integers(len(codecs)))]
                levels = CODECS[name][3]
                jobs.append((i, lab, name, float(rng.uniform(*levels)) if levels else None))
        args = [(_as_float(utterances[i]), name, level) for i, _, name, level in jobs]
        coded = _map(_code_one, args, workers, progress)
        chunks = [torch.from_numpy(np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)) for y in coded]
        offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
        audio = torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.int16)
        return cls(audio, offsets, [j[0] for j in jobs], [j[1] for j in jobs], [j[2] for j in jobs])


def _as_float(w: torch.Tensor | np.ndarray) -> np.ndarray:
    w = w.numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return w.astype(np.float32) / 32767.0 if w.dtype == np.int16 else w.astype(np.float32)


def _code_one(args: tuple[np.ndarray, str, float | None]) -> np.ndarray:
    wav, name, level = args
    return codec_roundtrip(wav, name, level=level)


def _map(fn, args: list, workers: int, progress: bool) -> list:
    """``[fn(a) for a in args]`` in order, in ``workers`` forked processes when > 1, with a tqdm bar."""
    if workers <= 1 or len(args) < 2:
        return [fn(a) for a in tqdm(args, desc="codecs", unit="utt", disable=not progress)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    out = [None] * len(args)
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        futures = {pool.submit(fn, a): i for i, a in enumerate(args)}
        for fut in tqdm(cf.as_completed(futures), total=len(args), desc="codecs", unit="utt", disable=not progress):
            out[futures[fut]] = fut.result()
    return out


__all__ = ["CODECS", "codec_roundtrip", "CodecBank"]

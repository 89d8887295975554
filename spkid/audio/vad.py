"""Speech detection with Silero VAD (MIT; the model ships inside the ``silero-vad`` wheel, nothing downloads).

The packaged "sequence" ONNX export (``silero_vad_16k_sequence.onnx``) runs the stock streaming model over a
block of 32 ms frames (512 samples, each with the previous frame's last 64 samples as context) in one
onnxruntime call, carrying the LSTM state between blocks: the same per-frame probabilities as the streaming
model without a Python loop per frame (about 0.1 s of one CPU thread per minute of audio). The
``silero_vad`` Python package itself is never imported: its ``model.py`` calls ``torch.set_num_threads(1)``
at import, and its audio helpers want torchaudio. Only its data folder is located, and the probability ->
segment rules (hysteresis, minimum speech and silence, padding) are reimplemented here, following
``silero_vad.utils_vad.get_speech_timestamps``.

Example::

    segs = speech_segments(wav)                 # [(start, end), ...] in samples of the 16 kHz input
    speech, seconds = keep_speech(wav)          # the speech (with padding) concatenated, (S',)
"""
from __future__ import annotations

import importlib.util
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch

from spkid.audio.frontend import set_level
from spkid.errors import ConfigError

SAMPLE_RATE = 16000
FRAME = 512          # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64         # samples of the previous frame the model sees before each frame
BLOCK_FRAMES = 512   # frames per onnxruntime call (about 16 s of audio): bounded memory, few calls
MODEL_FILE = "silero_vad_16k_sequence.onnx"
NARROW_MODEL_FILE = "silero_vad.onnx"    # the stock streaming model, run in its 8 kHz mode for narrowband audio
NARROW_FRAME, NARROW_CONTEXT = 256, 32   # its 8 kHz frame (the same 32 ms) and context, in 8 kHz samples
NARROW_CHUNK, NARROW_WARMUP = 256, 64    # frames per chunk of the batch it runs as, and of audio before each chunk
NARROW_CUT_HZ = 4300     # narrowband content: the louder half of the frames hold less than NARROW_SHARE_DB of their
NARROW_SHARE_DB = -50.0  # power above this (telephone audio stored at 16 kHz: -63 to -67 dB; wideband speech of every
                         # shared corpus: -46 dB and up; docs/diarization.md)


@dataclass
class VadConfig:
    """Speech-detection settings (times in milliseconds).

    ``threshold``: a frame starts speech when its probability is >= this; speech ends only after the
    probability stays below ``threshold - 0.15`` (hysteresis, as Silero does) for ``min_silence_ms``.
    Segments shorter than ``min_speech_ms`` are dropped; each kept segment is widened by ``pad_ms`` on both
    sides, and segments that then touch are merged.
    """

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 200     # shorter pauses stay inside the segment (speaker ID wants voice, not pauses)
    pad_ms: int = 100             # keeps soft word onsets/endings the 32 ms frames may miss
    threads: int = 1              # onnxruntime intra-op threads

    def validate(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"vad.threshold must be in (0, 1), got {self.threshold}")
        for name in ("min_speech_ms", "min_silence_ms", "pad_ms"):
            if getattr(self, name) < 0:
                raise ConfigError(f"vad.{name} must be >= 0, got {getattr(self, name)}")
        if self.threads < 1:
            raise ConfigError(f"vad.threads must be >= 1, got {self.threads}")


_SESSIONS: dict[tuple[int, int, str], object] = {}
_LOCK = threading.Lock()


def model_path(name: str = MODEL_FILE) -> str:
    """Path of a packaged Silero ONNX model (the ``silero_vad`` package is located, not imported): by default the
    16 kHz sequence model."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("speech detection needs the silero-vad package (pip install silero-vad==6.2.3 --no-deps)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: Silero VAD model file missing (reinstall silero-vad==6.2.3)")
    return path


def _session(threads: int, name: str = MODEL_FILE):
    """One onnxruntime session per (process, thread count, model); rebuilt after a fork (sessions are not
    fork-safe)."""
    key = (os.getpid(), threads, name)
    with _LOCK:
        if key not in _SESSIONS:
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.inter_op_num_threads, opts.intra_op_num_threads = 1, threads
            _SESSIONS[key] = ort.InferenceSession(model_path(name), sess_options=opts,
                                                  providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


def speech_probs(wav: torch.Tensor | np.ndarray, threads: int = 1) -> np.ndarray:
    """Per-frame speech probability ``(ceil(S / 512),)`` of a 16 kHz waveform ``(S,)``; frame k covers
    samples ``[512 k, 512 (k + 1))`` (the last frame zero-padded)."""
    return _speech_probs_16k(set_level(_as_numpy(wav)), threads)    # Silero loses speech below about -40 dBFS peak


def _speech_probs_16k(x: np.ndarray, threads: int) -> np.ndarray:
    """``speech_probs`` of a waveform ``(S,)`` already levelled."""
    n = -(-x.size // FRAME)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    frames = np.zeros((n, FRAME), dtype=np.float32)
    frames.reshape(-1)[: x.size] = x
    context = np.zeros((n, CONTEXT), dtype=np.float32)
    context[1:] = frames[:-1, -CONTEXT:]
    blocks = np.concatenate([context, frames], axis=1)                  # (n, 576)
    sess = _session(threads)
    h = np.zeros((1, 1, 128), dtype=np.float32)
    c = np.zeros((1, 1, 128), dtype=np.float32)
    out = []
    for i in range(0, n, BLOCK_FRAMES):
        p, h, c = sess.run(["speech_probs", "hn", "cn"], {"input": blocks[i: i + BLOCK_FRAMES], "h": h, "c": c})
        out.append(p)
    return np.concatenate(out).astype(np.float32)


def narrowband_content(wav: np.ndarray) -> bool:
    """Whether a 16 kHz waveform ``(S,)`` is narrowband in content (a telephone call stored at 16 kHz): its louder
    half of 32 ms frames (the speech, not the pauses) holds under ``NARROW_SHARE_DB`` of its power above
    ``NARROW_CUT_HZ``. Silence (no power at all) and clips under one frame are not narrowband."""
    from scipy.signal import stft
    x = np.asarray(wav, dtype=np.float64)
    if x.size < FRAME:
        return False
    hz, _, z = stft(x, fs=SAMPLE_RATE, nperseg=FRAME, noverlap=0, boundary=None, padded=False)
    p = np.abs(z) ** 2                                                      # (F, T)
    energy = p.sum(0)
    loud = p[:, energy >= np.median(energy)]
    total = loud.sum()
    return bool(total > 0 and loud[hz >= NARROW_CUT_HZ].sum() < total * 10 ** (NARROW_SHARE_DB / 10))


def speech_probs_narrowband(wav: torch.Tensor | np.ndarray, threads: int = 1) -> np.ndarray:
    """Per-frame speech probability ``(ceil(S / 512),)`` of a 16 kHz waveform ``(S,)`` whose content is narrowband
    (a telephone channel, a recording at 8 kHz): the larger of ``speech_probs`` and of Silero's 8 kHz mode on the
    waveform decimated to 8 kHz (256-sample frames: the same 32 ms). On narrowband voices each of the two misses
    speech the other finds (whole FSDD and synthetic-voice calls for the 16 kHz model; docs/diarization.md)."""
    from concurrent.futures import ThreadPoolExecutor

    x = set_level(_as_numpy(wav))          # Silero loses speech below about -40 dBFS peak
    n = -(-x.size // FRAME)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    # the two modes are independent: the 16 kHz one runs in a second thread (onnxruntime releases the GIL) when
    # this process may use two cores (torch's thread count: --threads 1 keeps it to one)
    pool = ThreadPoolExecutor(1) if torch.get_num_threads() > 1 else None
    p16_job = pool.submit(_speech_probs_16k, x, threads) if pool is not None else None
    try:
        p8 = _speech_probs_8k(x, n, threads)
        p16 = p16_job.result() if p16_job is not None else _speech_probs_16k(x, threads)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return np.maximum(p16, p8)


def _speech_probs_8k(x: np.ndarray, n: int, threads: int) -> np.ndarray:
    """Silero's 8 kHz mode on a 16 kHz waveform ``(S,)`` decimated to 8 kHz: ``(n,)`` probabilities of the same
    32 ms frames as ``speech_probs``."""
    from spkid.audio.io import resample
    y = np.zeros((n + NARROW_WARMUP) * NARROW_FRAME, dtype=np.float32)      # NARROW_WARMUP frames of zeros first
    r = resample(x, SAMPLE_RATE, SAMPLE_RATE // 2)[: n * NARROW_FRAME]
    y[NARROW_WARMUP * NARROW_FRAME: NARROW_WARMUP * NARROW_FRAME + r.size] = r
    frames = y.reshape(-1, NARROW_FRAME)                                    # (W + n, 256)
    # the stock model is stateful frame by frame: run the file as a batch of chunks of NARROW_CHUNK frames, each
    # after the NARROW_WARMUP frames before it (the LSTM warms up on real audio; those outputs are dropped). An
    # approximation of one frame-by-frame pass (the LSTM remembers more than the warm-up): 10x faster, a little
    # more false alarm (docs/diarization.md)
    b = -(-n // NARROW_CHUNK)
    steps = NARROW_WARMUP + NARROW_CHUNK
    idx = np.arange(b)[:, None] * NARROW_CHUNK + np.arange(steps)[None]     # (B, steps) rows of `frames`
    idx = np.minimum(idx, len(frames) - 1)
    prev = np.zeros((b, NARROW_CONTEXT), dtype=np.float32)
    sess = _session(threads, NARROW_MODEL_FILE)
    state, sr = np.zeros((2, b, 128), dtype=np.float32), np.array(SAMPLE_RATE // 2, dtype=np.int64)
    p8 = np.zeros((b, NARROW_CHUNK), dtype=np.float32)
    for t in range(steps):
        fr = frames[idx[:, t]]                                              # (B, 256)
        p, state = sess.run(["output", "stateN"], {"input": np.concatenate([prev, fr], 1), "state": state, "sr": sr})
        prev = fr[:, -NARROW_CONTEXT:]
        if t >= NARROW_WARMUP:
            p8[:, t - NARROW_WARMUP] = p[:, 0]
    return p8.reshape(-1)[:n]


def segments_from_probs(probs: np.ndarray, n_samples: int, cfg: VadConfig | None = None) -> list[tuple[int, int]]:
    """Frame probabilities ``(n_frames,)`` -> padded, merged speech segments ``[(start, end), ...]`` in samples."""
    cfg = cfg or VadConfig()
    cfg.validate()
    ms = SAMPLE_RATE // 1000
    neg = max(cfg.threshold - 0.15, 0.01)
    min_silence = cfg.min_silence_ms * ms
    raw: list[list[int]] = []
    start, silence_from = None, None
    for k, p in enumerate(probs.tolist()):
        pos = k * FRAME
        if p >= cfg.threshold:
            silence_from = None
            if start is None:
                start = pos
        elif p < neg and start is not None:
            if silence_from is None:
                silence_from = pos
            if pos + FRAME - silence_from >= min_silence:   # the pause is long enough: close the segment
                raw.append([start, silence_from])
                start, silence_from = None, None
    if start is not None:
        raw.append([start, silence_from if silence_from is not None else n_samples])
    pad = cfg.pad_ms * ms
    segs: list[list[int]] = []
    for s, e in raw:
        e = min(e, n_samples)
        if e - s < cfg.min_speech_ms * ms:
            continue
        s, e = max(0, s - pad), min(n_samples, e + pad)
        if segs and s <= segs[-1][1]:
            segs[-1][1] = max(segs[-1][1], e)
        else:
            segs.append([s, e])
    return [(s, e) for s, e in segs]


def speech_segments(wav: torch.Tensor | np.ndarray, cfg: VadConfig | None = None) -> list[tuple[int, int]]:
    """Speech segments of a 16 kHz waveform ``(S,)``: ``[(start, end), ...]`` in samples, sorted, disjoint,
    already widened by ``cfg.pad_ms``."""
    cfg = cfg or VadConfig()
    cfg.validate()
    x = _as_numpy(wav)
    return segments_from_probs(speech_probs(x, cfg.threads), x.size, cfg)


def keep_speech(wav: torch.Tensor | np.ndarray, cfg: VadConfig | None = None) -> tuple[torch.Tensor, float]:
    """The speech of ``wav`` ``(S,)`` (16 kHz) with its padding, concatenated -> ``(wav (S',), speech_seconds)``.

    ``speech_seconds`` is ``S' / 16000``; ``S'`` is 0 (an empty tensor) when no speech is found.
    """
    x = _as_numpy(wav)
    segs = speech_segments(x, cfg)
    kept = np.concatenate([x[s:e] for s, e in segs]) if segs else np.zeros(0, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(kept, dtype=np.float32)), kept.size / SAMPLE_RATE


def _as_numpy(wav: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    x = np.ascontiguousarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected one 16 kHz waveform (S,), got shape {x.shape}")
    return x


__all__ = ["VadConfig", "speech_segments", "keep_speech", "speech_probs", "speech_probs_narrowband", "segments_from_probs",
           "model_path"]

"""Speech detection (spkid.audio.vad): silence around and inside speech is removed, speech is kept, noise and
silence alone give ~0 s; the segment rules on hand-made probabilities; config errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED
from spkid.audio import vad
from spkid.audio.synth import make_voice, synth_utterance
from spkid.audio.vad import (FRAME, NARROW_CHUNK, VadConfig, _session, keep_speech, narrowband_content,
                             segments_from_probs, speech_probs, speech_probs_narrowband, speech_segments)
from spkid.errors import ConfigError

SR = 16000
AUDIO = SHARED / "data" / "speechocean762-audio"
needs_audio = pytest.mark.skipif(not AUDIO.is_dir(), reason="../shared/data/speechocean762-audio not present")


def _synthetic_speech(seed: int, seconds: float = 2.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synth_utterance(make_voice(rng), rng, SR, seconds).astype(np.float32)


def _padded(speech: np.ndarray, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """2 s silence, speech, 1 s silence, speech, 2 s silence (a -70 dB noise floor, as in a quiet room).
    Returns the signal and the two speech spans in samples."""
    rng = np.random.default_rng(seed)
    floor = lambda n: (rng.standard_normal(n) * 3e-4).astype(np.float32)   # noqa: E731
    parts = [floor(2 * SR), speech, floor(SR), speech, floor(2 * SR)]
    a = 2 * SR
    spans = [(a, a + len(speech)), (a + len(speech) + SR, a + 2 * len(speech) + SR)]
    return np.concatenate(parts), spans


def _check_silence_removed(speech: np.ndarray, seed: int, cfg: VadConfig) -> None:
    x, spans = _padded(speech, seed)
    segs = speech_segments(x, cfg)
    assert segs, "no speech found"
    pad = cfg.pad_ms * SR // 1000
    slack = pad + 3 * FRAME                               # padding plus ~0.1 s of detector latency at the edges
    covered = np.zeros(len(x), dtype=bool)
    for s, e in segs:
        covered[s:e] = True
    # silence well away from speech is gone: the first 2 s, the last 2 s and the middle second, minus slack
    assert not covered[: spans[0][0] - slack].any()
    assert not covered[spans[1][1] + slack:].any()
    assert not covered[spans[0][1] + slack: spans[1][0] - slack].any()
    # the speech is kept: what the detector finds in the speech alone is covered in the padded signal too
    alone = speech_segments(speech, cfg)
    kept_alone = sum(e - s for s, e in alone)
    for off in (spans[0][0], spans[1][0]):
        inside = sum(covered[off + s: off + e].sum() for s, e in alone)
        assert inside >= 0.95 * kept_alone
    y, seconds = keep_speech(torch.from_numpy(x), cfg)
    assert y.shape == (sum(e - s for s, e in segs),) and seconds == pytest.approx(y.shape[0] / SR)
    assert seconds <= 2 * len(speech) / SR + 4 * slack / SR             # at most the speech plus its padding
    assert seconds >= 0.9 * 2 * kept_alone / SR


def test_synthetic_speech_keeps_speech_and_drops_silence():
    cfg = VadConfig()
    for seed in (0, 2, 4):
        speech = _synthetic_speech(seed)
        assert keep_speech(speech, cfg)[1] > 0.8 * len(speech) / SR       # the synthetic voice is speech to Silero
        _check_silence_removed(speech, seed, cfg)


@needs_audio
def test_real_speech_keeps_speech_and_drops_silence():
    from spkid.audio.io import load_audio
    files = sorted(AUDIO.glob("*/*.flac"))[::40][:4]
    assert files
    for k, f in enumerate(files):
        speech = load_audio(f).numpy()
        _check_silence_removed(speech, k, VadConfig())


def test_noise_and_silence_have_no_speech():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(5 * SR).astype(np.float32) * 0.1
    brown = np.cumsum(rng.standard_normal(5 * SR)).astype(np.float32)
    brown = 0.1 * (brown - brown.mean()) / brown.std()
    hum = (0.2 * np.sin(2 * np.pi * 50 * np.arange(5 * SR) / SR)).astype(np.float32)
    for name, x in (("silence", np.zeros(5 * SR, np.float32)), ("white", white), ("brown", brown), ("hum", hum)):
        y, seconds = keep_speech(x)
        assert seconds < 0.3, name
    assert keep_speech(np.zeros(0, np.float32))[1] == 0.0
    assert speech_probs(np.zeros(0, np.float32)).shape == (0,)


def test_segment_rules_on_given_probabilities():
    cfg = VadConfig(threshold=0.5, min_speech_ms=250, min_silence_ms=200, pad_ms=0)
    f = FRAME                                                # 32 ms per frame
    p = np.zeros(100, np.float32)
    p[10:30] = 0.9                                           # 640 ms of speech
    p[30:34] = 0.1                                           # 128 ms pause: too short to end the segment
    p[34:50] = 0.9
    p[50:52] = 0.45                                          # between the thresholds: still speech (hysteresis)
    p[52:60] = 0.1                                           # 256 ms pause: ends it at frame 52
    p[70:74] = 0.9                                           # 128 ms burst: shorter than min_speech, dropped
    p[90:] = 0.8                                             # speech running to the end
    n = 100 * f
    assert segments_from_probs(p, n, cfg) == [(10 * f, 52 * f), (90 * f, n)]
    padded = segments_from_probs(p, n, VadConfig(threshold=0.5, min_speech_ms=250, min_silence_ms=200, pad_ms=100))
    assert padded == [(10 * f - 1600, 52 * f + 1600), (90 * f - 1600, n)]
    # padding that makes two segments touch merges them
    q = np.zeros(40, np.float32)
    q[5:15] = q[22:32] = 0.9
    merged = segments_from_probs(q, 40 * f, VadConfig(min_speech_ms=100, min_silence_ms=100, pad_ms=150))
    assert merged == [(5 * f - 2400, 32 * f + 2400)]


def test_config_errors_and_model_cache():
    for bad in (VadConfig(threshold=1.5), VadConfig(min_speech_ms=-1), VadConfig(pad_ms=-5), VadConfig(threads=0)):
        with pytest.raises(ConfigError):
            bad.validate()
    with pytest.raises(ValueError):
        speech_segments(np.zeros((2, 100), np.float32))
    assert _session(1) is _session(1)                        # loaded once per process


def test_one_minute_runs_the_model_over_blocks_of_frames_not_frame_by_frame(monkeypatch):
    """The speed comes from few onnxruntime calls (``BLOCK_FRAMES`` frames each, the LSTM state carried across);
    its measure is benchmarks/pretrained.py's, not a clock here."""
    x = np.tile(_synthetic_speech(1, 3.0), 20)[: 60 * SR]
    whole = speech_probs(x)
    sess, calls = _session(1), []

    class Counting:
        def run(self, names, feed):
            calls.append(len(feed["input"]))
            return sess.run(names, feed)
    monkeypatch.setattr(vad, "_session", lambda threads, *a: Counting())
    np.testing.assert_array_equal(speech_probs(x), whole)
    n = -(-x.size // FRAME)
    assert len(calls) == -(-n // vad.BLOCK_FRAMES) and sum(calls) == n and len(calls) <= 4


def _phone(x: np.ndarray) -> np.ndarray:
    """A G.711 telephone call of a 16 kHz waveform: 300-3400 Hz at 8 kHz, mu-law, back at 16 kHz ``(S,)``."""
    from scipy.signal import butter, resample_poly, sosfiltfilt

    from spkid.audio.channel import mu_law
    narrow = sosfiltfilt(butter(6, [300, 3400], "bandpass", fs=8000, output="sos"), resample_poly(x, 1, 2))
    narrow = mu_law(torch.from_numpy(0.5 * narrow / np.abs(narrow).max())).numpy()
    return resample_poly(narrow, 2, 1).astype(np.float32)[: x.size]


@pytest.mark.parametrize("n", [0, 1, 100, NARROW_CHUNK, 3 * NARROW_CHUNK + 7])
def test_narrowband_probs_are_framed_like_the_16k_ones(n):
    """One probability per 32 ms frame, whatever the length (batched chunks of the 8 kHz mode are cut back to the
    frames there are), never below the 16 kHz model's, silence still silence."""
    x = _padded(_synthetic_speech(3, 2.0), 3)[0]
    x = np.resize(x, n * FRAME - (FRAME // 3 if n else 0))
    p, p16 = speech_probs_narrowband(x), speech_probs(x)
    assert p.shape == p16.shape == (-(-x.size // FRAME),)
    assert (p >= p16).all() and ((p >= 0) & (p <= 1)).all()
    assert (speech_probs_narrowband(np.zeros(20 * SR, np.float32)) < 0.5).all()


def test_narrowband_modes_in_two_threads_or_one_agree():
    """With two cores the 16 kHz mode runs beside the 8 kHz one; with torch kept to one thread they run in turn:
    the same probabilities either way."""
    x = np.resize(_padded(_synthetic_speech(4, 2.0), 3)[0], 5 * NARROW_CHUNK * FRAME)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        both = speech_probs_narrowband(x)
        torch.set_num_threads(1)
        one = speech_probs_narrowband(x)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(both, one)


def test_narrowband_content_tells_a_telephone_call_stored_at_16k_from_wideband_audio():
    """The same voices wideband (clean, and with white noise) are not narrowband; through a telephone channel and
    back at 16 kHz they are, with noise in the pauses too; silence and a clip under one frame are not."""
    rng = np.random.default_rng(0)
    for seed in range(4):
        x = _padded(_synthetic_speech(seed, 3.0), seed)[0]
        assert not narrowband_content(x), seed
        assert not narrowband_content(x + 0.01 * rng.standard_normal(x.size).astype(np.float32)), seed
        call = _phone(x)
        assert narrowband_content(call), seed
        assert narrowband_content(call + 1e-4 * _phone(rng.standard_normal(x.size))), seed
    assert not narrowband_content(np.zeros(10 * SR, np.float32))
    assert not narrowband_content(_phone(_synthetic_speech(0))[: FRAME - 1])


@needs_audio
def test_real_wideband_recordings_are_not_narrowband():
    """Recordings of speechocean762 and librispeech-sample (measured: -46 dB and up above 4.3 kHz; the threshold is
    -50 dB) keep the 16 kHz detector alone; the same recordings through a telephone channel take both modes."""
    from spkid.audio.io import load_audio
    files = sorted(AUDIO.rglob("*.flac"))[:10] + sorted((SHARED / "data" / "librispeech-sample").rglob("*.opus"))[:10]
    assert files
    for f in files:
        x = load_audio(f).numpy()
        assert not narrowband_content(x), f
        assert narrowband_content(_phone(x)), f


FSDD = SHARED / "data" / "fsdd"


@pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd not present")
def test_narrowband_finds_telephone_speech_the_16k_model_misses():
    """FSDD digits through a telephone channel: Silero's 16 kHz model hears next to nothing (measured: 0-1 % of the
    frames against 66-68 % clean for george, jackson, theo); with its 8 kHz mode as well, most comes back."""
    from spkid.audio.io import load_audio
    for spk in ("george", "jackson", "theo"):
        files = sorted((FSDD / spk).glob("*.flac"))[:20]
        gap = np.zeros(int(0.3 * SR), np.float32)
        clean = np.concatenate([y for f in files for y in (load_audio(f).numpy(), gap)])
        call = _phone(clean)
        heard = (speech_probs(clean) > 0.5).mean()
        assert (speech_probs_narrowband(call) > 0.5).mean() > 0.6 * heard, spk


@needs_audio
@pytest.mark.parametrize("level_db", [-50, -60])
def test_quiet_speech_is_found_as_at_full_level(level_db, monkeypatch):
    """Real speech recorded far below full scale (peak -50 / -60 dBFS, 16-bit) is found as at -6 dBFS; Silero on the
    input as it is loses half of it at -50 and nearly all at -60."""
    import spkid.audio.vad as vad
    from spkid.audio.io import load_audio
    files = sorted(AUDIO.glob("*/*.flac"))[::40][:4]
    x = np.concatenate([np.concatenate([np.zeros(SR, np.float32), load_audio(f).numpy()]) for f in files])
    x = 0.5 * x / np.abs(x).max()
    quiet = (np.round(x * 10 ** ((level_db + 6) / 20) * 32767) / 32767).astype(np.float32)
    found = lambda w: sum(e - s for s, e in speech_segments(w)) / SR          # noqa: E731
    loud = found(x)
    assert loud > 5.0
    assert found(quiet) == pytest.approx(loud, rel=0.1)
    monkeypatch.setattr(vad, "set_level", lambda w: w)                         # Silero on the input as it is
    assert found(quiet) < 0.6 * loud

"""Where a recording's speech ends (spkid.audio.bandwidth): a voice band-limited at 4 kHz under wideband noise is
cut at 4 kHz; wideband speech, a band-limited voice without noise, and too little audio are left alone; the
low-pass keeps the band and removes what lies above; the stream's low-passed reads join across blocks (the
diarization pipeline's use: tests/diarization/test_diarize_pipeline.py)."""
import numpy as np
import soundfile as sf

from spkid.audio.bandwidth import EDGES_HZ, band_powers, loud_and_quiet, low_pass, speech_band_edge

SR = 16000


def _bursts(seconds: float, rng, band_hz: float | None) -> np.ndarray:
    """Speech-like bursts (0.6 s on, 0.4 s off) of noise shaped like a voice, band-limited at ``band_hz``."""
    n = int(seconds * SR)
    x = rng.standard_normal(n).astype(np.float32)
    x = np.convolve(x, np.ones(4, dtype=np.float32) / 4, mode="same")          # a falling spectrum
    if band_hz is not None:
        x = low_pass(x, band_hz)
    on = (np.arange(n) // int(0.2 * SR)) % 5 < 3
    return (x * on).astype(np.float32)


def _edge(wav: np.ndarray):
    p = band_powers(wav)
    return speech_band_edge(p, *loud_and_quiet(p))


def test_band_limited_voice_under_wideband_noise_is_cut_where_it_ends():
    rng = np.random.default_rng(0)
    voice = _bursts(30.0, rng, 3900.0)
    noise = 0.05 * rng.standard_normal(voice.size).astype(np.float32)             # white: fills 4-8 kHz
    assert _edge(voice + noise) == 4000.0


def test_wideband_voice_and_noiseless_narrowband_are_left_alone():
    rng = np.random.default_rng(1)
    noise = 0.05 * rng.standard_normal(30 * SR).astype(np.float32)
    assert _edge(_bursts(30.0, rng, None) + noise) is None                        # speech reaches the top band
    assert _edge(_bursts(30.0, rng, 3900.0)) is None                              # nothing but silence above 4 kHz
    assert _edge(_bursts(1.0, rng, 3900.0) + noise[:SR]) is None                  # too few frames to tell
    assert _edge(_bursts(30.0, rng, 6900.0) + noise) is None                      # only 7-8 kHz to cut: not worth it


def test_band_powers_shape_and_frames():
    p = band_powers(np.zeros(1000, dtype=np.float32))
    assert p.shape == (2, len(EDGES_HZ) - 1) and p.dtype == np.float32 and not p.any()
    assert band_powers(np.zeros(0, dtype=np.float32)).shape == (0, len(EDGES_HZ) - 1)
    t = np.arange(SR) / SR
    p = band_powers(np.sin(2 * np.pi * 6200 * t).astype(np.float32))
    assert np.argmax(p.mean(0)) == int(np.searchsorted(EDGES_HZ, 6200, side="right")) - 1


def test_low_pass_keeps_the_band_and_removes_what_is_above():
    t = np.arange(2 * SR) / SR
    low, high = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 6000 * t)
    y = low_pass((low + high).astype(np.float32), 4000.0)
    assert y.shape == t.shape and y.dtype == np.float32
    mid = slice(SR // 2, 3 * SR // 2)                                              # away from the ends
    assert np.max(np.abs(y[mid] - low[mid])) < 1e-3
    assert low_pass(np.zeros(0, dtype=np.float32), 4000.0).size == 0


def test_stream_low_pass_joins_blocks_as_one_filtering(tmp_path):
    from spkid.diarization.stream import AudioStream
    rng = np.random.default_rng(2)
    x = (0.1 * rng.standard_normal(20 * SR)).astype(np.float32)
    path = tmp_path / "n.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    whole = low_pass(x, 4000.0)
    with AudioStream(path) as s:
        s.low_pass(4000.0)
        joined = np.concatenate([w for _, w in s.blocks(3.0)])
        part = s.read(5 * SR + 7, 9 * SR)
        s.low_pass(None)
        raw = s.read(0, 2 * SR)
    assert np.allclose(joined, whole, atol=1e-5)
    assert np.allclose(part, whole[5 * SR + 7: 9 * SR], atol=1e-5)
    assert np.array_equal(raw, x[: 2 * SR])

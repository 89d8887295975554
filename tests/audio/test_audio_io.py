"""spkid.audio: decoding, downmixing, band-limited resampling, errors, folder scanning."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.io import AUDIO_EXTENSIONS, load_audio, resample, to_mono
from spkid.data.scan import scan as list_audio
from spkid.errors import DataError


def tone(freq: float, sr: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def band_energy(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    f = np.fft.rfftfreq(x.size, 1 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum())


@pytest.mark.parametrize("ext,subtype,tol", [
    ("wav", "PCM_16", 1 / 32768), ("wav", "PCM_32", 1e-6), ("wav", "FLOAT", 0.0),
    ("flac", "PCM_16", 1 / 32768), ("flac", "PCM_24", 1e-6),
])
def test_formats_round_trip(tmp_path, ext, subtype, tol):
    x = tone(440, 16000)
    path = tmp_path / f"a.{ext}"
    sf.write(path, x, 16000, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == torch.float32 and y.shape == (x.size,)
    assert np.abs(y.numpy() - x).max() <= tol + 1e-7


def test_ogg_vorbis_decodes(tmp_path):
    x = tone(440, 16000, seconds=1.0)
    sf.write(tmp_path / "a.ogg", x, 16000, format="OGG", subtype="VORBIS")
    y = load_audio(tmp_path / "a.ogg").numpy()
    assert abs(y.size - x.size) < 1600
    assert band_energy(y, 16000, 400, 480) > 0.95 * band_energy(y, 16000, 0, 8000)


@pytest.mark.parametrize("channels", [2, 4])
def test_downmix_averages_channels(tmp_path, channels):
    x = tone(300, 16000)
    gains = np.linspace(1.0, 0.25, channels, dtype=np.float32)
    sf.write(tmp_path / "multi.wav", x[:, None] * gains[None, :], 16000, subtype="FLOAT")
    y = load_audio(tmp_path / "multi.wav")
    np.testing.assert_allclose(y.numpy(), x * gains.mean(), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 7, 8, 64])
def test_to_mono_is_the_channels_mean_and_leaves_the_input_alone(channels):
    data = np.random.default_rng(channels).standard_normal((1001, channels)).astype(np.float32)
    before = data.copy()
    y = to_mono(data)
    assert y.shape == (1001,) and y.dtype == np.float32
    if channels < 8:                                    # numpy's reduce sums the same way up to 7 columns
        assert np.array_equal(y, data.mean(axis=1))
    np.testing.assert_allclose(y, data.mean(axis=1), atol=1e-6)
    assert np.array_equal(data, before)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_length_and_tone(tmp_path, sr):
    x = tone(1000, sr, seconds=1.0)
    sf.write(tmp_path / "t.wav", x, sr, subtype="FLOAT")
    y = load_audio(tmp_path / "t.wav").numpy()
    assert abs(y.size - 16000) <= 1
    total = band_energy(y, 16000, 0, 8000)
    assert band_energy(y, 16000, 950, 1050) > 0.99 * total


def test_resample_is_band_limited():
    """A 10 kHz tone at 44.1 kHz lies above the new 8 kHz Nyquist: it must vanish, not alias to 6 kHz."""
    x = tone(10000, 44100, seconds=1.0)
    y = resample(x, 44100, 16000)
    # resample_poly's Kaiser filter gives about -57 dB here; linear interpolation would keep ~-1 dB at 6 kHz
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 1e-2 * np.sqrt(np.mean(x ** 2))


def test_resample_keeps_same_rate_untouched():
    x = tone(100, 16000)
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def test_other_target_rate(tmp_path):
    sf.write(tmp_path / "t.wav", tone(500, 16000, seconds=1.0), 16000)
    assert load_audio(tmp_path / "t.wav", target_sr=8000).shape == (8000,)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(DataError, match=rf"^{path}: file not found"):
        load_audio(path)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        load_audio(tmp_path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "fake.wav"
    path.write_text("this is not audio\n")
    with pytest.raises(DataError, match=rf"^{path}: not readable as audio"):
        load_audio(path)


def test_truncated_header(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(440, 16000), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(good.read_bytes()[:20])
    with pytest.raises(DataError, match=rf"^{bad}: not readable as audio"):
        load_audio(bad)


def test_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"  # a WAV header with 0 frames (libsndfile cannot open a 0-frame FLAC)
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(DataError, match=rf"^{path}: empty audio"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = tone(440, 16000)
    x[100] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with pytest.raises(DataError, match=rf"^{path}: audio contains NaN or Inf"):
        load_audio(path)


def test_list_audio_recursive_sorted_filtered(tmp_path):
    for rel in ["b/2.flac", "a/1.WAV", "a/deep/3.ogg", "a/notes.txt", ".hidden/4.wav", "a/.5.wav", "c.mp3"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_audio(tmp_path)]
    assert got == ["a/1.WAV", "a/deep/3.ogg", "b/2.flac", "c.mp3"]
    assert {".wav", ".flac", ".ogg"} <= AUDIO_EXTENSIONS


def test_list_audio_missing_folder(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        list_audio(tmp_path / "missing")

"""Streaming decode: blocks tile the file and match a whole-file decode (resampled rates too); VAD across blocks;
windows over speech."""
import numpy as np
import pytest
import soundfile as sf

from spkid.audio.io import load_audio
from spkid.audio.vad import speech_probs
from spkid.diarization.stream import AudioStream, speech_probs_stream, windows_over
from spkid.errors import DataError

from diar_helpers import write_conversation


@pytest.mark.parametrize("rate", [16000, 8000, 44100])
def test_blocks_tile_the_file_and_match_load_audio(tmp_path, rate):
    path = tmp_path / f"c{rate}.wav"
    write_conversation(path, seconds=12.0, sample_rate=rate)
    whole = load_audio(path).numpy()
    with AudioStream(path) as s:
        blocks = list(s.blocks(3.0))
        assert [b[0] for b in blocks] == sorted(b[0] for b in blocks) and blocks[0][0] == 0
        joined = np.concatenate([w for _, w in blocks])
        assert abs(joined.size - whole.size) <= 1
        n = min(joined.size, whole.size)
        assert np.max(np.abs(joined[:n] - whole[:n])) < (1e-6 if rate == 16000 else 2e-3)
        a, b = 12345, 23456
        assert np.max(np.abs(s.read(a, b) - whole[a:b])) < (1e-6 if rate == 16000 else 2e-3)


@pytest.mark.parametrize("rate", [16000, 8000])
def test_reads_from_the_kept_stretch_equal_fresh_decodes(tmp_path, rate, monkeypatch):
    import spkid.diarization.stream as stream
    monkeypatch.setattr(stream, "CACHE_S", 2.0)                 # a stretch shorter than the file: reads cross it
    path = tmp_path / f"c{rate}.wav"
    write_conversation(path, seconds=12.0, sample_rate=rate)
    with AudioStream(path) as s, AudioStream(path) as fresh:
        decodes = []
        real = s._decode
        monkeypatch.setattr(s, "_decode", lambda a, b: decodes.append((a, b)) or real(a, b))
        spans = [(1000, 5000), (6000, 20000), (20000, 31000), (30000, 40000), (500, 900), (s.n_samples - 100,
                                                                                          s.n_samples + 300)]
        for a, b in spans:
            got = s.read(a, b)
            assert got.shape == (b - a,) and np.array_equal(got, fresh._decode(a, b)), (a, b)
            got[:] = 7.0                                         # the caller's copy: the kept stretch stays intact
        assert decodes[:2] == [(1000, 33000), (30000, 62000)]    # two of the first four reads came from the first
        assert np.array_equal(s.read(100, 200), fresh._decode(100, 200))


def test_vad_over_blocks_matches_one_pass(tmp_path):
    path = tmp_path / "c.wav"
    write_conversation(path, seconds=30.0)
    whole = speech_probs(load_audio(path).numpy())
    with AudioStream(path) as s:
        streamed, narrow_s, power = speech_probs_stream(s, 5.0)
    assert narrow_s == 0.0
    assert streamed.shape == whole.shape
    wav = load_audio(path).numpy()                               # each 512-sample frame's power, block by block
    assert abs(power.size - whole.size) <= 6 and power.sum() == pytest.approx((wav ** 2).sum() / 512, rel=0.05)
    assert np.mean(np.abs(streamed - whole) < 0.1) > 0.97        # only a few frames after each block start differ
    assert np.mean((streamed > 0.5) == (whole > 0.5)) > 0.98


def test_windows_over_speech():
    w = windows_over([(0, 1000), (2000, 2500), (3000, 3100)], window=400, hop=200, min_window=200)
    assert w.tolist() == [[0, 400], [200, 600], [400, 800], [600, 1000], [2000, 2400], [2100, 2500]]
    w = windows_over([(0, 300), (500, 550)], window=400, hop=200, min_window=200)
    assert w.tolist() == [[0, 300]]                              # short speech: one window of its length; tiny: none


def test_undecodable_and_missing_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(DataError, match=r"bad\.wav: not readable as audio"):
        AudioStream(bad)
    with pytest.raises(DataError, match=r"nothere\.wav: file not found"):
        AudioStream(tmp_path / "nothere.wav")
    sf.write(str(tmp_path / "ok.wav"), np.zeros(100, np.float32), 16000)
    assert AudioStream(tmp_path / "ok.wav").duration == pytest.approx(100 / 16000)


def test_narrowband_files_get_both_vad_modes(tmp_path, monkeypatch):
    """A file recorded at 8 kHz (a telephone call) is speech-detected by speech_probs_narrowband, so is a 16 kHz file
    whose content is telephone-band (the call stored at 16 kHz), block by block; a wideband file by speech_probs."""
    from scipy.signal import resample_poly
    import spkid.diarization.stream as stream
    calls = []
    monkeypatch.setattr(stream, "speech_probs_narrowband", lambda x, t=1: calls.append("narrow") or speech_probs(x, t))
    monkeypatch.setattr(stream, "speech_probs", lambda x, t=1: calls.append("wide") or speech_probs(x, t))
    seen, narrow_s = {}, {}
    for rate in (8000, 16000):
        path = tmp_path / f"c{rate}.wav"
        write_conversation(path, seconds=12.0, sample_rate=rate)
        calls.clear()
        with AudioStream(path) as s:
            _, narrow, _ = speech_probs_stream(s, 5.0)
            narrow_s[rate] = narrow / s.duration                                   # the share heard as narrowband
        seen[rate] = set(calls)
    x, sr = sf.read(str(tmp_path / "c16000.wav"), dtype="float32")
    phone = resample_poly(resample_poly(x, 1, 2), 2, 1)[: x.size]                     # through 8 kHz and back
    sf.write(str(tmp_path / "phone16k.wav"), np.concatenate([x, phone]).astype(np.float32), sr)   # wideband, then phone
    calls.clear()
    with AudioStream(tmp_path / "phone16k.wav") as s:
        _, mixed_s, _ = speech_probs_stream(s, 12.0)
        mixed_s /= s.duration
    assert seen == {8000: {"narrow"}, 16000: {"wide"}} and calls[0] == "wide" and calls[-1] == "narrow"
    assert narrow_s == {8000: pytest.approx(1.0), 16000: 0.0}
    assert 0.25 < mixed_s < 0.75                                                # the phone half, block by block

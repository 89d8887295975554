"""The overlapped-speech detector: stretches from probabilities, the network's shapes, the shipped weights (they
load, and they find two voices talking at once in a mixture built here), a second speaker placed over an overlap,
bad weights refused in one line, and the training command end to end on a few generated speakers."""
import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.diarization.overlap import FRAME_S, SHIPPED, OverlapNet, load_detector, overlap_features, regions
from spkid.diarization.pipeline import DiarizeConfig, _second_speakers
from spkid.diarization.rttm import Segment
from spkid.errors import ConfigError, DataError


def test_regions_threshold_length_and_smoothing():
    p = np.zeros(200, dtype=np.float32)
    p[50:80] = 0.9                 # 0.6 s
    p[120:122] = 0.9               # 0.04 s: shorter than min_s
    p[150:160] = 0.4               # under the threshold
    p[65] = 0.1                    # a one-frame dip the median smooths away
    r = regions(p, 0.5, min_s=0.1, smooth=5)
    assert len(r) == 1 and r[0] == pytest.approx((50 * FRAME_S, 80 * FRAME_S), abs=2 * FRAME_S)
    assert len(regions(p, 0.5, min_s=0.1, smooth=1)) == 2          # without smoothing the dip splits it
    assert regions(p, 0.3, min_s=0.1)[-1][0] == pytest.approx(150 * FRAME_S, abs=2 * FRAME_S)
    assert regions(np.zeros(0), 0.5) == []


def test_net_shapes():
    net = OverlapNet(n_mels=40).eval()
    with torch.no_grad():
        assert net(torch.randn(3, 801, 40)).shape == (3, 401)
        assert net(torch.randn(1, 100, 40)).shape == (1, 50)
    fine = OverlapNet(n_mels=40, spectrum_bins=129).eval()
    with torch.no_grad():
        assert fine(torch.randn(2, 801, 169)).shape == (2, 401)


def test_features_log_mel_then_fine_bins():
    """The first 40 columns are the HW4 log-mel; the fine bins are 31.25 Hz apart, so a 1 kHz tone peaks in bin 32
    and the fifth harmonics of two voices at 200 and 230 Hz (1000 and 1150 Hz) stay two peaks, where the mel bands
    (about 110 Hz apart there, each twice as wide) merge them into one."""
    from spkid.audio.frontend import logmel
    t = torch.arange(16000 * 2) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 1000 * t)
    f = overlap_features(tone[None], 129)
    assert f.shape == (1, 16000 * 2 // 160 + 1, 40 + 129)
    assert torch.allclose(f[0, :, :40], logmel(tone), atol=1e-5)
    assert int(f[0, 100, 40:].argmax()) == 32
    assert overlap_features(tone[None]).shape == (1, 201, 40)                     # no bins: the log-mel alone
    two = torch.sin(2 * torch.pi * 1000 * t) + torch.sin(2 * torch.pi * 1150 * t)

    def peaks(row):
        return [k for k in range(1, len(row) - 1) if row[k] > row[k - 1] and row[k] > row[k + 1] and row[k] > row.max() - 3]
    f = overlap_features(two[None], 129)[0, 100]
    assert peaks(f[40:]) == [32, 37]
    assert len(peaks(f[:40])) == 1


def test_second_speaker_over_an_overlap():
    segs = [Segment("f", 0.0, 5.0, "A"), Segment("f", 5.0, 10.0, "B"), Segment("f", 12.0, 15.0, "C")]
    out = _second_speakers(segs, [(4.5, 5.5)], [(0, 16000 * 20)])
    got = sorted((s.speaker, s.start, s.end) for s in out)
    # under A's part the nearest other speaker is B (touching), under B's part A: both talk over 4.5-5.5
    assert got == [("A", 0.0, 5.5), ("B", 4.5, 10.0), ("C", 12.0, 15.0)]
    # a stretch outside the detected speech adds nothing; so does a recording of one speaker
    assert _second_speakers(segs, [(4.5, 5.5)], [(16000 * 11, 16000 * 16)]) == segs
    one = [Segment("f", 0.0, 5.0, "A")]
    assert _second_speakers(one, [(1.0, 2.0)], [(0, 16000 * 5)]) == one


def test_config_checks_the_threshold():
    with pytest.raises(ConfigError, match="overlap_threshold"):
        DiarizeConfig(overlap_threshold=1.5)
    with pytest.raises(ConfigError, match="overlap_threshold_narrowband"):
        DiarizeConfig(overlap_threshold_narrowband=0.0)
    assert DiarizeConfig().overlap and DiarizeConfig().overlap_threshold == 0.8
    assert DiarizeConfig().overlap_threshold_narrowband == 0.9


def test_bad_weights_one_line_error(tmp_path):
    bad = tmp_path / "ovl.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"ovl\.pt: not an overlap detector checkpoint") as e:
        load_detector(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="not found"):
        load_detector(tmp_path / "missing.pt")


def _voice_pool(seed, f0, vtl, n=3):
    from spkid.audio.synth import make_voice, synth_utterance
    from spkid.diarization.simulate import speech_span
    v = dataclasses.replace(make_voice(np.random.default_rng([seed])), f0=f0, vtl=vtl)
    return [speech_span(synth_utterance(v, np.random.default_rng([seed, j]), 16000, 3.0)) for j in range(n)]


def test_shipped_detector_hears_two_voices_at_once():
    """Two voices alone, then both at once: the shipped detector's probability is higher where both talk."""
    det = load_detector()
    assert SHIPPED.is_file() and det.meta["speakers"] > 100
    a, b = _voice_pool(3, 110.0, 0.9, 1)[0][0], _voice_pool(11, 220.0, 1.15, 1)[0][0]
    n = min(a.size, b.size, 16000 * 2)
    a, b = a[:n] / np.abs(a[:n]).max(), b[:n] / np.abs(b[:n]).max()
    wav = np.zeros(16000 * 8, dtype=np.float32)
    wav[:n] += 0.3 * a                                   # A alone
    wav[16000 * 3: 16000 * 3 + n] += 0.3 * b             # B alone
    wav[16000 * 6 - n // 2: 16000 * 6 + n // 2] += 0.3 * a + 0.3 * b[::-1]  # both at once
    p = det.chunk_probs(wav[None])[0]
    f = lambda t0, t1: float(p[int(t0 / FRAME_S): int(t1 / FRAME_S)].mean())     # noqa: E731
    single = max(f(0.2, n / 16000 - 0.2), f(3.2, 3 + n / 16000 - 0.2))
    both = f(6 - n / 32000 + 0.2, 6 + n / 32000 - 0.2)
    assert both > single + 0.2, (both, single)


def test_detector_reads_only_chunks_with_speech(tmp_path):
    from spkid.diarization.stream import AudioStream
    path = tmp_path / "quiet.wav"
    sf.write(str(path), np.zeros(16000 * 30, dtype=np.float32), 16000)
    det = load_detector()
    with AudioStream(path) as s:
        p = det.probs(s, [])
        assert p.shape == (int(30 / FRAME_S),) and not p.any()
        q = det.probs(s, [(16000 * 20, 16000 * 22)])
    assert q.shape == p.shape and not q[: int(10 / FRAME_S)].any()


def test_training_command_writes_a_loadable_detector(tmp_path):
    from spkid.diarization.train_overlap import main
    for i, (seed, f0, vtl) in enumerate(((3, 100.0, 0.85), (11, 230.0, 1.15), (5, 160.0, 1.0))):
        d = tmp_path / "voices" / f"spk{i}"
        d.mkdir(parents=True)
        for j, (wav, _) in enumerate(_voice_pool(seed, f0, vtl, 2)):
            sf.write(str(d / f"u{j}.wav"), wav, 16000)
    out = tmp_path / "ovl.pt"
    assert main([str(tmp_path / "voices"), "--out", str(out), "--chunks", "12", "--epochs", "1", "--batch", "4",
                 "--channels", "16", "--hidden", "8"]) == 0
    det = load_detector(out)
    assert det.meta["speakers"] == 3 and det.meta["chunks"] == 12
    assert det.net.config == {"n_mels": 40, "channels": 16, "hidden": 8, "spectrum_bins": 0}   # as asked, reloaded
    table = det.meta["val_precision_recall"]
    assert len(table) > 5 and all(0 <= p <= 1 and 0 <= r <= 1 for _, p, r in table)
    assert [r for _, _, r in table] == sorted((r for _, _, r in table), reverse=True)   # recall falls as thr rises
    assert main([str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert main([str(tmp_path / "voices"), "--out", str(out), "--hidden", "0"]) == 1
    assert main([str(tmp_path / "voices"), "--out", str(out), "--spectrum-bins", "300"]) == 1
    assert main([str(tmp_path / "voices"), "--out", str(out), "--telephone-share", "1.5"]) == 1
    fine = tmp_path / "fine.pt"                          # with fine spectrum bins: trained, reloaded, run on a chunk
    assert main([str(tmp_path / "voices"), "--out", str(fine), "--chunks", "8", "--epochs", "1", "--batch", "4",
                 "--channels", "8", "--hidden", "4", "--spectrum-bins", "16", "--telephone-share", "1"]) == 0
    det = load_detector(fine)
    assert det.net.config["spectrum_bins"] == 16
    p = det.chunk_probs(np.zeros((1, 16000 * 8), dtype=np.float32) + 0.01 * np.random.default_rng(0).standard_normal(
        (1, 16000 * 8)).astype(np.float32))
    assert p.shape == (1, int(8 / FRAME_S)) and np.isfinite(p).all()


def test_narrowband_recordings_take_their_own_overlap_threshold(tmp_path):
    """A probability of 0.85 gives a second speaker at the default 0.8, but not in a narrowband recording (0.9)."""
    from spkid.diarization.pipeline import Analysis, decide
    rng = np.random.default_rng(0)
    a_dir, b_dir = rng.standard_normal(32), rng.standard_normal(32)
    starts = np.arange(0, 16000 * 20 - 24000 + 1, 12000)                    # 1.5 s windows every 0.75 s over 20 s
    win = np.stack([starts, starts + 24000], 1)
    emb = np.stack([(a_dir if s < 16000 * 10 else b_dir) + 0.05 * rng.standard_normal(32) for s in starts])
    probs = np.zeros(int(20 / FRAME_S), dtype=np.float32)
    probs[int(9 / FRAME_S): int(11 / FRAME_S)] = 0.85                        # both talk from 9 s to 11 s
    cfg = DiarizeConfig(refine=False, resplit=0.0, merge_raw=0.0)

    def both_talk(narrow):
        an = Analysis(tmp_path / "f.wav", 20.0, [(0, 16000 * 20)], win, emb.astype(np.float32), probs, narrow)
        segs = decide(an, None, None, cfg).segments
        return sum(max(0.0, min(x.end, y.end) - max(x.start, y.start)) for i, x in enumerate(segs)
                   for y in segs[i + 1:] if x.speaker != y.speaker)
    assert both_talk(False) == pytest.approx(2.0, abs=0.1)
    assert both_talk(True) == 0.0


def test_telephone_share_sends_chunks_through_the_phone_band():
    """--telephone-share 1: every simulated chunk loses what is above the telephone band; 0: none does."""
    from spkid.diarization.train_overlap import simulate_chunks
    pools = {f"s{i}": _voice_pool(seed, f0, vtl, 2) for i, (seed, f0, vtl) in
             enumerate(((3, 100.0, 0.85), (11, 230.0, 1.15), (5, 160.0, 1.0)))}
    wide, _ = simulate_chunks(pools, 3, seed=1, telephone_share=0.0)
    phone, _ = simulate_chunks(pools, 3, seed=1, telephone_share=1.0)
    top = lambda f: f[:, :, 34:40].astype(np.float32).mean((1, 2)) - f[:, :, 5:15].astype(np.float32).mean((1, 2))  # noqa: E731
    assert (top(phone) < top(wide) - 3.0).all(), (top(phone), top(wide))

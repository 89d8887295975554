"""Waveform augmentation (spkid.audio.augment, noise, rooms, channel, codecs): achieved SNR, reverberation
length/energy/alignment, simulated RT60, telephone band, codecs, speed perturbation, determinism, config errors."""
from __future__ import annotations

import math
import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.augment import WaveAugmentConfig, Augmenter, pauses, speed_label, speed_perturb
from spkid.audio.channel import a_law, mu_law, random_band_limit, telephone, valid_mask
from spkid.audio.codecs import CODECS, CodecBank, codec_roundtrip
from spkid.audio.noise import NoiseBank, band_noise, coloured_noise, hum_noise, mix_at_snr, snr_db, take_segments
from spkid.audio.rooms import COPY_SNR_DB, PRE, RirBank, reverberate, room_copy, room_geometry, simulate_rir
from spkid.audio.synth import make_voice, synth_utterance
from spkid.errors import ConfigError

SR = 16000


def _speech_batch(b: int = 4, s: int = 24000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` synthetic utterances ``(B, S)`` with lengths from S down to S/2 (padding zero)."""
    rng = np.random.default_rng(seed)
    wav = torch.zeros(b, s)
    lengths = torch.linspace(s, s // 2, b).long()
    for i in range(b):
        x = synth_utterance(make_voice(rng), rng, SR, s / SR + 0.1)[: int(lengths[i])]
        wav[i, : len(x)] = torch.from_numpy(x.astype(np.float32))
    return wav, lengths


def _power_fraction(x: torch.Tensor, lo: float, hi: float) -> float:
    """Share of the power of ``x (S,)`` between ``lo`` and ``hi`` Hz (Hann-windowed: a row cut off mid-speech
    must not smear its edge over the spectrum)."""
    p = torch.fft.rfft(x.double() * torch.hann_window(x.shape[0], periodic=False, dtype=torch.float64)).abs() ** 2
    f = torch.fft.rfftfreq(x.shape[0], 1 / SR)
    return float(p[(f >= lo) & (f <= hi)].sum() / p.sum())


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_mix_at_snr_is_exact_for_every_noise_kind(tmp_path):
    wav, lengths = _speech_batch()
    b, s = wav.shape
    sf.write(tmp_path / "fan.wav", np.random.default_rng(1).standard_normal(SR // 2).astype(np.float32) * 0.2, SR)
    sf.write(tmp_path / "hum.flac", (0.3 * np.sin(np.arange(3 * SR) * 0.05)).astype(np.float32), SR)
    bank = NoiseBank.from_folder(tmp_path)
    noises = {"white": coloured_noise(b, s, torch.zeros(b), _g()),
              "brown": coloured_noise(b, s, torch.full((b,), 2.0), _g()),
              "hum": hum_noise(b, s, _g()), "band": band_noise(b, s, _g()), "file": bank.draw(b, s, _g())}
    for name, noise in noises.items():
        assert noise.shape == (b, s) and torch.isfinite(noise).all(), name
        target = torch.tensor([-5.0, 0.0, 7.5, 20.0])
        mixed = mix_at_snr(wav, lengths, noise, target)
        assert (mixed * ~valid_mask(lengths, s)).abs().max() == 0, name          # padding stays silent
        for i in range(b):
            n = int(lengths[i])
            assert snr_db(wav[i, :n], mixed[i, :n]) == pytest.approx(float(target[i]), abs=0.5), name


def test_synthetic_noise_bank_and_segments():
    bank = NoiseBank.synthetic(20, seconds=1.0, hum_share=0.25, band_share=0.25, seed=2)
    assert len(bank) == 20 and bank.audio.shape == (20 * SR,) and bank.audio.dtype == torch.float16
    assert [n.rstrip("0123456789") for n in bank.names].count("colour") == 10
    assert torch.equal(bank.audio, NoiseBank.synthetic(20, seconds=1.0, hum_share=0.25, band_share=0.25, seed=2).audio)
    seg = bank.draw(6, 3 * SR, _g())                          # longer than a clip: looped
    assert seg.shape == (6, 3 * SR) and torch.allclose(seg.square().mean(1), torch.ones(6), rtol=1e-3)
    flat = torch.arange(10, dtype=torch.int16) * 1000         # two recordings: 0..4 and 5..9 (x1000)
    offsets, lengths = torch.tensor([0, 5]), torch.tensor([5, 5])
    looped = take_segments(flat, offsets, lengths, torch.tensor([3, 1]), 7, loop=True) * 32767 / 1000
    assert torch.allclose(looped, torch.tensor([[3., 4, 0, 1, 2, 3, 4], [6, 7, 8, 9, 5, 6, 7]]), atol=1e-3)
    cut = take_segments(flat.float(), offsets, lengths, torch.tensor([3, 0]), 4, loop=False) / 1000
    assert torch.equal(cut, torch.tensor([[3., 4, 0, 0], [5, 6, 7, 8]]))


def test_coloured_noise_has_the_requested_slope():
    noise = coloured_noise(3, 4 * SR, torch.tensor([0.0, 1.0, 2.0]), _g())
    # power per octave band: white rises 3 dB/octave, pink is flat, brown falls 3 dB/octave
    for row, slope in zip(noise, (3.0, 0.0, -3.0)):
        lo, hi = _power_fraction(row, 500, 1000), _power_fraction(row, 2000, 4000)
        assert 10 * np.log10(hi / lo) == pytest.approx(2 * slope, abs=1.0)


def test_reverberation_keeps_length_energy_and_alignment():
    wav, lengths = _speech_batch()
    b, s = wav.shape
    bank = RirBank.simulate(6, seed=3)
    assert len(bank) == 6 and bank.rirs.shape[0] == 6
    for i in range(6):                                        # direct path at PRE, unit energy
        h = bank.rirs[i, : int(bank.lengths[i])]
        assert int(h.abs().argmax()) == PRE and float(h.square().sum()) == pytest.approx(1.0, rel=1e-4)
    wet = reverberate(wav, lengths, bank.draw(b, _g()))
    assert wet.shape == (b, s)
    assert (wet * ~valid_mask(lengths, s)).abs().max() == 0
    assert torch.allclose(wet.square().sum(1), wav.square().sum(1), rtol=1e-4)
    for i in range(b):
        n = int(lengths[i])
        assert torch.nn.functional.cosine_similarity(wet[i, :n], wav[i, :n], dim=0) < 0.995      # changed
    # aligned on the direct path: white noise through every room correlates best with itself at lag 0
    noise = torch.randn(len(bank), s, generator=_g(1))
    wet = reverberate(noise, torch.full((len(bank),), s), bank.rirs)
    xc = torch.fft.irfft(torch.fft.rfft(wet, 2 * s) * torch.fft.rfft(noise, 2 * s).conj(), 2 * s)
    assert (torch.cat([xc[:, :400], xc[:, -400:]], dim=1).argmax(dim=1) == 0).all()
    delta = torch.zeros(b, 100)
    delta[:, PRE] = 1.0
    assert torch.allclose(reverberate(wav, lengths, delta), wav, atol=1e-5)   # a dry room is the identity


def test_simulated_rooms_reach_their_rt60_and_are_seeded():
    import pyroomacoustics as pra
    rng = np.random.default_rng(0)
    for rt60 in (0.3, 0.6, 0.9):
        dims, mic, src = room_geometry(rng, 2.0)
        assert np.linalg.norm(src - mic) == pytest.approx(2.0, rel=0.2)
        try:
            h = simulate_rir(rt60, dims, mic, src, rng)
        except ValueError:                                    # too short for this room: Sabine can't reach it
            continue
        assert pra.experimental.measure_rt60(h, SR) == pytest.approx(rt60, rel=0.15)
    a, b, c = RirBank.simulate(3, seed=1), RirBank.simulate(3, seed=1), RirBank.simulate(3, seed=2)
    assert torch.equal(a.rirs, b.rirs) and not torch.equal(a.rirs[:, :100], c.rirs[:, :100])


def test_room_copy_is_seeded_reverberant_and_at_its_snr():
    # a second of noise bursts, then two of silence: the copy keeps the length, its tail holds the room's decay,
    # and what is left after the decay is the added noise, COPY_SNR_DB below the copy's average power
    x = torch.zeros(3 * SR)
    x[:SR] = torch.randn(SR, generator=_g(0)) * (torch.arange(SR) % 4000 < 2000)
    y = room_copy(x, 7)
    assert y.shape == x.shape and torch.equal(y, room_copy(x, 7)) and not torch.equal(y, room_copy(x, 8))
    assert torch.nn.functional.cosine_similarity(y[:SR], x[:SR], dim=0) < 0.99          # a room, not the clip
    floor = y[-SR // 2:].square().mean()                      # 2.5 s after the last burst: RT60 <= 0.8 s decayed
    assert 10 * torch.log10(y.square().mean() / floor) == pytest.approx(COPY_SNR_DB, abs=1.0)
    decay = y[14000 + SR // 20: 14000 + SR // 10].square().mean()   # 50-100 ms after the last burst: the room rings
    assert decay > 10 * floor
    assert torch.equal(room_copy(torch.zeros(SR), 1), torch.zeros(SR))                   # silence stays silent


def test_rir_folder_bank(tmp_path):
    h = np.zeros(8000, np.float32)
    h[100] = 0.5
    tail = np.random.default_rng(0).standard_normal(7900) * np.exp(-np.arange(7900) / 800) * 0.1
    h[100:] += tail.astype(np.float32)
    sf.write(tmp_path / "hall.wav", h, SR)
    sf.write(tmp_path / "hall_44k.wav", h, 44100)            # resampled to 16 kHz on load
    bank = RirBank.from_folder(tmp_path)
    assert len(bank) == 2 and int(bank.rirs[0].abs().argmax()) == PRE
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no audio files"):
        RirBank.from_folder(tmp_path / "empty")


def test_telephone_has_no_energy_above_4khz():
    wav, lengths = _speech_batch(b=6)
    wav = wav + 0.01 * torch.randn(wav.shape, generator=_g(5)) * valid_mask(lengths, wav.shape[1])
    out = telephone(wav, lengths, _g())
    assert out.shape == wav.shape and torch.isfinite(out).all()
    assert (out * ~valid_mask(lengths, wav.shape[1])).abs().max() == 0
    for i in range(6):
        row = out[i, : int(lengths[i])]
        assert _power_fraction(row, 4000, SR / 2) < 1e-5
        assert _power_fraction(row, 3800, SR / 2) < 1e-3
        assert _power_fraction(row, 0, 120) < 1e-2
        assert _power_fraction(wav[i, : int(lengths[i])], 4000, SR / 2) > 1e-3     # the input did have some
    low = random_band_limit(wav, lengths, _g(), low_min=2500.0, low_max=2500.0)
    above = [_power_fraction(low[i, : int(lengths[i])], 2700, SR / 2) for i in range(6)]
    below = [_power_fraction(low[i, : int(lengths[i])], 0, 40) for i in range(6)]
    assert all(a < 1e-4 or b < 1e-4 for a, b in zip(above, below))       # every row lost a band


def test_band_limits_are_low_high_or_both():
    """Low-pass and high-pass are drawn independently (at least one per row), so a high-pass alone is trained."""
    wav = torch.randn(400, 8000) * 0.1
    lengths = torch.full((400,), 8000)
    out = random_band_limit(wav, lengths, _g(5), low_min=3000.0, low_max=3000.0)
    f = torch.fft.rfftfreq(8000, 1 / SR)
    p_out, p_in = torch.fft.rfft(out).abs().square(), torch.fft.rfft(wav).abs().square()    # (400, bins)
    gain = lambda band: p_out[:, band].sum(1) / p_in[:, band].sum(1)                         # noqa: E731
    lowpassed, highpassed = gain(f > 3200) < 0.1, gain(f < 20) < 0.1
    low_only = (lowpassed & ~highpassed).float().mean()
    high_only = (~lowpassed & highpassed).float().mean()
    both = (lowpassed & highpassed).float().mean()
    assert low_only + high_only + both == 1.0
    assert 0.2 < low_only < 0.4 and 0.22 < high_only < 0.38 and 0.33 < both < 0.51   # 0.28 / 0.30 / 0.42


def test_companding_is_8_bit_and_close():
    x = torch.linspace(-1, 1, 20001)
    s = 0.3 * torch.sin(torch.arange(SR) * 0.1)
    for f in (mu_law, a_law):
        assert len(torch.unique(f(x))) <= 256
        assert 10 * torch.log10(s.square().sum() / (f(s) - s).square().sum()) > 33     # G.711: ~38 dB on a sine


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_codecs_keep_length_and_alignment(codec):
    wav, lengths = _speech_batch(b=1, s=SR)
    x = wav[0].numpy()
    y = codec_roundtrip(x, codec, np.random.default_rng(0))
    assert y.shape == x.shape and y.dtype == np.float32 and np.isfinite(y).all()
    assert np.corrcoef(x, y)[0, 1] > 0.7                         # aligned: no codec delay left
    assert not np.allclose(x, y, atol=1e-3)                      # and really coded
    if CODECS[codec][2] == 8000:
        assert _power_fraction(torch.from_numpy(y), 4100, SR / 2) < 1e-3


def test_codec_bank_is_seeded_and_parallel_safe():
    wav, lengths = _speech_batch(b=6, s=SR)
    utts = [wav[i, : int(lengths[i])] for i in range(6)]
    labels = [0, 0, 1, 1, 2, 2]
    a = CodecBank.build(utts, labels, per_speaker=1, codecs=["gsm", "mulaw"], seed=4)
    b = CodecBank.build(utts, labels, per_speaker=1, codecs=["gsm", "mulaw"], seed=4, workers=2)
    assert len(a) == 3 and sorted(a.labels) == [0, 1, 2] and set(a.codec) <= {"gsm", "mulaw"}
    assert torch.equal(a.audio, b.audio) and a.source == b.source and a.audio.dtype == torch.int16
    for i in range(3):
        assert a.stored(i).shape[0] == utts[a.source[i]].shape[0]
        assert a.by_label[a.labels[i]] == [i]


def test_speed_perturbation_scales_pitch_and_length():
    t = torch.arange(2 * SR) / SR
    tone = torch.sin(2 * np.pi * 440.0 * t)[None, :]
    for factor in (0.9, 1.1):
        y = speed_perturb(tone, factor)[0]
        assert y.shape[0] == int(np.ceil(2 * SR / factor))
        spec = torch.fft.rfft(y[1000:-1000]).abs()
        peak = float(torch.fft.rfftfreq(y.shape[0] - 2000, 1 / SR)[spec.argmax()])
        assert peak == pytest.approx(440.0 * factor, abs=2.0)
    assert speed_label(torch.tensor([3, 3, 3]), torch.tensor([0, 1, 2]), 10).tolist() == [3, 13, 23]
    assert WaveAugmentConfig().speeds() == (1.0,) and WaveAugmentConfig(p_speed=0.5).speeds() == (1.0, 0.9, 1.1)


def test_augmenter_is_deterministic_and_applies_each_kind():
    wav, lengths = _speech_batch(b=8)
    labels = torch.arange(8)
    babble = lambda lab, s, g: torch.randn(lab.shape[0], s, generator=g)    # noqa: E731
    aug = Augmenter(WaveAugmentConfig(n_rooms=5, noise_clips=16))
    a = aug(wav, lengths, labels, _g(7), babble=babble)
    b = aug(wav, lengths, labels, _g(7), babble=babble)
    c = aug(wav, lengths, labels, _g(8), babble=babble)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a * ~valid_mask(lengths, wav.shape[1])).abs().max() == 0 and torch.isfinite(a).all()
    off = dict(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0, p_pause=0.0)
    assert torch.equal(Augmenter(WaveAugmentConfig(**off))(wav, lengths, labels, _g()), wav)
    noisy = Augmenter(WaveAugmentConfig(**{**off, "p_noise": 1.0, "snr_min_db": 5.0, "snr_max_db": 5.0, "noise_clips": 16}))
    for use_babble in (False, True):
        out = noisy(wav, lengths, labels, _g(), babble=babble if use_babble else None)
        for i in range(8):
            n = int(lengths[i])
            assert snr_db(wav[i, :n], out[i, :n]) == pytest.approx(5.0, abs=0.5)
    phone = Augmenter(WaveAugmentConfig(**{**off, "p_telephone": 1.0}))(wav, lengths, labels, _g())
    assert all(_power_fraction(phone[i, : int(lengths[i])], 4000, SR / 2) < 1e-5 for i in range(8))
    room = Augmenter(WaveAugmentConfig(**{**off, "p_reverb": 1.0, "n_rooms": 3}))(wav, lengths, labels, _g())
    assert not torch.allclose(room, wav, atol=1e-3)
    assert torch.allclose(room.square().sum(1), wav.square().sum(1), rtol=1e-3)


def test_gain_scales_each_item_within_its_range_and_clips_at_full_scale():
    wav, lengths = _speech_batch(b=32)
    off = dict(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0, p_pause=0.0)
    out = Augmenter(WaveAugmentConfig(**off, p_gain=1.0, gain_db=12.0))(wav, lengths, torch.arange(32), _g(5))
    db = []
    for i in range(32):
        n = int(lengths[i])
        a, o = wav[i, :n], out[i, :n]
        inside = o.abs() < 0.999                                 # the samples that did not clip
        ratio = (o[inside & (a.abs() > 1e-3)] / a[inside & (a.abs() > 1e-3)])
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3)     # one gain per item
        db.append(20 * math.log10(float(ratio[0])))
        assert o.abs().max() <= 1.0 and torch.equal(out[i, n:], torch.zeros_like(out[i, n:]))
    assert all(-12.0 - 1e-3 <= d <= 12.0 + 1e-3 for d in db) and min(db) < -4 and max(db) > 4   # spread both ways
    loud = Augmenter(WaveAugmentConfig(**off, p_gain=1.0, gain_db=40.0))(wav * 0.9, lengths, torch.arange(32), _g(5))
    assert loud.abs().max() == 1.0                                       # +40 dB clips, never leaves full scale
    half = Augmenter(WaveAugmentConfig(**off, p_gain=0.5))(wav, lengths, torch.arange(32), _g(6))
    same = sum(torch.equal(half[i], wav[i]) for i in range(32))
    assert 6 <= same <= 26                                                # about half the items keep their level
    # off (the default) draws nothing: a recipe without it sees exactly the batches it saw before the option existed
    base = WaveAugmentConfig(n_rooms=5, noise_clips=16)
    g1, g2 = _g(9), _g(9)
    Augmenter(base)(wav, lengths, torch.arange(32), g1)
    Augmenter(WaveAugmentConfig(n_rooms=5, noise_clips=16, p_gain=0.0, gain_db=30.0))(wav, lengths, torch.arange(32), g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_pauses_replace_one_span_by_near_silence():
    wav, lengths = _speech_batch(b=16)
    out = pauses(wav, lengths, _g(3), max_share=0.4)
    assert out.shape == wav.shape and torch.equal(out * ~valid_mask(lengths, wav.shape[1]), torch.zeros_like(out))
    zeros = 0
    for i in range(16):
        n = int(lengths[i])
        changed = torch.nonzero(out[i, :n] != wav[i, :n]).flatten()
        span = int(changed.max() - changed.min() + 1) if len(changed) else 0
        assert 0.04 * n <= span <= 0.41 * n                          # one contiguous span of 5-40 % of the row
        assert torch.equal(out[i, :n][:int(changed.min())], wav[i, :n][:int(changed.min())])
        quiet = out[i, int(changed.min()): int(changed.max()) + 1]
        rms = wav[i, :n].square().mean().sqrt()
        level = quiet.square().mean().sqrt() / rms
        zeros += int(level == 0)
        assert level == 0 or 10 ** (-91 / 20) < level < 10 ** (-39 / 20)
    assert 0 < zeros < 16                                              # both kinds occur
    assert torch.equal(pauses(wav, lengths, _g(3)), out)


def test_noise_folder_replaces_synthetic_noise(tmp_path):
    sf.write(tmp_path / "tone.wav", (0.5 * np.sin(2 * np.pi * 1000 * np.arange(SR) / SR)).astype(np.float32), SR)
    wav, lengths = _speech_batch(b=4)
    cfg = WaveAugmentConfig(p_noise=1.0, p_babble=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0,
                        p_pause=0.0, snr_min_db=-10.0, snr_max_db=-10.0, noise_dir=str(tmp_path))
    out = Augmenter(cfg)(wav, lengths, torch.zeros(4, dtype=torch.long), _g())
    for i in range(4):                          # at -10 dB the 1 kHz tone dominates every row
        assert _power_fraction(out[i, : int(lengths[i])], 990, 1010) > 0.8


def test_config_errors():
    bad = [dict(p_noise=1.5), dict(snr_min_db=10.0, snr_max_db=5.0), dict(rt60_min=0.01), dict(babble_min=0),
           dict(codecs="opus,amr"), dict(hum_share=0.7, band_share=0.5), dict(speed_slow=1.2),
           dict(noise_dir="/no/such/folder"), dict(lowpass_max_hz=9000.0), dict(n_rooms=0),
           dict(p_pause=-0.1), dict(pause_max=0.95), dict(p_gain=1.2), dict(gain_db=-1.0), dict(gain_db=50.0),
           dict(gain_db=float("nan"))]
    for kw in bad:
        with pytest.raises(ConfigError):
            WaveAugmentConfig(**kw).validate()
    WaveAugmentConfig().validate()

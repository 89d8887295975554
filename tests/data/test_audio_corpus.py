"""AudioCorpus (decode once, int16, VAD at load, process pool, prepare's inputs) and AudioCropSampler (shapes,
lengths, determinism per (seed, rank, step), speed classes, babble from other speakers, codec bank)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED
from spkid.audio.augment import WaveAugmentConfig
from spkid.audio.frontend import LogMel
from spkid.audio.io import load_audio
from spkid.audio.synth import make_voice, synth_corpus, synth_utterance
from spkid.audio.vad import VadConfig
from spkid.data.audio_corpus import AudioCorpus, AudioCropSampler, AudioUtt
from spkid.errors import DataError

SR = 16000
AUDIO = SHARED / "data" / "speechocean762-audio"
needs_audio = pytest.mark.skipif(not AUDIO.is_dir(), reason="../shared/data/speechocean762-audio not present")
CLEAN = dict(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0, p_pause=0.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synth_corpus(tmp_path_factory.mktemp("synth"), n_speakers=4, n_train=4, n_test=0, seed=5,
                        seconds=(1.0, 2.0))


def _tone_corpus(n_speakers: int = 5, per_speaker: int = 4, seed: int = 0) -> AudioCorpus:
    """Speaker k's utterances are a 300 (k + 1) Hz tone plus faint white noise, 0.8-2.5 s long."""
    rng = np.random.default_rng(seed)
    chunks, utts, labels = [], [], []
    for k in range(n_speakers):
        for j in range(per_speaker):
            n = int(rng.uniform(0.8, 2.5) * SR)
            x = 0.3 * np.sin(2 * np.pi * 300 * (k + 1) * np.arange(n) / SR) + 0.01 * rng.standard_normal(n)
            chunks.append(torch.from_numpy(np.round(x * 32767).astype(np.int16)))
            utts.append(AudioUtt(f"s{k}/u{j}.wav", f"s{k}"))
            labels.append(k)
    offsets = torch.tensor([0] + [c.shape[0] for c in chunks]).cumsum(0)
    return AudioCorpus(torch.cat(chunks), offsets, torch.tensor(labels), [f"s{k}" for k in range(n_speakers)], utts)


def test_load_folder_decodes_every_file_once(synth):
    corpus = AudioCorpus.load(synth.train_dir, vad=None, workers=1, progress=False)
    assert len(corpus) == 16 and corpus.speakers == synth.speakers and not corpus.skipped
    assert corpus.audio.dtype == torch.int16 and corpus.offsets.shape == (17,)
    assert corpus.labels.tolist() == [k for k in range(4) for _ in range(4)]
    for i, u in enumerate(corpus.utts):
        ref = load_audio(synth.train_dir / u.key)                       # resampled to 16 kHz, channels averaged
        ref = ref / max(1.0, float(ref.abs().max()))
        assert corpus.utterance(i).shape == ref.shape
        assert torch.allclose(corpus.utterance(i), ref, atol=1.01 / 32767)
    assert corpus.seconds == pytest.approx(corpus.seconds_before_vad)
    parallel = AudioCorpus.load(synth.train_dir, vad=None, workers=2, progress=False)
    assert torch.equal(parallel.audio, corpus.audio) and parallel.utts == corpus.utts


def test_load_csv_list_like_prepare(synth, tmp_path):
    listing = tmp_path / "train.csv"
    folder = AudioCorpus.load(synth.train_dir, vad=None, workers=1, progress=False)
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        w.writerows([(str(synth.train_dir / u.key), u.speaker) for u in folder.utts])
    from_csv = AudioCorpus.load(listing, vad=None, workers=1, progress=False)
    assert torch.equal(from_csv.audio, folder.audio) and from_csv.labels.tolist() == folder.labels.tolist()
    bad = tmp_path / "bad.csv"
    bad.write_text("path,speaker\nonly-one-field\n")
    with pytest.raises(DataError, match="line 2"):
        AudioCorpus.load(bad, vad=None, workers=1, progress=False)
    with pytest.raises(DataError, match="not found"):
        AudioCorpus.load(tmp_path / "missing", workers=1, progress=False)


def test_vad_at_load_trims_silence_and_skips_files_without_speech(tmp_path):
    rng = np.random.default_rng(0)
    speech = synth_utterance(make_voice(rng), rng, SR, 2.0).astype(np.float32)
    floor = lambda n: (rng.standard_normal(n) * 3e-4).astype(np.float32)   # noqa: E731
    for spk in ("a", "b"):
        (tmp_path / spk).mkdir()
        sf.write(tmp_path / spk / "padded.wav", np.concatenate([floor(2 * SR), speech, floor(2 * SR)]), SR)
        sf.write(tmp_path / spk / "plain.flac", speech, SR)
    sf.write(tmp_path / "b" / "silent.wav", floor(3 * SR), SR)
    corpus = AudioCorpus.load(tmp_path, vad=VadConfig(), workers=2, progress=False)
    assert len(corpus) == 4 and corpus.skipped[0][0] == "b/silent.wav"
    assert "too little speech" in corpus.skipped[0][1] and "of 3.00 s" in corpus.skipped[0][1]
    lengths = dict(zip([u.key for u in corpus.utts], corpus.lengths.tolist()))
    assert lengths["a/padded.wav"] < len(speech) + 0.6 * SR          # 4 s of silence went, padding stays
    assert lengths["a/padded.wav"] > 0.8 * len(speech)
    assert corpus.seconds < corpus.seconds_before_vad - 7.0
    with pytest.raises(DataError, match="no usable training audio"):
        AudioCorpus.load(tmp_path, vad=VadConfig(), min_seconds=60.0, workers=1, progress=False)


def test_sampler_shapes_lengths_and_labels():
    corpus = _tone_corpus()
    s = AudioCropSampler(corpus, batch_size=16, crop_seconds=(0.5, 1.5), seed=1,
                         augment=WaveAugmentConfig(n_rooms=4, noise_clips=16))
    front = LogMel()
    for step in range(4):
        wav, lengths, labels = s.waveforms(step)
        feats, frames, labels2 = s.batch(step)
        assert feats.dtype == torch.float32 and frames.dtype == torch.long and labels.dtype == torch.long
        assert feats.shape == (16, int(frames.max()), 40) and torch.equal(labels, labels2)
        assert torch.equal(frames, front.frame_lengths(lengths))
        assert int(lengths.max()) == wav.shape[1] and 0.5 * SR <= int(lengths.max()) <= 1.5 * SR
        assert torch.equal(labels, corpus.labels[_drawn(s, step)])
        long = corpus.lengths[_drawn(s, step)] >= wav.shape[1]
        assert (lengths[long] == wav.shape[1]).all()                  # long utterances give full crops
        assert (feats[torch.arange(feats.shape[1])[None, :] >= frames[:, None]] == 0).all()
    assert s.n_classes == s.n_speakers == 5


def _drawn(s: AudioCropSampler, step: int) -> torch.Tensor:
    """The utterance indices batch ``step`` draws (the sampler's first draw from its generator)."""
    g = torch.Generator().manual_seed((s.seed * 1_000_003 + s.rank) * 1_000_000_007 + step)
    return s.indices[torch.randint(len(s.indices), (s.batch_size,), generator=g)]


def test_sampler_is_a_pure_function_of_seed_rank_step():
    corpus = _tone_corpus()
    cfg = WaveAugmentConfig(n_rooms=4, noise_clips=16, p_codec=0.5, codecs="gsm,mulaw", p_speed=0.3)
    a = AudioCropSampler(corpus, batch_size=8, crop_seconds=(0.5, 1.0), augment=cfg, seed=3)
    b = AudioCropSampler(corpus, batch_size=8, crop_seconds=(0.5, 1.0), augment=cfg, seed=3, workers=2)
    for step in (0, 5, 17):
        x, y = a.batch(step), b.batch(step)                            # a resumed run rebuilds banks: same batch
        assert all(torch.equal(p, q) for p, q in zip(x, y))
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    other_rank = AudioCropSampler(corpus, batch_size=8, crop_seconds=(0.5, 1.0), augment=cfg, seed=3, rank=1)
    assert not torch.equal(a.waveforms(0)[0], other_rank.waveforms(0)[0])


def test_speed_perturbed_items_are_extra_speakers():
    corpus = _tone_corpus()
    s = AudioCropSampler(corpus, batch_size=32, crop_seconds=(0.5, 0.5), seed=0,
                         augment=WaveAugmentConfig(**CLEAN, p_speed=1.0))
    assert s.n_classes == 15 and s.speeds == (1.0, 0.9, 1.1)
    wav, lengths, labels = s.waveforms(0)
    true = corpus.labels[_drawn(s, 0)]
    assert (labels >= 5).all() and torch.equal(labels % 5, true)
    for i in range(8):                                                # the tone moved by the speed factor
        factor = s.speeds[int(labels[i]) // 5]
        n = int(lengths[i])
        spec = torch.fft.rfft(wav[i, :n]).abs()
        peak = float(torch.fft.rfftfreq(n, 1 / SR)[spec.argmax()])
        assert peak == pytest.approx(300 * (int(true[i]) + 1) * factor, rel=0.01)


def test_babble_comes_from_other_speakers():
    corpus = _tone_corpus()
    s = AudioCropSampler(corpus, batch_size=4, augment=WaveAugmentConfig(**CLEAN), seed=0)
    g = torch.Generator().manual_seed(0)
    for spk in range(5):
        bab = s._babble(torch.full((6,), spk), SR, g)
        assert bab.shape == (6, SR) and torch.isfinite(bab).all()
        spec = torch.fft.rfft(bab).abs().square().sum(0)
        freqs = torch.fft.rfftfreq(SR, 1 / SR)
        own = spec[(freqs - 300 * (spk + 1)).abs() < 5].sum()
        assert own < 1e-3 * spec.sum()                                 # not a trace of the row's own speaker


def test_codec_items_come_from_the_coded_bank():
    corpus = _tone_corpus()
    s = AudioCropSampler(corpus, batch_size=8, crop_seconds=(1.0, 1.0), seed=0, workers=1,
                         augment=WaveAugmentConfig(**{**CLEAN, "p_codec": 1.0}, codecs="gsm", codec_per_speaker=1))
    assert len(s.codec_bank) == 5 and set(s.codec_bank.codec) == {"gsm"}
    wav, lengths, labels = s.waveforms(0)
    for i in range(8):                      # GSM runs at 8 kHz: the white-noise floor above 4 kHz is gone
        p = torch.fft.rfft(wav[i, : int(lengths[i])]).abs().square()
        f = torch.fft.rfftfreq(int(lengths[i]), 1 / SR)
        assert p[f > 4200].sum() < 1e-4 * p.sum()                      # (clean crops: 1e-3, coded: 1e-6)


def test_features_of_is_the_clean_whole_utterance():
    corpus = _tone_corpus()
    s = AudioCropSampler(corpus, batch_size=4, augment=WaveAugmentConfig(n_rooms=2, noise_clips=8), seed=0)
    wav = corpus.utterance(3)
    ref, _ = LogMel()(wav[None, :], torch.tensor([wav.shape[0]]))
    assert torch.equal(s.features_of(3), ref[0])
    with pytest.raises(ValueError):
        AudioCropSampler(corpus, batch_size=0)
    with pytest.raises(ValueError):
        AudioCropSampler(corpus, batch_size=4, crop_seconds=(2.0, 1.0))


@needs_audio
def test_real_audio_with_vad():
    corpus = AudioCorpus.load(AUDIO, workers=2, progress=False)
    assert len(corpus) == 168 and len(corpus.speakers) == 10 and not corpus.skipped
    assert corpus.seconds < corpus.seconds_before_vad                  # leading/trailing silence removed
    train, val = corpus.split(2, seed=0)
    assert len(val) == 20 and not set(train) & set(val)
    s = AudioCropSampler(corpus, batch_size=16, crop_seconds=(0.5, 1.5), indices=train, seed=0,
                         augment=WaveAugmentConfig(n_rooms=8, noise_clips=16, codec_per_speaker=1))
    feats, frames, labels = s.batch(0)
    assert feats.shape[0] == 16 and torch.isfinite(feats).all() and labels.max() < 10

"""spkid.synth: corpus layout, file variety, determinism, and that voices differ like speakers do."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spkid.audio.io import load_audio
from spkid.data.scan import scan as list_audio
from spkid.audio.frontend import hz_to_mel, logmel, mel_to_hz
from spkid.audio.synth import SynthCorpus, make_voice, synth_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SynthCorpus:
    return synth_corpus(tmp_path_factory.mktemp("synth"), n_speakers=8, n_train=5, n_test=2, seed=3)


def test_layout_and_answers(corpus):
    assert corpus.speakers == [f"spk{i:02d}" for i in range(8)]
    assert sorted(d.name for d in corpus.train_dir.iterdir()) == corpus.speakers
    for spk in corpus.speakers:
        assert len(list_audio(corpus.train_dir / spk)) == 5
    tests = list_audio(corpus.test_dir)
    assert len(tests) == 16 and all(p.parent == corpus.test_dir for p in tests)
    assert sorted(p.name for p in tests) == sorted(corpus.answers)
    assert sorted(corpus.answers.values()) == sorted(corpus.speakers * 2)
    rows = list(csv.DictReader(open(corpus.root / "answers.csv", newline="")))
    assert {r["path"]: r["speaker"] for r in rows} == corpus.answers


def test_mixed_rates_formats_channels(corpus):
    infos = [sf.info(str(p)) for p in list_audio(corpus.root)]
    assert {i.samplerate for i in infos} == {8000, 16000, 22050, 44100}
    assert {(i.format, i.subtype) for i in infos} == {("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT")}
    assert {i.channels for i in infos} == {1, 2}
    assert 1.5 <= min(i.duration for i in infos) and max(i.duration for i in infos) <= 3.5 + 0.6


def test_deterministic_given_seed(tmp_path):
    a = synth_corpus(tmp_path / "a", n_speakers=2, n_train=1, n_test=1, seed=5, seconds=(0.5, 0.8))
    b = synth_corpus(tmp_path / "b", n_speakers=2, n_train=1, n_test=1, seed=5, seconds=(0.5, 0.8))
    c = synth_corpus(tmp_path / "c", n_speakers=2, n_train=1, n_test=1, seed=6, seconds=(0.5, 0.8))
    files_a = [p.relative_to(a.root) for p in list_audio(a.root)]
    assert files_a == [p.relative_to(b.root) for p in list_audio(b.root)]
    for f in files_a:  # compare samples, not bytes: libsndfile stamps float WAVs' PEAK chunk with the time
        (xa, ra), (xb, rb) = sf.read(a.root / f), sf.read(b.root / f)
        assert ra == rb and sf.info(str(a.root / f)).subtype == sf.info(str(b.root / f)).subtype
        np.testing.assert_array_equal(xa, xb)
    assert a.answers == b.answers
    wa = load_audio(next(iter(list_audio(a.train_dir / "spk00"))))
    wc = load_audio(next(iter(list_audio(c.train_dir / "spk00"))))
    assert wa.shape != wc.shape or not torch.equal(wa, wc)


def test_voice_ranges():
    voices = [make_voice(np.random.default_rng([0, 0, i])) for i in range(200)]
    f0 = np.array([v.f0 for v in voices])
    vtl = np.array([v.vtl for v in voices])
    assert 85 <= f0.min() and f0.max() <= 255 and f0.max() / f0.min() > 2.5
    assert 0.82 <= vtl.min() < 0.9 and 1.12 < vtl.max() <= 1.2
    assert np.corrcoef(np.log(f0), vtl)[0, 1] > 0.5                   # higher voices, shorter tracts


def _utterance_vector(path: Path, bands: torch.Tensor) -> np.ndarray:
    """Mean log-mel over the bands every sample rate covers, minus its own level (recording gain)."""
    m = logmel(load_audio(path)).mean(0)[bands]
    return (m - m.mean()).numpy()


def test_same_speaker_is_closer(corpus):
    """Each utterance is nearer (on average) to its own speaker's other utterances than to other speakers'.

    Compared on bands below 3.5 kHz so 8 kHz files, which have nothing above 4 kHz, compare like the rest.
    """
    centres = mel_to_hz(torch.linspace(0, hz_to_mel(8000.0).item(), 42))[1:-1]
    bands = centres < 3500
    files = [(p, p.parent.name) for p in list_audio(corpus.train_dir)]
    files += [(corpus.test_dir / name, spk) for name, spk in corpus.answers.items()]
    x = np.stack([_utterance_vector(p, bands) for p, _ in files])
    y = np.array([spk for _, spk in files])
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    same = (y[:, None] == y[None]) & ~np.eye(len(y), dtype=bool)
    other = y[:, None] != y[None]
    intra = (d * same).sum(1) / same.sum(1)
    inter = (d * other).sum(1) / other.sum(1)
    assert (intra < inter).mean() >= 0.9
    assert intra.mean() < 0.8 * inter.mean()
    # ... but not trivially: this crude statistic must not identify every utterance by nearest neighbour
    np.fill_diagonal(d, np.inf)
    assert 0.3 < (y[d.argmin(1)] == y).mean() < 1.0


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synth_corpus(tmp_path, n_speakers=0)
    with pytest.raises(ValueError):
        synth_corpus(tmp_path, seconds=(2.0, 1.0))

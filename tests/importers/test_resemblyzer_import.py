"""The imported Resemblyzer encoder gives Resemblyzer's own embeddings (its ``preprocess_wav`` then
``embed_utterance``) through spkid's own audio path, and works end to end: enroll, identify, verify."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import spkid
from spkid.cli import main
from spkid.scoring.metrics import eer

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
LIBRI = SHARED / "librispeech-sample" / "test-other"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("resemblyzer") is None,
                                reason="resemblyzer not installed (pip install 'spkid[resemblyzer]')")


@pytest.fixture(scope="module")
def rz(tmp_path_factory):
    out = tmp_path_factory.mktemp("rz") / "rz.ckpt"
    assert main(["import", "resemblyzer", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def encoder():
    from resemblyzer import VoiceEncoder
    return VoiceEncoder("cpu", verbose=False)


def test_same_waveform_gives_resemblyzers_embedding(rz, encoder):
    from resemblyzer import preprocess_wav
    g = np.random.default_rng(0)
    t = np.arange(16000 * 3) / 16000
    for f0 in (110.0, 190.0):                       # a voiced buzz, so webrtcvad keeps it whole
        wav = (0.1 * np.sign(np.sin(2 * np.pi * f0 * t)) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
               + 0.01 * g.standard_normal(t.size)).astype(np.float32)
        ref = encoder.embed_utterance(preprocess_wav(wav, 16000))
        model = spkid.load(rz, "cpu")
        got = model.embed([torch.from_numpy(preprocess_wav(wav, 16000))])[0].numpy()
        assert float(ref @ got) > 0.9999


@pytest.mark.parametrize("frames", [50, 160, 236, 237, 300, 1000])
def test_partial_windows_are_resemblyzers(frames):
    from resemblyzer import VoiceEncoder
    from spkid.models.ge2e import partial_starts
    _, mel_slices = VoiceEncoder.compute_partial_slices((frames - 1) * 160 + 80, 1.3, 0.75)
    assert partial_starts(frames) == [s.start for s in mel_slices]


def _clips(per_speaker: int):
    speakers = sorted(p for p in LIBRI.iterdir() if p.is_dir())
    files = [f for s in speakers for f in sorted(s.iterdir())[:per_speaker]]
    return files, np.array([f.parent.name for f in files])


def _eer(emb: np.ndarray, labels: np.ndarray) -> float:
    s = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    return eer(s[iu], (labels[:, None] == labels[None, :])[iu])[0]


@pytest.mark.shared
@pytest.mark.slow
def test_held_out_librispeech_cosine_and_eer(rz, encoder):
    if not LIBRI.is_dir():
        pytest.skip("../shared/data/librispeech-sample not present")
    from resemblyzer import preprocess_wav
    files, labels = _clips(4)                      # 10 speakers x 4 clips (the held-out test-other condition)
    ref = np.stack([encoder.embed_utterance(preprocess_wav(f)) for f in files])
    got = spkid.load(rz, "cpu").embed(files).numpy()     # spkid's own path: its decoder, Silero VAD, front end
    cos = (ref * got).sum(1)
    assert cos.mean() >= 0.98, cos
    assert abs(_eer(ref, labels) - _eer(got, labels)) <= 0.005


@pytest.mark.shared
def test_end_to_end_enroll_identify_verify(rz, tmp_path, capsys):
    if not LIBRI.is_dir():
        pytest.skip("../shared/data/librispeech-sample not present")
    speakers = sorted(p for p in LIBRI.iterdir() if p.is_dir())[:3]
    reg = tmp_path / "speakers.db"
    for i, s in enumerate(speakers):
        clips = [str(f) for f in sorted(s.iterdir())[:7]]     # 21 clips: the registry sets its own threshold
        args = ["enroll", str(reg), s.name, *clips] + (["--checkpoint", str(rz)] if i == 0 else [])
        assert main(args) == 0
    queries = [str(f) for s in speakers for f in sorted(s.iterdir())[8:10]]
    out = tmp_path / "who.csv"
    assert main(["identify", str(reg), *queries, "-o", str(out)]) == 0
    rows = [r.split(",") for r in out.read_text().splitlines()[1:]]
    right = sum(r[1] == Path(q).parent.name for r, q in zip(rows, queries))
    assert right >= 5 and all(r[1] in (Path(q).parent.name, "unknown") for r, q in zip(rows, queries)), rows
    capsys.readouterr()
    scores = []
    for other in (queries[1], queries[2]):           # the same speaker, then another
        assert main(["verify", str(rz), queries[0], other, "--registry", str(reg)]) == 0
        out = capsys.readouterr().out
        assert "P(same)" in out and "calibrated on enrollment trials" in out
        scores.append(float(out.split()[1]))
    assert scores[0] > scores[1]
    assert main(["embed", str(rz), *queries[:2], "-o", str(tmp_path / "e.npz")]) == 0
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (2, 256)
    assert main(["export", str(rz), "--onnx", str(tmp_path / "rz.onnx")]) == 1      # one line: partial windows
    assert "partial-window averaging runs in Python" in capsys.readouterr().err
    # diarize with the imported model: two enrolled speakers in turn, named from the registry
    import soundfile as sf
    from spkid.audio.io import load_audio
    turns = [sorted(speakers[k].iterdir())[j] for k, j in ((0, 8), (1, 8), (0, 9))]
    sf.write(tmp_path / "conv.wav", np.concatenate([load_audio(f).numpy() for f in turns]), 16000)
    rttm = tmp_path / "conv.rttm"
    assert main(["diarize", str(tmp_path / "conv.wav"), "--registry", str(reg), "-o", str(rttm), "--quiet"]) == 0
    named = {ln.split()[7] for ln in rttm.read_text().splitlines()}
    assert named and named <= {speakers[0].name, speakers[1].name} | {f"SPEAKER_{k:02d}" for k in range(4)}

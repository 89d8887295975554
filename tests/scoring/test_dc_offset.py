"""A DC offset does not move an embedding: every waveform loses its mean before its features (``Model.features``,
the diarization windows), so a recording with an offset gives the features of the same recording without one."""
import numpy as np
import soundfile as sf
import torch

import spkid
from spkid.audio.frontend import logmel, remove_dc
from spkid.audio.synth import make_voice, synth_utterance
from spkid.diarization.pipeline import SpkidEmbedder


def _speech(seed=2, seconds=2.0):
    return synth_utterance(make_voice(np.random.default_rng(1)), np.random.default_rng(seed), 16000, seconds)


def test_remove_dc():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert torch.allclose(remove_dc(x), torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    assert remove_dc(torch.zeros(0)).numel() == 0


def test_an_offset_gives_the_same_features_and_embeddings(trained, tmp_path):
    m = spkid.load(trained["ckpt"], device="cpu")
    wav = torch.from_numpy(_speech())
    plain = m.features([wav])[0]
    assert torch.allclose(plain, logmel(wav - wav.mean(), m.cfg.features))
    for dc in (0.05, -0.2):
        assert torch.allclose(m.features([wav + dc])[0], plain, atol=1e-3)
    sf.write(str(tmp_path / "dc.wav"), wav.numpy() + 0.1, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "clean.wav"), wav.numpy(), 16000, subtype="FLOAT")
    a, b = m.embed([tmp_path / "dc.wav", tmp_path / "clean.wav"]).numpy()
    assert float(a @ b) > 0.9999
    # without the removal the offset would have moved the features (the test can fail)
    assert not torch.allclose(logmel(wav + 0.1, m.cfg.features), logmel(wav, m.cfg.features), atol=1e-3)


def test_diarization_windows_lose_their_offset(trained):
    emb = SpkidEmbedder(spkid.load(trained["ckpt"], device="cpu"))
    w = _speech(seed=3, seconds=1.5).astype(np.float32)
    a, b = emb([w + 0.1, w])
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.9999

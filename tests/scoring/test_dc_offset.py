"""A DC offset does not move an embedding: a clip loses its mean before its features (``Model.features``), so a
recording with an offset gives the features of the same recording without one (diarization: test_diarization_dc.py)."""
import numpy as np
import soundfile as sf
import torch

import spkid
from spkid.audio.frontend import DC_MIN, logmel, remove_dc
from spkid.audio.synth import make_voice, synth_utterance


def _speech(seed=2, seconds=2.0):
    return synth_utterance(make_voice(np.random.default_rng(1)), np.random.default_rng(seed), 16000, seconds)


def test_remove_dc():
    x = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert torch.allclose(remove_dc(x), torch.tensor([-2.0, -1.0, 0.0, 3.0]))
    assert remove_dc(torch.zeros(0)).numel() == 0
    small = torch.tensor([0.0, 0.0, 0.5, -0.5 + 4 * DC_MIN * 0.9])            # mean 0.9 DC_MIN: left as it is
    assert torch.equal(remove_dc(small), small)


def test_an_offset_gives_the_same_features_and_embeddings(trained, tmp_path):
    m = spkid.load(trained["ckpt"], device="cpu")
    wav = torch.from_numpy(_speech())
    plain = m.features([wav])[0]
    assert torch.allclose(plain, logmel(remove_dc(wav), m.cfg.features))
    centred = logmel(wav - wav.mean(), m.cfg.features)               # what any offset of DC_MIN or more comes to
    for dc in (0.05, -0.2):
        assert torch.allclose(m.features([wav + dc])[0], centred, atol=1e-3)
    sf.write(str(tmp_path / "dc.wav"), wav.numpy() + 0.1, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "clean.wav"), wav.numpy(), 16000, subtype="FLOAT")
    a, b = m.embed([tmp_path / "dc.wav", tmp_path / "clean.wav"]).numpy()
    assert float(a @ b) > 0.999
    # without the removal the offset would have moved the features (the test can fail)
    assert not torch.allclose(logmel(wav + 0.1, m.cfg.features), logmel(wav, m.cfg.features), atol=1e-3)

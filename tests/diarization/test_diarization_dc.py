"""Diarization reads audio without its DC offset: each window embedded and each chunk given to the overlap detector
loses its mean when that is at least ``DC_MIN`` (``audio.frontend.remove_dc``), so an offset, of the whole file or
of one speaker's microphone, does not move the embeddings."""
import numpy as np
import torch

import spkid
from spkid.audio.synth import make_voice, synth_utterance
from spkid.diarization.overlap import CHUNK_S, shipped_detector
from spkid.diarization.pipeline import SpkidEmbedder


def _speech(seed, seconds):
    return synth_utterance(make_voice(np.random.default_rng(seed)), np.random.default_rng(seed + 1), 16000,
                           seconds).astype(np.float32)


def test_windows_lose_their_offset(trained):
    emb = SpkidEmbedder(spkid.load(trained["ckpt"], device="cpu"))
    w = _speech(3, 1.5)
    a, b, c = emb([w + 0.1, w - w.mean(), w - 0.02])
    for v in (a, c):
        assert float(v @ b / np.linalg.norm(v) / np.linalg.norm(b)) > 0.9999
    # a negligible offset is left alone: the window is embedded as it is
    small = w - w.mean() + 0.5e-3
    feats, _ = emb.frontend(torch.from_numpy(small)[None], torch.tensor([small.size]))
    np.testing.assert_array_equal(emb([small]), emb.model.embed_raw([feats[0]]).numpy())


def test_overlap_chunks_lose_their_offset():
    det = shipped_detector()
    x = _speech(5, CHUNK_S)
    p0, p1 = det.chunk_probs(np.stack([x - x.mean(), x + 0.05]))
    np.testing.assert_allclose(p0, p1, atol=1e-4)

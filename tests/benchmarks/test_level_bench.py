"""benchmarks/level.py's parts: the windows it cuts and levels, and the window-pair EER (same-utterance pairs left
out). No ../shared needed."""
from __future__ import annotations

import numpy as np
import pytest

BENCHMARK = "level"                 # the `bench` fixture (tests/conftest.py) imports benchmarks/level.py


def test_windows_are_levelled_hopped_and_skip_silence(bench):
    from spkid.audio.frontend import active_level, frame_power
    rng = np.random.default_rng(0)
    sr = bench.SR
    speech = 0.003 * rng.standard_normal(4 * sr)                 # 4 s at about -50 dBFS
    speech[int(1.5 * sr):int(2.5 * sr)] = 0.0                      # ... a silent stretch in it
    wins = bench.windows(speech.astype(np.float32))
    assert all(len(w) == int(1.5 * sr) for w in wins)
    assert len(wins) == 4                                          # starts 0, .75, 1.5, 2.25 s: 1.5 s within 4 s
    level = active_level(frame_power(np.concatenate(wins)))
    assert -22.0 < level < -17.0                                   # brought up to about -20 dBFS
    assert bench.windows(np.zeros(4 * sr, np.float32)) == []       # silence gives nothing


def test_eer_leaves_same_utterance_pairs_out(bench):
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((4, 16))
    spk = np.repeat(np.arange(4), 6)
    utt = np.repeat(np.arange(8), 3)                               # two utterances per speaker
    emb = centres[spk] + 0.05 * rng.standard_normal((24, 16))
    assert bench.eer_of(emb, spk, utt) == pytest.approx(0.0, abs=1e-6)
    # a speaker whose utterances sound like another speaker's: only cross-utterance pairs count
    emb2 = emb.copy()
    emb2[3:6] = centres[1] + 0.05 * rng.standard_normal((3, 16))
    assert bench.eer_of(emb2, spk, utt) > 5.0
    same_utt_only = np.arange(24)                                  # every window its own utterance: pairs all count
    assert bench.eer_of(emb, spk, same_utt_only) == pytest.approx(0.0, abs=1e-6)

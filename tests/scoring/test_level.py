"""Input level: spkid's log-mel is not level-free, so a waveform whose speech sits outside the training data's level
range is brought to ``LEVEL_DBFS`` before its features (``audio.frontend.set_level``); inside the range it is left
as it is. A clip and its copy 30 dB quieter or 10 dB louder then embed alike with the shipped model."""
import numpy as np
import pytest
import torch

import spkid
import spkid.audio.frontend as fe
from spkid.audio.frontend import (LEVEL_DBFS, LEVEL_MAX_GAIN_DB, LEVEL_RANGE_DBFS, active_level, frame_power, level_gain,
                                  set_level)
from spkid.pretrained.ship import reference_clip


def _level(x) -> float:
    return active_level(frame_power(x))


def test_active_level_of_a_tone_and_of_silence():
    t = torch.arange(16000) / 16000
    tone = 0.1 * torch.sin(2 * torch.pi * 440 * t)                     # rms 0.0707: -23.0 dBFS
    assert _level(tone) == pytest.approx(20 * np.log10(0.1 / np.sqrt(2)), abs=0.1)
    paused = torch.cat([tone, torch.zeros(16000 * 2)])                 # pauses do not lower the active level
    assert _level(paused) == pytest.approx(_level(tone), abs=0.1)
    assert _level(torch.zeros(16000)) == float("-inf") and _level(torch.zeros(0)) == float("-inf")
    assert frame_power(np.ones(1000)).shape == (2,)                     # a last partial frame counts too


def test_gain_only_outside_the_range():
    lo, hi = LEVEL_RANGE_DBFS
    assert level_gain(lo) == level_gain(hi) == level_gain(LEVEL_DBFS) == 1.0
    assert level_gain(float("-inf")) == 1.0 and level_gain(float("nan")) == 1.0
    assert 20 * np.log10(level_gain(-50.0)) == pytest.approx(LEVEL_DBFS + 50.0)
    assert 20 * np.log10(level_gain(-5.0)) == pytest.approx(LEVEL_DBFS + 5.0)
    assert 20 * np.log10(level_gain(-120.0)) == pytest.approx(LEVEL_MAX_GAIN_DB)   # near-silence stays faint
    x = torch.from_numpy(reference_clip())
    assert set_level(x) is x                                           # the reference clip is inside the range
    for db in (-40.0, 15.0):
        y = set_level(x * 10 ** (db / 20))
        assert _level(y) == pytest.approx(LEVEL_DBFS, abs=0.01)
    quiet = torch.zeros(16000)
    assert set_level(quiet) is quiet
    assert isinstance(set_level(reference_clip() * 0.01), np.ndarray)           # numpy in, numpy out


def test_a_quiet_or_loud_copy_embeds_like_the_clip(monkeypatch):
    m = spkid.load("base", "cpu")
    x = torch.from_numpy(reference_clip())
    x = x * 10 ** ((-16.0 - _level(x)) / 20)                           # a clip at -16 dBFS, inside the range
    copies = [x * 10 ** (db / 20) for db in (-30.0, -20.0, 10.0)]        # -46, -36 and -6 dBFS: outside
    e = m.embed([x, *copies]).numpy()
    assert (e[1:] @ e[0]).min() > 0.95, e[1:] @ e[0]
    assert m.conditions_audio
    monkeypatch.setattr(fe, "set_level", lambda w: w)                  # the copies as they are: far apart
    e = m.embed([x, *copies]).numpy()
    assert (e[1:] @ e[0]).min() < 0.85, e[1:] @ e[0]


def test_predict_keeps_the_hw4_definition_embed_levels():
    """Closed-set prediction computes what `prepare` writes of the audio (so the two paths agree); embedding levels."""
    from spkid.audio.frontend import logmel
    m = spkid.load("base", "cpu")
    quiet = torch.from_numpy(reference_clip()) * 0.003
    as_is, levelled = logmel(quiet, m.cfg.features), logmel(set_level(quiet), m.cfg.features)
    assert not torch.allclose(as_is, levelled)
    assert torch.allclose(m.features([quiet], level=False)[0], as_is)
    assert torch.allclose(m.features([quiet])[0], levelled)
    assert torch.allclose(m.scores([quiet]), m.scores([as_is]), atol=1e-5)   # predict: the features as prepared

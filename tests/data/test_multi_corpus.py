"""Several audio inputs trained as one corpus (issue 23): speakers kept apart per input, utterances intact, the
inputs' weights sharing the crops, the wrong number of weights refused, and ``spkid train A B --weights``."""
from __future__ import annotations

import shutil

import pytest
import torch

from spkid.audio.augment import WaveAugmentConfig
from spkid.audio.synth import synth_corpus
from spkid.config import apply_overrides, load_config
from spkid.data.audio_corpus import AudioCorpus, AudioCropSampler
from spkid.errors import ConfigError


@pytest.fixture(scope="module")
def two_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    a = synth_corpus(root / "a", n_speakers=3, n_train=4, n_test=0, seed=1, seconds=(1.0, 1.5))
    b = synth_corpus(root / "b", n_speakers=2, n_train=2, n_test=0, seed=2, seconds=(1.0, 1.5))
    # the same speaker folder names in both inputs: still different speakers
    return a.train_dir, b.train_dir


def test_inputs_become_one_corpus_with_speakers_kept_apart(two_inputs):
    a_dir, b_dir = two_inputs
    a = AudioCorpus.load(a_dir, vad=None, workers=1, progress=False)
    b = AudioCorpus.load(b_dir, vad=None, workers=1, progress=False)
    both = AudioCorpus.load_many([a_dir, b_dir], vad=None, workers=1, progress=False)
    assert len(both) == len(a) + len(b) and len(both.speakers) == len(a.speakers) + len(b.speakers)
    tag_a, tag_b = a_dir.name, f"{b_dir.name}#2" if b_dir.name == a_dir.name else b_dir.name
    assert {s.split("/")[0] for s in both.speakers} == {tag_a, tag_b}
    assert both.groups.tolist() == [0] * len(a) + [1] * len(b)
    for i, u in enumerate(both.utts):              # every utterance intact, under its own input's speaker
        src, j = (a, i) if i < len(a) else (b, i - len(a))
        assert torch.equal(both.stored(i), src.stored(j))
        assert both.speakers[int(both.labels[i])] == u.speaker
        assert u.speaker.endswith("/" + src.speakers[int(src.labels[j])])


def test_weights_share_the_crops_between_inputs(two_inputs):
    both = AudioCorpus.load_many(list(two_inputs), vad=None, workers=1, progress=False)
    clean = WaveAugmentConfig(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0, p_pause=0.0)
    n_a = int((both.groups == 0).sum())

    def share_of_b(weights):
        s = AudioCropSampler(both, batch_size=64, crop_seconds=(0.5, 0.5), augment=clean, weights=weights)
        labels = torch.cat([s.waveforms(k)[2] for k in range(30)])
        group_of = dict(zip(both.labels.tolist(), both.groups.tolist()))
        return sum(group_of[int(label)] == 1 for label in labels) / len(labels)
    assert share_of_b([1.0, 3.0]) == pytest.approx(0.75, abs=0.04)
    assert share_of_b([3.0, 1.0]) == pytest.approx(0.25, abs=0.04)
    assert share_of_b(None) == pytest.approx((len(both) - n_a) / len(both), abs=0.05)   # by utterance count
    with pytest.raises(ConfigError, match="2 training input"):
        AudioCropSampler(both, batch_size=4, augment=clean, weights=[1.0, 1.0, 1.0])


def test_weights_setting_is_checked():
    cfg = load_config("audio")
    assert apply_overrides(cfg, ['data.weights="2,1.5"']).data.weights == "2,1.5"
    for bad in ('"2,-1"', '"a,b"', '"1,,2"'):
        with pytest.raises(ConfigError, match="data.weights"):
            apply_overrides(cfg, [f"data.weights={bad}"])
    with pytest.raises(ConfigError, match="data.weights"):      # features read one HW4 directory
        apply_overrides(load_config("default"), ['data.weights="1,1"'])


def test_train_on_two_inputs_from_the_command_line(two_inputs, tmp_path, capsys):
    from spkid.cli import main
    from spkid.training.checkpoint import load_checkpoint
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(two_inputs[0], a)
    shutil.copytree(two_inputs[1], b)
    out = tmp_path / "run"
    rc = main(["train", str(a), str(b), "--out", str(out), "--config", "audio", "--steps", "4", "--quiet",
               "--weights", "1,1", "--no-vad", "--set", "augment.p_codec=0", "--set", "data.batch_size=8"])
    assert rc == 0
    ckpt = load_checkpoint(out / "last.ckpt")
    assert sorted({s.split("/")[0] for s in ckpt["speakers"]}) == ["a", "b"] and len(ckpt["speakers"]) == 5
    assert ckpt["config"]["data"]["weights"] == "1,1"
    rc = main(["train", str(a), str(b), "--out", str(tmp_path / "r2"), "--config", "audio", "--steps", "2",
               "--quiet", "--weights", "1,1,1", "--no-vad", "--set", "augment.p_codec=0"])
    assert rc == 1 and "3 weight(s) for 2 training input(s)" in capsys.readouterr().err

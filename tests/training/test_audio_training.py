"""Training straight from audio: speaker folders in, augmented crops, resumable exactly, predicts audio."""
from __future__ import annotations

import pytest
import torch

from spkid.audio.synth import synth_corpus
from spkid.cli import main
from spkid.config import apply_overrides, load_config
from spkid.errors import ConfigError
from spkid.training.checkpoint import load_checkpoint
from spkid.training.loop import train

SMALL = ["data.batch_size=8", "augment.noise_clips=4", "augment.n_rooms=2", "augment.codec_per_speaker=1",
         "data.val_per_speaker=1", "train.ckpt_every=2", "train.max_minutes=0", "train.amp=none",
         "train.threads=1"]      # fixed threads: the governor would follow other programs on the machine, and a
                                 # resumed run on another thread count sums in another order (not bit-exact)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synth_corpus(tmp_path_factory.mktemp("voices"), n_speakers=3, n_train=4, n_test=2, seed=1)


def test_audio_training_resumes_exactly_and_predicts_audio(corpus, tmp_path):
    cfg = apply_overrides(load_config("audio"), [*SMALL, "train.steps=6"])
    full = train(corpus.train_dir, tmp_path / "full", cfg, progress=False)
    half = train(corpus.train_dir, tmp_path / "half", cfg, progress=False, stop_after=3)
    assert half.steps == 3 and not half.finished
    train(corpus.train_dir, tmp_path / "half", cfg, progress=False, resume=True)
    a, b = (load_checkpoint(p / "last.ckpt") for p in (tmp_path / "full", tmp_path / "half"))
    assert a["step"] == b["step"] == 6 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["speakers"] == sorted(set(corpus.answers.values()))
    import spkid
    m = spkid.load(full.last, "cpu")
    files = sorted(corpus.test_dir.iterdir())
    assert set(m.predict(files)) <= set(a["speakers"])


def test_cli_picks_the_audio_recipe_for_audio_input_and_refuses_mixups(corpus, tmp_path, capsys):
    rc = main(["train", str(corpus.train_dir), "--out", str(tmp_path / "r"), "--steps", "2", "--quiet",
               *[x for s in SMALL for x in ("--set", s)]])
    assert rc == 0, capsys.readouterr().err
    assert load_checkpoint(tmp_path / "r" / "last.ckpt")["config"]["data"]["source"] == "audio"
    rc = main(["train", str(corpus.train_dir), "--out", str(tmp_path / "f"), "--config", "default", "--steps", "2",
               "--quiet"])
    assert rc == 1 and "metadata.json" in capsys.readouterr().err


def test_waveform_augmentation_settings_are_refused_for_feature_input():
    with pytest.raises(ConfigError, match="has no waveforms"):
        apply_overrides(load_config("default"), ["augment.p_noise=0.2"])

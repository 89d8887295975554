"""The shipped model `base` (issue 23): it is in the package, loads by name without a path or a network, is the
file its card describes (fingerprint), embeds a fixed synthetic clip as recorded, and is every command's default."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import spkid
from spkid.pretrained import DEFAULT, NAMES, card, resolve, shipped_path
from spkid.pretrained.ship import reference_clip
from spkid.training.checkpoint import checkpoint_fingerprint, load_checkpoint


def test_base_ships_inside_the_package_within_its_size():
    path = shipped_path("base")
    assert DEFAULT == "base" and "base" in NAMES
    assert path.is_file() and path.parent.name == "pretrained" and path.parent.parent.name == "spkid"
    assert path.stat().st_size <= 10 * 1024 * 1024            # at most 10 MB
    assert resolve("base") == path


def test_the_file_is_the_one_its_card_describes():
    ckpt = load_checkpoint("base")
    c = card("base")
    assert checkpoint_fingerprint(ckpt) == c["fingerprint"]
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    assert "optimizer" not in ckpt and "rng" not in ckpt       # inference entries only
    assert len(ckpt["speakers"]) == c["speakers"] and c["steps"] > 0


def test_it_loads_and_embeds_the_reference_clip_as_recorded():
    m = spkid.load("base", "cpu")                             # its load time is the card's benchmark's to measure
    assert m.name == "base" and m.model_id == card("base")["fingerprint"]
    e = m.embed([torch.from_numpy(reference_clip())])[0].numpy()
    ref = np.asarray(card("base")["reference_embedding"], dtype=np.float32)
    assert e.shape == ref.shape
    assert float(e @ ref) > 0.999 and np.abs(e - ref).max() < 2e-3


def test_base_is_the_default_model_of_the_commands(tmp_path, capsys):
    import soundfile as sf
    from spkid.cli import main
    from spkid.scoring.speaker_db import SpeakerDB
    wav = reference_clip()
    for k in range(2):
        sf.write(tmp_path / f"c{k}.wav", wav[k * 16000: k * 16000 + 32000], 16000)
    assert main(["embed", str(tmp_path / "c0.wav"), str(tmp_path / "c1.wav"), "-o", str(tmp_path / "e.npz")]) == 0
    z = np.load(tmp_path / "e.npz")
    assert z["model_id"] == card("base")["fingerprint"] and z["embeddings"].shape[0] == 2
    assert main(["verify", str(tmp_path / "c0.wav"), str(tmp_path / "c1.wav")]) == 0
    assert "score" in capsys.readouterr().out
    assert main(["enroll", str(tmp_path / "r.db"), "someone", str(tmp_path / "c0.wav")]) == 0
    with SpeakerDB.open(tmp_path / "r.db") as reg:            # the registry records the name, not an install path
        assert reg.checkpoint == "base" and reg.model_id == card("base")["fingerprint"]
    assert main(["identify", str(tmp_path / "r.db"), str(tmp_path / "c1.wav")]) == 0


def test_a_local_file_named_like_a_shipped_model_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").write_bytes(b"")
    assert resolve("base") == type(resolve("x"))("base")


def test_train_init_base_fine_tunes_from_the_shipped_weights(tmp_path):
    from spkid.audio.synth import synth_corpus
    from spkid.cli import main
    data = synth_corpus(tmp_path / "c", n_speakers=3, n_train=3, n_test=0, seed=4, seconds=(1.0, 1.5)).train_dir
    out = tmp_path / "ft"
    assert main(["train", str(data), "--init", "base", "--steps", "2", "--out", str(out), "--quiet", "--no-vad",
                 "--set", "augment.p_codec=0", "--set", "data.batch_size=4"]) == 0
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["config"]["train"]["init"] == "base" and len(ckpt["speakers"]) == 3
    body = load_checkpoint("base")["model"]
    k = next(k for k in body if k.startswith("encoder.") and body[k].is_floating_point() and body[k].dim() > 1)
    assert ckpt["model"][k].shape == body[k].shape


def test_report_without_a_run_reports_on_base(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from conftest import make_hw4
    from spkid.cli import main
    trials = make_hw4(tmp_path / "trials", n_speakers=4, per_speaker=4)["root"]
    assert main(["report", "-o", str(tmp_path / "r.html"), "--trials", str(trials), "--quiet"]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "base" in page and "no training curves" in page and "EER" in page

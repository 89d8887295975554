"""Nothing lost: outputs never replace inputs, run folders are owned and locked, resume and caches check their data,
registries are created atomically."""
from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3

from rel_helpers import *  # noqa: F401,F403
from rel_helpers import _cli, _one_line_error, _voice  # noqa: F401

from spkid.fileio import LOCK, MARKER
from spkid.scoring.speaker_db import SpeakerDB


def test_export_refuses_to_overwrite_its_checkpoint(model, tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    shutil.copy(model["ckpt"], ckpt)
    before = ckpt.read_bytes()
    rc, _, err = _cli(capsys, "export", ckpt, "--onnx", ckpt)
    _one_line_error(rc, err, "is also an input", str(ckpt))
    assert ckpt.read_bytes() == before


def test_predict_embed_identify_refuse_outputs_that_are_inputs(model, tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    shutil.copy(model["ckpt"], ckpt)
    data = tmp_path / "hw4"
    shutil.copytree(model["root"], data)
    index = (data / "testdata.json").read_bytes()
    rc, _, err = _cli(capsys, "predict", ckpt, data, "-o", data / "testdata.json", "--quiet")
    _one_line_error(rc, err, "testdata.json", "is also an input")
    feature = next(data.glob("uttr-*.pt"))
    rc, _, err = _cli(capsys, "predict", ckpt, data, "-o", feature, "--quiet")
    _one_line_error(rc, err, "is also an input")
    rc, _, err = _cli(capsys, "predict", ckpt, data, "-o", ckpt, "--quiet")
    _one_line_error(rc, err, "is also an input")
    rc, _, err = _cli(capsys, "embed", ckpt, feature, "-o", feature)
    _one_line_error(rc, err, "is also an input")
    assert (data / "testdata.json").read_bytes() == index and ckpt.read_bytes() == Path(model["ckpt"]).read_bytes()
    wav = tmp_path / "a.wav"
    sf.write(wav, _voice(16000, seconds=1.0), 16000)
    reg = tmp_path / "r.db"
    assert _cli(capsys, "enroll", reg, "alice", wav, "--checkpoint", ckpt)[0] == 0
    before = reg.read_bytes()
    rc, _, err = _cli(capsys, "identify", reg, wav, "-o", reg)
    _one_line_error(rc, err, "is also an input")
    assert reg.read_bytes() == before


def test_file_outputs_that_are_folders_are_refused_before_the_work(model, tmp_path, capsys):
    """predict, embed and identify given a folder for their file output: one line naming it, before any model
    loads (the checkpoint given does not exist), and the folder untouched."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    wav = tmp_path / "a.wav"
    sf.write(wav, _voice(16000, seconds=1.0), 16000)
    missing = tmp_path / "missing.ckpt"
    for args in (("predict", missing, model["root"], "-o", folder), ("embed", missing, wav, "-o", folder / "x.npz"),
                 ("identify", tmp_path / "r.db", wav, "-o", folder)):
        if args[0] == "embed":
            (folder / "x.npz").mkdir()
        rc, _, err = _cli(capsys, *args, "--quiet") if args[0] == "predict" else _cli(capsys, *args)
        _one_line_error(rc, err, "cannot write: Is a directory (give the path of a file to write)")
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt", "x.npz"] and (folder / "keep.txt").read_text() == \
        "mine"


def test_enroll_refuses_a_registry_path_that_is_an_input(model, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, _voice(16000), 16000)
    before = wav.read_bytes()
    rc, _, err = _cli(capsys, "enroll", wav, "alice", wav, "--checkpoint", model["ckpt"])
    _one_line_error(rc, err, "is also an input")
    assert wav.read_bytes() == before
    ck_before = Path(model["ckpt"]).read_bytes()
    rc, _, err = _cli(capsys, "enroll", model["ckpt"], "alice", wav, "--checkpoint", model["ckpt"])
    _one_line_error(rc, err, "is also an input")
    assert Path(model["ckpt"]).read_bytes() == ck_before


def test_prepare_refuses_an_output_that_is_its_input_list(tmp_path, capsys):
    data = tmp_path / "d"
    (data / "spk").mkdir(parents=True)
    sf.write(data / "spk" / "a.wav", _voice(16000), 16000)
    lst = data / "features.csv"                   # the input list sits where prepare would write features.csv
    lst.write_text("path,speaker\nspk/a.wav,spk\n")
    rc, _, err = _cli(capsys, "prepare", lst, data, "--workers", 1, "--quiet")
    _one_line_error(rc, err, "features.csv", "is also an input")
    assert lst.read_text() == "path,speaker\nspk/a.wav,spk\n"


def test_report_refuses_to_overwrite_its_answers(model, tmp_path, capsys):
    answers = tmp_path / "answers.csv"
    answers.write_text("Id,Category\n")
    rc, _, err = _cli(capsys, "report", model["ckpt"].parent, "--answers", answers, "-o", answers, "--quiet")
    _one_line_error(rc, err, "is also an input")
    assert answers.read_text() == "Id,Category\n"


def test_train_refuses_a_folder_holding_another_run_or_anything_else(model, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "best.ckpt").write_bytes(b"someone else's model")
    (other / "metrics.jsonl").write_text('{"step": 1}\n')
    rc, _, err = _cli(capsys, "train", model["root"], "--out", other, "--config", "tiny", "--steps", 2, "--quiet")
    _one_line_error(rc, err, "not empty", "best.ckpt")
    assert (other / "best.ckpt").read_bytes() == b"someone else's model"
    assert (other / "metrics.jsonl").read_text() == '{"step": 1}\n'
    rc, _, err = _cli(capsys, "train", model["root"], "--out", model["root"], "--config", "tiny", "--steps", 2,
                      "--quiet")
    _one_line_error(rc, err, "not empty")                           # the data folder itself
    plain = tmp_path / "plain"
    plain.write_text("x")
    rc, _, err = _cli(capsys, "train", model["root"], "--out", plain, "--config", "tiny", "--steps", 2, "--quiet")
    _one_line_error(rc, err, "not a folder")


def test_resume_of_a_folder_spkid_did_not_make_is_refused(model, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(model["ckpt"], foreign / "last.ckpt")
    rc, _, err = _cli(capsys, "train", model["root"], "--out", foreign, "--resume", "--steps", 5, "--quiet")
    _one_line_error(rc, err, "not a spkid run folder")


def test_a_second_training_into_a_locked_run_folder_is_refused(model, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / MARKER).touch()
    fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)                 # another process (here: this one) is training into it
    try:
        rc, _, err = _cli(capsys, "train", model["root"], "--out", run, "--config", "tiny", "--steps", 2, "--quiet")
        _one_line_error(rc, err, "in use by another spkid process")
    finally:
        os.close(fd)
    rc, _, err = _cli(capsys, "train", model["root"], "--out", run, "--config", "tiny", "--steps", 2, "--quiet")
    assert rc == 0, err                             # free again: an empty (marked) folder is a fresh run's


def test_resume_on_other_data_with_as_many_speakers_is_refused(tmp_path, capsys):
    a = make_hw4(tmp_path / "a", n_speakers=3, per_speaker=3, seed=1)["root"]
    b = make_hw4(tmp_path / "b", n_speakers=3, per_speaker=3, seed=2, prefix="other")["root"]
    c = make_hw4(tmp_path / "c", n_speakers=3, per_speaker=3, seed=3)["root"]     # same names, other utterances
    run = tmp_path / "run"
    rc, _, err = _cli(capsys, "train", a, "--out", run, "--config", "tiny", "--steps", 4, "--stop-after", 2, "--quiet")
    assert rc == 0, err
    rc, _, err = _cli(capsys, "train", b, "--out", run, "--resume", "--quiet")
    _one_line_error(rc, err, "other speakers")
    rc, _, err = _cli(capsys, "train", c, "--out", run, "--resume", "--quiet")
    _one_line_error(rc, err, "not the data the run was trained on")
    rc, _, err = _cli(capsys, "train", a, "--out", run, "--resume", "--quiet")
    assert rc == 0, err


def test_an_empty_registry_file_is_named_with_its_fix(model, tmp_path, capsys):
    reg = tmp_path / "r.db"
    reg.write_bytes(b"")                         # what a killed first enroll used to leave
    wav = tmp_path / "a.wav"
    sf.write(wav, _voice(16000), 16000)
    rc, _, err = _cli(capsys, "enroll", reg, "alice", wav, "--checkpoint", model["ckpt"])
    _one_line_error(rc, err, "empty file", "delete it and enroll again")


def test_registry_create_never_replaces_a_registry_created_meanwhile(tmp_path, monkeypatch):
    reg = tmp_path / "r.db"
    real_link = os.link

    def racing_link(src, dst):                   # another process wins the race between our check and our link
        SpeakerDB.create.__wrapped__ if False else None
        conn = sqlite3.connect(dst)
        conn.execute("CREATE TABLE theirs (x)")
        conn.close()
        return real_link(src, dst)
    monkeypatch.setattr(os, "link", racing_link)
    with pytest.raises(DataError, match="created by another process meanwhile"):
        SpeakerDB.create(reg, model_id="m", checkpoint="c", embed_dim=4, threshold=0.5)
    conn = sqlite3.connect(reg)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("theirs",)]   # theirs, intact
    conn.close()
    assert [p.name for p in tmp_path.iterdir()] == ["r.db"]                               # no temp file left


def test_a_killed_first_enroll_leaves_no_registry(model, tmp_path, monkeypatch):
    from spkid.scoring import speaker_db
    reg = tmp_path / "r.db"

    def dying_link(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(speaker_db.os, "link", dying_link)
    with pytest.raises(KeyboardInterrupt):
        SpeakerDB.create(reg, model_id="m", checkpoint="c", embed_dim=4, threshold=0.5)
    assert list(tmp_path.iterdir()) == []


def test_cache_is_rebuilt_when_a_feature_file_changes(tmp_path):
    from spkid.data.features import load_train_features
    d = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=2)
    root, cache = d["root"], tmp_path / "cache"
    first = load_train_features(root, 40, progress=False, cache_dir=cache)
    meta = json.loads((root / "metadata.json").read_text())
    item = next(iter(meta["speakers"].values()))[0]
    x = torch.load(root / item["feature_path"], weights_only=True)
    time.sleep(0.01)
    torch.save(torch.full_like(x, 3.0), root / item["feature_path"])          # same shape, new values
    second = load_train_features(root, 40, progress=False, cache_dir=cache)
    i = [u.feature_path for u in second.utts].index(item["feature_path"])
    assert torch.equal(second.feats[i].float(), torch.full(x.shape, 3.0)) and not torch.equal(first.feats[i], second.feats[i])


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_follow_the_umask(tmp_path, mask, mode):
    from spkid.fileio import atomic_write
    old = os.umask(mask)
    try:
        atomic_write(tmp_path / "f.txt", lambda tmp: Path(tmp).write_text("x"))
        reg = tmp_path / f"r{mask}.db"
        SpeakerDB.create(reg, model_id="m", checkpoint="c", embed_dim=4, threshold=0.5).close()
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == mode
    assert reg.stat().st_mode & 0o777 == mode

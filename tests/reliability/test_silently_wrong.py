"""Never silently wrong: diverged training stops with an error and saves nothing non-finite, NaN models and
thresholds are refused, CSV output cannot be forged, flags are validated, data files cannot escape their folder."""
from __future__ import annotations

import math

from rel_helpers import *  # noqa: F401,F403
from rel_helpers import _cli, _edit_json, _one_line_error, _voice  # noqa: F401

from spkid.scoring.speaker_db import SpeakerDB


def test_diverged_training_stops_with_an_error_and_saves_no_nan(tmp_path, capsys):
    root = make_hw4(tmp_path / "hw4", n_speakers=3, per_speaker=3)["root"]
    run = tmp_path / "run"
    rc, out, err = _cli(capsys, "train", root, "--out", run, "--config", "tiny", "--steps", 30, "--quiet",
                        "--set", "train.lr=1e30", "--set", "train.grad_clip=0", "--set", "train.ckpt_every=1")
    _one_line_error(rc, err, "diverged")
    assert "done" not in out
    for ck in run.glob("*.ckpt"):                  # whatever was saved before the divergence is finite
        state = load_checkpoint(ck)["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_checkpoint_with_nan_weights_is_refused(model, tmp_path, capsys):
    ck = torch.load(model["ckpt"], weights_only=True)
    k = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][k] = torch.full_like(ck["model"][k], float("nan"))
    bad = tmp_path / "nan.ckpt"
    torch.save(ck, bad)
    for args in (["predict", bad, model["root"], "-o", tmp_path / "p.csv"], ["verify", bad, "a.pt", "b.pt"]):
        rc, _, err = _cli(capsys, *args)
        _one_line_error(rc, err, "nan.ckpt", "NaN/Inf")
    assert not (tmp_path / "p.csv").exists()


def test_registry_with_a_nan_threshold_is_named(model, tmp_path, capsys):
    reg = tmp_path / "r.db"
    SpeakerDB.create(reg, model_id="m", checkpoint=str(model["ckpt"]), embed_dim=4, threshold=0.5).close()
    import sqlite3
    conn = sqlite3.connect(reg)
    conn.execute("UPDATE meta SET value = 'nan' WHERE key = 'threshold'")
    conn.commit()
    conn.close()
    rc, _, err = _cli(capsys, "identify", reg, tmp_path)
    _one_line_error(rc, err, "r.db", "threshold 'nan'")


@pytest.mark.parametrize("name", ['ev,il', 'new\nline', 'quo"te'])
def test_identify_output_cannot_be_forged_by_speaker_names(model, tmp_path, capsys, name):
    wavs = tmp_path / "w"
    wavs.mkdir()
    for i in range(2):
        sf.write(wavs / f"{i}.wav", _voice(16000, seed=i), 16000)
    reg = tmp_path / "r.db"
    assert _cli(capsys, "enroll", reg, name, wavs, "--checkpoint", model["ckpt"])[0] == 0
    rc, out, err = _cli(capsys, "identify", reg, wavs, "--top-k", "2")
    assert rc == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["file", "speaker", "score"] and all(len(r) == 3 for r in rows)
    assert {r[1] for r in rows[1:]} <= {name, "unknown", f"candidate:{name}"}


@pytest.mark.parametrize("args, needle", [
    (["identify", "R", "F", "--top-k", "0"], "--top-k 0"),
    (["eval-verification", "C", "D", "--far", "2"], "--far 2"),
    (["eval-verification", "C", "D", "--max-nontarget", "-1"], "--max-nontarget -1"),
    (["prepare", "I", "O", "--workers", "-1"], "--workers -1"),
    (["verify", "C", "A", "B", "--threshold", "nan"], "--threshold nan"),
])
def test_bad_flags_are_one_line_errors(model, tmp_path, capsys, args, needle):
    subst = {"R": tmp_path / "r.db", "F": tmp_path, "C": model["ckpt"], "D": model["root"], "I": tmp_path,
             "O": tmp_path / "o", "A": tmp_path / "a.pt", "B": tmp_path / "b.pt"}
    rc, _, err = _cli(capsys, *[subst.get(a, a) for a in args])
    _one_line_error(rc, err, needle)


def test_feature_path_through_a_symlink_outside_the_data_dir_is_refused(tmp_path, capsys, model):
    d = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=2)
    secret = tmp_path / "secret.pt"
    torch.save(torch.randn(30, 40), secret)
    (d["root"] / "link.pt").symlink_to(secret)
    _edit_json(d["root"] / "testdata.json", lambda j: j["utterances"].append({"feature_path": "link.pt", "mel_len": 30}))
    rc, _, err = _cli(capsys, "predict", model["ckpt"], d["root"], "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, "link.pt", "outside the data directory")


def test_one_file_listed_twice_under_two_spellings_is_refused(tmp_path, capsys):
    d = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=2)
    meta = json.loads((d["root"] / "metadata.json").read_text())
    spk = sorted(meta["speakers"])
    first = meta["speakers"][spk[0]][0]
    meta["speakers"][spk[1]].append({"feature_path": "./" + first["feature_path"], "mel_len": first["mel_len"]})
    (d["root"] / "metadata.json").write_text(json.dumps(meta))
    rc, _, err = _cli(capsys, "train", d["root"], "--out", tmp_path / "run", "--config", "tiny", "--steps", 2, "--quiet")
    _one_line_error(rc, err, "metadata.json", "listed twice")

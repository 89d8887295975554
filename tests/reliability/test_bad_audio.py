"""Audio: valid variants work, broken files fail naming the file; prepare skips them."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

# ------------------------------------------------------------------ audio: valid variants work, broken files fail

def _odd_but_valid_audio(folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    sf.write(folder / "silent.wav", np.zeros(8000), 16000)
    sf.write(folder / "stereo.wav", _voice(16000, channels=2), 16000)
    sf.write(folder / "rate8k.wav", _voice(8000), 8000)
    sf.write(folder / "rate44k.flac", _voice(44100), 44100)
    sf.write(folder / "float32.wav", _voice(16000).astype(np.float32), 16000, subtype="FLOAT")
    sf.write(folder / "tiny_10ms.wav", _voice(16000, 0.01), 16000)          # 160 samples: 1 frame
    sf.write(folder / "one_sample.wav", _voice(16000)[:1], 16000)
    return sorted(p.name for p in folder.iterdir())


def test_silent_stereo_8k_44k_float_and_very_short_audio_predict_and_embed(model, tmp_path, capsys):
    names = _odd_but_valid_audio(tmp_path / "audio")          # silent and 1-sample files: whole files (--no-vad)
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "p.csv", "--quiet",
                      "--no-vad")
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["Id", "Category"] and sorted(r[0] for r in rows[1:]) == names
    assert all(r[1] in model["speakers"] for r in rows[1:])
    rc, _, err = _cli(capsys, "embed", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "e.npz", "--no-vad")
    assert rc == 0, err
    z = np.load(tmp_path / "e.npz")
    assert sorted(z["ids"].tolist()) == names
    assert np.isfinite(z["embeddings"]).all() and np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5)
    rc, out, err = _cli(capsys, "enroll", tmp_path / "reg.db", "odd", tmp_path / "audio", "--checkpoint",
                        model["ckpt"], "--no-vad")
    assert rc == 0 and f"enrolled odd: {len(names)} utterance(s)" in out, err


@pytest.mark.parametrize("command", ["predict", "embed", "identify", "enroll"])
def test_a_file_without_speech_falls_back_to_the_whole_signal_and_the_batch_finishes(model, tmp_path, capsys,
                                                                                      command):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "quiet.wav", 0.01 * np.random.default_rng(0).standard_normal(16000 * 2), 16000)  # faint hiss
    for k in range(3):
        sf.write(folder / f"voice{k}.wav", _voice(16000, seconds=1.5, seed=k), 16000)
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")                       # cannot be decoded
    if command == "identify":
        rc, _, err = _cli(capsys, "enroll", tmp_path / "r.db", "v", folder / "voice0.wav", "--checkpoint",
                          model["ckpt"])
        assert rc == 0, err
    out = {"predict": tmp_path / "p.csv", "embed": tmp_path / "e.npz", "identify": tmp_path / "i.csv",
           "enroll": tmp_path / "r.db"}[command]
    args = {"predict": ["predict", model["ckpt"], folder, "-o", out, "--quiet"],
            "embed": ["embed", model["ckpt"], folder, "-o", out],
            "identify": ["identify", tmp_path / "r.db", folder, "-o", out],
            "enroll": ["enroll", out, "x", folder, "--checkpoint", model["ckpt"]]}[command]
    rc, _, err = _cli(capsys, *args)
    assert rc == 2, err                                           # complete output, something was off
    lines = [ln for ln in err.splitlines() if ln.startswith("spkid: warning:")]
    assert any("quiet.wav" in ln and "whole" in ln for ln in lines), err
    assert any("broken.wav" in ln for ln in lines), err
    assert "Traceback" not in err
    if command == "predict":
        rows = {r[0]: r[1] for r in list(csv.reader(open(out)))[1:]}
        assert set(rows) == {"quiet.wav", "broken.wav", "voice0.wav", "voice1.wav", "voice2.wav"}
        assert rows["broken.wav"] == "" and all(rows[k] in model["speakers"] for k in rows if k != "broken.wav")
    elif command == "embed":
        z = np.load(out)
        assert sorted(z["ids"].tolist()) == ["quiet.wav", "voice0.wav", "voice1.wav", "voice2.wav"]
        assert z["failed_ids"].tolist() == ["broken.wav"] and z["failed_reasons"][0]
    elif command == "identify":
        rows = {r[0]: r for r in list(csv.reader(open(out)))[1:]}
        assert len(rows) == 5 and rows["broken.wav"][1].startswith("error:") and rows["broken.wav"][2] == ""
    else:
        import sqlite3
        n = sqlite3.connect(out).execute("select count(*) from sqlite_master").fetchone()[0]
        assert n > 0


def test_a_command_whose_every_input_fails_is_a_one_line_error(model, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    rc, _, err = _cli(capsys, "embed", model["ckpt"], tmp_path / "in", "-o", tmp_path / "e.npz")
    assert rc == 1 and "broken.wav" in err and "Traceback" not in err, err
    assert not (tmp_path / "e.npz").exists()


def test_speech_detection_removes_silence_padding(model, tmp_path):
    import spkid
    m = spkid.load(model["ckpt"], "cpu")
    speech = _voice(16000, seconds=1.5, seed=3)
    padded = np.concatenate([np.zeros(32000), speech[:12000], np.zeros(16000), speech[12000:], np.zeros(32000)])
    sf.write(tmp_path / "s.wav", speech, 16000)
    sf.write(tmp_path / "p.wav", padded, 16000)
    f_speech, f_padded = m.features([tmp_path / "s.wav", tmp_path / "p.wav"])
    assert abs(f_padded.shape[0] - f_speech.shape[0]) < 0.4 * f_speech.shape[0]     # 5 s of silence mostly gone
    m.vad = False
    assert m.features([tmp_path / "p.wav"])[0].shape[0] > 4 * f_speech.shape[0]


def test_valid_audio_in_a_real_process_leaves_stderr_empty(model, tmp_path):
    """Flush-denormal is on when audio is first decoded: numpy's finfo warnings must not reach the user."""
    sf.write(tmp_path / "stereo44k.wav", _voice(44100, channels=2), 44100)
    r = _spkid("predict", model["ckpt"], tmp_path / "stereo44k.wav", "-o", tmp_path / "p.csv", "--quiet",
               "--device", "cpu")
    assert r.returncode == 0 and r.stderr == "" and "wrote 1 predictions" in r.stdout, r.stderr


def _broken_audio(folder: Path, case: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / {"truncated_flac": "x.flac"}.get(case, "x.wav")
    if case == "text_as_wav":
        p.write_text("not audio at all\n")
    elif case == "zero_bytes":
        p.write_bytes(b"")
    elif case == "no_samples":
        sf.write(p, np.zeros(0), 16000)
    elif case == "truncated_flac":
        sf.write(p, _voice(16000), 16000)
        p.write_bytes(p.read_bytes()[:60])
    elif case == "nan_samples":
        x = _voice(16000).astype(np.float32)
        x[100] = np.nan
        sf.write(p, x, 16000, subtype="FLOAT")
    elif case == "missing":
        pass
    else:
        raise AssertionError(case)
    return p


AUDIO_CASES = [
    ("text_as_wav", "not readable as audio"),
    ("zero_bytes", "not readable as audio"),
    ("no_samples", "empty audio (0 samples)"),
    ("truncated_flac", "not readable as audio"),
    ("nan_samples", "NaN or Inf"),
    ("missing", "not found"),
]


@pytest.mark.parametrize("case, expect", AUDIO_CASES, ids=[c[0] for c in AUDIO_CASES])
def test_broken_audio_fails_predict_embed_enroll_naming_the_file(model, tmp_path, capsys, case, expect):
    bad = _broken_audio(tmp_path / "in", case)
    for args, out in ((["predict", model["ckpt"], bad, "-o", tmp_path / "p.csv", "--quiet"], tmp_path / "p.csv"),
                      (["embed", model["ckpt"], bad, "-o", tmp_path / "e.npz"], tmp_path / "e.npz"),
                      (["enroll", tmp_path / "reg.db", "bob", bad, "--checkpoint", model["ckpt"]],
                       tmp_path / "reg.db")):
        rc, _, err = _cli(capsys, *args)
        _one_line_error(rc, err, f"spkid: error: {bad}", expect)
        assert not out.exists(), f"{args[0]} left {out}"


def test_predict_folder_with_one_broken_file_keeps_every_row_and_names_it(model, tmp_path, capsys):
    """A Kaggle CSV needs every row: the bad file keeps its row (empty Category), a warning names it, status 2."""
    names = _odd_but_valid_audio(tmp_path / "audio")
    (tmp_path / "audio" / "zz_bad.wav").write_text("nope")
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "p.csv", "--quiet",
                      "--no-vad")
    assert rc == 2 and f"spkid: warning: {tmp_path / 'audio' / 'zz_bad.wav'}: not readable as audio" in err, err
    rows = dict(list(csv.reader(open(tmp_path / "p.csv")))[1:])
    assert sorted(rows) == sorted(names + ["zz_bad.wav"]) and rows["zz_bad.wav"] == ""


def test_prepare_skips_bad_audio_processes_the_rest_and_warns(tmp_path, capsys):
    spk = tmp_path / "in" / "spk00"
    names = _odd_but_valid_audio(spk)
    for tiny in ("tiny_10ms.wav", "one_sample.wav"):           # below prepare's --min-seconds 0.1
        names.remove(tiny)
    for case in ("text_as_wav", "no_samples"):
        _broken_audio(tmp_path / "in" / "spk01", case).rename(tmp_path / "in" / "spk01" / f"{case}.wav")
    sf.write(tmp_path / "in" / "spk01" / "ok.wav", _voice(16000), 16000)
    out = tmp_path / "out"
    rc, stdout, err = _cli(capsys, "prepare", tmp_path / "in", out, "--workers", "1", "--quiet", "--no-vad")
    assert rc == 2 and "4 skipped" in stdout
    assert err.strip().splitlines() == [f"spkid: warning: skipped 4 file(s), reasons in {out / 'prepare_report.txt'}"]
    report = (out / "prepare_report.txt").read_text()
    for line in ("spk00/one_sample.wav\ttoo short", "spk00/tiny_10ms.wav\ttoo short",
                 "spk01/text_as_wav.wav\tnot readable as audio", "spk01/no_samples.wav\tempty audio (0 samples)"):
        assert line in report
    meta = json.loads((out / "metadata.json").read_text())["speakers"]
    assert len(meta["spk00"]) == len(names) == 5 and len(meta["spk01"]) == 1
    _no_temp_files(out)


def test_prepare_recomputes_a_planted_pickle_instead_of_running_it(tmp_path):
    """``prepare`` reuses earlier ``uttr-*.pt`` results: one replaced by a code-running pickle is refused, redone."""
    (tmp_path / "in" / "spk00").mkdir(parents=True)
    sf.write(tmp_path / "in" / "spk00" / "a.wav", _voice(16000), 16000)
    out, marker = tmp_path / "out", tmp_path / "PWNED"
    assert prepare(tmp_path / "in", out, workers=1, progress=False).n_processed == 1
    fp = out / json.loads((out / "metadata.json").read_text())["speakers"]["spk00"][0]["feature_path"]
    fp.write_bytes(pickle.dumps(Evil(marker)))                       # newer than its source: would be reused
    rep = prepare(tmp_path / "in", out, workers=1, progress=False)
    assert (rep.n_processed, rep.n_reused) == (1, 0) and not marker.exists()
    assert torch.load(fp, weights_only=True).shape[1] == 40


def test_every_torch_load_in_the_library_is_weights_only():
    """Static guard: every ``torch.load`` call in ``spkid/`` passes ``weights_only=True``; no raw pickle loads."""
    import ast
    calls = 0
    for path in sorted((REPO / "spkid").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            if (owner, node.func.attr) == ("torch", "load"):
                calls += 1
                kw = {k.arg: k.value for k in node.keywords}
                assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"
            assert (owner, node.func.attr) not in {("pickle", "load"), ("pickle", "loads")}, f"{path}:{node.lineno}"
            if (owner, node.func.attr) == ("np", "load"):
                assert not any(k.arg == "allow_pickle" for k in node.keywords), f"{path}:{node.lineno}"
    assert calls >= 3                        # checkpoints, HW4 features, prepare's reuse check

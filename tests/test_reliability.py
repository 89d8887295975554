"""Reliability: bad input never crashes or corrupts, killed runs resume exactly, untrusted files can't run code.

Every bad-input case is driven through the command line (``spkid.cli.main`` in-process, or ``python -m spkid`` in
a subprocess where stderr noise or signals matter) and must end in one line ``spkid: error: <file>: <problem>``
with exit status 1, no traceback and no output file (an earlier output stays intact), except ``prepare``, which
skips bad files with a warning and a report. docs/reliability.md maps each case to the test that checks it.
"""
from __future__ import annotations

import csv
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spkid.training.checkpoint import load_checkpoint
from spkid.cli import main
from spkid.config import apply_overrides, load_config
from spkid.data.prepare import prepare
from spkid.errors import CheckpointError, DataError
from spkid.scoring.metrics import read_answers_csv
from spkid.models.speaker_net import build_model
from spkid.training.loop import train

from conftest import make_hw4

REPO = Path(__file__).resolve().parents[1]
# torch warns about the protocol of a pickle it then refuses; the refusal is what these tests check
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


# ------------------------------------------------------------------ helpers

def _env() -> dict:
    """Subprocess environment: same thread count as this process, so CPU results match bit for bit."""
    n = str(torch.get_num_threads())
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n}


def _spkid(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spkid", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env())


def _cli(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process; an exception other than SpkidError escapes main() and fails the test."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("spkid: error: "), err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


class Evil:
    """A pickle that runs code when loaded without ``weights_only``: it would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def _voice(sr: int, seconds: float = 0.5, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """A tiny checkpoint (3 training steps: the tests need a valid model, not a good one)."""
    base = tmp_path_factory.mktemp("reliability")
    d = make_hw4(base / "hw4", n_speakers=3, per_speaker=4, n_test=3)
    cfg = apply_overrides(load_config("tiny"), ["train.steps=3", "train.device=cpu"])
    r = train(d["root"], base / "run", cfg, progress=False)
    return {"ckpt": r.last, "root": d["root"], "speakers": d["speakers"], "base": base}


# ------------------------------------------------------------------ predict on an HW4 directory: bad test data

def _corrupt_test_data(root: Path, case: str, marker: Path) -> str:
    """Break ``root`` (an HW4 directory) in one way; returns the file the error must name."""
    test = root / "testdata.json"
    first = json.loads(test.read_text())["utterances"][0]
    pt = root / first["feature_path"]
    n = first["mel_len"]
    if case == "malformed_json":
        test.write_text('{"n_mels": 40, "utterances": [')
    elif case == "not_utf8":
        test.write_bytes(b"\xff\xfe{\x00")
    elif case == "top_level_list":
        test.write_text("[]")
    elif case == "missing_key":
        _edit_json(test, lambda d: d.pop("utterances"))
    elif case == "n_mels_type":
        _edit_json(test, lambda d: d.update(n_mels="40"))
    elif case == "mel_len_type":
        _edit_json(test, lambda d: d["utterances"][0].update(mel_len=3.5))
    elif case == "feature_path_type":
        _edit_json(test, lambda d: d["utterances"][0].update(feature_path=7))
    elif case == "item_not_object":
        _edit_json(test, lambda d: d["utterances"].__setitem__(0, None))
    elif case == "duplicate_id":
        _edit_json(test, lambda d: d["utterances"].append(d["utterances"][0]))
    elif case == "no_utterances":
        _edit_json(test, lambda d: d.update(utterances=[]))
    elif case == "zero_mel_len":
        _edit_json(test, lambda d: d["utterances"][0].update(mel_len=0))
    elif case == "escape_path":
        _edit_json(test, lambda d: d["utterances"][0].update(feature_path="../elsewhere.pt"))
    elif case == "wrong_n_mels_json":
        _edit_json(test, lambda d: d.update(n_mels=80))
    else:                                             # the first test utterance's .pt file
        if case == "missing_pt":
            pt.unlink()
        elif case == "truncated_pt":
            pt.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
        elif case == "text_pt":
            pt.write_text("this is not a tensor\n")
        elif case == "not_tensor_pt":
            torch.save({"feats": torch.zeros(n, 40)}, pt)
        elif case == "pickle_code_pt":
            pt.write_bytes(pickle.dumps(Evil(marker)))
        elif case == "wrong_bands_pt":
            torch.save(torch.randn(n, 80), pt)
        elif case == "zero_frames_pt":
            torch.save(torch.randn(0, 40), pt)
        elif case in ("nan_pt", "inf_pt"):
            x = torch.randn(n, 40)
            x[n // 2, 5] = float("nan") if case == "nan_pt" else float("-inf")
            torch.save(x.half(), pt)
        elif case == "int_pt":
            torch.save(torch.zeros(n, 40, dtype=torch.int16), pt)
        elif case == "length_mismatch_pt":
            torch.save(torch.randn(n + 1, 40), pt)
        else:
            raise AssertionError(case)
        return str(pt)
    return str(test)


TEST_DATA_CASES = [
    ("malformed_json", "malformed JSON (Expecting value at line 1 column 31)"),
    ("not_utf8", "cannot read"),
    ("top_level_list", "expected a JSON object at top level, found list"),
    ("missing_key", "missing key 'utterances'"),
    ("n_mels_type", "n_mels must be int, found str"),
    ("mel_len_type", "utterances[0].mel_len must be int, found float"),
    ("feature_path_type", "utterances[0].feature_path must be str, found int"),
    ("item_not_object", "utterances[0] must be an object, found NoneType"),
    ("duplicate_id", "duplicate test id"),
    ("no_utterances", "no test utterances"),
    ("zero_mel_len", "has mel_len 0; utterances need at least 1 frame"),
    ("escape_path", "must be a relative path inside the data directory"),
    ("wrong_n_mels_json", "n_mels is 80, the model expects 40"),
    ("missing_pt", "feature file not found"),
    ("truncated_pt", "cannot load tensor: corrupt, truncated or not a torch.save file"),
    ("text_pt", "cannot load tensor"),
    ("not_tensor_pt", "expected a tensor (frames, 40), found dict"),
    ("pickle_code_pt", "refused: file holds objects other than tensors (unsafe pickle)"),
    ("wrong_bands_pt", "expected shape (frames, 40), found ("),
    ("zero_frames_pt", "zero-length utterance (0 frames)"),
    ("nan_pt", "contains NaN or Inf values"),
    ("inf_pt", "contains NaN or Inf values"),
    ("int_pt", "expected float16/float32 values, found torch.int16"),
    ("length_mismatch_pt", "json says mel_len"),
]


@pytest.mark.parametrize("case, expect", TEST_DATA_CASES, ids=[c[0] for c in TEST_DATA_CASES])
def test_predict_bad_test_data_one_line_error_and_output_untouched(model, tmp_path, capsys, case, expect):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=1, n_test=3, seed=5)["root"]
    marker = tmp_path / "PWNED"
    named = _corrupt_test_data(root, case, marker)
    out = tmp_path / "out" / "pred.csv"
    out.parent.mkdir()
    out.write_text("Id,Category\nold,row\n")                       # an earlier result must survive
    rc, _, err = _cli(capsys, "predict", model["ckpt"], root, "-o", out, "--quiet")
    _one_line_error(rc, err, f"spkid: error: {named}: ", expect)
    assert out.read_text() == "Id,Category\nold,row\n"
    _no_temp_files(out.parent)
    assert not marker.exists()                                      # the pickle's code never ran


@pytest.mark.parametrize("case, expect", [("pickle_code_pt", "unsafe pickle"), ("wrong_bands_pt", "found ("),
                                          ("zero_frames_pt", "zero-length"), ("nan_pt", "NaN or Inf"),
                                          ("truncated_pt", "cannot load tensor")],
                         ids=["pickle_code_pt", "wrong_bands_pt", "zero_frames_pt", "nan_pt", "truncated_pt"])
def test_bad_feature_file_fails_embed_and_enroll(model, tmp_path, capsys, case, expect):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=1, n_test=1, seed=6)["root"]
    marker = tmp_path / "PWNED"
    bad = _corrupt_test_data(root, case, marker)
    for args, out in ((["embed", model["ckpt"], bad, "-o", tmp_path / "e.npz"], tmp_path / "e.npz"),
                      (["enroll", tmp_path / "reg.db", "bob", bad, "--checkpoint", model["ckpt"]],
                       tmp_path / "reg.db")):
        rc, _, err = _cli(capsys, *args)
        _one_line_error(rc, err, f"spkid: error: {bad}: ", expect)
        assert not out.exists() and not marker.exists()


def test_predict_missing_or_empty_input(model, tmp_path, capsys):
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "nope", "-o", tmp_path / "p.csv")
    _one_line_error(rc, err, f"{tmp_path / 'nope'}: file or folder not found")
    (tmp_path / "empty").mkdir()
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "empty", "-o", tmp_path / "p.csv")
    _one_line_error(rc, err, f"{tmp_path / 'empty'}: no .pt feature files or audio files in this folder")
    assert not (tmp_path / "p.csv").exists()


def test_debug_flag_shows_the_traceback(model, tmp_path, capsys):
    bad = tmp_path / "x.pt"
    bad.write_text("junk")
    rc, _, err = _cli(capsys, "--debug", "predict", model["ckpt"], bad, "-o", tmp_path / "p.csv")
    assert rc == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith(f"spkid: error: {bad}: ")


def test_unsafe_pickle_one_clean_line_in_a_real_process(tmp_path, model):
    """In a real process nothing else reaches stderr (torch's pickle-protocol warning is not shown)."""
    marker = tmp_path / "PWNED"
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps(Evil(marker)))
    ckpt_evil = tmp_path / "evil.ckpt"
    ckpt_evil.write_bytes(pickle.dumps({"spkid": 1, "x": Evil(marker)}, protocol=2))
    r = _spkid("predict", model["ckpt"], bad, "-o", tmp_path / "p.csv", "--device", "cpu")
    assert r.returncode == 1 and r.stderr == f"spkid: error: {bad}: cannot load tensor: refused: file holds " \
                                             f"objects other than tensors (unsafe pickle)\n", r.stderr
    assert not marker.exists() and not (tmp_path / "p.csv").exists()
    r = _spkid("embed", ckpt_evil, bad, "-o", tmp_path / "e.npz")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert f"{ckpt_evil}: cannot read checkpoint: refused" in r.stderr and "unsafe pickle" in r.stderr
    assert not marker.exists() and not (tmp_path / "e.npz").exists()


# ------------------------------------------------------------------ train on a bad HW4 directory

TRAIN_DATA_CASES = [
    ("missing_dir", None, "directory not found"),
    ("metadata_missing", "metadata.json", "file not found"),
    ("mapping_malformed", "mapping.json", "malformed JSON"),
    ("speaker_not_in_mapping", "mapping.json", "speaker 'ghost' from metadata.json is missing"),
    ("speakers_wrong_type", "metadata.json", "speakers must be dict, found list"),
    ("wrong_n_mels", "metadata.json", "n_mels is 80, the model expects 40"),
    ("corrupt_pt", "uttr-500000.pt", "cannot load tensor"),
]


@pytest.mark.parametrize("case, file, expect", TRAIN_DATA_CASES, ids=[c[0] for c in TRAIN_DATA_CASES])
def test_train_bad_data_one_line_error_no_run_left(tmp_path, capsys, case, file, expect):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=2, n_test=1, seed=5)["root"]
    if case == "missing_dir":
        root = tmp_path / "nope"
    elif case == "metadata_missing":
        (root / "metadata.json").unlink()
    elif case == "mapping_malformed":
        (root / "mapping.json").write_text('{"speaker2id": ')
    elif case == "speaker_not_in_mapping":
        _edit_json(root / "metadata.json", lambda d: d["speakers"].update(ghost=d["speakers"].pop("spk01")))
    elif case == "speakers_wrong_type":
        _edit_json(root / "metadata.json", lambda d: d.update(speakers=[]))
    elif case == "wrong_n_mels":
        _edit_json(root / "metadata.json", lambda d: d.update(n_mels=80))
    elif case == "corrupt_pt":
        (root / file).write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "run"
    rc, _, err = _cli(capsys, "train", root, "--out", out, "--config", "tiny", "--steps", "2", "--quiet")
    _one_line_error(rc, err, f"spkid: error: {root / file if file else root}: ", expect)
    assert not (out / "last.ckpt").exists()


# ------------------------------------------------------------------ checkpoints: corrupt, unsafe, other configuration

def _bad_checkpoint(model: dict, path: Path, case: str, marker: Path) -> None:
    good = torch.load(model["ckpt"], map_location="cpu", weights_only=True)
    if case == "pickle_code":
        path.write_bytes(pickle.dumps({"spkid": 1, "model": Evil(marker)}, protocol=2))
    elif case == "truncated":
        data = model["ckpt"].read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif case == "plain_tensor":
        torch.save(torch.zeros(3), path)
    elif case == "other_configuration":                    # weights of the tiny model, config says d_model 48
        good["config"]["model"]["d_model"] = 48
        torch.save(good, path)
    elif case == "invalid_config":
        good["config"]["model"]["encoder"] = "rnn"
        torch.save(good, path)
    elif case == "wrong_entry_type":
        good["speakers"] = 3
        torch.save(good, path)
    elif case == "newer_format":
        good["spkid"] = 99
        torch.save(good, path)
    else:
        raise AssertionError(case)


CHECKPOINT_CASES = [
    ("pickle_code", "cannot read checkpoint: refused: holds objects other than tensors and plain data"),
    ("truncated", "cannot read checkpoint: corrupt, truncated or not a torch.save file"),
    ("plain_tensor", "not a spkid checkpoint"),
    ("other_configuration", "weights do not fit this model configuration (shape of"),
    ("invalid_config", "model.encoder='rnn'; choose one of"),
    ("wrong_entry_type", "'speakers' entry must be list, found int"),
    ("newer_format", "written by a newer spkid (format 99 > 1)"),
]


@pytest.mark.parametrize("case, expect", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
@pytest.mark.parametrize("command", ["predict", "embed", "enroll"])
def test_bad_checkpoint_one_line_error_no_output(model, tmp_path, capsys, case, expect, command):
    ckpt, marker = tmp_path / "bad.ckpt", tmp_path / "PWNED"
    _bad_checkpoint(model, ckpt, case, marker)
    utt = next(model["root"].glob("uttr-t*.pt"))
    outs = {"predict": tmp_path / "p.csv", "embed": tmp_path / "e.npz", "enroll": tmp_path / "reg.db"}
    args = {"predict": ["predict", ckpt, utt, "-o", outs["predict"], "--quiet"],
            "embed": ["embed", ckpt, utt, "-o", outs["embed"]],
            "enroll": ["enroll", outs["enroll"], "alice", utt, "--checkpoint", ckpt]}[command]
    rc, _, err = _cli(capsys, *args)
    _one_line_error(rc, err, f"spkid: error: {ckpt}", expect)
    assert not outs[command].exists() and not marker.exists()
    _no_temp_files(tmp_path)


def test_ensemble_of_different_speaker_lists_refused(model, tmp_path, capsys):
    good = torch.load(model["ckpt"], map_location="cpu", weights_only=True)
    good["speakers"] = ["x", "y", "z"]
    other = tmp_path / "other.ckpt"
    torch.save(good, other)
    rc, _, err = _cli(capsys, "predict", model["ckpt"], other, model["root"], "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, f"{other}: speaker list differs")
    assert not (tmp_path / "p.csv").exists()


def test_resume_from_inference_only_checkpoint_refused(model, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ck = torch.load(model["ckpt"], map_location="cpu", weights_only=True)
    del ck["optimizer"]
    torch.save(ck, run / "last.ckpt")
    rc, _, err = _cli(capsys, "train", model["root"], "--out", run, "--resume", "--quiet")
    _one_line_error(rc, err, f"{run / 'last.ckpt'}: cannot resume: no 'optimizer' entry")


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
    names = _odd_but_valid_audio(tmp_path / "audio")
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "p.csv", "--quiet")
    assert rc == 0, err
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["Id", "Category"] and sorted(r[0] for r in rows[1:]) == names
    assert all(r[1] in model["speakers"] for r in rows[1:])
    rc, _, err = _cli(capsys, "embed", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "e.npz")
    assert rc == 0, err
    z = np.load(tmp_path / "e.npz")
    assert sorted(z["ids"].tolist()) == names
    assert np.isfinite(z["embeddings"]).all() and np.allclose(np.linalg.norm(z["embeddings"], axis=1), 1, atol=1e-5)
    rc, out, err = _cli(capsys, "enroll", tmp_path / "reg.db", "odd", tmp_path / "audio", "--checkpoint",
                        model["ckpt"])
    assert rc == 0 and f"enrolled odd: {len(names)} utterance(s)" in out, err


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


def test_predict_folder_with_one_broken_file_fails_whole(model, tmp_path, capsys):
    """A Kaggle CSV needs every row: predict names the bad file instead of silently dropping it."""
    _odd_but_valid_audio(tmp_path / "audio")
    (tmp_path / "audio" / "zz_bad.wav").write_text("nope")
    rc, _, err = _cli(capsys, "predict", model["ckpt"], tmp_path / "audio", "-o", tmp_path / "p.csv", "--quiet")
    _one_line_error(rc, err, f"{tmp_path / 'audio' / 'zz_bad.wav'}: not readable as audio")
    assert not (tmp_path / "p.csv").exists()


def test_prepare_skips_bad_audio_processes_the_rest_and_warns(tmp_path, capsys):
    spk = tmp_path / "in" / "spk00"
    names = _odd_but_valid_audio(spk)
    for tiny in ("tiny_10ms.wav", "one_sample.wav"):           # below prepare's --min-seconds 0.1
        names.remove(tiny)
    for case in ("text_as_wav", "no_samples"):
        _broken_audio(tmp_path / "in" / "spk01", case).rename(tmp_path / "in" / "spk01" / f"{case}.wav")
    sf.write(tmp_path / "in" / "spk01" / "ok.wav", _voice(16000), 16000)
    out = tmp_path / "out"
    rc, stdout, err = _cli(capsys, "prepare", tmp_path / "in", out, "--workers", "1", "--quiet")
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


# ------------------------------------------------------------------ very short utterances

def test_one_two_three_frame_utterances_predict(model, tmp_path, capsys):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=1, n_test=3, seed=9, lengths=(1, 3))["root"]
    for i, n in enumerate((1, 2, 3)):                         # exactly 1, 2 and 3 frames
        u = json.loads((root / "testdata.json").read_text())["utterances"][i]
        torch.save(torch.randn(n, 40).half() - 5, root / u["feature_path"])
        _edit_json(root / "testdata.json", lambda d: d["utterances"][i].update(mel_len=n))
    rc, _, err = _cli(capsys, "predict", model["ckpt"], root, "-o", tmp_path / "p.csv", "--quiet")
    assert rc == 0, err
    assert len(list(csv.reader(open(tmp_path / "p.csv")))) == 4


@pytest.mark.parametrize("preset", ["tiny", "default", "conformer", "hw4-sample", "demo", "hw4-gpu"])
def test_every_preset_and_attention_embeds_one_to_three_frames(preset):
    """Shorter than every convolution kernel and attention window: finite embeddings, no shape errors."""
    attentions = ("full", "linformer", "local", "sparse", "adaptive")
    for attention in attentions if load_config(preset).model.encoder != "tdnn" else ("full",):
        net = build_model(apply_overrides(load_config(preset), [f"model.attention={attention}"]), 5).eval()
        with torch.no_grad():
            for t in (1, 2, 3):
                emb = net(torch.randn(2, t, 40) - 5, torch.tensor([t, 1]))
                assert emb.shape == (2, net.embed_dim) and torch.isfinite(emb).all(), (preset, attention, t)


def test_training_on_one_to_three_frame_utterances(tmp_path):
    root = make_hw4(tmp_path / "hw4", n_speakers=2, per_speaker=3, n_test=1, lengths=(1, 3))["root"]
    r = train(root, tmp_path / "run", apply_overrides(load_config("tiny"), ["train.steps=2", "train.device=cpu"]),
              progress=False)
    assert r.steps == 2 and r.finished
    assert all(torch.isfinite(v).all() for v in load_checkpoint(r.last)["model"].values())


# ------------------------------------------------------------------ outputs that cannot be written

def test_unwritable_output_is_one_line_error(model, tmp_path, capsys):
    utt = next(model["root"].glob("uttr-t*.pt"))
    target = tmp_path / "is_a_dir"
    target.mkdir()
    rc, _, err = _cli(capsys, "predict", model["ckpt"], utt, "-o", target, "--quiet")
    _one_line_error(rc, err, f"{target}: cannot write")
    rc, _, err = _cli(capsys, "embed", model["ckpt"], utt, "-o", tmp_path / "e.txt")
    _one_line_error(rc, err, "e.txt: output must end in .npz or .pt")
    _no_temp_files(tmp_path)


# ------------------------------------------------------------------ crash safety: SIGKILL mid-step, mid-write; SIGINT

# Started as `python -c KILLER <spkid args>`: kills itself with SIGKILL after the Nth backward pass, or halfway
# through writing the Nth last.ckpt (half the bytes on disk, fsynced, then death): no hook in the library.
KILLER = r"""
import io, os, signal, sys
import torch
mode, n, count = os.environ["SPKID_KILL_MODE"], int(os.environ["SPKID_KILL_AT"]), [0]
if mode == "backward":
    real_backward = torch.Tensor.backward
    def backward(self, *a, **k):
        real_backward(self, *a, **k)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.Tensor.backward = backward
else:
    real_save = torch.save
    def save(obj, f, *a, **k):
        if isinstance(f, (str, os.PathLike)) and ".last.ckpt." in os.fspath(f):
            count[0] += 1
            if count[0] == n:
                buf = io.BytesIO()
                real_save(obj, buf, *a, **k)
                with open(f, "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
from spkid.cli import main
sys.exit(main(sys.argv[1:]))
"""

STEPS, CKPT_EVERY = 12, 4


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run of the same command, trained in this process (same thread count)."""
    base = tmp_path_factory.mktemp("crash")
    root = make_hw4(base / "hw4", n_speakers=3, per_speaker=4, n_test=1)["root"]
    cfg = apply_overrides(load_config("tiny"), [f"train.ckpt_every={CKPT_EVERY}", f"train.steps={STEPS}",
                                                "train.max_minutes=0", "train.device=cpu"])
    r = train(root, base / "reference", cfg, progress=False)
    return {"root": root, "ckpt": load_checkpoint(r.last)}


KILL_CASES = [
    ("backward", 7, 4),        # killed after step 7's backward, before its optimizer step: last.ckpt is step 4
    ("write", 2, 4),           # killed halfway through writing step 8's last.ckpt: the step-4 one is intact
]


@pytest.mark.parametrize("mode, kill_at, resumes_from", KILL_CASES, ids=[c[0] for c in KILL_CASES])
def test_sigkill_then_resume_gives_identical_weights(reference, tmp_path, mode, kill_at, resumes_from):
    run = tmp_path / "run"
    args = ["train", str(reference["root"]), "--out", str(run), "--config", "tiny", "--steps", str(STEPS),
            "--set", f"train.ckpt_every={CKPT_EVERY}", "--device", "cpu", "--quiet"]
    env = {**_env(), "SPKID_KILL_MODE": mode, "SPKID_KILL_AT": str(kill_at)}
    r = subprocess.run([sys.executable, "-c", KILLER, *args], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert load_checkpoint(run / "last.ckpt")["step"] == resumes_from          # the last complete checkpoint loads
    leftovers = [p for p in run.iterdir() if p.name.endswith(".tmp")]
    if mode == "write":
        assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.ckpt.")   # the half-written file...
        with pytest.raises(CheckpointError, match="cannot read checkpoint"):
            load_checkpoint(leftovers[0])                                       # ...is not a checkpoint
    assert sorted(p.name for p in run.glob("*.ckpt")) == ["last.ckpt"]          # and never looks like one
    r = _spkid("train", reference["root"], "--out", run, "--resume", "--device", "cpu", "--quiet")
    assert r.returncode == 0 and f"done: {STEPS} steps" in r.stdout, r.stderr
    resumed, ref = load_checkpoint(run / "last.ckpt"), reference["ckpt"]
    assert resumed["step"] == ref["step"] == STEPS
    assert resumed["model"].keys() == ref["model"].keys()
    assert all(torch.equal(resumed["model"][k], ref["model"][k]) for k in ref["model"])
    opt_a, opt_b = resumed["optimizer"]["state"], ref["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_b)
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]            # resume removed the stale temp


def test_sigint_saves_checkpoint_exits_130_and_resume_finishes(tmp_path):
    root = make_hw4(tmp_path / "hw4", n_speakers=3, per_speaker=3, n_test=1)["root"]
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "spkid", "train", str(root), "--out", str(run), "--config",
                             "tiny", "--steps", "100000", "--set", "train.ckpt_every=1000000", "--device", "cpu",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=_env())
    try:
        deadline = time.monotonic() + 90
        while not (run / "metrics.jsonl").exists():              # first written at step 25: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted, checkpoint saved (--resume to continue)" in out and "Traceback" not in err
    step = load_checkpoint(run / "last.ckpt")["step"]               # the only save: ckpt_every is never reached
    assert 25 <= step < 100000
    _no_temp_files(run)
    r = _spkid("train", root, "--out", run, "--resume", "--steps", step + 3, "--device", "cpu", "--quiet")
    assert r.returncode == 0 and f"done: {step + 3} steps" in r.stdout, r.stderr
    assert load_checkpoint(run / "last.ckpt")["step"] == step + 3


# ------------------------------------------------------------------ resource limits: a 10-minute utterance

MEASURE = r"""
import resource, sys
from spkid.cli import main
rc = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(rc)
"""


def test_ten_minute_utterance_predicts_in_bounded_memory(model, tmp_path):
    long = tmp_path / "ten_minutes.pt"
    torch.save(torch.randn(60_000, 40).half() - 5, long)          # 60,000 frames = 10 min at a 10 ms hop
    r = subprocess.run([sys.executable, "-c", MEASURE, "predict", str(model["ckpt"]), str(long), "-o",
                        str(tmp_path / "p.csv"), "--device", "cpu", "--quiet"], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=_env())
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[1][0] == "ten_minutes.pt" and rows[1][1] in model["speakers"]
    peak_mb = int(r.stdout.split("MAXRSS_KB")[1].split()[0]) / 1024
    assert peak_mb < 2500, f"peak resident memory {peak_mb:.0f} MB"


# ------------------------------------------------------------------ property-based: random CSV text

_CSV_CHARS = st.sampled_from(list('ab1,\t\n\r" \x00\ufeffé;'))
_csv_text = st.text(_CSV_CHARS, max_size=60)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_csv_text, st.builds(lambda s: "Id,Category\n" + s, _csv_text), st.binary(max_size=60)))
def test_random_answers_csv_reads_or_names_file(tmp_path_factory, body):
    p = tmp_path_factory.mktemp("answers") / "answers.csv"
    (p.write_bytes if isinstance(body, bytes) else p.write_text)(body)
    try:
        got = read_answers_csv(p)
    except DataError as e:
        assert str(e).startswith(f"{p}: ") and "\n" not in str(e)
    else:
        assert all(k and v and k == k.strip() and v == v.strip() for k, v in got.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.sampled_from(["", "path,speaker\n", "audio\tspeaker\n", "path\n"]), body=_csv_text,
       suffix=st.sampled_from([".csv", ".tsv"]))
def test_random_prepare_list_gives_data_error_naming_the_list(tmp_path_factory, header, body, suffix):
    """No listed file exists, so every list ends in a DataError that names the list (never another exception)."""
    d = tmp_path_factory.mktemp("lists")
    lst = d / f"zz{suffix}"
    lst.write_text(header + body)
    with pytest.raises(DataError) as e:
        prepare(lst, d / "out", workers=1, progress=False)
    assert str(e.value).startswith(f"{lst}: ") and "\n" not in str(e.value)

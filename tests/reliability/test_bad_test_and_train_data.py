"""Bad HW4 test/training data: one-line errors, nothing written."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

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

"""Corrupt, unsafe or mismatched checkpoints."""
from __future__ import annotations

from rel_helpers import *  # noqa: F401,F403  (imports, _cli, _spkid, _one_line_error, ...)
from rel_helpers import _cli, _edit_json, _env, _no_temp_files, _one_line_error, _spkid, _voice  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

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
    ("newer_format", "written by a newer spkid (format 99 > 2)"),
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
    (run / ".spkid-run").touch()                       # a run folder spkid made, holding a stripped checkpoint
    ck = torch.load(model["ckpt"], map_location="cpu", weights_only=True)
    del ck["optimizer"]
    torch.save(ck, run / "last.ckpt")
    rc, _, err = _cli(capsys, "train", model["root"], "--out", run, "--resume", "--quiet")
    _one_line_error(rc, err, f"{run / 'last.ckpt'}: cannot resume: no 'optimizer' entry")

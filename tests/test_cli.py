"""End to end through the command line: train -> predict -> evaluate, presets, one-line errors."""
import csv
import subprocess
import sys

import pytest

from spkid.cli import main

from conftest import SHARED_HW4, needs_shared


def _run(*args):
    return subprocess.run([sys.executable, "-m", "spkid", *args], capture_output=True, text=True, timeout=300)


def test_train_predict_evaluate_end_to_end(hw4, tmp_path, capsys):
    run, root = tmp_path / "run", hw4["root"]
    assert main(["train", str(root), "--out", str(run), "--config", "tiny", "--steps", "60", "--quiet",
                 "--set", "train.lr=3e-3", "--seed", "1"]) == 0
    assert "done: 60 steps" in capsys.readouterr().out
    pred = tmp_path / "pred.csv"
    assert main(["predict", str(run / "best.ckpt"), str(root), "-o", str(pred), "--quiet"]) == 0
    rows = list(csv.reader(pred.open()))
    assert rows[0] == ["Id", "Category"] and len(rows) == 1 + len(hw4["answers"])
    assert {r[0] for r in rows[1:]} == set(hw4["answers"])
    assert all(r[1] in hw4["speakers"] for r in rows[1:])
    assert main(["evaluate", str(root / "answers.csv"), str(pred)]) == 0
    acc = float(capsys.readouterr().out.split()[-1])
    assert acc >= 0.75
    # an ensemble of two checkpoints predicts too
    assert main(["predict", str(run / "best.ckpt"), str(run / "last.ckpt"), str(root), "-o", str(pred), "--quiet"]) == 0


def test_predict_folder_of_pt_files_without_testdata_json(trained, tmp_path):
    import shutil
    root = trained["seen"]["root"]
    ref, got = tmp_path / "ref.csv", tmp_path / "got.csv"
    assert main(["predict", str(trained["ckpt"]), str(root), "-o", str(ref), "--quiet"]) == 0
    loose = tmp_path / "loose" / "sub"
    loose.mkdir(parents=True)
    for row in list(csv.reader(ref.open()))[1:]:
        shutil.copy(root / row[0], loose / row[0])
    assert main(["predict", str(trained["ckpt"]), str(loose.parent), "-o", str(got), "--quiet"]) == 0
    want = {f"sub/{r[0]}": r[1] for r in list(csv.reader(ref.open()))[1:]}
    assert {r[0]: r[1] for r in list(csv.reader(got.open()))[1:]} == want


def test_hw4_sample_preset_through_same_commands(hw4, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(hw4["root"]), "--out", str(run), "--config", "hw4-sample", "--steps", "5",
                 "--quiet"]) == 0
    assert main(["predict", str(run / "last.ckpt"), str(hw4["root"]), "-o", str(tmp_path / "p.csv"), "--quiet"]) == 0


def test_refuses_to_overwrite_a_run_and_resume_needs_checkpoint(hw4, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(hw4["root"]), "--out", str(run), "--config", "tiny", "--steps", "3", "--quiet"]) == 0
    r = _run("train", str(hw4["root"]), "--out", str(run), "--config", "tiny", "--steps", "3", "--quiet")
    assert r.returncode == 1 and "already holds a run" in r.stderr and "Traceback" not in r.stderr
    r = _run("train", str(hw4["root"]), "--out", str(tmp_path / "new"), "--resume")
    assert r.returncode == 1 and "last.ckpt: checkpoint not found" in r.stderr


@pytest.mark.parametrize("args, expect", [
    (["train", "DATA", "--out", "OUT", "--set", "model.n_head=4"], "unknown key 'model.n_head' (did you mean 'n_heads'?)"),
    (["train", "DATA", "--out", "OUT", "--set", "train.lr=fast"], "train.lr: expected float, got 'fast'"),
    (["train", "DATA", "--out", "OUT", "--config", "nosuch"], "unknown config 'nosuch'"),
    (["train", "DATA", "--out", "OUT", "--attention", "magic"], "model.attention"),
    (["train", "DATA", "--out", "OUT", "--attention", "local"], "model.attention='local' would be ignored"),
    (["train", "DATA", "--out", "OUT", "--set", "model.dropout=0.1"], "model.dropout=0.1 would be ignored: model.encoder='tdnn' does not use it"),
    (["predict", "CKPT", "DATA", "-o", "OUT/p.csv"], "checkpoint not found"),
])
def test_one_line_errors(hw4, tmp_path, args, expect):
    subst = {"DATA": str(hw4["root"]), "OUT": str(tmp_path / "o"), "CKPT": str(tmp_path / "none.ckpt")}
    r = _run(*[subst.get(a, a.replace("OUT", str(tmp_path / "o"))) for a in args])
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spkid: error:") and expect in lines[0], r.stderr


def test_predict_with_checkpoint_of_wrong_kind(tmp_path):
    bad = tmp_path / "x.ckpt"
    bad.write_text("not a checkpoint")
    r = _run("predict", str(bad), str(tmp_path), "-o", str(tmp_path / "p.csv"))
    assert r.returncode == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "p.csv").exists()


@needs_shared
def test_evaluate_shared_answers_against_themselves(capsys):
    assert main(["evaluate", str(SHARED_HW4 / "answers.csv"), str(SHARED_HW4 / "answers.csv")]) == 0
    assert capsys.readouterr().out.strip() == "accuracy 1.0000"


def test_progress_in_a_log_is_a_line_now_and_then_not_a_redraw_per_step(hw4, tmp_path):
    """stderr to a file or pipe: no carriage-return redraws; a few lines for a whole run (issue 23)."""
    r = _run("train", str(hw4["root"]), "--out", str(tmp_path / "run"), "--config", "tiny", "--steps", "300")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    bars = [ln for ln in r.stderr.splitlines() if ln.startswith("train:")]
    assert 1 <= len(bars) <= 4, r.stderr                     # the first draw, perhaps one every 30 s, the last
    assert "300/300" in bars[-1]

"""Training: schedule, exact resume, time budget, run directory contents, refusing to clobber a run."""
import json

import pytest
import torch

from spkid.training.checkpoint import load_checkpoint
from spkid.config import apply_overrides, load_config
from spkid.errors import CheckpointError
from spkid.training.loop import lr_factor, train


def _cfg(*sets):
    return apply_overrides(load_config("tiny"), ["model.dropout=0.1", "data.spec_time_masks=1",
                                                 "data.spec_freq_masks=1", "train.ckpt_every=4", *sets])


def test_lr_schedule_warmup_then_cosine_to_zero():
    assert lr_factor(0, 10, 0.0) == 0.0
    assert lr_factor(5, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(10, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(50, 10, 0.5) == pytest.approx(0.5)
    assert lr_factor(99, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(3, 0, 0.0) == 1.0


def test_resume_gives_identical_weights(hw4, tmp_path):
    cfg = _cfg("train.steps=12", "train.average_last=0.5", "train.average_every=2")   # averaging resumes too
    train(hw4["root"], tmp_path / "full", cfg, progress=False)
    r = train(hw4["root"], tmp_path / "half", cfg, progress=False, stop_after=6)
    assert r.steps == 6 and not r.finished
    r2 = train(hw4["root"], tmp_path / "half", cfg, progress=False, resume=True)
    assert r2.steps == 12 and r2.finished
    a = load_checkpoint(tmp_path / "full" / "last.ckpt")["model"]
    b = load_checkpoint(tmp_path / "half" / "last.ckpt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the weights did move: not a trivially equal comparison
    c = load_checkpoint(tmp_path / "half" / "best.ckpt")
    assert c["step"] in (6, 12)


def test_resume_refuses_other_model_config(hw4, tmp_path):
    train(hw4["root"], tmp_path / "r", _cfg("train.steps=4"), progress=False)
    with pytest.raises(CheckpointError, match="other model/data settings"):
        train(hw4["root"], tmp_path / "r", _cfg("train.steps=8", "model.d_model=48"), progress=False, resume=True)


def test_time_budget_is_a_complete_schedule(hw4, tmp_path):
    cfg = _cfg("train.steps=100000", "train.max_minutes=0.05")
    r = train(hw4["root"], tmp_path / "t", cfg, progress=False)
    assert r.finished and 2.5 <= r.elapsed < 10 and 0 < r.steps < 100000
    rows = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    lrs = [row["lr"] for row in rows if "lr" in row]
    assert lrs and lrs[-1] < max(lrs)          # decayed within the budget
    assert "val_acc" in rows[-1]


def test_run_directory_contents_and_learning(hw4, tmp_path):
    cfg = _cfg("train.steps=60", "train.lr=3e-3")
    r = train(hw4["root"], tmp_path / "run", cfg, progress=False)
    out = tmp_path / "run"
    assert json.loads((out / "config.json").read_text())["name"] == "tiny"
    ck = load_checkpoint(out / "best.ckpt")
    assert {"model", "optimizer", "step", "rng", "config", "speakers", "elapsed"} <= set(ck)
    assert ck["speakers"] == hw4["speakers"]
    assert r.best_val is not None and r.best_val >= 0.75          # 4 easy speakers, 1 held-out utterance each
    assert not list(out.glob("*.tmp"))


def test_weight_averaging_makes_final_model_the_mean_of_snapshots(hw4, tmp_path):
    from spkid.training.loop import WeightAverage
    net = torch.nn.Linear(2, 2)
    avg = WeightAverage()
    ws = []
    for k in range(3):
        with torch.no_grad():
            net.weight.fill_(float(k))
        ws.append(net.weight.clone())
        avg.update(net)
    avg.apply(net)
    assert torch.allclose(net.weight, torch.stack(ws).mean(0))
    r = train(hw4["root"], tmp_path / "avg", _cfg("train.steps=10", "train.average_last=0.5", "train.average_every=1"),
              progress=False)
    ck = load_checkpoint(r.last)
    assert ck["average"]["count"] == 5
    assert all(torch.allclose(ck["model"][k].float(), v) for k, v in ck["average"]["mean"].items())


@pytest.mark.parametrize("preset", ["default", "conformer", "hw4-gpu", "hw4-sample", "tiny", "demo"])
def test_every_preset_trains_and_predicts(hw4, tmp_path, preset):
    from spkid.config import PRESETS
    from spkid.scoring.model import load
    assert preset in PRESETS
    cfg = apply_overrides(load_config(preset), ["train.steps=2", "train.max_minutes=0", "data.batch_size=4",
                                                "train.amp=none", "train.val_every=0"])
    r = train(hw4["root"], tmp_path / preset, cfg, progress=False)
    assert r.steps == 2
    m = load(r.last, "cpu")
    assert m.cfg.name == preset and len(m.predict([torch.randn(50, 40)])) == 1

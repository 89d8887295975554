"""Training: schedule, exact resume, time budget, run directory contents, refusing to clobber a run."""
import json

import pytest
import torch

from spkid.training.checkpoint import load_checkpoint
from spkid.config import apply_overrides, load_config
from spkid.errors import CheckpointError
from spkid.training.loop import train
from spkid.training.schedules import Schedule


def _cfg(*sets):
    return apply_overrides(load_config("tiny"), ["model.dropout=0.1", "augment.spec_time_masks=1",
                                                 "augment.spec_freq_masks=1", "train.ckpt_every=4", *sets])


def test_schedules_share_one_progress():
    s = Schedule(steps=100, budget_s=60.0, lr=1.0, warmup_steps=10, margin=0.2, margin_warmup=0.5,
                 average_last=0.2, average_every=5)
    assert s.progress(50, 0.0) == 0.5 and s.progress(10, 45.0) == 0.75 and s.progress(200, 0.0) == 1.0
    assert s.done(100, 0.0) and s.done(3, 60.0) and not s.done(99, 59.0)
    assert s.lr_at(0, 0.0) == 0.0 and s.lr_at(5, 0.0) == pytest.approx(0.5) and s.lr_at(10, 0.0) == 1.0
    assert s.lr_at(50, 0.5) == pytest.approx(0.5) and s.lr_at(99, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert s.margin_at(0.25) == pytest.approx(0.1) and s.margin_at(0.9) == pytest.approx(0.2)
    assert s.average_now(85, 0.85) and not s.average_now(86, 0.85) and not s.average_now(70, 0.7)
    assert Schedule(steps=10, budget_s=0, lr=1.0, warmup_steps=0, margin=0, margin_warmup=0, average_last=0,
                    average_every=1).lr_at(3, 0.0) == 1.0


def test_resume_gives_identical_weights(hw4, tmp_path):
    cfg = _cfg("train.steps=12", "train.average_last=0.5", "train.average_every=2",   # averaging resumes too
               "train.threads=1")      # fixed: the thread governor follows other programs, and another thread count
                                       # sums in another order (a resumed run would then differ in the last bits)
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
    with pytest.raises(CheckpointError, match="other model settings"):
        train(hw4["root"], tmp_path / "r", _cfg("train.steps=8", "model.d_model=48"), progress=False, resume=True)


def test_checkpoints_outlive_a_changed_default(hw4, tmp_path):
    """A features run stores the augment settings it never read at the defaults of its day; when a later spkid
    changes such a default, the checkpoint still loads (the unread settings take today's defaults), resumes and
    predicts, while a setting the run did read is kept as stored."""
    from spkid.scoring.model import load
    from spkid.training.checkpoint import checkpoint_config
    train(hw4["root"], tmp_path / "r", _cfg("train.steps=4"), progress=False)
    path = tmp_path / "r" / "last.ckpt"
    ck = torch.load(path, weights_only=True)
    ck["config"]["augment"]["p_band"] = 0.37                 # the default of an older spkid, unused by features
    ck["config"]["augment"]["spec_time_masks"] = 1           # read by features runs: must survive
    torch.save(ck, path)
    cfg = checkpoint_config(load_checkpoint(path), path)
    assert cfg.augment.p_band == load_config("tiny").augment.p_band and cfg.augment.spec_time_masks == 1
    assert len(load(path, "cpu").predict([torch.randn(30, 40)])) == 1
    with pytest.raises(Exception, match="p_band=0.37 would be ignored"):   # a user's own config is still refused
        from spkid.config import RunConfig
        RunConfig.from_dict(ck["config"])


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
    r = train(hw4["root"], tmp_path / "avg", _cfg("train.steps=10", "train.average_last=0.5", "train.average_every=1"),
              progress=False)
    ck = load_checkpoint(r.last)
    assert int(ck["average"]["n_averaged"]) == 5
    assert all(torch.allclose(ck["model"][k].float(), ck["average"]["module." + k].float()) for k in ck["model"])


@pytest.mark.parametrize("preset", ["default", "conformer", "hw4-gpu", "hw4-sample", "tiny", "demo"])
def test_every_preset_trains_and_predicts(hw4, tmp_path, preset):
    from spkid.config import presets
    from spkid.scoring.model import load
    assert preset in presets()
    cfg = apply_overrides(load_config(preset), ["train.steps=2", "train.max_minutes=0", "data.batch_size=4",
                                                "train.amp=none", "train.val_every=0"])
    r = train(hw4["root"], tmp_path / preset, cfg, progress=False)
    assert r.steps == 2
    m = load(r.last, "cpu")
    assert m.cfg.name == preset and len(m.predict([torch.randn(50, 40)])) == 1

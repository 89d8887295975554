"""Data-parallel training under torchrun (2 CPU processes, gloo), exact DDP resume, mixed precision, compile."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spkid.training.checkpoint import load_checkpoint
from spkid.config import apply_overrides, load_config
from spkid.data.sampler import CropSampler
from spkid.training.distributed import launch_command, launch_env, without_nproc
from spkid.errors import ConfigError
from spkid.training.loop import train

SHARED = Path(__file__).resolve().parents[3] / "shared"
ROOT = Path(__file__).resolve().parents[2]
# dropout and SpecAugment on, so each rank's own RNG stream matters for an exact resume
SETS = ["model.dropout=0.1", "augment.spec_time_masks=1", "augment.spec_freq_masks=1", "train.ckpt_every=4",
        "train.lr=3e-3"]

# Runs spkid's CLI under torchrun with spies: each checkpoint write, a digest of each training batch and of the
# final weights, all tagged with the rank.
HARNESS = """
import hashlib, json, os, sys
import spkid.training.loop as T
RANK, LOG, NET = int(os.environ["RANK"]), os.environ["SPY_LOG"], []
def spy(**row):
    with open(LOG, "a") as f:
        f.write(json.dumps({"rank": RANK, **row}) + "\\n")
def digest(tensors):
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()
import spkid.data.sampler as S
_save, _batch, _build, _teardown = T.save_checkpoint, S.CropSampler.batch, T.build_model, T.dist.teardown
def save(path, state):
    spy(kind="save", name=os.path.basename(path), step=state["step"])
    _save(path, state)
def batch(self, step):
    out = _batch(self, step)
    spy(kind="batch", step=step, digest=digest(out))
    return out
def build(*a, **k):
    NET.append(_build(*a, **k))
    return NET[-1]
def teardown():
    spy(kind="final", digest=digest(NET[-1].state_dict().values()))
    _teardown()
    import gc, torch.nn.parallel as P
    spy(kind="left", ddp=sum(isinstance(o, P.DistributedDataParallel) for o in gc.get_objects()))
T.save_checkpoint, S.CropSampler.batch, T.build_model, T.dist.teardown = save, batch, build, teardown
from spkid.cli import main
sys.exit(main())
"""


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], env: dict, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run to completion; on timeout (a hung collective) kill the whole process group: torchrun and its ranks."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM, not SIGKILL: torchrun then stops its ranks, which run in sessions of their own
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=60)
        pytest.fail(f"timed out after {timeout} s (hung ranks?): {' '.join(cmd[:8])} ...")
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _train_args(root: Path, out: Path, steps: int, *extra: str) -> list[str]:
    sets = [a for s in SETS for a in ("--set", s)]
    return ["train", str(root), "--out", str(out), "--config", "tiny", "--steps", str(steps), "--quiet", *sets,
            *extra]


def test_ranks_draw_different_crops_and_batches_are_reproducible():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(int(t), 5, generator=g) for t in torch.randint(20, 120, (30,), generator=g)]
    labels = list(range(30))
    s0, s1 = (CropSampler(feats, labels, batch_size=8, crop_frames=50, crop_min_frames=20, rank=r) for r in (0, 1))
    again = CropSampler(feats, labels, batch_size=8, crop_frames=50, crop_min_frames=20, rank=0)
    for k in range(3):
        a, b, c = s0.batch(k), s1.batch(k), again.batch(k)
        assert all(torch.equal(u, v) for u, v in zip(a, c))           # batch k depends on (seed, rank, k) only
        assert not (a[0].shape == b[0].shape and torch.equal(a[0], b[0]))


@pytest.mark.parametrize("argv, expect", [
    (["train", "d", "--nproc", "2", "--out", "o"], ["train", "d", "--out", "o"]),
    (["--debug", "train", "d", "--nproc=4", "--quiet"], ["--debug", "train", "d", "--quiet"]),
    (["train", "d", "--np", "2", "--set", "train.lr=1e-3"], ["train", "d", "--set", "train.lr=1e-3"]),
])
def test_launch_command_drops_nproc_and_splits_cores(argv, expect):
    cmd = launch_command(argv, 2)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["spkid", *expect] and without_nproc(argv) == expect
    assert launch_env(2, {})["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    assert launch_env(2, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"      # the user's choice wins
    assert launch_env(2, {})["GOMP_SPINCOUNT"] == "20000"                          # workers spin briefly
    assert "GOMP_SPINCOUNT" not in launch_env(2, {"OMP_WAIT_POLICY": "PASSIVE"})    # unless a policy is chosen


def test_nproc_checks_settings_before_launching(hw4, tmp_path):
    r = subprocess.run([sys.executable, "-m", "spkid", "train", str(hw4["root"]), "--out", str(tmp_path / "o"),
                        "--nproc", "2", "--set", "model.n_head=4"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("spkid: error:") == 1 and "unknown key 'model.n_head'" in r.stderr
    assert "torch.distributed" not in r.stderr and not (tmp_path / "o").exists()


def test_ddp_two_ranks_resume_equals_uninterrupted(hw4, tmp_path):
    root, steps = hw4["root"], 8
    harness, log = tmp_path / "harness.py", tmp_path / "spy.jsonl"
    harness.write_text(HARNESS)
    # uninterrupted, through torchrun itself, with the spies
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(harness),
          *_train_args(root, tmp_path / "full", steps)], _env(SPY_LOG=str(log)))
    # interrupted after step 4 then resumed, through `spkid train --nproc 2` (which re-launches via torchrun)
    r1 = _run([sys.executable, "-m", "spkid", *_train_args(root, tmp_path / "half", steps, "--nproc", "2",
                                                           "--stop-after", "4")], _env())
    assert r1.stdout.startswith("stopped early") and ": 4 steps" in r1.stdout
    r2 = _run([sys.executable, "-m", "spkid", *_train_args(root, tmp_path / "half", steps, "--nproc", "2",
                                                           "--resume")], _env())
    assert f"done: {steps} steps" in r2.stdout and r2.stdout.count("checkpoints:") == 1

    spy = [json.loads(x) for x in log.read_text().splitlines()]
    saves = [(r["rank"], r["name"], r["step"]) for r in spy if r["kind"] == "save"]
    assert {r for r, _, _ in saves} == {0}                              # only rank 0 writes checkpoints
    assert [s for s in saves if s[1] == "last.ckpt"] == [(0, "last.ckpt", 4), (0, "last.ckpt", 8), (0, "last.ckpt", 8)]
    batches = {(r["rank"], r["step"]): r["digest"] for r in spy if r["kind"] == "batch"}
    assert len(batches) == 2 * steps
    assert all(batches[0, k] != batches[1, k] for k in range(steps))   # the ranks trained on different crops
    final = [r["digest"] for r in spy if r["kind"] == "final"]
    assert len(final) == 2 and final[0] == final[1]                    # ... yet hold the same weights (all-reduce)
    # the DDP wrapper (whose reducer holds the gloo group) is gone before the group is: else SIGABRT at exit now and then
    assert [r["ddp"] for r in spy if r["kind"] == "left"] == [0, 0]
    val_rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in val_rows] == [steps]                 # rank 0 logs, once

    full, half = load_checkpoint(tmp_path / "full" / "last.ckpt"), load_checkpoint(tmp_path / "half" / "last.ckpt")
    assert full["step"] == half["step"] == steps and len(full["rng_ranks"]) == 2
    assert not torch.equal(full["rng_ranks"][0]["torch"], full["rng_ranks"][1]["torch"])  # own dropout streams
    assert all(torch.equal(full["model"][k], half["model"][k]) for k in full["model"])


def test_ddp_tdnn_with_batchnorm_resumes_exactly(hw4, tmp_path):
    """The default encoder has BatchNorm buffers (rank 0's are broadcast each step): a 2-rank run stopped and
    resumed ends with the same weights and running statistics as an uninterrupted one."""
    root, steps = hw4["root"], 8
    sets = ["model.d_model=32", "model.agg_dim=48", "data.batch_size=16", "data.crop_frames=100",
            "data.crop_min_frames=0", "train.amp=none", "train.ckpt_every=4", "data.val_per_speaker=1"]

    def args(out, *extra):
        return ["train", str(root), "--out", str(out), "--config", "default", "--steps", str(steps), "--quiet",
                *[a for s in sets for a in ("--set", s)], "--nproc", "2", *extra]
    _run([sys.executable, "-m", "spkid", *args(tmp_path / "full")], _env())
    _run([sys.executable, "-m", "spkid", *args(tmp_path / "half", "--stop-after", "4")], _env())
    _run([sys.executable, "-m", "spkid", *args(tmp_path / "half", "--resume")], _env())
    full, half = load_checkpoint(tmp_path / "full" / "last.ckpt"), load_checkpoint(tmp_path / "half" / "last.ckpt")
    assert full["config"]["model"]["encoder"] == "tdnn" and full["step"] == half["step"] == steps
    stats = [k for k in full["model"] if k.endswith("running_mean")]
    assert stats and all(full["model"][k].abs().sum() > 0 for k in stats)
    assert all(torch.equal(full["model"][k], half["model"][k]) for k in full["model"])


def test_ddp_time_budget_validations_stay_in_lockstep(hw4, tmp_path):
    """Time-based validation decides from rank 0's clock on every rank; a mismatch would hang the barrier."""
    r = _run([sys.executable, "-m", "spkid", *_train_args(hw4["root"], tmp_path / "t", 100000, "--nproc", "2"),
              "--max-minutes", "0.06", "--set", "train.val_minutes=0.005"], _env(), timeout=90)
    assert "done:" in r.stdout
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_acc" in row for row in rows) >= 2


def _short_run(hw4, tmp_path, name, *sets):
    cfg = apply_overrides(load_config("tiny"), ["train.steps=2", "train.device=cpu", *sets])
    train(hw4["root"], tmp_path / name, cfg, progress=False)
    return load_checkpoint(tmp_path / name / "last.ckpt")["model"]


def test_bf16_autocast_on_cpu_trains_and_changes_the_arithmetic(hw4, tmp_path):
    fp32 = _short_run(hw4, tmp_path, "fp32")
    bf16 = _short_run(hw4, tmp_path, "bf16", "train.amp=bf16")
    assert all(torch.isfinite(v).all() for v in bf16.values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 for v in bf16.values())           # master weights stay float32
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_where_the_hardware_has_it(hw4, tmp_path, monkeypatch, native):
    from spkid import runtime
    from spkid.runtime import resolve_amp
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpu = torch.device("cpu")
    assert runtime.native_bf16(cpu) is native
    assert resolve_amp("auto", cpu) == ("bf16" if native else "none")
    assert resolve_amp("none", cpu) == "none" and resolve_amp("bf16", cpu) == "bf16"
    cfg = apply_overrides(load_config("tiny"), ["train.steps=2", "train.device=cpu", "train.amp=auto"])
    r = train(hw4["root"], tmp_path / "auto", cfg, progress=False)
    assert r.amp == ("bf16" if native else "none")
    ref = _short_run(hw4, tmp_path, "ref", "train.amp=" + ("bf16" if native else "none"))
    got = load_checkpoint(tmp_path / "auto" / "last.ckpt")["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)                  # auto ran exactly that precision


def test_fp16_on_cpu_is_a_config_error(hw4, tmp_path):
    cfg = apply_overrides(load_config("tiny"), ["train.amp=fp16", "train.device=cpu"])
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device"):
        train(hw4["root"], tmp_path / "r", cfg, progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fp16_with_grad_scaler_on_cuda(hw4, tmp_path):
    cfg = apply_overrides(load_config("tiny"), ["train.amp=fp16", "train.device=cuda", "train.steps=3"])
    r = train(hw4["root"], tmp_path / "r", cfg, progress=False)
    w = load_checkpoint(r.last)["model"]
    assert r.steps == 3 and all(torch.isfinite(v).all() for v in w.values() if v.is_floating_point())


@pytest.mark.skipif(not os.environ.get("SPKID_SLOW_TESTS"),
                    reason="torch.compile on CPU: ~100 s building inductor C++ kernels on a cold cache; "
                           "set SPKID_SLOW_TESTS=1")
def test_compile_trains_like_eager(hw4, tmp_path):
    sets = ["train.steps=3", "train.warmup_steps=0", "train.lr=1e-2"]
    eager = _short_run(hw4, tmp_path, "eager", *sets)
    compiled = _short_run(hw4, tmp_path, "compiled", *sets, "train.compile=true")
    init = _short_run(hw4, tmp_path, "init", *sets, "train.lr=0.0")
    moved = max(float((eager[k] - init[k]).abs().max()) for k in eager if eager[k].is_floating_point())
    diff = max(float((eager[k] - compiled[k]).abs().max()) for k in eager if eager[k].is_floating_point())
    assert moved > 1e-2 and diff < 1e-4, (moved, diff)

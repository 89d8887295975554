"""Sharing the CPU: automatic threads from the free cores, OpenMP threads that sleep instead of spinning, and a
demo whose checkpoint depends on its steps alone, not on the machine's speed or load (issue 18)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_hw4
from spkid import runtime
from spkid.config import apply_overrides
from spkid.demo import demo_config
from spkid.errors import SpkidError
from spkid.training.loop import train

ROOT = Path(__file__).resolve().parents[2]


def _fake_cpu(monkeypatch, busy: list[float], load: float) -> None:
    """Two allowed CPUs; over the sample CPU k is ``busy[k]`` busy; 1-minute load average ``load``."""
    calls = iter([{0: (0, 0), 1: (0, 0)}, {k: (int(100 * (1 - b)), 100) for k, b in enumerate(busy)}])
    monkeypatch.setattr(runtime, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(runtime, "_cpu_times", lambda cpus: next(calls))
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime.time, "sleep", lambda s: None)
    monkeypatch.setattr(runtime.time, "process_time", lambda: 0.0)          # this process idle over the sample


@pytest.mark.parametrize("busy, load, free", [([0.0, 0.0], 0.1, 2),     # idle: both cores
                                              ([1.0, 0.0], 0.2, 1),     # a neighbour has just started
                                              ([0.4, 0.0], 0.2, 1),     # a part-time neighbour takes a core too
                                              ([0.0, 0.1], 1.8, 2),     # the load average remembers a run that ended
                                              ([1.0, 1.0], 4.0, 1)])    # all busy: still one thread
def test_free_cores_counts_what_is_busy_now_not_the_load_average(monkeypatch, busy, load, free):
    _fake_cpu(monkeypatch, busy, load)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert runtime.resolve_threads(0) == free


def test_back_to_back_runs_get_the_cores_the_previous_run_left():
    """A CPU-bound run of two threads ends; the next decision, a moment later, sees two free cores although the
    1-minute load average still counts the finished run."""
    burn = ("import torch, time; torch.set_num_threads(2); a = torch.randn(400, 400); t = time.time()\n"
            "while time.time() - t < 4: a @ a")
    subprocess.run([sys.executable, "-c", burn], check=True)
    code = "from spkid.runtime import free_cores; import os; print(free_cores(0.5), os.getloadavg()[0])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    free, load = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), text=True,
                                capture_output=True, check=True).stdout.split()
    others = runtime.busy_cores(0.5)                              # what other programs (tests in parallel...) use
    if others < 0.5:                                             # the machine is otherwise quiet: both cores
        assert int(free) == len(runtime.allowed_cpus()), (free, load)


def test_a_long_run_revisits_its_threads(monkeypatch):
    """ThreadGovernor: every interval, the threads follow what other programs leave free; fixed threads stay."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    readings = iter([1.0, 0.0, 0.0])
    gov = runtime.ThreadGovernor(0, every_s=0.0)
    monkeypatch.setattr(gov.meter, "read", lambda: next(readings))
    monkeypatch.setattr(gov.meter, "cpus", [0, 1])
    before = torch.get_num_threads()
    try:
        assert gov.step(1.0) == (None if before == 1 else 1)         # a neighbour took one core
        assert gov.step(2.0) == 2 and torch.get_num_threads() == 2   # it ended: both cores
        assert gov.step(3.0) is None                                 # nothing changed
        assert gov.changes[-1] == (2.0, 2)
        assert not runtime.ThreadGovernor(3).active
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert not runtime.ThreadGovernor(0).active
    finally:
        torch.set_num_threads(before)


def test_explicit_threads_and_omp_num_threads_win(monkeypatch):
    _fake_cpu(monkeypatch, [1.0, 1.0], 4.0)
    assert runtime.resolve_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")                  # a launcher (spkid train --nproc) or the user chose
    assert runtime.resolve_threads(0) == 2
    with pytest.raises(SpkidError, match="threads must be >= 0"):
        runtime.resolve_threads(-1)


def test_auto_threads_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from spkid.runtime import free_cores, use_threads; import torch; "
            "print(free_cores(0.05), use_threads(0), torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["1", "1", "1"]


IMPORT_ORDER = """
import builtins, os
real = builtins.__import__
def hook(name, *a, **k):
    if name == "torch" and not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} & set(os.environ):
        raise SystemExit("torch imported before the OpenMP spin was set")
    return real(name, *a, **k)
builtins.__import__ = hook
import spkid.cli
print(os.environ.get("OMP_WAIT_POLICY", "-"), os.environ.get("GOMP_SPINCOUNT", "-"))
"""


@pytest.mark.parametrize("given, expect", [({}, ["-", "20000"]), ({"OMP_WAIT_POLICY": "PASSIVE"}, ["PASSIVE", "-"]),
                                           ({"GOMP_SPINCOUNT": "0"}, ["-", "0"])])
def test_openmp_threads_spin_briefly_unless_the_user_chose(given, expect):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", IMPORT_ORDER], env=dict(env, PYTHONPATH=str(ROOT), **given),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    assert r.stdout.split() == expect


def test_demo_config_depends_on_steps_only():
    cfg = demo_config(steps=300, seed=4)
    t = cfg.train
    assert (t.steps, t.seed, t.max_minutes, t.val_minutes, t.threads) == (300, 4, 0.0, 0.0, 1)
    assert t.val_every > 0                                      # validations (best checkpoint) by step count


class _SlowClock:
    """``time.perf_counter`` of a machine 1,000x slower: 5 s pass between two readings."""

    def __init__(self):
        self.t = time.perf_counter()

    def __call__(self) -> float:
        self.t += 5.0
        return self.t


def _run(data, out, cfg, monkeypatch, slow: bool) -> dict:
    with monkeypatch.context() as m:
        if slow:
            m.setattr(time, "perf_counter", _SlowClock())
        torch.set_num_threads(2 if slow else 1)                 # the default a busy machine's user might have
        r = train(data, out, cfg, progress=False)
    torch.set_num_threads(1)
    return {"steps": r.steps, "best": torch.load(r.best, weights_only=True)["model"],
            "last": torch.load(r.last, weights_only=True)["model"]}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_demo_runs_of_one_seed_give_identical_checkpoints_on_any_load(tmp_path, monkeypatch):
    data = make_hw4(tmp_path / "data", n_speakers=4, per_speaker=6, seed=5)["root"]
    cfg = apply_overrides(demo_config(steps=24, seed=2), ["train.val_every=8", "train.warmup_steps=4"])
    calm = _run(data, tmp_path / "a", cfg, monkeypatch, slow=False)
    busy = _run(data, tmp_path / "b", cfg, monkeypatch, slow=True)
    assert calm["steps"] == busy["steps"] == 24
    assert _same(calm["best"], busy["best"]) and _same(calm["last"], busy["last"])
    # the demo as it was (3-minute budget, validation every 2 minutes too, torch's thread default) is not:
    old = apply_overrides(cfg, ["train.max_minutes=3", "train.val_minutes=2", "train.threads=0"])
    old_calm = _run(data, tmp_path / "c", old, monkeypatch, slow=False)
    old_busy = _run(data, tmp_path / "d", old, monkeypatch, slow=True)
    assert old_busy["steps"] < old_calm["steps"] or not _same(old_calm["last"], old_busy["last"])

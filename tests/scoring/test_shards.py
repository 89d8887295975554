"""embed/predict --nproc N: length-balanced shards in N processes, equal to one process, resumable after a crash
(a shard raising on a bad file; the whole run killed mid-way) without redoing finished shards."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import spkid
from spkid.cli import main
from spkid.errors import SpkidError
from spkid.scoring.shards import balance, item_lengths, run_sharded, shard_dir_for

ROOT = Path(__file__).resolve().parents[2]


def test_balance_covers_every_input_once_with_near_equal_totals():
    lengths = [900, 100, 120, 400, 380, 50, 60, 700, 30, 310]
    shards = balance(lengths, 3)
    assert sorted(i for s in shards for i in s) == list(range(len(lengths)))
    assert all(s == sorted(s) for s in shards)
    totals = [sum(lengths[i] for i in s) for s in shards]
    assert max(totals) - min(totals) <= max(lengths) // 2
    assert balance([5, 5], 4) == [[0], [1]]                   # never an empty shard


@pytest.fixture
def corpus(trained, tmp_path):
    """A folder of 16 feature files (the session's generated speakers) and a private checkpoint copy."""
    src = trained["seen"]["root"]
    folder = tmp_path / "feats"
    folder.mkdir()
    for p in sorted(src.glob("uttr-*.pt"))[:16]:
        shutil.copy(p, folder / p.name)
    ckpt = tmp_path / "best.ckpt"
    shutil.copy(trained["ckpt"], ckpt)
    return folder, ckpt


def _single(ckpt, folder, out):
    assert main(["embed", str(ckpt), str(folder), "-o", str(out), "--threads", "1"]) == 0
    return np.load(out)


def test_a_failed_shard_is_redone_alone_and_the_result_equals_one_process(corpus, tmp_path):
    folder, ckpt = corpus
    model = spkid.load(ckpt, "cpu")
    files = sorted(folder.glob("*.pt"))
    good = files[3].read_bytes()
    files[3].write_bytes(b"truncated")                        # one shard's input is broken: that worker raises
    out = tmp_path / "emb.npz"
    lengths = item_lengths(files, 40)
    with pytest.raises(SpkidError, match=f"{files[3].name}.*shard-.*finished shards are kept"):
        run_sharded("embed", [model], files, lengths, out, nproc=2, threads=2)
    left = sorted(shard_dir_for(out).glob("shard-*.pt"))
    assert len(left) == 1                                     # the other shard finished and was written
    kept = left[0].read_bytes()
    files[3].write_bytes(good)                                # fixed (new mtime: that shard's key changes)
    r = run_sharded("embed", [model], files, lengths, out, nproc=2, threads=2)
    assert len(r.reused) == 1 and len(r.computed) == 1 and r.reused != r.computed
    assert left[0].read_bytes() == kept                       # reused, not rewritten
    ref = model.embed(files)
    assert r.values.shape == ref.shape and (r.values - ref).abs().max() < 1e-5


def test_cli_embed_and_predict_nproc_equal_one_process_and_clean_up(corpus, trained, tmp_path):
    folder, ckpt = corpus
    one = _single(ckpt, folder, tmp_path / "one.npz")
    out = tmp_path / "two.npz"
    assert main(["embed", str(ckpt), str(folder), "-o", str(out), "--nproc", "2", "--threads", "2"]) == 0
    two = np.load(out)
    assert list(two["ids"]) == list(one["ids"]) and str(two["model_id"]) == str(one["model_id"])
    assert np.abs(two["embeddings"] - one["embeddings"]).max() < 1e-5
    assert not shard_dir_for(out).exists()
    root = trained["seen"]["root"]                            # an HW4 directory: balanced by mel_len
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert main(["predict", str(ckpt), str(root), "-o", str(a), "--quiet", "--threads", "1"]) == 0
    assert main(["predict", str(ckpt), str(ckpt), str(root), "-o", str(b), "--quiet", "--nproc", "3",
                 "--runtime", "onnx"]) == 0                   # an ensemble of two copies, ONNX Runtime, 3 shards
    assert list(csv.reader(a.open())) == list(csv.reader(b.open()))


def test_killed_run_leaves_no_output_and_the_rerun_reuses_finished_shards(corpus, tmp_path):
    folder, ckpt = corpus
    for k in range(48):                                       # more, longer inputs: the run lasts a few seconds
        torch.save(torch.randn(600, 40) - 5, folder / f"long-{k:02d}.pt")
    out = tmp_path / "emb.npz"
    cmd = [sys.executable, "-m", "spkid", "embed", str(ckpt), str(folder), "-o", str(out), "--nproc", "2",
           "--threads", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(shard_dir_for(out).glob("shard-*.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                       # the launcher and both workers, mid-way
    proc.wait()
    finished = sorted(p.name for p in shard_dir_for(out).glob("shard-*.pt"))
    assert finished and not out.exists()                       # no partial output under the final name
    model = spkid.load(ckpt, "cpu")
    files = sorted(folder.glob("*.pt"))
    r = run_sharded("embed", [model], files, item_lengths(files, 40), out, nproc=2, threads=2)
    assert sorted(f"shard-{k:03d}-of-002.pt" for k in r.reused) == finished
    ref = model.embed(files)
    assert (r.values - ref).abs().max() < 1e-5

"""benchmarks/rehearsal.py writes a valid HW4-layout set with realistic lengths (same files for any number of
workers; reused when complete), and benchmarks/scale.py runs end to end on the small set and prints its table."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from spkid.data.features import load_test_features, load_train_features
from spkid.data.hw4 import read_answers_csv

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))          # by name: its process pool pickles functions by module
import rehearsal  # noqa: E402


def test_lengths_follow_the_hw4_distribution():
    x = rehearsal.lengths(20_000, seed=0)
    assert min(x) >= 100 and max(x) <= 2000
    assert 380 <= statistics.median(x) <= 420
    assert sum(v > 1000 for v in x) > 50                          # a real tail of long utterances


def test_small_set_is_a_valid_hw4_directory_written_the_same_by_any_pool(tmp_path):
    small = rehearsal.SMALL
    r = rehearsal.make_rehearsal(tmp_path / "a", small, workers=2)
    assert not r.reused and r.files == small.train + small.test
    train = load_train_features(r.root, 40, progress=False)
    test = load_test_features(r.root, 40, progress=False)
    assert len(train.utts) == small.train and len(train.speakers) == small.speakers
    assert len(test.utts) == small.test
    assert sum(f.shape[0] for f in train.feats) + sum(f.shape[0] for f in test.feats) == r.frames
    raw = torch.load(r.root / train.utts[0].feature_path, weights_only=True)
    assert raw.dtype == torch.float32 and raw.shape == (train.utts[0].mel_len, 40)
    answers = read_answers_csv(r.root / "answers.csv")
    assert set(answers) == {u.feature_path for u in test.utts} and set(answers.values()) <= set(train.speakers)
    assert rehearsal.make_rehearsal(tmp_path / "a", small).reused
    other = rehearsal.make_rehearsal(tmp_path / "b", small, workers=1)
    for name in sorted(p.name for p in (tmp_path / "a").glob("uttr-*.pt"))[:10]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (r.root / "metadata.json").read_text() == (other.root / "metadata.json").read_text()
    seeded = rehearsal.make_rehearsal(tmp_path / "a", replace(small, seed=1))      # other parameters: rewritten
    assert not seeded.reused and json.loads((r.root / "rehearsal.json").read_text())["seed"] == 1


def test_scale_benchmark_prints_every_row_on_the_small_set(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--small", "--data",
                          str(tmp_path / "small"), "--alone-only", "--budget", "1", "--train-steps", "3"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout
    for row in ("load every file into memory", "memory-mapped cache", "cache rebuild", "cache reuse",
                "crop loader alone", "training step, default preset", "predict 32: eager batched",
                "predict 32: eager one by one", "predict 32: ONNX Runtime batched", "threads used"):
        assert f"| {row}" in table, row
    assert "| 96 training files, " in table

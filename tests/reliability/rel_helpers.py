"""Shared helpers of the reliability tests: run the CLI in-process or as a subprocess, check one-line errors."""
from __future__ import annotations

import csv
import io
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
from spkid.data.hw4 import read_answers_csv
from spkid.models.speaker_net import build_model
from spkid.training.loop import train

from conftest import make_hw4

REPO = Path(__file__).resolve().parents[2]
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
    """Speech-like audio (a synthetic talker: glottal source, formants, phones), which speech detection keeps."""
    from spkid.audio.synth import make_voice, synth_utterance
    rng = np.random.default_rng(seed)
    x = synth_utterance(make_voice(rng), rng, sr, max(seconds, 0.6))[: max(1, int(sr * seconds))].astype(np.float64)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """A tiny checkpoint (3 training steps: the tests need a valid model, not a good one)."""
    base = tmp_path_factory.mktemp("reliability")
    d = make_hw4(base / "hw4", n_speakers=3, per_speaker=4, n_test=3)
    cfg = apply_overrides(load_config("tiny"), ["train.steps=3", "train.device=cpu"])
    r = train(d["root"], base / "run", cfg, progress=False)
    return {"ckpt": r.last, "root": d["root"], "speakers": d["speakers"], "base": base}


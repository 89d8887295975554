"""Shared pieces of the ``spkid serve`` tests: synthetic voices as WAV bytes, an in-process client with two tokens,
and a real ``spkid serve`` subprocess on a free loopback port."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkid.audio.synth import make_voice, synth_utterance
from spkid.serve.auth import TokenStore, hash_token

REPO = Path(__file__).resolve().parents[2]
ADMIN, READ = "test-admin-token", "test-read-token"


def wav_bytes(wav: np.ndarray, sr: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wav, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def voice_clips(speaker: int, n: int, seconds: float = 2.5, seed: int = 7) -> list[bytes]:
    """``n`` WAV clips (16 kHz) of synthetic speaker ``speaker``: the same voice, different utterances."""
    voice = make_voice(np.random.default_rng([seed, 0, speaker]))
    return [wav_bytes(synth_utterance(voice, np.random.default_rng([seed, 1, speaker, j]), 16000, seconds))
            for j in range(n)]


def tokens() -> TokenStore:
    return TokenStore(entries=[(hash_token(ADMIN), "admin", "tests"), (hash_token(READ), "read", "tests")])


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def files(*clips: bytes, field: str = "audio") -> list:
    return [(field, (f"clip{i}.wav", c, "audio/wav")) for i, c in enumerate(clips)]


_CHECKPOINT: list[Path] = []


@pytest.fixture(scope="session")
def voice_checkpoint(tmp_path_factory) -> Path:
    """A tiny model trained for 100 steps on the log-mels of 6 synthetic voices (about 10 s on 2 cores): it tells
    apart the voices of ``voice_clips``, which it never heard. Trained once per test process."""
    if not _CHECKPOINT:
        from spkid.audio.synth import synth_corpus
        from spkid.config import apply_overrides, load_config
        from spkid.data.prepare import prepare
        from spkid.training.loop import train
        base = tmp_path_factory.mktemp("serve_model")
        corpus = synth_corpus(base / "voices", n_speakers=6, n_train=6, n_test=0, seed=11, seconds=(1.5, 2.5))
        prepare(corpus.train_dir, base / "feats", workers=1, progress=False)
        cfg = apply_overrides(load_config("tiny"), ["train.steps=100", "train.lr=3e-3", "model.pooling=asp"])
        _CHECKPOINT.append(train(base / "feats", base / "run", cfg, progress=False).best)
    return _CHECKPOINT[0]


@pytest.fixture(scope="module")
def model(voice_checkpoint):
    import spkid
    return spkid.load(voice_checkpoint, "cpu")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


class ServerProcess:
    """``spkid serve --port 0 ...`` in a subprocess; ``url`` once it listens. ``stop()`` sends SIGTERM."""

    def __init__(self, *args, cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "spkid", "serve", "--port", "0", *map(str, args)],
                                     cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+/)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = m.group(1).rstrip("/")
        self.lines = [line]
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        import httpx
        end = time.time() + timeout
        while time.time() < end:
            try:
                if httpx.get(self.url + "/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()[-2000:]}")
        raise RuntimeError("server not ready in time")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()

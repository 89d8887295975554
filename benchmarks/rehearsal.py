"""A full-size HW4-layout rehearsal set, written fast: random features at the course's size and shape.

    .venv/bin/python benchmarks/rehearsal.py /tmp/hw4-rehearsal            # 600 speakers, 56,666 + 8,000 files
    .venv/bin/python benchmarks/rehearsal.py /tmp/hw4-small --small        # 8 speakers, 96 + 32 files (tests)

Layout as HW4 (``spkid.data.hw4``): ``metadata.json``, ``mapping.json``, ``testdata.json``, ``answers.csv``
(``Id,Category``) and one float32 ``uttr-<32 hex>.pt`` tensor ``(T, 40)`` per utterance. Lengths follow the
real HW4 ``mel_len`` distribution roughly: log-normal, median 400 frames, clipped to 100-2,000. Each speaker has
its own spectral envelope plus Gaussian noise around -5 (log-mel-like values, learnable, not speech). Every file
is a function of ``(seed, its index)`` alone, so the set is the same for any number of worker processes.

A finished set carries ``rehearsal.json`` (its parameters); running again with the same parameters reuses it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spkid.data.hw4 import write_test_index, write_train_index  # noqa: E402
from spkid.fileio import atomic_write, write_csv  # noqa: E402

MEDIAN_FRAMES, SIGMA, MIN_FRAMES, MAX_FRAMES = 400, 0.45, 100, 2000


@dataclass(frozen=True)
class Spec:
    """What to write: ``speakers`` classes, ``train`` and ``test`` utterances of ``n_mels`` bands."""
    speakers: int = 600
    train: int = 56_666
    test: int = 8_000
    n_mels: int = 40
    seed: int = 0


FULL = Spec()
SMALL = Spec(speakers=8, train=96, test=32)


@dataclass
class Result:
    root: Path
    files: int
    frames: int
    bytes: int
    seconds: float            # write time (0 when an existing set was reused)
    reused: bool


def lengths(n: int, seed: int) -> list[int]:
    """``n`` utterance lengths in frames: log-normal (median 400), clipped to [100, 2000]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(math.log(MEDIAN_FRAMES) + SIGMA * torch.randn(n, generator=g, dtype=torch.float64))
    return x.round().clamp(MIN_FRAMES, MAX_FRAMES).long().tolist()


def _name(seed: int, kind: str, i: int) -> str:
    return "uttr-" + hashlib.md5(f"{seed}/{kind}/{i}".encode()).hexdigest() + ".pt"


def _plan(spec: Spec) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """``(train, test)`` lists of ``(file name, frames, speaker index)``; speakers get near-equal shares."""
    n = spec.train + spec.test
    lens = lengths(n, spec.seed)
    train = [(_name(spec.seed, "train", i), lens[i], i % spec.speakers) for i in range(spec.train)]
    g = torch.Generator().manual_seed(spec.seed + 1)
    test_spk = torch.randint(spec.speakers, (spec.test,), generator=g).tolist()
    test = [(_name(spec.seed, "test", i), lens[spec.train + i], test_spk[i]) for i in range(spec.test)]
    return train, test


def _envelopes(spec: Spec) -> torch.Tensor:
    g = torch.Generator().manual_seed(spec.seed + 2)
    return torch.randn(spec.speakers, spec.n_mels, generator=g) * 2        # (speakers, F)


def _write_chunk(args) -> int:
    """Worker: write ``[(name, frames, speaker, file seed)]`` into ``root``; returns bytes written."""
    root, spec, items = args
    torch.set_num_threads(1)
    env = _envelopes(spec)
    total = 0
    for name, frames, spk, file_seed in items:
        g = torch.Generator().manual_seed(file_seed)
        x = env[spk] - 5.0 + torch.randn(frames, spec.n_mels, generator=g)     # (T, F) float32
        path = Path(root) / name
        torch.save(x, path)
        total += path.stat().st_size
    return total


def make_rehearsal(root: str | Path, spec: Spec = FULL, *, workers: int = 0) -> Result:
    """Write the rehearsal set ``spec`` into ``root`` with ``workers`` processes (0: one per core)."""
    root = Path(root)
    marker = root / "rehearsal.json"
    train, test = _plan(spec)
    frames = sum(f for _, f, _ in train) + sum(f for _, f, _ in test)
    if marker.is_file() and json.loads(marker.read_text()) == asdict(spec):
        size = sum(p.stat().st_size for p in root.glob("uttr-*.pt"))
        return Result(root, len(train) + len(test), frames, size, 0.0, True)
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    items = [(name, f, spk, spec.seed * 10_000_019 + k) for k, (name, f, spk) in enumerate(train + test)]
    workers = workers or len(os.sched_getaffinity(0))
    chunk = max(1, math.ceil(len(items) / (workers * 8)))
    jobs = [(str(root), spec, items[i: i + chunk]) for i in range(0, len(items), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        size = sum(pool.map(_write_chunk, jobs))
    names = [f"spk{i:04d}" for i in range(spec.speakers)]
    by_spk: dict[str, list[tuple[str, int]]] = {s: [] for s in names}
    for name, f, spk in train:
        by_spk[names[spk]].append((name, f))
    write_train_index(root, spec.n_mels, by_spk)
    write_test_index(root, spec.n_mels, [(name, f) for name, f, _ in test])
    write_csv(root / "answers.csv", ["Id", "Category"], [(name, names[spk]) for name, _, spk in test])
    atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(asdict(spec))))
    return Result(root, len(items), frames, size, time.perf_counter() - t0, False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="directory to write (reused when it already holds this set)")
    ap.add_argument("--small", action="store_true", help=f"a small set for tests: {SMALL}")
    ap.add_argument("--workers", type=int, default=0, help="processes (0: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    spec = SMALL if a.small else FULL
    spec = Spec(**{**asdict(spec), "seed": a.seed})
    r = make_rehearsal(a.out, spec, workers=a.workers)
    how = "reused" if r.reused else f"written in {r.seconds:.1f} s ({r.files / max(r.seconds, 1e-9):.0f} files/s)"
    print(f"{r.root}: {spec.speakers} speakers, {spec.train} training + {spec.test} test files, "
          f"{r.frames:,} frames, {r.bytes / 2 ** 30:.2f} GiB; {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

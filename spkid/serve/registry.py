"""The server's registry: one writer thread, one reader thread, an in-memory gallery for scoring.

- Writes (enroll, rename, delete) run one at a time on the writer thread, each one SQLite transaction
  (``SpeakerDB``): an enroll's clips and the re-estimated threshold land together or not at all, even when the
  process is killed (the registry is in WAL mode, ``synchronous=FULL``: a committed write survives a kill; the
  server answers only after the commit). Other processes (``--workers``, a CLI ``spkid enroll``) are kept out
  by SQLite's lock.
- Reads score against a ``Snapshot`` (names, gallery, threshold) rebuilt on the reader thread when
  ``PRAGMA data_version`` says another connection committed, so identify never waits for an enroll's commit and
  never reads the registry file per request.
"""
from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spkid.errors import DataError
from spkid.scoring.speaker_db import UNKNOWN, SpeakerDB


@dataclass
class Snapshot:
    """The registry as scored: ``names`` (K,), ``counts`` (K,) clips each, ``gallery`` (None when empty),
    ``backend`` (adaptation + AS-norm), the ``threshold`` state and the calibration on its scores (or None)."""

    version: int
    names: list[str]
    counts: list[int]
    gallery: object | None
    backend: object
    threshold: object                 # speaker_db.ThresholdState
    calibration: object | None        # backend.StoredCalibration

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """``(M, E)`` L2-normalised embeddings -> ``(M, K)`` scores through the registry's back end."""
        return self.gallery.scores(self.backend.adapt(emb.astype(np.float64)))

    def ranked(self, emb: np.ndarray, top_k: int) -> list[list[tuple[str, float]]]:
        """For each embedding the ``min(top_k, K)`` best ``(speaker, score)``, best first (ties: earlier name)."""
        s = self.scores(emb)
        order = np.argsort(-s, axis=1, kind="stable")[:, :top_k]
        return [[(self.names[k], float(row[k])) for k in idx] for row, idx in zip(s, order)]

    def decide(self, score: float, name: str) -> str:
        return name if score >= self.threshold.threshold else UNKNOWN


def use_wal(path: Path) -> None:
    """Put the registry in WAL mode (stored in the file): readers never block the writer nor the writer them."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=5.0)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.Error as e:
        raise DataError(f"{path}: cannot switch the registry to WAL mode ({e})") from None
    finally:
        conn.close()
    if mode.lower() != "wal":
        raise DataError(f"{path}: the registry stays in {mode} journal mode (a read-only folder?); the server "
                        "needs WAL")


class RegistryService:
    """Async access to one registry file from the event loop (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        use_wal(self.path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="spkid-registry-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="spkid-registry-read")
        self._watch: sqlite3.Connection | None = None   # reader thread only: PRAGMA data_version
        self._snap: Snapshot | None = None

    async def _on(self, pool, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # reads -------------------------------------------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        return await self._on(self._reader, self._current)

    def _current(self) -> Snapshot:
        if self._watch is None:
            self._watch = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        version = int(self._watch.execute("PRAGMA data_version").fetchone()[0])
        if self._snap is None or self._snap.version != version:
            self._snap = self._build(version)
        return self._snap

    def _build(self, version: int) -> Snapshot:
        with SpeakerDB.open(self.path) as reg:
            clips = reg.clips()
            backend = reg.backend()
            state = reg.threshold_state()
            cal = reg.calibration if reg.threshold_scale == "registry" else None
        gallery = backend.gallery([c for _, _, c in clips]) if clips else None
        return Snapshot(version, [n for n, _, _ in clips], [len(s) for _, s, _ in clips], gallery, backend, state, cal)

    # writes ------------------------------------------------------------------------------------------------

    async def write(self, fn, *args):
        """Run ``fn(reg, *args)`` on the writer thread with a freshly opened ``SpeakerDB`` (its meta read now, so a
        write by another process is never overwritten with stale settings); one write at a time."""
        def call():
            with SpeakerDB.open(self.path) as reg:
                return fn(reg, *args)
        return await self._on(self._writer, call)

    def close(self) -> None:
        """Wait for queued writes, then close the reader's connection."""
        self._writer.shutdown(wait=True)

        def close_reader():
            if self._watch is not None:
                self._watch.close()
        self._reader.submit(close_reader).result()
        self._reader.shutdown(wait=True)

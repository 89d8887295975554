"""Speaker registry: enrolled speakers' utterance embeddings in one SQLite file.

Backs ``spkid enroll REGISTRY NAME FILES...`` and ``spkid identify REGISTRY FILES...``.

Tables:

- ``meta(key, value)``: ``format``, ``schema_version``, ``model_id`` (a fingerprint of the model
  weights that made every stored embedding), ``checkpoint``, ``embed_dim``, ``threshold``,
  ``threshold_source`` (how the threshold was chosen, e.g. ``eer`` or ``far=0.01``).
- ``utterances(speaker, source, embedding)``: one row per enrolled utterance, keyed by
  ``(speaker, source)``; ``embedding`` is ``E`` little-endian float32 values.

Embeddings of different models live in different spaces, so a registry holds one model only
and ``enroll`` refuses any other. Each write is one transaction: an error part-way through
leaves the registry as it was.

Shapes: ``embeddings`` are ``(N, E)`` (any scale, normalised here); centroids are ``(K, E)``.
"""
from __future__ import annotations

import math
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from spkid.errors import DataError
from spkid.fileio import current_umask

FORMAT = "spkid-registry"
SCHEMA_VERSION = 1
UNKNOWN = "unknown"                                 # decide()'s answer below the threshold; not enrollable
_BLOB_DTYPE = np.dtype("<f4")
LOCK_WAIT_S = 5.0                                   # how long a reader/writer waits for another writer

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE utterances (
    speaker TEXT NOT NULL,
    source TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (speaker, source)
);
"""


def _to_blob(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype=_BLOB_DTYPE).tobytes()


def _as_matrix(embeddings, what: str) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be (N, E), got shape {x.shape}")
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class SpeakerDB:
    """An open registry file. Use ``create``, ``open`` or ``open_or_create``; close with
    ``close()`` or a ``with`` block."""

    def __init__(self, path: Path, conn: sqlite3.Connection):
        self.path = path
        self._conn = conn
        self._meta = self._read_meta()

    # opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, model_id: str, checkpoint: str, embed_dim: int, threshold: float,
               threshold_source: str = "manual") -> "SpeakerDB":
        """Create a new, empty registry file; an existing file is an error."""
        path = Path(path)
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        _check_threshold(threshold)
        if path.exists():
            raise DataError(f"{path}: already exists; open it instead of creating it")
        if not path.parent.is_dir():
            raise DataError(f"{path}: cannot create registry: no directory {path.parent}")
        # Built complete in a temp file, then linked into place: a killed enroll leaves no half-made registry, and
        # link() fails instead of replacing a registry another process created meanwhile.
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise DataError(f"{path}: cannot create registry ({e.strerror or e})") from None
        os.close(fd)
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                with _transaction(conn, path):
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                        ("format", FORMAT), ("schema_version", str(SCHEMA_VERSION)),
                        ("model_id", model_id), ("checkpoint", str(checkpoint)),
                        ("embed_dim", str(int(embed_dim))), ("threshold", repr(float(threshold))),
                        ("threshold_source", threshold_source),
                    ])
            finally:
                conn.close()
            os.chmod(tmp, 0o666 & ~current_umask())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise DataError(f"{path}: was created by another process meanwhile; enroll again") from None
            except OSError as e:
                raise DataError(f"{path}: cannot create registry ({e.strerror or e})") from None
        except sqlite3.Error as e:
            raise DataError(f"{path}: cannot create registry ({e})") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return cls.open(path)

    @classmethod
    def open(cls, path) -> "SpeakerDB":
        """Open an existing registry; a missing file or anything but a spkid registry is a ``DataError``."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such registry file")
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file, not a registry (an interrupted first enroll?); delete it and enroll "
                            "again")
        try:
            # mode=rw: never create a file here (a read-only file still opens, for identify); wait up to 5 s for a
            # writer to finish before calling the registry locked
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   timeout=LOCK_WAIT_S)
        except sqlite3.Error as e:
            raise DataError(f"{path}: cannot open registry ({e})") from None
        try:
            return cls(path, conn)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open_or_create(cls, path, *, model_id: str, checkpoint: str, embed_dim: int, threshold: float,
                       threshold_source: str = "manual") -> "SpeakerDB":
        """Open ``path`` if it exists (its stored meta wins), else create it with these values."""
        if Path(path).exists():
            return cls.open(path)
        return cls.create(path, model_id=model_id, checkpoint=checkpoint, embed_dim=embed_dim,
                          threshold=threshold, threshold_source=threshold_source)

    def _read_meta(self) -> dict[str, str]:
        try:
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise DataError(f"{self.path}: locked by another process (an enroll in progress?); try again") from None
            if "no such table" in str(e):
                raise DataError(f"{self.path}: not a spkid registry (no meta table)") from None
            raise DataError(f"{self.path}: not a spkid registry ({e})") from None
        meta = dict(rows)
        if meta.get("format") != FORMAT:
            raise DataError(f"{self.path}: not a spkid registry (meta format is {meta.get('format')!r})")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise DataError(f"{self.path}: registry schema version {meta.get('schema_version')}, "
                                             f"this spkid reads version {SCHEMA_VERSION}")
        missing = [k for k in ("model_id", "checkpoint", "embed_dim", "threshold", "threshold_source")
                   if k not in meta]
        if missing:
            raise DataError(f"{self.path}: corrupt registry: meta lacks {', '.join(missing)}")
        try:
            threshold, dim = float(meta["threshold"]), int(meta["embed_dim"])
        except (TypeError, ValueError):
            threshold, dim = math.nan, 0
        if not math.isfinite(threshold) or dim < 1:
            raise DataError(f"{self.path}: corrupt registry: threshold {meta['threshold']!r} / embed_dim "
                            f"{meta['embed_dim']!r} must be a finite number / a positive integer")
        return meta

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "SpeakerDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # meta ------------------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self._meta["model_id"]

    @property
    def checkpoint(self) -> str:
        return self._meta["checkpoint"]

    @property
    def embed_dim(self) -> int:
        return int(self._meta["embed_dim"])

    @property
    def threshold(self) -> float:
        return float(self._meta["threshold"])

    @property
    def threshold_source(self) -> str:
        return self._meta["threshold_source"]

    def set_threshold(self, value: float, source: str) -> None:
        """Store a new decision threshold and how it was chosen (e.g. ``"eer"``, ``"far=0.01"``)."""
        _check_threshold(value)
        with _transaction(self._conn, self.path):
            self._conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                   [(repr(float(value)), "threshold"), (source, "threshold_source")])
        self._meta["threshold"], self._meta["threshold_source"] = repr(float(value)), source

    # speakers --------------------------------------------------------------------------------

    def enroll(self, name: str, embeddings, sources: list[str], *, model_id: str) -> int:
        """Add utterance embeddings ``(N, E)`` of speaker ``name``, one per ``sources`` entry.

        A source the speaker already has is replaced, others are added (re-enrolling updates).
        Returns the speaker's utterance count afterwards.
        """
        if model_id != self.model_id:
            raise DataError(f"{self.path}: registry holds embeddings of model {self.model_id}, "
                                             f"refusing embeddings of model {model_id} (use a registry per model)")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{self.path}: speaker name must be a non-empty string, got {name!r}")
        if name == UNKNOWN:
            raise DataError(f"{self.path}: speaker name {UNKNOWN!r} is reserved for rejected identifications")
        x = _as_matrix(embeddings, "embeddings")
        sources = [str(s) for s in sources]
        if x.shape[0] != len(sources):
            raise ValueError(f"{x.shape[0]} embeddings but {len(sources)} sources")
        if not sources:
            raise DataError(f"{self.path}: no utterances given to enroll for {name!r}")
        if x.shape[1] != self.embed_dim:
            raise DataError(f"{self.path}: registry holds {self.embed_dim}-dim embeddings, got {x.shape[1]}-dim")
        seen = set()
        for src, row in zip(sources, x):
            if src in seen:
                raise DataError(f"{self.path}: source {src!r} given twice for {name!r}")
            seen.add(src)
            norm = float(np.linalg.norm(row))
            if not math.isfinite(norm) or norm == 0.0:
                raise DataError(f"{self.path}: embedding of {src!r} is zero or not finite")
        with _transaction(self._conn, self.path):
            for src, row in zip(sources, x):
                self._conn.execute("INSERT OR REPLACE INTO utterances (speaker, source, embedding) VALUES (?, ?, ?)",
                                   (name, src, _to_blob(row)))
            (count,) = self._conn.execute("SELECT COUNT(*) FROM utterances WHERE speaker = ?", (name,)).fetchone()
        return int(count)

    def speakers(self) -> list[tuple[str, int]]:
        """``[(name, n_utterances)]`` sorted by name."""
        rows = self._conn.execute(
            "SELECT speaker, COUNT(*) FROM utterances GROUP BY speaker ORDER BY speaker").fetchall()
        return [(s, int(n)) for s, n in rows]

    def remove(self, name: str) -> int:
        """Delete a speaker and all their utterances; returns how many utterances went."""
        with _transaction(self._conn, self.path):
            n = self._conn.execute("DELETE FROM utterances WHERE speaker = ?", (name,)).rowcount
        if n == 0:
            raise DataError(f"{self.path}: no enrolled speaker {name!r}")
        return int(n)

    def centroids(self) -> tuple[list[str], np.ndarray]:
        """Speaker names (sorted) and ``(K, E)`` float32 centroids: the L2-normalised mean of each
        speaker's L2-normalised utterance embeddings."""
        rows = self._conn.execute("SELECT speaker, source, embedding FROM utterances ORDER BY speaker").fetchall()
        names: list[str] = []
        sums: list[np.ndarray] = []
        for speaker, source, blob in rows:
            v = np.frombuffer(blob, dtype=_BLOB_DTYPE).astype(np.float64)
            if v.size != self.embed_dim:
                raise DataError(f"{self.path}: corrupt embedding for {speaker!r}/{source!r}: "
                                                 f"{v.size} values, expected {self.embed_dim}")
            if not names or names[-1] != speaker:
                names.append(speaker)
                sums.append(np.zeros(self.embed_dim))
            sums[-1] += v / np.linalg.norm(v)
        if not names:
            return [], np.zeros((0, self.embed_dim), dtype=np.float32)
        return names, _normalise(np.stack(sums)).astype(np.float32)

    # scoring ---------------------------------------------------------------------------------

    def _scores(self, embeddings) -> tuple[list[str], np.ndarray]:
        x = _as_matrix(embeddings, "embeddings")
        if x.shape[1] != self.embed_dim:
            raise DataError(f"{self.path}: registry holds {self.embed_dim}-dim embeddings, got {x.shape[1]}-dim")
        names, cents = self.centroids()
        if not names:
            raise DataError(f"{self.path}: no speakers enrolled")
        return names, _normalise(x.astype(np.float64)) @ cents.astype(np.float64).T   # (M, E) x (E, K) -> (M, K)

    def identify(self, embeddings, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """For each of ``(M, E)`` embeddings, the ``min(top_k, K)`` best ``(speaker, cosine)``, best first."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        names, scores = self._scores(embeddings)
        k = min(top_k, len(names))
        out = []
        for row in scores:
            best = np.argsort(-row, kind="stable")[:k]   # stable: ties go to the earlier name
            out.append([(names[i], float(row[i])) for i in best])
        return out

    def decide(self, embeddings) -> list[tuple[str, float]]:
        """Best ``(speaker, cosine)`` per embedding, or ``("unknown", cosine)`` when below the threshold."""
        thr = self.threshold
        best = [ranked[0] for ranked in self.identify(embeddings, top_k=1)]
        return [(spk if score >= thr else UNKNOWN, score) for spk, score in best]


def _check_threshold(value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"threshold must be a finite cosine score, got {value}")


@contextmanager
def _transaction(conn: sqlite3.Connection, path: Path):
    """One explicit transaction (the connection is in autocommit mode): commit, or roll back on any
    error. SQLite's own failures (read-only file, locked by another writer) become a ``DataError``."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise DataError(f"{path}: locked by another process (an enroll in progress?); try again") from None
        raise DataError(f"{path}: cannot write registry ({e})") from None

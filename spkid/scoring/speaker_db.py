"""Speaker registry: enrolled speakers' utterance embeddings in one SQLite file.

Backs ``spkid enroll REGISTRY NAME FILES...`` and ``spkid identify REGISTRY FILES...``.

Tables:

- ``meta(key, value)``: ``format``, ``schema_version`` (2), ``model_id`` (a fingerprint of the model
  weights that made every stored embedding), ``checkpoint``, ``embed_dim``, ``threshold``,
  ``threshold_source`` (how the threshold was chosen: the enrollment estimate, ``eer``, ``far=0.01``...),
  ``threshold_locked`` (``1``: set by ``eval-verification --registry`` or by hand; enroll never replaces it),
  ``threshold_scale`` (``registry``: on the scores of this registry's back end; ``raw``: on raw cosines, the
  checkpoint's fallback while too few clips are enrolled), ``fallback_threshold`` / ``fallback_source`` (that
  checkpoint default), and as JSON: ``enroll_config`` (``EnrollConfig``: centroid / best / top-k mean scoring,
  threshold rule, outlier rule), ``domain`` (``DomainStats`` or null), ``cohort`` (``{"kind": "none"}``,
  ``{"kind": "checkpoint", "top_n": N}`` or ``{"kind": "folder", "top_n": N, "cohort": [[...]]}``),
  ``adaptation`` (where the domain statistics and cohort came from), ``calibration`` (score -> LLR, or null).
- ``utterances(speaker, source, embedding)``: one row per enrolled utterance, keyed by
  ``(speaker, source)``; ``embedding`` is ``E`` little-endian float32 values.
- ``channel_utterances(speaker, source, channel, embedding)``: an enrolled utterance's embedding through a
  simulated channel (``telephone``: ``audio.channel.telephone_copy``; ``room``: ``audio.rooms.room_copy``), for
  clips enrolled from audio; diarization names a narrowband call, or a voice recorded across a room, against these
  (``channel_scoring``). A registry made before this table (or before room copies) gains them as its speakers'
  audio is enrolled again; until every speaker has a channel's copies, that channel is not used.

Embeddings of different models live in different spaces, so a registry holds one model only
and ``enroll`` refuses any other. Each write is one transaction: an error part-way through
leaves the registry as it was.

Scoring (``identify``/``decide``): ``domain.apply`` -> ``Gallery(...).scores`` (``spkid.scoring.backend``) ->
compare with the stored threshold. A registry of schema 1 is refused: re-enroll its speakers.

Shapes: ``embeddings`` are ``(N, E)`` (any scale, normalised here); centroids are ``(K, E)``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from spkid.errors import ConfigError, DataError
from spkid.fileio import current_umask
from spkid.scoring.backend import Backend, StoredCalibration, default_enroll_config
from spkid.scoring.enrollment import EnrollConfig

FORMAT = "spkid-registry"
SCHEMA_VERSION = 2
UNKNOWN = "unknown"                                 # decide()'s answer below the threshold; not enrollable
_BLOB_DTYPE = np.dtype("<f4")
LOCK_WAIT_S = 5.0                                   # how long a reader/writer waits for another writer

_META_KEYS = ("model_id", "checkpoint", "embed_dim", "threshold", "threshold_source", "threshold_locked",
              "threshold_scale", "fallback_threshold", "fallback_source", "enroll_config", "domain", "cohort",
              "adaptation", "calibration")
SCALES = ("registry", "raw")
MAX_ESTIMATE_CLIPS = 3000                            # enrollment clips the threshold estimate uses at most

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE utterances (
    speaker TEXT NOT NULL,
    source TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (speaker, source)
);
CREATE TABLE IF NOT EXISTS channel_utterances (
    speaker TEXT NOT NULL,
    source TEXT NOT NULL,
    channel TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (speaker, source, channel)
);
"""
_CHANNEL_TABLE = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS channel_utterances"):].strip().rstrip(";")
CHANNELS = ("telephone", "room")                   # scoring.openset.COPIES makes them


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
        self._checkpoint_cohort = None              # the checkpoint's AS-norm cohort, read when first needed

    # opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path, *, model_id: str, checkpoint: str, embed_dim: int, threshold: float,
               threshold_source: str = "manual", enroll_config: EnrollConfig | None = None) -> "SpeakerDB":
        """Create a new, empty registry file; an existing file is an error.

        ``threshold`` is the fallback on raw cosines (the checkpoint's validation EER point) used until the
        registry holds enough enrollment clips to estimate its own; ``enroll_config`` defaults to
        ``backend.default_enroll_config()`` (top-3 mean scoring).
        """
        path = Path(path)
        enroll_config = enroll_config or default_enroll_config()
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
                        ("threshold_source", threshold_source), ("threshold_locked", "0"),
                        ("threshold_scale", "raw"), ("fallback_threshold", repr(float(threshold))),
                        ("fallback_source", threshold_source),
                        ("enroll_config", json.dumps(dataclasses.asdict(enroll_config))),
                        ("domain", "null"), ("cohort", json.dumps({"kind": "none"})), ("adaptation", ""),
                        ("calibration", "null"),
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
                       threshold_source: str = "manual", enroll_config: EnrollConfig | None = None) -> "SpeakerDB":
        """Open ``path`` if it exists (its stored meta wins), else create it with these values."""
        if Path(path).exists():
            return cls.open(path)
        return cls.create(path, model_id=model_id, checkpoint=checkpoint, embed_dim=embed_dim,
                          threshold=threshold, threshold_source=threshold_source, enroll_config=enroll_config)

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
        if meta.get("schema_version") == "1":
            raise DataError(f"{self.path}: registry schema version 1 (made by an older spkid, without domain "
                            "statistics or its own threshold); re-enroll its speakers into a new registry")
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise DataError(f"{self.path}: registry schema version {_shown(meta.get('schema_version'))}, "
                                             f"this spkid reads version {SCHEMA_VERSION}")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise DataError(f"{self.path}: corrupt registry: meta lacks {', '.join(missing)}")
        try:
            threshold, dim = float(meta["threshold"]), int(meta["embed_dim"])
        except (TypeError, ValueError):
            threshold, dim = math.nan, 0
        if not math.isfinite(threshold) or dim < 1:
            raise DataError(f"{self.path}: corrupt registry: threshold {meta['threshold']!r} / embed_dim "
                            f"{meta['embed_dim']!r} must be a finite number / a positive integer")
        try:
            fallback = float(meta["fallback_threshold"])
        except (TypeError, ValueError):
            fallback = math.nan
        if (not math.isfinite(fallback) or meta["threshold_scale"] not in SCALES
                or meta["threshold_locked"] not in ("0", "1")):
            raise DataError(f"{self.path}: corrupt registry: fallback_threshold {meta['fallback_threshold']!r}, "
                            f"threshold_scale {meta['threshold_scale']!r} or threshold_locked "
                            f"{meta['threshold_locked']!r} is not valid")
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

    @property
    def threshold_locked(self) -> bool:
        """True when the threshold was set by ``eval-verification --registry`` or by hand: enroll keeps it."""
        return self._meta["threshold_locked"] == "1"

    @property
    def threshold_scale(self) -> str:
        """``registry``: the threshold is on this registry's back-end scores; ``raw``: on raw cosines (fallback)."""
        return self._meta["threshold_scale"]

    @property
    def fallback(self) -> tuple[float, str]:
        """The checkpoint's threshold on raw cosines and its source, used while too few clips are enrolled."""
        return float(self._meta["fallback_threshold"]), self._meta["fallback_source"]

    def set_threshold(self, value: float, source: str, *, locked: bool = True, scale: str = "registry") -> None:
        """Store a decision threshold and how it was chosen (e.g. ``"eer"``, ``"far=0.01"``).

        ``locked`` (default: a threshold set from outside is kept by later enrolls); ``scale``: ``registry`` (on
        this registry's back-end scores) or ``raw`` (raw cosines).
        """
        _check_threshold(value)
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self._write_meta({"threshold": repr(float(value)), "threshold_source": source,
                          "threshold_locked": "1" if locked else "0", "threshold_scale": scale})

    def unlock_threshold(self) -> None:
        """Let the next ``refresh_threshold`` (every enroll) estimate the threshold from the enrollment clips."""
        self._write_meta({"threshold_locked": "0"})

    def _write_meta(self, values: dict[str, str]) -> None:
        with _transaction(self._conn, self.path):
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                   [(k, v) for k, v in values.items()])
        self._meta.update(values)
        self._checkpoint_cohort = None

    def _json(self, key: str):
        try:
            return json.loads(self._meta[key])
        except json.JSONDecodeError:
            raise DataError(f"{self.path}: corrupt registry: meta {key!r} is not valid JSON") from None

    def _decoded(self, key: str, from_dict):
        """``from_dict`` of meta ``key`` (JSON), None when unset; a malformed value names this registry."""
        d = self._json(key)
        if d is None:
            return None
        try:
            return from_dict(d)
        except DataError as e:
            raise DataError(f"{self.path}: corrupt registry: {e}") from None

    @property
    def enroll_config(self) -> EnrollConfig:
        """How speakers are scored (centroid / best clip / top-k mean), the threshold rule and the outlier rule."""
        d = self._json("enroll_config")
        try:
            return EnrollConfig(**d)
        except (TypeError, ConfigError) as e:
            raise DataError(f"{self.path}: corrupt registry: enroll_config ({e})") from None

    def set_enroll_config(self, cfg: EnrollConfig) -> None:
        self._write_meta({"enroll_config": json.dumps(dataclasses.asdict(cfg))})

    @property
    def domain(self):
        """The target domain's ``DomainStats`` (``spkid adapt``), or None."""
        from spkid.scoring.norm import DomainStats
        return self._decoded("domain", DomainStats.from_dict)

    @property
    def cohort_kind(self) -> str:
        """``none`` | ``checkpoint`` (the training speakers stored in the checkpoint) | ``folder`` (domain clips)."""
        d = self._json("cohort")
        kind = d.get("kind") if isinstance(d, dict) else None
        if kind not in ("none", "checkpoint", "folder"):
            raise DataError(f"{self.path}: corrupt registry: cohort kind {kind!r}")
        return kind

    @property
    def adaptation(self) -> str:
        """Where the domain statistics and cohort came from ("" when the registry is not adapted)."""
        return self._meta["adaptation"]

    def cohort(self):
        """The ``ASNorm`` this registry scores with, or None (a checkpoint cohort is read from the checkpoint)."""
        from spkid.scoring.norm import ASNorm
        kind = self.cohort_kind
        if kind == "none":
            return None
        if kind == "folder":
            return self._decoded("cohort", ASNorm.from_dict)
        if getattr(self, "_checkpoint_cohort", None) is None:
            from spkid.scoring.backend import checkpoint_extras
            cohort, _ = checkpoint_extras(self.checkpoint)
            if cohort is None:
                raise DataError(f"{self.path}: the registry uses the checkpoint cohort, but {self.checkpoint} has "
                                "none (trained by an older spkid); run spkid adapt again without --cohort checkpoint")
            self._checkpoint_cohort = cohort.asnorm(centred=self.domain is not None, top_n=int(self._json("cohort").get("top_n", 50)))
        return self._checkpoint_cohort

    def set_adaptation(self, domain, cohort, source: str, *, top_n: int = 50) -> None:
        """Store domain statistics (``DomainStats`` or None) and the AS-norm cohort: an ``ASNorm`` built from the
        domain's clips, ``"checkpoint"`` or None; ``source`` says where they came from. A locked threshold was
        chosen on other scores, so it is unlocked (call ``refresh_threshold`` next)."""
        from spkid.scoring.norm import ASNorm
        if cohort is None:
            c = {"kind": "none"}
        elif isinstance(cohort, str):
            if cohort != "checkpoint":
                raise ValueError(f"cohort must be an ASNorm, 'checkpoint' or None, got {cohort!r}")
            c = {"kind": "checkpoint", "top_n": int(top_n)}
        elif isinstance(cohort, ASNorm):
            if cohort.cohort.shape[1] != self.embed_dim:
                raise DataError(f"{self.path}: cohort is {cohort.cohort.shape[1]}-dim, the registry {self.embed_dim}-dim")
            c = {"kind": "folder", **cohort.to_dict()}
        else:
            raise ValueError(f"cohort must be an ASNorm, 'checkpoint' or None, got {type(cohort).__name__}")
        if domain is not None and domain.mean.size != self.embed_dim:
            raise DataError(f"{self.path}: domain statistics are {domain.mean.size}-dim, the registry {self.embed_dim}-dim")
        self._write_meta({"domain": json.dumps(None if domain is None else domain.to_dict()), "cohort": json.dumps(c),
                          "adaptation": source, "threshold_locked": "0"})

    @property
    def calibration(self) -> StoredCalibration | None:
        """Score -> log-likelihood-ratio calibration on this registry's scores, with the trials it came from."""
        return self._decoded("calibration", StoredCalibration.from_dict)

    def set_calibration(self, cal: StoredCalibration | None) -> None:
        self._write_meta({"calibration": json.dumps(None if cal is None else cal.to_dict())})

    def backend(self, scale: str | None = None) -> Backend:
        """The scoring pipeline of ``scale`` (default: the threshold's): ``registry`` = domain statistics + cohort +
        scoring mode; ``raw`` = the scoring mode on raw cosines (what the checkpoint's fallback threshold is for)."""
        scale = scale or self.threshold_scale
        if scale == "raw":
            return Backend(self.enroll_config, None, None)
        return Backend(self.enroll_config, self.domain, self.cohort())

    # speakers --------------------------------------------------------------------------------

    def enroll(self, name: str, embeddings, sources: list[str], *, model_id: str,
               channels: dict[str, dict[str, np.ndarray]] | None = None) -> int:
        """Add utterance embeddings ``(N, E)`` of speaker ``name``, one per ``sources`` entry.

        A source the speaker already has is replaced, others are added (re-enrolling updates), and the operating
        point is re-estimated (``refresh_threshold``) in the same transaction. ``channels``: ``{channel: {source:
        embedding (E,)}}``, the clips' embeddings through a simulated channel (``CHANNELS``); a replaced source
        loses the channel copies it had. Returns the speaker's utterance count afterwards.
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
        copies = []
        for ch, by_source in (channels or {}).items():
            if ch not in CHANNELS:
                raise ValueError(f"channel {ch!r} unknown; one of {', '.join(CHANNELS)}")
            for src, row in by_source.items():
                if src not in seen:
                    raise ValueError(f"channel copy of {src!r}, which is not among the sources enrolled")
                v = _as_matrix(np.asarray(row).reshape(1, -1), "channel embeddings")
                if v.shape[1] != self.embed_dim or not np.all(np.isfinite(v)) or not np.any(v):
                    raise DataError(f"{self.path}: {ch} embedding of {src!r} is zero, not finite or not "
                                    f"{self.embed_dim}-dim")
                copies.append((name, src, ch, _to_blob(v[0])))
        with _transaction(self._conn, self.path):
            self._conn.execute(_CHANNEL_TABLE)                 # a registry made before the table gains it here
            for src, row in zip(sources, x):
                self._conn.execute("INSERT OR REPLACE INTO utterances (speaker, source, embedding) VALUES (?, ?, ?)",
                                   (name, src, _to_blob(row)))
                self._conn.execute("DELETE FROM channel_utterances WHERE speaker = ? AND source = ?", (name, src))
            self._conn.executemany("INSERT INTO channel_utterances (speaker, source, channel, embedding) "
                                   "VALUES (?, ?, ?, ?)", copies)
            (count,) = self._conn.execute("SELECT COUNT(*) FROM utterances WHERE speaker = ?", (name,)).fetchone()
            meta = self._refreshed()                # the new operating point commits with the clips, or neither
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
        self._meta.update(meta)
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
            if self._has_channel_table():
                self._conn.execute("DELETE FROM channel_utterances WHERE speaker = ?", (name,))
            meta = self._refreshed()
            self._conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
        self._meta.update(meta)
        return int(n)

    def rename(self, old: str, new: str) -> int:
        """Give speaker ``old`` the name ``new`` (not enrolled yet); returns their utterance count. Scores and the
        threshold do not depend on names, so nothing else changes."""
        if not isinstance(new, str) or not new.strip():
            raise DataError(f"{self.path}: speaker name must be a non-empty string, got {new!r}")
        if new == UNKNOWN:
            raise DataError(f"{self.path}: speaker name {UNKNOWN!r} is reserved for rejected identifications")
        with _transaction(self._conn, self.path):
            if self._conn.execute("SELECT 1 FROM utterances WHERE speaker = ? LIMIT 1", (new,)).fetchone():
                raise DataError(f"{self.path}: speaker {new!r} is already enrolled")
            n = self._conn.execute("UPDATE utterances SET speaker = ? WHERE speaker = ?", (new, old)).rowcount
            if n == 0:
                raise DataError(f"{self.path}: no enrolled speaker {old!r}")
            if self._has_channel_table():
                self._conn.execute("UPDATE channel_utterances SET speaker = ? WHERE speaker = ?", (new, old))
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

    def _has_channel_table(self) -> bool:
        return self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = "
                                  "'channel_utterances'").fetchone() is not None

    def clips(self, channel: str | None = None) -> list[tuple[str, list[str], np.ndarray]]:
        """``[(name, sources, (n_k, E) float64 L2-normalised embeddings)]`` per speaker, sorted by name, then source;
        with ``channel``, the clips' copies through it (speakers without any copy are absent)."""
        if channel is None:
            rows = self._conn.execute(
                "SELECT speaker, source, embedding FROM utterances ORDER BY speaker, source").fetchall()
        elif channel not in CHANNELS:
            raise ValueError(f"channel {channel!r} unknown; one of {', '.join(CHANNELS)}")
        elif not self._has_channel_table():
            rows = []
        else:
            rows = self._conn.execute("SELECT speaker, source, embedding FROM channel_utterances WHERE channel = ? "
                                      "ORDER BY speaker, source", (channel,)).fetchall()
        out: list[tuple[str, list[str], list[np.ndarray]]] = []
        for speaker, source, blob in rows:
            v = np.frombuffer(blob, dtype=_BLOB_DTYPE).astype(np.float64)
            if v.size != self.embed_dim or not np.all(np.isfinite(v)) or not np.any(v):
                raise DataError(f"{self.path}: corrupt embedding for {speaker!r}/{source!r}: "
                                f"{v.size} values (expected {self.embed_dim}), zero or not finite")
            if not out or out[-1][0] != speaker:
                out.append((speaker, [], []))
            out[-1][1].append(source)
            out[-1][2].append(v / np.linalg.norm(v))
        return [(name, sources, np.stack(vecs)) for name, sources, vecs in out]

    def channel_scoring(self, channel: str) -> "ChannelScoring | None":
        """How to score against the ``channel`` copies of the clips, or None when an enrolled speaker has none.

        The registry's back end, and an operating point estimated on the copies as ``refresh_threshold`` does on
        the clips (with too few, the checkpoint's fallback on raw cosines). A locked threshold was chosen on the
        clips as recorded, so it does not carry over to the copies."""
        from spkid.scoring.backend import operating_point
        clips = self.clips(channel)
        if not clips or len(clips) != len(self.speakers()):
            return None
        op, stored, _ = operating_point(self.backend("registry"),
                                        _subsample([c for _, _, c in clips], MAX_ESTIMATE_CLIPS))
        if op is None:
            return ChannelScoring(channel, clips, self.backend("raw"), self.fallback[0], None)
        return ChannelScoring(channel, clips, self.backend("registry"), float(op.threshold), stored)

    # scoring ---------------------------------------------------------------------------------

    def _scores(self, embeddings) -> tuple[list[str], np.ndarray]:
        """Speaker names and ``(M, K)`` scores through the back end of the threshold's scale."""
        x = _as_matrix(embeddings, "embeddings")
        if x.shape[1] != self.embed_dim:
            raise DataError(f"{self.path}: registry holds {self.embed_dim}-dim embeddings, got {x.shape[1]}-dim")
        clips = self.clips()
        if not clips:
            raise DataError(f"{self.path}: no speakers enrolled")
        names = [name for name, _, _ in clips]
        return names, self.backend().scores([c for _, _, c in clips], x.astype(np.float64))

    def identify(self, embeddings, top_k: int = 1) -> list[list[tuple[str, float]]]:
        """For each of ``(M, E)`` embeddings, the ``min(top_k, K)`` best ``(speaker, score)``, best first.

        Scores come from ``backend()``: adapted to the domain, the speaker's clips scored by the registry's mode
        (top-3 mean by default), AS-normed when the registry has a cohort.
        """
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
        """Best ``(speaker, score)`` per embedding, or ``("unknown", score)`` when below the threshold."""
        thr = self.threshold
        best = [ranked[0] for ranked in self.identify(embeddings, top_k=1)]
        return [(spk if score >= thr else UNKNOWN, score) for spk, score in best]

    # operating point -------------------------------------------------------------------------

    def threshold_state(self) -> "ThresholdState":
        """The threshold ``decide`` uses, where it came from, and how many more clips an estimate needs."""
        from spkid.scoring.enrollment import clips_needed
        needed = 0
        if self.threshold_scale == "raw" and not self.threshold_locked:
            needed = clips_needed([n for _, n in self.speakers()], self.enroll_config)
        return ThresholdState(self.threshold, self.threshold_source, self.threshold_locked, self.threshold_scale,
                              needed, self.backend().describe(), self.enroll_config.min_clips)

    def refresh_threshold(self) -> "ThresholdState":
        """Re-estimate the operating point from the enrollment clips (unless the threshold is locked).

        With enough clips (``enrollment.clips_needed``): ``estimate_threshold`` on the registry's back end, and a
        calibration fitted on the same enrollment trials; otherwise the checkpoint's fallback on raw cosines.
        ``enroll`` and ``remove`` do this inside their own transaction.
        """
        values = self._refreshed()
        if values:
            self._write_meta(values)
        return self.threshold_state()

    def _refreshed(self) -> dict[str, str]:
        """The meta values ``refresh_threshold`` writes (reads the clips through this connection: inside an open
        transaction, its own uncommitted rows count); {} when the threshold is locked."""
        from spkid.scoring.backend import operating_point
        if self.threshold_locked:
            return {}
        clips = _subsample([c for _, _, c in self.clips()], MAX_ESTIMATE_CLIPS)
        op, stored, _ = operating_point(self.backend("registry"), clips)
        if op is None:
            thr, source = self.fallback
            return {"threshold": repr(thr), "threshold_source": source, "threshold_scale": "raw",
                    "calibration": "null"}
        return {"threshold": repr(float(op.threshold)), "threshold_source": op.source,
                "threshold_scale": "registry", "calibration": json.dumps(stored.to_dict())}


@dataclasses.dataclass(frozen=True)
class ChannelScoring:
    """``SpeakerDB.channel_scoring``'s answer: the ``channel``, its ``clips`` ``[(name, sources, (n_k, E))]``, the
    ``backend`` to score them with, its ``threshold`` and ``calibration`` (None on the raw fallback)."""

    channel: str
    clips: list
    backend: Backend
    threshold: float
    calibration: StoredCalibration | None


@dataclasses.dataclass(frozen=True)
class ThresholdState:
    """What ``decide`` compares with: ``threshold`` and its ``source``; ``locked`` (kept by enroll); ``scale``
    (``registry`` or ``raw``); ``clips_needed`` (> 0: the fallback is in use until this many more clips are
    enrolled); ``scoring`` (the back end, in words)."""

    threshold: float
    source: str
    locked: bool
    scale: str
    clips_needed: int
    scoring: str
    min_clips: int = 20

    def describe(self, with_needed: bool = True) -> str:
        """One line: which threshold, from where, on which scores (and how many clips an estimate still needs)."""
        kind = "locked" if self.locked else "estimated" if self.scale == "registry" else "fallback"
        line = f"threshold {self.threshold:.4f} ({kind}: {self.source}; scores: {self.scoring})"
        if with_needed and self.clips_needed > 0:
            line += (f"; {self.clips_needed} more enrollment clip{'s' if self.clips_needed != 1 else ''} needed "
                     "for this registry's own threshold")
        return line


def _subsample(clips: list[np.ndarray], cap: int) -> list[np.ndarray]:
    """At most about ``cap`` clips in all, each speaker keeping its share (and at least 2): the threshold estimate
    scores every clip against every other one, ``(n, n)``."""
    total = sum(len(c) for c in clips)
    if total <= cap:
        return clips
    rng = np.random.default_rng(0)
    out = []
    for c in clips:
        keep = min(len(c), max(2, int(np.ceil(cap * len(c) / total))))
        out.append(c[np.sort(rng.choice(len(c), keep, replace=False))])
    return out


def _shown(value) -> str:
    """A meta value as it reads, or its repr when it holds a newline or other unprintable characters (one line)."""
    return value if isinstance(value, str) and value.isprintable() else repr(value)


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

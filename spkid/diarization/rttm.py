"""Diarization output and reference files: RTTM, UEM and the ``file,start,end,speaker,score`` CSV.

RTTM (NIST's Rich Transcription Time Marked format, the one md-eval and pyannote.metrics read) has ten
space-separated fields per speaker turn::

    SPEAKER <file> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>

``<file>`` is the audio file's stem; onset and duration are seconds. A field cannot hold a space, so whitespace
inside a speaker name is written as ``_`` (the CSV keeps the name as it is). UEM lines are
``<file> <channel> <start> <end>``: the scored parts of each file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spkid.errors import DataError
from spkid.fileio import atomic_write, write_csv


@dataclass(frozen=True)
class Segment:
    """One speaker turn: ``file`` (the audio file's stem), ``start``/``end`` in seconds, ``speaker`` (a registry
    name or ``SPEAKER_00``...), ``score`` (how sure: the registry score of a named speaker, else the mean cosine
    of the turn's windows to its cluster's centre; 1.0 in a file read from RTTM)."""

    file: str
    start: float
    end: float
    speaker: str
    score: float = 1.0

    @property
    def duration(self) -> float:
        return self.end - self.start


def rttm_lines(segments: list[Segment]) -> list[str]:
    """One RTTM line per segment (times to the millisecond)."""
    return [f"SPEAKER {_field(s.file)} 1 {s.start:.3f} {s.duration:.3f} <NA> <NA> {_field(s.speaker)} <NA> <NA>"
            for s in segments]


def _field(text: str) -> str:
    return "_".join(text.split()) or "_"


def write_rttm(path: str | Path, segments: list[Segment]) -> None:
    """All segments (of every file) into one RTTM, atomically; no segments: an empty file."""
    lines = rttm_lines(segments)
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))


def write_segments_csv(path: str | Path, segments: list[Segment]) -> None:
    """``file,start,end,speaker,score`` (seconds to the millisecond, score to 4 places)."""
    write_csv(path, ["file", "start", "end", "speaker", "score"],
              [(s.file, f"{s.start:.3f}", f"{s.end:.3f}", s.speaker, f"{s.score:.4f}") for s in segments])


def read_rttm(path: str | Path) -> list[Segment]:
    """The ``SPEAKER`` lines of an RTTM file (other record types and ``;;`` comments are skipped).

    Raises ``DataError("<path>: line N: ...")`` for a line with fewer than 9 fields or bad times."""
    path = Path(path)
    out = []
    for n, line in enumerate(_lines(path), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;") or fields[0] != "SPEAKER":
            continue
        if len(fields) < 9:
            raise DataError(f"{path}: line {n}: expected 10 RTTM fields (SPEAKER file channel onset duration "
                            f"<NA> <NA> speaker <NA> <NA>), found {len(fields)}")
        onset, dur = _seconds(fields[3], path, n, "onset"), _seconds(fields[4], path, n, "duration")
        out.append(Segment(fields[1], onset, onset + dur, fields[7]))
    return out


def read_uem(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """``{file: [(start, end), ...]}`` from a UEM file (``file channel start end`` per line)."""
    path = Path(path)
    out: dict[str, list[tuple[float, float]]] = {}
    for n, line in enumerate(_lines(path), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";;"):
            continue
        if len(fields) != 4:
            raise DataError(f"{path}: line {n}: expected 4 UEM fields (file channel start end), found {len(fields)}")
        start, end = _seconds(fields[2], path, n, "start"), _seconds(fields[3], path, n, "end")
        if end <= start:
            raise DataError(f"{path}: line {n}: end {end} is not after start {start}")
        out.setdefault(fields[0], []).append((start, end))
    return out


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not readable as text ({e.__class__.__name__})") from None


def _seconds(text: str, path: Path, n: int, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"{path}: line {n}: {what} {text!r} is not a number") from None
    if not (v >= 0 and v < float("inf")):
        raise DataError(f"{path}: line {n}: {what} {text!r} must be a finite time >= 0")
    return v


__all__ = ["Segment", "rttm_lines", "write_rttm", "write_segments_csv", "read_rttm", "read_uem"]

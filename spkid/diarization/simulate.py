"""Simulated conversations with exact references, for tests and ``benchmarks/diarization.py``.

``build_conversation`` lays turns of single-speaker utterances on a timeline: every speaker speaks early (the
first turns go round all of them), then each turn goes to another speaker than the last; a turn is 1-15 s of
one speaker's utterances (each trimmed to its detected speech and cut at the turn's length), followed by a
pause, or, with the probability that gives the wanted share of overlap, by the next turn starting before this
one ends. The reference is where each speaker's own clean signal has speech (Silero on every utterance alone,
shifted to where it was placed), so a pause inside a turn is not charged to anyone.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spkid.audio.vad import VadConfig, speech_segments
from spkid.diarization.rttm import Segment

SAMPLE_RATE = 16000
OVERLAP_S = (0.4, 2.0)         # seconds of one overlap (drawn uniformly, at most half of either turn)


@dataclass
class Conversation:
    """``wav`` ``(S,)`` float32 at 16 kHz, ``reference`` speaker turns (file field ``name``), ``speakers`` in order
    of first speech, ``overlap`` the share of speech time with two speakers at once."""

    name: str
    wav: np.ndarray
    reference: list[Segment]
    speakers: list[str]
    overlap: float


def speech_span(wav: np.ndarray, cfg: VadConfig | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """An utterance trimmed to its first..last detected speech, with its speech segments (relative samples)."""
    segs = speech_segments(wav, cfg)
    if not segs:
        return wav[:0], []
    a, b = segs[0][0], segs[-1][1]
    return wav[a:b], [(s - a, e - a) for s, e in segs]


def build_conversation(pools: dict[str, list[tuple[np.ndarray, list[tuple[int, int]]]]], duration_s: float,
                       rng: np.random.Generator, *, name: str = "conversation",
                       turn_s: tuple[float, float] = (1.0, 15.0), pause_s: tuple[float, float] = (0.2, 1.2),
                       overlap: float = 0.0,
                       transform: Callable[[np.ndarray, int], np.ndarray] | None = None) -> Conversation:
    """A conversation of about ``duration_s`` seconds among ``pools``' speakers.

    ``pools[speaker]``: that speaker's utterances as ``speech_span`` returns them. ``overlap``: the wanted share of
    speech time in overlap (0-0.3). ``transform(piece, speaker_index)``: applied to every placed piece (for
    example a room per speaker; it may lengthen the piece by a reverberation tail)."""
    speakers = list(pools)
    if len(speakers) < 1 or any(not pools[s] for s in speakers):
        raise ValueError("every speaker needs at least one utterance with speech")
    if not 0 <= overlap <= 0.3:
        raise ValueError(f"overlap must be in [0, 0.3], got {overlap}")
    mean_turn, mean_ov = np.mean(turn_s), np.mean(OVERLAP_S)
    p_overlap = min(1.0, overlap * mean_turn / mean_ov * 1.15)        # 1.15: overlaps are shortened on short turns
    total = int((duration_s + turn_s[1] + 5) * SAMPLE_RATE)
    wav = np.zeros(total, dtype=np.float32)
    ref: list[Segment] = []
    order = list(rng.permutation(len(speakers)))
    t, prev, prev_len, prev_end, k = int(0.5 * SAMPLE_RATE), None, 0, 0, 0
    while t < duration_s * SAMPLE_RATE:
        spk = order[k] if k < len(order) else int(rng.choice([i for i in range(len(speakers)) if i != prev]
                                                              if len(speakers) > 1 else [0]))
        k += 1
        want = int(rng.uniform(*turn_s) * SAMPLE_RATE)
        piece, segs = _turn(pools[speakers[spk]], want, rng)
        start = t
        if prev is not None and rng.random() < p_overlap:
            ov = int(min(rng.uniform(*OVERLAP_S) * SAMPLE_RATE, prev_len // 2, piece.size // 2))
            start = prev_end - ov
        gain = 10 ** (rng.uniform(-3, 3) / 20) * 0.1 / max(np.sqrt(np.mean(piece ** 2)), 1e-6)
        out = piece * gain if transform is None else transform(piece * gain, spk)
        end = min(start + out.size, total)
        wav[start:end] += out[: end - start]
        ref += [Segment(name, (start + s) / SAMPLE_RATE, (start + e) / SAMPLE_RATE, speakers[spk]) for s, e in segs]
        t = start + piece.size + int(rng.uniform(*pause_s) * SAMPLE_RATE)
        prev, prev_len, prev_end = spk, piece.size, start + piece.size
    last = int(max(s.end for s in ref) * SAMPLE_RATE) + int(0.5 * SAMPLE_RATE)
    wav = wav[: min(last, total)]
    peak = float(np.abs(wav).max())
    if peak > 0.99:
        wav *= 0.99 / peak
    ref = merge_turns(ref)
    first = sorted({s.speaker: s.start for s in reversed(sorted(ref, key=lambda s: s.start))}.items(),
                   key=lambda kv: kv[1])
    return Conversation(name, wav, ref, [s for s, _ in first], overlap_share(ref))


def _turn(pool, want: int, rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Utterances of one speaker, end to end, cut to ``want`` samples; their speech segments (relative)."""
    parts, segs, n = [], [], 0
    while n < want:
        wav, s = pool[int(rng.integers(len(pool)))]
        take = min(wav.size, want - n)
        parts.append(wav[:take])
        segs += [(n + a, n + min(b, take)) for a, b in s if a < take]
        n += take
        if n < want:                                               # a short breath between two sentences
            gap = int(rng.uniform(0.1, 0.3) * SAMPLE_RATE)
            parts.append(np.zeros(gap, dtype=np.float32))
            n += gap
    return np.concatenate(parts).astype(np.float32), [(a, b) for a, b in segs if b > a]


def merge_turns(segments: list[Segment]) -> list[Segment]:
    """Same-speaker segments that touch or overlap merged; sorted by start."""
    out: list[Segment] = []
    for s in sorted(segments, key=lambda s: (s.file, s.speaker, s.start)):
        if out and out[-1].file == s.file and out[-1].speaker == s.speaker and s.start <= out[-1].end:
            out[-1] = Segment(s.file, out[-1].start, max(out[-1].end, s.end), s.speaker, s.score)
        else:
            out.append(s)
    return sorted(out, key=lambda s: (s.file, s.start, s.speaker))


def overlap_share(segments: list[Segment]) -> float:
    """Share of speech time (any speaker) during which two or more speakers talk."""
    events = sorted([(s.start, 1) for s in segments] + [(s.end, -1) for s in segments])
    speech = multi = 0.0
    level, last = 0, 0.0
    for time, step in events:
        if level >= 1:
            speech += time - last
        if level >= 2:
            multi += time - last
        level += step
        last = time
    return multi / speech if speech > 0 else 0.0


__all__ = ["Conversation", "build_conversation", "speech_span", "merge_turns", "overlap_share"]

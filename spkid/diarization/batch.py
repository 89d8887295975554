"""Many files, one RTTM: ``diarize_files`` runs the pipeline file by file, names speakers from a registry, and
never lets one bad file stop the others (its error is kept, the rest finish; the CLI exits non-zero).
``diarize`` is the Python API for one file (``spkid.diarize``)."""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spkid.diarization.names import ClusterName, Enrolled
from spkid.diarization.pipeline import (DiarizeConfig, FileDiarization, SpkidEmbedder, check_counts, diarize_file,
                                        model_config)
from spkid.diarization.rttm import Segment
from spkid.errors import ConfigError, SpkidError

DEFAULT_CHECKPOINT = "base"      # the pretrained model, resolved by spkid.load like any checkpoint name


def load_embedder(checkpoint: str | Path | None, registry: str | Path | None = None, *, device: str = "auto",
                  runtime: str = "torch", threads: int = 0) -> SpkidEmbedder:
    """The model that embeds: ``checkpoint``, else the registry's own model (its embeddings must match), else the
    pretrained ``base`` model."""
    from spkid.scoring.model import load
    if checkpoint is None and registry is not None:
        from spkid.scoring.speaker_db import SpeakerDB
        with SpeakerDB.open(registry) as reg:
            checkpoint = reg.checkpoint
    return SpkidEmbedder(load(checkpoint or DEFAULT_CHECKPOINT, device, runtime=runtime, threads=threads))


def enrolled_of(registry: str | Path | None, embedder: SpkidEmbedder, cfg: DiarizeConfig | None) -> Enrolled | None:
    """The registry's speakers with ``cfg``'s naming margins (None without a registry)."""
    if registry is None:
        return None
    cfg = cfg or model_config(embedder)
    return Enrolled(registry, embedder.model_id, margin_llr=cfg.name_margin,
                    margin_llr_telephone=cfg.name_margin_telephone)


def named(r: FileDiarization, enrolled: Enrolled, recording: str | Path = "this recording") -> list[Segment]:
    """``r``'s segments (of the audio file ``recording``) with each cluster's registry name where the registry gives
    one (``names.Enrolled.name``: each cluster against the clips or their telephone copies, whichever it sounds
    closer to); the clusters left anonymous are renumbered ``SPEAKER_00``, ... in order of first speech."""
    if not r.segments:
        return []
    return with_names(r, enrolled.name(r.cluster_emb, narrowband=r.narrowband, recording=str(recording)))


def with_names(r: FileDiarization, answers: list[ClusterName]) -> list[Segment]:
    """``r``'s segments with the registry's ``answers`` (one per cluster, in label order) as speakers; the clusters
    left anonymous renumbered ``SPEAKER_00``, ... in order of first speech."""
    rename, k = {}, 0
    for label, ans in zip(r.labels, answers):
        if ans.name is None:
            rename[label] = (f"SPEAKER_{k:02d}", None)
            k += 1
        else:
            rename[label] = (ans.name, ans.score)
    return [Segment(s.file, s.start, s.end, rename[s.speaker][0],
                    s.score if rename[s.speaker][1] is None else rename[s.speaker][1]) for s in r.segments]


def naming_summary(answers: list[ClusterName]) -> str:
    """What the registry made of a file's speakers, in words: ``"2 of 3 speakers named; 1 anonymous: within the
    margin of a second name (--name-margin)"``."""
    left = [a.why for a in answers if a.name is None]
    text = f"{len(answers) - len(left)} of {len(answers)} speakers named"
    if not left:
        return text
    words = {"below threshold": "below the registry's threshold", "within margin": "within the margin of a second "
             "name (--name-margin)", "no speaker left": "no enrolled name left for them"}
    parts = [f"{left.count(w)} {words.get(w, w)}" for w in sorted(set(left), key=left.index)]
    return f"{text}; {len(left)} anonymous: " + ", ".join(parts)


def audio_inputs(paths: list[str | Path] | str | Path) -> list[Path]:
    """The files to diarize: each path as given, a folder replaced by the audio files under it, sorted
    (``data.scan.gather``). A missing file stays (its own error comes when its turn does); a folder without
    audio raises ``DataError`` naming it, before any work. One path (a string or ``Path``) is one input, not a
    sequence of characters."""
    from spkid.data.scan import as_sources, gather
    out: list[Path] = []
    for p in map(Path, as_sources(paths)):
        out += gather(p, features=False)[1] if p.is_dir() else [p]
    return out


@dataclass
class FileOutcome:
    """One input's outcome: its ``segments`` (empty on error or without speech), ``error`` (one line) or
    ``warning`` (one line), ``n_speakers``, ``duration`` and ``speech`` seconds, ``seconds`` of processing,
    ``names`` (with a registry: how many speakers it named and why the others stay anonymous)."""

    path: Path
    segments: list[Segment]
    n_speakers: int = 0
    duration: float = 0.0
    speech: float = 0.0
    seconds: float = 0.0
    error: str | None = None
    warning: str | None = None
    names: str | None = None      # with a registry: naming_summary of the file's speakers


def diarize_files(paths: list[str | Path] | str | Path, embedder: SpkidEmbedder, cfg: DiarizeConfig | None = None,
                  *, registry: str | Path | None = None, n_speakers: int | None = None, min_speakers: int = 1,
                  max_speakers: int | None = None, progress: bool = True,
                  on_file: Callable[[FileOutcome], None] | None = None) -> list[FileOutcome]:
    """Diarize every path (in order; a folder: the audio files under it; one path alone: that input;
    ``audio_inputs``); ``SpkidError`` of one file (undecodable, too short) becomes its ``error``.
    Speaker counts that cannot be (``pipeline.check_counts``) and two inputs with one stem (they would share an RTTM
    file field) are refused before any work. ``on_file`` is called as
    each file finishes (the CLI prints a line); the progress bar (seconds of audio, two passes) shows on a
    terminal only."""
    import time

    from tqdm import tqdm

    from spkid.diarization.stream import AudioStream
    check_counts(n_speakers, min_speakers, max_speakers)                                 # refused before any work
    paths = audio_inputs(paths)
    enrolled = enrolled_of(registry, embedder, cfg)
    seen: dict[str, Path] = {}
    for p in paths:
        if p.stem in seen and seen[p.stem] != p:
            raise SpkidError(f"{p}: same file name stem as {seen[p.stem]}; the RTTM file field could not tell them "
                             "apart (rename one)")
        seen[p.stem] = p
    total = 0.0
    for p in paths:
        try:
            total += 2 * AudioStream(p).duration
        except SpkidError:
            pass                                              # reported when its turn comes
    bar = tqdm(total=round(total), unit="s", desc="diarize", dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty()),
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio [{elapsed}<{remaining}, {rate_fmt}]")
    out = []
    try:
        for p in paths:
            t0 = time.perf_counter()
            try:
                r = diarize_file(p, embedder, cfg, n_speakers=n_speakers, min_speakers=min_speakers,
                                 max_speakers=max_speakers, progress=bar.update, enrolled=enrolled)
                answers = (enrolled.name(r.cluster_emb, narrowband=r.narrowband, recording=str(p))
                           if enrolled is not None and r.segments else None)
                segs = with_names(r, answers) if answers is not None else r.segments
                o = FileOutcome(p, segs, len({s.speaker for s in segs}), r.duration, r.speech,
                                time.perf_counter() - t0, warning=r.warning,
                                names=naming_summary(answers) if answers else None)
            except SpkidError as e:
                o = FileOutcome(p, [], seconds=time.perf_counter() - t0, error=str(e))
            out.append(o)
            if on_file is not None:
                on_file(o)
    finally:
        bar.close()
    return out


def diarize(path: str | Path, checkpoint: str | Path | None = None, *, registry: str | Path | None = None,
            n_speakers: int | None = None, min_speakers: int = 1, max_speakers: int | None = None,
            device: str = "auto", runtime: str = "torch", threads: int = 0,
            config: DiarizeConfig | None = None) -> list[Segment]:
    """Who spoke when in one audio file: ``spkid.diarize("meeting.wav", registry="speakers.db")``.

    Returns the speaker turns (``Segment``: file, start, end, speaker, score) in time order. Speakers are
    ``SPEAKER_00``, ... or, with ``registry``, the enrolled names the registry's back end and threshold give them
    (one-to-one; ``names.Enrolled``; a voice on the telephone against the registry's telephone copies; a cluster
    holding several enrolled voices split into them). Without
    ``checkpoint`` the registry's own model embeds, or without a registry the pretrained ``base`` model. A file
    without speech gives ``[]`` and a ``UserWarning``. ``config`` None: the defaults, with the cosines the model
    carries when it was tuned (``spkid tune-diarization``; ``pipeline.model_config``)."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"spkid.diarize takes one audio file, got {type(path).__name__}; for several, "
                          "spkid.diarization.batch.diarize_files (or `spkid diarize A B ... -o out.rttm`)")
    if config is not None and not isinstance(config, DiarizeConfig):
        raise ConfigError(f"config: a spkid.diarization.pipeline.DiarizeConfig, got {type(config).__name__}")
    check_counts(n_speakers, min_speakers, max_speakers)
    embedder = load_embedder(checkpoint, registry, device=device, runtime=runtime, threads=threads)
    enrolled = enrolled_of(registry, embedder, config)
    r = diarize_file(path, embedder, config, n_speakers=n_speakers, min_speakers=min_speakers,
                     max_speakers=max_speakers, enrolled=enrolled)
    if r.warning:
        warnings.warn(r.warning, stacklevel=2)
    return named(r, enrolled, path) if enrolled is not None else r.segments


__all__ = ["DEFAULT_CHECKPOINT", "load_embedder", "named", "audio_inputs", "FileOutcome", "diarize_files",
           "diarize"]

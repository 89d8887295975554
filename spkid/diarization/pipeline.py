"""Who spoke when: speech detection -> window embeddings -> clustering -> refined boundaries -> segments.

One file goes through four streaming passes, each decoding the audio block by block (``stream.AudioStream``),
so memory is bounded by a block, the window embeddings ``(W, E)`` and the clustering's ``max_points``:

1. Silero speech probabilities over the whole file (``stream.speech_probs_stream``) -> speech segments; before
   it, the first block decides whether the file's voices end below 6 kHz under noise (``audio.bandwidth``), and
   if so every pass hears the file low-passed there (``AudioStream.low_pass``);
2. embeddings of ``window_s`` windows every ``hop_s`` over the speech, in batches;
3. clustering (``cluster``: AHC at a calibrated threshold, or spectral + eigengap; then the HMM refinement)
   -> one speaker label per window; with a registry's speakers (``names.Enrolled``), a cluster that holds
   several of them is split into them;
4. every change of speaker between two windows is placed on a finer grid: short windows every ``refine_step_s``
   across the change are scored against the two speakers' centres and the boundary goes where the evidence
   flips (the split that maximises the summed score difference).

``Embedder`` is anything that maps a batch of 16 kHz waveforms to embeddings; ``SpkidEmbedder`` is a loaded
spkid model (PyTorch or ONNX Runtime), and the benchmark plugs Resemblyzer in through the same door.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from spkid.audio.bandwidth import band_powers, loud_and_quiet, speech_band_edge
from spkid.audio.frontend import active_level, level_gain, remove_dc
from spkid.audio.vad import VadConfig, segments_from_probs
from spkid.diarization import cluster as C
from spkid.diarization.names import MARGIN_LLR, MARGIN_LLR_TELEPHONE, Enrolled
from spkid.diarization.overlap import regions, shipped_detector
from spkid.diarization.rttm import Segment
from spkid.diarization.stream import (SAMPLE_RATE, AudioStream, release_free_heap, speech_probs_stream,
                                      windows_over)
from spkid.errors import ConfigError, DataError
from spkid.training.checkpoint import TUNED

METHODS = ("ahc", "spectral")
SPEECH_THRESHOLD = 0.3           # Silero's probability from which a frame is speech, here: its usual 0.5 missed the
                                 # speech that room and noise cover (9.6 % of FSDD's on the full set, 7.1 % at 0.3);
                                 # 0.3 scored lower DER on 67 test conversations and monologues, higher on 42, with the
                                 # count found (docs/diarization.md); clips for enroll / identify keep 0.5

_TYPE_WORDS = {"bool": "True or False", "int": "a whole number", "float": "a finite number", "str": "a string",
               "VadConfig": "a VadConfig"}


@dataclass
class DiarizeConfig:
    """Settings of ``diarize`` (times in seconds).

    ``threshold`` is the cosine distance at which AHC stops merging (and below which ``spectral``'s clusters are
    merged), calibrated on development conversations (docs/diarization.md); ``same_speaker`` the margin of the
    same-speaker merge that keeps a one-speaker recording whole (0: off); ``hmm`` turns on the VBx-style
    refinement, ``refine`` the finer boundaries.
    """

    window_s: float = 1.5
    hop_s: float = 0.75
    min_window_s: float = 0.4        # shorter speech gets no window of its own (it takes its nearest window's label)
    block_s: float = 300.0           # audio decoded per block: memory per block is 4 bytes x 16000 x block_s
    batch: int = 64                  # windows per embedding batch
    method: str = "spectral"         # ahc's count collapsed to 2 on the test conversations (docs/diarization.md)
    threshold: float = 1.0           # in the centred space: below it spectral's clusters merge (docs/diarization.md)
    same_speaker: float = 0.0        # > 0: merge clusters the recording scores as one speaker within this margin
                                     # (cluster.merge_same_speaker; 0.08 keeps monologues whole more often but cost
                                     # 2-8 DER points on the test conversations: off)
    settled_s: float = 15.0          # two clusters that each hold settled_s / hop_s windows (20: about 15 s of speech)
    settled_threshold: float = 0.5   # are "settled": they merge only below this centred distance (a long recording's
                                     # speakers stay apart); the lower of it and `threshold` applies (spectral only)
    merge_raw: float = 0.88          # > 0: then clusters whose UNcentred mean embeddings have a cosine above this merge
                                     # (a recording of one speaker: centring removes the speaker and the rest splits);
                                     # tuned for the base model (docs/diarization.md; another model's own: spkid
                                     # tune-diarization, model_config); 0: off
    raw_settled_s: float = 45.0      # ... but two clusters that each hold raw_settled_s / hop_s windows only above
    merge_raw_settled: float = 0.92  # this cosine (a telephone channel pulls every raw cosine up); the higher of it
                                     # and `merge_raw` applies
    short_speech_s: float = 20.0     # a recording with less speech than this merges from `merge_raw` minus
    short_merge_drop: float = 0.04   # this cosine: the mean of a few windows scores lower against another such mean
                                     # than long clusters of one voice do, and 5-12 s of one voice came out as two
                                     # speakers in most clips (docs/diarization.md, "Short clips of one voice");
                                     # 0: off
    resplit: float = 0.75            # > 0: then each cluster of resplit_s of speech is clustered again around its own
    resplit_s: float = 9.0           # mean and split where its parts' uncentred means have a cosine below `resplit`
                                     # (one dominant speaker leaves the others together; cluster.split_recentred);
                                     # tuned for the base model (docs/diarization.md); resplit 0: off; spectral only,
                                     # not with a given number of speakers
    max_points: int = 2000           # clustering sees at most this many points (averages of consecutive windows)
    hmm: bool = True
    hmm_scale: float = 12.0
    hmm_loop: float = 0.9
    centre: bool = True              # subtract the recording's mean embedding before clustering (what all share)
    refine: bool = True
    refine_window_s: float = 1.0
    refine_step_s: float = 0.15
    overlap: bool = True             # the overlap detector (spkid/diarization/overlap.py): where it finds two voices,
                                     # the second speaker is added (the nearest turn of another speaker)
    overlap_threshold: float = 0.8   # its probability from which a second speaker is given (dev conversations)
    overlap_threshold_narrowband: float = 0.9   # ... in a narrowband recording (telephone): the detector is less
                                     # precise there (docs/diarization.md)
    band_limit: bool = True          # where the speech ends below 6 kHz and only noise lies above (a voice recorded at
                                     # 8 kHz, noise added at 16 kHz), the file is heard low-passed there: speech
                                     # detection, embeddings, overlap detector (audio.bandwidth; docs/diarization.md)
    name_split_s: float = 4.5        # with a registry: a cluster whose windows score best against several enrolled
                                     # speakers, each for this much (name_split_s / hop_s windows), is split where at
                                     # least two parts are named (names.Enrolled.split); 0: off; not with a given
                                     # number of speakers
    name_margin: float = MARGIN_LLR  # with a registry: a cluster takes its best enrolled name only that many natural-log
                                     # likelihood-ratio units above its second best (1.0: e^1 = 2.7x likelier; a registry
                                     # without a score calibration: 0.05 cosine per unit; names.Enrolled); lower names
                                     # more speech and more of it wrongly (docs/diarization.md)
    name_margin_telephone: float = MARGIN_LLR_TELEPHONE   # ... for a speaker named against the telephone copies
    vad: VadConfig = field(default_factory=lambda: VadConfig(threshold=SPEECH_THRESHOLD))

    def __post_init__(self):
        self._check_types()                 # first the types, then each range (NaN fails those), then what is left
        if self.method not in METHODS:
            raise ConfigError(f"diarize method {self.method!r} unknown; choose one of {', '.join(METHODS)}")
        if not 0 < self.hop_s <= self.window_s or self.min_window_s > self.window_s or self.min_window_s <= 0:
            raise ConfigError(f"diarize windows: need 0 < hop_s <= window_s and 0 < min_window_s <= window_s, got "
                              f"{self.hop_s}, {self.window_s}, {self.min_window_s}")
        if self.block_s < 10 * self.window_s or self.batch < 1 or self.max_points < 2:
            raise ConfigError(f"diarize: need block_s >= 10 windows, batch >= 1, max_points >= 2; got {self.block_s}, "
                              f"{self.batch}, {self.max_points}")
        for name in ("overlap_threshold", "overlap_threshold_narrowband"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"diarize {name} {getattr(self, name)}: a probability in (0, 1)")
        if not 0 <= self.merge_raw < 1:
            raise ConfigError(f"diarize merge_raw {self.merge_raw}: a cosine in [0, 1) (0: off)")
        if not 0 < self.threshold < 2:
            raise ConfigError(f"diarize threshold {self.threshold}: a cosine distance in (0, 2)")
        if not (self.settled_s >= 0 and self.raw_settled_s >= 0 and 0 < self.settled_threshold < 2):   # NaN too
            raise ConfigError(f"diarize settled clusters: need settled_s, raw_settled_s >= 0 and 0 < settled_threshold "
                              f"< 2, got {self.settled_s}, {self.raw_settled_s}, {self.settled_threshold}")
        if not (0 <= self.resplit < 1 and 0 <= self.resplit_s < float("inf")):
            raise ConfigError(f"diarize resplit {self.resplit}, resplit_s {self.resplit_s}: need a cosine in [0, 1) "
                              "(0: off) and finite seconds >= 0")
        if not 0 <= self.name_split_s < float("inf"):
            raise ConfigError(f"diarize name_split_s {self.name_split_s}: finite seconds >= 0 (0: off)")
        for name in ("name_margin", "name_margin_telephone"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ConfigError(f"diarize {name} {getattr(self, name)}: natural-log likelihood-ratio units, finite "
                                  "and >= 0")
        if not 0 <= self.merge_raw_settled < 1:
            raise ConfigError(f"diarize merge_raw_settled {self.merge_raw_settled}: a cosine in [0, 1)")
        if not (0 <= self.short_merge_drop < 1 and 0 <= self.short_speech_s < float("inf")):
            raise ConfigError(f"diarize short_merge_drop {self.short_merge_drop}, short_speech_s {self.short_speech_s}: "
                              "need a cosine in [0, 1) (0: off) and finite seconds >= 0")
        if not (self.hmm_scale > 0 and 0 < self.hmm_loop < 1):
            raise ConfigError(f"diarize hmm_scale {self.hmm_scale}, hmm_loop {self.hmm_loop}: need a scale > 0 and a "
                              "loop probability in (0, 1)")
        if not (self.refine_step_s > 0 and self.refine_window_s > 0):
            raise ConfigError(f"diarize refine_step_s {self.refine_step_s}, refine_window_s {self.refine_window_s}: "
                              "both seconds > 0")
        for f in fields(self):              # numbers without a range of their own above (block_s, min_window_s, ...)
            v = getattr(self, f.name)
            if f.type == "float" and not (np.isfinite(v) or (f.name in ("settled_s", "raw_settled_s") and v > 0)):
                raise ConfigError(f"diarize {f.name} {v!r}: must be {_TYPE_WORDS[f.type]}")
        self.vad.validate()

    def _check_types(self) -> None:
        """Each setting of its field's type: ``ConfigError`` naming it otherwise (numbers for ``float`` fields,
        whole numbers for ``int`` ones, ``True``/``False`` for ``bool`` ones, not numbers). Finite numbers are
        checked after the ranges: all must be, but for the two ``*settled_s`` (infinite: no cluster is ever
        settled)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                ok = isinstance(v, bool)
            elif f.type == "int":
                ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
            elif f.type == "float":
                ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            elif f.type == "str":
                ok = isinstance(v, str)
            elif f.type == "VadConfig":
                ok = isinstance(v, VadConfig)
            else:                                      # a new field needs its check here
                raise TypeError(f"DiarizeConfig.{f.name}: no type check for {f.type!r}")
            if not ok:
                raise ConfigError(f"diarize {f.name} {v!r}: must be {_TYPE_WORDS[f.type]}")


Embedder = Callable[[list[np.ndarray]], np.ndarray]   # 16 kHz waveforms [(S_i,)] -> embeddings (B, E)


def model_config(embedder: Embedder, **given) -> DiarizeConfig:
    """``DiarizeConfig`` of ``given`` settings (None: not given), the cosines the embedder's model carries
    (``tuned``: its checkpoint's ``diarization`` entry, written by ``spkid tune-diarization``) where they are not
    given, and the defaults (tuned for ``base``) for the rest."""
    own = getattr(embedder, "tuned", None) or {}
    return DiarizeConfig(**{**own, **{k: v for k, v in given.items() if v is not None}})


class SpkidEmbedder:
    """A loaded ``spkid.Model`` as an ``Embedder``: the model's log-mel front end on the batch, then its network
    (eager PyTorch or ONNX Runtime, whichever the model was loaded with)."""

    def __init__(self, model):
        from spkid.audio.frontend import frontend_for
        if model.cfg.features.sample_rate != SAMPLE_RATE:
            raise ConfigError(f"{model.path}: diarization needs a 16 kHz model, this one is "
                              f"{model.cfg.features.sample_rate} Hz")
        self.model = model
        self.frontend = frontend_for(model.cfg.features)
        self.model_id = model.model_id
        self.conditions_audio = model.conditions_audio      # the file's level is set (``Analysis.gain``)
        self.tuned = {k: v for k, v in model.diarization.items() if k in TUNED}   # its own cosines, or {}

    @torch.no_grad()
    def __call__(self, wavs: list[np.ndarray]) -> np.ndarray:
        lengths = torch.tensor([w.size for w in wavs])
        x = torch.zeros(len(wavs), int(lengths.max()))
        for i, w in enumerate(wavs):
            x[i, : w.size] = remove_dc(torch.from_numpy(w)) if self.conditions_audio else torch.from_numpy(w)
        feats, n = self.frontend(x, lengths)                                   # (B, S) -> (B, T, F)
        return self.model.embed_raw([f[:k] for f, k in zip(feats, n.tolist())]).numpy()


@dataclass
class FileDiarization:
    """One file's result: ``segments`` (time order), ``duration`` and ``speech`` in seconds, ``n_windows``,
    ``cluster_emb`` ``(K, E)`` (each speaker's mean window embedding, in label order), ``warning`` (None, or why
    the file has no segments, or that it has fewer speakers than asked), ``narrowband`` (most of the file is a
    telephone band: a registry without telephone copies of every speaker is warned about)."""

    segments: list[Segment]
    duration: float
    speech: float
    n_windows: int
    cluster_emb: np.ndarray
    labels: list[str]
    warning: str | None = None
    narrowband: bool = False


@dataclass
class Analysis:
    """What the speech and embedding passes found in one file: ``duration`` (s), ``speech`` segments
    ``[(start, end)]`` and windows ``win`` ``(W, 2)`` in 16 kHz samples, window embeddings ``emb`` ``(W, E)``, and
    the overlap detector's probability per 20 ms frame ``overlap`` ``(F,)`` (None when ``cfg.overlap`` is off),
    whether most of the file is ``narrowband`` (``stream.speech_probs_stream``), and the ``gain`` its audio is
    embedded with: what brings the level of its speech into the model's training range (``audio.frontend.set_level``;
    one gain for the whole file, so that speakers keep their relative levels), 1 for an embedder that keeps its own
    front end."""

    path: Path
    duration: float
    speech: list[tuple[int, int]]
    win: np.ndarray
    emb: np.ndarray
    overlap: np.ndarray | None = None
    narrowband: bool = False
    gain: float = 1.0
    band_hz: float | None = None

    @property
    def speech_s(self) -> float:
        return sum(e - s for s, e in self.speech) / SAMPLE_RATE


def analyse(stream: AudioStream, embedder: Embedder, cfg: DiarizeConfig, progress=None) -> Analysis:
    """Passes 1 and 2: speech detection, then the window embeddings (none when no window fits the speech).
    Raises ``DataError`` for a file shorter than one window."""
    if stream.duration < cfg.window_s:
        raise DataError(f"{stream.path}: {stream.duration:.2f} s of audio is shorter than one {cfg.window_s:g} s "
                        "window")
    band = None
    if cfg.band_limit:        # where the first block's speech ends, if only noise lies above: the file is cut there
        powers = band_powers(stream.read(0, min(stream.n_samples, _n(cfg.block_s))))
        band = speech_band_edge(powers, *loud_and_quiet(powers))
        stream.low_pass(band)
    sp = speech_probs_stream(stream, cfg.block_s, threads=cfg.vad.threads, progress=progress)
    probs = sp.probs
    narrow = sp.narrow_s > stream.duration / 2
    speech = segments_from_probs(probs, stream.n_samples, cfg.vad)
    n = min(probs.size, sp.power.size)
    gain = level_gain(active_level(sp.power[:n][probs[:n] >= cfg.vad.threshold])) \
        if getattr(embedder, "conditions_audio", False) else 1.0
    win = windows_over(speech, _n(cfg.window_s), _n(cfg.hop_s), _n(cfg.min_window_s))
    if len(win) == 0:
        if progress is not None:
            progress(stream.duration)
        return Analysis(stream.path, stream.duration, speech, win, np.zeros((0, 0), dtype=np.float32),
                        narrowband=narrow, gain=gain, band_hz=band)
    emb = _embed_windows(stream, win, embedder, cfg, progress, gain)
    ovl = shipped_detector().probs(stream, speech) if cfg.overlap else None
    return Analysis(stream.path, stream.duration, speech, win, emb, ovl, narrow, gain, band)


def decide(a: Analysis, stream: AudioStream | None, embedder: Embedder | None, cfg: DiarizeConfig, *,
           n_speakers: int | None = None, min_speakers: int = 1, max_speakers: int | None = None,
           enrolled: Enrolled | None = None, stages: dict[str, int] | None = None) -> FileDiarization:
    """Passes 3 and 4: cluster the windows (with ``enrolled`` speakers, a cluster holding several of them is split:
    ``cfg.name_split_s``), place the boundaries (refined when ``cfg.refine`` and a ``stream`` and ``embedder`` are
    given), cut the speech into speaker turns. ``stages``, when given, receives the number of speakers after each
    clustering step (``_cluster``)."""
    if len(a.win) == 0:
        why = (f"{a.path}: no speech found" if not a.speech else
               f"{a.path}: only {a.speech_s:.2f} s of speech, in pieces shorter than {cfg.min_window_s:g} s")
        return FileDiarization([], a.duration, a.speech_s, 0, np.zeros((0, 0)), [], why + "; empty result",
                               a.narrowband)
    release_free_heap()                             # the passes' freed buffers, before the clustering's (N, N) ones
    mu = C._unit(a.emb).mean(0) if cfg.centre else np.zeros(a.emb.shape[1])
    x = _space(a.emb, mu)
    labels = _cluster(x, a.win, cfg, n_speakers, min_speakers, max_speakers, a.emb, stages,
                      short=a.speech_s < cfg.short_speech_s)
    if enrolled is not None and cfg.name_split_s > 0 and n_speakers is None:
        labels = enrolled.split(a.emb, labels, max(1, int(round(cfg.name_split_s / cfg.hop_s))), max_speakers)
        if stages is not None:
            stages["name_split"] = int(labels.max()) + 1
    cents = C.centroids(x, labels)
    refine = cfg.refine and stream is not None and embedder is not None
    if refine:
        stream.low_pass(a.band_hz)                  # the windows were heard so
    bounds = _boundaries(stream, a.win, labels, cents, embedder, cfg, refine, mu, a.gain)
    segments = _segments(a.path.stem, a.speech, a.win, labels, bounds, x, cents)
    if cfg.overlap and a.overlap is not None:
        thr = cfg.overlap_threshold_narrowband if a.narrowband else cfg.overlap_threshold
        segments = _second_speakers(segments, regions(a.overlap, thr), a.speech)
    names = [f"SPEAKER_{k:02d}" for k in range(len(cents))]
    segments = [Segment(s.file, s.start, s.end, names[int(s.speaker)], s.score) for s in segments]
    mean_raw = np.stack([a.emb[labels == k].mean(0) for k in range(len(cents))])
    want = max(n_speakers or 0, min_speakers)
    fewer = (f"{a.path}: {len(cents)} speaker(s) found where {'' if n_speakers else 'at least '}{want} were asked "
             f"(from {len(a.win)} window(s) of speech, {a.speech_s:.1f} s)") if len(cents) < want else None
    return FileDiarization(segments, a.duration, a.speech_s, len(a.win), mean_raw, names, fewer, a.narrowband)


def diarize_file(path: str | Path, embedder: Embedder, cfg: DiarizeConfig | None = None, *,
                 n_speakers: int | None = None, min_speakers: int = 1, max_speakers: int | None = None,
                 progress: Callable[[float], None] | None = None, enrolled: Enrolled | None = None
                 ) -> FileDiarization:
    """Diarize one audio file (segments labelled ``SPEAKER_00``, ``SPEAKER_01``, ... in order of first speech).

    ``progress(seconds)`` is called as audio is processed (about 2x the file's duration in all: the speech pass
    and the embedding pass). Raises ``DataError`` for an undecodable file or one shorter than a window."""
    cfg = cfg or model_config(embedder)
    check_counts(n_speakers, min_speakers, max_speakers)
    with AudioStream(path) as stream:
        a = analyse(stream, embedder, cfg, progress)
        return decide(a, stream, embedder, cfg, n_speakers=n_speakers, min_speakers=min_speakers,
                      max_speakers=max_speakers, enrolled=enrolled)


def _space(emb: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Embeddings ``(N, E)`` in the clustering space: L2-normalised, minus the recording's mean ``mu``, again
    L2-normalised."""
    return C._unit(C._unit(emb) - mu)


def _n(seconds: float) -> int:
    return int(round(seconds * SAMPLE_RATE))


def check_counts(n: int | None, lo: int, hi: int | None) -> None:
    """``ConfigError`` (one line) unless ``n`` >= 1 and 1 <= ``lo`` <= ``hi`` (where given), each a whole number,
    and not ``n`` with bounds (a given count would leave them unused)."""
    for flag, v in (("--num-speakers", n), ("--min-speakers", lo), ("--max-speakers", hi)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer))):
            raise ConfigError(f"{flag} {v!r}: a whole number of speakers")
    if n is not None and (lo != 1 or hi is not None):
        raise ConfigError("diarize: give --num-speakers or --min-speakers/--max-speakers, not both")
    if n is not None and n < 1:
        raise ConfigError(f"--num-speakers {n}: must be >= 1")
    if lo < 1 or (hi is not None and hi < lo):
        raise ConfigError(f"--min-speakers {lo} / --max-speakers {hi}: need 1 <= min <= max")


def _embed_windows(stream: AudioStream, win: np.ndarray, embedder: Embedder, cfg: DiarizeConfig,
                   progress, gain: float = 1.0) -> np.ndarray:
    """Embeddings ``(W, E)`` of windows ``win`` ``(W, 2)`` (samples, sorted) of the audio times ``gain``, decoding
    block by block; a window across two blocks waits for the next one (the unfinished tail is kept)."""
    out: np.ndarray | None = None                  # (W, E), allocated at the first batch: no list, no concatenation
    i, n = 0, len(win)
    tail, tail_start = np.zeros(0, dtype=np.float32), 0
    for start, wav in stream.blocks(cfg.block_s):
        wav = wav * np.float32(gain) if gain != 1.0 else wav
        buf = np.concatenate([tail, wav]) if tail.size else wav
        buf_start = start - tail.size
        end = start + wav.size
        j = i
        while j < n and win[j, 1] <= end:
            j += 1
        for a in range(i, j, cfg.batch):
            idx = range(a, min(a + cfg.batch, j))
            e = np.asarray(embedder([buf[win[k, 0] - buf_start: win[k, 1] - buf_start] for k in idx]),
                           dtype=np.float32)
            if out is None:
                out = np.empty((n, e.shape[1]), dtype=np.float32)
            out[idx.start: idx.stop] = e
        i = j
        keep_from = win[i, 0] if i < n else end
        tail = buf[max(keep_from, buf_start) - buf_start:].copy()
        if progress is not None:
            progress(wav.size / SAMPLE_RATE)
        if i >= n:
            break
    if out is None or i < n:       # windows lie on the detected speech, inside the file: the blocks reach them all
        raise DataError(f"{stream.path}: the audio ended after {i} of {n} windows (a file that changed while read?)")
    return out


def _cluster(x: np.ndarray, win: np.ndarray, cfg: DiarizeConfig, n_speakers, min_speakers, max_speakers,
             raw: np.ndarray, stages: dict[str, int] | None = None, *, short: bool = False) -> np.ndarray:
    """Window labels ``(W,)`` 0..K-1: cluster (representatives of a long file) the centred windows ``x`` (spectral's
    clusters merged below ``cfg.threshold``, or ``cfg.settled_threshold`` between two clusters that each hold
    ``cfg.settled_s`` of speech), split a cluster again around its own mean where its parts are clearly apart
    (``cfg.resplit``), merge the clusters whose uncentred ``raw`` ``(W, E)`` means have a cosine above
    ``cfg.merge_raw`` (less ``cfg.short_merge_drop`` in a ``short`` recording, one of under ``cfg.short_speech_s`` of
    speech; ``cfg.merge_raw_settled`` between two of ``cfg.raw_settled_s``; and, with
    ``cfg.same_speaker``, what the recording calls one speaker), then the HMM over all windows. ``stages``, when
    given, receives the number of speakers after each step that ran (``spectral``/``ahc``, ``merge``, ``resplit``,
    ``raw_merge``, ``same_speaker``, ``hmm``; benchmarks/diarization_stages.py)."""
    def note(step: str, lab: np.ndarray) -> None:
        if stages is not None:
            stages[step] = int(lab.max()) + 1

    settled = {"settled": cfg.settled_s / cfg.hop_s, "settled_threshold": min(cfg.settled_threshold, cfg.threshold)}
    reps, group = C.compact(x, cfg.max_points)
    if cfg.method == "ahc":
        rl = C.ahc(reps, cfg.threshold, n_speakers=n_speakers, min_speakers=min_speakers, max_speakers=max_speakers)
        note("ahc", rl)
    else:
        rl = C.spectral(reps, n_speakers=n_speakers, min_speakers=min_speakers, max_speakers=max_speakers,
                        restarts=C.RESTARTS_COUNT_GIVEN if n_speakers else 1)
        note("spectral", rl)
        if n_speakers is None:
            rl = C.merge_close(reps, rl, cfg.threshold, min_speakers, weights=np.bincount(group, minlength=len(reps)),
                               **settled)
            note("merge", rl)
    labels = rl[group]
    if cfg.resplit > 0 and cfg.method == "spectral" and n_speakers is None:
        labels = C.split_recentred(raw, labels, cfg.resplit, int(round(cfg.resplit_s / cfg.hop_s)), cfg.threshold,
                                   **settled, max_points=cfg.max_points, max_speakers=max_speakers)
        note("resplit", labels)
    if cfg.merge_raw > 0 and n_speakers is None:
        merge_raw = max(cfg.merge_raw - (cfg.short_merge_drop if short else 0.0), 0.0)
        labels = C.merge_close(C._unit(raw), labels, 1.0 - merge_raw, min_speakers,
                               settled=cfg.raw_settled_s / cfg.hop_s,
                               settled_threshold=1.0 - max(cfg.merge_raw_settled, cfg.merge_raw))
        note("raw_merge", labels)
    if cfg.same_speaker > 0 and n_speakers is None:
        labels = C.merge_same_speaker(raw, labels, cfg.same_speaker, min_speakers)
        note("same_speaker", labels)
    if cfg.hmm:
        gaps = win[1:, 0] > win[:-1, 1]                                     # a pause between two windows
        labels = C.hmm_resegment(x, labels, gaps=gaps, scale=cfg.hmm_scale, loop=cfg.hmm_loop,
                                 min_speakers=min_speakers, n_speakers=n_speakers)
        note("hmm", labels)
    return C.relabel(labels)


def _boundaries(stream: AudioStream | None, win: np.ndarray, labels: np.ndarray, cents: np.ndarray,
                embedder: Embedder | None, cfg: DiarizeConfig, refine: bool, mu: np.ndarray,
                gain: float = 1.0) -> dict[int, int]:
    """``{t: sample}``: where speech passes from window ``t``'s speaker to window ``t+1``'s, for each change between
    overlapping windows (without ``refine``: halfway between the window centres)."""
    out = {}
    centre = win.mean(1)
    for t in np.flatnonzero((labels[1:] != labels[:-1]) & (win[1:, 0] < win[:-1, 1])):
        a, b = int(centre[t]), int(centre[t + 1])
        out[int(t)] = (a + b) // 2
        if not refine:
            continue
        half, step = _n(cfg.refine_window_s) // 2, _n(cfg.refine_step_s)
        lo, hi = max(a - _n(cfg.hop_s) // 2, win[t, 0] + half), min(b + _n(cfg.hop_s) // 2, win[t + 1, 1] - half)
        points = np.arange(lo, hi + 1, step)
        if len(points) < 3:
            continue
        audio = stream.read(int(points[0]) - half, int(points[-1]) + half) * np.float32(gain)
        wavs = [audio[p - points[0]: p - points[0] + 2 * half] for p in points]
        raw = C._unit(np.concatenate([embedder(wavs[i: i + cfg.batch]) for i in range(0, len(wavs), cfg.batch)]))
        e = _space(raw, mu)
        d = e @ cents[labels[t]] - e @ cents[labels[t + 1]]                 # > 0: sounds like the first speaker
        # split after point j: evidence for the first speaker before, for the second after
        evidence = np.cumsum(d)[:-1] - (d.sum() - np.cumsum(d)[:-1])
        j = int(np.argmax(evidence))
        out[int(t)] = int((points[j] + points[j + 1]) // 2)
    return out


def _segments(stem: str, speech, win: np.ndarray, labels: np.ndarray, bounds: dict[int, int], x: np.ndarray,
              cents: np.ndarray) -> list[Segment]:
    """Speaker turns: each speech segment split where its windows change speaker (at ``bounds``); speech without a
    window of its own takes the label of the nearest window. Score: the turn's windows' mean cosine to the speaker's
    centre. Labels are returned as strings of the cluster index."""
    centre = win.mean(1)
    sim = (x * cents[labels]).sum(1)                                            # (W,) cosine to own centre
    out: list[Segment] = []
    for s, e in speech:
        inside = np.flatnonzero((win[:, 0] >= s) & (win[:, 1] <= e))
        if inside.size == 0:
            t = int(np.argmin(np.abs(centre - (s + e) / 2)))
            out.append(Segment(stem, s / SAMPLE_RATE, e / SAMPLE_RATE, str(labels[t]), float(sim[t])))
            continue
        start, first = s, inside[0]
        for t in inside[:-1]:
            if labels[t + 1] != labels[t]:
                cut = min(max(bounds.get(int(t), int(centre[t] + centre[t + 1]) // 2), start), e)
                out.append(_turn(stem, start, cut, labels[t], sim[first: t + 1]))
                start, first = cut, t + 1
        out.append(_turn(stem, start, e, labels[inside[-1]], sim[first: inside[-1] + 1]))
    return _merge([seg for seg in out if seg.end > seg.start])


def _second_speakers(segs: list[Segment], stretches: list[tuple[float, float]],
                     speech: list[tuple[int, int]]) -> list[Segment]:
    """``segs`` plus a second speaker over each overlap stretch ``(start_s, end_s)`` (cut to the detected speech):
    under each turn the stretch crosses, the speaker of the nearest turn of another speaker (before or after; at a
    change of speaker, the other side's). Its score is that turn's."""
    extra = []
    for a, b in stretches:
        for s0, e0 in speech:
            lo, hi = max(a, s0 / SAMPLE_RATE), min(b, e0 / SAMPLE_RATE)
            if hi <= lo:
                continue
            for cur in [s for s in segs if s.start < hi and s.end > lo]:
                p0, p1 = max(lo, cur.start), min(hi, cur.end)
                others = [s for s in segs if s.speaker != cur.speaker]
                if others:
                    near = min(others, key=lambda s: max(s.start - p1, p0 - s.end, 0.0))
                    extra.append(Segment(cur.file, p0, p1, near.speaker, near.score))
    return _merge(segs + extra) if extra else segs


def _merge(segs: list[Segment]) -> list[Segment]:
    """Touching or overlapping turns of one speaker joined (score: the longer one's); time order."""
    out: list[Segment] = []
    for s in sorted(segs, key=lambda s: (s.speaker, s.start)):
        if out and out[-1].speaker == s.speaker and s.start <= out[-1].end + 1e-6:
            keep = out[-1] if out[-1].duration >= s.duration else s
            out[-1] = Segment(s.file, out[-1].start, max(out[-1].end, s.end), s.speaker, keep.score)
        else:
            out.append(s)
    return sorted(out, key=lambda s: (s.start, s.speaker))


def _turn(stem: str, a: int, b: int, label: int, sims: np.ndarray) -> Segment:
    return Segment(stem, a / SAMPLE_RATE, b / SAMPLE_RATE, str(int(label)), float(np.mean(sims)))


__all__ = ["DiarizeConfig", "SpkidEmbedder", "Analysis", "FileDiarization", "analyse", "decide", "diarize_file",
           "METHODS"]

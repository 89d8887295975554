"""A model's own diarization cosines: ``spkid tune-diarization``.

Two of ``diarize``'s settings live in a model's *uncentred* embedding space: ``merge_raw`` (two clusters whose
mean embeddings score a cosine above it are one speaker: what keeps a recording of one speaker whole) and
``resplit`` (a cluster's parts stay apart below it). Their defaults were tuned for the shipped ``base``; another
model (trained longer, with another head, imported) scores other cosines, and at ``base``'s values splits
monologues or joins voices (docs/diarization.md, "Another model's own cosines").

``tune`` builds development recordings from speakers the user names (a folder per speaker) and/or synthetic
voices (``spkid.audio.synth``, seeds no benchmark uses): conversations of 2-5 of them (1-2 minutes, up to 15 % of
the speech overlapped, ``simulate.build_conversation``) and monologues of one (60 s), analyses each once with the
model (speech, window embeddings, overlap detector), then clusters the same analyses with every pair of the grid
and keeps the pair with the lowest DER (±0.25 s collar, overlap scored) of conversations and monologues scored
together. ``write_tuned`` stores it in a copy of the checkpoint (``ckpt["diarization"]``); ``diarize`` uses it
unless told otherwise (``pipeline.model_config``).
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf

from spkid.diarization.evaluate import score_diarization
from spkid.diarization.pipeline import Analysis, DiarizeConfig, analyse, decide
from spkid.diarization.rttm import Segment
from spkid.diarization.simulate import SAMPLE_RATE, build_conversation, speech_span
from spkid.diarization.stream import AudioStream
from spkid.errors import DataError

# the grids: wide enough for models whose raw cosines run far lower (a margin head) or higher than base's
MERGE_RAW = (0.0, 0.60, 0.70, 0.75, 0.80, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96)
RESPLIT = (0.0, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85)
SYNTH_SEED = 9300                # synthetic voices of their own (the benchmark's test voices are 9100, dev 9200)
MAX_CLIPS = 12                   # clips read per speaker folder (a conversation needs a few turns of each voice)

Utterance = tuple[np.ndarray, list[tuple[int, int]]]       # a 16 kHz clip (S,) trimmed to its speech, and the speech
Speakers = dict[str, Callable[[], list[Utterance]]]         # speaker -> what reads their utterances


@dataclass
class Recording:
    """A development recording: its ``reference`` turns, the number of ``speakers`` and its ``analysis``."""

    name: str
    kind: str                    # "conversation" or "monologue"
    reference: list[Segment]
    speakers: int
    analysis: Analysis


@dataclass
class TuneResult:
    """Every pair tried (``rows``: merge_raw, resplit, DER of conversations, of monologues, of both) and the pair
    kept; ``default`` the row of ``DiarizeConfig``'s own values (tuned for ``base``)."""

    rows: list[dict]
    best: dict
    default: dict
    note: str                    # what the recordings were: stored with the pair


def folder_speakers(folders: list[str | Path], max_clips: int = MAX_CLIPS) -> Speakers:
    """Speakers of ``folders`` (each holding a folder of audio clips per speaker, as for ``spkid enroll`` or
    training), read only when a recording needs them: ``"folder/speaker"`` -> up to ``max_clips`` clips."""
    from spkid.audio.io import AUDIO_EXTENSIONS
    out: Speakers = {}
    for root in map(Path, folders):
        if not root.is_dir():
            raise DataError(f"{root}: not a folder (give folders holding a folder of audio clips per speaker)")
        for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            clips = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)[:max_clips]
            if clips:
                out[f"{root.name}/{d.name}"] = partial(_clips, d, clips)
    return out


def _clips(folder: Path, clips: list[Path]) -> list[Utterance]:
    from spkid.audio.io import load_audio
    spans = [speech_span(load_audio(f).numpy()) for f in clips]
    spans = [s for s in spans if s[0].size >= SAMPLE_RATE // 2]
    if not spans:
        raise DataError(f"{folder}: no clip with at least 0.5 s of speech (remove the folder or add clips)")
    return spans


def synthetic_speakers(n: int, seed: int = SYNTH_SEED) -> Speakers:
    """``n`` synthetic voices (``spkid.audio.synth``), six 4-s utterances each."""
    return {f"synthetic-{i:02d}": partial(_synthetic, seed, i) for i in range(n)}


def _synthetic(seed: int, i: int) -> list[Utterance]:
    from spkid.audio.synth import make_voice, synth_utterance
    voice = make_voice(np.random.default_rng([seed, i]))
    spans = [speech_span(synth_utterance(voice, np.random.default_rng([seed, i, j]), SAMPLE_RATE, 4.0))
             for j in range(6)]
    return [u for u in spans if u[0].size]


def plans(speakers: Speakers, conversations: int, monologues: int, seed: int = 0) -> list[tuple]:
    """``(name, kind, speaker names, seconds, overlap)`` of the development recordings: ``conversations`` of 2-5
    speakers (1-2 minutes) and ``monologues`` of one speaker each (60 s), speakers drawn from ``speakers``."""
    names = sorted(speakers)
    if len(names) < 2:
        raise DataError(f"tune-diarization needs at least 2 speakers, found {len(names)} (give folders holding a "
                        "folder of audio clips per speaker, or --synthetic)")
    rng = np.random.default_rng([seed, 24])
    out = []
    for k in range(conversations):
        m = int(rng.integers(2, min(5, len(names)) + 1))
        chosen = [names[i] for i in sorted(rng.choice(len(names), m, replace=False))]
        out.append((f"conversation-{k:02d}", "conversation", chosen, 60 * rng.uniform(1, 2),
                    float(rng.uniform(0.0, 0.15))))
    for k, i in enumerate(rng.choice(len(names), monologues, replace=monologues > len(names))):
        out.append((f"monologue-{k:02d}", "monologue", [names[i]], 60.0, 0.0))
    return out


def analysed(plans_: list[tuple], speakers: Speakers, embedder, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> list[Recording]:
    """Every planned recording built (each speaker's clips read once) and analysed once (written to a temporary
    folder for the streaming passes)."""
    read: dict[str, list[Utterance]] = {}
    out = []
    with tempfile.TemporaryDirectory(prefix="spkid-tune-") as tmp:
        for k, (name, kind, chosen, seconds, overlap) in enumerate(plans_):
            for s in chosen:
                if s not in read:
                    read[s] = speakers[s]()
            pool = {s: read[s] for s in chosen}
            conv = build_conversation(pool, seconds, np.random.default_rng([seed, k]), name=name, overlap=overlap)
            path = Path(tmp) / f"{name}.flac"
            sf.write(path, conv.wav, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            with AudioStream(path) as s:
                out.append(Recording(name, kind, conv.reference, len(conv.speakers), analyse(s, embedder,
                                                                                              DiarizeConfig())))
            if progress is not None:
                progress(1)
    return out


def clustered(recs: list[Recording], cfg: DiarizeConfig) -> tuple[list[Segment], list[Segment], list[bool]]:
    """``recs`` clustered with ``cfg`` (boundaries unrefined): the reference and hypothesis turns of all of them,
    and per recording whether its speaker count is wrong."""
    ref, hyp, wrong = [], [], []
    for r in recs:
        d = decide(r.analysis, None, None, cfg)
        ref += r.reference
        hyp += d.segments
        wrong.append(len(d.labels) != r.speakers)
    return ref, hyp, wrong


def sweep(recs: list[Recording], merge_raw=MERGE_RAW, resplit=RESPLIT,
          progress: Callable[[int], None] | None = None) -> list[dict]:
    """Every pair of ``merge_raw`` x ``resplit`` (the defaults otherwise) on the same analyses: per pair the DER
    and count-wrong share of the conversations, of the monologues, and the DER of all of them together."""
    base = DiarizeConfig(refine=False)
    kinds = {k: [r for r in recs if r.kind == k] for k in ("conversation", "monologue")}
    rows = []
    for mr in merge_raw:
        for rs in resplit:
            cfg = replace(base, merge_raw=mr, resplit=rs)
            row, ref, hyp = {"merge_raw": mr, "resplit": rs}, [], []
            for kind, part in kinds.items():         # each recording clustered once per pair; pooled for "all"
                r, h, wrong = clustered(part, cfg) if part else ([], [], [])
                row[kind] = (score_diarization(r, h)[-1].der_collar, float(np.mean(wrong))) if part else None
                ref += r
                hyp += h
            row["all"] = score_diarization(ref, hyp)[-1].der_collar
            rows.append(row)
            if progress is not None:
                progress(1)
    return rows


def tune(recs: list[Recording], note: str, progress: Callable[[int], None] | None = None) -> TuneResult:
    """The sweep over the grids and the pair kept: the lowest DER of all recordings together (ties: the first)."""
    d = DiarizeConfig()                     # its values are on the grids (tests/diarization/test_tune.py)
    rows = sweep(recs, MERGE_RAW, RESPLIT, progress)
    best = min(rows, key=lambda r: r["all"])
    default = next(r for r in rows if r["merge_raw"] == d.merge_raw and r["resplit"] == d.resplit)
    return TuneResult(rows, best, default, note)


def write_tuned(checkpoint: str | Path, out: str | Path, result: TuneResult) -> None:
    """A copy of ``checkpoint`` (a path or shipped name) carrying ``result``'s pair as its ``diarization`` entry;
    the weights, and so the fingerprint and every registry made with the model, stay as they were."""
    from spkid.training.checkpoint import load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(checkpoint)
    ckpt.pop("spkid")
    ckpt["diarization"] = {"merge_raw": float(result.best["merge_raw"]), "resplit": float(result.best["resplit"]),
                           "tuned_on": result.note}
    save_checkpoint(out, ckpt)


def table(result: TuneResult, top: int = 8) -> str:
    """The best ``top`` pairs and ``base``'s defaults, as a Markdown table."""
    def cell(v):
        return "—" if v is None else f"{100 * v[0]:.2f} % ({100 * v[1]:.0f} %)"
    rows = sorted(result.rows, key=lambda r: r["all"])[:top]
    if result.default not in rows:
        rows.append(result.default)
    lines = ["| merge_raw | resplit | conversations: DER (count wrong) | monologues: DER (count wrong) | all: DER |",
             "|---|---|---|---|---|"]
    for r in rows:
        tag = " (kept)" if r is result.best else " (the defaults)" if r is result.default else ""
        lines.append(f"| {r['merge_raw']:.2f}{tag} | {r['resplit']:.2f} | {cell(r['conversation'])} | "
                     f"{cell(r['monologue'])} | {100 * r['all']:.2f} % |")
    return "\n".join(lines)

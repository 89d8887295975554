"""Diarization benchmark: simulated conversations of speakers no model here trained on, scored with pyannote.metrics.

Conversations (``spkid.diarization.simulate``) are built from librispeech-sample ``test-other`` (10 speakers),
FSDD (6 speakers, 8 kHz digits) and synthetic voices (``spkid.audio.synth``, seeds no test or training uses):
2-6 speakers (the issue's range), turns of 1-15 s, pauses, 0-15 % of the speech overlapped, in three conditions:

- ``clean``;
- ``room-noise``: each speaker in a room of their own (the held-out full image-source rooms of
  ``benchmarks/degrade.py``, not the training bank), then white, pink, brown or machine noise at 5-15 dB SNR;
- ``telephone``: the clean mix through degrade.py's 8 kHz telephone (300-3400 Hz, real G.711 mu-law), written at
  8 kHz.

Each system runs as its own process over the written files (``spkid diarize``, or this script's ``--worker``
for Resemblyzer on the same pipeline), so its real-time factor and peak memory (``ru_maxrss`` of that process)
are its own. The table: DER (±0.25 s collar, overlap scored), DER (no collar), speaker-count error (share of
conversations whose count is wrong, and the mean absolute error), real-time factor and peak memory; then, with
every speaker of the corpus enrolled, the share of speech time that carries the right name and the share that
carries a wrong one (``named_shares``: compared on 10 ms frames, so overlapped speech counts for both voices).

    python benchmarks/diarization.py --checkpoint base.ckpt [--checkpoint-10min m10.ckpt] [--resemblyzer]
    python benchmarks/diarization.py ... --full                # more and longer conversations (1-10 min, one 1 h)
    python benchmarks/diarization.py ... --speaker-levels 8    # each speaker at their own level, within +-8 dB
    python benchmarks/diarization.py --calibrate --checkpoint base.ckpt   # threshold / method study on dev speakers
    python benchmarks/diarization.py --long-hours 3 --checkpoint base.ckpt   # peak memory on one long file

``--calibrate`` uses other speakers than the table (librispeech-sample train-clean-100, synthetic voices of another
seed). The first defaults were chosen there; the current merge thresholds were chosen with the test conversations
in view (docs/diarization.md says how and why).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
import degrade  # noqa: E402  (benchmarks/degrade.py: the held-out rooms, noises and telephone)

from spkid.diarization.rttm import Segment, read_rttm, write_rttm  # noqa: E402
from spkid.diarization.simulate import build_conversation, speech_span  # noqa: E402
from spkid.fileio import atomic_write  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SR = 16000
CONDITIONS = ("clean", "room-noise", "telephone")
RESEMBLYZER_THRESHOLD = 1.0      # merge distance (centred), and no raw merge: its best, chosen as spkid's (docs)
RESEMBLYZER_SETTLED_S = 0.0      # the settled-cluster rule off: its development conversations say so (docs)
RESEMBLYZER_RESPLIT = 0.0        # no re-split, as no raw merge: 0.75 is a cosine of the base model's space


# ---------------------------------------------------------------- speakers

def _load(path) -> np.ndarray:
    from spkid.audio.io import load_audio
    return load_audio(path).numpy()


def pools(corpus: str, *, enroll: int = 0, seed: int = 0) -> tuple[dict, dict]:
    """``(conversation pools, enrollment files)``: speaker -> [(wav, speech segments)] for building conversations,
    and speaker -> [paths or waveforms] kept apart for enrollment (``enroll`` per speaker)."""
    conv, held = {}, {}
    if corpus in ("libri", "libri-dev"):
        root = SHARED / "librispeech-sample" / ("test-other" if corpus == "libri" else "train-clean-100")
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(d.glob("*.opus"))
            held[d.name] = files[len(files) - enroll:] if enroll else []
            conv[d.name] = [speech_span(_load(f)) for f in files[: len(files) - enroll]]
    elif corpus == "fsdd":
        rng = np.random.default_rng(seed)
        for d in sorted(p for p in (SHARED / "fsdd").iterdir() if p.is_dir()):
            files = sorted(d.glob("*.flac"))
            pick = [files[i] for i in rng.choice(len(files), 60 + 4 * enroll, replace=False)]
            held[d.name] = [_digits(pick[k: k + 4])[0] for k in range(60, 60 + 4 * enroll, 4)]
            conv[d.name] = [_digits(pick[k: k + 4]) for k in range(0, 60, 4)]
    elif corpus in ("synth", "synth-dev"):
        from spkid.audio.synth import make_voice, synth_utterance
        base = 9100 if corpus == "synth" else 9200
        for i in range(12 if corpus == "synth" else 16):
            voice = make_voice(np.random.default_rng([base, i]))
            utts = [synth_utterance(voice, np.random.default_rng([base, i, j]), SR, 4.0) for j in range(6 + enroll)]
            conv[f"syn{i:02d}"] = [speech_span(u) for u in utts[:6]]
            held[f"syn{i:02d}"] = utts[6:]
    else:
        raise ValueError(corpus)
    return {k: [u for u in v if u[0].size] for k, v in conv.items()}, held


def _digits(files) -> tuple[np.ndarray, list]:
    """Four spoken digits of one FSDD speaker as one utterance (0.15 s between them)."""
    gap = np.zeros(int(0.15 * SR), dtype=np.float32)
    return speech_span(np.concatenate([x for f in files for x in (_load(f), gap)]))


# ---------------------------------------------------------------- conversations

def conversations(corpus: str, n: int, minutes: tuple[float, float], seed: int, max_speakers: int = 6):
    """``n`` (name, pool subset, seconds, overlap) plans of one corpus."""
    rng = np.random.default_rng([seed, len(corpus)])
    pool, _ = pools(corpus, seed=seed)
    names = sorted(pool)
    plans = []
    for k in range(n):
        m = int(rng.integers(2, min(max_speakers, len(names)) + 1))
        chosen = [names[i] for i in rng.choice(len(names), m, replace=False)]
        plans.append((f"{corpus}-{k:02d}", {s: pool[s] for s in chosen}, 60 * rng.uniform(*minutes),
                      float(rng.uniform(0.0, 0.15))))
    return plans


def conversation_plans(full: bool, seed: int, per_corpus: int | None = None) -> list:
    """The test conversations' plans: 6 librispeech, 4 FSDD and 3 synthetic of 1-2 minutes, or (``full``) 12 of each
    of 1-10 minutes and one librispeech conversation of an hour; ``per_corpus`` conversations of each instead."""
    n, minutes = (12, (1.0, 10.0)) if full else ((6, 4, 3), (1.0, 2.0))
    counts = dict(zip(("libri", "fsdd", "synth"), n if isinstance(n, tuple) else (n, n, n)))
    if per_corpus:
        counts = {c: per_corpus for c in counts}
    plans = [p for c, k in counts.items() for p in conversations(c, k, minutes, seed)]
    if full:                                     # one hour, named apart from the 1-10 minute "libri-00"
        plans += [(f"libri-hour-{k:02d}", *rest) for k, (_, *rest) in
                  enumerate(conversations("libri", 1, (60.0, 60.0), seed + 1))]
    return plans


def write_condition(plans, condition: str, out: Path, seed: int, levels_db: float = 0.0,
                    levels_seed: int = 2) -> list[dict]:
    """Write every planned conversation under ``condition`` to ``out`` (FLAC; telephone at 8 kHz); manifest rows.

    ``levels_db`` > 0: each speaker of a conversation speaks at a level of their own, a gain drawn uniformly in
    +-``levels_db`` dB and kept for all their turns (a near and a far talker), recorded in the rows (``levels_db``:
    speaker -> dB); drawn from a stream of its own (``levels_seed`` picks another draw), so the conversations are
    otherwise the same as without it."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, pool, seconds, overlap in plans:
        rng = np.random.default_rng([seed, sum(map(ord, name))])
        db = np.random.default_rng([seed, sum(map(ord, name)), levels_seed]).uniform(-levels_db, levels_db, len(pool)) \
            if levels_db > 0 else None
        rooms = {} if condition == "room-noise" else None
        transform = None
        if db is not None or rooms is not None:
            def transform(piece, spk, rooms=rooms, rng=rng, db=db):
                if db is not None:
                    piece = piece * np.float32(10 ** (db[spk] / 20))
                if rooms is None:
                    return piece
                if spk not in rooms:
                    rooms[spk] = degrade._room("room-sim", rng)
                return degrade.reverberate(piece.astype(np.float64), rooms[spk]).astype(np.float32)
        conv = build_conversation(pool, seconds, np.random.default_rng([seed, sum(map(ord, name)), 1]), name=name,
                                  overlap=overlap, transform=transform)
        wav, sr = conv.wav.astype(np.float64), SR
        if condition == "room-noise":
            kind = ("white", "pink", "brown", "machine")[int(rng.integers(4))]
            wav = degrade.mix(wav, degrade._noise(kind, wav.size, rng, None), float(rng.uniform(5, 15)))
        elif condition == "telephone":
            from scipy.signal import resample_poly
            wav, sr = resample_poly(degrade.telephone(wav), 1, 2), 8000
        wav = 0.9 * wav / max(np.abs(wav).max(), 1e-9)
        path = out / f"{name}.flac"
        # renamed into place: a run reading this folder's files meanwhile never sees half of one
        atomic_write(path, lambda tmp: sf.write(tmp, wav.astype(np.float32), sr, format="FLAC", subtype="PCM_16"),
                     fsync=False)
        rows.append({"file": str(path), "name": name, "seconds": conv.wav.size / SR, "speakers": conv.speakers,
                     "overlap": conv.overlap, "reference": [s.__dict__ for s in conv.reference],
                     "levels_db": dict(zip(pool, db.round(2).tolist())) if db is not None else None})
    return rows


def add_level_options(ap: argparse.ArgumentParser) -> None:
    """``--speaker-levels DB`` and ``--levels-seed S`` (``write_condition``'s ``levels_db`` and ``levels_seed``)."""
    ap.add_argument("--speaker-levels", type=float, default=0.0, metavar="DB",
                    help="each speaker at a level of their own, drawn in +-DB dB (default 0: turns near one level)")
    ap.add_argument("--levels-seed", type=int, default=2, metavar="S",
                    help="another draw of those levels, the same conversations otherwise (default 2)")


def check_level_options(ap: argparse.ArgumentParser, a, conflict: str | bool) -> None:
    """Reject a negative or infinite ``--speaker-levels``, and either level option beside ``conflict`` (an option
    that builds no conversations of several speakers)."""
    if not 0 <= a.speaker_levels < float("inf"):
        ap.error(f"--speaker-levels {a.speaker_levels}: dB >= 0")
    if conflict and (a.speaker_levels or a.levels_seed != 2):
        ap.error(f"--speaker-levels / --levels-seed do nothing with {conflict}")
    if a.levels_seed != 2 and not a.speaker_levels:
        ap.error("--levels-seed needs --speaker-levels")


# ---------------------------------------------------------------- systems

def run_system(system: dict, files: list[str], out_rttm: Path, registry: Path | None = None) -> dict:
    """One process over ``files``: wall seconds of its diarization, its peak RSS (MiB), its exit status."""
    if system["kind"] == "spkid":
        cmd = [sys.executable, "-m", "spkid", "diarize", *files, "-o", str(out_rttm), "--checkpoint",
               system["checkpoint"], "--quiet", "--device", "cpu", "--method", system["method"]]
        if system.get("threshold") is not None:
            cmd += ["--threshold", str(system["threshold"])]
        if registry is not None:
            cmd += ["--registry", str(registry)] + ([] if system.get("name_split", True) else ["--no-name-split"])
    else:
        cmd = [sys.executable, __file__, "--worker", "resemblyzer", "--method", system["method"], "--out",
               str(out_rttm), *files]
    # through a small launcher: a child forked from this (large) process would report this process's peak RSS
    # as its own (Linux carries the high-water mark across fork and exec)
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    stderr, _, rss = p.stderr.rpartition("MAXRSS_KB ")
    if p.returncode != 0:
        print(f"  {system['name']}: exit {p.returncode}: {stderr.strip().splitlines()[-1:]}", file=sys.stderr)
    return {"seconds": _seconds_taken(p.stdout), "rc": p.returncode, "maxrss_mb": int(rss) / 1024}


_LAUNCHER = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n"
             "_, status, usage = os.wait4(pid, 0)\nsys.stderr.write(f'\\nMAXRSS_KB {usage.ru_maxrss}')\n"
             "sys.exit(os.waitstatus_to_exitcode(status))")


def _seconds_taken(stdout: str) -> float:
    """The diarization time the command reports (model loading and interpreter start excluded)."""
    for line in stdout.splitlines()[::-1]:
        if " s of audio in " in line:
            return float(line.split(" s of audio in ")[1].split(" s")[0])
    return float("nan")


class ResemblyzerEmbedder:
    """Resemblyzer's VoiceEncoder on spkid's windows: its own mel front end per window, batched by length."""

    model_id = "resemblyzer"

    def __init__(self):
        import torch
        from resemblyzer import VoiceEncoder
        self.encoder = VoiceEncoder("cpu", verbose=False)
        self.torch = torch

    def __call__(self, wavs):
        from resemblyzer.audio import wav_to_mel_spectrogram
        mels = [wav_to_mel_spectrogram(w) for w in wavs]
        out = np.zeros((len(wavs), 256), dtype=np.float32)
        for n in sorted({m.shape[0] for m in mels}):
            idx = [i for i, m in enumerate(mels) if m.shape[0] == n]
            with self.torch.no_grad():
                out[idx] = self.encoder(self.torch.from_numpy(np.stack([mels[i] for i in idx]))).numpy()
        return out


def worker(files: list[str], out: str, method: str) -> int:
    """``--worker resemblyzer``: the spkid pipeline with Resemblyzer embeddings; prints what ``spkid diarize`` does."""
    from spkid.diarization.batch import diarize_files
    from spkid.diarization.pipeline import DiarizeConfig
    emb = ResemblyzerEmbedder()
    t0 = time.perf_counter()
    res = diarize_files(files, emb, DiarizeConfig(method=method, threshold=RESEMBLYZER_THRESHOLD, merge_raw=0.0,
                                                  settled_s=RESEMBLYZER_SETTLED_S,
                                                  resplit=RESEMBLYZER_RESPLIT),
                        progress=False)
    write_rttm(out, [s for o in res for s in o.segments])
    audio = sum(o.duration for o in res)
    print(f"wrote {out}: {audio:.1f} s of audio in {time.perf_counter() - t0:.1f} s")
    return 0


# ---------------------------------------------------------------- scoring

def count_errors(rows: list[dict], hyp: list[Segment]) -> tuple[float, float]:
    """(share of conversations whose speaker count is wrong, mean absolute count error)."""
    errs = [abs(len(r["speakers"]) - len({s.speaker for s in hyp if s.file == r["name"]})) for r in rows]
    return float(np.mean([e > 0 for e in errs])), float(np.mean(errs))


NAMED_STEP = 0.01     # s: the frame on which names are compared


def named_shares(ref: list[Segment], hyp: list[Segment], anonymous: str = "SPEAKER_") -> tuple[float, float]:
    """``(right, wrong)`` over 10 ms frames, both as shares of reference speaker time (a frame with two reference
    speakers counts twice): ``right``, a reference speaker whose name a hypothesis turn gives in that frame;
    ``wrong``, an enrolled name a hypothesis turn gives where no reference speaker of that name talks (labels
    starting with ``anonymous`` are no name: never right, never wrong)."""
    total = right = wrong = 0.0
    for f in sorted({s.file for s in ref} | {s.file for s in hyp}):
        rs, hs = [s for s in ref if s.file == f], [s for s in hyp if s.file == f]
        end = max([s.end for s in rs + hs], default=0.0)
        n = int(np.ceil(end / NAMED_STEP)) + 1
        grid = lambda segs: {k: np.zeros(n, bool) for k in {s.speaker for s in segs}}     # noqa: E731
        ron, hon = grid(rs), grid(hs)
        for segs, on in ((rs, ron), (hs, hon)):
            for s in segs:
                on[s.speaker][int(round(s.start / NAMED_STEP)): int(round(s.end / NAMED_STEP))] = True
        total += sum(v.sum() for v in ron.values())
        right += sum((v & hon[k]).sum() for k, v in ron.items() if k in hon)
        wrong += sum((v & ~ron.get(k, np.zeros(n, bool))).sum() for k, v in hon.items() if not k.startswith(anonymous))
    return (right / total, wrong / total) if total else (float("nan"), float("nan"))


def _der(rows: list[dict], hyp_path: Path):
    from spkid.diarization.evaluate import score_diarization
    ref = [Segment(**s) for r in rows for s in r["reference"]]
    hyp = read_rttm(hyp_path) if hyp_path.exists() else []
    return score_diarization(ref, hyp)[-1], hyp, ref


def enroll_corpus(corpus: str, checkpoint: str, work: Path, half: bool = False) -> Path:
    """A registry holding every speaker of ``corpus`` (4 utterances each, none used in a conversation); ``half``:
    every other speaker (in name order), the rest strangers to it."""
    from spkid.scoring.openset import enroll
    _, held = pools(corpus, enroll=4)
    reg = work / f"registry-{corpus}-{Path(checkpoint).stem}{'-half' if half else ''}.db"
    reg.unlink(missing_ok=True)
    created = False
    for spk, items in sorted(held.items())[:: 2 if half else 1]:
        files = []
        for j, it in enumerate(items):
            if isinstance(it, np.ndarray) and it.size == 0:     # digits where Silero heard no speech
                continue
            if isinstance(it, np.ndarray):
                p = work / "enroll" / corpus / spk / f"{j}.flac"
                p.parent.mkdir(parents=True, exist_ok=True)
                sf.write(str(p), it, SR)
                it = p
            files.append(it)
        if not files:                                           # no clip with speech: not enrolled (said, not hidden)
            print(f"  {corpus}: {spk} not enrolled (no held-out clip with speech)", file=sys.stderr)
            continue
        enroll(reg, spk, files, checkpoint=None if created else checkpoint, device="cpu")
        created = True
    return reg


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="spkid checkpoint of the pretrained model (the 'spkid base' rows)")
    ap.add_argument("--threshold", type=float, help="clustering threshold of the base rows (default: diarize's)")
    ap.add_argument("--checkpoint-10min", help="checkpoint trained 10 minutes (the 'spkid 10-min' rows)")
    ap.add_argument("--threshold-10min", type=float, help="its own calibrated threshold (--calibrate on it)")
    ap.add_argument("--method", choices=["ahc", "spectral"], default="spectral", help="clustering of every system")
    ap.add_argument("--resemblyzer", action="store_true", help="also the Resemblyzer-embedding pipeline")
    ap.add_argument("--no-name-split", action="store_true",
                    help="the registry runs without splitting a cluster into enrolled voices (diarize --no-name-split)")
    ap.add_argument("--full", action="store_true", help="12 conversations per corpus, 1-10 min, plus one of an hour")
    ap.add_argument("--conversations", type=int, help="per corpus (default 6 librispeech, 4 FSDD, 3 synthetic)")
    ap.add_argument("--calibrate", action="store_true", help="threshold/method study on the dev speakers")
    ap.add_argument("--calibrate-merges", action="store_true",
                    help="the raw-merge / re-split cosines of --checkpoint, chosen on the dev speakers")
    ap.add_argument("--long-hours", type=float, default=0.0, help="only: peak memory and speed on one file this long")
    ap.add_argument("--work", default="/tmp/spkid-diarization-bench", help="folder for audio, RTTMs, registries")
    ap.add_argument("--seed", type=int, default=0)
    add_level_options(ap)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", choices=["resemblyzer"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.files, a.out, a.method)
    check_level_options(ap, a, a.calibrate and "--calibrate" or a.calibrate_merges and "--calibrate-merges" or
                        a.long_hours and "--long-hours")
    if not (SHARED / "librispeech-sample").is_dir():
        print(f"needs {SHARED} (librispeech-sample, fsdd)", file=sys.stderr)
        return 2
    work = Path(a.work)
    if a.calibrate:
        from diarization_calibrate import calibrate
        return calibrate(a, work)
    if a.calibrate_merges:
        if not a.checkpoint:
            ap.error("--calibrate-merges needs --checkpoint")
        from diarization_calibrate import calibrate_merges
        return calibrate_merges(a, work)
    if a.long_hours:
        return long_file(a, work)
    systems = ([{"name": "spkid base", "kind": "spkid", "checkpoint": a.checkpoint, "threshold": a.threshold}]
               if a.checkpoint else []) + \
        ([{"name": "spkid 10-min", "kind": "spkid", "checkpoint": a.checkpoint_10min, "threshold": a.threshold_10min}]
         if a.checkpoint_10min else []) + ([{"name": "Resemblyzer", "kind": "resemblyzer"}] if a.resemblyzer else [])
    for sysd in systems:
        sysd["method"] = a.method
        sysd["name_split"] = not a.no_name_split
    if not systems:
        ap.error("give --checkpoint, --checkpoint-10min and/or --resemblyzer")
    plans = conversation_plans(a.full, a.seed, a.conversations)
    results = []
    for cond in CONDITIONS:
        t0 = time.perf_counter()
        rows = write_condition(plans, cond, work / cond, a.seed, a.speaker_levels, a.levels_seed)
        audio = sum(r["seconds"] for r in rows)
        write_rttm(work / cond / "reference.rttm", [Segment(**s) for r in rows for s in r["reference"]])
        print(f"[{cond}] {len(rows)} conversations, {audio / 60:.1f} min, overlap "
              f"{100 * np.mean([r['overlap'] for r in rows]):.1f} % (built in {time.perf_counter() - t0:.0f} s)",
              file=sys.stderr)
        for sysd in systems:
            hyp_path = work / cond / f"hyp-{sysd['name'].replace(' ', '_')}.rttm"
            run = run_system(sysd, [r["file"] for r in rows], hyp_path)
            der, hyp, ref = _der(rows, hyp_path)
            wrong, mae = count_errors(rows, hyp)
            res = {"condition": cond, "system": sysd["name"], "der_collar": der.der_collar, "der": der.der,
                   "der_collar_skip": der.der_collar_skip, "jer": der.jer, "false_alarm": der.false_alarm,
                   "miss": der.miss, "confusion": der.confusion, "count_wrong": wrong, "count_mae": mae,
                   "rtf": audio / run["seconds"], "maxrss_mb": run["maxrss_mb"], "audio_min": audio / 60,
                   "speaker_levels_db": a.speaker_levels, "levels_seed": a.levels_seed}
            for corpus in ("libri", "fsdd", "synth"):
                sub = [r for r in rows if r["name"].startswith(corpus + "-")]
                if sub:
                    res[f"der_{corpus}"] = _der(sub, hyp_path)[0].der_collar
                    res[f"count_wrong_{corpus}"] = count_errors(sub, hyp)[0]
            if sysd["kind"] == "spkid":
                res.update(_named(sysd, rows, work, cond))
            results.append(res)
            print(_line(res), file=sys.stderr)
    print(table(results))
    print()
    print(corpus_table(results))
    if any("named" in r for r in results):
        print()
        print(enrolled_table(results))
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def _named(sysd: dict, rows: list[dict], work: Path, cond: str) -> dict:
    """The runs with a registry (``--registry``), per corpus: every speaker enrolled (``named`` / ``named_wrong``:
    shares of speech time with the right name and with a wrong one, ``named_shares``; the DER and count of those
    runs, where clusters holding several enrolled voices are split), and every other speaker enrolled
    (``half_named``: the enrolled speakers' speech with their name; ``half_wrong``: all speech with a wrong name,
    strangers named included)."""
    from spkid.diarization.evaluate import score_diarization
    from spkid.scoring.speaker_db import SpeakerDB
    acc = {k: [0.0, 0.0] for k in ("named", "named_wrong", "half_named", "half_wrong")}
    refs, hyps, out = [], [], {}
    for corpus in ("libri", "fsdd", "synth"):
        sub = [r for r in rows if r["name"].startswith(corpus + "-")]
        if not sub:
            continue
        ref = [Segment(**s) for r in sub for s in r["reference"]]
        for half in (False, True):
            reg = work / f"registry-{corpus}-{Path(sysd['checkpoint']).stem}{'-half' if half else ''}.db"
            if not reg.exists():
                enroll_corpus(corpus, sysd["checkpoint"], work, half=half)
            tag = f"{corpus}-{Path(sysd['checkpoint']).stem}{'-half' if half else ''}"
            hyp_path = work / cond / f"named-{tag}.rttm"
            run_system(sysd, [r["file"] for r in sub], hyp_path, registry=reg)
            hyp = read_rttm(hyp_path) if hyp_path.exists() else []
            if half:
                with SpeakerDB.open(reg) as db:
                    enrolled = {n for n, _ in db.speakers()}
                mine = [s for s in ref if s.speaker in enrolled]
                right, t_right = named_shares(mine, hyp)[0], sum(s.duration for s in mine)
                wrong = named_shares(ref, hyp)[1]
                keys = ("half_named", "half_wrong")
            else:
                right, wrong = named_shares(ref, hyp)
                t_right = sum(s.duration for s in ref)
                keys = ("named", "named_wrong")
                refs += ref
                hyps += hyp
                out[f"der_enrolled_{corpus}"] = score_diarization(ref, hyp)[-1].der_collar
                out[f"count_wrong_enrolled_{corpus}"] = count_errors(sub, hyp)[0]
            t_all = sum(s.duration for s in ref)
            acc[keys[0]][0] += right * t_right
            acc[keys[0]][1] += t_right
            acc[keys[1]][0] += wrong * t_all
            acc[keys[1]][1] += t_all
    out.update({k: (v / t if t else float("nan")) for k, (v, t) in acc.items()})
    out["der_enrolled"] = score_diarization(refs, hyps)[-1].der_collar if refs else float("nan")
    out["count_wrong_enrolled"] = count_errors(rows, hyps)[0]
    return out


def _line(r: dict) -> str:
    named = f"  named {100 * r['named']:.1f} % (wrong {100 * r['named_wrong']:.1f} %)" if "named" in r else ""
    return (f"  {r['system']:<13} DER±.25 {100 * r['der_collar']:5.2f} %  DER {100 * r['der']:5.2f} %  count wrong "
            f"{100 * r['count_wrong']:3.0f} % (MAE {r['count_mae']:.2f})  {r['rtf']:.0f}x RT  {r['maxrss_mb']:.0f} MiB"
            + named)


def table(results: list[dict]) -> str:
    head = ("| condition | system | DER ±0.25 s, overlap scored | DER no collar | DER ±0.25 s, overlap skipped | "
            "JER | FA / miss / confusion | count wrong (MAE) | named right / wrong | real time | peak RSS |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        named = f"{100 * r['named']:.1f} / {100 * r['named_wrong']:.1f} %" if "named" in r else "—"
        lines.append(f"| {r['condition']} | {r['system']} | {100 * r['der_collar']:.2f} % | {100 * r['der']:.2f} % | "
                     f"{100 * r['der_collar_skip']:.2f} % | {100 * r['jer']:.2f} % | {100 * r['false_alarm']:.1f} / "
                     f"{100 * r['miss']:.1f} / {100 * r['confusion']:.1f} % | {100 * r['count_wrong']:.0f} % "
                     f"({r['count_mae']:.2f}) | {named} | {r['rtf']:.0f}x | {r['maxrss_mb']:.0f} MiB |")
    return "\n".join(lines)


def enrolled_table(results: list[dict]) -> str:
    """The runs with a registry: every speaker enrolled (names, DER ±0.25 s, count, DER per source of voices), and
    every other speaker enrolled (the enrolled named, all speech wrongly named)."""
    rows = [r for r in results if "named" in r]
    corpora = [c for c in ("libri", "fsdd", "synth") if any(f"der_enrolled_{c}" in r for r in rows)]
    head = ("| condition | system | all enrolled: named right / wrong | DER ±0.25 s | count wrong | " +
            " | ".join(f"{c}: DER / count wrong" for c in corpora) + " | half enrolled: named right / wrong |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{100 * r[f'der_enrolled_{c}']:.2f} % / {100 * r[f'count_wrong_enrolled_{c}']:.0f} %"
                 if f"der_enrolled_{c}" in r else "—" for c in corpora]
        lines.append(f"| {r['condition']} | {r['system']} | {100 * r['named']:.1f} / {100 * r['named_wrong']:.1f} % | "
                     f"{100 * r['der_enrolled']:.2f} % | {100 * r['count_wrong_enrolled']:.0f} % | " + " | ".join(cells)
                     + f" | {100 * r['half_named']:.1f} / {100 * r['half_wrong']:.1f} % |")
    return "\n".join(lines)


def corpus_table(results: list[dict]) -> str:
    """DER (±0.25 s, overlap scored) and the share of wrong counts per source of voices."""
    corpora = [c for c in ("libri", "fsdd", "synth") if any(f"der_{c}" in r for r in results)]
    head = "| condition | system | " + " | ".join(f"{c}: DER ±0.25 s / count wrong" for c in corpora) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        cells = [f"{100 * r[f'der_{c}']:.2f} % / {100 * r[f'count_wrong_{c}']:.0f} %" if f"der_{c}" in r else "—"
                 for c in corpora]
        lines.append(f"| {r['condition']} | {r['system']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_file(a, work: Path) -> int:
    """One conversation of ``--long-hours`` (libri test-other voices), written as 16 kHz FLAC, diarized by
    ``spkid diarize`` in its own process: its real-time factor and peak RSS."""
    if not a.checkpoint:
        raise SystemExit("--long-hours needs --checkpoint")
    path = work / f"long-{a.long_hours:g}h.flac"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        pool, _ = pools("libri")
        names = sorted(pool)[:4]
        rng = np.random.default_rng(a.seed)
        with sf.SoundFile(str(path), "w", SR, 1, subtype="PCM_16") as f:     # written in 10-minute pieces
            left = a.long_hours * 3600
            k = 0
            while left > 1:
                conv = build_conversation({s: pool[s] for s in names}, min(600.0, left), rng, name="long",
                                          overlap=0.05)
                f.write(0.9 * conv.wav / max(np.abs(conv.wav).max(), 1e-9))
                left -= conv.wav.size / SR
                k += 1
    info = sf.info(str(path))
    run = run_system({"name": "spkid", "kind": "spkid", "checkpoint": a.checkpoint, "method": a.method,
                      "threshold": a.threshold}, [str(path)],
                     work / "long.rttm")
    print(f"{info.duration / 3600:.2f} h file: {info.duration / run['seconds']:.0f}x real time, peak RSS "
          f"{run['maxrss_mb']:.0f} MiB (exit {run['rc']})")
    return 0 if run["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

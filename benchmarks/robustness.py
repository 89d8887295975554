"""Robustness: does spkid survive the channel? One table, two recipes, every degradation of the public test.

(a) the features-only default (``--config default`` on ``speechocean762``'s HW4 tensors) and (b) the audio default
(``--config audio`` on ``speechocean762-opus/train``: speech detection, noise/room/channel/codec augmentation)
train for ``--minutes`` each, side by side (``--threads`` each, so neither gets more of the CPU), then predict
the 500 public-test recordings (``speechocean762-opus/test``) after each condition of ``benchmarks/degrade.py``
(noise of five kinds at 0/5/10 dB, three room families, telephone, codecs, silence padding, a combination,
1-s crops), through the user's path: ``spkid.load(ckpt).predict(files)`` with speech detection on.

    python benchmarks/robustness.py                       # train both (10 min each, side by side) and evaluate
    python benchmarks/robustness.py --features-ckpt A --audio-ckpt B     # evaluate given checkpoints
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from degrade import CONDITIONS, DESCRIPTIONS, degrade  # noqa: E402


def train_side_by_side(work: Path, minutes: float, threads: int, seed: int) -> dict[str, Path]:
    """Both recipes in parallel subprocesses with ``threads`` each; returns ``{recipe: best checkpoint}``."""
    jobs = {"features": [str(SHARED / "speechocean762"), "--config", "default"],
            "audio": [str(SHARED / "speechocean762-opus" / "train"), "--config", "audio"]}
    procs = {}
    for name, args in jobs.items():
        out = work / f"run-{name}"
        if (out / "last.ckpt").exists():
            print(f"[{name}] reusing {out}")
            continue
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "spkid", "train", *args, "--out", str(out), "--max-minutes", str(minutes),
               "--seed", str(seed), "--quiet", "--set", f"train.threads={threads}"]
        print("+", " ".join(cmd), flush=True)
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env)
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"training {name} failed (exit {p.returncode})")
    return {name: _best(work / f"run-{name}") for name in jobs}


def _best(run: Path) -> Path:
    return run / "best.ckpt" if (run / "best.ckpt").exists() else run / "last.ckpt"


def write_conditions(work: Path, conditions: list[str], limit: int, seed: int) -> tuple[dict, dict]:
    """Degraded copies of the public test (16 kHz WAV): ``{condition: [paths]}``, ``{file name: speaker}``."""
    from spkid.audio.io import load_audio
    test = SHARED / "speechocean762-opus" / "test"
    rows = list(csv.DictReader(open(SHARED / "speechocean762-opus" / "test_answers.csv")))[: limit or None]
    answers = {r["file"]: r["speaker"] for r in rows}
    clean = {r["file"]: load_audio(test / r["file"]).numpy() for r in rows}
    names = list(clean)
    out: dict[str, list[Path]] = {}
    for ci, cond in enumerate(conditions):
        folder = work / "test" / cond
        paths = [folder / (Path(n).stem + ".wav") for n in names]
        out[cond] = paths
        if (folder / ".done").exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for i, (n, p) in enumerate(zip(names, paths)):
            rng = np.random.default_rng([seed, ci, i])
            # babble: three other test utterances of other speakers (never this speaker's own voice)
            others = [clean[names[j]] for j in rng.permutation(len(names))[:8] if answers[names[j]] != answers[n]][:3]
            y = degrade(clean[n], cond, rng, babble=others).numpy()
            sf.write(p, np.clip(y, -1, 1), 16000, subtype="FLOAT")
        (folder / ".done").touch()
        print(f"  wrote {cond:22s} {len(paths)} files in {time.perf_counter() - t0:.1f} s", flush=True)
    return out, answers


def evaluate(ckpt: Path, sets: dict[str, list[Path]], answers: dict[str, str]) -> tuple[dict, dict]:
    """Accuracy per condition, and how many files had too little detected speech (those are scored on the whole
    file, as ``--no-vad`` would: a Kaggle-style table needs every row, where ``spkid predict`` names the file)."""
    import spkid
    from spkid.errors import DataError
    from spkid.scoring.model import class_scores
    model = spkid.load(ckpt, "cpu")
    acc, whole = {}, {}
    for cond, paths in sets.items():
        t0 = time.perf_counter()
        feats, whole[cond] = [], 0
        for p in paths:
            try:
                feats.append(model.features([p])[0])
            except DataError:
                model.vad = False
                feats.append(model.features([p])[0])
                model.vad, whole[cond] = True, whole[cond] + 1
        probs = class_scores(model.net, model.embed_raw(feats), model.device, len(model.speakers))
        pred = [model.speakers[i] for i in probs.argmax(-1).tolist()]
        gold = [answers[p.stem + ".opus"] for p in paths]
        acc[cond] = float(np.mean([a == b for a, b in zip(pred, gold)]))
        print(f"  {ckpt.parent.name:14s} {cond:22s} {acc[cond]:.3f}  (no speech found in {whole[cond]}; "
              f"{time.perf_counter() - t0:.0f} s)", flush=True)
    return acc, whole


def table(results: dict[str, dict[str, float]], conditions: list[str]) -> str:
    names = list(results)
    lines = ["| condition | " + " | ".join(f"({chr(97 + i)}) {n}" for i, n in enumerate(names)) + " |",
             "|---|" + "---|" * len(names)]
    for c in conditions:
        lines.append(f"| {c}: {DESCRIPTIONS[c]} | " + " | ".join(f"{results[n][c]:.3f}" for n in names) + " |")
    degraded = [c for c in conditions if c != "clean"]
    if degraded:
        lines.append("| **mean over degraded conditions** | " + " | ".join(
            f"**{np.mean([results[n][c] for c in degraded]):.3f}**" for n in names) + " |")
        lines.append("| worst degraded condition | " + " | ".join(
            "{:.3f} ({})".format(*min((results[n][c], c) for c in degraded)) for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "robustness"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training (both run at once)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--features-ckpt", help="skip training (a): use this checkpoint")
    ap.add_argument("--audio-ckpt", help="skip training (b): use this checkpoint")
    ap.add_argument("--conditions", nargs="*", default=CONDITIONS, choices=CONDITIONS)
    ap.add_argument("--limit", type=int, default=0, help="only the first N test files (0: all 500)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.features_ckpt and a.audio_ckpt:
        ckpts = {"features": Path(a.features_ckpt), "audio": Path(a.audio_ckpt)}
    else:
        ckpts = train_side_by_side(work, a.minutes, a.threads, a.seed)
        ckpts = {"features": Path(a.features_ckpt or ckpts["features"]), "audio": Path(a.audio_ckpt or ckpts["audio"])}
    sets, answers = write_conditions(work, a.conditions, a.limit, a.seed)
    evaluated = {name: evaluate(ck, sets, answers) for name, ck in ckpts.items()}
    results = {name: r[0] for name, r in evaluated.items()}
    text = table({f"{n} default": r for n, r in results.items()}, a.conditions)
    print("\n" + text)
    (work / "results.json").write_text(json.dumps({"checkpoints": {k: str(v) for k, v in ckpts.items()},
                                                   "accuracy": results,
                                                   "no_speech_found": {n: r[1] for n, r in evaluated.items()}},
                                                  indent=1))
    (work / "results.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

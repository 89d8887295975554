"""How much an embedder hears the level: spkid checkpoints side by side on the same windows (docs/diarization.md).

Diarization compares short windows of one recording, where one talker can sit 10 dB below another for the whole
conversation. A model that hears the level splits a quiet and a loud stretch of one voice, or joins two quiet voices.
Two numbers per model, on 1.5 s windows (every 0.75 s) of voices no spkid model trained on (librispeech-sample
test-other: 10 speakers, 10 read utterances each; 12 synthetic voices of ``spkid.audio.synth``), each utterance first
brought to -20 dBFS active level:

- **self**: the cosine between a window and the same window at another gain (-16, -10, -5, +5, +10 dB; mean);
- **EER**: the equal error rate of every window pair (same voice against other voices, windows of the same utterance
  left out), all windows at one level, then each window at its own gain drawn uniformly from -16..+10 dB.

    python benchmarks/level.py                                   # the shipped base
    python benchmarks/level.py --models base runs/level/last.ckpt --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

SR = 16000
WIN, HOP = 1.5, 0.75
GAINS_DB = (-16.0, -10.0, -5.0, 5.0, 10.0)
RANDOM_DB = (-16.0, 10.0)


def windows(wav: np.ndarray) -> list[np.ndarray]:
    """1.5 s windows every 0.75 s of one utterance ``(S,)`` brought to -20 dBFS; those with little energy left out."""
    from spkid.audio.frontend import active_level, frame_power
    level = active_level(frame_power(wav))
    if not np.isfinite(level):
        return []
    wav = wav * 10.0 ** ((-20.0 - level) / 20.0)
    n, h = int(WIN * SR), int(HOP * SR)
    out = [wav[s:s + n] for s in range(0, len(wav) - n + 1, h)]
    return [w for w in out if 10 * np.log10(np.mean(w ** 2) + 1e-12) > -35.0]


def corpus(per_speaker: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[str]]:
    """Windows ``[(S,)]``, their speaker index and utterance index ``(N,)``, and the source of each speaker."""
    from spkid.audio.io import load_audio
    from spkid.audio.synth import make_voice, synth_utterance
    wins, spk, utt, source = [], [], [], []
    root = SHARED / "librispeech-sample" / "test-other"
    u = 0
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(d.iterdir())
        for f in files:
            w = windows(load_audio(f).numpy())[:per_speaker // len(files) + 1]
            wins += w
            spk += [len(source)] * len(w)
            utt += [u] * len(w)
            u += 1
        source.append("librispeech")
    rng = np.random.default_rng(seed)
    for _ in range(12):
        voice = make_voice(rng)
        for _ in range(4):
            w = windows(synth_utterance(voice, rng, SR, 6.0).astype(np.float32))
            wins += w
            spk += [len(source)] * len(w)
            utt += [u] * len(w)
            u += 1
        source.append("synthetic")
    return wins, np.array(spk), np.array(utt), source


def eer_of(emb: np.ndarray, spk: np.ndarray, utt: np.ndarray) -> float:
    """EER (%) of every window pair of different utterances: cosine scores, same speaker as targets."""
    from spkid.scoring.metrics import eer, score_trials
    i, j = np.triu_indices(len(emb), 1)
    keep = utt[i] != utt[j]
    i, j = i[keep], j[keep]
    scores = score_trials(emb / np.linalg.norm(emb, axis=1, keepdims=True), i, j)
    return 100.0 * eer(scores, (spk[i] == spk[j]).astype(int))[0]


def measure(model: str, wins: list[np.ndarray], spk: np.ndarray, utt: np.ndarray, seed: int) -> dict:
    from spkid.diarization.batch import load_embedder
    embed = load_embedder(model)

    def run(gains_db: np.ndarray) -> np.ndarray:
        scaled = [np.clip(w * 10.0 ** (g / 20.0), -1.0, 1.0).astype(np.float32) for w, g in zip(wins, gains_db)]
        return np.concatenate([embed(scaled[k:k + 64]) for k in range(0, len(scaled), 64)])

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    zero = np.zeros(len(wins))
    ref = unit(run(zero))
    row = {"model": model}
    for g in GAINS_DB:
        row[f"self_{g:+.0f}dB"] = float(np.mean(np.sum(ref * unit(run(zero + g)), axis=1)))
    gains = np.random.default_rng(seed).uniform(*RANDOM_DB, len(wins))
    row["eer_one_level"] = eer_of(ref, spk, utt)
    row["eer_random_gain"] = eer_of(run(gains), spk, utt)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["base"], help="spkid checkpoints or shipped names")
    ap.add_argument("--per-speaker", type=int, default=40, help="librispeech windows per speaker (about)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if not (SHARED / "librispeech-sample" / "test-other").is_dir():
        sys.exit(f"{SHARED / 'librispeech-sample' / 'test-other'}: not found (this benchmark needs ../shared)")
    if args.per_speaker < 10:
        ap.error("--per-speaker must be at least 10")
    from tqdm import tqdm
    wins, spk, utt, source = corpus(args.per_speaker, args.seed)
    rows = [measure(m, wins, spk, utt, args.seed) for m in tqdm(args.models, desc="models", unit="model")]
    print(f"\n{len(wins)} windows of {WIN} s, {len(source)} voices ({source.count('librispeech')} librispeech "
          f"test-other, {source.count('synthetic')} synthetic)\n")
    heads = [f"self {g:+.0f} dB" for g in GAINS_DB] + ["EER one level", "EER random gain"]
    print("| model | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for r in rows:
        vals = [f"{r[f'self_{g:+.0f}dB']:.3f}" for g in GAINS_DB] + [f"{r['eer_one_level']:.2f} %",
                                                                      f"{r['eer_random_gain']:.2f} %"]
        print(f"| {r['model']} | " + " | ".join(vals) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"windows": len(wins), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

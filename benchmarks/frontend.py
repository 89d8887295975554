"""Front-end speed on the shared speechocean762 FLAC files (168 utterances, 16 kHz mono).

Run: ``.venv/bin/python benchmarks/frontend.py [--threads 2] [--batch 16] [--repeats 3] [--device cpu]``

Prints one table: decoding all files (soundfile), ``load_audio`` (decode + checks + resampling path),
``LogMel`` one utterance at a time, ``LogMel`` on length-sorted padded batches, and decode + features end to
end. "x real time" is seconds of audio per second of compute; times are the best of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spkid.audio.io import load_audio  # noqa: E402
from spkid.audio.frontend import LogMel  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
AUDIO_DIR = SHARED / "data" / "speechocean762-audio"


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--batch", type=int, default=16, help="utterances per batch, sorted by length (default 16)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    csv_path = AUDIO_DIR / "features.csv"
    if not csv_path.is_file():
        print(f"skipped: {csv_path} not found (needs the shared data beside the checkout)")
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    files = [AUDIO_DIR / r["audio"] for r in csv.DictReader(open(csv_path, newline=""))]

    wavs = [load_audio(f) for f in files]                                   # warm the page cache too
    audio_s = sum(w.shape[0] for w in wavs) / 16000
    fe = LogMel().to(device)
    order = sorted(range(len(wavs)), key=lambda i: wavs[i].shape[0])
    batches = []
    for k in range(0, len(order), args.batch):
        chunk = [wavs[i] for i in order[k:k + args.batch]]
        lengths = torch.tensor([w.shape[0] for w in chunk])
        batches.append((torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device), lengths.to(device)))
    singles = [(w[None, :].to(device), torch.tensor([w.shape[0]], device=device)) for w in wavs]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_frontend(pairs):
        with torch.no_grad():
            for x, n in pairs:
                fe(x, n)
        sync()

    def end_to_end():
        with torch.no_grad():
            for f in files:
                w = load_audio(f).to(device)
                fe(w[None, :], torch.tensor([w.shape[0]], device=device))
        sync()

    run_frontend(batches[:1])                                               # warm-up (allocator, FFT plans)
    rows = [
        ("decode (soundfile.read)", _best(lambda: [sf.read(str(f), dtype="float32") for f in files], args.repeats)),
        ("load_audio", _best(lambda: [load_audio(f) for f in files], args.repeats)),
        ("LogMel one by one", _best(lambda: run_frontend(singles), args.repeats)),
        (f"LogMel batched (B={args.batch}, sorted)", _best(lambda: run_frontend(batches), args.repeats)),
        ("load_audio + LogMel", _best(end_to_end, args.repeats)),
    ]
    print(f"{len(files)} files, {audio_s:.1f} s of audio, torch threads {torch.get_num_threads()}, "
          f"device {device}, best of {args.repeats}")
    print(f"| {'step':<32} | {'seconds':>8} | {'x real time':>11} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 13}|")
    for name, sec in rows:
        print(f"| {name:<32} | {sec:>8.3f} | {audio_s / sec:>11.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the overlapped-speech detector on simulated conversations of training speakers.

    python -m spkid.diarization.train_overlap AUDIO_DIR [AUDIO_DIR ...] --out spkid/diarization/overlap.pt

Each ``AUDIO_DIR`` holds one folder per speaker. Chunks of ``CHUNK_S`` seconds are simulated with
``spkid.diarization.simulate.build_conversation`` (1-3 speakers, short turns, 10-30 % of the speech overlapped),
each speaker in a room of their own (the training room bank, half the time), then noise at 5-20 dB (half the time)
and a telephone channel (``--telephone-share``, 15 %); the label of a 20 ms frame is 1 where two or more speakers' own signals have
speech. Log-mel features are computed once; the network trains for ``--epochs`` on them; precision and recall on
the held-out tenth of the chunks, per threshold, are printed and stored with the weights. The threshold that
diarization uses is a diarization setting (``DiarizeConfig.overlap_threshold``), chosen on conversations.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from spkid.diarization.overlap import CHUNK_S, FRAME_S, SAMPLE_RATE, OverlapNet, overlap_features
from spkid.diarization.simulate import build_conversation, speech_span


def speaker_pools(dirs: list[str], files_per_speaker: int, seed: int) -> dict[str, list]:
    """speaker -> [speech_span(utterance)] for up to ``files_per_speaker`` utterances of each speaker folder."""
    from spkid.audio.io import load_audio
    from spkid.data.scan import scan
    rng = np.random.default_rng(seed)
    todo = []
    for d in dirs:
        for spk in sorted(p for p in Path(d).iterdir() if p.is_dir()):
            files = scan(spk)
            pick = rng.choice(len(files), min(files_per_speaker, len(files)), replace=False) if files else []
            todo += [(f"{Path(d).name}/{spk.name}", files[i]) for i in pick]
    pools: dict[str, list] = {}
    for spk, f in tqdm(todo, desc="speakers' speech", unit="file"):
        wav, segs = speech_span(load_audio(f).numpy())
        if segs and wav.size >= SAMPLE_RATE // 2:
            pools.setdefault(spk, []).append((wav, segs))
    return pools


def simulate_chunks(pools: dict[str, list], n: int, seed: int, spectrum_bins: int = 0,
                    telephone_share: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """``n`` chunks: features ``(n, T, 40 + spectrum_bins)`` float16 (``overlap_features``) and frame labels
    ``(n, CHUNK_S / FRAME_S)`` uint8; ``telephone_share`` of them through a random telephone channel."""
    from spkid.audio.channel import telephone
    from spkid.audio.noise import NoiseBank, mix_at_snr
    from spkid.audio.rooms import RirBank, reverberate
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    rooms, noise = RirBank.simulate(200, seed=seed), NoiseBank.synthetic(seed=seed)
    names, size = sorted(pools), int(CHUNK_S * SAMPLE_RATE)
    n_out = int(round(CHUNK_S / FRAME_S))
    feats, labels = [], []
    for _ in tqdm(range(n), desc="simulated chunks", unit="chunk"):
        k = int(rng.choice([1, 2, 3], p=[0.1, 0.6, 0.3]))
        pool = {names[i]: pools[names[i]] for i in rng.choice(len(names), k, replace=False)}
        rirs = rooms.draw(k, g) if rng.random() < 0.5 else None

        def transform(piece, spk, rirs=rirs):
            if rirs is None:
                return piece
            x = torch.from_numpy(piece)[None]
            return reverberate(x, torch.tensor([x.shape[1]]), rirs[spk: spk + 1])[0].numpy()

        conv = build_conversation(pool, CHUNK_S, rng, turn_s=(0.5, 4.0), pause_s=(0.0, 0.6),
                                  overlap=float(rng.uniform(0.1, 0.3)), transform=transform)
        off = int(rng.integers(0, max(1, conv.wav.size - size)))
        wav = np.zeros(size, dtype=np.float32)
        piece = conv.wav[off: off + size]
        wav[: piece.size] = piece
        t = (np.arange(n_out) + 0.5) * FRAME_S + off / SAMPLE_RATE
        active = np.zeros(n_out, dtype=np.int64)
        for s in conv.reference:
            active += (t >= s.start) & (t < s.end)
        x, lengths = torch.from_numpy(wav)[None], torch.tensor([size])
        if rng.random() < 0.5:
            x = mix_at_snr(x, lengths, noise.draw(1, size, g).float(), torch.tensor([rng.uniform(5.0, 20.0)]))
        if rng.random() < telephone_share:
            x = telephone(x, lengths, g)
        x = x * float(10 ** (rng.uniform(-20, 0) / 20) / max(float(x.abs().max()), 1e-6))
        feats.append(overlap_features(x, spectrum_bins)[0].to(torch.float16).numpy())
        labels.append((active >= 2).astype(np.uint8))
    t_min = min(f.shape[0] for f in feats)
    return np.stack([f[:t_min] for f in feats]), np.stack(labels)


def train(feats: np.ndarray, labels: np.ndarray, *, epochs: int, batch: int, lr: float, seed: int,
          max_minutes: float, channels: int = 64, hidden: int = 64, spectrum_bins: int = 0) -> tuple[OverlapNet, dict]:
    """Train on 90 % of the chunks; returns the network and, on the other 10 %, frame precision and recall of
    overlap per threshold ``[[threshold, precision, recall], ...]``."""
    torch.manual_seed(seed)
    n = len(feats)
    order = np.random.default_rng(seed).permutation(n)
    val, tr = order[: max(1, n // 10)], order[max(1, n // 10):]
    net = OverlapNet(n_mels=feats.shape[2] - spectrum_bins, channels=channels, hidden=hidden,
                     spectrum_bins=spectrum_bins)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * -(-len(tr) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    X, Y = torch.from_numpy(feats), torch.from_numpy(labels).float()
    t0, done = time.time(), 0
    bar = tqdm(total=steps, desc="overlap detector", unit="step")
    for _ in range(epochs):
        net.train()
        for i in range(0, len(tr), batch):
            idx = torch.from_numpy(tr[i: i + batch])
            x = X[idx].float()
            x = x + 0.1 * torch.randn(x.shape[0], 1, x.shape[2]) * x.std()          # a random channel tilt
            logit = net(x)[:, : Y.shape[1]]
            y = Y[idx][:, : logit.shape[1]]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if time.time() - t0 > 60 * max_minutes:
                break
        if time.time() - t0 > 60 * max_minutes:
            break
    bar.close()
    net.eval()
    with torch.no_grad():
        p = torch.cat([torch.sigmoid(net(X[torch.from_numpy(val[i: i + 64])].float())[:, : Y.shape[1]])
                       for i in range(0, len(val), 64)]).numpy()
    y = labels[val][:, : p.shape[1]].astype(bool)
    rows = []
    for thr in np.round(np.arange(0.3, 0.96, 0.05), 2):
        hit = p >= thr
        prec = float((hit & y).sum() / max(hit.sum(), 1))
        rec = float((hit & y).sum() / max(y.sum(), 1))
        rows.append([float(thr), round(prec, 4), round(rec, 4)])
    scores = {"val_precision_recall": rows, "val_overlap_share": float(y.mean()), "steps": done,
              "minutes": (time.time() - t0) / 60}
    return net, scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spkid.diarization.train_overlap", description=__doc__.split("\n")[0])
    ap.add_argument("dirs", nargs="+", help="audio folders with one sub-folder per speaker")
    ap.add_argument("--out", required=True, help="where to write the detector (.pt)")
    ap.add_argument("--chunks", type=int, default=3000, help="simulated chunks of 8 s")
    ap.add_argument("--files-per-speaker", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="training stops here whatever the epoch")
    ap.add_argument("--channels", type=int, default=64, help="convolution channels of the network")
    ap.add_argument("--hidden", type=int, default=64, help="GRU units per direction")
    ap.add_argument("--spectrum-bins", type=int, default=0,
                    help="also feed the log power of this many 31.25 Hz FFT bins (0: the log-mel alone)")
    ap.add_argument("--telephone-share", type=float, default=0.15,
                    help="share of the chunks sent through a random telephone channel")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if (min(a.chunks, a.files_per_speaker, a.epochs, a.batch, a.channels, a.hidden) < 1 or a.lr <= 0
            or not 0 <= a.spectrum_bins <= 257 or not 0 <= a.telephone_share <= 1):
        print("spkid: error: --chunks, --files-per-speaker, --epochs, --batch, --channels, --hidden must be >= 1 and "
              "--lr > 0, --spectrum-bins in 0..257, --telephone-share in [0, 1]", file=sys.stderr)
        return 1
    for d in a.dirs:
        if not Path(d).is_dir():
            print(f"spkid: error: {d}: folder not found", file=sys.stderr)
            return 1
    pools = speaker_pools(a.dirs, a.files_per_speaker, a.seed)
    if len(pools) < 3:
        print(f"spkid: error: {', '.join(a.dirs)}: {len(pools)} speakers with speech; need at least 3",
              file=sys.stderr)
        return 1
    feats, labels = simulate_chunks(pools, a.chunks, a.seed, a.spectrum_bins, a.telephone_share)
    net, scores = train(feats, labels, epochs=a.epochs, batch=a.batch, lr=a.lr, seed=a.seed,
                        max_minutes=a.max_minutes, channels=a.channels, hidden=a.hidden,
                        spectrum_bins=a.spectrum_bins)
    meta = {"speakers": len(pools), "chunks": a.chunks, "dirs": [Path(d).name for d in a.dirs], **scores}
    torch.save({"config": net.config, "meta": meta,
                "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}},
               a.out)
    print(f"wrote {a.out}: {len(pools)} speakers, {scores['steps']} steps in {scores['minutes']:.1f} min; "
          "held-out chunks:")
    for thr, prec, rec in scores["val_precision_recall"]:
        print(f"  threshold {thr:.2f}: precision {prec:.3f}, recall {rec:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

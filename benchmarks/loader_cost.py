"""What the audio training loader costs per batch, against one training step of the default model (1 thread).

    python benchmarks/loader_cost.py [--data AUDIO_DIR] [--steps 20] [--json out.json]

Measures CPU time (the machine may be shared), each as the median over ``--steps`` batches of 64 crops of
0.5-1.5 s (the default recipe's crops):
the training step (default TDNN, forward + backward + AdamW on a (64, 150, 40) batch, fp32 and with the bf16
autocast the default recipe uses where the CPU has it); the clean crop; the crop + front end; the full
default augmentation + front end; and each augmentation kind alone at its default probability. Also the
one-off costs: decoding the corpus with speech detection, speech detection per minute of audio, the
simulated room bank and the codec bank. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "speechocean762-audio"


def _median_ms(fn, steps: int, warmup: int = 2) -> float:
    """Median CPU time of ``fn(i)`` in ms: process CPU time, not wall time, so other processes on a shared
    machine do not count (torch runs single-threaded here: all its work is in this process)."""
    for i in range(warmup):
        fn(10_000 + i)
    times = []
    for i in range(steps):
        t = time.process_time()
        fn(i)
        times.append(time.process_time() - t)
    return 1000 * statistics.median(times)


def step_ms(steps: int, amp: bool) -> float:
    """Forward + backward + AdamW of the default model on (64, 150, 40), 250 speakers."""
    from spkid.config import load_config
    from spkid.models.speaker_net import build_model
    torch.manual_seed(0)
    net = build_model(load_config("default"), 250).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, lengths, y = torch.randn(64, 150, 40), torch.full((64,), 150), torch.randint(0, 250, (64,))

    def one(_):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            _, logits = net(x, lengths, y)
            loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _median_ms(one, steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="training audio (speaker folders or a CSV)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: one per core)")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    from spkid.audio.augment import WaveAugmentConfig
    from spkid.audio.rooms import RirBank
    from spkid.audio.vad import speech_segments
    from spkid.data.audio_corpus import AudioCorpus, AudioCropSampler

    out: dict[str, float] = {}
    t = time.perf_counter()
    corpus = AudioCorpus.load(args.data, workers=args.workers, progress=False)
    out["decode_s"] = time.perf_counter() - t
    out["audio_minutes"], out["speech_minutes"] = corpus.seconds_before_vad / 60, corpus.seconds / 60
    sample = torch.cat([corpus.utterance(i) for i in range(min(len(corpus), 40))])
    speech_segments(sample[:16000])                          # the model loads once per process
    t = time.process_time()
    speech_segments(sample)
    out["vad_s_per_min"] = (time.process_time() - t) / (sample.shape[0] / 16000 / 60)
    t = time.process_time()
    RirBank.simulate(200)
    out["rooms_200_s"] = time.process_time() - t

    base = WaveAugmentConfig()
    off = dict(p_noise=0.0, p_reverb=0.0, p_band=0.0, p_telephone=0.0, p_codec=0.0, p_speed=0.0, p_pause=0.0)
    variants = {"full default augmentation": base, "clean crops (no augmentation)": None,
                "reverberation alone": replace(base, **{**off, "p_reverb": base.p_reverb}),
                "noise alone (babble + synthetic)": replace(base, **{**off, "p_noise": base.p_noise}),
                "band limit alone": replace(base, **{**off, "p_band": base.p_band}),
                "telephone alone": replace(base, **{**off, "p_telephone": base.p_telephone}),
                "codec bank alone": replace(base, **{**off, "p_codec": base.p_codec}),
                "pauses alone": replace(base, **{**off, "p_pause": base.p_pause}),
                "speed perturbation alone (p=0.6)": replace(base, **{**off, "p_speed": 0.6})}
    rows = []
    for name, cfg in variants.items():
        t = time.perf_counter()
        s = AudioCropSampler(corpus, batch_size=64, crop_seconds=(0.5, 1.5), augment=cfg, seed=0,
                             workers=args.workers or 2)
        init = time.perf_counter() - t
        rows.append((name, _median_ms(s.waveforms, args.steps), _median_ms(s.batch, args.steps), init))
    out["step_fp32_ms"] = step_ms(args.steps // 2 or 1, amp=False)
    out["step_bf16_ms"] = step_ms(args.steps // 2 or 1, amp=True)

    print(f"corpus: {len(corpus)} files, {out['audio_minutes']:.1f} min decoded in {out['decode_s']:.1f} s "
          f"({out['speech_minutes']:.1f} min of speech kept by VAD); VAD {out['vad_s_per_min']:.3f} CPU s per minute "
          f"of audio; 200 simulated rooms {out['rooms_200_s']:.1f} CPU s")
    print(f"training step (default TDNN, 64x150x40, 1 thread): fp32 {out['step_fp32_ms']:.0f} ms, "
          f"bf16 autocast {out['step_bf16_ms']:.0f} ms\n")
    print("| loader (64 crops of 0.5-1.5 s) | waveforms ms | + front end ms | % of fp32 step | % of bf16 step | "
          "setup s (wall) |")
    print("|---|---|---|---|---|---|")
    for name, wav_ms, batch_ms, init in rows:
        print(f"| {name} | {wav_ms:.1f} | {batch_ms:.1f} | {100 * batch_ms / out['step_fp32_ms']:.0f}% | "
              f"{100 * batch_ms / out['step_bf16_ms']:.0f}% | {init:.1f} |")
        out[f"{name} ms"] = batch_ms
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

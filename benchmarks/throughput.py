"""Throughput on the shared speechocean762 data: training, inference, the crop loader and the feature cache.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/throughput.py --threads 2
    .venv/bin/python benchmarks/throughput.py --device cuda

In one run, for each preset (``hw4-sample`` and ``default`` unless ``--presets``), a freshly built model
(random weights, the preset's batch, crops and ``train.amp``; ``--amp`` overrides) is timed on:
- training: ``--steps`` full steps (crop batch, forward, loss, backward, AdamW) after ``--warmup`` untimed ones;
  segments/s = steps/s x batch size;
- inference: the 500 public test utterances (``testdata.json``) to class probabilities, once batched by
  length (``spkid.infer.embed_features``, ``infer.batch_frames`` frames per batch) and once one utterance
  at a time through the same function; the faster of ``--repeats`` batched runs counts.
Then the data path alone: ``CropSampler.batch`` with the ``default`` preset's data settings (samples/s, and
its batch rate over the ``default`` model's training step rate); building the memory-mapped float16 cache
of the 3,745 training files in a temporary directory; loading from that cache versus reading every
``uttr-*.pt`` file, each followed by one pass over all frames (a mapped cache is read lazily, so opening
it alone says little). Files just written or read sit in the OS page cache: these are warm-cache times.
Targets on a 2-core CPU: loader >= 20x the ``default`` training step rate; batched >= 5x one-at-a-time.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spkid.config import apply_overrides, load_config  # noqa: E402
from spkid.data.sampler import CropSampler  # noqa: E402
from spkid.data.features import load_test_features, load_train_features  # noqa: E402
from spkid.training.distributed import cpu_cores  # noqa: E402
from spkid.runtime import resolve_device  # noqa: E402
from spkid.scoring.model import class_scores, embed_features  # noqa: E402
from spkid.models.speaker_net import build_model  # noqa: E402
from spkid.runtime import flush_denormal, resolve_amp  # noqa: E402
from spkid.training.loop import feature_stats  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = SHARED / "data" / "speechocean762"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_all(feats) -> float:
    """One pass over every frame (forces a lazily mapped cache to be read)."""
    return float(sum(float(f.float().sum()) for f in feats))


def bench_cache(root: Path, n_mels: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        load_train_features(root, n_mels, progress=False, cache_dir=tmp)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = load_train_features(root, n_mels, progress=False, cache_dir=tmp)
        cached_open = time.perf_counter() - t0
        _read_all(cached.feats)
        cached_read = time.perf_counter() - t0
        del cached
    t0 = time.perf_counter()
    direct = load_train_features(root, n_mels, progress=False)
    direct_open = time.perf_counter() - t0
    _read_all(direct.feats)
    direct_read = time.perf_counter() - t0
    return {"files": len(direct.utts), "frames": sum(f.shape[0] for f in direct.feats), "build": build,
            "cached_open": cached_open, "cached_read": cached_read, "direct_open": direct_open,
            "direct_read": direct_read}


def _sampler(cfg, feats, labels) -> CropSampler:
    d = cfg.data
    return CropSampler(feats, labels, batch_size=d.batch_size, crop_frames=d.crop_frames,
                       crop_min_frames=d.crop_min_frames, seed=0)


def bench_loader(cfg, feats, labels, batches: int) -> float:
    """Samples per second of ``CropSampler.batch`` alone."""
    sampler = _sampler(cfg, feats, labels)
    sampler.batch(0)
    t0 = time.perf_counter()
    for k in range(1, batches + 1):
        sampler.batch(k)
    return batches * cfg.data.batch_size / (time.perf_counter() - t0)


def bench_model(cfg, train, test_feats, device, steps: int, warmup: int, repeats: int) -> dict:
    feats, labels, stats = train
    net = build_model(cfg, max(labels) + 1)
    net.set_input_stats(*stats)
    net.to(device)
    params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
    amp_name = resolve_amp(cfg.train.amp, device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp_name)
    scaler = torch.amp.GradScaler(enabled=amp is torch.float16 and device.type == "cuda")
    sampler = _sampler(cfg, feats, labels)
    net.train()
    with flush_denormal():      # as train() does: denormal floats are 20x+ slower on x86 CPUs
        for k in range(warmup + steps):
            if k == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, lengths, y = (v.to(device) for v in sampler.batch(k))
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(net(x, lengths, y)[1].float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        _sync(device)
        steps_per_s = steps / (time.perf_counter() - t0)

    def predict_batched():
        class_scores(net, embed_features(net, test_feats, cfg.infer, device), device).argmax(-1)

    def predict_single():
        for f in test_feats:
            class_scores(net, embed_features(net, [f], cfg.infer, device), device).argmax(-1)

    embed_features(net, test_feats[:16], cfg.infer, device)        # warm-up (allocator, kernels)
    batched = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_batched()
        _sync(device)
        batched.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    predict_single()
    _sync(device)
    single = time.perf_counter() - t0
    with FlopCounterMode(display=False) as counter:   # the useful work: no padding, one utterance at a time
        predict_single()
    gflop = counter.get_total_flops() / 1e9
    n = len(test_feats)
    return {"params": params, "batch": cfg.data.batch_size, "amp": amp_name,
            "batch_frames": cfg.infer.batch_frames, "steps_per_s": steps_per_s,
            "segments_per_s": steps_per_s * cfg.data.batch_size, "infer_batched": n / min(batched),
            "infer_single": n / single, "speedup": single / min(batched), "gflop": gflop,
            "gflops_batched": gflop / min(batched), "gflops_single": gflop / single}


def bench_gemm(device: torch.device, n: int = 1024, reps: int = 20) -> float:
    """GFLOP/s of a large float32 matrix product: what this device's threads can do at best."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="HW4 directory (default: ../shared/data/speechocean762)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--presets", nargs="+", default=["hw4-sample", "default"])
    ap.add_argument("--amp", choices=["none", "bf16", "fp16", "auto"], help="override train.amp of every preset")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per preset")
    ap.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    ap.add_argument("--loader-batches", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2, help="batched inference runs (fastest counts)")
    ap.add_argument("--batch-frames", type=int, default=0,
                    help="override infer.batch_frames (frames per batched-inference batch; 0: the preset's)")
    ap.add_argument("--skip-cache", action="store_true", help="skip the feature-cache measurement")
    a = ap.parse_args()
    root = Path(a.data)
    if not (root / "metadata.json").is_file():
        print(f"throughput.py: {root}: no HW4 data (metadata.json) here; pass --data", file=sys.stderr)
        return 1
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.amp == "fp16" and device.type != "cuda":
        print("throughput.py: --amp fp16 needs --device cuda (as in training); use bf16 on a CPU", file=sys.stderr)
        return 1
    base = load_config("default")
    load = os.getloadavg()
    n_mels = base.features.n_mels

    cache = None if a.skip_cache else bench_cache(root, n_mels)
    with tempfile.TemporaryDirectory() as tmp:   # the training path reads through the cache, as `--cache` does
        train_set = load_train_features(root, n_mels, progress=False, cache_dir=tmp)
        test_feats = [f.float() for f in load_test_features(root, n_mels, progress=False).feats]
        spk = {s: i for i, s in enumerate(train_set.speakers)}
        labels = [spk[u.speaker] for u in train_set.utts]
        train = (train_set.feats, labels, feature_stats(train_set.feats))
        loader = bench_loader(base, train_set.feats, labels, a.loader_batches)
        results = {}
        for name in a.presets:
            cfg = load_config(name)
            if a.amp:
                cfg = apply_overrides(cfg, [f"train.amp={a.amp}"])
            if a.batch_frames:
                cfg = apply_overrides(cfg, [f"infer.batch_frames={a.batch_frames}"])
            results[name] = bench_model(cfg, train, test_feats, device, a.steps, a.warmup, a.repeats)
        del train_set, train

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"device {device}{gpu}; CPU {cpu} ({cpu_cores()} cores); {torch.get_num_threads()} torch threads; "
          f"torch {torch.__version__}; load average {load[0]:.2f} at start (about 0 on an idle machine); "
          f"{len(labels)} training / {len(test_feats)} test utterances, {len(set(labels))} speakers\n")
    gemm = bench_gemm(device)
    print("| preset | params | amp | batch | train steps/s | train segments/s | batch_frames "
          "| predict utt/s (batched) | predict utt/s (one at a time) | batched speedup "
          "| GFLOP/s batched, one at a time |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['amp']} | {r['batch']} | {r['steps_per_s']:.2f} | "
              f"{r['segments_per_s']:.0f} | {r['batch_frames']} | {r['infer_batched']:.0f} | {r['infer_single']:.0f} | "
              f"{r['speedup']:.1f}x | {r['gflops_batched']:.1f}, {r['gflops_single']:.1f} |")
    work = ", ".join(f"{k} {r['gflop']:.0f}" for k, r in results.items())
    print(f"\nPrediction of the {len(test_feats)} test utterances does {work} GFLOP (forward pass, padding "
          f"excluded). A 1024x1024 float32 matrix product runs at {gemm:.0f} GFLOP/s here; batched prediction "
          f"cannot beat that, so its speedup is at most {gemm:.0f} / (one-at-a-time GFLOP/s).")
    print("\n| data path | time or rate |\n|---|---:|")
    d = base.data
    print(f"| crop loader, `CropSampler.batch` (batch {d.batch_size}, crops {d.crop_min_frames}-{d.crop_frames}) "
          f"| {loader:.0f} samples/s ({loader / d.batch_size:.1f} batches/s) |")
    if "default" in results:
        ratio = loader / d.batch_size / results["default"]["steps_per_s"]
        print(f"| loader batch rate / `default` training step rate | {ratio:.0f}x |")
    if cache:
        print(f"| feature cache build ({cache['files']} files, {cache['frames']:,} frames) | {cache['build']:.2f} s |")
        print(f"| cached load: open / open + read all frames | {cache['cached_open']:.3f} s / "
              f"{cache['cached_read']:.2f} s |")
        print(f"| direct per-file load: open / open + read all frames | {cache['direct_open']:.2f} s / "
              f"{cache['direct_read']:.2f} s |")
    checks = []
    if "default" in results:
        checks.append(("loader >= 20x default training step rate", ratio >= 20))
        checks.append(("default batched prediction >= 5x one at a time", results["default"]["speedup"] >= 5))
    for text, ok in checks:
        print(f"\ntarget {text}: {'met' if ok else 'NOT met'}", end="")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

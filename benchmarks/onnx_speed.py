"""ONNX Runtime vs eager PyTorch on batched 4-second utterances, with the arithmetic rate and where the time goes.

    .venv/bin/python benchmarks/onnx_speed.py                       # default + conformer presets, 1 and 2 threads
    .venv/bin/python benchmarks/onnx_speed.py --presets default --threads 1

For each preset a model with random weights (speed does not depend on them) is saved as a checkpoint and
loaded twice, ``spkid.load(ckpt, "cpu")`` and ``spkid.load(ckpt, runtime="onnx")`` (the export cached beside it,
``session_options``: all graph optimisations, no spinning), plus the int8 graph (``quantize=True``). Each
runtime embeds ``--batch`` utterances of 400 frames (4 s) per call, through the same ``embed_features``, for
``--seconds`` after a warm-up; utt/s counts finished calls. GFLOP/s = the forward FLOPs of one batch
(``torch.utils.flop_counter``) over the time per batch, beside a 1024x1024 float32 matrix product (the most
these threads do, ``benchmarks/throughput.py``). ``--profile`` adds the top operators of each runtime (torch
profiler; ONNX Runtime's own profile) for the first preset at the first thread count. Target (issue 18):
ONNX Runtime >= 1.5x eager, or a measured reason why not.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import spkid  # noqa: E402
from spkid.config import InferConfig, load_config  # noqa: E402
from spkid.models.speaker_net import build_model  # noqa: E402
from spkid.scoring.model import embed_features  # noqa: E402
from spkid.training.checkpoint import save_checkpoint  # noqa: E402
from throughput import bench_gemm  # noqa: E402

FRAMES, N_MELS, SPEAKERS = 400, 40, 600


def make_checkpoint(preset: str, path: Path) -> None:
    torch.manual_seed(0)
    cfg = load_config(preset)
    net = build_model(cfg, SPEAKERS)
    net.set_input_stats(torch.full((N_MELS,), -5.0), torch.full((N_MELS,), 2.2))
    save_checkpoint(path, {"config": cfg.to_dict(), "speakers": [f"s{i}" for i in range(SPEAKERS)],
                           "model": net.state_dict()})


def rate(fn, seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn()
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - t0)


def eager_profile(model, batch) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            model.embed_raw(batch)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows)
    return [(k, t / total) for k, t in sorted(rows, key=lambda r: -r[1])[:6]]


def ort_profile(onnx_path: Path, threads: int, batch) -> list[tuple[str, float]]:
    import numpy as np
    import onnxruntime as ort
    from spkid.data.sampler import pad_batch
    from spkid.scoring.onnx_runtime import session_options
    opts = session_options(threads)
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        x, lengths = pad_batch(batch)
        for _ in range(3):
            sess.run(["embedding"], {"feats": x.numpy(), "lengths": lengths.numpy().astype(np.int64)})
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    return [(k, v / total) for k, v in by_op.most_common(6)]


def bench(preset: str, threads: int, a, tmp: Path) -> dict:
    torch.set_num_threads(threads)
    ckpt = tmp / f"{preset}.ckpt"
    if not ckpt.exists():
        make_checkpoint(preset, ckpt)
    eager = spkid.load(ckpt, "cpu")
    onnx = spkid.load(ckpt, runtime="onnx", threads=threads)
    int8 = spkid.load(ckpt, runtime="onnx", threads=threads, quantize=True)
    g = torch.Generator().manual_seed(1)
    batch = [torch.randn(FRAMES, N_MELS, generator=g) * 2 - 5 for _ in range(a.batch)]
    cfg = InferConfig(batch_frames=FRAMES * a.batch)         # the whole batch in one call
    for m in (eager, onnx, int8):
        m.cfg.infer = cfg
    with FlopCounterMode(display=False) as fc:
        embed_features(eager.net, batch, cfg)
    gflop = fc.get_total_flops() / 1e9
    r = {"preset": preset, "threads": threads, "gflop_per_batch": gflop, "gemm_gflops": bench_gemm(torch.device("cpu"))}
    for name, m in (("eager", eager), ("onnx", onnx), ("int8", int8)):
        calls = rate(lambda: m.embed_raw(batch), a.seconds)
        r[name] = {"utt_s": calls * a.batch, "gflops": calls * gflop}
    ref = eager.embed_raw(batch)
    r["max_abs_diff_onnx"] = float((onnx.embed_raw(batch) - ref).abs().max())
    r["cos_int8"] = float(torch.nn.functional.cosine_similarity(int8.embed_raw(batch), ref).min())
    if a.profile and not a._profiled:
        a._profiled = True
        r["profile_eager"] = eager_profile(eager, batch)
        r["profile_onnx"] = ort_profile(onnx.runner.path, threads, batch)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["default", "conformer"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batch", type=int, default=32, help="4-s utterances per call")
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per runtime")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    a._profiled = False
    load0 = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in a.presets:
            for threads in a.threads:
                rows.append(bench(preset, threads, a, Path(tmp)))
    print(f"{a.batch} utterances of {FRAMES} frames per call; load average {load0[0]:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at the end (2 cores; 0 = idle)\n")
    print("| preset | threads | GFLOP/batch | eager utt/s (GFLOP/s) | ONNX Runtime utt/s (GFLOP/s) | ORT / eager "
          "| ORT int8 utt/s | int8 / fp32 ORT | 1024² GEMM GFLOP/s | max abs diff ORT, min cos int8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e, o, q = r["eager"], r["onnx"], r["int8"]
        print(f"| {r['preset']} | {r['threads']} | {r['gflop_per_batch']:.1f} | {e['utt_s']:.0f} ({e['gflops']:.1f}) "
              f"| {o['utt_s']:.0f} ({o['gflops']:.1f}) | {o['utt_s'] / e['utt_s']:.2f}x | {q['utt_s']:.0f} "
              f"| {q['utt_s'] / o['utt_s']:.2f}x | {r['gemm_gflops']:.0f} | {r['max_abs_diff_onnx']:.1e}, "
              f"{r['cos_int8']:.4f} |")
    for r in rows:
        if "profile_eager" in r:
            print(f"\nwhere the time goes ({r['preset']}, {r['threads']} thread(s)), share of operator time:")
            print("- eager: " + ", ".join(f"{k} {v:.0%}" for k, v in r["profile_eager"]))
            print("- ONNX Runtime: " + ", ".join(f"{k} {v:.0%}" for k, v in r["profile_onnx"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

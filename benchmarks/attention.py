"""Forward+backward time and peak memory of every attention variant against sequence length.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attention.py --threads 2
    .venv/bin/python benchmarks/attention.py --device cuda

One step = ``attn(x, valid)`` on ``x`` ``(B, T, D)`` (requires grad, every frame real), then
``y.sum().backward()``. After one warm-up step each, the variants of one length are timed
round-robin for 2 to 10 rounds (about ``--budget`` seconds per variant) and each keeps its fastest
step: the least disturbed by other processes on a shared machine.

Peak memory is the highest amount of memory the step holds beyond what existed before it:
- CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of the step
  (a separate, untimed run); we replay them in time order and take the maximum running sum.
- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
  allocated before the step.

The crossover of a variant is the first measured T at which it beats ``full``; ``~N`` is a
log-log interpolation between the two measured lengths around the sign change.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spkid.models.attention import ATTENTION, build_attention  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(attn, x, valid) -> None:
    attn.zero_grad(set_to_none=True)
    x.grad = None
    attn(x, valid).sum().backward()


def time_step(attn, x, valid, repeats: int) -> float:
    """Fastest seconds of one forward+backward step over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        _sync(x.device)
        t0 = time.perf_counter()
        _step(attn, x, valid)
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return min(times)


def peak_memory(attn, x, valid) -> int:
    """Peak bytes held by one forward+backward step beyond what was allocated before it."""
    attn.zero_grad(set_to_none=True)
    x.grad = None
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        base = torch.cuda.memory_allocated(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        _step(attn, x, valid)
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(attn, x, valid)
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()                               # negative for a free
        peak = max(peak, live)
    return peak


def crossover(lengths, base, other) -> str:
    """First length where ``other < base`` and a log-log interpolated estimate of the crossing."""
    for i, (b, o) in enumerate(zip(base, other)):
        if o < b:
            if i == 0:
                return f"<={lengths[0]}"
            r0, r1 = math.log(other[i - 1] / base[i - 1]), math.log(o / b)
            f = r0 / (r0 - r1)
            est = math.exp(math.log(lengths[i - 1]) + f * (math.log(lengths[i]) - math.log(lengths[i - 1])))
            return f"{lengths[i]} (~{est:.0f})"
    return f">{lengths[-1]}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048, 8192])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=144)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=list(ATTENTION), choices=list(ATTENTION))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--budget", type=float, default=6.0,
                    help="timed seconds aimed at per variant and length (2 to 10 rounds)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if "full" not in args.variants:
        args.variants.insert(0, "full")

    times = {n: [] for n in args.variants}
    mems = {n: [] for n in args.variants}
    for T in args.lengths:
        torch.manual_seed(0)
        x = torch.randn(args.batch, T, args.d_model, device=device, requires_grad=True)
        valid = torch.ones(args.batch, T, dtype=torch.bool, device=device)
        mods = {n: build_attention(n, d_model=args.d_model, n_heads=args.heads, dropout=0.0, rope=True).to(device)
                for n in args.variants}
        # warm-up step (allocator, kernels), which also probes the step time
        probe = {n: time_step(attn, x, valid, 1) for n, attn in mods.items()}
        rounds = max(2, min(10, int(args.budget * len(mods) / sum(probe.values()))))
        # round-robin, keeping each variant's fastest step: bursts of load from other
        # processes then hit every variant alike instead of whichever ran at that moment
        best = dict.fromkeys(mods, math.inf)
        for _ in range(rounds):
            for n, attn in mods.items():
                best[n] = min(best[n], time_step(attn, x, valid, 1))
        for n, attn in mods.items():
            times[n].append(best[n])
            mems[n].append(peak_memory(attn, x, valid))
        del mods, x, valid

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device={device} threads={threads} batch={args.batch} d_model={args.d_model} heads={args.heads} "
          f"torch={torch.__version__}")
    head = "| variant | " + " | ".join(f"T={T}" for T in args.lengths) + " | faster than full from T |"
    rule = "|---|" + "---|" * (len(args.lengths) + 1)
    print("\nforward+backward time, ms\n" + head + "\n" + rule)
    for n in args.variants:
        cells = " | ".join(f"{t * 1e3:.1f}" for t in times[n])
        cross = "-" if n == "full" else crossover(args.lengths, times["full"], times[n])
        print(f"| {n} | {cells} | {cross} |")
    print("\npeak memory of the step, MiB\n" + head.replace("faster", "smaller") + "\n" + rule)
    for n in args.variants:
        cells = " | ".join(f"{m / 2**20:.1f}" for m in mems[n])
        cross = "-" if n == "full" else crossover(args.lengths, mems["full"], mems[n])
        print(f"| {n} | {cells} | {cross} |")


if __name__ == "__main__":
    main()

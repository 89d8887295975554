"""The full-size HW4 path on this machine, alone and beside a CPU-bound neighbour, in one table.

    .venv/bin/python benchmarks/scale.py                         # writes /tmp/spkid-rehearsal once (rehearsal.py)
    .venv/bin/python benchmarks/scale.py --data DIR --full       # all 8,000 predictions in every mode (slower)

On the rehearsal set (``benchmarks/rehearsal.py``: 600 speakers, 56,666 float32 training files, 8,000 test
utterances), each measurement runs in a fresh process, and its peak RSS is that process's own ``ru_maxrss``
from ``os.wait4`` (the ``getrusage(RUSAGE_CHILDREN)`` record of that one child), and in brackets the private
part at the end (``RssAnon``: not the mapped file pages, which are shared and can be dropped):
- load: every training file into memory (``load_features``, what ``load_train_features`` does without a
  cache; timed as the first phase of the cache rebuild, which is exactly that plus one write) vs the
  memory-mapped float16 cache (``cache_dir=``): open, then one pass over all frames (read on first touch);
- cache: rebuild (read every file, write one float16 file) vs reuse (open an existing one);
- training: segments/s of the crop loader alone (``CropSampler.batch``) vs full steps of the ``default``
  preset (forward, loss, backward, AdamW; its ``train.amp``) on the mapped cache;
- prediction of the 8,000 test utterances: eager PyTorch batched by length, eager one utterance at a time, and
  ONNX Runtime batched (``--runtime onnx``), a ``default``-preset model with 600 classes and random weights
  (speed does not depend on the weights). Without ``--full`` each mode runs on a random ``--predict-utts``
  subset (the same for all) and the time for 8,000 is extrapolated from its rate;
then all of it again beside one ``python -c 'while True: pass'`` process (in its own session: see
``benchmarks/shared_cpu.py`` on scheduler autogroups). Threads: ``--threads`` (0: spkid's
automatic choice, the free cores; the "threads" row says what each column used). Every step is bounded by
``--budget`` seconds (the rate counts what finished): a few minutes in all. Files come from the OS page cache
after the first read (warm-cache times).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

HOG = "while True: pass"
N_MELS = 40


# -- tasks: each runs in its own process and prints one JSON line ---------------------------------------------

def _anon_gib() -> float:
    """This process's private (anonymous) resident memory now: RSS minus mapped file pages, which the kernel
    shares between processes and may drop (``RssAnon`` in ``/proc/self/status``)."""
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


def _threads(n: int) -> int:
    from spkid.runtime import use_threads
    return use_threads(n)


def task_cache_build(a) -> dict:
    """Rebuild the cache; its first phase reads every file into memory exactly as a run without a cache does
    (``load_features``), so that phase's time and this process's peak RSS are also the in-memory figures."""
    from spkid.data import features
    read = {}
    inner = features.load_features

    def timed(*args, **kw):
        t = time.perf_counter()
        out = inner(*args, **kw)
        read["seconds"], read["files"], read["frames"] = time.perf_counter() - t, len(out), sum(len(f) for f in out)
        read["anon_gib"] = _anon_gib()                                 # every feature held in memory now
        return out
    features.load_features = timed
    for old in Path(a.cache).glob("*"):
        old.unlink()
    t0 = time.perf_counter()
    features.load_train_features(a.data, N_MELS, progress=False, cache_dir=a.cache)
    return {"seconds": time.perf_counter() - t0, "read_s": read["seconds"], "files": read["files"],
            "frames": read["frames"], "bytes": sum(p.stat().st_size for p in Path(a.cache).glob("*.f16")),
            "anon_gib": read["anon_gib"]}


def task_cache_reuse(a) -> dict:
    from spkid.data.features import load_train_features
    t0 = time.perf_counter()
    d = load_train_features(a.data, N_MELS, progress=False, cache_dir=a.cache)
    opened = time.perf_counter() - t0
    total = sum(float(f.float().sum()) for f in d.feats)            # touch every page once
    return {"open_s": opened, "read_s": time.perf_counter() - t0, "checksum": total, "anon_gib": _anon_gib()}


def task_train(a) -> dict:
    import torch
    import torch.nn.functional as F
    from spkid.config import load_config
    from spkid.data.features import load_train_features
    from spkid.data.sampler import CropSampler
    from spkid.models.speaker_net import build_model
    from spkid.runtime import flush_denormal, resolve_amp
    threads = _threads(a.threads)
    cfg = load_config("default")
    data = load_train_features(a.data, N_MELS, progress=False, cache_dir=a.cache)
    spk = {s: i for i, s in enumerate(data.speakers)}
    labels = [spk[u.speaker] for u in data.utts]
    d = cfg.data
    sampler = CropSampler(data.feats, labels, batch_size=d.batch_size, crop_frames=d.crop_frames,
                          crop_min_frames=d.crop_min_frames, seed=0)
    sampler.batch(0)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < a.budget / 4 and n < 400:
        n += 1
        sampler.batch(n)
    loader = n * d.batch_size / (time.perf_counter() - t0)
    net = build_model(cfg, len(data.speakers))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.train.lr)
    amp = resolve_amp(cfg.train.amp, torch.device("cpu"))
    dtype = {"bf16": torch.bfloat16}.get(amp)
    net.train()
    steps, t0 = 0, None
    with flush_denormal():
        for k in range(10_000):
            if k == 2:
                t0 = time.perf_counter()                              # two untimed warm-up steps
            if t0 is not None and (time.perf_counter() - t0 > a.budget or k - 2 >= a.train_steps):
                break
            x, lengths, y = sampler.batch(k)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(x, lengths, y)[1].float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps = k - 1
    step_rate = steps * d.batch_size / (time.perf_counter() - t0)
    return {"loader_sps": loader, "train_sps": step_rate, "steps": steps, "amp": amp, "threads": threads}


def make_checkpoint(data: Path, path: Path) -> None:
    """A ``default``-preset model for the rehearsal speakers, random weights, saved as a spkid checkpoint."""
    import torch
    from spkid.config import load_config
    from spkid.data.hw4 import read_mapping
    from spkid.models.speaker_net import build_model
    from spkid.training.checkpoint import save_checkpoint
    torch.manual_seed(0)
    cfg = load_config("default")
    speakers = read_mapping(data)
    net = build_model(cfg, len(speakers))
    net.set_input_stats(torch.full((N_MELS,), -5.0), torch.full((N_MELS,), 2.2))
    save_checkpoint(path, {"config": cfg.to_dict(), "speakers": speakers, "model": net.state_dict()})


def task_predict(a) -> dict:
    import torch
    import spkid
    from spkid.data.features import load_test_features
    from spkid.scoring.model import class_scores
    threads = _threads(a.threads)
    model = spkid.load(a.ckpt, "cpu", runtime="onnx" if a.mode == "onnx" else "torch", threads=threads)
    test = load_test_features(a.data, N_MELS, progress=False, cache_dir=a.cache)
    idx = list(range(len(test.feats)))
    if a.predict_utts and a.predict_utts < len(idx):
        idx = sorted(random.Random(0).sample(idx, a.predict_utts))
    feats = [test.feats[i].float() for i in idx]
    model.embed_raw(feats[:8])                                        # warm-up: allocator, kernels, ORT arenas
    t0, done = time.perf_counter(), 0
    if a.mode == "single":
        for f in feats:
            class_scores(model.net, model.embed_raw([f])).argmax(-1)
            done += 1
            if time.perf_counter() - t0 > a.budget:
                break
    else:
        class_scores(model.net, model.embed_raw(feats)).argmax(-1)
        done = len(feats)
    seconds = time.perf_counter() - t0
    return {"utts": done, "seconds": seconds, "per_8000_s": seconds / done * len(test.feats),
            "n_test": len(test.feats), "threads": threads, "torch_threads": torch.get_num_threads()}


TASKS = {"cache_build": task_cache_build, "cache_reuse": task_cache_reuse,
         "train": task_train, "predict": task_predict}


# -- the driver -------------------------------------------------------------------------------------------------

def run_task(name: str, a, *, hogs: int = 0, mode: str = "") -> dict:
    """``name`` in a fresh process beside ``hogs`` busy loops; its JSON plus ``rss_gib`` (that child's peak)."""
    cmd = [sys.executable, __file__, "--task", name, "--data", str(a.data), "--cache", str(a.cache),
           "--ckpt", str(a.ckpt), "--threads", str(a.threads), "--budget", str(a.budget),
           "--predict-utts", str(a.predict_utts), "--train-steps", str(a.train_steps), "--mode", mode]
    neighbours = [subprocess.Popen([sys.executable, "-c", HOG], start_new_session=True)   # its own session, as a
                  for _ in range(hogs)]                                                    # neighbour's would be
    try:
        if hogs:
            time.sleep(1.0)
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            text, errors = out.read(), err.read()
    finally:
        for h in neighbours:
            h.kill()
            h.wait()
    if p.returncode != 0:
        raise RuntimeError(f"scale.py task {name} failed:\n{errors[-3000:]}")
    r = json.loads(text.strip().splitlines()[-1])
    r["rss_gib"] = usage.ru_maxrss / 2 ** 20                          # Linux: KiB
    return r


def measure(a, hogs: int) -> dict:
    r = {"cache_build": run_task("cache_build", a, hogs=hogs),
         "cache_reuse": run_task("cache_reuse", a, hogs=hogs),
         "train": run_task("train", a, hogs=hogs)}
    for mode in ("batched", "single", "onnx"):
        r[f"predict_{mode}"] = run_task("predict", a, hogs=hogs, mode=mode)
    r["load"] = os.getloadavg()
    return r


def render(res: dict[str, dict], a) -> str:
    cols = list(res)
    first = res[cols[0]]
    files, frames = first["cache_build"]["files"], first["cache_build"]["frames"]
    pr = first["predict_batched"]
    n = pr["n_test"]
    sub = "" if pr["utts"] == n else f" (timed on {pr['utts']:,} of {n:,}, extrapolated)"

    def row(label, fn):
        return f"| {label} | " + " | ".join(fn(res[c]) for c in cols) + " |"

    def pred(mode):
        def f(r):
            p = r[f"predict_{mode}"]
            note = "" if p["utts"] == pr["utts"] or mode != "single" else f" ({p['utts']} utts in budget)"
            return f"{p['per_8000_s']:.1f} s, {p['n_test'] / p['per_8000_s']:.0f} utt/s, {p['rss_gib']:.2f} GiB{note}"
        return f
    lines = [f"| {files:,} training files, {frames:,} frames | " + " | ".join(cols) + " |",
             "|---|" + "---:|" * len(cols),
             row("load every file into memory: time, peak RSS (private)",
                 lambda r: f"{r['cache_build']['read_s']:.1f} s, {r['cache_build']['rss_gib']:.2f} GiB "
                           f"({r['cache_build']['anon_gib']:.2f})"),
             row("memory-mapped cache: open / open + read all, peak RSS (private)",
                 lambda r: f"{r['cache_reuse']['open_s']:.2f} s / {r['cache_reuse']['read_s']:.1f} s, "
                           f"{r['cache_reuse']['rss_gib']:.2f} GiB ({r['cache_reuse']['anon_gib']:.2f})"),
             row("cache rebuild (read every file, write float16): time, peak RSS",
                 lambda r: f"{r['cache_build']['seconds']:.1f} s, {r['cache_build']['rss_gib']:.2f} GiB"),
             row("cache reuse (open an existing cache)", lambda r: f"{r['cache_reuse']['open_s']:.2f} s"),
             row("crop loader alone (`CropSampler.batch`, default preset): segments/s",
                 lambda r: f"{r['train']['loader_sps']:,.0f}"),
             row("training step, default preset: segments/s",
                 lambda r: f"{r['train']['train_sps']:.0f} ({r['train']['amp']}, {r['train']['steps']} steps)"),
             row("loader / training rate", lambda r: f"{r['train']['loader_sps'] / r['train']['train_sps']:.0f}x"),
             row(f"predict {n:,}: eager batched{sub}", pred("batched")),
             row(f"predict {n:,}: eager one by one", pred("single")),
             row(f"predict {n:,}: ONNX Runtime batched", pred("onnx")),
             row("ONNX Runtime batched / eager batched",
                 lambda r: f"{r['predict_batched']['per_8000_s'] / r['predict_onnx']['per_8000_s']:.2f}x"),
             row("threads used (training, prediction)",
                 lambda r: f"{r['train']['threads']}, {r['predict_batched']['threads']}"),
             row("load average after (1 / 5 min)", lambda r: f"{r['load'][0]:.1f} / {r['load'][1]:.1f}")]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/spkid-rehearsal", help="rehearsal set (written when missing)")
    ap.add_argument("--cache", help="feature-cache folder (default: a temp folder)")
    ap.add_argument("--threads", type=int, default=0, help="torch / ONNX Runtime threads (0: spkid's auto choice)")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds per timed loop (training, one-by-one)")
    ap.add_argument("--predict-utts", type=int, default=1500, help="test utterances timed per prediction mode")
    ap.add_argument("--train-steps", type=int, default=30, help="most training steps timed")
    ap.add_argument("--full", action="store_true", help="predict all test utterances in every mode")
    ap.add_argument("--alone-only", action="store_true", help="skip the column beside a CPU-bound process")
    ap.add_argument("--small", action="store_true", help="the small rehearsal set (a quick check; tests use it)")
    ap.add_argument("--task", choices=sorted(TASKS), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.task:
        print(json.dumps(TASKS[a.task](a)))
        return 0
    from rehearsal import FULL, SMALL, make_rehearsal
    if a.full:
        a.predict_utts = 0
    reh = make_rehearsal(a.data, SMALL if a.small else FULL)
    with tempfile.TemporaryDirectory() as tmp:
        a.cache = Path(a.cache or Path(tmp) / "cache")
        a.cache.mkdir(parents=True, exist_ok=True)
        a.ckpt = Path(tmp) / "default-600.ckpt"
        make_checkpoint(Path(a.data), a.ckpt)
        t0 = time.time()
        load0 = os.getloadavg()
        res = {"alone": measure(a, 0)}
        if not a.alone_only:
            res["beside 1 CPU-bound process"] = measure(a, 1)
    how = "reused" if reh.reused else f"written in {reh.seconds:.0f} s"
    print(f"rehearsal set {a.data} ({how}); load average {load0[0]:.1f} / {load0[1]:.1f} at start (2 cores, "
          f"0 = idle); {time.time() - t0:.0f} s in all\n")
    print(render(res, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())

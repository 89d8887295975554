"""Embedding or scoring many inputs in N local processes, shard by shard, resumable after a crash.

``spkid embed --nproc N`` and ``spkid predict --nproc N`` come here: the inputs are split into N shards of about
equal total length (longest first onto the lightest shard), each shard runs in its own spawned process (CPU
threads: the free cores divided between the N; with CUDA one GPU each, round robin) through the same
length-bucketed ``embed_features`` as one process, and writes ``<shard dir>/shard-K-of-N.pt`` atomically:
``{"key", "index" (positions in the input list), "values" (rows)}``. The shard dir is ``.<output name>.shards``
next to the output. ``key`` hashes everything a shard's rows depend on: the kind of result, the models'
fingerprints, runtime and inference settings, and each input's position, path, size and modification time.
A re-run after a crash (a shard raising, a process killed, Ctrl-C) reuses every finished shard whose key
matches and computes only the rest; the caller writes the assembled output atomically, then the shard dir goes.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import multiprocessing
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spkid.errors import SpkidError
from spkid.fileio import atomic_write

KINDS = ("embed", "scores")    # L2-normalised embeddings (N, E) | mean class probabilities of the models (N, S)


@dataclass(frozen=True)
class ShardJob:
    """What one worker process needs (picklable)."""
    kind: str
    checkpoints: tuple[str, ...]
    infer: tuple[dict, ...]               # each model's InferConfig as a dict (window overrides included)
    runtime: str
    quantize: bool
    device: str
    threads: int
    items: tuple[str, ...]
    index: tuple[int, ...]
    out: str
    key: str


@dataclass
class ShardRun:
    values: torch.Tensor                  # (N, D) rows in input order
    computed: list[int]                   # shard numbers computed by this call
    reused: list[int]                     # shard numbers taken from an earlier, interrupted call
    shard_dir: Path


def balance(lengths: Sequence[int], n: int) -> list[list[int]]:
    """Input positions split into ``min(n, len)`` shards of about equal total length, each in input order."""
    n = max(1, min(n, len(lengths)))
    heap = [(0, k) for k in range(n)]
    shards: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        load, k = heapq.heappop(heap)
        shards[k].append(i)
        heapq.heappush(heap, (load + max(1, int(lengths[i])), k))
    return [sorted(s) for s in shards]


def item_lengths(paths: Sequence[str | Path], n_mels: int) -> list[int]:
    """A length proxy per file, in frames, for balancing only: ``.pt`` size / (n_mels x 2 bytes); audio
    duration at 100 frames/s from its header; other files size / 100."""
    import soundfile
    out = []
    for p in paths:
        p = Path(p)
        size = p.stat().st_size
        if p.suffix == ".pt":
            out.append(size // (2 * n_mels))
            continue
        try:
            info = soundfile.info(str(p))
            out.append(int(info.frames * 100 // max(1, info.samplerate)))
        except Exception:          # unreadable here: the worker reports it with the file's name
            out.append(size // 100)
    return out


def shard_dir_for(output: str | Path) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.shards"


def _key(kind: str, models, runtime: str, quantize: bool, items: Sequence[str], index: Sequence[int]) -> str:
    h = hashlib.sha256(json.dumps([kind, [m.model_id for m in models], [asdict(m.cfg.infer) for m in models],
                                   runtime, quantize], sort_keys=True).encode())
    for i, p in zip(index, items):
        st = os.stat(p)
        h.update(f"{i}|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _finished(path: Path, key: str) -> bool:
    try:
        return torch.load(path, map_location="cpu", weights_only=True).get("key") == key
    except Exception:            # absent or unreadable: compute it again
        return False


def compute(job: ShardJob) -> torch.Tensor:
    """The rows of one shard, in the order of ``job.index``: ``(n, E)`` or ``(n, n_speakers)``."""
    import torch.nn.functional as F

    from spkid.config import InferConfig
    from spkid.scoring.model import ensemble_scores, load
    models = [load(c, job.device, runtime=job.runtime, threads=job.threads, quantize=job.quantize)
              for c in job.checkpoints]
    for m, infer in zip(models, job.infer):
        m.cfg.infer = InferConfig(**infer)
    feats = models[0].features(list(job.items), level=job.kind == "embed")      # predict: as `prepare` writes it
    if job.kind == "embed":
        return F.normalize(models[0].embed_raw(feats), dim=-1)
    return ensemble_scores(models, feats)


def _worker(job: ShardJob, conn) -> None:
    """Process entry: compute the shard, write it atomically, report ``None`` or the error line."""
    try:
        torch.set_num_threads(job.threads)
        values = compute(job)
        atomic_write(job.out, lambda tmp: torch.save(
            {"key": job.key, "index": torch.tensor(job.index, dtype=torch.long), "values": values}, tmp))
        conn.send(None)
    except KeyboardInterrupt:
        conn.send("interrupted")
    except BaseException as e:             # one line back to the parent; the traceback is of no use to a user
        conn.send(str(e) if isinstance(e, SpkidError) else f"{type(e).__name__}: {e}")
    finally:
        conn.close()


def run_sharded(kind: str, models: Sequence, items: Sequence[str | Path], lengths: Sequence[int],
                output: str | Path, *, nproc: int, device: str = "auto", threads: int = 0) -> ShardRun:
    """Rows for ``items`` from ``nproc`` processes, reusing finished shards of an interrupted earlier call.

    ``models`` are loaded ``spkid.scoring.model.Model`` objects (their paths, fingerprints, runtime and inference
    settings define the job; workers load their own copies); ``lengths`` (frames, or a proxy) balance the shards.
    """
    from spkid.runtime import resolve_device, resolve_threads
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if nproc < 1:
        raise SpkidError(f"--nproc must be >= 1, got {nproc}")
    if not items:
        raise SpkidError(f"{output}: no inputs")
    items = [str(p) for p in items]
    runtime, quantize = models[0].runtime, models[0].quantize
    dev = resolve_device("cpu" if runtime == "onnx" else device)
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    per_proc = max(1, resolve_threads(threads) // nproc)
    shards = balance(lengths, nproc)
    n = len(shards)
    folder = shard_dir_for(output)
    jobs = []
    for k, index in enumerate(shards):
        shard_items = [items[i] for i in index]
        jobs.append(ShardJob(kind, tuple(str(m.path) for m in models), tuple(asdict(m.cfg.infer) for m in models),
                             runtime, quantize, f"cuda:{k % gpus}" if gpus else str(dev), per_proc,
                             tuple(shard_items), tuple(index), str(folder / f"shard-{k:03d}-of-{n:03d}.pt"),
                             _key(kind, models, runtime, quantize, shard_items, index)))
    reused = [k for k, job in enumerate(jobs) if _finished(Path(job.out), job.key)]
    todo = [k for k in range(n) if k not in reused]
    _run_processes([jobs[k] for k in todo], folder)
    parts = [torch.load(job.out, map_location="cpu", weights_only=True) for job in jobs]
    values = torch.zeros(len(items), parts[0]["values"].shape[1])
    for part in parts:
        values[part["index"]] = part["values"].float()
    return ShardRun(values, todo, reused, folder)


def _run_processes(jobs: list[ShardJob], folder: Path) -> None:
    """Start one spawned process per job, wait for all; raise the first failure after every one has ended."""
    if not jobs:
        return
    ctx = multiprocessing.get_context("spawn")     # a fresh interpreter: no forked OpenMP or CUDA state
    running = []
    for job in jobs:
        recv, send = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(job, send), name=Path(job.out).name)
        p.start()
        send.close()
        running.append((job, p, recv))
    errors = []
    try:
        for job, p, recv in running:
            try:
                msg = recv.recv()
            except EOFError:                        # killed before it could answer
                msg = "process ended without a result"
            p.join()
            if msg is not None or p.exitcode != 0:
                errors.append(f"{msg or f'exit code {p.exitcode}'} (in {Path(job.out).stem})")
    except KeyboardInterrupt:
        for _, p, _ in running:                    # they got the same SIGINT; give them a moment to stop
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
        raise
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SpkidError(f"{errors[0]}{more}; finished shards are kept in {folder}: run the same command again "
                         "to resume")


def remove_shards(run: ShardRun) -> None:
    """After the assembled output is written: the shard dir is no longer needed."""
    shutil.rmtree(run.shard_dir, ignore_errors=True)

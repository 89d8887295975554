"""Training loop: crops -> AdamW with warmup + cosine -> whole-utterance validation -> checkpoints.

The schedule runs on a progress fraction ``p = max(step / steps, elapsed / budget)``, so a ``--max-minutes``
run is a complete schedule (warmup, cosine to zero) whatever the machine's speed. Batches depend only on
``(seed, rank, step)`` and the RNG states are checkpointed, so in step mode a resumed run reproduces an
uninterrupted one exactly on CPU. Under ``torchrun`` each rank draws different crops, DDP all-reduces the
gradients and rank 0 validates, logs and checkpoints.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from spkid.training import distributed as dist
from spkid.fileio import atomic_write
from spkid.runtime import flush_denormal, resolve_amp
from spkid.training.checkpoint import (checkpoint_config, load_checkpoint, load_weights, rng_state,
                         save_checkpoint, set_rng_state)
from spkid.config import RunConfig
from spkid.data.sampler import CropSampler, split_per_speaker
from spkid.data.features import load_train_features
from spkid.errors import CheckpointError, ConfigError
from spkid.scoring.model import class_scores, embed_features, resolve_device
from spkid.models.speaker_net import build_model


@dataclass
class TrainResult:
    steps: int
    elapsed: float
    val_acc: float | None
    best_val: float | None
    last: Path
    best: Path | None
    interrupted: bool = False
    finished: bool = True            # False when stopped early (stop_after / Ctrl-C): resume to finish
    amp: str = "none"                # the precision that ran (train.amp=auto resolved)


def lr_factor(step: int, warmup_steps: int, p: float) -> float:
    """Linear warmup over ``warmup_steps`` steps, times a cosine from 1 to 0 over progress ``p`` in [0, 1]."""
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, p))))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only, not on biases, norms or normalisation stats."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def evaluate(net, feats, labels, cfg: RunConfig, device) -> dict:
    """Whole-utterance accuracy, computed exactly as ``predict`` computes test predictions, plus the
    verification EER (and its threshold) over all pairs of these utterances."""
    from spkid.scoring.metrics import eer, make_trials, score_trials
    emb = embed_features(net, feats, cfg.infer, device)
    pred = class_scores(net, emb, device).argmax(-1)
    out = {"val_acc": float((pred == torch.as_tensor(labels)).float().mean())}
    if len(set(labels)) > 1 and len(labels) > len(set(labels)):
        i, j, target = make_trials([str(x) for x in labels], max_nontarget=100_000)
        scores = score_trials(F.normalize(emb, dim=-1).numpy(), i, j)
        out["val_eer"], out["val_eer_threshold"] = (float(v) for v in eer(scores, target))
    return out


class _Logger:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def train(data_dir: str | Path, out_dir: str | Path, cfg: RunConfig, *, resume: bool = False,
          progress: bool = True, cache_dir: str | Path | None = None, stop_after: int = 0) -> TrainResult | None:
    """Train on an HW4-format directory; writes ``config.json``, ``metrics.jsonl``, ``last.ckpt``, ``best.ckpt``.

    ``stop_after > 0`` ends this invocation after that step (checkpoint saved, schedule unchanged), for
    sessions shorter than the run; ``resume=True`` continues from ``last.ckpt``. Returns None on DDP ranks > 0.
    """
    with flush_denormal():
        return _train(data_dir, out_dir, cfg, resume=resume, progress=progress, cache_dir=cache_dir,
                      stop_after=stop_after)


def _train(data_dir, out_dir, cfg: RunConfig, *, resume: bool, progress: bool, cache_dir, stop_after: int):
    out_dir = Path(out_dir)
    t = cfg.train
    device = resolve_device(t.device)
    amp = resolve_amp(t.amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (loss scaling); on {device.type} "
                          "use train.amp=bf16 or none")
    rank, world = dist.setup(device)              # NCCL for CUDA, gloo for CPU
    main = rank == 0
    if t.threads > 0:
        torch.set_num_threads(t.threads)
    device = dist.device_for_rank(device, rank)

    ckpt = None
    if resume:
        ckpt = load_checkpoint(out_dir / "last.ckpt")
        saved = checkpoint_config(ckpt, out_dir / "last.ckpt")
        missing = [k for k in ("optimizer", "step", "elapsed", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{out_dir / 'last.ckpt'}: cannot resume: no {missing[0]!r} entry "
                                  "(a stripped or inference-only checkpoint)")
        if saved.model != cfg.model or saved.data != cfg.data:
            raise CheckpointError(f"{out_dir / 'last.ckpt'}: the run was made with other model/data settings; "
                                  "resume with the run's own config (drop --config and model./data. overrides)")
    torch.manual_seed(t.seed)

    data = load_train_features(data_dir, cfg.model.n_mels, progress=progress and main, cache_dir=cache_dir)
    train_idx, val_idx = split_per_speaker(data.utts, cfg.data.val_per_speaker, t.seed)
    spk_id = {s: i for i, s in enumerate(data.speakers)}
    labels = [spk_id[u.speaker] for u in data.utts]
    train_feats = [data.feats[i] for i in train_idx]
    val_feats, val_labels = [data.feats[i] for i in val_idx], [labels[i] for i in val_idx]

    model = build_model(cfg, len(data.speakers))
    if cfg.model.norm == "global":
        model.norm.set_stats(*_feature_stats(train_feats))
    model.to(device)
    if world > 1:       # each rank its own dropout/SpecAugment stream (the weights are rank 0's: DDP broadcasts them)
        torch.manual_seed(t.seed * 1_000_003 + rank)
    opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.98))
    step, elapsed, best_val, val_acc, val_extra = 0, 0.0, None, None, {}
    avg = WeightAverage()
    if ckpt is not None:
        load_weights(model, ckpt["model"], out_dir / "last.ckpt")
        avg.load(ckpt.get("average"))
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed, best_val = ckpt["step"], ckpt["elapsed"], ckpt.get("best_val")
        ranks = ckpt.get("rng_ranks") or []   # one state per DDP rank: each resumes its own dropout stream
        set_rng_state(ranks[rank] if len(ranks) == world else ckpt["rng"])
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".*.ckpt.*.tmp"):   # half-written by a killed run; never read as a checkpoint
            stale.unlink(missing_ok=True)
        atomic_write(out_dir / "config.json", lambda p: Path(p).write_text(json.dumps(cfg.to_dict(), indent=2)))
    fwd = TrainStep(model)
    if world > 1:
        fwd = dist.wrap(fwd, device)
    if t.compile:
        fwd = torch.compile(fwd)
    sampler = CropSampler(train_feats, [labels[i] for i in train_idx], batch_size=cfg.data.batch_size,
                          crop_frames=cfg.data.crop_frames, crop_min_frames=cfg.data.crop_min_frames,
                          seed=t.seed, rank=rank)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(enabled=amp == "fp16" and device.type == "cuda")
    log = _Logger(out_dir / "metrics.jsonl", main)
    span_modules = [m for m in model.modules() if hasattr(m, "span_loss")]
    budget = t.max_minutes * 60
    # cosine progress: by steps after warmup (as the HW4 sample), or by elapsed time with a budget
    decay_steps = max(1, t.steps - t.warmup_steps)

    def finished_run(step: int, elapsed: float) -> bool:
        return step >= t.steps or (budget > 0 and elapsed >= budget)

    def snapshot(rng_ranks: list | None = None) -> dict:
        return {"config": cfg.to_dict(), "speakers": data.speakers, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "rng": rng_state(),
                "best_val": best_val, "val_acc": val_acc, **val_extra, **avg.state(),
                **({"rng_ranks": rng_ranks} if rng_ranks and len(rng_ranks) > 1 else {})}

    def validate() -> None:
        nonlocal val_acc, best_val, val_extra
        if not val_feats:
            return
        val_extra = evaluate(model, val_feats, val_labels, cfg, device)
        val_acc = val_extra.pop("val_acc")
        log.write(step=step, elapsed=round(elapsed, 2), val_acc=val_acc, **val_extra)
        if best_val is None or val_acc > best_val:
            best_val = val_acc
            save_checkpoint(out_dir / "best.ckpt", snapshot())

    from tqdm import tqdm
    bar = tqdm(total=t.steps if budget <= 0 else None, initial=step, disable=not (progress and main),
               desc="train", unit="step", dynamic_ncols=True)
    interrupted, last_val_time, run_loss, run_acc = False, elapsed, 0.0, 0.0
    model.train()
    start = time.perf_counter() - elapsed
    try:
        while True:
            elapsed = dist.broadcast_float(time.perf_counter() - start)
            if step >= t.steps or (budget > 0 and elapsed >= budget) or (stop_after and step >= stop_after):
                break
            p = max((step - t.warmup_steps) / decay_steps, elapsed / budget if budget > 0 else 0.0)
            lr = t.lr * lr_factor(step, t.warmup_steps, p)
            for g in opt.param_groups:
                g["lr"] = lr
            progress = max(step / t.steps, elapsed / budget if budget > 0 else 0.0)
            if cfg.model.head in ("am", "aam"):
                model.head.margin = cfg.model.margin * (min(1.0, progress / t.margin_warmup) if t.margin_warmup > 0 else 1)
            x, lengths, y = (v.to(device, non_blocking=True) for v in sampler.batch(step))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = fwd(x, lengths, y)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.model.label_smoothing)
                if span_modules and t.span_penalty > 0:     # adaptive attention: shorter spans cost less
                    loss = loss + t.span_penalty * sum(m.span_loss() for m in span_modules) / len(span_modules)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            if t.average_last > 0 and progress >= 1 - t.average_last and step % t.average_every == 0:
                avg.update(model)
            run_loss = 0.98 * run_loss + 0.02 * loss.item() if step > 1 else loss.item()
            acc = float((logits.argmax(-1) == y).float().mean())
            run_acc = 0.98 * run_acc + 0.02 * acc if step > 1 else acc
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}", lr=f"{lr:.2e}",
                                val="-" if val_acc is None else f"{val_acc:.3f}")
                log.write(step=step, elapsed=round(elapsed, 2), lr=lr, loss=round(run_loss, 4), acc=round(run_acc, 4),
                          steps_per_s=round(step / max(elapsed, 1e-6), 3))
            due_val = (t.val_every and step % t.val_every == 0) or (
                budget > 0 and t.val_minutes > 0 and elapsed - last_val_time >= t.val_minutes * 60)
            if main and due_val:
                validate()
                model.train()
            if due_val:
                last_val_time = elapsed       # on every rank: due_val must agree, or the barriers below mismatch
            if step % t.ckpt_every == 0:
                rng_ranks = dist.all_gather(rng_state())   # a collective: every rank, every checkpoint
                if main:
                    save_checkpoint(out_dir / "last.ckpt", snapshot(rng_ranks))
            dist.barrier_if(due_val or step % t.ckpt_every == 0)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    rng_ranks = [rng_state()] if interrupted else dist.all_gather(rng_state())
    if main:
        if not interrupted:
            if avg.count and finished_run(step, elapsed):
                avg.apply(model)              # the final model is the average of the last snapshots
            validate()
        save_checkpoint(out_dir / "last.ckpt", snapshot(rng_ranks))
    dist.barrier_if(True)
    dist.teardown()
    if not main:
        return None
    best = out_dir / "best.ckpt"
    finished = not interrupted and finished_run(step, elapsed)
    return TrainResult(step, elapsed, val_acc, best_val, out_dir / "last.ckpt", best if best.exists() else None,
                       interrupted, finished, amp)


class WeightAverage:
    """Uniform running average of the weights over the last part of training (checkpoint averaging, SWA-style).

    Snapshots are folded in as they come (``avg += (w - avg) / n``), so no checkpoint files pile up; the state
    goes into every checkpoint so a resumed run averages exactly the same snapshots.
    """

    def __init__(self):
        self.sum: dict[str, torch.Tensor] | None = None
        self.count = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.count += 1
        state = model.state_dict()
        if self.sum is None:
            self.sum = {k: v.detach().clone().float() for k, v in state.items()}
        else:
            for k, v in state.items():
                self.sum[k] += (v.float() - self.sum[k]) / self.count

    @torch.no_grad()
    def apply(self, model: torch.nn.Module) -> None:
        own = model.state_dict()
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in self.sum.items()})

    def state(self) -> dict:
        return {"average": {"mean": self.sum, "count": self.count}} if self.count else {}

    def load(self, state: dict | None) -> None:
        if state:
            self.sum, self.count = state["mean"], state["count"]


class TrainStep(torch.nn.Module):
    """Network and head as one module, so DDP sees every parameter used inside its forward."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``(B, T, F)``, ``(B,)``, ``(B,)`` -> margin logits ``(B, N)``."""
        return self.net.head(self.net(x, lengths), labels)


def _feature_stats(feats) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band mean and std over all training frames ``(F,)``, accumulated in float64."""
    n, s, ss = 0, 0.0, 0.0
    for f in feats:
        f = f.double()
        n += f.shape[0]
        s = s + f.sum(0)
        ss = ss + (f * f).sum(0)
    mean = s / n
    return mean.float(), (ss / n - mean * mean).clamp(min=0).sqrt().float()

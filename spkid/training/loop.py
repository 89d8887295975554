"""``spkid train``: the training loop (read it top to bottom, as nanoGPT's ``train.py``).

One batch travels: ``sampler.batch(step)`` (``spkid.data.sampler.CropSampler`` for features, ``AudioCropSampler``
for audio; chosen in ``data.py``) -> ``SpeakerNet(x, lengths, labels)``
(``spkid.models.speaker_net``) -> logits -> cross-entropy here. Schedules live in ``schedules.py``, validation
in ``validation.py``, the checkpoint dict in ``checkpoint.py``, DDP glue in ``distributed.py``.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

from spkid.config import RunConfig
from spkid.errors import ConfigError, SpkidError
from spkid.fileio import RunDir, atomic_write
from spkid.models import build_model
from spkid.runtime import ThreadGovernor, flush_denormal, resolve_amp, resolve_device, use_threads
from spkid.training import distributed as dist
from spkid.training.checkpoint import (load_resume_state, load_weights, rng_state, save_checkpoint, set_rng_state,
                                       training_state)
from spkid.training.cohort import finish_checkpoints
from spkid.training.data import feature_stats, load_train_data  # noqa: F401  (feature_stats: benchmarks)
from spkid.training.finetune import (PROTOTYPE_MAX, PROTOTYPE_PER_SPEAKER, freeze, init_head_from_prototypes,
                                    load_init, train_mode)
from spkid.training.schedules import Schedule
from spkid.training.validation import validate


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


class TrainingDiverged(SpkidError):
    """The loss became NaN/Inf: nothing non-finite is saved."""


def train(data_dir: str | Path | list, out_dir: str | Path, cfg: RunConfig, *, resume: bool = False,
          progress: bool = True, cache_dir: str | Path | None = None, stop_after: int = 0,
          vad: bool = True) -> TrainResult | None:
    """Train on an HW4 directory (``data.source = "features"``) or on audio (``"audio"``: speaker folders or a
    ``path,speaker`` list, or a list of such inputs trained as one corpus, ``data.weights``; ``vad`` keeps only
    detected speech); writes ``config.json``, ``metrics.jsonl``,
    ``last.ckpt``, ``best.ckpt``.

    ``stop_after > 0`` ends this invocation after that step (checkpoint saved, schedule unchanged), for
    sessions shorter than the run; ``resume=True`` continues from ``last.ckpt``. Returns None on DDP ranks > 0.
    """
    out_dir = Path(out_dir)
    with flush_denormal(), contextlib.ExitStack() as stack:
        if int(os.environ.get("RANK", "0")) == 0:     # rank 0 owns the folder: a fresh run needs an empty one
            stack.enter_context(RunDir(out_dir, fresh=not resume))
        inputs = [Path(p) for p in data_dir] if isinstance(data_dir, (list, tuple)) else Path(data_dir)
        return _train(inputs, out_dir, cfg, resume=resume, progress=progress, cache_dir=cache_dir,
                      stop_after=stop_after, vad=vad)


def _train(data_dir, out_dir: Path, cfg: RunConfig, *, resume: bool, progress: bool, cache_dir,
           stop_after: int, vad: bool) -> TrainResult | None:
    t = cfg.train
    # -- system --------------------------------------------------------------------------------------------------
    device = resolve_device(t.device)
    amp = resolve_amp(t.amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device (loss scaling); on {device.type} "
                          "use train.amp=bf16 or none")
    rank, world = dist.setup(device)              # NCCL for CUDA, gloo for CPU
    main = rank == 0
    use_threads(t.threads)                        # 0: the cores nobody else is using (spkid.runtime)
    governor = ThreadGovernor(t.threads if world == 1 else 1)   # ... revisited every minute (one process)
    device = dist.device_for_rank(device, rank)
    ckpt = load_resume_state(out_dir / "last.ckpt", cfg) if resume else None
    torch.manual_seed(t.seed)

    # -- data ----------------------------------------------------------------------------------------------------
    if isinstance(data_dir, list) and len(data_dir) == 1:
        data_dir = data_dir[0]
    data = load_train_data(data_dir, cfg, rank=rank, progress=progress and main, cache_dir=cache_dir, vad=vad)
    if ckpt is not None and list(ckpt["speakers"]) != data.speakers:
        raise SpkidError(f"{out_dir / 'last.ckpt'}: the run was trained on other speakers than {data_dir} "
                         f"({len(ckpt['speakers'])} vs {len(data.speakers)} names, or another order); "
                         "resume with the run's own data directory")
    if ckpt is not None and ckpt.get("data_fingerprint") != data.fingerprint:
        raise SpkidError(f"{out_dir / 'last.ckpt'}: {data_dir} is not the data the run was trained on (its "
                         "utterance list differs); resume with the run's own data directory")
    sampler, val_feats, val_labels = data.sampler, data.val_feats, data.val_labels

    # -- model, optimiser, weight average -------------------------------------------------------------------------
    model = build_model(cfg, data.n_classes)
    model.set_input_stats(*data.stats)
    if t.init and ckpt is None:                       # fine-tuning: every weight but the head from a trained model
        load_init(model, cfg)
        if data.train_utterances is not None:         # the new head starts at the new speakers' mean embeddings
            init_head_from_prototypes(model, *data.train_utterances(PROTOTYPE_PER_SPEAKER, PROTOTYPE_MAX), cfg.infer,
                                      "cpu")
    frozen = freeze(model, t.freeze)                  # [] unless train.freeze: these stay fixed and in eval mode
    model.to(device)
    if world > 1:       # each rank its own dropout/SpecAugment stream (the weights are rank 0's: DDP broadcasts them)
        torch.manual_seed(t.seed * 1_000_003 + rank)
    opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=(0.9, 0.98))
    avg = AveragedModel(model, use_buffers=True) if t.average_last > 0 else None
    step, elapsed, best_val, val = 0, 0.0, None, {}
    if ckpt is not None:
        load_weights(model, ckpt["model"], out_dir / "last.ckpt")
        if avg is not None and ckpt.get("average") is not None:
            avg.load_state_dict(ckpt["average"])
        opt.load_state_dict(ckpt["optimizer"])
        step, elapsed, best_val = ckpt["step"], ckpt["elapsed"], ckpt.get("best_val")
        ranks = ckpt.get("rng_ranks") or []   # one state per DDP rank: each resumes its own dropout stream
        set_rng_state(ranks[rank] if len(ranks) == world else ckpt["rng"])
    fwd = dist.wrap(model, device) if world > 1 else model
    if t.compile:
        fwd = torch.compile(fwd)
    sched = Schedule.from_config(cfg)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(enabled=amp == "fp16" and device.type == "cuda")

    def snapshot(rng_ranks: list | None = None) -> dict:
        return training_state(cfg, data.speakers, model, opt, avg, step=step, elapsed=elapsed, best_val=best_val,
                              val=val, rng_ranks=rng_ranks, device=device, amp=amp, data=data)

    def run_validation() -> None:
        nonlocal val, best_val
        if not val_feats:
            return
        val = validate(model, val_feats, val_labels, cfg.infer, device, n_speakers=len(data.speakers))
        log.write(step=step, elapsed=round(elapsed, 2), **val)
        if best_val is None or val["val_acc"] > best_val:
            best_val = val["val_acc"]
            save_checkpoint(out_dir / "best.ckpt", snapshot())

    # -- run directory ------------------------------------------------------------------------------------------
    if main:                                          # RunDir holds the lock: these temp files are no one's
        for stale in out_dir.glob(".*.tmp"):          # half-written by a killed run; never read as a checkpoint
            stale.unlink(missing_ok=True)
        atomic_write(out_dir / "config.json", lambda p: Path(p).write_text(json.dumps(cfg.to_dict(), indent=2)))
    tb = None
    if main and t.log_tensorboard:
        from spkid.report.tensorboard import TensorBoardWriter
        tb = TensorBoardWriter(out_dir / "tensorboard", purge_step=step if ckpt is not None else None)
    log = _Logger(out_dir / "metrics.jsonl", main, tb)

    # -- the loop -----------------------------------------------------------------------------------------------
    from tqdm import tqdm
    bar = tqdm(total=t.steps if sched.budget_s <= 0 else None, initial=step, disable=not (progress and main),
               desc="train", unit="step", dynamic_ncols=True)
    interrupted, last_val_time, run_loss, run_acc = False, elapsed, 0.0, 0.0
    train_mode(model, frozen)
    start = time.perf_counter() - elapsed
    try:
        while True:
            elapsed = dist.broadcast_float(time.perf_counter() - start)
            if sched.done(step, elapsed) or (stop_after and step >= stop_after):
                break
            p = sched.progress(step, elapsed)
            lr = sched.lr_at(step, p)
            for g in opt.param_groups:
                g["lr"] = lr
            model.set_margin(sched.margin_at(p))
            x, lengths, y = (v.to(device, non_blocking=True) for v in sampler.batch(step))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                _, logits = fwd(x, lengths, y)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.model.label_smoothing)
                aux = model.aux_loss()
                if aux is not None and t.span_penalty > 0:     # adaptive attention: shorter spans cost less
                    loss = loss + t.span_penalty * aux
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"{out_dir}: training diverged at step {step} (loss {loss.item()}); "
                                       "nothing non-finite was saved; lower train.lr or set train.grad_clip")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(opt)
            scaler.update()
            step += 1
            if avg is not None and sched.average_now(step, p):
                avg.update_parameters(model)
            threads = governor.step(elapsed)
            if threads is not None:
                log.write(step=step, elapsed=round(elapsed, 2), threads=threads)
            run_loss = 0.98 * run_loss + 0.02 * loss.item() if step > 1 else loss.item()
            acc = float((logits.argmax(-1) == y).float().mean())
            run_acc = 0.98 * run_acc + 0.02 * acc if step > 1 else acc
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(loss=f"{run_loss:.3f}", acc=f"{run_acc:.3f}", lr=f"{lr:.2e}",
                                val="-" if not val else f"{val['val_acc']:.3f}", refresh=False)
                log.write(step=step, elapsed=round(elapsed, 2), lr=lr, loss=round(run_loss, 4), acc=round(run_acc, 4),
                          steps_per_s=round(step / max(elapsed, 1e-6), 3))
            due_val = (t.val_every and step % t.val_every == 0) or (
                t.val_minutes > 0 and elapsed - last_val_time >= t.val_minutes * 60)
            if main and due_val:
                run_validation()
                train_mode(model, frozen)
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

    # -- the end: average, final validation, last checkpoint ------------------------------------------------------
    finished = not interrupted and sched.done(step, elapsed)
    rng_ranks = [rng_state()] if interrupted else dist.all_gather(rng_state())
    if main:
        if not interrupted:
            if avg is not None and finished and int(avg.n_averaged) > 0:
                model.load_state_dict(avg.module.state_dict())   # the final model is the average of the last snapshots
            run_validation()
        # a finished run's checkpoints carry the training-speaker cohort and a calibration (spkid.training.cohort)
        extras = finish_checkpoints(model, data, cfg, device, out_dir / "best.ckpt") if finished else {}
        save_checkpoint(out_dir / "last.ckpt", {**snapshot(rng_ranks), **extras})
    log.close()
    dist.barrier_if(True)
    del fwd       # DDP's reducer holds the process group: it must go first (dist.teardown)
    dist.teardown()
    if not main:
        return None
    best = out_dir / "best.ckpt"
    return TrainResult(step, elapsed, val.get("val_acc"), best_val, out_dir / "last.ckpt",
                       best if best.exists() else None, interrupted, finished, amp)


class _Logger:
    """``metrics.jsonl``: one JSON object per line (rank 0 only); the same scalars to TensorBoard when asked."""

    def __init__(self, path: Path, enabled: bool, tb=None):
        self.path, self.enabled, self.tb = path, enabled, tb

    def write(self, **row) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
            if self.tb is not None:
                self.tb.write(**row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only, not on biases, norms or normalisation stats."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

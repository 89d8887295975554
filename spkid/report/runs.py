"""Read what a training run left in its directory: ``config.json``, ``metrics.jsonl`` and the checkpoints.

``metrics.jsonl`` has two kinds of rows (see ``spkid.training.loop``): training rows every 25 steps
(``step, elapsed, lr, loss, acc, steps_per_s``) and validation rows (``step, elapsed, val_acc, val_eer,
val_eer_threshold``). They are split into :class:`Curves`, one array per column.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkid.errors import DataError, SpkidError

TRAIN_KEYS = ("step", "elapsed", "lr", "loss", "acc", "steps_per_s")
VAL_KEYS = ("step", "elapsed", "val_acc", "val_eer")
# checkpoint entries worth showing; model/optimizer/rng/average are bulk state, not facts about the run
CKPT_FACTS = ("step", "elapsed", "best_val", "val_acc", "val_eer", "val_eer_threshold", "device", "amp",
              "data_fingerprint")


@dataclass
class Curves:
    """A run's logged scalars. Training arrays are ``(R,)``, validation arrays ``(V,)``; NaN where a row lacks a key."""
    label: str
    train: dict[str, np.ndarray]     # TRAIN_KEYS -> (R,)
    val: dict[str, np.ndarray]       # VAL_KEYS -> (V,)

    @property
    def empty(self) -> bool:
        return self.train["step"].size == 0 and self.val["step"].size == 0


@dataclass
class RunInfo:
    path: Path
    label: str
    config: dict | None                      # config.json, else the checkpoint's config, else None
    curves: Curves | None                    # None when metrics.jsonl is absent
    checkpoint: Path | None                  # best.ckpt, else last.ckpt, else None
    facts: dict = field(default_factory=dict)   # CKPT_FACTS present in the checkpoint, plus n_speakers, n_values
    notes: list[str] = field(default_factory=list)   # what was missing or skipped, for the page


def read_metrics(path: Path, label: str) -> Curves:
    """Parse ``metrics.jsonl``. A malformed last line (a run killed mid-write) is dropped; elsewhere it is an error."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as e:
            if n == len(lines):
                break
            raise DataError(f"{path}: line {n}: not a metrics row ({str(e)[:80]})") from None
        rows.append(row)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_acc" in r]

    def columns(rs, keys):
        return {k: np.array([float(r[k]) if isinstance(r.get(k), (int, float)) else np.nan for r in rs],
                            dtype=np.float64) for k in keys}
    return Curves(label, columns(train, TRAIN_KEYS), columns(val, VAL_KEYS))


def read_model(spec: str | Path, label: str | None = None) -> RunInfo:
    """A model without its run directory (a checkpoint file, an imported model or a shipped name such as ``base``):
    its facts and config, no training curves."""
    from spkid.pretrained import display_name, resolve
    from spkid.training.checkpoint import load_checkpoint
    ckpt = load_checkpoint(spec)
    path = resolve(spec)
    info = RunInfo(path, label or display_name(spec), ckpt["config"], None, path,
                   notes=["a model, not a run directory: no training curves"])
    info.facts = {k: ckpt[k] for k in CKPT_FACTS if k in ckpt and ckpt[k] is not None}
    info.facts["n_speakers"] = len(ckpt["speakers"])
    info.facts["n_values"] = int(sum(t.numel() for t in ckpt["model"].values()))
    return info


def read_run(run_dir: str | Path, label: str | None = None) -> RunInfo:
    """Everything the report shows about one run directory (or, for a checkpoint file or a shipped name,
    ``read_model``); only a missing directory is an error."""
    from spkid.training.checkpoint import is_model_spec, load_checkpoint

    if not Path(run_dir).is_dir() and is_model_spec(str(run_dir)):
        return read_model(run_dir, label)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    info = RunInfo(run_dir, label or run_dir.name or str(run_dir), None, None, None)
    cfg_path = run_dir / "config.json"
    if cfg_path.is_file():
        try:
            info.config = json.loads(cfg_path.read_text())
        except (ValueError, OSError) as e:
            raise DataError(f"{cfg_path}: unreadable run config ({str(e)[:100]})") from None
    else:
        info.notes.append("no config.json")
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        info.curves = read_metrics(metrics, info.label)
    else:
        info.notes.append("no metrics.jsonl")
    for name in ("best.ckpt", "last.ckpt"):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path)
        except SpkidError as e:                      # a corrupt best.ckpt: say so and try last.ckpt
            info.notes.append(str(e))
            continue
        info.checkpoint = path
        info.facts = {k: ckpt[k] for k in CKPT_FACTS if k in ckpt and ckpt[k] is not None}
        info.facts["n_speakers"] = len(ckpt["speakers"])
        info.facts["n_values"] = int(sum(t.numel() for t in ckpt["model"].values()))
        if info.config is None:
            info.config = ckpt["config"]
        break
    if info.checkpoint is None:
        info.notes.append("no readable best.ckpt or last.ckpt")
    return info

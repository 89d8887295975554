"""One checkpoint dict per file, written atomically and read with ``weights_only=True``.

Keys: ``spkid`` (format version), ``config`` (resolved RunConfig as a dict), ``speakers`` (names by class id),
``model`` (state dict), ``optimizer``, ``step``, ``elapsed`` (training seconds so far), ``rng`` (torch CPU/CUDA
and Python generator states), ``best_val``, ``val_acc``.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from spkid.config import RunConfig
from spkid.errors import CheckpointError, ConfigError
from spkid.fileio import atomic_write

FORMAT = 1


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (plus the format marker) to ``path`` atomically."""
    atomic_write(path, lambda tmp: torch.save({"spkid": FORMAT, **state}, tmp))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict:
    """Read and check a spkid checkpoint (tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "empty or truncated"
        first = f"corrupt, truncated or not a torch.save file ({type(e).__name__}: {first[:120]})"
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            first = "refused: holds objects other than tensors and plain data (unsafe pickle)"
        raise CheckpointError(f"{path}: cannot read checkpoint: {first[:200]}") from None
    if not isinstance(ckpt, dict) or "spkid" not in ckpt:
        raise CheckpointError(f"{path}: not a spkid checkpoint (no \"spkid\" entry)")
    for key in ("config", "speakers", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: not a spkid checkpoint (no {key!r} entry)")
    for key, kind in (("spkid", int), ("config", dict), ("speakers", list), ("model", dict)):
        if not isinstance(ckpt[key], kind):
            raise CheckpointError(f"{path}: {key!r} entry must be {kind.__name__}, found {type(ckpt[key]).__name__}")
    if not ckpt["speakers"] or not all(isinstance(s, str) for s in ckpt["speakers"]):
        raise CheckpointError(f"{path}: 'speakers' entry must be a non-empty list of names")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"{path}: 'model' entry must map parameter names to tensors")
    if ckpt["spkid"] > FORMAT:
        raise CheckpointError(f"{path}: written by a newer spkid (format {ckpt['spkid']} > {FORMAT})")
    return ckpt


def checkpoint_config(ckpt: dict, path: str | Path) -> RunConfig:
    try:
        return RunConfig.from_dict(ckpt["config"], f"{path} (config)")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def load_weights(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """``load_state_dict`` with a one-line error when the checkpoint belongs to another model configuration."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shape = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shape:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}" if extra
                  else f"shape of {shape[0]} is {tuple(state[shape[0]].shape)}, model has {tuple(own[shape[0]].shape)}")
        raise CheckpointError(f"{path}: weights do not fit this model configuration ({detail})")
    model.load_state_dict(state)


def model_fingerprint(state: dict) -> str:
    """A short stable id of a model's weights (which model made an embedding)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]

"""Maintainers: turn a finished training run into a shipped model.

    python -m spkid.pretrained.ship runs/base/last.ckpt --name base

writes ``spkid/pretrained/<name>.ckpt`` (inference entries only, float16 weights: the optimizer, averaging and RNG
states stay in the run) and ``<name>.json``: the file's ``model_fingerprint``, the run's steps and hours, and the
embedding of a fixed synthesised clip (``reference_clip``), which the test suite recomputes from the shipped file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from spkid.pretrained import shipped_path

KEEP = ("config", "speakers", "n_classes", "val_acc", "val_eer", "val_eer_threshold", "cohort", "calibration",
        "step", "elapsed", "data_fingerprint", "amp", "device")
REFERENCE_SEED = 2026


def reference_clip() -> np.ndarray:
    """A fixed 3-s synthetic voice at 16 kHz ``(S,)`` float32 (``spkid.audio.synth``, seeded)."""
    from spkid.audio.synth import make_voice, synth_utterance
    rng = np.random.default_rng(REFERENCE_SEED)
    return synth_utterance(make_voice(rng), rng, 16000, 3.0).astype(np.float32)


def _half(x):
    """Floating tensors to float16, recursively through dicts and lists (the cohort's statistics included)."""
    if isinstance(x, torch.Tensor):
        return x.half() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _half(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_half(v) for v in x)
    return x


def ship(src: str | Path, name: str) -> dict:
    """Write ``name``'s checkpoint and card data from run checkpoint ``src``; returns the card data."""
    import spkid
    from spkid.training.checkpoint import checkpoint_fingerprint, load_checkpoint, save_checkpoint
    ckpt = load_checkpoint(src)
    state = {k: ckpt[k] for k in KEEP if k in ckpt}
    state["model"] = _half(ckpt["model"])
    if "cohort" in state:
        state["cohort"] = _half(state["cohort"])
    dest = shipped_path(name)
    save_checkpoint(dest, state)
    model = spkid.load(dest, "cpu")
    emb = model.embed([torch.from_numpy(reference_clip())])[0]
    card = {"name": name, "fingerprint": checkpoint_fingerprint(load_checkpoint(dest)), "steps": int(ckpt.get("step", 0)),
            "hours": round(float(ckpt.get("elapsed", 0.0)) / 3600, 2), "speakers": len(ckpt["speakers"]),
            "embed_dim": int(emb.shape[0]), "bytes": dest.stat().st_size,
            "reference_seed": REFERENCE_SEED, "reference_embedding": [round(float(v), 6) for v in emb]}
    dest.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--name", default="base")
    a = p.parse_args()
    card = ship(a.checkpoint, a.name)
    print(f"shipped {a.name}: {card['bytes'] / 1e6:.1f} MB, fingerprint {card['fingerprint']}, {card['steps']} steps, "
          f"{card['hours']} h")


if __name__ == "__main__":
    main()

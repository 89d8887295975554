"""The one way in for every model: ``open_model(spec)`` for a checkpoint path, a shipped name or an imported model.

``spec`` is resolved by ``spkid.pretrained.resolve`` (a shipped name such as ``"base"`` -> the checkpoint file
inside the package; anything else -> its path), read by ``load_checkpoint`` (tensors and plain data only) and built
by its card's ``arch``:

- ``spkid``: a ``SpeakerNet`` from the stored config (every trained checkpoint, and SpeechBrain's ECAPA-TDNN
  imported into spkid's own modules);
- ``ge2e``: Resemblyzer's GE2E LSTM with its partial-window averaging (``spkid.models.ge2e``);
- ``onnx``: an imported ONNX graph run by ONNX Runtime (``spkid.scoring.onnx_net``).

Each network answers ``embed(x (B, T, F), lengths (B,)) -> (B, E)`` and has ``embed_dim``, so inference, windows,
batching and the registry are the same for all of them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from spkid.config import RunConfig
from spkid.errors import CheckpointError
from spkid.pretrained import resolve
from spkid.training.checkpoint import (TUNED, build_checked, checkpoint_config, checkpoint_fingerprint,
                                       load_checkpoint, model_card)


def read_checkpoint(spec: str | os.PathLike) -> tuple[Path, dict]:
    """``(resolved path, checked checkpoint dict)`` of a path or shipped name."""
    path = resolve(spec)
    return path, load_checkpoint(path)


@dataclass
class LoadedModel:
    """A network ready to embed, with what the checkpoint says about it."""

    path: Path                   # the resolved file
    cfg: RunConfig               # features (the front end), model, infer settings
    speakers: list[str]          # class names (empty for an imported embedder)
    net: torch.nn.Module         # .embed(x (B, T, F), lengths (B,)) -> (B, E), .embed_dim
    model_id: str                # checkpoint_fingerprint: which weights made an embedding
    card: dict                   # arch, source, licence, front end, ...
    ckpt: dict                   # the whole checkpoint (thresholds, cohort, calibration)

    @property
    def arch(self) -> str:
        return self.card.get("arch", "spkid")


def open_model(spec: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedModel:
    """Load any model spkid knows, on ``device``, in eval mode."""
    path, ckpt = read_checkpoint(spec)
    cfg = checkpoint_config(ckpt, path)
    card = model_card(ckpt)
    arch = card.get("arch", "spkid")
    if arch == "spkid":
        n_classes = int(ckpt.get("n_classes", len(ckpt["speakers"])))
        net = build_checked(cfg, n_classes, ckpt["model"], path)
    elif arch == "ge2e":
        from spkid.models.ge2e import GE2ENet
        net = GE2ENet.from_state(ckpt["model"], str(path))
    else:
        if str(device) != "cpu":
            raise CheckpointError(f"{path}: an imported ONNX model runs on the CPU (ONNX Runtime), not {device}")
        from spkid.scoring.onnx_net import OnnxNet
        net = OnnxNet(ckpt["onnx"].numpy().tobytes(), cfg, str(path))
    net.to(device).eval()
    return LoadedModel(path, cfg, list(ckpt["speakers"]), net, checkpoint_fingerprint(ckpt), card, ckpt)


def spkid_architecture(spec: str | os.PathLike, what: str) -> tuple[Path, dict]:
    """``read_checkpoint`` for uses that need spkid's own network (fine-tuning, export): other archs are refused."""
    path, ckpt = read_checkpoint(spec)
    arch = model_card(ckpt).get("arch", "spkid")
    if arch != "spkid":
        raise CheckpointError(f"{path}: {what} needs a model of spkid's own architecture; this one is {arch!r} "
                              f"({model_card(ckpt).get('source', 'imported')})")
    return path, ckpt


def model_info(spec: str | os.PathLike) -> list[tuple[str, str]]:
    """``(label, text)`` rows that ``spkid info`` prints: the card, the front end, the network, the fingerprint."""
    m = open_model(spec)
    f, mc, card = m.cfg.features, m.cfg.model, m.card
    rows = [("file", str(m.path)), ("architecture", m.arch), ("source", card.get("source", "trained with spkid"))]
    rows += [(k, card[k]) for k in ("origin", "licence", "windows", "embedding_norm") if k in card]
    band = f"{f.f_min:g}-{f.f_max or f.sample_rate / 2:g} Hz"
    rows.append(("features", f"{f.kind}: {f.n_mels} bands {band}, {f.sample_rate} Hz, window {f.n_fft}, hop {f.hop}"
                             + (f", floor {f.floor:g}" if f.kind in ("logmel", "speechbrain") else "")))
    if "frontend" in card:
        rows.append(("front end", card["frontend"]))
    if m.arch == "spkid":
        rows.append(("network", f"{mc.encoder} d_model {mc.d_model} x {mc.n_layers}, pooling {mc.pooling}, "
                                f"input norm {mc.norm}"))
    rows.append(("embedding", f"{m.net.embed_dim} dimensions"))
    rows.append(("speakers", f"{len(m.speakers)} (closed-set classes)" if m.speakers else
                 "none (an embedder: enroll speakers, then identify/verify)"))
    for key in ("step", "val_acc", "val_eer"):
        if m.ckpt.get(key) is not None:
            rows.append((key, f"{m.ckpt[key]:.4g}" if isinstance(m.ckpt[key], float) else str(m.ckpt[key])))
    own = m.ckpt.get("diarization")
    if own:
        rows.append(("diarization", ", ".join(f"{k} {own[k]:.2f}" for k in TUNED if k in own)
                     + (f" (tuned on {own['tuned_on']})" if own.get("tuned_on") else "")))
    rows.append(("fingerprint", m.model_id))
    return rows

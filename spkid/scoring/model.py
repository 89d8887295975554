"""Inference from a checkpoint: embeddings, class scores, predictions, verification.

Everything goes through ``embed_features``: utterances are batched by length (padding is masked, so batching
never changes a result), and utterances longer than the window limit are split into overlapping windows whose
embeddings are averaged (bounded memory for any length). Validation during training uses the same function,
so the validation accuracy measures exactly what ``predict`` does on the test set.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spkid.training.checkpoint import build_checked, checkpoint_config, load_checkpoint, model_fingerprint
from spkid.config import InferConfig, RunConfig
from spkid.data.sampler import length_buckets, pad_batch
from spkid.data.hw4 import load_tensor
from spkid.errors import DataError, SpkidError
from spkid.runtime import flush_denormal, resolve_device
from spkid.models.speaker_net import SpeakerNet, build_model


def _windows(t: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Start/end frames of windows covering ``[0, t)``; the last one is aligned to the end."""
    if t <= window:
        return [(0, t)]
    starts = list(range(0, t - window + 1, hop))
    if starts[-1] + window < t:
        starts.append(t - window)
    return [(s, s + window) for s in starts]


@torch.no_grad()
def embed_features(net: SpeakerNet, feats: Sequence[torch.Tensor], cfg: InferConfig,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-utterance embeddings ``(N, E)`` (not normalised) for features ``[(T_i, F)]``.

    Whole utterances unless ``cfg.window > 0`` or ``T_i > cfg.max_frames``; then the mean over windows.
    """
    with flush_denormal():
        return _embed(net, feats, cfg, device)


def _embed(net, feats, cfg: InferConfig, device) -> torch.Tensor:
    was_training = net.training
    net.eval()
    segs, owner = [], []
    for i, f in enumerate(feats):
        window = cfg.window if cfg.window > 0 else cfg.max_frames
        if cfg.window > 0 or f.shape[0] > cfg.max_frames:
            window = min(window, cfg.max_frames)
            for s, e in _windows(f.shape[0], window, cfg.hop or max(1, window // 2)):
                segs.append(f[s:e])
                owner.append(i)
        else:
            segs.append(f)
            owner.append(i)
    out = torch.zeros(len(segs), net.embed_dim)
    for idx in length_buckets([s.shape[0] for s in segs], cfg.batch_frames):
        x, lengths = pad_batch([segs[i] for i in idx])
        out[idx] = net.embed(x.to(device), lengths.to(device)).float().cpu()
    owner_t = torch.tensor(owner)
    emb = torch.zeros(len(feats), net.embed_dim).index_add_(0, owner_t, out)
    emb /= torch.bincount(owner_t, minlength=len(feats)).clamp(min=1)[:, None]
    net.train(was_training)
    return emb


@torch.no_grad()
def class_scores(net: SpeakerNet, emb: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Embeddings ``(N, E)`` -> class probabilities ``(N, n_speakers)``."""
    was_training = net.training
    net.eval()
    probs = torch.softmax(net.classify(emb.to(device)).float(), dim=-1).cpu()
    net.train(was_training)
    return probs


class Model:
    """A trained spkid model loaded from a checkpoint: ``spkid.load(path)``.

    Inputs (``inputs`` below) are a sequence of items, each a path (``.pt`` features or an audio file), a
    ``(T, n_mels)`` feature array/tensor, or a 1-D waveform array/tensor at the model's ``features.sample_rate`` (16 kHz by default).
    """

    def __init__(self, path: str | Path, device: str = "auto"):
        self.path = Path(path)
        ckpt = load_checkpoint(self.path)
        self.cfg: RunConfig = checkpoint_config(ckpt, self.path)
        self.speakers: list[str] = list(ckpt["speakers"])
        self.device = resolve_device(device)
        self.net = build_checked(self.cfg, len(self.speakers), ckpt["model"], self.path)
        self.net.to(self.device).eval()
        self.model_id = model_fingerprint(ckpt["model"])
        # EER threshold on the run's validation trials (training speakers), when the run validated
        self.val_eer_threshold: float | None = ckpt.get("val_eer_threshold")

    # -- inputs ---------------------------------------------------------------------------------------------
    def features(self, inputs) -> list[torch.Tensor]:
        """Turn each input item into log-mel features ``(T, n_mels)``."""
        if isinstance(inputs, (str, Path, np.ndarray, torch.Tensor)):
            inputs = [inputs]
        return [self._one(item) for item in inputs]

    def _one(self, item) -> torch.Tensor:
        n_mels = self.cfg.features.n_mels
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.suffix == ".pt":
                return load_tensor(path, n_mels)
            from spkid.audio.io import load_audio
            return self._logmel(load_audio(path, self.cfg.features.sample_rate), str(path))
        x = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item).float()
        if x.dim() == 2 and x.shape[1] == n_mels and x.shape[0] >= 1:
            if not torch.isfinite(x).all():
                raise DataError("input array: contains NaN or Inf values")
            return x
        if x.dim() == 1 and x.numel() > 0:
            return self._logmel(x, "input waveform")
        raise DataError(f"input array: expected a 1-D waveform or (frames, {n_mels}) features, got {tuple(x.shape)}")

    def _logmel(self, wav: torch.Tensor, name: str) -> torch.Tensor:
        from spkid.audio.frontend import logmel
        if not torch.isfinite(wav).all():
            raise DataError(f"{name}: waveform contains NaN or Inf")
        return logmel(wav.float(), self.cfg.features)

    # -- outputs --------------------------------------------------------------------------------------------
    def embed(self, inputs) -> torch.Tensor:
        """L2-normalised embeddings ``(N, E)``."""
        emb = embed_features(self.net, self.features(inputs), self.cfg.infer, self.device)
        return F.normalize(emb, dim=-1)

    def scores(self, inputs) -> torch.Tensor:
        """Class probabilities ``(N, n_speakers)``, columns in ``self.speakers`` order."""
        return class_scores(self.net, embed_features(self.net, self.features(inputs), self.cfg.infer, self.device),
                            self.device)

    def predict(self, inputs) -> list[str]:
        """The most likely training speaker for each input."""
        return [self.speakers[i] for i in self.scores(inputs).argmax(-1).tolist()]

    def verify(self, a, b) -> float:
        """Cosine similarity of two inputs' embeddings (higher = more likely the same speaker)."""
        e = self.embed([a, b] if not isinstance(a, list) else a + b)
        return float(e[0] @ e[1])


def load(checkpoint: str | Path, device: str = "auto") -> Model:
    """Load a checkpoint for inference: ``m = spkid.load("runs/a/best.ckpt"); m.predict(["x.wav"])``."""
    return Model(checkpoint, device)


def ensemble_scores(models: Sequence[Model], feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean class probabilities over models that share one speaker list: ``(N, n_speakers)``."""
    first = models[0]
    for m in models[1:]:
        if m.speakers != first.speakers:
            raise SpkidError(f"{m.path}: speaker list differs from {first.path}; cannot ensemble")
    total = None
    for m in models:
        p = class_scores(m.net, embed_features(m.net, feats, m.cfg.infer, m.device), m.device)
        total = p if total is None else total + p
    return total / len(models)

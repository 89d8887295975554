"""Open-set use of a trained model: embed files, enroll speakers in a registry, identify, verify, evaluate.

Inputs are files (HW4 ``.pt`` features or audio through the shared front end), folders of them, or an HW4
directory (its ``testdata.json`` utterances). The registry (``spkid.registry``, SQLite) remembers the model
fingerprint and refuses embeddings from another model.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from spkid.fileio import atomic_write, refuse_overwriting_inputs
from spkid.errors import DataError, SpkidError
from spkid.data.scan import gather
from spkid.scoring.model import Model, load

def embed_files(checkpoint: str | Path, sources, out: str | Path, *, device: str = "auto") -> int:
    """Write L2-normalised embeddings of ``sources`` to ``out`` (``.npz``: ids, embeddings; ``.pt``: same dict)."""
    out = Path(out)
    if out.suffix not in (".npz", ".pt"):
        raise SpkidError(f"{out}: output must end in .npz or .pt")
    model = load(checkpoint, device)
    ids, items = gather(sources)
    emb = model.embed(items)                                   # (N, E)

    def write(tmp):
        if out.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, ids=np.array(ids), embeddings=emb.numpy(), model_id=np.array(model.model_id))
        else:
            torch.save({"ids": ids, "embeddings": emb, "model_id": model.model_id}, tmp)
    atomic_write(out, write)
    return len(ids)


def default_threshold(model: Model) -> tuple[float, str]:
    """The EER threshold measured on the run's validation utterances, if the checkpoint has one."""
    if model.val_eer_threshold is not None:
        return float(model.val_eer_threshold), "validation EER (training speakers)"
    return 0.5, "default 0.5"


def enroll(registry: str | Path, name: str, files, *, checkpoint: str | Path | None = None,
           device: str = "auto") -> tuple[int, str]:
    """Add ``files`` of speaker ``name``; returns ``(utterances now enrolled for name, registry checkpoint)``."""
    from spkid.scoring.speaker_db import SpeakerDB
    registry = Path(registry)
    refuse_overwriting_inputs([registry], [*([checkpoint] if checkpoint else []), *gather(files)[1]])
    reg_ctx = None
    if registry.exists():
        reg_ctx = SpeakerDB.open(registry)
        model = load(checkpoint or reg_ctx.checkpoint, device)
    else:
        if checkpoint is None:
            raise SpkidError(f"{registry}: new registry: give --checkpoint to say which model embeds")
        model = load(checkpoint, device)
    ids, items = gather(files)
    emb = model.embed(items)        # before creating a new registry: a bad file must leave no registry behind
    if reg_ctx is None:
        threshold, source = default_threshold(model)
        reg_ctx = SpeakerDB.create(registry, model_id=model.model_id, checkpoint=str(Path(checkpoint).resolve()),
                                  embed_dim=model.net.embed_dim, threshold=threshold, threshold_source=source)
    with reg_ctx as reg:
        n = reg.enroll(name, emb, [str(Path(i).resolve()) if isinstance(i, Path) else i for i in items],
                       model_id=model.model_id)
        return n, reg.checkpoint


def identify(registry: str | Path, files, *, top_k: int = 1, device: str = "auto") -> list[tuple]:
    """Rows ``(file, speaker | "unknown", score)``; with ``top_k > 1`` also the runners-up ``(file, spk, score)``."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        model = load(reg.checkpoint, device)
        if model.model_id != reg.model_id:
            raise SpkidError(f"{registry}: checkpoint {reg.checkpoint} has changed since enrollment "
                             f"(model {model.model_id} != {reg.model_id}); re-enroll")
        if not reg.speakers():
            raise SpkidError(f"{registry}: no speakers enrolled yet")
        ids, items = gather(files)
        emb = model.embed(items)
        decided = reg.decide(emb)
        ranked = reg.identify(emb, top_k=top_k) if top_k > 1 else None
    rows = []
    for k, (fid, (spk, score)) in enumerate(zip(ids, decided)):
        rows.append((fid, spk, round(score, 4)))
        for alt, s in (ranked[k][1:] if ranked else []):
            rows.append((fid, f"candidate:{alt}", round(s, 4)))
    return rows


def verify(checkpoint: str | Path, a, b, *, threshold: float | None = None, device: str = "auto") -> tuple[float, bool, float]:
    """``(cosine score, same speaker?, threshold used)`` for two files."""
    model = load(checkpoint, device)
    if threshold is None:
        threshold, _ = default_threshold(model)
    if not math.isfinite(threshold):
        raise SpkidError(f"verify --threshold {threshold}: must be a finite number")
    score = model.verify(Path(a), Path(b))
    if not math.isfinite(score):
        raise SpkidError(f"{checkpoint}: the model scores {a} against {b} as {score} (not finite); the checkpoint is "
                         "corrupt or diverged")
    return score, score >= threshold, threshold


def eval_verification(checkpoint: str | Path, data_dir: str | Path, *, far: float | None = None,
                      max_nontarget: int = 200_000, device: str = "auto", progress: bool = True) -> dict:
    """EER and minDCF (p_target 0.01) on trials among speakers of ``data_dir`` that the model never saw.

    ``data_dir`` is an HW4 directory (``metadata.json`` + ``mapping.json``); its speakers that are in the
    checkpoint's training list are left out. The threshold is the EER point, or the one at false-accept rate ``far``.
    """
    from spkid.data.features import load_train_features
    from spkid.scoring.metrics import eer, make_trials, min_dcf, score_trials, threshold_at_far
    model = load(checkpoint, device)
    data = load_train_features(data_dir, model.cfg.features.n_mels, progress=progress)
    seen = set(model.speakers)
    keep = [i for i, u in enumerate(data.utts) if u.speaker not in seen]
    if not keep:
        raise DataError(f"{data_dir}: every speaker here was seen in training; verification needs unseen speakers")
    labels = [data.utts[i].speaker for i in keep]
    emb = model.embed([data.feats[i] for i in keep]).numpy()
    i_idx, j_idx, target = make_trials(labels, max_nontarget=max_nontarget)
    scores = score_trials(emb, i_idx, j_idx)
    e, t_eer = eer(scores, target)
    dcf, _ = min_dcf(scores, target, p_target=0.01)
    thr = threshold_at_far(scores, target, far) if far is not None else t_eer
    return {"eer": e, "min_dcf": dcf, "threshold": thr, "threshold_source": f"far={far}" if far is not None else "eer",
            "n_speakers": len(set(labels)), "n_utterances": len(keep), "n_target": int(target.sum()),
            "n_nontarget": int((~target).sum())}

"""Validation during training: whole utterances scored by exactly the code ``predict`` uses."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from spkid.scoring.metrics import eer, make_trials, score_trials
from spkid.scoring.model import class_scores, embed_features


@torch.no_grad()
def validate(net, feats: list[torch.Tensor], labels: list[int], infer_cfg, device, n_speakers: int | None = None) -> dict:
    """``feats`` ``[(T_i, F)]`` with class ``labels`` -> ``{"val_acc", "val_eer", "val_eer_threshold"}``.

    Accuracy is whole-utterance, as ``predict`` computes test predictions; the EER (and its threshold) is over all
    pairs of these utterances (verification among training speakers), when there are same-speaker pairs.
    """
    emb = embed_features(net, feats, infer_cfg, device)                   # (N, E)
    pred = class_scores(net, emb, device, n_speakers).argmax(-1)
    out = {"val_acc": float((pred == torch.as_tensor(labels)).float().mean())}
    if len(set(labels)) > 1 and len(labels) > len(set(labels)):
        i, j, target = make_trials([str(x) for x in labels], max_nontarget=100_000)
        scores = score_trials(F.normalize(emb, dim=-1).numpy(), i, j)
        out["val_eer"], out["val_eer_threshold"] = (float(v) for v in eer(scores, target))
    return out

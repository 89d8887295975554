"""What a finished run adds to its checkpoints for the open-set back end (``spkid.scoring.backend``).

``end_of_training_extras(net, ...)`` embeds the validation utterances and a capped subset of the training
utterances (at most ``TRAIN_PER_SPEAKER`` per speaker, ``MAX_UTTERANCES`` in all) and returns two checkpoint
entries:

- ``"cohort"``: the training speakers' mean embeddings (raw and centred by the training domain's mean) with that
  ``DomainStats``: an AS-norm cohort for registries without a folder of their own domain
  (``spkid adapt --cohort checkpoint``);
- ``"calibration"``: score -> log-likelihood ratio fitted on the validation pairs (raw cosines), which ``verify``
  turns into a probability. It is fitted on the training speakers' own domain; docs/openset.md measures how far
  it transfers.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_PER_SPEAKER = 4                # training utterances per speaker in the cohort
MAX_UTTERANCES = 4000                # validation + training utterances embedded at most


def cohort_subset(labels: list[int], per_speaker: int, limit: int, seed: int = 0) -> list[int]:
    """Indices of at most ``per_speaker`` items per label and ``limit`` in all (seeded, every label kept)."""
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_label.setdefault(int(lab), []).append(i)
    per = max(1, min(per_speaker, limit // max(1, len(by_label))))
    out = []
    for lab in sorted(by_label):
        idx = by_label[lab]
        out += sorted(rng.choice(idx, min(per, len(idx)), replace=False).tolist())
    return out


@torch.no_grad()
def end_of_training_extras(net, speakers: list[str], val_feats, val_labels, train_utterances, infer_cfg,
                           device) -> dict:
    """``{"cohort": ..., "calibration": ...}`` for a checkpoint (entries that cannot be made are left out).

    ``val_feats`` ``[(T_i, F)]`` with ``val_labels``; ``train_utterances(per_speaker, limit) -> (feats, labels)``
    gives the capped training subset (or is None).
    """
    from spkid.scoring.backend import CheckpointCohort, StoredCalibration
    from spkid.scoring.calibration import Calibration
    from spkid.scoring.metrics import make_trials
    from spkid.scoring.model import embed_features
    feats, labels = list(val_feats), [int(v) for v in val_labels]
    room = MAX_UTTERANCES - len(feats)
    if train_utterances is not None and room > 0:
        tf, tl = train_utterances(TRAIN_PER_SPEAKER, room)
        feats, labels = feats + list(tf), labels + [int(v) for v in tl]
    out = {}
    if len(set(labels)) < 2:
        return out
    emb = F.normalize(embed_features(net, feats, infer_cfg, device), dim=-1).double().numpy()   # (N, E)
    names = [speakers[v] if v < len(speakers) else str(v) for v in labels]
    n_val = len(val_feats)
    out["cohort"] = CheckpointCohort.build(
        emb, names, f"{len(set(names))} training speakers, {len(names)} utterances ({n_val} validation)").to_state()
    vl = [str(v) for v in labels[:n_val]]
    if n_val and len(set(vl)) > 1 and len(vl) > len(set(vl)):
        i, j, target = make_trials(vl, max_nontarget=100_000)
        if target.any() and not target.all():
            s = (emb[:n_val][i] * emb[:n_val][j]).sum(1)
            cal = Calibration.fit(s, target)
            out["calibration"] = StoredCalibration(
                cal, f"validation pairs of the training speakers ({n_val} utterances; raw cosine)").to_dict()
    return out


def finish_checkpoints(net, data, cfg, device, best_path) -> dict:
    """The extras of the final model (for ``last.ckpt``), also added to ``best_path`` when it exists, computed there
    with ``best.ckpt``'s own weights when they differ from the final ones."""
    import copy
    from pathlib import Path
    from spkid.training.checkpoint import load_checkpoint, save_checkpoint

    def extras_of(model) -> dict:
        return end_of_training_extras(model, data.speakers, data.val_feats, data.val_labels,
                                      getattr(data, "train_utterances", None), cfg.infer, device)
    extras = extras_of(net)
    best_path = Path(best_path)
    if best_path.exists() and extras:
        best = load_checkpoint(best_path)
        state = net.state_dict()
        same = best["model"].keys() == state.keys() and all(
            torch.equal(best["model"][k], v.detach().cpu()) for k, v in state.items())
        if same:
            best_extras = extras
        else:
            other = copy.deepcopy(net)
            other.load_state_dict(best["model"])
            best_extras = extras_of(other)
        save_checkpoint(best_path, {**best, **best_extras})
    return extras

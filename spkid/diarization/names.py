"""Putting enrolled names on diarized speakers: one-to-one, through the registry's own back end and threshold.

Each cluster's mean embedding is scored against every enrolled speaker by ``SpeakerDB``'s back end (domain
centring, AS-norm, top-k clip scoring: whatever ``spkid identify`` would use), the clusters and speakers are
paired by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``: no two clusters get one name), and a
pair keeps the name only when its score reaches the registry's threshold and beats the cluster's second-best
speaker by a margin. The margin is in natural-log likelihood-ratio units when the registry has a score
calibration on the threshold's scale (``llr = a * score + b``, so the margin is ``a * (best - second)``), else
in raw-cosine units.

Each cluster is named against the enrollment heard the way it sounds: the clips as recorded, or their telephone
copies that ``spkid enroll`` stores beside them (``SpeakerDB.channel_scoring``: the same back end, an operating
point of their own), whichever holds its best score. Wideband enrollment against a telephone call put the wrong
speaker first on 5 of 11 LibriSpeech voices; telephone copies against audio that is merely sampled at 8 kHz (the
full 0-4 kHz band, no companding) left both of its speakers below the copies' threshold (docs/diarization.md). The
choice is per cluster, so a meeting with one participant on the phone is named too. A narrowband recording whose
registry lacks copies for some speaker is named against the clips as recorded, and says so.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from spkid.errors import InputWarning, SpkidError

MARGIN_LLR = 1.0         # the best name at least e^1 (2.7x) likelier than the second best
MARGIN_COSINE = 0.05     # the same on raw cosines, for a registry still on its fallback threshold
TELEPHONE = "telephone"  # the channel of the copies a cluster may be named against (SpeakerDB.CHANNELS)


@dataclass(frozen=True)
class ClusterName:
    """The registry's answer for one cluster: ``name`` (None: left anonymous), its ``score``, ``why`` in words
    (``named``, ``below threshold``, ``within margin``, ``no speaker left``), and the enrollment it was scored
    against: ``channel`` None for the clips as recorded, else their copies through that channel."""

    name: str | None
    score: float
    why: str
    channel: str | None = None


def check_registry(registry: str | Path, model_id: str) -> None:
    """Refuse a registry of another model, or one without speakers, before any audio is processed."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        _check(reg, model_id)


def _check(reg, model_id: str) -> None:
    if reg.model_id != model_id:
        raise SpkidError(f"{reg.path}: registry holds embeddings of model {reg.model_id}, the diarization model "
                         f"is {model_id} (diarize with --checkpoint {reg.checkpoint}, or enroll with this model)")
    if not reg.speakers():
        raise SpkidError(f"{reg.path}: no speakers enrolled")


def name_clusters(registry: str | Path, cluster_emb: np.ndarray, model_id: str, *, narrowband: bool = False,
                  recording: str = "this recording", margin_llr: float = MARGIN_LLR,
                  margin_cosine: float = MARGIN_COSINE) -> list[ClusterName]:
    """Names for ``K`` clusters from their mean embeddings ``(K, E)`` (raw, any norm), each scored against the clips
    as recorded and against their telephone copies (when every enrolled speaker has them), each cluster against
    the set its best score is in. ``narrowband``: the ``recording`` is mostly telephone band; a registry without
    copies for every speaker then gives an ``InputWarning`` naming the recording.

    Raises ``SpkidError`` when the registry holds embeddings of another model or no speakers."""
    from spkid.scoring.speaker_db import SpeakerDB
    x = np.asarray(cluster_emb, dtype=np.float64)
    with SpeakerDB.open(registry) as reg:
        _check(reg, model_id)
        if len(x) == 0:
            return []
        cal = reg.calibration if reg.threshold_scale == "registry" else None
        sets = [(None, reg.clips(), reg.backend(), reg.threshold, cal)]
        scoring = reg.channel_scoring(TELEPHONE)
        if scoring is not None:
            sets.append((TELEPHONE, scoring.clips, scoring.backend, scoring.threshold, scoring.calibration))
        elif narrowband:
            have = {n for n, _, _ in reg.clips(TELEPHONE)}
            missing = [n for n, _ in reg.speakers() if n not in have]
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            warnings.warn(InputWarning(
                f"{recording}: narrowband, but {reg.path} holds no {TELEPHONE} copies of {shown} (enrolled from "
                f"features or by an older spkid): named against the clips as recorded, less reliably (enroll their "
                "audio again to add the copies)"), stacklevel=2)
        names = [n for n, _, _ in sets[0][1]]
        scored = []                     # per set: (channel, scores (K, S) in `names` order, threshold, margin)
        for channel, clips, backend, threshold, c in sets:
            by_name = {n: v for n, _, v in clips}                      # channel_scoring: every speaker has copies
            # LLR margin -> score units: llr differences are a * score differences (a > 0 for any sane calibration)
            margin = margin_llr / c.calibration.a if c is not None and c.calibration.a > 0 else margin_cosine
            scored.append((channel, backend.scores([by_name[n] for n in names], x), threshold, margin))
    pick = np.argmax(np.stack([sc.max(1) for _, sc, _, _ in scored]), axis=0)      # (K,) the set of each best score
    rows = [scored[j] for j in pick]
    out = assign_names(np.stack([sc[i] for i, (_, sc, _, _) in enumerate(rows)]), names,
                       np.array([t for _, _, t, _ in rows]), np.array([m for _, _, _, m in rows]))
    return [dataclasses.replace(o, channel=ch) for o, (ch, _, _, _) in zip(out, rows)]


def assign_names(scores: np.ndarray, names: list[str], threshold, margin) -> list[ClusterName]:
    """Hungarian assignment on cluster x speaker ``scores`` ``(K, S)`` (each pair worth its score above ``threshold``,
    in units of ``margin``); a pair is kept when its score is at least ``threshold`` and at least ``margin`` above
    the cluster's best other speaker (same units as the scores), so a cluster never takes a name that is not
    clearly its own. ``threshold`` and ``margin``: one number, or one per cluster ``(K,)`` (clusters scored
    against different enrollment sets)."""
    k, s = scores.shape
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (k,))
    mar = np.broadcast_to(np.asarray(margin, dtype=np.float64), (k,))
    out = [ClusterName(None, float(scores[i].max()) if s else float("nan"), "no speaker left") for i in range(k)]
    # maximise what the names gain over the threshold: a pair below it gains nothing (a plain score sum would let
    # a stranger's -0.2 trade against a good pair's 0.9 and steal the name); in margins, so that clusters scored
    # on different scales weigh alike
    gain = np.clip(scores - thr[:, None], 0.0, None) / np.maximum(mar, 1e-9)[:, None]
    rows, cols = linear_sum_assignment(-gain)
    for i, j in zip(rows, cols):
        best = float(scores[i, j])
        others = np.delete(scores[i], j)
        second = float(others.max()) if others.size else -np.inf
        if best < thr[i]:
            out[i] = ClusterName(None, best, "below threshold")
        elif best - second < mar[i]:
            out[i] = ClusterName(None, best, "within margin")
        else:
            out[i] = ClusterName(names[j], best, "named")
    return out


__all__ = ["ClusterName", "check_registry", "name_clusters", "assign_names", "MARGIN_LLR", "MARGIN_COSINE"]

"""Putting enrolled names on diarized speakers: one-to-one, through the registry's own back end and threshold.

Each cluster's mean embedding is scored against every enrolled speaker by ``SpeakerDB``'s back end (domain
centring, AS-norm, top-k clip scoring: whatever ``spkid identify`` would use), the clusters and speakers are
paired by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``: no two clusters get one name), and a
pair keeps the name only when its score reaches the registry's threshold and beats the cluster's second-best
speaker by a margin. The margin is in natural-log likelihood-ratio units when the registry has a score
calibration on the threshold's scale (``llr = a * score + b``, so the margin is ``a * (best - second)``), else
in raw-cosine units.

A narrowband recording (a telephone call) is named against the telephone copies of the enrolled clips that
``spkid enroll`` stores beside them (``SpeakerDB.channel_scoring``: the same back end, an operating point of their
own): wideband enrollment against a telephone call put the wrong speaker first on 5 of 11 LibriSpeech voices
(docs/diarization.md). A registry without copies for every speaker (enrolled from features, or by an older spkid)
names such a call against the clips as recorded, and says so.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from spkid.errors import InputWarning, SpkidError

MARGIN_LLR = 1.0         # the best name at least e^1 (2.7x) likelier than the second best
MARGIN_COSINE = 0.05     # the same on raw cosines, for a registry still on its fallback threshold


@dataclass(frozen=True)
class ClusterName:
    """The registry's answer for one cluster: ``name`` (None: left anonymous), its ``score``, and ``why`` in words
    (``named``, ``below threshold``, ``within margin``, ``no speaker left``)."""

    name: str | None
    score: float
    why: str


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


def name_clusters(registry: str | Path, cluster_emb: np.ndarray, model_id: str, *, channel: str | None = None,
                  recording: str = "this recording", margin_llr: float = MARGIN_LLR,
                  margin_cosine: float = MARGIN_COSINE) -> list[ClusterName]:
    """Names for ``K`` clusters from their mean embeddings ``(K, E)`` (raw, any norm); ``channel="telephone"``: the
    ``recording`` is narrowband, so the enrolled clips' telephone copies are scored (an ``InputWarning`` naming
    the recording when the registry lacks them for some speaker).

    Raises ``SpkidError`` when the registry holds embeddings of another model or no speakers."""
    from spkid.scoring.speaker_db import SpeakerDB
    with SpeakerDB.open(registry) as reg:
        _check(reg, model_id)
        scoring = reg.channel_scoring(channel) if channel is not None else None
        if channel is not None and scoring is None:
            have = {n for n, _, _ in reg.clips(channel)}
            missing = [n for n, _ in reg.speakers() if n not in have]
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            warnings.warn(InputWarning(
                f"{recording}: narrowband, but {reg.path} holds no {channel} copies of {shown} (enrolled from "
                f"features or by an older spkid): named against the clips as recorded, less reliably (enroll their "
                "audio again to add the copies)"), stacklevel=2)
        if scoring is not None:
            clips, backend, threshold, cal = scoring.clips, scoring.backend, scoring.threshold, scoring.calibration
        else:
            clips, backend, threshold = reg.clips(), reg.backend(), reg.threshold
            cal = reg.calibration if reg.threshold_scale == "registry" else None
        names = [n for n, _, _ in clips]
        scores = backend.scores([c for _, _, c in clips], np.asarray(cluster_emb, dtype=np.float64))  # (K, S)
    # LLR margin -> score units: llr differences are a * score differences (a > 0 for any sane calibration)
    ok = cal is not None and cal.calibration.a > 0
    return assign_names(scores, names, threshold, margin_llr / cal.calibration.a if ok else margin_cosine)


def assign_names(scores: np.ndarray, names: list[str], threshold: float, margin: float) -> list[ClusterName]:
    """Hungarian assignment on cluster x speaker ``scores`` ``(K, S)`` (each pair worth its score above ``threshold``);
    a pair is kept when its score is at least ``threshold`` and at least ``margin`` above the cluster's best other
    speaker (same units as the scores), so a cluster never takes a name that is not clearly its own."""
    k, s = scores.shape
    out = [ClusterName(None, float(scores[i].max()) if s else float("nan"), "no speaker left") for i in range(k)]
    # maximise what the names gain over the threshold: a pair below it gains nothing (a plain score sum would let
    # a stranger's -0.2 trade against a good pair's 0.9 and steal the name)
    gain = np.clip(scores - threshold, 0.0, None)
    rows, cols = linear_sum_assignment(-gain)
    for i, j in zip(rows, cols):
        best = float(scores[i, j])
        others = np.delete(scores[i], j)
        second = float(others.max()) if others.size else -np.inf
        if best < threshold:
            out[i] = ClusterName(None, best, "below threshold")
        elif best - second < margin:
            out[i] = ClusterName(None, best, "within margin")
        else:
            out[i] = ClusterName(names[j], best, "named")
    return out


__all__ = ["ClusterName", "check_registry", "name_clusters", "assign_names", "MARGIN_LLR", "MARGIN_COSINE"]

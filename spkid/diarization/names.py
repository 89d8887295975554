"""Putting enrolled names on diarized speakers: one-to-one, through the registry's own back end and threshold.

Each cluster's mean embedding is scored against every enrolled speaker by ``SpeakerDB``'s back end (domain
centring, AS-norm, top-k clip scoring: whatever ``spkid identify`` would use), the clusters and speakers are
paired by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``: no two clusters get one name), and a
pair keeps the name only when its score reaches the registry's threshold and beats the cluster's second-best
speaker by a margin. The margin is in natural-log likelihood-ratio units when the registry has a score
calibration on the threshold's scale (``llr = a * score + b``, so the margin is ``a * (best - second)``), else
in raw-cosine units. Against the telephone copies the margin is half as large (``MARGIN_LLR_TELEPHONE``): on
development calls the full margin left most enrolled voices anonymous with their own name first.

Each cluster is named against the enrollment heard the way it sounds: the clips as recorded, or their telephone
or room copies that ``spkid enroll`` stores beside them (``SpeakerDB.channel_scoring``: the same back end, an
operating point of their own): the telephone copies where they hold its best score, else the clips or the room
copies, whichever threshold it clears by more (``Enrolled._closest``). Wideband enrollment against a telephone
call put the wrong speaker first on 5 of 11 LibriSpeech voices; telephone copies against audio that is merely sampled at
8 kHz (the full 0-4 kHz band, no companding) left both of its speakers below the copies' threshold; voices recorded
across a room with noise were left anonymous below the clips' threshold, which their room copies clear
(docs/diarization.md). The choice is per cluster, so a meeting with one participant on the phone is named too. A
narrowband recording whose registry lacks telephone copies for some speaker is named against the clips as recorded,
and says so; a channel whose copies some speaker lacks (enrolled from features, or by an older spkid) is not used.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from spkid.diarization.cluster import relabel, split_by_scores
from spkid.errors import InputWarning, SpkidError

MARGIN_LLR = 1.0         # the best name at least e^1 (2.7x) likelier than the second best
MARGIN_COSINE = 0.05     # the same on raw cosines, for a registry still on its fallback threshold
MARGIN_LLR_TELEPHONE = 0.5   # against the telephone copies: e^0.5 (1.6x); chosen on development conversations, where
                             # it named 52 -> 69 % of the calls' speech with strangers named no more often
                             # (docs/diarization.md, "How sure a name must be")
TELEPHONE = "telephone"  # the channel a narrowband recording needs copies of (SpeakerDB.CHANNELS)
# Enrolled.split: the HMM over a cluster's windows scored against the enrolled speakers (measured on the default
# test set's conversations with every speaker enrolled, docs/diarization.md: 12-40 and 0.8-0.95 about alike)
SPLIT_SCALE = 20.0       # log-likelihood per unit of score
SPLIT_LOOP = 0.9         # probability that the next window of the cluster is the same speaker's
SPLIT_CANDIDATES = 8     # enrolled speakers a cluster is parted among: those of highest mean score there
SCORE_ROWS = 2048        # embeddings scored at once: a 3-hour file's 14,000 windows against a large registry's
                         # clips would otherwise hold a (windows, clips) matrix at once


@dataclass(frozen=True)
class ClusterName:
    """The registry's answer for one cluster: ``name`` (None: left anonymous), its ``score``, ``why`` in words
    (``named``, ``below threshold``, ``within margin``, ``no speaker left``), and the enrollment it was scored
    against: ``channel`` None for the clips as recorded, else their copies through that channel."""

    name: str | None
    score: float
    why: str
    channel: str | None = None


def _check(reg, model_id: str) -> None:
    if reg.model_id != model_id:
        raise SpkidError(f"{reg.path}: registry holds embeddings of model {reg.model_id}, the diarization model "
                         f"is {model_id} (diarize with --checkpoint {reg.checkpoint}, or enroll with this model)")
    if not reg.speakers():
        raise SpkidError(f"{reg.path}: no speakers enrolled")


class Enrolled:
    """A registry's enrolled speakers, read once for a run: ``name`` clusters, ``split`` clusters that hold several
    of them. Each speaker's clips as recorded and, for each channel of ``SpeakerDB.CHANNELS`` (telephone, room)
    whose copies every speaker has, those copies, each set with its back end, threshold and margin (in score
    units: ``margin_llr`` natural-log likelihood-ratio units, ``margin_llr_telephone`` for the telephone copies).

    Raises ``SpkidError`` when the registry holds embeddings of another model or no speakers."""

    def __init__(self, registry: str | Path, model_id: str, *, margin_llr: float = MARGIN_LLR,
                 margin_llr_telephone: float = MARGIN_LLR_TELEPHONE):
        from spkid.scoring.speaker_db import CHANNELS, SpeakerDB
        with SpeakerDB.open(registry) as reg:
            _check(reg, model_id)
            self.path = reg.path
            cal = reg.calibration if reg.threshold_scale == "registry" else None
            sets = [(None, reg.clips(), reg.backend(), reg.threshold, cal)]
            self.missing_copies: list[str] = []       # speakers without telephone copies
            for channel in CHANNELS:
                scoring = reg.channel_scoring(channel)
                if scoring is not None:
                    sets.append((channel, scoring.clips, scoring.backend, scoring.threshold, scoring.calibration))
                elif channel == TELEPHONE:
                    have = {n for n, _, _ in reg.clips(TELEPHONE)}
                    self.missing_copies = [n for n, _ in reg.speakers() if n not in have]
        self.names = [n for n, _, _ in sets[0][1]]
        self.sets = []       # (channel, Gallery of the S speakers in `names` order, backend, threshold, margin)
        for channel, clips, backend, threshold, c in sets:
            by_name = {n: v for n, _, v in clips}                      # channel_scoring: every speaker has copies
            llr = margin_llr_telephone if channel == TELEPHONE else margin_llr
            # LLR margin -> score units: llr differences are a * score differences (a > 0 for any sane calibration);
            # a registry without a calibration: MARGIN_COSINE per MARGIN_LLR
            calibrated = c is not None and c.calibration.a > 0
            margin = llr / c.calibration.a if calibrated else MARGIN_COSINE * llr / MARGIN_LLR
            self.sets.append((channel, backend.gallery([by_name[n] for n in self.names]), backend, threshold,
                              margin))

    def scores(self, emb: np.ndarray, only: int | None = None) -> list[np.ndarray]:
        """``(N, S)`` scores of embeddings ``(N, E)`` against every enrolled speaker, one array per set (``only``:
        that set's alone), ``SCORE_ROWS`` embeddings at a time (the clip scores in between are ``(rows, clips)``)."""
        x = np.asarray(emb, dtype=np.float64)
        chosen = self.sets if only is None else [self.sets[only]]
        return [np.concatenate([gallery.scores(backend.adapt(x[i: i + SCORE_ROWS]))
                                for i in range(0, len(x), SCORE_ROWS)]) if len(x) else np.zeros((0, len(self.names)))
                for _, gallery, backend, _, _ in chosen]

    def _closest(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Scores ``(K, S)`` of ``x`` ``(K, E)`` per set, and ``(K,)`` the set each row is named against (the
        enrollment it sounds like): the telephone copies where they hold its best score (a narrowband voice), else,
        of the wideband sets (the clips as recorded, their room copies), the one whose threshold its best score
        clears by the most margins. Room copies score a reverberant voice higher but may hold a stricter threshold
        (a few speakers' copies sit close together); the raw best score would hold a voice to it even where the
        clips name it (docs/diarization.md: voices across a room)."""
        scored = self.scores(x)
        best = np.stack([sc.max(1) for sc in scored])                                           # (sets, K)
        gain = np.stack([(b - thr) / max(m, 1e-9) for b, (_, _, _, thr, m) in zip(best, self.sets)])
        wide = np.array([i for i, (ch, *_) in enumerate(self.sets) if ch != TELEPHONE])
        pick = wide[np.argmax(gain[wide], axis=0)]
        phone = [i for i, (ch, *_) in enumerate(self.sets) if ch == TELEPHONE]
        if phone:
            pick = np.where(best[phone[0]] > best[wide].max(0), phone[0], pick)
        return scored, pick

    def name(self, cluster_emb: np.ndarray, *, narrowband: bool = False,
             recording: str = "this recording") -> list[ClusterName]:
        """Names for ``K`` clusters from their mean embeddings ``(K, E)`` (raw, any norm), each cluster against the
        set its best score is in, one-to-one (``assign_names``). ``narrowband``: the ``recording`` is mostly
        telephone band; without copies for every speaker it then gives an ``InputWarning`` naming the recording."""
        if narrowband and self.missing_copies:
            m = self.missing_copies
            shown = ", ".join(m[:3]) + (f" and {len(m) - 3} more" if len(m) > 3 else "")
            warnings.warn(InputWarning(
                f"{recording}: narrowband, but {self.path} holds no {TELEPHONE} copies of {shown} (enrolled from "
                f"features or by an older spkid): named against the clips as recorded, less reliably (enroll their "
                "audio again to add the copies)"), stacklevel=2)
        if len(cluster_emb) == 0:
            return []
        scored, pick = self._closest(cluster_emb)
        out = assign_names(np.stack([scored[j][i] for i, j in enumerate(pick)]), self.names,
                           np.array([self.sets[j][3] for j in pick]), np.array([self.sets[j][4] for j in pick]))
        return [dataclasses.replace(o, channel=self.sets[j][0]) for o, j in zip(out, pick)]

    def split(self, emb: np.ndarray, labels: np.ndarray, min_windows: int, max_speakers: int | None = None
              ) -> np.ndarray:
        """Window labels ``(N,)`` with each cluster that holds several enrolled speakers split into them: the windows
        ``emb`` ``(N, E)`` (raw, time order) scored against the enrolled speakers (in the set the cluster's mean
        is closest to) and parted by ``cluster.split_by_scores`` (parts of at least ``min_windows`` windows). A
        split is kept only when at least two of its parts are named (threshold, margin, one-to-one, all clusters
        together): a cluster of one voice, or of strangers, stays whole; the count stays within ``max_speakers``.

        One cluster often holds two voices that the recording alone cannot tell apart (a telephone call's
        narrowband embeddings crowd together); clean enrollment of both can."""
        labels = relabel(labels)
        if labels.size == 0:
            return labels
        emb = np.asarray(emb)
        k = int(labels.max()) + 1
        _, pick = self._closest(np.stack([emb[labels == j].mean(0) for j in range(k)]))
        win_scores = np.zeros((len(labels), len(self.names)), dtype=np.float32)         # (N, S)
        for j in range(k):                                   # each cluster's windows against its enrollment only
            win_scores[labels == j] = self.scores(emb[labels == j], only=int(pick[j]))[0]
        new, parts = split_by_scores(win_scores, labels, min_windows, scale=SPLIT_SCALE, loop=SPLIT_LOOP,
                                     candidates=SPLIT_CANDIDATES)
        if not parts:
            return labels
        answers = self.name(np.stack([emb[new == j].mean(0) for j in range(int(new.max()) + 1)]))
        for j, ids in parts.items():
            if sum(answers[i].name is not None for i in ids) < 2:
                new[np.isin(new, ids)] = j
        new = relabel(new)
        return labels if max_speakers is not None and int(new.max()) + 1 > max_speakers else new


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


__all__ = ["ClusterName", "Enrolled", "assign_names", "MARGIN_LLR", "MARGIN_LLR_TELEPHONE", "MARGIN_COSINE",
           "SPLIT_SCALE", "SPLIT_LOOP", "SPLIT_CANDIDATES"]

"""The numbers behind the report: closed-set breakdowns and verification operating points.

Plain numpy in, plain numpy or small records out; no plotting here.

- ``true``, ``pred``: ``(N,)`` int class ids in ``[0, K)``; ``K`` speakers.
- ``cm``: ``(K, K)`` int confusion counts, rows = true speaker, columns = predicted speaker.
- ``scores``: ``(P,)`` float trial scores; ``labels``: ``(P,)`` 0/1 (1 = target). A trial is accepted when
  ``score >= threshold``, as in :mod:`spkid.scoring.metrics`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spkid.scoring.metrics import eer, min_dcf


# closed set ----------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n`` (95% for ``z = 1.96``).

    Unlike the normal approximation it stays inside ``[0, 1]`` and is sensible at ``k = 0`` or ``k = n``.
    """
    if n <= 0:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n], got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))   # p inside despite rounding


def confusion_matrix(true, pred, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts: ``cm[t, p]`` utterances of speaker ``t`` predicted as ``p``."""
    t, p = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"true {t.shape} and pred {p.shape} must have the same shape")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class ids must be in [0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass
class SpeakerAccuracy:
    name: str
    n: int                       # test utterances of this speaker
    correct: int
    top_wrong: str | None        # the speaker it was most often mistaken for, if ever

    @property
    def accuracy(self) -> float:
        return self.correct / self.n


def per_speaker_accuracy(cm: np.ndarray, names: list[str]) -> list[SpeakerAccuracy]:
    """One record per speaker with at least one test utterance, worst accuracy first (ties by name)."""
    out = []
    for i, name in enumerate(names):
        n = int(cm[i].sum())
        if n == 0:
            continue
        off = cm[i].copy()
        off[i] = 0
        top_wrong = names[int(off.argmax())] if off.any() else None
        out.append(SpeakerAccuracy(name, n, int(cm[i, i]), top_wrong))
    out.sort(key=lambda r: (r.accuracy, r.name))
    return out


@dataclass
class ConfusedPair:
    a: str
    b: str
    a_as_b: int                  # utterances of a predicted as b
    b_as_a: int

    @property
    def total(self) -> int:
        return self.a_as_b + self.b_as_a


def confused_pairs(cm: np.ndarray, names: list[str], top: int = 10) -> list[ConfusedPair]:
    """The ``top`` unordered speaker pairs with the most confusions in either direction, most first."""
    sym = cm + cm.T
    np.fill_diagonal(sym, 0)
    i, j = np.triu_indices(len(names), k=1)
    total = sym[i, j]
    keep = np.nonzero(total)[0]
    order = keep[np.lexsort((j[keep], i[keep], -total[keep]))][:top]     # most first; ties in name order
    return [ConfusedPair(names[i[k]], names[j[k]], int(cm[i[k], j[k]]), int(cm[j[k], i[k]])) for k in order]


def cluster_order(cm: np.ndarray) -> np.ndarray:
    """A permutation ``(K,)`` of the speakers that puts mutually confused speakers next to each other.

    Average-linkage hierarchical clustering (scipy) on the distance ``1 - s_ij / max(s)``, where ``s`` is the
    symmetrised off-diagonal confusion rate (row-normalised, so speakers with few test utterances count the
    same); the dendrogram's leaf order is the result. Never-confused speakers keep their relative order.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    k = cm.shape[0]
    if k < 3:
        return np.arange(k)
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    s = rate + rate.T
    np.fill_diagonal(s, 0)
    if s.max() <= 0:
        return np.arange(k)
    d = 1.0 - s / s.max()
    np.fill_diagonal(d, 0)
    return leaves_list(linkage(squareform(d, checks=False), method="average")).astype(np.int64)


def heatmap_speakers(cm: np.ndarray, max_full: int = 60, cap: int = 100) -> tuple[np.ndarray, str]:
    """Which speakers ``(M,)`` (ascending ids) a readable heatmap shows, and a phrase saying which.

    Up to ``max_full`` speakers that occur as answer or prediction: all of them. More: only those in at least
    one confusion (a never-confused speaker adds one diagonal cell and nothing else), at most ``cap`` of them,
    the most confused first.
    """
    present = np.nonzero(cm.sum(axis=0) + cm.sum(axis=1))[0]
    if present.size <= max_full:
        return present, f"the {present.size} speakers that occur as answer or prediction"
    off = cm.copy()
    np.fill_diagonal(off, 0)
    involvement = off.sum(axis=0) + off.sum(axis=1)
    involved = np.nonzero(involvement)[0]
    if involved.size == 0:
        return present, f"the {present.size} speakers that occur as answer or prediction"
    if involved.size <= cap:
        return involved, f"the {involved.size} of {present.size} speakers involved in at least one confusion"
    top = np.sort(np.argsort(-involvement, kind="stable")[:cap])
    return top, f"the {cap} most-confused of {present.size} speakers"


@dataclass
class DurationBin:
    lo: float                    # seconds, inclusive
    hi: float                    # seconds, exclusive (inclusive for the last bin)
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)


def duration_bins(seconds, correct, n_bins: int = 5) -> list[DurationBin]:
    """Accuracy in ``n_bins`` duration bins of (about) equal counts (quantile edges, rounded to 0.1 s)."""
    sec = np.asarray(seconds, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    if sec.shape != ok.shape or sec.size == 0:
        raise ValueError(f"seconds {sec.shape} and correct {ok.shape} must be the same non-empty shape")
    edges = np.unique(np.round(np.quantile(sec, np.linspace(0, 1, n_bins + 1)), 1))
    edges[0], edges[-1] = min(edges[0], sec.min()), max(edges[-1], sec.max())
    if edges.size < 2:                               # every utterance of one length
        edges = np.array([sec.min(), sec.max()])
    idx = np.clip(np.searchsorted(edges, sec, side="right") - 1, 0, edges.size - 2)
    out = []
    for b in range(edges.size - 1):
        m = idx == b
        if m.any():
            out.append(DurationBin(float(edges[b]), float(edges[b + 1]), int(m.sum()), int(ok[m].sum())))
    return out


# verification --------------------------------------------------------------------------------

def det_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(p_fa, p_miss)``, each ``(K + 1,)``: every operating point of the threshold sweep, strictest first."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[s[1:] != s[:-1], True]              # tied scores move together
    tar = np.cumsum(y)[last] / max(int(y.sum()), 1)
    non = np.cumsum(~y)[last] / max(int((~y).sum()), 1)
    return np.r_[0.0, non], np.r_[1.0, 1.0 - tar]


def operating_point(scores, labels, threshold: float) -> tuple[float, float]:
    """``(p_fa, p_miss)`` when trials with ``score >= threshold`` are accepted."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    acc = s >= threshold
    return float(acc[~y].mean()), float((~acc[y]).mean())


@dataclass
class Verification:
    n_target: int
    n_nontarget: int
    eer: float
    eer_threshold: float
    min_dcf: float
    dcf_threshold: float
    p_target: float
    dcf_point: tuple[float, float]           # (p_fa, p_miss) at dcf_threshold


def verification_summary(scores, labels, p_target: float = 0.01) -> Verification:
    """EER and minDCF (``spkid.scoring.metrics``) with their thresholds and the minDCF operating point."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    rate, thr = eer(scores, y)
    dcf, dcf_thr = min_dcf(scores, y, p_target=p_target)
    return Verification(int(y.sum()), int((~y).sum()), rate, thr, dcf, dcf_thr, p_target,
                        operating_point(scores, y, dcf_thr))
